"""Per-file results kept between runs, keyed by each file's path, size and modification time, so a
data set that grew by 1% is read again only for the new (or changed) files.

A store is one ``.npz`` file of columns (one row per file ever stored): reading a million files'
fingerprints from it takes seconds, where reading the images takes an hour. A row is used only when
the file's size and modification time (nanoseconds) still match; any other change reads the file
again. Writes go to a temporary file first and replace the store at once, so a reader never sees a
half-written store, and a store that cannot be read (truncated, another format) is rebuilt.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from lungcls.errors import LungclsError

log = logging.getLogger(__name__)

KEY_COLUMNS = ("path", "size", "mtime_ns")


def file_keys(paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Size and modification time (ns) of each file; -1 for a file that cannot be stat'ed."""
    sizes = np.full(len(paths), -1, dtype=np.int64)
    mtimes = np.full(len(paths), -1, dtype=np.int64)
    for i, p in enumerate(paths):
        try:
            st = os.stat(p)
        except OSError:
            continue
        sizes[i], mtimes[i] = st.st_size, st.st_mtime_ns
    return sizes, mtimes


def _read(file: Path) -> dict[str, np.ndarray] | None:
    if not file.is_file():
        return None
    try:
        with np.load(file, allow_pickle=False) as data:
            columns = {k: data[k] for k in data.files}
        if not all(k in columns for k in KEY_COLUMNS):
            raise ValueError("no path/size/mtime columns")
        return columns
    except Exception as e:  # a truncated or foreign file: rebuild it
        log.warning("ignoring unreadable per-file cache %s (%s)", file, e)
        return None


def lookup(file: str | Path, paths: Sequence[str], sizes: np.ndarray, mtimes: np.ndarray,
           names: Sequence[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Which ``paths`` the store holds unchanged (bool [n]) and, for those, the columns ``names``
    (rows in the order of the hits). A store lacking one of ``names`` counts as empty."""
    stored = _read(Path(file))
    hit = np.zeros(len(paths), dtype=bool)
    if stored is None or not all(k in stored for k in names):
        return hit, {}
    row_of = {p: r for r, p in enumerate(stored["path"].tolist())}
    rows = np.array([row_of.get(p, -1) for p in paths], dtype=np.int64)
    known = rows >= 0
    safe = np.where(known, rows, 0)
    hit = known & (stored["size"][safe] == sizes) & (stored["mtime_ns"][safe] == mtimes) & (sizes >= 0)
    return hit, {k: stored[k][rows[hit]] for k in names}


def update(file: str | Path, paths: Sequence[str], sizes: np.ndarray, mtimes: np.ndarray,
           columns: Mapping[str, np.ndarray]) -> None:
    """Add (or replace) the rows of ``paths``; rows of other files stay, so one cache folder serves
    several data sets. Files that could not be stat'ed are not stored."""
    file = Path(file)
    keep = sizes >= 0
    new = {"path": np.asarray(paths, dtype=str)[keep], "size": sizes[keep], "mtime_ns": mtimes[keep],
           **{k: np.asarray(v)[keep] for k, v in columns.items()}}
    old = _read(file)
    if old is not None and set(old) == set(new):
        mine = set(new["path"].tolist())
        stay = np.array([p not in mine for p in old["path"].tolist()], dtype=bool)
        new = {k: np.concatenate([old[k][stay], new[k]]) for k in new}
    tmp = file.with_name(f".{file.name}.tmp{os.getpid()}.npz")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, **new)
        os.replace(tmp, file)
    except OSError as e:
        raise LungclsError(f"dataset.cache_dir={file.parent} is not a writable folder ({e.strerror or e}); "
                           "give a folder you can write to, or dataset.cache_dir=null") from None
