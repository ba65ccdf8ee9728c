"""Training losses, built from ``conf/loss/*.yaml`` (Hydra ``_target_`` with ``_partial_``).

The module finishes each partial with the train split's class counts, so ``class_weights:
inverse_frequency`` can weigh rare classes up without the config knowing the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lungcls.errors import LungclsError


def class_weight_tensor(setting: Any, class_counts: Sequence[int] | None, num_classes: int) -> torch.Tensor:
    """``none`` (all 1), ``inverse_frequency`` (n / (k * count), 0 for empty classes) or a list."""
    if setting in (None, "none", "null"):
        return torch.ones(num_classes)
    if setting == "inverse_frequency":
        if not class_counts:
            raise LungclsError("loss.class_weights=inverse_frequency needs the train split's class counts")
        counts = torch.tensor(list(class_counts), dtype=torch.float)
        present = counts > 0
        w = torch.zeros(num_classes)
        w[present] = counts.sum() / (present.sum() * counts[present])
        return w
    if isinstance(setting, Sequence) and not isinstance(setting, str):
        w = torch.tensor([float(v) for v in setting])
        if len(w) != num_classes or (w < 0).any():
            raise LungclsError(f"loss.class_weights has {len(w)} values; give {num_classes} non-negative weights, one per class")
        return w
    raise LungclsError(f"loss.class_weights={setting} must be none, inverse_frequency or a list of {num_classes} numbers")


class CrossEntropy(nn.Module):
    """Cross-entropy with optional class weights and label smoothing."""

    def __init__(self, num_classes: int, class_counts: Sequence[int] | None = None, label_smoothing: float = 0.0,
                 class_weights: Any = "none"):
        super().__init__()
        self.label_smoothing = float(label_smoothing or 0.0)
        if not 0 <= self.label_smoothing < 1:
            raise LungclsError(f"loss.label_smoothing={label_smoothing} must be in [0, 1)")
        self.register_buffer("weight", class_weight_tensor(class_weights, class_counts, num_classes), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target, weight=self.weight, label_smoothing=self.label_smoothing)


class FocalLoss(CrossEntropy):
    """Focal loss (Lin et al. 2017): cross-entropy scaled by (1 - p_true)^gamma, so confidently
    right images count less and hard ones (often the rare disease classes) more."""

    def __init__(self, num_classes: int, class_counts: Sequence[int] | None = None, gamma: float = 2.0,
                 label_smoothing: float = 0.0, class_weights: Any = "none"):
        super().__init__(num_classes, class_counts, label_smoothing, class_weights)
        self.gamma = float(gamma)
        if self.gamma < 0:
            raise LungclsError(f"loss.gamma={gamma} must be >= 0 (0 is plain cross-entropy)")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        per_image = F.cross_entropy(logits, target, weight=self.weight, label_smoothing=self.label_smoothing, reduction="none")
        p_true = logits.softmax(dim=1).gather(1, target[:, None]).squeeze(1)
        w = self.weight[target]
        return ((1 - p_true).pow(self.gamma) * per_image).sum() / w.sum().clamp_min(1e-12)
