"""Page 2: train a model with recorded SGD, in the background, with live curves."""
from dataclasses import asdict, fields, replace

import pandas as pd
import streamlit as st

from app import charts, panels, session, words
from app.services import jobs, runner, timing
from app.services.store import FAILED
from datasets import DataError
from influence import advice, models, probe
from influence.config import MIN_STEPS, RunConfig, RunError, default_epochs

st.title("2 · Train a model")
st.caption("Plain SGD, with every step recorded (the batch order and learning rate) so that "
           "page 3 can trace back how each training image moved the model.")

dataset_row = session.current_dataset_row()
if dataset_row is None:
    panels.need("Choose a data set first.", "views/data.py", "Go to 1 · Data")
data, _ = session.data_of(dataset_row["id"])
split = session.split_settings()
job = runner.latest(session.sid(), "train")
running = job is not None and job.running

# --- settings -------------------------------------------------------------------------------
st.markdown(f"**Data:** {words.dataset_label(dataset_row)}")
choice = st.selectbox("Model", models.CHOICES, key=session.remember("model_choice", "auto"),
                      format_func=lambda m: "chosen from the image size (recommended)"
                      if m == "auto" else models.PRESETS[m].title)
try:
    preset, reason = models.resolve(choice, data.shape)
except ValueError as e:
    st.error(str(e))
    st.stop()
st.markdown(f"→ **{preset.title}** (`{preset.name}`): {reason}.")

c1, c2, c3, c4 = st.columns(4)
batch = c2.number_input("Batch size", 1, 4096, key=session.remember("batch", 64),
                        help="Images per SGD step.")
n_train = len(data.split(split["val"], split["test"], split["seed"]).train)
auto_epochs = default_epochs(n_train, int(batch))
epochs = c1.number_input("Epochs", 1, 1000, value=None, key=session.remember("epochs", None),
                         placeholder=f"auto: {auto_epochs}",
                         help=f"Passes over the training images. Left empty, enough for at "
                         f"least {MIN_STEPS} SGD steps ({auto_epochs} epochs here): small "
                         "data sets need many passes to learn anything.")
lr_key = f"lr-{preset.name}"
auto_lr = c3.toggle("Let a short probe choose the learning rate", key=session.remember(
    "auto_lr", True), help=f"Before the recorded training, copies of the model try "
    f"{len(probe.FACTORS)} learning rates for a few steps, all at once; the one steady rate is "
    "kept, and the page says which and why. The probe is not part of the recorded run.")
lr = c3.number_input("Learning rate", 0.0001, 10.0, format="%g", step=0.01,
                     key=session.remember(lr_key, preset.lr), disabled=auto_lr,
                     help="Step size of SGD. If training diverges, the page suggests a smaller "
                     "one.")
seed = int(split["seed"])  # one seed: the split, the initial model and the batch order
c4.markdown(f"**Seed:** {seed}", help="Set on page 1 with the split: the same seed gives the "
            "same split, the same initial model and the same batch order.")
c4.caption("set on page 1")
with st.expander("More settings"):
    a1, a2, a3 = st.columns(3)
    l2 = a1.number_input("L2 regularisation α", 0.0, 10.0, format="%g", step=0.0001,
                         key=session.remember("l2", 0.0),
                         help="Adds ½·α·‖θ‖² to the loss of every image.")
    decay = a2.selectbox("Learning rate over time", ["constant", "inv_sqrt"],
                         key=session.remember("decay", "constant"),
                         format_func={"constant": "constant",
                                      "inv_sqrt": "shrinking as 1/√step"}.get)
    dtype = a3.selectbox("Precision", ["float32", "float64"],
                         key=session.remember("dtype", "float32"),
                         help="float64 is slower but makes influence estimates more exact.")

config = RunConfig(model=choice, epochs=int(epochs) if epochs else None, batch_size=int(batch),
                   lr=None if auto_lr else float(lr), l2=float(l2), seed=int(seed),
                   lr_decay=decay, dtype=dtype, val_fraction=split["val"],
                   test_fraction=split["test"])


try:
    guess = session.estimate(dataset_row["id"], asdict(config))
    took = guess["seconds_train"] + (guess["seconds_probe"] if auto_lr else 0)
    st.info(f"Before you start: training should take **{words.seconds(took)}** "
            f"on this machine and use **{words.size(guess['disk_bytes'])}** of disk "
            f"({guess['n_train']:,} training images, {guess['steps']:,} SGD steps, "
            f"{guess['n_params']:,} parameters). Later, computing influence takes "
            f"{words.seconds(guess['seconds_score'])} for the exact method or "
            f"{words.seconds(guess['seconds_score_last'])} for the fast one.",
            icon=":material/timer:")
    if warn := timing.long_warning(took, "fewer epochs, or a learning rate of your own "
                                         "instead of the probe"):
        st.warning(warn, icon=":material/timer:")
    settings_ok = True
except (RunError, DataError) as e:
    st.error(f"These settings cannot be used: {e}")
    settings_ok = False

if st.button("Start training", type="primary", disabled=running or not settings_ok,
             icon=":material/play_arrow:"):
    try:
        job = jobs.start_training(session.store(), session.sid(), dataset_row["id"], config,
                                  probe_lr=auto_lr)
        session.state()["previous_run"] = session.state().get("run")
        session.set_run(job.result["run"])
        st.rerun()
    except (runner.Busy, RunError, DataError) as e:
        panels.busy_error(e)

# --- the job, or the current run --------------------------------------------------------------
job_run_row = session.store().run(job.result["run"]) if job is not None else None
if job_run_row is not None and job_run_row["dataset"] == dataset_row["id"]:
    st.subheader("Latest training")
    panels.job_panel("train")
    if job.status == FAILED:
        st.error(f"Training failed: {job.error}")
        if job.suggested_lr:
            def use_lr(value=job.suggested_lr, key=lr_key):
                st.session_state[key] = value
                st.session_state["auto_lr"] = False
            st.button(f"Use learning rate {job.suggested_lr:g}", on_click=use_lr,
                      icon=":material/healing:")
    else:
        panels.job_outcome(job)
run_row = session.current_run_row()
if run_row is not None and run_row["dataset"] == dataset_row["id"] and \
        run_row["id"] != (job_run_row or {}).get("id"):
    st.subheader("Current model")
    if session.usable(run_row):
        st.plotly_chart(charts.curves_chart(session.training_log(run_row["id"])),
                        key="stored_curves")
    else:
        panels.run_status_note(run_row)

if session.usable(run_row) and run_row["dataset"] == dataset_row["id"]:
    m = run_row["metrics"]
    cols = st.columns(4)
    cols[0].metric("Validation accuracy", f"{1 - m['val_error']:.1%}")
    cols[1].metric("Test error", f"{m['test_error']:.1%}")
    cols[2].metric("Training images", f"{m['train_size']:,}")
    cols[3].metric("Trained in", f"{m['seconds']:.1f} s")
    used = run_row["config"]["lr"]
    if m.get("lr_probe"):
        st.caption(f"Learning rate {used:g}, chosen by the probe: {m['lr_probe']['reason']}.")
    log = session.training_log(run_row["id"])
    recorded = run_row["config"]
    n_val = len(data.split(recorded["val_fraction"], recorded["test_fraction"],
                           recorded["seed"]).val)
    st.markdown(f"**Did it learn?** {advice.learned(log, data.classes, n_val)}")
    over = advice.overfitting(log)
    if over is not None and m.get("learned", True):
        best = over["best_epoch"]
        st.warning(f"**Validation loss has been rising for {over['epochs_since_best']} epochs** "
                   f"({words.term('overfitting', 'what this means')}). {over['sentence']} "
                   "Influence traces the recorded training to its last step, so an earlier "
                   "epoch's model cannot be scored instead; training again makes a new recorded "
                   f"run with the same settings and {best} epochs (this one stays in the list "
                   "below and can be opened again).", icon=":material/trending_up:")
        if st.button(f"Train again with {best} epochs", icon=":material/replay:",
                     disabled=running):
            same = RunConfig(**{f.name: recorded[f.name] for f in fields(RunConfig)
                                if f.name in recorded and f.name not in (
                                    "dataset", "fingerprint", "removed", "fixes", "parent")})
            try:
                job = jobs.start_training(session.store(), session.sid(), dataset_row["id"],
                                          replace(same, epochs=best))
                session.state()["previous_run"] = run_row["id"]
                session.set_run(job.result["run"])
                st.rerun()
            except (runner.Busy, RunError, DataError) as e:
                panels.busy_error(e)
    if not m.get("learned", True):
        longer = min(1000, 3 * run_row["config"]["epochs"])
        st.warning(f"**This model did not learn.** Its validation loss {m['val_loss']:.3g} is "
                   f"not clearly below {m['chance_loss']:.3g}, what guessing from the class "
                   "frequencies gives. Ranking its training images would mean nothing, so page "
                   f"3 will not do it. Train longer: {longer} epochs instead of "
                   f"{run_row['config']['epochs']}, with the learning rate chosen by the probe.",
                   icon=":material/warning:")

        if st.button(f"Train longer ({longer} epochs)", icon=":material/fitness_center:",
                     disabled=running, type="primary"):
            try:
                job = jobs.start_training(session.store(), session.sid(), dataset_row["id"],
                                          replace(config, epochs=longer, lr=None),
                                          probe_lr=True)
                session.state()["previous_run"] = run_row["id"]
                session.set_run(job.result["run"])
                st.rerun()
            except (runner.Busy, RunError, DataError) as e:
                panels.busy_error(e)
    else:
        st.page_link("views/harmful.py", label="Next: find the harmful training images",
                     icon=":material/arrow_forward:")

# --- earlier runs -----------------------------------------------------------------------------
earlier = [r for r in session.visible(session.store().runs(dataset_row["id"]))
           if r["kind"] == "train"]
if earlier:
    with st.expander(f"Models trained on this data set ({len(earlier)})",
                     expanded=run_row is None):
        table = pd.DataFrame([{
            "model": words.run_label(r), "status": r["status"],
            "epochs": (r["config"] or {}).get("epochs"),
            "learning rate": (r["config"] or {}).get("lr"),
            "validation error": (r["metrics"] or {}).get("val_error", float("nan")),
            "test error": (r["metrics"] or {}).get("test_error", float("nan")),
            "session": "this one" if r["session"] == session.sid() else "another",
        } for r in earlier])
        st.dataframe(table, hide_index=True, column_config={
            "validation error": st.column_config.NumberColumn(format="percent"),
            "test error": st.column_config.NumberColumn(format="percent")})
        done = [r for r in earlier if session.usable(r)]
        if done:
            pick = st.selectbox("Open a model", range(len(done)), key="open_run",
                                format_func=lambda i: words.run_label(done[i]))
            if st.button("Open this model"):
                try:  # a damaged or tampered run folder is refused here, never unpickled
                    with st.spinner("Checking the saved model …"):
                        session.store().open_run(done[pick]["id"], data)
                    session.set_run(done[pick]["id"])
                    st.rerun()
                except (RunError, DataError) as e:
                    st.error(f"This model cannot be opened: {e}")
