"""What every page shares on screen: the sidebar, live job panels (progress, curves, log,
Cancel), and the plain notes on why something cannot be used yet."""
from __future__ import annotations

import streamlit as st

from datasets import DataError
from influence.config import RunError

from . import charts, session, words
from .services import runner
from .services.store import CANCELLED, FAILED, INTERRUPTED, RUNNING

POLL_SECONDS = 1.0


def need(what: str, page: str, label: str) -> None:
    st.info(what)
    st.page_link(page, label=label, icon=":material/arrow_forward:")
    st.stop()


# --- sidebar -------------------------------------------------------------------------------------
def sidebar() -> None:
    with st.sidebar:
        st.markdown("#### This session")
        dataset_row = session.current_dataset_row()
        run_row = session.current_run_row()
        st.markdown(f"**Data set:** "
                    f"{words.dataset_label(dataset_row) if dataset_row else 'none yet'}")
        st.markdown(f"**Model:** "
                    f"{words.run_label(run_row) if run_row else 'none yet — train one on page 2'}")
        n_ticked = len(session.ticks())
        st.markdown(f"**Ticked:** {n_ticked} image{'s' * (n_ticked != 1)}")
        job = runner.active(session.sid())
        if job is not None:
            _sidebar_job(job.id)
        else:
            st.markdown("**Job:** none running")
        st.divider()
        show_all = bool(session.state().get("show_all"))
        show = st.toggle("Show saved work of other sessions", value=show_all,
                         help="Data sets, models and cleaning rounds saved in this workspace by "
                         "other browser sessions or before a restart. You can open them; "
                         "nothing of theirs is changed.")
        if show != show_all:
            session.state()["show_all"] = show
            session.save()
            st.rerun()


@st.fragment(run_every=POLL_SECONDS)
def _sidebar_job(job_id: str) -> None:
    job = runner.get(job_id)
    if job is None or not job.running:
        st.rerun()  # it finished: redraw the whole page with its result
    st.markdown(f"**Job:** {job.title.lower()} …")
    st.progress(job.fraction, text=f"{job.fraction:.0%}")


# --- live job panel ------------------------------------------------------------------------------
def job_panel(kind: str, curves: bool = True, log_after: bool = True) -> runner.Job | None:
    """Progress, learning curves, text log and a Cancel button for this session's latest job of
    this kind; polls while it runs. Returns the job (or None)."""
    job = runner.latest(session.sid(), kind)
    if job is None:
        return None
    if job.running:
        _live(job.id, curves)
    else:
        _draw(job, curves, log_after or job.status == FAILED)
    return job


@st.fragment(run_every=POLL_SECONDS)
def _live(job_id: str, curves: bool) -> None:
    job = runner.get(job_id)
    if job is None or not job.running:
        st.rerun()
    _draw(job, curves, True)
    if st.button("Cancel", key=f"cancel-{job.id}", icon=":material/stop_circle:"):
        job.cancel()
        st.toast("Cancelling …")


def _draw(job: runner.Job, curves: bool, log: bool) -> None:
    if job.running:
        st.progress(job.fraction, text=words.progress_text(job))
    if curves and job.curves:
        phases = list(job.curves)
        cols = st.columns(len(phases)) if len(phases) > 1 else [st.container()]
        for col, phase in zip(cols, phases):
            with col:
                if len(phases) > 1:
                    st.caption(words.PHASES[phase])
                st.plotly_chart(charts.curves_chart(job.curve(phase)),
                                key=f"curve-{job.id}-{phase}")
    if job.lines and log:
        with st.expander("Log", expanded=job.running):
            # newest first, so that the latest line is in view while the job runs
            st.code("\n".join(reversed(job.lines[-200:])), language=None, height=200)


def job_outcome(job: runner.Job | None, done_text: str | None = None) -> None:
    """One line on how a finished job ended."""
    if job is None or job.running:
        return
    if job.status == FAILED:
        st.error(job.error)
    elif job.status == CANCELLED:
        st.warning("Cancelled. Nothing of it was kept; earlier results are unchanged.")
    elif done_text:
        st.success(done_text)


def busy_error(e: Exception) -> None:
    st.error(str(e) if isinstance(e, (runner.Busy, DataError, RunError)) else
             words.plain_message(e))


# --- images --------------------------------------------------------------------------------------


def run_status_note(run_row: dict) -> None:
    """Say plainly why a run cannot be used."""
    if run_row["status"] == INTERRUPTED:
        st.warning("This run was interrupted: the server stopped while it was working. Nothing "
                   "half-done was kept; start it again.")
    elif run_row["status"] == FAILED:
        st.error(f"This run failed: {run_row.get('error') or 'unknown reason'}")
    elif run_row["status"] == CANCELLED:
        st.warning("This run was cancelled.")
    elif run_row["status"] == RUNNING:
        st.info("This run is still in progress.")
