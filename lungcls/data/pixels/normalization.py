"""Input normalisation, chosen by ``dataset.normalization=<name>`` (a registry).

Each entry gives the per-channel (mean, std) the model subtracts and divides by; ``dataset``
measures them on the train split's decoded images.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from lungcls.errors import LungclsError
from lungcls.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Stats = tuple[list[float], list[float]]
Pixels = torch.Tensor | Iterable[torch.Tensor] | None  # uint8 images, whole or in chunks
NORMALIZATIONS: Registry[Callable[[Pixels], Stats]] = Registry("normalization", "dataset.normalization=<name>")


def pixel_moments(chunks: Iterable[torch.Tensor]) -> tuple[float, float] | None:
    """Mean and (sample) standard deviation of uint8 pixels scaled to [0, 1], from a histogram of
    the 256 grey levels built chunk by chunk: exact, and memory is one chunk whatever the number of
    images (a float copy of a 19 GB split would be 76 GB). None when there are no pixels."""
    counts = torch.zeros(256, dtype=torch.float64)
    for chunk in chunks:
        counts += torch.bincount(chunk.reshape(-1).to(torch.uint8).cpu(), minlength=256).double()
    n = float(counts.sum())
    if n == 0:
        return None
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    mean = float((counts * levels).sum() / n)
    var = float((counts * (levels - mean) ** 2).sum() / max(n - 1.0, 1.0))
    return mean, var**0.5


@NORMALIZATIONS.register("imagenet")
def imagenet(train_images: Pixels) -> Stats:
    """ImageNet's statistics: what pretrained torchvision weights expect."""
    return list(IMAGENET_MEAN), list(IMAGENET_STD)


@NORMALIZATIONS.register("half")
def half(train_images: Pixels) -> Stats:
    """0.5 / 0.5: pixels mapped to [-1, 1] (training from scratch)."""
    return [0.5] * 3, [0.5] * 3


@NORMALIZATIONS.register("dataset")
def dataset(train_images: Pixels) -> Stats:
    """Mean and standard deviation of the train split's pixels (given whole or in chunks)."""
    chunks = [train_images] if isinstance(train_images, torch.Tensor) else train_images
    moments = pixel_moments(chunks) if chunks is not None else None
    if moments is None:
        raise LungclsError("dataset.normalization=dataset needs training images to measure mean and std")
    mean, std = moments
    return [mean] * 3, [max(std, 1e-3)] * 3


def normalization_stats(name: str, train_images: Pixels = None) -> Stats:
    return NORMALIZATIONS.get(name)(train_images)
