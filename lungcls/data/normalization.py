"""Input normalisation, chosen by ``dataset.normalization=<name>`` (a registry).

Each entry gives the per-channel (mean, std) the model subtracts and divides by; ``dataset``
measures them on the train split's decoded images.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lungcls.errors import LungclsError
from lungcls.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Stats = tuple[list[float], list[float]]
NORMALIZATIONS: Registry[Callable[[torch.Tensor | None], Stats]] = Registry("normalization", "dataset.normalization=<name>")


@NORMALIZATIONS.register("imagenet")
def imagenet(train_images: torch.Tensor | None) -> Stats:
    """ImageNet's statistics: what pretrained torchvision weights expect."""
    return list(IMAGENET_MEAN), list(IMAGENET_STD)


@NORMALIZATIONS.register("half")
def half(train_images: torch.Tensor | None) -> Stats:
    """0.5 / 0.5: pixels mapped to [-1, 1] (training from scratch)."""
    return [0.5] * 3, [0.5] * 3


@NORMALIZATIONS.register("dataset")
def dataset(train_images: torch.Tensor | None) -> Stats:
    """Mean and standard deviation of the train split's pixels."""
    if train_images is None or len(train_images) == 0:
        raise LungclsError("dataset.normalization=dataset needs training images to measure mean and std")
    x = train_images.float().div(255.0)
    mean, std = float(x.mean()), float(x.std())
    return [mean] * 3, [max(std, 1e-3)] * 3


def normalization_stats(name: str, train_images: torch.Tensor | None = None) -> Stats:
    return NORMALIZATIONS.get(name)(train_images)
