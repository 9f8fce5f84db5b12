"""The web app's one entry point: `streamlit run app/main.py`. Four pages, one per step, and
the glossary they link to."""
import os
import sys
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run` puts app/ first on the path, not the repo
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle CPU threads sleep, before torch loads

from app import panels, session, words  # noqa: E402
from app.services import cluster, runner  # noqa: E402
from app.services.store import workspace_root  # noqa: E402
from datasets import DataError  # noqa: E402
from influence.config import RunError  # noqa: E402

runner.use_cpu_threads()
cluster.start(workspace_root().resolve())  # a Ray cluster, if one is configured: before the
# workspace is opened, so that its jobs still running there are not taken for interrupted
st.set_page_config(page_title="Data cleansing with SGD-influence", page_icon="🧹",
                   layout="wide")

PAGES = [
    st.Page("views/data.py", title="1 · Data", icon=":material/photo_library:", default=True),
    st.Page("views/train.py", title="2 · Train", icon=":material/model_training:"),
    st.Page("views/harmful.py", title="3 · Harmful images", icon=":material/report:"),
    st.Page("views/retrain.py", title="4 · Retrain and compare", icon=":material/compare:"),
    st.Page("views/glossary.py", title="Glossary", icon=":material/menu_book:"),
]

try:
    session.start_session()
except (DataError, RunError, OSError) as e:  # e.g. the workspace is not writable or full
    st.error(words.plain_message(e))
    st.stop()
page = st.navigation(PAGES)
try:
    panels.sidebar()
    page.run()
except (DataError, RunError, OSError) as e:  # e.g. a damaged or deleted folder, a full disk
    st.error(f"This could not be done: {words.plain_message(e)}")
