"""Model presets, in one registry. None uses BatchNorm or dropout: BatchNorm in training mode
couples the instances of a batch, so per-instance gradients would be ill-defined, and dropout
would make replay depend on random draws that are not recorded."""
from __future__ import annotations

import copy
import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call

Shape = tuple[int, int, int]  # (H, W, C) of one image


def _logreg(h: int, w: int, c: int, k: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(h * w * c, k))


def _dnn(h: int, w: int, c: int, k: int) -> nn.Module:
    """The paper's 2×8 network (Section 7.1)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(h * w * c, 8), nn.ReLU(), nn.Linear(8, 8),
                         nn.ReLU(), nn.Linear(8, k))


def _with_head(features: nn.Sequential, shape: Shape, k: int) -> nn.Module:
    h, w, c = shape
    n_features = features(torch.zeros(1, c, h, w)).shape[1]
    return nn.Sequential(*features, nn.Linear(n_features, k))


def _cnn(h: int, w: int, c: int, k: int) -> nn.Module:
    """The paper's MNIST CNN (Section 7.2): 320 features for 28×28."""
    return _with_head(nn.Sequential(nn.Conv2d(c, 20, 5), nn.ReLU(), nn.MaxPool2d(2),
                                    nn.Conv2d(20, 20, 5), nn.ReLU(), nn.MaxPool2d(2),
                                    nn.Flatten()), (h, w, c), k)


def _cnn_small(h: int, w: int, c: int, k: int) -> nn.Module:
    return _with_head(nn.Sequential(nn.Conv2d(c, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                    nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                    nn.Flatten()), (h, w, c), k)


def _cnn_cifar(h: int, w: int, c: int, k: int) -> nn.Module:
    return _with_head(nn.Sequential(nn.Conv2d(c, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                                    nn.Conv2d(32, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                                    nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                                    nn.AdaptiveAvgPool2d(2), nn.Flatten()), (h, w, c), k)


@dataclass(frozen=True)
class Preset:
    name: str
    title: str  # in words, for the app
    lr: float  # a learning rate that trains it well with plain SGD at batch size 64
    build: Callable[[int, int, int, int], nn.Module]  # (H, W, C, outputs) → fresh module
    min_side: int = 1  # smallest image side it accepts


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("logreg", "logistic regression", 0.1, _logreg),
    Preset("dnn", "small neural network (2×8)", 0.1, _dnn),
    Preset("cnn", "the paper's MNIST CNN", 0.05, _cnn, min_side=16),  # η: the paper's
    Preset("cnn-small", "small CNN", 0.2, _cnn_small, min_side=4),
    Preset("cnn-cifar", "CIFAR-size CNN", 0.05, _cnn_cifar, min_side=4),
)}
CHOICES = ("auto", *PRESETS)  # "auto": the CNN that suits the image size


def register(preset: Preset) -> None:
    """Add a preset for this process (e.g. a benchmark's own model), usable by name like the
    built-in ones; the app's CHOICES stay the built-in ones, and a name taken is kept."""
    PRESETS.setdefault(preset.name, preset)


def resolve(name: str, shape: Shape) -> tuple[Preset, str]:
    """The preset for `name` (auto or a preset name) and input shape (H, W, C), with the reason
    in words. ValueError for an unknown name or a preset the images are too small for."""
    h, w, c = shape
    if name == "auto":
        if c == 3 and min(h, w) >= 16:
            return PRESETS["cnn-cifar"], \
                f"colour images of {h}×{w} pixels suit the CIFAR-size CNN"
        if min(h, w) >= 16:
            return PRESETS["cnn"], (f"grayscale images of {h}×{w} pixels suit the paper's "
                                    "MNIST CNN (two 5×5 convolutions)")
        return PRESETS["cnn-small"], (f"images of {h}×{w} pixels are too small for 5×5 "
                                      "convolutions, so a small CNN with 3×3 convolutions is used")
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}: use one of {', '.join(CHOICES)}")
    preset = PRESETS[name]
    if min(h, w) < preset.min_side:
        raise ValueError(f"{preset.title} needs images of at least {preset.min_side}×"
                         f"{preset.min_side} pixels, these are {h}×{w}: choose auto")
    return preset, f"{name} was asked for"


def n_outputs(n_classes: int) -> int:
    """Two classes use one logit and binary cross-entropy, as in the paper's LogReg and DNN."""
    return 1 if n_classes == 2 else n_classes


_SEEDING = threading.Lock()  # torch's global random state is one for the whole process


@contextmanager
def seeded(seed: int):
    """torch's global random numbers drawn from `seed` inside, and as they were after; one thread
    at a time: two threads building models at once would otherwise draw from each other's seed
    (jobs of several browser sessions, a cleaned run built beside its controls)."""
    with _SEEDING, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build(name: str, shape: Shape, n_classes: int, seed: int) -> nn.Module:
    """A freshly initialised preset; the same seed gives the same θ[1] on every machine."""
    with seeded(seed):
        return PRESETS[name].build(*shape, n_outputs(n_classes))


def last_layer(model: nn.Module) -> nn.Linear:
    """The output layer: the last linear layer the model holds."""
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise ValueError("the model has no linear output layer")
    return linear[-1]


_copies = threading.local()  # per thread: model → that thread's copy of it


def own_copy(model: nn.Module) -> nn.Module:
    """This thread's copy of `model`. functional_call swaps the module's parameters for θ while
    it runs, so two threads calling it on one module would compute with each other's θ (and
    vmap fails outright): every thread computes on a copy of its own."""
    if not hasattr(_copies, "of"):
        _copies.of = weakref.WeakKeyDictionary()
    if model not in _copies.of:
        _copies.of[model] = copy.deepcopy(model)
    return _copies.of[model]


def outputs(model: nn.Module, theta: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """f(x; θ): the model's outputs at parameters θ (torch.func.functional_call), safe to call
    from several threads at once (own_copy)."""
    return functional_call(own_copy(model), theta, (x,))


def penultimate_features(model: nn.Module, theta: dict[str, torch.Tensor],
                         x: torch.Tensor) -> torch.Tensor:
    """What the output layer sees (the network's features), at parameters θ: caught by a
    forward hook on that layer, whatever the model's structure or parameter names."""
    seen = []
    mine = own_copy(model)
    hook = last_layer(mine).register_forward_hook(lambda m, inputs, out: seen.append(inputs[0]))
    try:
        functional_call(mine, theta, (x,))
    finally:
        hook.remove()
    return seen[0].reshape(len(x), -1)
