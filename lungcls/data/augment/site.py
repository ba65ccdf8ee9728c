"""``augment=site``: augmentation that imitates the differences between hospitals, so a model cannot
lean on one site's exposure curve, detector noise, sharpness or collimation edge.

Per image, on whole batches (Kornia, on the batch's device like ``lungcls.data.augment.gpu``): a random
gamma (the exposure/tone curve), contrast, Gaussian noise (the detector), Gaussian blur (the
sharpness) and a border crop resized back (a collimation edge or burned-in marker cut away or moved),
plus the usual horizontal flip. Whether it helps at an unseen hospital is measured with
leave-one-source-out runs (docs/generalisation.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lungcls.errors import LungclsError


def _pair(value: Sequence[float], key: str, low: float, high: float) -> tuple[float, float]:
    try:
        lo, hi = float(value[0]), float(value[1])
    except (TypeError, ValueError, IndexError):
        raise LungclsError(f"augment.{key}={value} must be [min, max], e.g. augment.{key}=[{low}, {high}]") from None
    if not low <= lo <= hi <= high:
        raise LungclsError(f"augment.{key}=[{lo}, {hi}] must lie within [{low}, {high}] with min <= max")
    return lo, hi


class SiteAugment(nn.Module):
    """Random gamma, contrast, noise, blur and border crop (then flip), each drawn per image."""

    def __init__(self, image_size: int, name: str, gamma: Sequence[float], contrast: Sequence[float], noise_std: float,
                 noise_p: float, blur_sigma: Sequence[float], blur_p: float, border_crop: float, hflip: float):
        super().__init__()
        import kornia.augmentation as K

        self.name = name
        if not 0 <= float(border_crop) <= 0.4:
            raise LungclsError(f"augment.border_crop={border_crop} must be a share of the side in [0, 0.4]")
        for key, p in (("noise_p", noise_p), ("blur_p", blur_p), ("hflip", hflip)):
            if not 0 <= float(p) <= 1:
                raise LungclsError(f"augment.{key}={p} must be a probability in [0, 1]")
        keep = (1.0 - 2.0 * float(border_crop)) ** 2  # the smallest area left after cropping the border
        sigma = _pair(blur_sigma, "blur_sigma", 0.01, 10.0)
        kernel = 2 * int(3 * sigma[1] + 0.5) + 1
        self.steps = nn.Sequential(
            K.RandomResizedCrop((image_size, image_size), scale=(keep, 1.0), ratio=(0.9, 1.1)),
            K.RandomGamma(gamma=_pair(gamma, "gamma", 0.1, 5.0), p=1.0),
            K.RandomContrast(contrast=_pair(contrast, "contrast", 0.0, 5.0), p=1.0),
            K.RandomGaussianBlur((kernel, kernel), sigma, p=float(blur_p)),
            K.RandomGaussianNoise(std=float(noise_std), p=float(noise_p)),
            K.RandomHorizontalFlip(p=float(hflip)),
        )

    @property
    def active(self) -> bool:
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.steps(x).clamp_(0.0, 1.0)
