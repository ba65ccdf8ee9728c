"""Score a trained model on data splits and write the run folder's result files.

One code path serves the end of every training run and ``lungcls-evaluate``: predict each split
without augmentation, summarise its confusion matrix (``lungcls.metrics``), and write
``metrics.json``, ``predictions.csv`` and ``confusion_matrix.png``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from lungcls.data.datamodule import LungDataModule
from lungcls.metrics import class_probability_ci, plot_confusion_matrix, summarize_confusion

log = logging.getLogger(__name__)


@dataclass
class Predictions:
    """Softmax outputs of one split, in the order of its images."""

    paths: list[str]
    labels: np.ndarray  # [N] int, in the data set's label space
    probs: np.ndarray  # [N, C] float, in the model's label space

    @property
    def preds(self) -> np.ndarray:
        return self.probs.argmax(axis=1) if len(self.probs) else np.zeros(0, dtype=int)


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict_split(model: torch.nn.Module, datamodule: LungDataModule, split: str, device: torch.device | None = None, batch_size: int | None = None) -> Predictions:
    """Probabilities for every image of ``split`` (eval mode, no augmentation)."""
    device = device or next(model.parameters()).device
    model.eval()
    probs, labels, rows = [], [], []
    for x, y, r in datamodule.loader(split, shuffle=False, batch_size=batch_size):
        x = x.to(device, non_blocking=True)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x
        with autocast_for(device):
            logits = model(x)
        probs.append(logits.float().softmax(dim=1).cpu())
        labels.append(y.cpu())
        rows.append(r.cpu())
    n_classes = len(getattr(model, "class_names", datamodule.class_names))
    if not rows:
        return Predictions([], np.zeros(0, dtype=int), np.zeros((0, n_classes), dtype=np.float32))
    row_idx = torch.cat(rows).tolist()
    return Predictions(
        paths=[datamodule.samples[i].path for i in row_idx],
        labels=torch.cat(labels).numpy().astype(int),
        probs=torch.cat(probs).numpy(),
    )


def confusion_from(pred: Predictions, n_classes: int) -> np.ndarray:
    idx = pred.labels * n_classes + pred.preds
    return np.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def summarize_predictions(pred: Predictions, class_names: Sequence[str], normal_class: str | None) -> dict[str, Any]:
    summary = summarize_confusion(confusion_from(pred, len(class_names)), class_names, normal_class)
    summary["probability_ci"] = class_probability_ci(pred.probs, pred.labels, class_names) if len(pred.labels) else {}
    return summary


def write_predictions_csv(path: Path, pred: Predictions, class_names: Sequence[str]) -> None:
    """``path,label,pred,prob_<Class>...``, one row per image."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "pred"] + [f"prob_{c}" for c in class_names])
        for p, y, yhat, pr in zip(pred.paths, pred.labels, pred.preds, pred.probs):
            w.writerow([p, class_names[y], class_names[yhat]] + [f"{v:.6f}" for v in pr])


def write_results(
    run_dir: Path,
    predictions: dict[str, Predictions],
    class_names: Sequence[str],
    normal_class: str | None,
    report_split: str = "test",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """metrics.json (a summary per split), predictions.csv and confusion_matrix.png of ``report_split``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {split: summarize_predictions(p, class_names, normal_class) for split, p in predictions.items()}
    metrics.update(extra or {})
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False))
    if report_split in predictions:
        write_predictions_csv(run_dir / "predictions.csv", predictions[report_split], class_names)
        plot_confusion_matrix(
            metrics[report_split]["confusion_matrix"], class_names, run_dir / "confusion_matrix.png",
            title=f"{report_split} split ({len(predictions[report_split].labels)} images)",
        )
    return metrics
