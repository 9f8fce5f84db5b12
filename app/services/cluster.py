"""Where the app's jobs run: in this process (the default: nothing to configure), or on a Ray
cluster when the RAY_ADDRESS environment variable names one or an address was given on the data
page (kept in the workspace as cluster.json). The runner's backend is chosen here, once when the
app starts and again when the data page connects or disconnects (runner.use). Ray is imported
only with a cluster (app.services.ray_jobs); an app without one never loads it.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from datasets.storage import atomic_file

from ..words import plain_message
from . import runner, store as stores

SETTINGS = "cluster.json"  # in the workspace folder: {"address": "host:port"}
_lock = threading.Lock()
_state: dict = {"started": False, "backend": None, "address": None, "error": None}


def saved_address(root: Path) -> str | None:
    try:
        return json.loads((Path(root) / SETTINGS).read_text()).get("address") or None
    except (OSError, ValueError, AttributeError):
        return None


def configured_address(root: Path) -> str | None:
    """$RAY_ADDRESS, else the address saved in the workspace, else None (jobs run here)."""
    return os.environ.get("RAY_ADDRESS") or saved_address(root)


def start(root: Path) -> None:
    """Once per server process, before the workspace store is first opened: connect to the
    configured cluster, if any, and re-attach to the jobs it still runs for this workspace. A
    cluster that cannot be reached leaves the jobs here; the data page says why."""
    with _lock:
        if _state["started"]:
            return
        _state["started"] = True
    address = configured_address(root)
    if address:
        try:
            connect(address, root)
        except Exception as e:  # unreachable, refused, or Ray missing: say so on the data page
            _state.update(address=address, error=why(e))


def connect(address: str, root: Path, remember: bool = False) -> dict:
    """Run new jobs on the Ray cluster at `address` (host:port of its head node), re-attach to
    this workspace's jobs there, and with `remember`, keep the address in the workspace for the
    next start. Returns the cluster's CPUs, GPUs and nodes."""
    send_token_if_any()
    from . import ray_jobs  # imports Ray: only with a cluster configured

    backend = ray_jobs.connect(address)
    stores.register_owner("ray", backend.owner_alive)
    runner.use(backend)
    _state.update(backend=backend, address=address, error=None)
    if remember:
        with atomic_file(Path(root) / SETTINGS) as tmp:
            tmp.write_text(json.dumps({"address": address}))
    reattach(root)
    return backend.resources()


def send_token_if_any() -> None:
    """Ray clusters ask for a token by default, but a process given an address sends one only
    with RAY_AUTH_MODE=token (read when Ray is imported): send it whenever one is at hand (a
    cluster without authentication accepts it too)."""
    if "RAY_AUTH_MODE" not in os.environ and (
            os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
            or (Path.home() / ".ray" / "auth_token").is_file()):
        os.environ["RAY_AUTH_MODE"] = "token"


def reattach(root: Path) -> list[runner.Job]:
    """The jobs of this workspace still running on the cluster, followed again."""
    return runner.backend().reattach(stores.Store(root))


def disconnect(root: Path) -> None:
    """New jobs run here again; the address is forgotten. Jobs already on the cluster go on and
    are still followed."""
    runner.use(None)
    _state.update(backend=None, address=None, error=None)
    (Path(root) / SETTINGS).unlink(missing_ok=True)


def status() -> dict:
    """For the data page: the address, whether jobs run there, the error of the last try, and
    the cluster's resources when connected."""
    info = {"address": _state["address"], "connected": _state["backend"] is not None,
            "error": _state["error"], "from_environment": bool(os.environ.get("RAY_ADDRESS"))}
    if _state["backend"] is not None:
        try:
            info.update(_state["backend"].resources())
        except Exception as e:
            info["error"] = why(e)
    return info


def why(e: Exception) -> str:
    """A failed connection in one sentence (a ConnectionError is no workspace file problem)."""
    return str(e) if isinstance(e, ConnectionError) else plain_message(e)
