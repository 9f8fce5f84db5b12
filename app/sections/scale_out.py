"""The data page's advanced section: run the jobs on a Ray cluster instead of in this app."""
from __future__ import annotations

import streamlit as st

from .. import words
from ..services import cluster
from ..services.store import workspace_root


def panel() -> None:
    info = cluster.status()
    with st.expander("Advanced: run the jobs on a Ray cluster", expanded=bool(info["error"]),
                     icon=":material/hub:"):
        st.caption("By default training, scoring, the trust check and retraining run inside "
                   "this app, on this machine. Give the address of a Ray cluster's head node "
                   "(`ray start --head` prints it) and they run on its workers instead, on a "
                   "GPU where it has one; a restart of this app does not stop them. The results "
                   "come back into this workspace either way.")
        root = workspace_root().resolve()
        if info["connected"]:
            st.success(f"Jobs run on the Ray cluster at `{info['address']}`: "
                       f"{words.count(info['cpus'], 'CPU')} and {words.count(info['gpus'], 'GPU')} "
                       f"on {words.count(info['nodes'], 'machine')}.", icon=":material/hub:")
            if not info["from_environment"] and st.button("Run new jobs here again",
                                                          key="ray_disconnect"):
                cluster.disconnect(root)
                st.rerun()
        else:
            address = st.text_input("Address of the head node", key="ray_address",
                                    value=info["address"] or "", placeholder="10.0.0.5:6379")
            if st.button("Connect", key="ray_connect", disabled=not address.strip()):
                with st.spinner(f"Connecting to {address.strip()} …"):
                    try:
                        cluster.connect(address.strip(), root, remember=True)
                        st.rerun()
                    except Exception as e:
                        st.error(f"Could not connect: {cluster.why(e)}")
        if info["error"]:
            st.error(f"The Ray cluster at `{info['address']}` could not be used, so jobs run "
                     f"here: {info['error']}")
