"""DICOM X-rays to uint8 grayscale, the way a reading workstation shows them (pydicom).

Hospitals store radiographs as DICOM. The pixel values are not display values: we apply, in the
standard's order, the modality LUT (rescale slope/intercept), the VOI LUT or window the file
carries (the view the acquisition chose), and invert MONOCHROME1 (where bright means low
signal), then scale to 0-255 by the range the data can hold (``BitsStored``: 12-bit data by 4095,
16-bit by 65535, carried through the rescale), never by the image's own min/max, so a dark image
stays dark. Multi-frame files and compressed transfer syntaxes no installed decoder handles are
refused with one line.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections.abc import Iterator
from typing import IO

import numpy as np

from lungcls.errors import LungclsError

log = logging.getLogger(__name__)
_WARNINGS_LOCK = threading.Lock()

DICOM_EXTENSIONS = (".dcm", ".dicom")
_PREAMBLE = 128


def looks_like_dicom(head: bytes) -> bool:
    """A DICOM Part 10 file: 128-byte preamble then ``DICM``."""
    return len(head) >= _PREAMBLE + 4 and head[_PREAMBLE : _PREAMBLE + 4] == b"DICM"


def _stored_range(ds) -> tuple[float, float]:
    """The values ``BitsStored`` can hold, through the modality rescale (as pydicom's windowing)."""
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = sorted((lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)))
    return lo, hi


def _apply_voi_lut_sequence(values: np.ndarray, ds) -> tuple[np.ndarray, tuple[float, float]]:
    """The first VOI LUT of the file applied by table look-up, and the output range its entries'
    bit depth can hold (values below the first mapped one take the first entry, above: the last).
    Not pydicom's ``apply_voi``: for a LUT with 8-bit output whose LUT Data is written as US values
    it maps every pixel to 255 (pydicom 3.0; ``test_a_voi_lut_sequence_is_applied``)."""
    item = ds.VOILUTSequence[0]
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    data = item.LUTData
    if isinstance(data, (bytes, bytearray)):  # OW: 16-bit words in the file's byte order
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        little = syntax is None or syntax.is_little_endian
        table = np.frombuffer(data, dtype="<u2" if little else ">u2")
    else:
        table = np.atleast_1d(np.asarray(data))
    table = table[: entries or 65536].astype(np.float64)
    index = np.clip(np.round(values).astype(np.int64) - first, 0, len(table) - 1)
    return table[index], (0.0, float(2**bits - 1))


def _check_supported(ds, name: str) -> None:
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise LungclsError(f"DICOM {name} has {frames} frames; lungcls reads single-frame radiographs, export the frame you want as its own file")
    if "PixelData" not in ds:
        if "Rows" in ds or "Columns" in ds or "BitsAllocated" in ds:  # an image whose pixels were cut off
            raise LungclsError(f"DICOM {name} is truncated or damaged: it describes an image (Rows, Columns) but its "
                               "Pixel Data is missing; copy the file again from its source")
        if _cut_in_header(ds):
            raise LungclsError(f"DICOM {name} is truncated or damaged: it ends inside its header, before the image is "
                               "described; copy the file again from its source")
        raise LungclsError(f"DICOM {name} holds no image (no Pixel Data); give an image object, not a report or structured document")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422"):
        raise LungclsError(f"DICOM {name}: photometric interpretation {photometric} is not supported; use MONOCHROME1/2 or RGB images")


def _cut_in_header(ds) -> bool:
    """Nothing after the file meta, or an image object (its SOP class says so) without a word of
    its image: the file was cut off (or a length in its header ran past its end)."""
    if len(ds) == 0:
        return True
    sop = ds.get("SOPClassUID") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
    return "Image Storage" in str(getattr(sop, "name", ""))


def _pixels(ds, name: str) -> np.ndarray:
    try:
        return np.asarray(ds.pixel_array)
    except Exception as e:  # no decoder for the transfer syntax, or broken pixel data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        label = f"{syntax.name} ({syntax})" if syntax is not None else "an unknown transfer syntax"
        if syntax is not None and syntax.is_compressed and "plugin" in str(e).lower():
            raise LungclsError(
                f"DICOM {name} is compressed with {label}, which no installed decoder reads; "
                "convert it to an uncompressed transfer syntax (e.g. dcmdjpeg) or pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg"
            ) from None
        if "less than expected" in str(e):  # pydicom: fewer pixel bytes than Rows x Columns x bits need
            raise LungclsError(f"DICOM {name} is truncated or damaged: its Pixel Data is shorter than its Rows and Columns need; "
                               "copy the file again from its source") from None
        first = " ".join(str(e).split())[:160]
        raise LungclsError(f"cannot decode the pixels of DICOM {name} ({label}: {first}); remove or replace the file") from None


def dicom_to_gray(ds, name: str = "file") -> np.ndarray:
    """A pydicom dataset -> 2-D uint8 display grayscale (see the module docstring)."""
    from pydicom.pixels import apply_modality_lut, apply_windowing

    _check_supported(ds, name)
    arr = _pixels(ds, name)
    if arr.ndim == 3:  # colour (pydicom converts YBR to RGB): luminance as for PNG/JPEG
        from PIL import Image

        return np.asarray(Image.fromarray(arr.astype(np.uint8)).convert("L"), dtype=np.uint8)
    if arr.ndim != 2:
        raise LungclsError(f"DICOM {name} has pixel data of shape {arr.shape}; lungcls reads 2-D radiographs")
    lo, hi = _stored_range(ds)
    values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    if ds.get("VOILUTSequence"):
        values, (lo, hi) = _apply_voi_lut_sequence(values, ds)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        values = apply_windowing(values, ds, index=0)  # output spans the stored range, rescaled
    scaled = np.clip((np.asarray(values, dtype=np.float64) - lo) / max(hi - lo, 1e-9), 0.0, 1.0)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        scaled = 1.0 - scaled
    return (scaled * 255.0 + 0.5).astype(np.uint8)


def read_dicom(source: str | IO[bytes], name: str, max_pixels: int | None = None, limit_key: str | None = "dataset.max_image_pixels") -> np.ndarray:
    """Read a DICOM file (path or binary file object) as uint8 grayscale; refuses images with more
    than ``max_pixels`` pixels before their pixel data is decoded. Any failure of pydicom on a
    malformed file (it parses lazily, so a damaged element can fail at any later read, with any
    exception type) becomes one ``LungclsError`` naming the file."""
    import pydicom

    with summarised_warnings(f"DICOM {name}", "pydicom"):
        try:
            ds = pydicom.dcmread(source, force=True)
            _check_pixel_count(ds, name, max_pixels, limit_key)
            return dicom_to_gray(ds, name)
        except LungclsError:
            raise
        except Exception as e:  # noqa: BLE001 - pydicom's errors on damaged files have no common base
            why = " ".join(f"{type(e).__name__}: {e}".split())[:160]
            raise LungclsError(f"cannot read DICOM {name}, it is damaged ({why}); remove or replace the file") from None


@contextlib.contextmanager
def summarised_warnings(what: str, logger: str) -> Iterator[None]:
    """A reader's warnings (Python warnings and its ``logger``'s records) about one file become one
    logged line: a damaged header can make pydicom warn a thousand times, quoting raw bytes. The
    warnings filters are global to the process, so readers in threads (the service) take turns."""
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    log_ = logging.getLogger(logger)
    handler, propagate = Collect(logging.WARNING), log_.propagate
    with _WARNINGS_LOCK:
        log_.addHandler(handler)
        log_.propagate = False
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                yield
        finally:
            log_.removeHandler(handler)
            log_.propagate = propagate
            said = list(dict.fromkeys([str(w.message) for w in caught] + records))
            if said:  # also when the read failed: the warnings often say why
                first = ascii(" ".join(said[0].split()))[1:-1][:120]
                log.warning("%s: %d warning(s) from the reader, e.g. %s", what, len(said), first)


def _check_pixel_count(ds, name: str, max_pixels: int | None, limit_key: str | None) -> None:
    if "PixelData" in ds and max_pixels:
        rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        if rows * cols > max_pixels:
            raise too_many_pixels(name, rows, cols, max_pixels, limit_key)


class PixelLimitError(LungclsError):
    """An image over a pixel limit, refused from its header; ``pixels`` says how many it has."""

    def __init__(self, message: str, pixels: int):
        super().__init__(message)
        self.pixels = pixels


def too_many_pixels(name: str, first: int, second: int, max_pixels: int, key: str | None) -> PixelLimitError:
    """The one-line refusal of an image over the pixel limit; it names the config ``key`` that
    raises the limit only where the running command has one (``None``: it has not)."""
    limit = f"{key}={max_pixels:,}" if key else f"the {max_pixels:,} pixels lungcls decodes"
    fix = f"downscale it or raise {key}" if key else "downscale it"
    return PixelLimitError(f"image {name} is {first}x{second} = {first * second:,} pixels, more than {limit}; {fix}", first * second)
