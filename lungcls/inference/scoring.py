"""Using trained models on new X-rays: the decisions ``lungcls-predict`` writes and ``lungcls-serve``
shows, made in one place so both say the same thing for the same file.

Per model and image: the class probabilities (from ``lungcls.inference.prediction``, the loop evaluation
uses), the predicted class, the "possible missed disease" flag (the normal class wins by less than
``normal_margin`` over the most likely disease), the screening flag at the threshold an evaluation
of this checkpoint chose on val (when one is given), and optionally the Grad-CAM overlay PNG of the
predicted class. ``model_card`` says what a model is and how it scored on its run's test split.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lungcls.data.pixels.images import gray_to_input
from lungcls.errors import LungclsError
from lungcls.explain.maps.explainer import ReportModel, explain_batch
from lungcls.explain.maps.overlays import overlay_rgb, png_bytes
from lungcls.inference.prediction import predict_arrays
from lungcls.inference.screening import ScreeningThreshold, possible_missed_disease
from lungcls.inference.capload import MissCap


@dataclass
class UsedModel:
    """A loaded checkpoint with the decision settings it is used with."""

    ref: ReportModel
    screening: ScreeningThreshold | None = None
    normal_margin: float = 0.1
    miss_cap: MissCap | None = None  # "Normal" / "refer" at the threshold of a miss-rate cap

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def class_names(self) -> list[str]:
        return self.ref.class_names


def check_margin(value: Any, key: str) -> float:
    margin = float(value)
    if not 0.0 <= margin < 1.0:
        raise LungclsError(f"{key}={value} must be in [0, 1) (0 turns the possible-missed-disease flag off)")
    return margin


def decide(model: UsedModel, probs: np.ndarray) -> list[dict[str, Any]]:
    """The per-image decisions of ``model`` from its probabilities [N, C] (no overlay)."""
    names = model.class_names
    near_miss = possible_missed_disease(probs, names, model.ref.normal_class, model.normal_margin)
    screen = model.screening.flags(probs, names) if model.screening is not None else None
    capped = model.miss_cap.decisions(probs, names) if model.miss_cap is not None and len(probs) else None
    out = []
    for i, p in enumerate(probs):
        k = int(np.argmax(p))
        item: dict[str, Any] = {
            "probabilities": {c: float(v) for c, v in zip(names, p)},
            "prediction": names[k],
            "probability": float(p[k]),
            "possible_missed_disease": bool(near_miss[i]),
            "screening": None,
        }
        if screen is not None:
            s = model.screening
            item["screening"] = {"positive_class": s.positive_class, "threshold": s.threshold, "flagged": bool(screen[i])}
        if capped is not None:
            item["miss_cap"] = {"decision": "refer" if capped[1][i] else "Normal", "called": names[int(capped[0][i])],
                                "alpha": model.miss_cap.alpha, "threshold": model.miss_cap.threshold}
        out.append(item)
    return out


def overlays(model: UsedModel, grays: Sequence[np.ndarray], targets: Sequence[int], batch_size: int, longest: int) -> list[bytes]:
    """Grad-CAM overlay PNGs of the classes ``targets`` (the predictions), one per image."""
    x = torch.stack([gray_to_input(g, model.ref.image_size) for g in grays])
    cams = explain_batch(model.ref, x, list(targets), batch_size).cams.numpy()
    return [png_bytes(overlay_rgb(g, cam, longest)) for g, cam in zip(grays, cams)]


def score_images(model: UsedModel, grays: Sequence[np.ndarray], batch_size: int = 32, cam: bool = False,
                 overlay_size: int = 512, tta: str | int | None = None) -> list[dict[str, Any]]:
    """Decisions of ``model`` for decoded images, with ``overlay_png`` bytes when ``cam``; ``tta``
    averages test-time copies as ``lungcls-evaluate evaluate.tta`` does."""
    probs = predict_arrays(model.ref.model, grays, batch_size=batch_size, tta=tta)
    decided = decide(model, probs)
    if cam and len(grays):
        for item, png in zip(decided, overlays(model, grays, probs.argmax(axis=1).tolist(), batch_size, overlay_size)):
            item["overlay_png"] = png
    return decided


def _test_metrics(model: ReportModel) -> dict[str, Any] | None:
    """What the model's own run measured on its test split (None when the run folder lacks it)."""
    try:
        test = json.loads((model.run_dir / "metrics.json").read_text()).get("test")
    except (OSError, ValueError):
        return None
    if not test or test.get("accuracy") is None:
        return None
    per_class = test.get("per_class") or {}
    return {
        "images": sum(int(v.get("support") or 0) for v in per_class.values()),
        "accuracy": test.get("accuracy"),
        "macro_f1": test.get("macro_f1"),
        "recall": {c: v.get("recall") for c, v in per_class.items()},
        "specificity": {c: v.get("specificity") for c, v in per_class.items()},
        "predicted_normal": test.get("fn_to_normal"),
    }


def model_card(model: UsedModel) -> dict[str, Any]:
    """Backbone, fine-tune, training data, test metrics and decision settings of a model."""
    m = model.ref.model
    info = m.info
    data = dict(info.data)
    counts = list(info.class_counts)
    return {
        "name": model.name,
        "checkpoint": f"{model.ref.run_dir.name}/{model.ref.checkpoint.relative_to(model.ref.run_dir)}"
        if model.ref.run_dir in model.ref.checkpoint.parents else model.ref.checkpoint.name,
        "backbone": info.backbone,
        "finetune": dict(info.recipe),
        "trainable_params": int(m.trainable_params),
        "total_params": int(m.total_params),
        "image_size": model.ref.image_size,
        "classes": model.class_names,
        "normal_class": model.ref.normal_class,
        "normalization": {"mean": list(info.mean), "std": list(info.std)},
        "training_data": {
            "dataset": data.get("name"),
            "layout": data.get("layout"),
            "folder": str(data.get("root") or data.get("manifest") or "").rstrip("/").split("/")[-1] or None,
            "train_images_per_class": dict(zip(model.class_names, counts)) if counts else None,
        },
        "test_metrics": _test_metrics(model.ref),
        "normal_margin": model.normal_margin,
        "screening": None if model.screening is None else {
            "positive_class": model.screening.positive_class,
            "threshold": model.screening.threshold,
            "target_sensitivity": model.screening.target_sensitivity,
            "val_sensitivity": model.screening.val_sensitivity,
        },
        "miss_cap": None if model.miss_cap is None else model.miss_cap.card(),
    }
