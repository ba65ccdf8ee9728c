"""Multinomial logistic regression on downsampled grayscale pixels: the reference study's baseline.

No hidden layer: the image is average-pooled to ``input_size`` x ``input_size`` grayscale, flattened,
and a single linear layer gives one logit per class. Its explanation is its weight map per class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LogisticRegression(nn.Module):
    def __init__(self, num_classes: int, input_size: int = 32):
        super().__init__()
        self.input_size = int(input_size)
        self.linear = nn.Linear(self.input_size * self.input_size, num_classes)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def downsample(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> grayscale [B, 1, s, s]."""
        if x.shape[1] != 1:
            x = x.mean(dim=1, keepdim=True)
        return F.adaptive_avg_pool2d(x, self.input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.downsample(x).flatten(1))

    def weight_maps(self) -> torch.Tensor:
        """Per-class weights laid out as images: [num_classes, s, s]."""
        return self.linear.weight.detach().view(-1, self.input_size, self.input_size)
