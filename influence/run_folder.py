"""The run folder: a trained run on disk, and the tables this tool writes.

A run folder holds
    config.json              what was run (data set, split, model, SGD settings, removed ids,
                             fixed labels)
    checkpoints.safetensors  θ at the start of every epoch (K tensors sets)
    weights.safetensors      θ[T], the trained model
    schedule.safetensors     the batch order of every epoch and η_t of every step
    log.csv                  per-step training loss and accuracy, validation at epoch ends
    predictions.csv          every image's predicted class and its probability
    metrics.json             final numbers; written last, so its presence marks a complete run
    influence.csv            after `score`: sample_id,label,influence, most harmful first
It is written in a temporary sibling folder and renamed into place at the end: a crash never
leaves a half-written run that looks complete. Weights never go through pickle.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from datasets import ImageSet
from datasets.storage import atomic_file, atomic_folder

from .config import RunConfig, RunError
from .progress import Progress, ProgressFn
from .runs import Run

FORMAT = "sgd-influence-run/1"


def save(run: Run, out: str | os.PathLike, log: pd.DataFrame | None = None) -> Path:
    """Write the run directory atomically; refuses to overwrite an existing one."""
    out = Path(out)
    refuse_existing(out)
    K = run.schedule.epochs
    try:
        with atomic_folder(out) as tmp:
            (tmp / "config.json").write_text(
                json.dumps({"format": FORMAT, **asdict(run.config)}, indent=2))
            save_file({f"epoch{k}/{name}": p.contiguous().cpu()
                       for k in range(K) for name, p in run.checkpoints[k].items()},
                      tmp / "checkpoints.safetensors")
            save_file({name: p.contiguous().cpu() for name, p in run.theta.items()},
                      tmp / "weights.safetensors")
            save_file({"order": torch.as_tensor(run.schedule.order, dtype=torch.int32),
                       "lr": torch.as_tensor(run.schedule.lr)}, tmp / "schedule.safetensors")
            if log is not None:
                log.to_csv(tmp / "log.csv", index=False)
            predictions(run).to_csv(tmp / "predictions.csv", index=False)
            (tmp / "metrics.json").write_text(json.dumps(run.metrics, indent=2))
    except OSError as e:
        raise RunError(f"cannot write the run to {out}: {e.strerror or e} "
                       "(check free disk space and write permission)") from None
    run.path = out
    return out


def predictions(run: Run) -> pd.DataFrame:
    """sample_id, part, label, predicted, confidence for every image of the data set: the
    trained model's class and its probability, so that results can be shown and compared
    without loading a model (predictions.csv in the run folder)."""
    frames = []
    for part in ("train", "val", "test"):
        positions = getattr(run.split, part)
        if len(positions) == 0:
            continue
        prob = run.probabilities(part)
        frames.append(pd.DataFrame({
            "sample_id": [run.data.ids[i] for i in positions], "part": part,
            "label": (run.objective.y.cpu().numpy() if part == "train"
                      else run.data.labels[positions]), "predicted": prob.argmax(1),
            "confidence": prob.max(1)}))
    return pd.concat(frames, ignore_index=True)


def load(path: str | os.PathLike, data: ImageSet | None = None) -> Run:
    """Reopen a saved run. Corrupt, foreign or incomplete run folders are refused clearly."""
    path = Path(path)
    raw = json_file(path, "config.json", f"{path} is not a run folder (no config.json)")
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise RunError(f"{path} was not written by this tool (unknown format)")
    metrics = json_file(path, "metrics.json",
                        f"{path} is incomplete (training was interrupted); train it again")
    if not isinstance(metrics, dict):
        raise RunError(f"{path}: metrics.json is damaged (not a JSON object)")
    run = Run(config_from_json(raw, path), data)
    try:
        stored = load_file(path / "checkpoints.safetensors", device=str(run.device))
        final = load_file(path / "weights.safetensors", device=str(run.device))
        schedule = load_file(path / "schedule.safetensors")
    except (SafetensorError, OSError, RuntimeError) as e:
        raise RunError(f"{path}: a weights file is missing or damaged ({e})") from None
    expected = {name: p.shape for name, p in run.model.named_parameters()}
    K = run.schedule.epochs
    checkpoints = {}
    for k in range(K + 1):
        theta = {name: (final.get(name) if k == K else stored.get(f"epoch{k}/{name}"))
                 for name in expected}  # in the model's parameter order
        if set(theta) != set(expected) or any(
                theta[n] is None or theta[n].shape != s or theta[n].dtype != run.dtype
                for n, s in expected.items()):
            raise RunError(f"{path}: the weights do not fit the {run.preset.name} model of this "
                           "run")
        checkpoints[k] = theta
    order = schedule.get("order")
    if order is None or not np.array_equal(order.numpy(), run.schedule.order):
        raise RunError(f"{path}: the stored batch order does not match the run's config")
    run.checkpoints, run.metrics, run.path = checkpoints, metrics, path
    return run


def json_file(folder: Path, name: str, missing: str):
    """The JSON value in folder/name; RunError `missing` when there is no such file, and a clear
    one when it is damaged."""
    if not (folder / name).is_file():
        raise RunError(missing)
    try:
        return json.loads((folder / name).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{folder}: {name} is damaged ({e})") from None


def config_from_json(raw: dict, path: Path) -> RunConfig:
    """A RunConfig from a run folder's config.json, checked by RunConfig.validate (a tampered
    file is refused here, not deep inside training or scoring)."""
    config = RunConfig(**{f.name: raw[f.name] for f in fields(RunConfig) if f.name in raw})
    if "selection_fraction" not in raw:  # saved before the selection part: the whole
        config.selection_fraction = 0.0  # validation part stayed the query
    try:
        config.validate()
    except RunError as e:
        raise RunError(f"{path}: config.json is damaged ({e})") from None
    return config


class TrainingLog:
    """A progress callback that keeps the training log: one row per step, with validation loss
    and accuracy on each epoch's last row. Chains to another callback."""

    def __init__(self, then: ProgressFn | None = None):
        self.rows: list[dict] = []
        self.then = then

    def __call__(self, p: Progress) -> None:
        if p.step is not None:
            s = p.step
            self.rows.append({"step": s.step + 1, "epoch": s.epoch + 1, "loss": s.loss,
                              "accuracy": s.accuracy})
        if p.val is not None and self.rows:
            self.rows[-1].update(val_loss=p.val["val_loss"], val_accuracy=p.val["val_accuracy"])
        if self.then:
            self.then(p)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["step", "epoch", "loss", "accuracy", "val_loss",
                                                "val_accuracy"])


def refuse_existing(out: str | os.PathLike) -> None:
    if Path(out).exists():
        raise RunError(f"{out} already exists; choose another output folder")


def train_new(config: RunConfig, out: str | os.PathLike, data: ImageSet | None = None,
              on_progress: ProgressFn | None = None, notes: dict | None = None) -> Run:
    """Train a new recorded run and save it to `out` (which must not exist yet); `notes` are
    kept with its metrics (e.g. how its learning rate was chosen)."""
    refuse_existing(out)
    run = Run(config, data)
    log = TrainingLog(on_progress)
    run.train(log)
    run.metrics.update(notes or {})
    save(run, out, log.frame())
    return run


def retrain_saved(run: Run, remove_ids, mode: str, out: str | os.PathLike,
                  on_progress: ProgressFn | None = None,
                  fixes: Mapping[str, str | int] | None = None) -> Run:
    """Counterfactual retraining of a saved run without `remove_ids` and with `fixes`, saved to
    `out`."""
    refuse_existing(out)
    log = TrainingLog(on_progress)
    child = run.retrain(remove_ids, mode, log, fixes)
    save(child, out, log.frame())
    return child


def write_csv(frame: pd.DataFrame, out: str | os.PathLike) -> Path:
    """Write a CSV atomically (see datasets.storage.atomic_file)."""
    out = Path(out)
    try:
        with atomic_file(out) as tmp:
            frame.to_csv(tmp, index=False)
    except OSError as e:
        raise RunError(f"cannot write {out}: {e.strerror or e} "
                       "(check free disk space and write permission)") from None
    return out


def read_csv(path: str | os.PathLike, text: tuple[str, ...] = (),
             numbers: tuple[str, ...] = (), optional_text: tuple[str, ...] = ()) -> pd.DataFrame:
    """A table this tool wrote (predictions, influence scores, training log): the `text` columns
    (and `optional_text` ones where present) stay text ("07" must not become 7), the `numbers`
    columns must be numbers. A missing or damaged file is a RunError."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype={c: str for c in (*text, *optional_text)})
    except (OSError, ValueError) as e:  # missing, unreadable, not CSV, not UTF-8
        raise RunError(f"the result file {path} is missing or damaged ({e}); compute it "
                       "again") from None
    missing = [c for c in (*text, *numbers) if c not in frame.columns]
    bad = [c for c in numbers if c in frame.columns and not (
        pd.api.types.is_numeric_dtype(frame[c]) and frame[c].notna().all())]
    if missing or bad:
        what = f"no column {missing[0]!r}" if missing else f"column {bad[0]!r} is not all numbers"
        raise RunError(f"the result file {path} is damaged ({what}); compute it again")
    return frame
