"""What a model said about a set of images: their paths, labels and softmax outputs, in order. Every
score, interval and file of results is computed from this one record."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Predictions:
    """Softmax outputs of a set of images, in their order."""

    paths: list[str]
    labels: np.ndarray  # [N] int, in the label space of the data they came from
    probs: np.ndarray  # [N, C] float, in the model's label space
    class_names: list[str] = field(default_factory=list)  # the model's classes (columns of probs)

    @property
    def preds(self) -> np.ndarray:
        return self.probs.argmax(axis=1) if len(self.probs) else np.zeros(0, dtype=int)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, keep: Sequence[int]) -> "Predictions":
        keep = list(keep)
        return Predictions([self.paths[i] for i in keep], self.labels[keep], self.probs[keep], self.class_names)
