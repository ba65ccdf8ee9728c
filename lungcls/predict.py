"""``lungcls-predict``: run one or more trained checkpoints on new X-rays (an image file, a folder or
a manifest CSV; labels are not needed) and write ``predictions.csv`` in the run folder (Hydra app;
see conf/predict.yaml).

Each image is decoded once (PNG, JPEG or DICOM) and scored by every model through the prediction
loop evaluation uses. Several checkpoints put their columns side by side. ``predict.cam=true``
adds a Grad-CAM overlay PNG per image and model under ``overlays/``; ``predict.json`` records the
models (their cards), the thresholds used and the counts.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lungcls.cli import hydra_main
from lungcls.settings import check_range, typed
from lungcls.data.pixels.images import read_gray
from lungcls.data.samples.inputs import InputImage, Inputs, collect_inputs, inputs_from_dataset
from lungcls.models.device import pick_device
from lungcls.errors import LungclsError
from lungcls.explain.maps.explainer import ReportModel
from lungcls.inference.checkpoints import load_checkpoints
from lungcls.inference.prediction import refuse_lung_masked
from lungcls.explain.maps.overlays import safe_stem
from lungcls.inference.scoring import UsedModel, check_margin, model_card, score_images
from lungcls.inference.prediction import tta_copies
from lungcls.inference.screening import load_screening_thresholds
from lungcls.inference.capload import load_miss_caps
from lungcls.runs.files import replacing, write_text_atomic

log = logging.getLogger(__name__)


@dataclass
class PredictSettings:
    """``predict.*`` (defaults and meanings in conf/predict.yaml), checked before any model is loaded."""

    batch_size: int
    device: str
    cam: bool
    cam_size: int
    normal_margin: float
    screening: Any
    tta: Any
    skip_unreadable: bool
    miss_rate: Any
    min_side: int

    def __post_init__(self) -> None:
        check_range(self.batch_size, "predict.batch_size", 1)
        check_range(self.min_side, "predict.min_side", 1)
        check_range(self.cam_size, "predict.cam_size", 16)
        self.normal_margin = check_margin(self.normal_margin, "predict.normal_margin")
        self.tta_copies = tta_copies(self.tta)  # an unknown value fails here, before any loading


def images_to_score(cfg: DictConfig, classes: Sequence[str]) -> Inputs:
    """``input=`` (a file, folder or manifest) or a ``dataset=`` config, exactly one of them."""
    data = OmegaConf.to_container(cfg.dataset, resolve=True)
    from_dataset = "name" in data
    if from_dataset == (cfg.input is not None):
        raise LungclsError("give the images with input=<file|folder|manifest.csv> or with dataset=<name> dataset.root=..., "
                           "one of the two")
    return inputs_from_dataset(data) if from_dataset else collect_inputs(cfg.input, classes)


def columns(models: Sequence[UsedModel], cam: bool, with_errors: bool) -> list[str]:
    """``path,label`` then per model ``pred,prob_<Class>...,possible_missed_disease[,screen_<Class>][,overlay]``,
    prefixed ``<model name>:`` when there are several models."""
    cols = ["path", "label"]
    for m in models:
        prefix = f"{m.name}:" if len(models) > 1 else ""
        own = ["pred", *[f"prob_{c}" for c in m.class_names], "possible_missed_disease"]
        if m.screening is not None:
            own.append(f"screen_{m.screening.positive_class}")
        if m.miss_cap is not None:
            own += ["miss_cap", "miss_cap_class"]
        if cam:
            own.append("overlay")
        cols += [prefix + c for c in own]
    return cols + (["error"] if with_errors else [])


def _model_cells(m: UsedModel, item: dict[str, Any] | None, overlay: str | None) -> list[Any]:
    n = 2 + len(m.class_names) + (m.screening is not None) + 2 * (m.miss_cap is not None) + (overlay is not None)
    if item is None:
        return [""] * n
    cells = [item["prediction"], *[f"{item['probabilities'][c]:.6f}" for c in m.class_names], int(item["possible_missed_disease"])]
    if m.screening is not None:
        cells.append(int(item["screening"]["flagged"]))
    if m.miss_cap is not None:
        cells += [item["miss_cap"]["decision"], item["miss_cap"]["called"]]
    return cells + ([overlay] if overlay is not None else [])


def _decode(chunk: Sequence[InputImage], skip_unreadable: bool, min_side: int) -> tuple[list, list[str | None]]:
    """Decoded images of a chunk (None where unreadable and skipped) and the errors."""
    grays, errors = [], []
    for im in chunk:
        try:  # predict has no key for the pixel limit
            grays.append(read_gray(im.path, limit_key=None, min_side=min_side, side_key="predict.min_side"))
            errors.append(None)
        except LungclsError as e:
            if not skip_unreadable:
                raise LungclsError(f"{e} (or set predict.skip_unreadable=true to list it and go on)") from None
            grays.append(None)
            errors.append(str(e))
    return grays, errors


def _write_overlay(out_dir: Path, index: int, image: InputImage, model_index: int, several: bool, png: bytes) -> str:
    name = f"{index:05d}_{safe_stem(Path(image.path).stem)}" + (f"__m{model_index + 1}" if several else "") + ".png"
    (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
    (out_dir / "overlays" / name).write_bytes(png)
    return f"overlays/{name}"


def predict_chunk(models: Sequence[UsedModel], chunk: Sequence[InputImage], start: int, s: PredictSettings,
                  out_dir: Path, tally: list[Counter]) -> list[list[Any]]:
    """CSV rows of one chunk of images (every model on the same decoded images)."""
    grays, errors = _decode(chunk, s.skip_unreadable, s.min_side)
    ok = [i for i, g in enumerate(grays) if g is not None]
    cam = s.cam
    per_model = []
    for m in models:
        scored = score_images(m, [grays[i] for i in ok], s.batch_size, cam, s.cam_size, s.tta)
        per_model.append(dict(zip(ok, scored)))
    rows = []
    for i, im in enumerate(chunk):
        row: list[Any] = [im.path, im.label or ""]
        for k, (m, items) in enumerate(zip(models, per_model)):
            item = items.get(i)
            overlay = None
            if cam:
                overlay = _write_overlay(out_dir, start + i, im, k, len(models) > 1, item["overlay_png"]) if item else ""
            if item is not None:
                tally[k].update(["scored", f"pred:{item['prediction']}"] + ["missed"] * item["possible_missed_disease"]
                                + ["screened"] * bool(item["screening"] and item["screening"]["flagged"])
                                + ["referred"] * bool(item.get("miss_cap") and item["miss_cap"]["decision"] == "refer"))
            row += _model_cells(m, item, overlay)
        rows.append(row + ([errors[i] or ""] if s.skip_unreadable else []))
    return rows


def summary(models: Sequence[UsedModel], tally: Sequence[Counter]) -> tuple[list[str], list[dict[str, Any]]]:
    """One printed line and one predict.json entry (its card and counts) per model."""
    lines, cards = [], []
    for m, t in zip(models, tally):
        predicted = {c: t[f"pred:{c}"] for c in m.class_names}
        line = f"{m.name}: " + ", ".join(f"{c} {n}" for c, n in predicted.items())
        if m.ref.normal_class in m.class_names and m.normal_margin > 0:
            line += f" | possible missed disease ({m.ref.normal_class} ahead by < {m.normal_margin:g}): {t['missed']}"
        if m.screening is not None:
            line += f" | {m.screening.positive_class} at threshold {m.screening.threshold:.4g}: {t['screened']} flagged"
        if m.miss_cap is not None:
            line += f" | miss-rate cap {m.miss_cap.alpha:g} ({m.miss_cap.guarantee}): {t['referred']} referred, {t['scored'] - t['referred']} Normal"
        lines.append(line)
        card = model_card(m)
        card.update(checkpoint_path=str(m.ref.checkpoint), predicted=predicted, possible_missed_disease=t["missed"],
                    screened_positive=t["screened"] if m.screening is not None else None,
                    referred_by_miss_cap=t["referred"] if m.miss_cap is not None else None)
        cards.append(card)
    return lines, cards


def predict(cfg: DictConfig) -> Path:
    """Write predictions.csv (and overlays/, predict.json) into ``cfg.paths.output_dir``."""
    s = typed(cfg.predict, PredictSettings, "predict")
    out_dir = Path(cfg.paths.output_dir)
    refs = [ReportModel.of(m) for m in load_checkpoints(cfg.ckpt, pick_device(s.device))]
    refuse_lung_masked(refs, "files given to lungcls-predict")
    thresholds = load_screening_thresholds(s.screening, [r.checkpoint for r in refs])
    caps = load_miss_caps(s.miss_rate, [r.checkpoint for r in refs])
    models = [UsedModel(r, thresholds.get(r.checkpoint), s.normal_margin, caps.get(r.checkpoint)) for r in refs]
    classes = sorted({c for m in models for c in m.class_names})
    inputs = images_to_score(cfg, classes)
    out_dir.mkdir(parents=True, exist_ok=True)
    tally = [Counter() for _ in models]
    csv_path = out_dir / "predictions.csv"
    with replacing(csv_path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns(models, s.cam, s.skip_unreadable))
        for start in range(0, len(inputs.images), s.batch_size):
            chunk = inputs.images[start : start + s.batch_size]
            writer.writerows(predict_chunk(models, chunk, start, s, out_dir, tally))
    unreadable = len(inputs.images) - tally[0]["scored"]
    lines, cards = summary(models, tally)
    record = {"input": inputs.where, "images": len(inputs.images), "unreadable": unreadable,
              "skipped_files": len(inputs.skipped), "skipped": inputs.skipped,
              "tta": {"mode": str(s.tta), "copies": s.tta_copies},
              "models": cards}
    write_text_atomic(out_dir / "predict.json", json.dumps(record, indent=2, allow_nan=False))
    print(f"{len(inputs.images)} images from {inputs.where}" + (f" ({len(inputs.skipped)} other files skipped, named in predict.json)" if inputs.skipped else "")
          + (f"; {unreadable} unreadable (see the error column)" if unreadable else ""))
    for line in lines:
        print(line)
    print(f"predictions: {csv_path}")
    return csv_path


@hydra_main("predict")
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
