"""CSV files a user gives (manifests, splits): read as UTF-8 text, with or without the byte-order mark
a spreadsheet's "CSV UTF-8" writes, and nothing else.

Guessing an encoding would silently turn a Latin-1 "Pneumonía" into another label; a file that is not
UTF-8 is refused with one line that names it, the encoding it seems to have and how to convert it, instead of a UnicodeDecodeError
traceback (or, with a BOM read as text, a header whose first column is not called ``path``).
"""

from __future__ import annotations

import codecs
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
        found = encoding_found(data)
        line = data[: e.start].count(b"\n") + 1
        where = "" if found.startswith("UTF") else f"byte 0x{data[e.start]:02x} on line {line}, "
        raise LungclsError(f"{what} {path} is not UTF-8 text ({where}{found_words(found)}); save it as UTF-8 (a "
                           f"spreadsheet's \"CSV UTF-8\"; iconv -f {found} -t utf-8) and run again") from None
    if "\x00" in text:  # UTF-16 of ASCII-only text decodes as UTF-8 with a NUL after every letter
        found = encoding_found(data)
        raise LungclsError(f"{what} {path} is not UTF-8 text ({found_words(found)}); save it as UTF-8 (a spreadsheet's "
                           f"\"CSV UTF-8\"; iconv -f {found} -t utf-8) and run again")
    return io.StringIO(text, newline="")


_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"), (codecs.BOM_UTF16_LE, "UTF-16"),
         (codecs.BOM_UTF16_BE, "UTF-16"))


def encoding_found(data: bytes) -> str:
    """The encoding a text file that is not UTF-8 most likely has, as ``iconv -f`` names it: UTF-16
    or UTF-32 by their byte-order mark (or UTF-16 by a zero byte beside every ASCII letter), else
    Windows-1252 where its printable bytes 0x80-0x9f occur, else Latin-1."""
    for bom, name in _BOMS:  # UTF-32LE's mark starts with UTF-16LE's: UTF-32 first
        if data.startswith(bom):
            return name
    head = data[:4096]
    for zeros, name in ((head[1::2], "UTF-16LE"), (head[0::2], "UTF-16BE")):
        if head and zeros.count(0) > len(head) // 4:
            return name
    return "CP1252" if any(0x80 <= b <= 0x9F for b in data) else "LATIN1"


def found_words(found: str) -> str:
    """How the message names it."""
    return {"CP1252": "it looks like Windows-1252", "LATIN1": "it looks like Latin-1"}.get(found, f"it is {found}")
