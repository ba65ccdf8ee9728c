"""CSV files a user gives (manifests, splits): read as UTF-8 text, with or without the byte-order mark
a spreadsheet's "CSV UTF-8" writes, and nothing else.

Guessing an encoding would silently turn a Latin-1 "Pneumonía" into another label; a file that is not
UTF-8 is refused with one line that names it and says how to save it, instead of a UnicodeDecodeError
traceback (or, with a BOM read as text, a header whose first column is not called ``path``).
"""

from __future__ import annotations

import io
from pathlib import Path

from lungcls.errors import LungclsError


def open_csv(path: str | Path, what: str = "manifest") -> io.StringIO:
    """The whole file as a text stream for ``csv`` (a context manager, as ``open`` is); a file
    that is not UTF-8 is a one-line ``LungclsError`` naming it (``what``: how messages call it)."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise LungclsError(f"{what} {path} is not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}); "
                           "save it as UTF-8 (a spreadsheet's \"CSV UTF-8\"; iconv -f latin1 -t utf-8) and run again") from None
    return io.StringIO(text, newline="")
