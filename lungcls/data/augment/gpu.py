"""Batch augmentation on whatever device the batch lives on, built from ``conf/augment/*.yaml``
(Hydra ``_target_``).

Images travel as uint8 [B, 1, S, S] and become [0, 1] floats on the device. Augmentation runs per
image on whole batches with Kornia (random parameters per sample), so the same code serves the CPU
and the GPU path and a GPU never waits for a CPU to rotate images. Normalisation is part of the
model (see ``lungcls.models.module``), so a checkpoint takes plain [0, 1] grayscale images.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lungcls.errors import LungclsError


class BatchAugment(nn.Module):
    """Random rotation / shift / shear / zoom, random-resized crop, flip, brightness and contrast,
    each drawn per image. With every setting at 0 it is the identity (``active`` is False)."""

    def __init__(self, image_size: int, name: str = "custom", rotation: float = 0.0, translate: float = 0.0,
                 shear: float = 0.0, scale: Sequence[float] | None = None, hflip: float = 0.0,
                 random_resized_crop: Sequence[float] | None = None, brightness: float = 0.0, contrast: float = 0.0):
        super().__init__()
        import kornia.augmentation as K

        self.name = name
        steps: list[nn.Module] = []
        if random_resized_crop:
            lo, hi = float(random_resized_crop[0]), float(random_resized_crop[1])
            if not 0 < lo <= hi <= 1:
                raise LungclsError(f"augment.random_resized_crop={list(random_resized_crop)} must be [min_area, max_area] within (0, 1]")
            steps.append(K.RandomResizedCrop((image_size, image_size), scale=(lo, hi)))
        rotation, translate, shear = float(rotation or 0), float(translate or 0), float(shear or 0)
        if rotation or translate or shear or scale:
            steps.append(K.RandomAffine(
                degrees=rotation,
                translate=(translate, translate) if translate else None,
                scale=(float(scale[0]), float(scale[1])) if scale else None,
                shear=shear if shear else None,
                p=1.0,
            ))
        if hflip:
            steps.append(K.RandomHorizontalFlip(p=float(hflip)))
        if brightness:
            steps.append(K.RandomBrightness(brightness=(1 - float(brightness), 1 + float(brightness)), p=1.0))
        if contrast:
            steps.append(K.RandomContrast(contrast=(1 - float(contrast), 1 + float(contrast)), p=1.0))
        self.steps = nn.Sequential(*steps)

    @property
    def active(self) -> bool:
        return len(self.steps) > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.steps(x) if self.active else x
