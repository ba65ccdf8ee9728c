"""Timing rules: warm-up steps are excluded, the device is synchronised only at the edges of timed
windows (never inside the loop being measured), and the reported rate is the median over windows.
The Lightning clocks read the time at batch hooks, so a window holds whole iterations."""

from __future__ import annotations

import bisect
import gc
import statistics
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def window_edges(first: int, steps: int, windows: int) -> list[int]:
    """Step indices where timed windows start (the last one is where the last window ends)."""
    windows = max(1, min(windows, steps))
    return [first + steps * i // windows for i in range(windows + 1)]


def summarize_windows(images: Sequence[int], clock: Sequence[float]) -> dict[str, Any]:
    """images/s per window and their median; ``clock`` has one reading per window edge."""
    seconds = [b - a for a, b in zip(clock, clock[1:])]
    rates = [n / t for n, t in zip(images, seconds) if t > 0]
    if not rates:
        raise RuntimeError("no timed window completed")
    return {
        "images_per_s": statistics.median(rates),
        "mean_images_per_s": sum(images) / sum(seconds),
        "window_images_per_s": rates,
        "timed_images": int(sum(images)),
        "timed_seconds": sum(seconds),
    }


def time_steps(step: Callable[[], int], device: str, warmup: int, steps: int, repeats: int) -> dict[str, Any]:
    """Run ``warmup`` untimed steps, then ``steps`` timed ones in ``repeats`` windows. ``step``
    returns how many images it processed."""
    for _ in range(warmup):
        step()
    edges = window_edges(0, steps, repeats)
    sync(device)
    clock, images = [time.perf_counter()], []
    for a, b in zip(edges, edges[1:]):
        n = 0
        for _ in range(b - a):
            n += step()
        sync(device)
        clock.append(time.perf_counter())
        images.append(n)
    return {**summarize_windows(images, clock), "warmup_steps": warmup, "timed_steps": steps}


def free_memory() -> None:

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _short_site(filename: str, lineno: int) -> str:
    parts = Path(filename).parts
    return f"{'/'.join(parts[-3:])}:{lineno}"


def make_steady_state_clock(device: str, edges: list[int], sync_check: int):
    """A Lightning callback that reads the clock at ``on_train_batch_start`` of the window edges
    (counting batches across epochs), so each window holds whole iterations: fetch, transfer,
    augmentation, step and hooks. Afterwards it can count host synchronisations for a few steps."""

    class SteadyStateClock(pl.Callback):
        def __init__(self) -> None:
            self.k = 0
            self.clock: list[float] = []
            self.images = [0] * (len(edges) - 1)
            self.epochs: set[int] = set()
            self.sync_sites: Counter[str] = Counter()
            self.sync_steps = 0
            self._capture: Any = None
            self._records: list = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            k = self.k
            self.k += 1
            if sync_check and k == edges[-1] + sync_check:
                self._stop_capture()
                self.sync_steps = sync_check
            if k in edges:
                sync(device)
                self.clock.append(time.perf_counter())
            if edges[0] <= k < edges[-1]:
                self.images[bisect.bisect_right(edges, k) - 1] += len(batch[1])
                self.epochs.add(trainer.current_epoch)
            if sync_check and k == edges[-1]:
                self._start_capture()

        def _start_capture(self) -> None:
            self._capture = warnings.catch_warnings(record=True)
            self._records = self._capture.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")

        def _stop_capture(self) -> None:
            if self._capture is None:
                return
            torch.cuda.set_sync_debug_mode("default")
            self._capture.__exit__(None, None, None)
            self._capture = None
            for w in self._records:
                if "synchroniz" in str(w.message):
                    self.sync_sites[_short_site(w.filename, w.lineno)] += 1

        def on_train_end(self, trainer, pl_module) -> None:
            self._stop_capture()

        def on_exception(self, trainer, pl_module, exception) -> None:
            self._stop_capture()

    return SteadyStateClock()


def make_epoch_clock(device: str, timed_epoch: int):
    """Times epoch ``timed_epoch`` from its start to the end of training, i.e. training batches,
    validation and the end-of-epoch metric work, and counts the images of both parts."""

    class EpochClock(pl.Callback):
        def __init__(self) -> None:
            self.t0 = self.t_val = self.t1 = None
            self.train_images = self.val_images = 0

        def _timed(self, trainer) -> bool:
            return trainer.current_epoch == timed_epoch and not trainer.sanity_checking

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if self._timed(trainer):
                sync(device)
                self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if self._timed(trainer):
                self.train_images += len(batch[1])

        def on_validation_start(self, trainer, pl_module) -> None:
            if self._timed(trainer):
                sync(device)
                self.t_val = time.perf_counter()

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
            if self._timed(trainer):
                self.val_images += len(batch[1])

        def on_train_end(self, trainer, pl_module) -> None:
            sync(device)
            self.t1 = time.perf_counter()

    return EpochClock()
