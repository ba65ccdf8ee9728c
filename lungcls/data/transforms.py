"""Batch augmentation and normalisation, on whatever device the batch lives on.

Images travel as uint8 [B, 1, S, S]. Augmentation runs per image on whole batches with Kornia
(random parameters per sample), so the same code serves the CPU and the GPU path and a GPU never
waits for a CPU to rotate images. Normalisation is part of the model (see models.module), so a
checkpoint takes plain [0, 1] grayscale images.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from lungcls.errors import LungclsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = ("imagenet", "half", "dataset")


def build_augment(cfg: Mapping, image_size: int) -> nn.Module | None:
    """A Kornia pipeline from an ``augment`` config; None when it does nothing."""
    import kornia.augmentation as K

    if cfg is None or cfg.get("name") == "none":
        return None
    steps: list[nn.Module] = []
    rrc = cfg.get("random_resized_crop")
    if rrc:
        lo, hi = float(rrc[0]), float(rrc[1])
        if not 0 < lo <= hi <= 1:
            raise LungclsError(f"augment.random_resized_crop={list(rrc)} must be [min_area, max_area] within (0, 1]")
        steps.append(K.RandomResizedCrop((image_size, image_size), scale=(lo, hi)))
    rotation = float(cfg.get("rotation") or 0)
    translate = float(cfg.get("translate") or 0)
    shear = float(cfg.get("shear") or 0)
    scale = cfg.get("scale")
    if rotation or translate or shear or scale:
        steps.append(
            K.RandomAffine(
                degrees=rotation,
                translate=(translate, translate) if translate else None,
                scale=(float(scale[0]), float(scale[1])) if scale else None,
                shear=shear if shear else None,
                p=1.0,
            )
        )
    if cfg.get("hflip"):
        steps.append(K.RandomHorizontalFlip(p=float(cfg["hflip"])))
    brightness = float(cfg.get("brightness") or 0)
    contrast = float(cfg.get("contrast") or 0)
    if brightness:
        steps.append(K.RandomBrightness(brightness=(1 - brightness, 1 + brightness), p=1.0))
    if contrast:
        steps.append(K.RandomContrast(contrast=(1 - contrast, 1 + contrast), p=1.0))
    return nn.Sequential(*steps) if steps else None


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B,1,S,S] -> float32 in [0, 1]."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


def normalization_stats(name: str, train_images: torch.Tensor | None = None) -> tuple[list[float], list[float]]:
    """Per-channel (mean, std) for 3-channel input; ``dataset`` measures them on the train images."""
    if name == "imagenet":
        return list(IMAGENET_MEAN), list(IMAGENET_STD)
    if name == "half":
        return [0.5] * 3, [0.5] * 3
    if name == "dataset":
        if train_images is None or len(train_images) == 0:
            raise LungclsError("dataset.normalization=dataset needs training images to measure mean and std")
        x = train_images.float().div(255.0)
        mean, std = float(x.mean()), float(x.std())
        return [mean] * 3, [max(std, 1e-3)] * 3
    raise LungclsError(f"unknown dataset.normalization '{name}'; use one of {', '.join(NORMALIZATIONS)}")
