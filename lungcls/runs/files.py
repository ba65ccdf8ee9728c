"""Writing outputs safely: every file a command writes goes to a new temporary file beside it and is
renamed into place, and an output is compared with the command's inputs as files (device and
inode), not as path names, so a hard or symbolic link cannot make a command write over its input."""

from __future__ import annotations

import contextlib
import csv
import os
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether ``a`` and ``b`` are one file (same device and inode: a hard link, a symbolic link or
    another spelling of the path all count); paths that do not exist are compared resolved."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A new temporary file beside ``path`` to write to, renamed over ``path`` once written. A reader
    never sees half a file, a crash leaves the old file whole, and a file that ``path`` was a hard
    link to (a checkpoint, an image) keeps its contents: the name gets a new file, none is truncated.
    The suffix is kept, for writers that choose the format from it (matplotlib, torch, onnx)."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # created by us, with the umask's mode
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through ``replacing``."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_rows_csv(path: str | Path, columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> Path:
    """A table as CSV, written through a new file: floats with 6 decimals, None as an empty cell."""
    with replacing(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for row in rows:
            w.writerow(["" if row.get(c) is None else (f"{row[c]:.6f}" if isinstance(row[c], float) else row[c]) for c in columns])
    return Path(path)
