"""The miss-rate cap where decisions are made: ``predict.miss_rate`` / ``serve.miss_rate`` name the
evaluation run that chose the threshold (``lungcls-evaluate ... evaluate.miss_rate=0.05``), and each
image becomes "Normal" or "refer" at it. The threshold belongs to the checkpoint it was calibrated
for: an evaluation of another file (SHA-256 mismatch) is refused."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lungcls.errors import LungclsError
from lungcls.inference.checkpoints import checkpoint_sha256
from lungcls.inference.screening import read_evaluation
from lungcls.metrics.riskcontrol import decide

__all__ = ["MissCap", "load_miss_caps"]


@dataclass(frozen=True)
class MissCap:
    """The Normal-score threshold an evaluation chose for one checkpoint, and the cap behind it."""

    alpha: float
    guarantee: str
    delta: float | None
    threshold: float
    normal_class: str
    calibration: str  # e.g. "val (45 disease / 60 images)"
    source: str  # the evaluation's metrics.json

    def decisions(self, probs: Any, class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per image: the class called and whether it is referred (not called Normal)."""
        return decide(probs, list(class_names).index(self.normal_class), self.threshold)

    def card(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "guarantee": self.guarantee, "delta": self.delta, "threshold": self.threshold,
                "normal_class": self.normal_class, "calibration": self.calibration, "evaluation": self.source}


def _read(source: Any) -> tuple[Path, dict[str, Any]]:
    path, metrics = read_evaluation(source, "evaluate.miss_rate=0.05")
    cap = metrics.get("miss_rate_control")
    if not cap or cap.get("threshold") is None or not metrics.get("checkpoint_sha256"):
        raise LungclsError(f"{path} has no miss-rate cap; run lungcls-evaluate ckpt=... evaluate.miss_rate=0.05 and give its run folder")
    return path, metrics


def load_miss_caps(evaluations: Any, checkpoints: Sequence[Path], key: str = "predict.miss_rate") -> dict[Path, MissCap]:
    """Match each evaluation (run folder or metrics.json) to the checkpoint it calibrated, by content."""
    items = [] if evaluations in (None, "") else ([evaluations] if isinstance(evaluations, (str, Path)) else list(evaluations))
    hashes = {ckpt: checkpoint_sha256(ckpt) for ckpt in checkpoints} if items else {}
    found: dict[Path, MissCap] = {}
    for item in items:
        path, metrics = _read(item)
        match = [c for c in checkpoints if hashes[c] == metrics["checkpoint_sha256"]]
        if not match:
            raise LungclsError(f"{key}: {path} calibrated another checkpoint ({metrics.get('checkpoint')}, SHA-256 "
                               f"{metrics['checkpoint_sha256'][:12]}...), not one of those given; evaluate this checkpoint "
                               "with evaluate.miss_rate and give that run folder")
        cap = metrics["miss_rate_control"]
        cal = cap["calibration"]
        found[match[0]] = MissCap(float(cap["alpha"]), str(cap["guarantee"]), cap.get("delta"), float(cap["threshold"]),
                                  str(cap["normal_class"]), f"{cal['split']} ({cal['disease']} disease / {cal['all']} images)", str(path))
    return found
