"""Page 3's "How many to remove?": the k-curve of the ranking on screen, computed in a
background job (jobs.start_curve), its chart, every size's test against random sets of the same
size (selection error and loss) and the suggestion with what the suggested set holds. Only a
size the page recommends (influence.advice.recommend: the ranking's trust check passed)
prefills "How many to tick (K)"."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from influence import kcurve
from influence.config import RETRAIN_MODES, RunError

from .. import charts, panels, session, words
from ..services import jobs, runner, timing
from ..services.store import DONE


def latest(run_row: dict, method: str) -> dict | None:
    """The finished curve of this run and ranking (the job's result), or None."""
    job = runner.latest(session.sid(), "curve")
    if job is None or job.status != DONE or job.result.get("run") != run_row["id"] or \
            job.result.get("method") != method:
        return None
    return job.result


def section(run_row: dict, method: str, busy: bool, recommended: int | None = None) -> None:
    """Draw the section for a finished run and one of its computed rankings. Call it before
    the "How many to tick (K)" input: a recommended size (`recommended`, from
    advice.recommend) sets that input's value once."""
    st.subheader("How many to remove?")
    share = (run_row["config"] or {}).get("selection_fraction", 0.0)
    if not share:
        st.caption("This model was trained before the app held validation images out to judge "
                   "this, so it cannot say how many to remove honestly. Train a new model to "
                   "get the curve.")
        return
    c1, c2 = st.columns([1, 3])
    mode = c1.selectbox("Retrain", RETRAIN_MODES[::-1], key=session.remember(
        "curve_mode", "last"), format_func={"last": "last epoch (fast)",
                                            "all": "all epochs (exact)"}.get)
    ks = kcurve.sizes((run_row["metrics"] or {}).get("train_size", max(kcurve.KS) + 1))
    models = len(ks) + kcurve.CONTROLS * (len(ks) - 1)
    took = timing.controls_seconds(session.estimate(run_row["dataset"], run_row["config"]),
                                   models, mode)
    c2.markdown(f"Retrain without the top k of this ranking for k = {', '.join(map(str, ks))}, "
                f"and without {kcurve.CONTROLS} random sets of each size: {models} models, all "
                f"at once ({words.seconds(took)}). Each is judged on the "
                f"{words.term('selection-part', 'selection part')} — {share:.0%} of the "
                "validation images, held out of the query that ranked them (page 1), never "
                "the test images — by its **error and loss**, against the random sets of the "
                "same size.")
    if c2.button("Compute how many to remove", disabled=busy, icon=":material/query_stats:"):
        try:
            jobs.start_curve(session.store(), session.sid(), run_row["id"], method, mode)
            st.rerun()
        except (runner.Busy, RunError) as e:
            panels.busy_error(e)
    job = runner.latest(session.sid(), "curve")
    if job is None or job.result.get("run") != run_row["id"] or \
            job.result.get("method") != method:
        return
    panels.job_panel("curve", curves=False, log_after=False)
    panels.job_outcome(job)
    if job.status == DONE:
        show(job.result, recommended)


def show(result: dict, recommended: int | None = None) -> None:
    """The chart, every size's test and the suggestion of a finished curve; prefill K once
    with a recommended size."""
    found = result["suggestion"]
    st.plotly_chart(charts.k_curve_chart(pd.DataFrame(result["band"]), found["k"]),
                    key="k-curve")
    sizes = pd.DataFrame(found.get("sizes") or [])
    if len(sizes):
        st.dataframe(size_table(sizes), hide_index=True)
    (st.success if found["helps"] and recommended else st.info)(found["sentence"])
    if found["helps"] and not recommended:
        st.caption(words.curve_not_followed())
    if recommended and not result.get("prefilled"):
        st.session_state["top_k"] = recommended  # "How many to tick (K)", drawn below
        result["prefilled"] = True


def size_table(sizes: pd.DataFrame) -> pd.DataFrame:
    """Every size tried against the random sets of its size, in the page's words (kcurve's
    size_tests)."""
    table = pd.DataFrame({
        "remove top k": sizes.k.astype(int),
        "selection error": sizes.error.map("{:.1%}".format),
        "random sets: error": sizes.random_error.map("{:.1%}".format),
        "selection loss": sizes.loss.map("{:.4f}".format),
        "random sets: loss": sizes.random_loss.map("{:.4f}".format),
        "p (Holm)": sizes.p_holm.map(lambda p: "—" if pd.isna(p) else f"{p:.3f}"),
        "beats random": np.where(sizes.passes, "yes", "no")})
    if "flagged" in sizes and sizes.flagged.notna().any():
        table["flagged by the label check"] = [
            f"{int(f)} (random: {r:.1f})" for f, r in zip(sizes.flagged, sizes.random_flagged)]
    return table
