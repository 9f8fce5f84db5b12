"""Model presets. None uses BatchNorm or dropout: per-sample gradients must be well defined and
replay must be deterministic (GUIDE §2)."""
from __future__ import annotations

import torch
from torch import nn

PRESETS = ("logreg", "dnn", "cnn", "cnn-small", "cnn-cifar")
CHOICES = ("auto", "logreg", "dnn", "cnn")
# Learning rates that train each preset well with plain SGD at batch size 64 (cnn: the paper's).
DEFAULT_LR = {"logreg": 0.1, "dnn": 0.1, "cnn": 0.05, "cnn-small": 0.2, "cnn-cifar": 0.05}


def resolve(name: str, shape: tuple[int, int, int]) -> tuple[str, str]:
    """The concrete preset for `name` (auto|logreg|dnn|cnn|a preset) and input shape (H, W, C),
    with the reason in words."""
    h, w, c = shape
    if name in ("logreg", "dnn", "cnn-small", "cnn-cifar"):
        return name, f"{name} was asked for"
    if name not in ("auto", "cnn", "cnn-mnist"):
        raise ValueError(f"unknown model {name!r}: use one of {', '.join(CHOICES)}")
    if c == 3 and min(h, w) >= 16:
        return "cnn-cifar", f"colour images of {h}×{w} pixels suit the CIFAR-size CNN"
    if min(h, w) >= 16:
        return "cnn", (f"grayscale images of {h}×{w} pixels suit the paper's MNIST CNN "
                       "(two 5×5 convolutions)")
    return "cnn-small", (f"images of {h}×{w} pixels are too small for 5×5 convolutions, "
                         "so a small CNN with 3×3 convolutions is used")


def n_outputs(n_classes: int) -> int:
    """Two classes use one logit and binary cross-entropy, as in the paper's LogReg and DNN."""
    return 1 if n_classes == 2 else n_classes


def build(name: str, shape: tuple[int, int, int], n_classes: int, seed: int) -> nn.Module:
    """A freshly initialised preset; the same seed gives the same θ[1] on every machine."""
    h, w, c = shape
    d, k = h * w * c, n_outputs(n_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "logreg":
            return nn.Sequential(nn.Flatten(), nn.Linear(d, k))
        if name == "dnn":  # the paper's 2×8 network (Section 7.1)
            return nn.Sequential(nn.Flatten(), nn.Linear(d, 8), nn.ReLU(), nn.Linear(8, 8),
                                 nn.ReLU(), nn.Linear(8, k))
        if name == "cnn":  # the paper's MNIST CNN (Section 7.2): 320 features for 28×28
            features = nn.Sequential(nn.Conv2d(c, 20, 5), nn.ReLU(), nn.MaxPool2d(2),
                                     nn.Conv2d(20, 20, 5), nn.ReLU(), nn.MaxPool2d(2),
                                     nn.Flatten())
        elif name == "cnn-small":
            features = nn.Sequential(nn.Conv2d(c, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                     nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                                     nn.MaxPool2d(2), nn.Flatten())
        elif name == "cnn-cifar":
            features = nn.Sequential(nn.Conv2d(c, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                                     nn.Conv2d(32, 32, 5, padding=2), nn.ReLU(),
                                     nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1),
                                     nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        else:
            raise ValueError(f"unknown preset {name!r}")
        n_features = features(torch.zeros(1, c, h, w)).shape[1]
        return nn.Sequential(*features, nn.Linear(n_features, k))


def penultimate(model: nn.Module) -> nn.Module:
    """Everything but the last layer: the CNN's features (for Isolation Forest and TracIn)."""
    return model[:-1]
