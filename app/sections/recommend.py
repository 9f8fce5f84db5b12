"""What page 3 recommends, and why: the trust check's box (its colour and icon follow
influence.advice.trust_verdict) and the recommendation of influence.advice.recommend on this
run's own checks — the label check's fixes, to review image by image; removal by a ranking only
where its trust check passes; how many — each with a plain sentence why or why not."""
from __future__ import annotations

import streamlit as st

from influence import advice
from influence.config import RunError

from .. import panels, session, words
from ..services import jobs, runner

BOXES = {"pass": st.success, "unsure": st.warning, "fail": st.error}


def trust_box(verdict: advice.TrustVerdict, trust: dict) -> None:
    """The trust check: green with "verified" only when it passes, red when it fails; the
    figures after the one sentence that says what to do. An estimate outside what is possible
    is never shown as a number (the verdict leaves it out)."""
    box = BOXES.get(verdict.level, st.info)
    box(f"**{verdict.sentence}**\n\n" + words.trust(trust), icon=verdict.icon)


def label_check_button(run_row: dict, seconds: float, busy: bool) -> None:
    """Start the label check of the training images (ranking advice.CHECK)."""
    if st.button(f"Run the label check on the training images ({words.seconds(seconds)})",
                 disabled=busy, icon=":material/spellcheck:", key="run-label-check"):
        try:
            jobs.start_scoring(session.store(), session.sid(), run_row["id"], advice.CHECK, [])
            st.rerun()
        except (runner.Busy, RunError) as e:
            panels.busy_error(e)


def section(rec: advice.Recommendation, verdict: advice.TrustVerdict | None, title: str,
            has_check: bool) -> None:
    """What to do, from advice.recommend: fixes, removals and how many, each with why."""
    st.subheader("What to do")
    if has_check and (rec.fixes or rec.remove_flagged):
        if rec.fixes:
            st.markdown(f"- **Fix {len(rec.fixes)} label{'s' * (len(rec.fixes) != 1)}** that "
                        f"the {words.term('label-check', 'label check')} flags and is sure of, "
                        "each to the label it suggests — in the review below (accept, reject "
                        "or another label).")
        if rec.remove_flagged:
            n = len(rec.remove_flagged)
            st.markdown(f"- **Remove or look at {n} more flagged image{'s' * (n != 1)}:** "
                        f"{'they look' if n != 1 else 'it looks'} mislabelled but the check is "
                        "unsure of the right label (marked *remove or look* in the review).")
    elif has_check:
        st.markdown("- **No label to fix:** the label check flags no training image.")
    else:
        st.markdown("- **Fixes:** run the label check on the training images first (below); "
                    "it suggests which labels to fix.")
    if rec.remove:
        st.markdown(f"- **Remove the top {len(rec.remove)}** of {title}.")
    elif verdict is not None and verdict.level == "fail":
        st.markdown(f"- **Remove nothing by this ranking.** {words.not_predictive(title)}")
    else:
        st.markdown("- **Remove nothing by this ranking** for now.")
    if rec.reasons:
        st.caption("Why: " + " ".join(rec.reasons))
