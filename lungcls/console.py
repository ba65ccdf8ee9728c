"""Progress on long work: a bar with a count and a rate on an interactive terminal, one summary line
when the output is not a terminal (a log file, CI), so that a stage that runs for minutes at scale
(reading a million images, searching their hashes) never looks hung, and a log is not flooded.

One function, ``progress``, used as a context manager around a loop::

    with progress("audit: read", total=len(paths), unit="images") as bar:
        for ... in ...:
            bar.update(1)

The bar is tqdm's (on stderr); the summary line reads ``audit: read: 1,000 images in 2.1 s (476 images/s)``.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")


class _Counter:
    """What a non-terminal run gets instead of a bar: a count, and one line at the end."""

    def __init__(self) -> None:
        self.n = 0

    def update(self, n: int = 1) -> None:
        self.n += n


def summary_line(label: str, count: int, seconds: float, unit: str) -> str:
    """``<label>: <count> <unit> in <s> s (<rate> <unit>/s)``."""
    rate = f"{count / seconds:,.0f}" if seconds > 0 else "-"
    return f"{label}: {count:,} {unit} in {seconds:.1f} s ({rate} {unit}/s)"


def is_terminal(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


@contextlib.contextmanager
def progress(label: str, total: int | None, unit: str = "images", stream: IO[str] | None = None) -> Iterator[_Counter | tqdm]:
    """A progress reporter with ``update(n)``: tqdm's bar (count, rate, time left) when ``stream``
    (default stderr) is a terminal, else one summary line written when the block ends."""
    stream = stream if stream is not None else sys.stderr
    started = time.perf_counter()
    if is_terminal(stream):
        with tqdm(total=total, desc=label, unit=f" {unit}", file=stream, dynamic_ncols=True, leave=True) as bar:
            yield bar
        return
    counter = _Counter()
    yield counter
    print(summary_line(label, counter.n, time.perf_counter() - started, unit), file=stream, flush=True)


def tracked(items: Iterable[T], label: str, total: int | None, unit: str = "images",
            step: int | Callable[[T], int] = 1) -> Iterator[T]:
    """``items`` unchanged, with ``progress`` advancing ``step`` per item (or ``step(item)``, e.g.
    a batch's size)."""
    with progress(label, total, unit) as bar:
        for item in items:
            yield item
            bar.update(step(item) if callable(step) else step)


def natural_key(text: str) -> list[Any]:
    """Sort `2` before `10`, as a person reads numbered files and Hydra's jobs 0, 1, ..., 10."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]
