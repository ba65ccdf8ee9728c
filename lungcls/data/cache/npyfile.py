"""Rows of a ``.npy`` file (numpy's header, then a C-ordered array): mapped, written through a
mapping that hands its pages back, and read by runs of consecutive rows (``lungcls.data.cache.mapped``
says why reads do not go through the mapping)."""

from __future__ import annotations

import mmap
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

RELEASE_BYTES = 32 << 20  # pages written through a mapping before they are handed back


class PageBudget:
    """Hands a writable mapping's pages back once ``RELEASE_BYTES`` were written through it."""

    def __init__(self, mapping: mmap.mmap, row_bytes: int):
        self.mapping, self.row_bytes, self.touched = mapping, row_bytes, 0

    def rows_written(self, n: int) -> None:
        self.touched += n * self.row_bytes
        if self.touched >= RELEASE_BYTES:
            self.release()

    def release(self) -> None:
        """Unmap this process's pages of the file (safe for a shared mapping: written pages stay in
        the page cache and reach the file as usual)."""
        if hasattr(mmap, "MADV_DONTNEED") and not self.mapping.closed:
            self.mapping.madvise(mmap.MADV_DONTNEED)
        self.touched = 0


def open_npy(file: Path, writable: bool = False) -> tuple[mmap.mmap, np.ndarray, int]:
    """Map a ``.npy`` file (numpy's header, then the array): the mapping, the array over it and the
    array's offset in the file. What ``np.load(mmap_mode=...)`` does, with the mapping at hand."""
    with open(file, "r+b" if writable else "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_2_0 if version == (2, 0) else np.lib.format.read_array_header_1_0
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
        if fortran or f.seek(0, os.SEEK_END) < offset + int(np.prod(shape)) * dtype.itemsize:
            raise ValueError(f"{file} is not a complete C-ordered array")
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)
    array = np.frombuffer(mapping, dtype=dtype, count=int(np.prod(shape)), offset=offset).reshape(shape)
    return mapping, array, offset


def consecutive_runs(rows: Sequence[int]) -> list[tuple[int, int, int]]:
    """``(position, first row, length)`` of each run of consecutive rows, in the given order."""
    runs: list[tuple[int, int, int]] = []
    for k, r in enumerate(rows):
        if runs and r == runs[-1][1] + runs[-1][2]:
            runs[-1] = (runs[-1][0], runs[-1][1], runs[-1][2] + 1)
        else:
            runs.append((k, r, 1))
    return runs
