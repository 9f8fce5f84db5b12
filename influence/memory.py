"""How much memory the engine may hold while it scores, and what fits in it.

The budget is, in this order: the run's own setting (RunConfig.memory_mb), the environment
variable INFLUENCE_MEMORY_BUDGET_MB, or half the memory the machine has free when asked. Two
choices follow from it, neither changing a single bit of the results:

* the epoch replay keeps every θ of an epoch when they fit (no step is computed twice), and
  every ⌈√T_k⌉-th θ otherwise (sgd.EpochReplay: about one replay more, ∝ √T_k θ held);
* the query gradient u = ∇θ of the mean validation loss is summed over chunks of validation
  images small enough that their activations fit, so its peak memory does not grow with the
  validation set.
"""
from __future__ import annotations

import os
from typing import Callable

import torch
from torch import nn
from torch.func import grad

from .sgd import Params, checkpoint_every

ENV = "INFLUENCE_MEMORY_BUDGET_MB"
MB = 2 ** 20
SHARE_OF_FREE = 0.5  # of the machine's free memory, when no budget is given


def free_bytes() -> int:
    """Memory available to new allocations now (Linux: MemAvailable; else free pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def budget_bytes(memory_mb: int | None = None) -> int:
    """The memory budget: `memory_mb` when given, else $INFLUENCE_MEMORY_BUDGET_MB, else half
    the free memory."""
    if memory_mb is None and os.environ.get(ENV):
        try:
            memory_mb = int(os.environ[ENV])
        except ValueError:
            raise ValueError(f"{ENV} must be a whole number of megabytes, not "
                             f"{os.environ[ENV]!r}") from None
    if memory_mb is not None:
        return max(int(memory_mb), 1) * MB
    return int(SHARE_OF_FREE * free_bytes())


def params_bytes(theta: Params) -> int:
    return sum(p.numel() * p.element_size() for p in theta.values())


def replay_every(steps: int, theta: Params, budget: int) -> int:
    """Keep every `replay_every`-th θ of an epoch of `steps` steps: 1 (every θ, no step
    replayed twice) when the T_k θ fit in the budget, else ⌈√T_k⌉."""
    return 1 if steps * params_bytes(theta) <= budget else checkpoint_every(steps)


def replay_ahead(steps: int, theta: Params, budget: int, workers: int) -> bool:
    """Replay each epoch's θ in a thread while the retrace works on the epoch after it
    (sgd_influence.replayed_epochs): with a second core (workers ≥ 2) and when two epochs of θ
    fit in the budget."""
    return workers >= 2 and 2 * steps * params_bytes(theta) <= budget


def activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes one image's forward pass keeps for the backward pass, about: every module's output
    (hooks on one image), twice (the output and its gradient)."""
    sizes = []
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(o.numel() * o.element_size()))
             for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in hooks:
            h.remove()
    return 2 * (sum(sizes) + x[:1].numel() * x.element_size())


def images_per_chunk(model: nn.Module, x: torch.Tensor, budget: int, share: float = 0.25,
                     most: int = 1024) -> int:
    """Images whose forward and backward pass fit in `share` of the budget (at most `most`, at
    least 1): the chunk of a query gradient."""
    return int(max(1, min(most, share * budget // max(activation_bytes(model, x), 1))))


class MeanLoss:
    """The mean of `loss(outputs(θ, x_i), y_i)` over images x, y as a function of θ, in chunks
    of `chunk` images; gradient(θ) sums its gradient chunk by chunk, so that one chunk's
    activations are held at a time whatever the number of images. With one chunk both are the
    one-pass computation, bit for bit."""

    def __init__(self, outputs: Callable[[Params, torch.Tensor], torch.Tensor], loss: Callable,
                 x: torch.Tensor, y: torch.Tensor, chunk: int):
        self.outputs, self.loss, self.x, self.y = outputs, loss, x, y
        self.chunk = max(int(chunk), 1)

    def _parts(self):
        return zip(self.x.split(self.chunk), self.y.split(self.chunk))

    def _sum(self, theta: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss(self.outputs(theta, x), y).sum()

    def __call__(self, theta: Params) -> torch.Tensor:
        if len(self.y) <= self.chunk:
            return self.loss(self.outputs(theta, self.x), self.y).mean()
        return sum(self._sum(theta, x, y) for x, y in self._parts()) / len(self.y)

    def gradient(self, theta: Params) -> Params:
        """∇θ of the mean loss, one chunk at a time."""
        if len(self.y) <= self.chunk:
            return grad(self)(theta)
        total = None
        for x, y in self._parts():
            g = grad(self._sum)(theta, x, y)
            total = g if total is None else {k: total[k] + g[k] for k in total}
        return {k: v / len(self.y) for k, v in total.items()}
