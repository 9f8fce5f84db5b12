"""How long work reports its progress, and how a caller stops it. Training, scoring, the trust
check and the baselines all report through a ProgressFn; raising Cancelled from it stops the work
with nothing written."""
from __future__ import annotations

import threading
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


def counted(on_progress: ProgressFn | None, phase: str, total: int
            ) -> Callable[[int], None] | None:
    """A per-step callback (its argument, the step, is not used) that reports the units 1, 2, …,
    `total` of `phase` to on_progress in order, whichever thread calls it (the replay ahead of
    the retrace reports from a thread of its own); None without on_progress."""
    if on_progress is None:
        return None
    lock, done = threading.Lock(), iter(range(1, total + 1))

    def report(t: int) -> None:
        with lock:
            on_progress(Progress(phase, next(done), total))
    return report


class HeldBack:
    """The progress of work done beside other work (a cleaning round's controls beside its
    cleaned run), held back until that work is done (release) and then reported from where it
    has got to: the page shows one phase at a time, each counting up."""

    def __init__(self, on_progress: ProgressFn):
        self.on_progress, self.lock = on_progress, threading.Lock()
        self.latest: Progress | None = None
        self.released = False

    def __call__(self, p: Progress) -> None:
        with self.lock:
            self.latest = p
            if self.released:
                self.on_progress(p)

    def release(self) -> None:
        with self.lock:
            self.released = True
            if self.latest is not None:
                self.on_progress(self.latest)
