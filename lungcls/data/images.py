"""Decode X-ray files of any common bit depth and mode into uint8 grayscale at the working size.

X-rays are single-channel. Whatever the file holds (8-bit or 16-bit grayscale, RGB, RGBA, palette;
PNG or JPEG), we map it to one uint8 channel with a fixed rule, so models see the same value range
for every source: 16-bit images are scaled by the range their bit depth can hold (12-bit if no value
exceeds 4095, else 16-bit), colour images are converted to luminance, alpha is dropped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from lungcls.errors import LungclsError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def is_image_file(path: Path) -> bool:
    """A file lungcls reads as an X-ray (by extension; hidden files are skipped)."""
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _to_gray_uint8(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 4095.0 if arr.max(initial=0) <= 4095 else (65535.0 if arr.max() <= 65535 else float(arr.max()))
        return np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        return np.zeros(arr.shape, np.uint8) if hi <= lo else ((arr - lo) / (hi - lo) * 255 + 0.5).astype(np.uint8)
    if img.mode != "L":
        img = img.convert("RGB").convert("L") if img.mode in ("RGBA", "LA", "P", "PA", "CMYK") else img.convert("L")
    return np.asarray(img, dtype=np.uint8)


def read_gray(path: str | Path) -> np.ndarray:
    """The image as a 2-D uint8 array; a corrupt or unreadable file raises a one-line LungclsError."""
    return read_gray_and_mode(path)[0]


def read_gray_and_mode(path: str | Path) -> tuple[np.ndarray, str]:
    """``read_gray`` and the file's own PIL mode (``L``, ``I;16``, ``RGB``...), for audits of bit depth."""
    try:
        with Image.open(path) as img:
            img.load()
            return _to_gray_uint8(img), img.mode
    except FileNotFoundError:
        raise LungclsError(f"image {path} does not exist; check dataset.root or the manifest") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise LungclsError(f"cannot read image {path} ({e}); remove or replace the file") from None


def resize_gray(arr: np.ndarray, size: int) -> np.ndarray:
    """Square resize with antialiasing (X-rays are near-square; the database is 299x299)."""
    if arr.shape == (size, size):
        return arr
    return np.asarray(Image.fromarray(arr).resize((size, size), Image.BILINEAR, reducing_gap=None))


def load_image(path: str | Path, size: int) -> torch.Tensor:
    """Decode and resize one image: a uint8 tensor [1, size, size]."""
    return torch.from_numpy(resize_gray(read_gray(path), size).copy()).unsqueeze(0)


def load_mask(path: str | Path | None, size: int) -> np.ndarray | None:
    """A binary mask at ``size`` (nearest-neighbour), or None when there is none."""
    if path is None:
        return None
    arr = read_gray(path)
    if arr.shape != (size, size):
        arr = np.asarray(Image.fromarray(arr).resize((size, size), Image.NEAREST))
    return arr > 127


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 1, S, S] -> float32 in [0, 1] (floats are passed through as float32)."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
