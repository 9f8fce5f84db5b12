"""Page 1: choose or upload a labelled image set, look at it, set the split and the demo."""
import numpy as np
import streamlit as st

import datasets
from app import charts, images, session, words
from app.sections import scale_out
from datasets import DataError, limits
from datasets.builtin import data_dir
from datasets.upload import load_upload

st.title("1 · Choose the data")
st.caption("Pick a built-in data set or upload your own labelled images. The next pages train a "
           "model on them, rank the training images by how much they hurt it, and retrain "
           "without the ones you pick.")

BUILTINS = datasets.BUILTINS

source = st.radio("Where do the images come from?",
                  ["Built-in data set", "Upload a ZIP", "Reopen a saved data set"],
                  horizontal=True, key="data_source")

if source == "Built-in data set":
    name = st.selectbox("Built-in data set", list(BUILTINS),
                        format_func=lambda n: BUILTINS[n].description, key="builtin")
    if BUILTINS[name].torchvision:
        st.info(f"{BUILTINS[name].title} comes through torchvision: it is downloaded the "
                "first time, which needs internet. Offline, download it on another machine "
                f"(e.g. `torchvision.datasets.{BUILTINS[name].torchvision}"
                "(root, download=True)`) and copy the files to the folder named by the "
                f"`DATA_DIR` environment variable (now: `{data_dir()}`), then restart the app.",
                icon=":material/cloud_download:")
    in_use = (session.current_dataset_row() or {}).get("name") == BUILTINS[name].title
    if st.button("In use" if in_use else "Use this data set", type="primary", disabled=in_use,
                 icon=":material/check:" if in_use else None):
        with st.spinner(f"Loading {BUILTINS[name].description} …"):
            try:
                session.use_builtin(name)
                st.rerun()
            except DataError as e:
                st.error(str(e))

elif source == "Upload a ZIP":
    st.markdown(
        "Two layouts work:\n"
        "* **class folders** — `cat/001.png`, `cat/002.jpg`, `dog/001.png`, … (the folder "
        "name is the label);\n"
        "* **a `labels.csv`** with columns `filename,label`, next to the images.\n\n"
        "Any common image format. Images of mixed sizes are resized to the most common size, "
        f"shrunk so that no side is over {limits.MAX_SIDE} pixels; if every image is grey the "
        "set stays greyscale, otherwise all become colour (RGB). Limits: "
        f"{limits.MAX_ARCHIVE_BYTES // limits.MiB} MB per ZIP, {limits.MIN_CLASSES}–"
        f"{limits.MAX_CLASSES} classes, at least {limits.MIN_IMAGES_PER_CLASS} images per class.")
    upload = st.file_uploader("ZIP file", type=["zip"], key="upload")
    if upload is not None:
        default = upload.name.rsplit(".", 1)[0]
        title = st.text_input("Name of this data set", value=default, max_chars=80)
        if st.button("Use this upload", type="primary"):
            with st.spinner("Reading the images …"):
                try:
                    data = load_upload(upload)
                    session.set_dataset(session.store().add_dataset(
                        data, title.strip() or default, session.sid()))
                    st.session_state.upload_note = data.source
                    st.rerun()
                except DataError as e:
                    st.error(f"This upload cannot be used: {e}")
    if note := st.session_state.pop("upload_note", None):
        st.success(note)

else:
    saved = session.store().datasets()
    used = session.state().get("datasets", [])
    mine = [r for r in saved if r["id"] in used]
    others = [r for r in saved if r["id"] not in used] if session.state().get("show_all") else []
    options = mine + others
    if not options:
        st.info("No data set saved by this session yet. To see those of other sessions or "
                "from before a restart, turn on *Show saved work of other sessions* in the "
                "sidebar.")
    else:
        choice = st.selectbox(
            "Saved data sets (newest first)", range(len(options)),
            format_func=lambda i: words.dataset_label(options[i])
            + ("" if options[i] in mine else " · from an earlier session"), key="saved_pick")
        if st.button("Open this data set", type="primary"):
            try:
                session.data_of(options[choice]["id"])  # refuses a damaged folder clearly
                session.set_dataset(options[choice])
                st.rerun()
            except DataError as e:
                st.error(str(e))

# --- the current data set ------------------------------------------------------------------------
dataset_row = session.current_dataset_row()
if dataset_row is None:
    st.stop()
try:
    data, _ = session.data_of(dataset_row["id"])
except DataError as e:
    st.error(str(e))
    st.stop()

st.divider()
st.subheader(f"Current data set: {dataset_row['name']}")
st.caption(data.source)
h, w, c = data.shape
cols = st.columns(3)
cols[0].metric("Images", f"{len(data):,}")
cols[1].metric("Image size", f"{h}×{w} {'colour' if c == 3 else 'grey'}")
cols[2].metric("Classes", len(data.classes))
left, right = st.columns([2, 3])
with left:
    st.plotly_chart(charts.class_counts_chart(data), key="class_counts")
with right:
    st.markdown("**A few of the images, with their labels**")
    rng = np.random.default_rng(0)
    sample = rng.choice(len(data), size=min(24, len(data)), replace=False)
    flipped_here = dataset_row.get("flipped") or {}
    images.image_grid(data, sample, [data.classes[data.labels[i]]
                                 + (f" (was {flipped_here[data.ids[i]]})"
                                    if data.ids[i] in flipped_here else "") for i in sample],
                  per_row=8, side=56)

# --- split and demo ------------------------------------------------------------------------------
st.subheader("Split and demo")
flipped = dataset_row.get("flipped") or {}
base_id = dataset_row.get("parent") or dataset_row["id"]
split = session.split_settings()
key = dataset_row["id"]  # the widgets start again from the stored settings when the data set
# changes


def apply() -> None:
    """Apply the split and the demo as soon as one of them changes (never lost on leaving)."""
    ss = st.session_state
    settings = {"val": ss[f"val-{key}"] / 100, "test": ss[f"test-{key}"] / 100,
                "seed": int(ss[f"seed-{key}"])}
    try:
        data.split(settings["val"], settings["test"], settings["seed"])  # refuses a bad split
        base = session.store().dataset(base_id)
        if ss[f"demo-{key}"]:
            clean, _ = session.data_of(base_id)
            noisy, flips = datasets.flip_training_labels(clean, ss[f"flip-{key}"] / 100,
                                                         settings["val"], settings["test"],
                                                         settings["seed"])
            new = session.store().add_dataset(noisy, base["name"], session.sid(),
                                              parent=base_id, flipped=flips, split=settings)
        else:
            new = base
        session.state().update(split=settings, flip_pct=ss[f"flip-{key}"])
        if new["id"] != dataset_row["id"]:
            session.set_dataset(new)
        session.save()
    except DataError as e:
        ss.split_error = str(e)


c1, c2, c3 = st.columns(3)
c1.slider("Validation share", 5, 40, int(round(split["val"] * 100)), step=5, format="%d%%",
          key=f"val-{key}", on_change=apply, help="Images kept aside during training. Influence "
          "is measured on their loss: 'harmful' means it makes the model worse on these.")
c2.slider("Test share", 5, 40, int(round(split["test"] * 100)), step=5, format="%d%%",
          key=f"test-{key}", on_change=apply, help="Images used only to measure the model "
          "before and after cleaning; never used to compute influence.")
c3.number_input("Seed", 0, 1_000_000, int(split["seed"]), key=f"seed-{key}", on_change=apply,
                help="The same seed gives the same split, the same initial model and the same "
                "batch order (and the same flipped labels in the demo).")
c1, c2 = st.columns([2, 1])
c1.toggle("Demo: flip some training labels to see the tool find them", value=bool(flipped),
          key=f"demo-{key}", on_change=apply, help="Applied at once: the next pages use the "
          "data set with the flipped labels.")
c2.slider("Share of training labels to flip", 1, 30, session.state().get("flip_pct", 10),
          format="%d%%", key=f"flip-{key}", on_change=apply,
          help="Each chosen training image gets a wrong label, drawn at random from the other "
          "classes. Validation and test images keep their true labels.")
if problem := st.session_state.pop("split_error", None):
    st.error(problem)

parts = data.split(split["val"], split["test"], split["seed"])
st.markdown(f"**{len(parts.train):,}** images for training, **{len(parts.val):,}** for "
            f"validation and **{len(parts.test):,}** for the test. The test images are never "
            "used to compute influence — only to measure the model before and after cleaning.")
st.caption(words.selection_part(len(parts.val)))
if flipped:
    st.info(f"Demo on: **{len(flipped)}** training labels were flipped at random "
            f"(seed {split['seed']}). Pages 3 and 4 tell you how many of them the tool finds.",
            icon=":material/science:")

st.page_link("views/train.py", label="Next: train a model on these images",
             icon=":material/arrow_forward:")

scale_out.panel()  # advanced: run the jobs on a Ray cluster
