"""Decode X-ray files of any common bit depth and mode into uint8 grayscale at the working size.

X-rays are single-channel. Whatever the file holds (8-bit or 16-bit grayscale, RGB, RGBA, palette;
PNG, JPEG or DICOM), we map it to one uint8 channel with a fixed rule, so models see the same value
range for every source: 16-bit images are scaled by the range their bit depth can hold (12-bit if no
value exceeds 4095, else 16-bit), colour images are converted to luminance, alpha is dropped; DICOM
goes through its LUTs first (``lungcls.data.pixels.dicom``). The format is told by content, not by name:
only PNG, JPEG and DICOM are read (Pillow would also open GIF, BMP, TIFF..., which no X-ray workflow
produces and no model was checked on), and an image with a side under ``min_side`` pixels (an icon,
a thumbnail) is refused, so every command accepts and refuses the same files.

Training, evaluation, prediction, export checks and the web service all decode through
``read_gray`` and resize through ``gray_to_input``: one preprocessing, so a probability means the
same thing on every path.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from lungcls.data.pixels.dicom import DICOM_EXTENSIONS, looks_like_dicom, read_dicom, too_many_pixels
from lungcls.errors import LungclsError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", *DICOM_EXTENSIONS)
DEFAULT_MAX_PIXELS = 100_000_000  # dataset.max_image_pixels: larger files are refused, unread
DEFAULT_MIN_SIDE = 32  # predict.min_side, serve.min_side: a shorter side is an icon, not an X-ray
READ_FORMATS = ("PNG", "JPEG", "DICOM")
_PIL_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG"}  # MPO: a camera's JPEG with a second picture
_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG"}

# lungcls checks every file's pixel count itself (read_gray, with a limit the config sets), so PIL's
# own global limit, which raises an exception of its own kind, is switched off.
Image.MAX_IMAGE_PIXELS = None


def is_image_file(path: Path) -> bool:
    """A file lungcls reads as an X-ray: by extension, or a DICOM file without one (as PACS exports
    name them, ``IM0001``); hidden files are skipped."""
    if path.name.startswith(".") or not path.is_file():
        return False
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return True
    if path.suffix == "":
        try:
            with path.open("rb") as f:
                return looks_like_dicom(f.read(132))
        except OSError:
            return False
    return False


def content_format(head: bytes, name: str = "") -> str | None:
    """``PNG``, ``JPEG`` or ``DICOM`` from a file's first 132 bytes (a .dcm/.dicom name may lack the
    Part 10 preamble); None for anything else, whatever the file is called."""
    if looks_like_dicom(head):
        return "DICOM"
    for magic, fmt in _MAGIC.items():
        if head.startswith(magic):
            return fmt
    return "DICOM" if name.lower().endswith(DICOM_EXTENSIONS) else None


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


def check_pixels(name: str, width: int, height: int, max_pixels: int | None, key: str | None = "dataset.max_image_pixels") -> None:
    """Refuse an image larger than ``max_pixels`` before decoding it (a decompression bomb); the
    message names the config ``key`` that sets the limit (None: the command has no such key)."""
    if max_pixels and width * height > max_pixels:
        raise too_many_pixels(name, width, height, max_pixels, key)


def _read_pil(source: str | Path | IO[bytes], name: str, max_pixels: int | None, key: str | None) -> tuple[np.ndarray, str]:
    with Image.open(source) as img:
        if img.format not in _PIL_FORMATS:
            raise LungclsError(f"{name} is a {img.format} image; lungcls reads PNG, JPEG and DICOM X-rays: convert it to PNG")
        check_pixels(name, img.size[0], img.size[1], max_pixels, key)
        img.load()
        return _to_gray_uint8(img), img.mode


def _head(source: str | Path | IO[bytes]) -> bytes:
    if hasattr(source, "read"):
        head = source.read(132)
        source.seek(0)
        return head
    with open(source, "rb") as f:
        return f.read(132)


def check_side(gray: np.ndarray, name: str, min_side: int | None, key: str | None) -> np.ndarray:
    """Refuse an image whose shorter side is under ``min_side`` pixels; the message names the
    command's ``key`` for the limit (None: the command has none)."""
    if min_side and min(gray.shape) < min_side:
        limit = f"{key}={min_side}" if key else f"the {min_side} pixels an X-ray has at least"
        raise LungclsError(f"{name} is {gray.shape[1]}x{gray.shape[0]} pixels, smaller than {limit}; "
                           "use the X-ray at its own resolution (an icon or a thumbnail is not one)")
    return gray


def read_gray(source: str | Path | IO[bytes], max_pixels: int | None = DEFAULT_MAX_PIXELS, name: str | None = None,
              limit_key: str | None = "dataset.max_image_pixels", min_side: int | None = DEFAULT_MIN_SIDE,
              side_key: str | None = None) -> np.ndarray:
    """The image as a 2-D uint8 array; a corrupt, unreadable or oversized file raises a one-line
    LungclsError.

    ``source`` is a path or a binary file object (an upload); ``name`` is what messages call it.
    DICOM is recognised by its ``DICM`` marker, everything else goes to Pillow; a .dcm/.dicom file
    Pillow cannot open is read as DICOM without the Part 10 preamble. Images above ``max_pixels``
    pixels are refused from their header, before decoding (the message names ``limit_key``, the
    command's key for the limit, or None where it has none), images with a side under ``min_side``
    after it (``side_key`` likewise). Any exception of a decoder on a damaged file becomes the
    one-line error.
    """
    gray = read_gray_and_mode(source, max_pixels, name, limit_key)[0]
    return check_side(gray, name or str(source), min_side, side_key)


def read_gray_and_mode(source: str | Path | IO[bytes], max_pixels: int | None = DEFAULT_MAX_PIXELS,
                       name: str | None = None, limit_key: str | None = "dataset.max_image_pixels") -> tuple[np.ndarray, str]:
    """``read_gray`` and the file's own mode (PIL's ``L``, ``I;16``, ``RGB``..., or ``DICOM``), for
    audits of bit depth; the side is not checked (the audit reports sizes)."""
    name = name or str(source)
    try:
        if looks_like_dicom(_head(source)):
            return read_dicom(source, name, max_pixels, limit_key), "DICOM"
        try:
            return _read_pil(source, name, max_pixels, limit_key)
        except UnidentifiedImageError:
            if Path(name).suffix.lower() not in DICOM_EXTENSIONS:
                raise
            if hasattr(source, "seek"):
                source.seek(0)
            return read_dicom(source, name, max_pixels, limit_key), "DICOM"  # without the Part 10 preamble
    except FileNotFoundError:
        raise LungclsError(f"image {name} does not exist; check dataset.root or the manifest") from None
    except IsADirectoryError:
        raise LungclsError(f"{name} is a folder, not an image file") from None
    except Image.DecompressionBombError as e:
        raise LungclsError(f"image {name} is too large to decode safely ({e}); downscale it first") from None
    except LungclsError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged file can fail inside any decoder plugin, with any type
        raise LungclsError(f"cannot read image {name} ({' '.join(str(e).split())[:200] or type(e).__name__}); remove or replace the file") from None


def resize_gray(arr: np.ndarray, size: int) -> np.ndarray:
    """Square resize with antialiasing (X-rays are near-square; the database is 299x299)."""
    if arr.shape == (size, size):
        return arr
    return np.asarray(Image.fromarray(arr).resize((size, size), Image.BILINEAR, reducing_gap=None))


def gray_to_input(gray: np.ndarray, size: int) -> torch.Tensor:
    """A decoded image as model input: a uint8 tensor [1, size, size]."""
    return torch.from_numpy(resize_gray(gray, size).copy()).unsqueeze(0)


def load_image(path: str | Path, size: int, max_pixels: int | None = DEFAULT_MAX_PIXELS, preprocess=None,
               mask: str | Path | None = None) -> torch.Tensor:
    """Decode and resize one image: a uint8 tensor [1, size, size]. ``preprocess`` (a
    ``lungcls.data.pixels.preprocess.Preprocess``) runs on the full-size image first; ``mask`` is its lung
    mask file, when it has one."""
    gray = read_gray(path, max_pixels)
    if preprocess is not None and preprocess.active:
        lungs = read_gray(mask, min_side=None) > 127 if mask is not None and preprocess.mask_outside_lungs else None
        gray = preprocess.apply(gray, lungs, name=str(path))
    return gray_to_input(gray, size)


def load_mask(path: str | Path | None, size: int) -> np.ndarray | None:
    """A binary mask at ``size`` (nearest-neighbour), or None when there is none."""
    if path is None:
        return None
    arr = read_gray(path, min_side=None)
    if arr.shape != (size, size):
        arr = np.asarray(Image.fromarray(arr).resize((size, size), Image.NEAREST))
    return arr > 127


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 1, S, S] -> float32 in [0, 1] (floats are passed through as float32)."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
