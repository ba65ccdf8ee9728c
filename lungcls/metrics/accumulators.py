"""Metrics accumulated on the device during training (torchmetrics ``Metric`` states), read once
per epoch and summed across processes under DDP."""

from __future__ import annotations

import torch
from torchmetrics import Metric


class ConfusionCounts(Metric):
    """A confusion matrix (rows = true class) that accumulates with ``index_add_``.

    torchmetrics' MulticlassConfusionMatrix counts with ``torch.bincount``, which on a GPU reads the
    maximum back to the host on every update; this keeps training free of per-step host syncs and
    still sums across processes (DDP) at ``compute``.
    """

    full_state_update = False

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.add_state("counts", default=torch.zeros(num_classes * num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.counts.index_add_(0, target * self.num_classes + preds, torch.ones_like(target))

    def compute(self) -> torch.Tensor:
        return self.counts.view(self.num_classes, self.num_classes)
