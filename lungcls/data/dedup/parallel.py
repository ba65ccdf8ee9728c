"""The read pass on every core: a function applied to chunks of files in worker processes.

Decoding a PNG and hashing it hold Python's GIL part of the time, so threads of one process cannot
use every core for the whole pass; processes do not share a GIL.
Workers are forked, as torch's DataLoader does on Linux (starting them by ``spawn`` re-imports torch
in each: 17 s for two workers on a busy 2-core machine, against 2 s for the whole 400-image pass),
unless CUDA is already initialised in this process (then ``spawn``: a forked CUDA context is
unusable). A small pass runs in the calling process, where starting workers would cost more than it
saves. Results come back in input order, and progress is shown per finished chunk. Workers die
with the process that started them, even when it is killed with ``kill -9`` (``die_with``).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

from lungcls.console import progress

T = TypeVar("T")
R = TypeVar("R")

MIN_PER_PROCESS = 64  # fewer files than this per worker: read them in this process


def cpu_count() -> int:
    """Cores this process may use (its affinity mask on Linux)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def start_method() -> str:
    """``fork`` where it is available and safe (no CUDA context in this process), else ``spawn``."""
    torch = sys.modules.get("torch")
    cuda_started = torch is not None and torch.cuda.is_initialized()
    return "fork" if "fork" in multiprocessing.get_all_start_methods() and not cuda_started else "spawn"


def die_with(parent: int) -> None:
    """In a worker process: be killed when ``parent`` dies, even by ``kill -9``, instead of living on
    with its copy of the parent's memory (Linux's parent-death signal; once per process)."""
    global _BOUND
    if _BOUND == os.getpid() or not sys.platform.startswith("linux"):
        return
    _BOUND = os.getpid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the call: nothing would signal it now
        os._exit(1)


_BOUND = 0


def chunked(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def map_chunks(fn: Callable[[Sequence[T]], list[R]], items: Sequence[T], label: str, workers: int | None = None,
               unit: str = "images") -> list[R]:
    """``fn`` over chunks of ``items`` on ``workers`` processes (default: every core), flattened in
    input order. ``fn`` must be a module-level function (it is pickled to the workers)."""
    workers = max(1, workers or cpu_count())
    workers = min(workers, max(1, len(items) // MIN_PER_PROCESS))
    size = max(8, min(512, -(-len(items) // (workers * 8)))) if items else 1
    chunks = chunked(items, size)
    out: list[list[R]] = [[] for _ in chunks]
    with progress(label, total=len(items), unit=unit) as bar:
        if workers == 1:
            for k, chunk in enumerate(chunks):
                out[k] = fn(chunk)
                bar.update(len(chunk))
        else:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(start_method()),
                                     initializer=die_with, initargs=(os.getpid(),)) as pool:
                for k, result in enumerate(pool.map(fn, chunks)):
                    out[k] = result
                    bar.update(len(chunks[k]))
    return [r for chunk in out for r in chunk]


def call_all(fn: Callable[..., Any], items: Sequence[Any]) -> list[Any]:
    """``[fn(x) for x in items]`` (a helper that worker processes can receive with ``functools.partial``)."""
    return [fn(x) for x in items]
