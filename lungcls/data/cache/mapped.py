"""One decoded copy per machine: a memory-mapped ``.npy`` file that every process of the machine maps.

With DDP every rank used to decode and hold the whole set (8 ranks, 8 copies; MIMIC-CXR at 224 px
is 19 GB as uint8). Here the machine's first process (local rank 0) decodes into a file in numpy's
own format, beside a small JSON record of its size, time and a sampled hash; the others wait for
the record, check the file against it and map it read-only, and the kernel's page cache holds one
copy for all of them. The file lives under ``dataset.cache_dir`` (kept for later runs) or in a
temporary folder (removed once every process has mapped it). A file that changes under a running
job is refused, never read as garbage. Which process writes the file and when the others
map it is decided by ``MachineImages`` (``machine.py``); this module holds the file itself.

Every page a process touches through a mapping counts in its resident memory (RSS) until it is
unmapped (and the kernel maps whole folios, up to megabytes, around each row touched), so an epoch
over a 19 GB file would show 19 GB in every process, and schedulers that add up their processes'
RSS (SLURM's accounting among them) would count it once per rank and stop the job. Batches are
therefore read from the file with ``preadv`` (one call per run of consecutive rows), which leaves
the pages in the kernel's page cache, shared and reclaimable, and nothing in the process; the
decoding process hands the pages it wrote back every ``RELEASE_BYTES`` (``madvise``). Resident
memory then stays the same whatever the size of the set.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from lungcls.data.cache.decoded import CACHE_FORMAT, cache_key, decode_images
from lungcls.data.pixels.images import DEFAULT_MAX_PIXELS
from lungcls.data.cache.npyfile import RELEASE_BYTES, PageBudget, consecutive_runs, open_npy
from lungcls.errors import LungclsError

log = logging.getLogger(__name__)

_SAMPLED_BLOCKS, _BLOCK = 64, 1 << 16


def writable_folder(folder: str | Path, key: str = "dataset.cache_dir") -> Path:
    """``folder``, created if needed; one line naming ``key`` when it cannot be written."""
    path = Path(folder).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LungclsError(f"{key}={folder} cannot be created ({e.strerror}); point {key} at a folder you can write") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise LungclsError(f"{key}={folder} is not writable; point {key} at a folder you can write "
                           f"(or {key}=null for a temporary one)")
    return path


def mapped_file(paths: Sequence[str], image_size: int, cache_dir: str | Path | None,
                key: str | None = None) -> tuple[Path, bool]:
    """Where the memory-mapped cache of these files lives, and whether it is temporary: under
    ``cache_dir`` (kept for later runs), else in a per-user temporary folder, removed once every
    process of the machine has mapped it. The name depends only on the files and the size (``key``:
    their ``cache_key``, when known), so every process of a job finds the same file."""
    key = key or cache_key(paths, image_size)
    if cache_dir is not None:
        return writable_folder(cache_dir) / f"images-{image_size}px-{key}.npy", False
    folder = writable_folder(Path(tempfile.gettempdir()) / f"lungcls-{os.getuid()}", "the temporary folder (TMPDIR)")
    return folder / f"images-{image_size}px-{key}.npy", True


def _record_file(file: Path) -> Path:
    return file.with_name(file.name + ".json")


def _sampled_digest(file: Path, size: int) -> str:
    """blake2b of 64 blocks spread over the file (its header included): reading a few MB checks a
    file of any size."""
    h = hashlib.blake2b(str(size).encode(), digest_size=16)
    with file.open("rb") as f:
        for k in range(_SAMPLED_BLOCKS):
            f.seek(max(0, size - _BLOCK) * k // (_SAMPLED_BLOCKS - 1))
            h.update(f.read(_BLOCK))
    return h.hexdigest()


def _stamp(file: Path) -> tuple[int, int, int]:
    st = os.stat(file)
    return st.st_size, st.st_mtime_ns, st.st_ino


@dataclass
class MappedImages:
    """A decoded set mapped read-only from ``file`` (``images``); ``take`` reads rows without
    mapping them, ``check`` refuses a file changed since it was mapped."""

    file: Path
    images: torch.Tensor
    stamp: tuple[int, int, int]
    temporary: bool
    handle: Any  # the file, open for reading (still readable once a temporary file is removed)
    offset: int  # of the first image in the file
    discarded: bool = False
    rows_taken: int = 0  # images this process has read from the file

    def take(self, rows: torch.Tensor) -> torch.Tensor:
        """The images of ``rows`` (in that order), read from the file into a new tensor (one read per
        run of consecutive rows). Reading through the mapping would keep every page it touched in
        this process's resident memory; a read leaves them in the page cache only."""
        self.check()
        if not hasattr(os, "preadv"):  # where the system has no preadv: through the mapping (its pages then stay resident)
            self.rows_taken += len(rows)
            return self.images[rows]
        row_bytes = int(np.prod(self.images.shape[1:]))
        out = np.empty((len(rows), *self.images.shape[1:]), dtype=np.uint8)
        flat = out.reshape(len(rows), row_bytes)
        for k, first, n in consecutive_runs(rows.tolist()):
            buffer, done, start = memoryview(flat[k : k + n]).cast("B"), 0, self.offset + first * row_bytes
            while done < len(buffer):  # one call reads at most about 2 GB
                got = os.preadv(self.handle.fileno(), [buffer[done:]], start + done)
                if got == 0:
                    raise LungclsError(f"the decoded cache {self.file} is shorter than when it was mapped (truncated "
                                       "during the run); delete it and start again")
                done += got
        self.rows_taken += len(rows)
        return torch.from_numpy(out)

    def check(self) -> None:
        """Raise when the file was rewritten, truncated or replaced while this job reads it."""
        if self.temporary and self.discarded:  # unlinked: nothing can write to this job's pages any more
            return
        try:
            now = _stamp(self.file)
        except FileNotFoundError:
            if self.temporary:  # removed by the first process once every process mapped it: the mapping stays valid
                return
            now = None
        if now != self.stamp:
            raise LungclsError(f"the decoded cache {self.file} changed while this job was reading it; do not write "
                               "to dataset.cache_dir during a run (delete the file to rebuild it, then start again)")

    def discard(self) -> None:
        """Remove a temporary file (mappings stay valid until the processes end)."""
        if self.temporary and not self.discarded:
            for f in (_record_file(self.file), self.file, self.file.with_name(self.file.name + ".lock")):
                f.unlink(missing_ok=True)
            self.discarded = True


def map_images(file: Path, shape: tuple[int, ...], temporary: bool, wait_s: float = 0.0) -> MappedImages | None:
    """Map ``file`` read-only once its record exists and matches (size, sampled hash, shape);
    waits up to ``wait_s`` for another process to finish writing it. None when there is none."""
    record, deadline = _record_file(file), time.monotonic() + wait_s
    while not record.is_file():
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.2)
    try:
        meta = json.loads(record.read_text())
    except ValueError:
        meta = {}
    stamp = _stamp(file) if file.is_file() else None
    expected = {"format": CACHE_FORMAT, "shape": list(shape), "bytes": stamp and stamp[0], "mtime_ns": stamp and stamp[1]}
    if stamp is None or any(meta.get(k) != v for k, v in expected.items()) or meta.get("digest") != _sampled_digest(file, stamp[0]):
        raise LungclsError(f"the decoded cache {file} does not match its record {record.name} (changed or "
                           "truncated after it was written); delete both files and start again")
    try:
        _, array, offset = open_npy(file)
    except ValueError as e:
        raise LungclsError(f"the decoded cache {file} is not a readable array ({e}); delete it and its record "
                           f"{record.name}, then start again") from None
    with warnings.catch_warnings():  # read-only on purpose: torch warns that it cannot write to it
        warnings.simplefilter("ignore", UserWarning)
        images = torch.from_numpy(array)
    mapped = MappedImages(file, images, stamp, temporary, open(file, "rb", buffering=0), offset)
    weakref.finalize(mapped, mapped.handle.close)  # the file is closed with the object, not left to the interpreter
    return mapped


def write_mapped(file: Path, paths: Sequence[str], image_size: int, temporary: bool,
                 max_pixels: int = DEFAULT_MAX_PIXELS, images: torch.Tensor | None = None,
                 preprocess=None, masks: Sequence[str | None] | None = None) -> MappedImages:
    """Decode ``paths`` into ``file`` (or copy already decoded ``images``) and map it read-only. Under
    a file lock: a process that finds the file already written by another maps it instead."""
    shape = (len(paths), 1, image_size, image_size)
    with open(file.with_name(file.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            found = map_images(file, shape, temporary)
        except LungclsError as e:
            log.warning("%s; rebuilding it", e)
            found = None
        if found is not None:
            log.info("mapped %d decoded images read-only from %s", len(paths), file)
            return found
        tmp = file.with_name(f"{file.name}.tmp{os.getpid()}.npy")
        header = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)  # the header, the file's size
        del header
        mapping, array, _ = open_npy(tmp, writable=True)
        pages = PageBudget(mapping, int(np.prod(shape[1:])))
        if images is not None:
            source = images.cpu().numpy()
            step = max(1, RELEASE_BYTES // pages.row_bytes)
            for start in range(0, len(source), step):
                array[start : start + step] = source[start : start + step]
                pages.rows_written(len(source[start : start + step]))
        else:
            decode_images(paths, image_size, max_pixels=max_pixels, preprocess=preprocess, masks=masks,
                          out=torch.from_numpy(array), after_rows=pages.rows_written)
        mapping.flush()
        del array
        mapping.close()
        _record_file(file).unlink(missing_ok=True)  # a stale record never describes the new file
        os.replace(tmp, file)
        size, mtime, _ = _stamp(file)
        meta = {"format": CACHE_FORMAT, "shape": list(shape), "bytes": size, "mtime_ns": mtime,
                "digest": _sampled_digest(file, size)}
        _record_file(file).with_suffix(".tmp").write_text(json.dumps(meta))
        os.replace(_record_file(file).with_suffix(".tmp"), _record_file(file))
    mapped = map_images(file, shape, temporary)
    verb = "copied" if images is not None else "decoded"
    log.info("%s %d images (%.0f MB) into %s, memory-mapped: the other processes of this machine map it read-only",
             verb, len(paths), mapped.images.numel() / 2**20, file)
    return mapped


def mapping_memory(file: Path) -> dict[str, float] | None:
    """How much of ``file``'s mapping this process holds, in MB: ``rss`` (its resident pages, which
    every process mapping them counts in full) and ``pss`` (each shared page divided among the
    processes that map it). None where the system does not say (not Linux)."""
    import psutil

    try:
        maps = psutil.Process().memory_maps(grouped=True)
    except (AttributeError, psutil.Error, OSError):
        return None
    for m in maps:
        if m.path.split(" (deleted)")[0] == str(file):
            return {"rss": m.rss / 2**20, "pss": getattr(m, "pss", float("nan")) / 2**20}
    return {"rss": 0.0, "pss": 0.0}
