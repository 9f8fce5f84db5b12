"""How long work reports its progress, and how a caller stops it. Training, scoring, the trust
check and the baselines all report through a ProgressFn; raising Cancelled from it stops the work
with nothing written."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .sgd import StepStats


class Cancelled(Exception):
    """Raised by a progress callback to stop long work; nothing is written."""


@dataclass
class Progress:
    """`done` of `total` units of `phase` (e.g. SGD steps, retraced steps, MINRES iterations)."""

    phase: str
    done: int
    total: int
    step: StepStats | None = None  # the training step just taken, while training
    val: dict | None = None  # validation loss and accuracy at an epoch's end


ProgressFn = Callable[[Progress], None]
