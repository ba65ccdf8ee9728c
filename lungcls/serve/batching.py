"""Concurrent requests batched onto the models.

Every request hands its decoded images to one worker thread, which owns the models: it takes what
is waiting (up to ``batch_size`` images, waiting at most ``max_wait_ms`` for more after the first),
runs each model once on the whole batch (on the GPU when there is one) through the same decisions
``lungcls-predict`` makes, and hands each request its share. The event loop never runs a model,
so the server keeps answering (the page, ``/healthz``) while it works.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lungcls.inference.scoring import UsedModel, overlays, score_images

log = logging.getLogger(__name__)


@dataclass
class _Job:
    grays: list[np.ndarray]
    cam: bool
    future: Future = field(default_factory=Future)


class Batcher:
    """``submit(grays, cam)`` -> a Future of, per image, ``{model name: decision}``."""

    def __init__(self, models: Sequence[UsedModel], batch_size: int = 16, max_wait_ms: float = 10.0, overlay_size: int = 512):
        self.models = list(models)
        self.batch_size = max(1, int(batch_size))
        self.max_wait = max(0.0, float(max_wait_ms)) / 1000.0
        self.overlay_size = int(overlay_size)
        self.jobs: queue.Queue[_Job | None] = queue.Queue()
        self.stats = {"requests": 0, "images": 0, "batches": 0}
        self._thread = threading.Thread(target=self._run, name="lungcls-batcher", daemon=True)
        self._thread.start()

    def submit(self, grays: Sequence[np.ndarray], cam: bool) -> Future:
        job = _Job(list(grays), bool(cam))
        self.jobs.put(job)
        return job.future

    def close(self) -> None:
        self.jobs.put(None)
        self._thread.join(timeout=30)

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        """The first job plus whatever arrives within the wait, up to a batch of images."""
        jobs, count, stop = [first], len(first.grays), False
        deadline = time.monotonic() + self.max_wait
        while count < self.batch_size:
            try:
                job = self.jobs.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                stop = True
                break
            jobs.append(job)
            count += len(job.grays)
        return jobs, stop

    def _run(self) -> None:
        while True:
            first = self.jobs.get()
            if first is None:
                return
            jobs, stop = self._gather(first)
            try:
                self._process(jobs)
            except BaseException as e:  # a failure ends this batch's requests, never the worker
                log.exception("batch of %d request(s) failed", len(jobs))
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(e)
            if stop:
                return

    def _process(self, jobs: list[_Job]) -> None:
        grays = [g for job in jobs for g in job.grays]
        owner = [k for k, job in enumerate(jobs) for _ in job.grays]
        wants_cam = [jobs[k].cam for k in owner]
        per_image: list[dict[str, Any]] = [{} for _ in grays]
        for m in self.models:
            plain = score_images(m, grays, self.batch_size, cam=False)
            cam_idx = [i for i, w in enumerate(wants_cam) if w]
            if cam_idx:  # overlays of the predicted class, only for the requests that asked
                targets = [m.class_names.index(plain[i]["prediction"]) for i in cam_idx]
                pngs = overlays(m, [grays[i] for i in cam_idx], targets, self.batch_size, self.overlay_size)
                for i, png in zip(cam_idx, pngs):
                    plain[i]["overlay_png"] = png
            for i, item in enumerate(plain):
                per_image[i][m.name] = item
        self.stats["batches"] += 1
        self.stats["requests"] += len(jobs)
        self.stats["images"] += len(grays)
        for k, job in enumerate(jobs):
            job.grays = []  # the worker keeps its last jobs until the next batch: not their images
            job.future.set_result([per_image[i] for i in range(len(grays)) if owner[i] == k])
