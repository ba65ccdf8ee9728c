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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from lungcls.data.datamodule import LungDataModule
from lungcls.errors import LungclsError
from lungcls.metrics import class_probability_ci, plot_confusion_matrix, summarize_confusion

log = logging.getLogger(__name__)


@dataclass
class Predictions:
    """Softmax outputs of one split, in the order of its images."""

    paths: list[str]
    labels: np.ndarray  # [N] int, in the data set's label space
    probs: np.ndarray  # [N, C] float, in the model's label space
    class_names: list[str] = field(default_factory=list)  # the model's classes (columns of probs)

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
    names = list(getattr(model, "class_names", datamodule.class_names))
    if not rows:
        return Predictions([], np.zeros(0, dtype=int), np.zeros((0, len(names)), dtype=np.float32), names)
    row_idx = torch.cat(rows).tolist()
    return Predictions(
        paths=[datamodule.samples[i].path for i in row_idx],
        labels=torch.cat(labels).numpy().astype(int),
        probs=torch.cat(probs).numpy(),
        class_names=names,
    )


def loss_and_auroc(pred: Predictions, stage: str) -> dict[str, float]:
    """``{stage}/loss`` (mean cross-entropy) and one-vs-rest ``{stage}/auroc/{Class}`` for classes
    with both positives and negatives in the split, from predictions made outside the Trainer."""
    from sklearn.metrics import roc_auc_score

    out: dict[str, float] = {}
    if not len(pred.labels):
        return out
    p_true = pred.probs[np.arange(len(pred.labels)), pred.labels]
    out[f"{stage}/loss"] = float(-np.log(np.clip(p_true, 1e-12, 1.0)).mean())
    names = pred.class_names
    for k, name in enumerate(names):
        positive = pred.labels == k
        if positive.any() and (~positive).any():
            out[f"{stage}/auroc/{name}"] = float(roc_auc_score(positive, pred.probs[:, k]))
    return out


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


# -- lungcls-evaluate ------------------------------------------------------------------------------


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise LungclsError("device=cuda but no CUDA GPU is visible; use device=auto or device=cpu")
    return torch.device(name)


def _data_config_for(cfg: DictConfig, model) -> tuple[dict[str, Any], str]:
    """The data to score: the run's own (with its splits.csv) unless a dataset is given."""
    given = OmegaConf.to_container(cfg.dataset, resolve=True) if cfg.get("dataset") is not None else {}
    split = str(given.get("split", "test"))
    if "name" in given:
        data = dict(given)
    else:
        data = dict(model.hparams.get("data") or {})
        if not data:
            raise LungclsError("the checkpoint does not record its data set; pass one, e.g. dataset=folder dataset.root=...")
        run_dir = Path(cfg.ckpt_path).resolve().parent.parent
        if (run_dir / "splits.csv").is_file() and split != "all":
            data["splits_csv"] = str(run_dir / "splits.csv")
        data.pop("max_per_class", None) if data.get("splits_csv") else None
    data["image_size"] = int(model.hparams.image_size)  # the model's working size, whatever the data config says
    data["allow_missing_classes"] = True  # reported below instead of refused: external sets often lack classes
    if split == "all":
        data["val_fraction"], data["test_fraction"], data["splits_csv"] = 0.0, 0.0, None
    return data, split


def class_alignment(model_classes: Sequence[str], data_classes: Sequence[str], counts: Sequence[int]) -> tuple[list[int | None], str | None]:
    """Map data label ids to model label ids by name, and describe any mismatch in one line."""
    mapping = [model_classes.index(c) if c in model_classes else None for c in data_classes]
    unknown = [f"{c} ({n} images, left out)" for c, n, m in zip(data_classes, counts, mapping) if m is None and n]
    present = {c for c, n in zip(data_classes, counts) if n}
    absent = [c for c in model_classes if c not in present]
    parts = []
    if unknown:
        parts.append("classes the model does not know: " + ", ".join(unknown))
    if absent:
        parts.append("classes the model knows that have no images here: " + ", ".join(absent))
    return mapping, ("; ".join(parts) if parts else None)


def _to_model_space(pred: Predictions, mapping: list[int | None]) -> Predictions:
    keep = [i for i, y in enumerate(pred.labels) if mapping[y] is not None]
    return Predictions(
        paths=[pred.paths[i] for i in keep],
        labels=np.array([mapping[pred.labels[i]] for i in keep], dtype=int),
        probs=pred.probs[keep] if len(keep) else pred.probs[:0],
        class_names=pred.class_names,
    )


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score ``cfg.ckpt_path``; writes metrics.json, predictions.csv and confusion_matrix.png."""
    from lungcls.models.module import load_classifier
    from lungcls.screening import screening_report

    run_dir = Path(cfg.paths.output_dir)
    device = pick_device(str(cfg.get("device", "auto")))
    model = load_classifier(str(cfg.ckpt_path), map_location=device)
    data, split = _data_config_for(cfg, model)
    dm = LungDataModule(data, augment=None, seed=int(cfg.seed))
    dm.setup("test")
    counts = [len([s for s in dm.split_samples(split) if s.label == i]) for i in range(len(dm.class_names))]
    mapping, mismatch = class_alignment(model.class_names, dm.class_names, counts)
    if mismatch:
        log.warning("class mismatch: %s", mismatch)
        print(f"class mismatch: {mismatch}")
    pred = _to_model_space(predict_split(model, dm, split, device), mapping)
    if len(pred.labels) == 0:
        raise LungclsError(f"no image of the '{split}' split belongs to a class the model knows ({model.class_names})")
    extra: dict[str, Any] = {
        "checkpoint": str(Path(cfg.ckpt_path).resolve()),
        "data_root": data.get("root") or data.get("manifest"),
        "split": split,
        "class_mismatch": mismatch,
    }
    ev = cfg.get("evaluate") or {}
    if ev.get("positive_class"):
        val = None
        if split != "val" and len(dm.split_rows("val")):
            val = _to_model_space(predict_split(model, dm, "val", device), mapping)
        extra["screening"] = screening_report(
            model.class_names,
            ev.positive_class,
            pred.probs,
            pred.labels,
            val.probs if val is not None else None,
            val.labels if val is not None else None,
            threshold=ev.get("threshold"),
            target_sensitivity=float(ev.get("target_sensitivity", 0.95)),
        )
    metrics = write_results(run_dir, {split: pred}, model.class_names, model.normal_class, report_split=split, extra=extra)
    summary = metrics[split]
    missed = ", ".join(f"{c} {n}" for c, n in summary["fn_to_normal"].items()) or "n/a"
    acc = summary["accuracy"]
    print(f"{split}: {len(pred.labels)} images | accuracy {acc:.3f} | predicted {model.normal_class}: {missed}")
    print(f"run folder: {run_dir}")
    return summary
