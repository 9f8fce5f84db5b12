"""Page 3's "How many to remove?": the k-curve of the ranking on screen, computed in a
background job (jobs.start_curve), its chart and suggestion; a suggestion that removing helps
prefills "How many to tick (K)"."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from influence import kcurve
from influence.config import RETRAIN_MODES, RunError

from .. import charts, panels, session, words
from ..services import jobs, runner, timing
from ..services.store import DONE


def section(run_row: dict, method: str, busy: bool) -> None:
    """Draw the section for a finished run and one of its computed rankings. Call it before
    the "How many to tick (K)" input: a fresh suggestion sets that input's value once."""
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
                f"at once ({words.seconds(took)}). Each is judged on the **selection** images — "
                f"{share:.0%} of the validation images, held out of the query that ranked them "
                "(page 1) — never on the test images.")
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
        show(job.result)


def show(result: dict) -> None:
    """The chart and the suggestion of a finished curve; prefill K once."""
    found = result["suggestion"]
    st.plotly_chart(charts.k_curve_chart(pd.DataFrame(result["band"]), found["k"]),
                    key="k-curve")
    (st.success if found["helps"] else st.info)(found["sentence"])
    if found["helps"] and not result.get("prefilled"):
        st.session_state["top_k"] = found["k"]  # "How many to tick (K)", drawn below
        result["prefilled"] = True
