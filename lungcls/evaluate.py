"""``lungcls-evaluate``: score any checkpoint on its run's test split, another split, or a whole
external folder (Hydra app; see conf/evaluate.yaml).

Without a ``dataset=`` override the checkpoint's own data set and ``splits.csv`` are used, so
evaluation never scores training images. An external folder's classes are matched to the model's
by name; classes the model does not know are left out and reported in one line.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
from omegaconf import DictConfig, OmegaConf

from lungcls.card.write import card_at_end
from lungcls.cli import hydra_main
from lungcls.settings import check_range, typed, typed_keys
from lungcls.inference.checkpoints import LoadedModel, legacy_checkpoint, load_checkpoint
from lungcls.runs.runfolder import RunFolder
from lungcls.data.datamodule import LungDataModule
from lungcls.data.settings import DatasetSettings, dataset_settings
from lungcls.data.dedup.leakage import match_training_images, overlap_message, overlap_record, read_training_images
from lungcls.models.device import pick_device
from lungcls.errors import LungclsError
from lungcls.inference.prediction import predict_split, tta_copies
from lungcls.metrics.predictions import Predictions
from lungcls.runs.results import check_stats, print_summary, write_results
from lungcls.inference.screening import screening_line
from lungcls.inference.misscap import GUARANTEES
from lungcls.inference.capview import cap_and_groups, check_cap, check_cap_data, print_cap_and_groups
from lungcls.data.samples.splits import SPLITS
from lungcls.data.pixels.preprocess import mitigation_settings

log = logging.getLogger(__name__)


@dataclass
class EvaluateRun:
    """The top-level keys of conf/evaluate.yaml."""

    ckpt: Optional[str]
    ckpt_path: Optional[str]
    seed: int
    device: str


@dataclass
class EvaluateSettings:
    """``evaluate.*`` (defaults and meanings in conf/evaluate.yaml)."""

    positive_class: Optional[str]
    threshold: Optional[float]
    target_sensitivity: float
    tta: Any
    temperature_scaling: bool
    exclude_training_images: bool
    miss_rate: Optional[float]
    miss_guarantee: str
    miss_delta: float
    calibration: str
    miss_rate_by: Optional[str]
    group_by: list[str]

    def __post_init__(self) -> None:
        check_range(self.threshold, "evaluate.threshold", 0, 1)
        check_range(self.target_sensitivity, "evaluate.target_sensitivity", 0, 1, low_open=True)
        check_range(self.miss_rate, "evaluate.miss_rate", 0, 1, low_open=True, high_open=True)
        check_range(self.miss_delta, "evaluate.miss_delta", 0, 1, low_open=True, high_open=True)
        if self.miss_guarantee not in GUARANTEES:
            raise LungclsError(f"evaluate.miss_guarantee={self.miss_guarantee} must be one of {', '.join(GUARANTEES)}")
        if self.calibration not in SPLITS:
            raise LungclsError(f"evaluate.calibration={self.calibration} must be a split: {', '.join(SPLITS)}")
        tta_copies(self.tta)  # an unknown value fails here, before any loading


def data_settings_for(given: dict[str, Any], loaded: LoadedModel) -> tuple[DatasetSettings, str]:
    """The data to score: the run's own (with its splits.csv) unless a dataset is given."""
    split = str(given["split"])
    if "name" in given:  # other data, decoded as the model was trained (crop_border, equalize, mask_outside_lungs)
        data = dataset_settings({**given, **mitigation_settings(loaded.info.data)})
    else:  # the checkpoint's own data: read only, never generated, no cache written where it says
        saved = loaded.info.data
        if not saved:
            raise LungclsError("the checkpoint does not record its data set; pass one, e.g. dataset=folder dataset.root=...")
        data = replace(dataset_settings(saved, stored=True), cache_dir=given["cache_dir"])
        run = loaded.run
        if run is not None and run.splits_csv.is_file() and split != "all":
            # the saved split already is the fold (k-fold or leave-one-source-out)
            data = replace(data, splits_csv=str(run.splits_csv), folds=None)
        if data.splits_csv:
            data = replace(data, max_per_class=None)
    # the model's working size, whatever the data config says; classes the data lack are reported
    # below instead of refused (external sets often lack some); evaluation trains nothing, so label
    # conflicts are scored as labelled and reported
    data = replace(data, image_size=loaded.info.image_size, allow_missing_classes=True,
                   on_label_conflict="keep" if data.on_label_conflict == "error" else data.on_label_conflict)
    if split == "all":
        data = replace(data, val_fraction=0.0, test_fraction=0.0, splits_csv=None)
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


def to_model_space(pred: Predictions, mapping: list[int | None]) -> Predictions:
    """Keep the images of classes the model knows, relabelled with the model's label ids."""
    keep = [i for i, y in enumerate(pred.labels) if mapping[y] is not None]
    kept = pred.subset(keep)
    kept.labels = np.array([mapping[y] for y in kept.labels], dtype=int)
    return kept


def _predicted(model, dm: LungDataModule, split: str, device, mapping, tta: Any, cache: dict) -> Predictions:
    """A split's predictions in the model's label space, computed once per (split, tta) for every
    view that needs them (screening, temperature scaling, the miss-rate cap)."""
    key = (split, "none" if tta_copies(tta) == 1 else str(tta))
    if key not in cache:
        cache[key] = to_model_space(predict_split(model, dm, split, device, tta=tta), mapping)
    return cache[key]


def _screening(ev: EvaluateSettings, model, dm: LungDataModule, split: str, pred: Predictions, mapping, device, cache: dict) -> dict[str, Any]:
    from lungcls.inference.screening import screening_report

    val = None
    if split != "val" and len(dm.split_rows("val")):
        val = _predicted(model, dm, "val", device, mapping, None, cache)
    return screening_report(
        model.class_names, ev.positive_class, pred.probs, pred.labels,
        val.probs if val is not None else None, val.labels if val is not None else None,
        threshold=ev.threshold, target_sensitivity=ev.target_sensitivity,
    )


def _temperature_scaling(ev: EvaluateSettings, bins: int, model, dm: LungDataModule, split: str, pred: Predictions, mapping, device,
                         cache: dict) -> dict[str, Any]:
    """Fit a temperature on val, and report ``split``'s calibration before and after it (the
    predicted classes, hence every confusion-matrix number, do not change)."""
    from lungcls.metrics.calibration import calibration, fit_temperature, scale_temperature

    if split == "val" or not len(dm.split_rows("val")):
        return {"temperature": None, "reason": "temperature scaling is fitted on the val split, and there is no other split to report it on"}
    val = _predicted(model, dm, "val", device, mapping, ev.tta, cache)
    t = fit_temperature(val.probs, val.labels)
    return {
        "temperature": t,
        "fitted_on": f"val ({len(val.labels)} images)",
        "before": calibration(pred.probs, pred.labels, bins),
        "after": calibration(scale_temperature(pred.probs, t), pred.labels, bins),
    }


def leave_out_training_images(run: RunFolder | None, exclude: bool, dm: LungDataModule, split: str, own_data: bool,
                              pred: Predictions) -> tuple[Predictions, dict[str, Any] | None]:
    """Find the checkpoint's training images among the scored ones (same file, same pixels, near
    copies; recorded in its run's splits.csv) and, unless ``evaluate.exclude_training_images=false``,
    leave them out. Returns the predictions kept and what was found (None: nothing to check)."""
    if own_data and split == "train":
        return pred, None  # the training split itself was asked for
    if run is None or not run.splits_csv.is_file():
        log.warning("the checkpoint is not in a run folder with a splits.csv: cannot tell whether these images were trained on")
        return pred, None
    splits_file = run.splits_csv
    training = read_training_images([splits_file])
    fp = dm.fingerprints
    if fp is not None:
        index = {p: i for i, p in enumerate(fp.paths)}
        fp = fp.subset([index[p] for p in pred.paths])
    matches = match_training_images(pred.paths, fp, training, dm.cfg.near_duplicate_bits)
    record = overlap_record(matches, len(pred), exclude, training, [splits_file])
    message = overlap_message(record, "images", "evaluate.exclude_training_images")
    if message:
        print(message)  # once, on the console; metrics.json records it as training_overlap
    if not exclude or not matches:
        return pred, record
    kept = pred.subset([i for i, p in enumerate(pred.paths) if p not in matches])
    if len(kept) == 0:
        raise LungclsError(
            f"all {len(pred)} images of the '{split}' split are training images of the checkpoint; score other "
            "data (or set evaluate.exclude_training_images=false to score them anyway)"
        )
    return kept, record


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score ``cfg.ckpt``; writes metrics.json, predictions.csv and confusion_matrix.png."""
    run_dir = Path(cfg.paths.output_dir)
    run = typed_keys(cfg, EvaluateRun)
    ckpt_value = legacy_checkpoint(run.ckpt, run.ckpt_path)
    ev = typed(cfg.evaluate, EvaluateSettings, "evaluate")
    stats = check_stats(OmegaConf.to_container(cfg.stats, resolve=True))
    device = pick_device(run.device)
    loaded = load_checkpoint(ckpt_value, device)
    ckpt, model = loaded.checkpoint, loaded.model
    given = OmegaConf.to_container(cfg.dataset, resolve=True)
    data, split = data_settings_for(given, loaded)
    own_data = "name" not in given
    check_cap(ev, model, data, split)
    dm = LungDataModule(data, augment=None, seed=run.seed, prepare=not own_data)
    dm.setup("test")
    mapping, mismatch = class_alignment(model.class_names, dm.class_names, dm.class_counts(split))
    if mismatch:
        print(f"class mismatch: {mismatch}")  # metrics.json records it as class_mismatch
    tta, cache = ev.tta, {}
    check_cap_data(ev, model, dm, data)
    pred = _predicted(model, dm, split, device, mapping, tta, cache)
    if len(pred.labels) == 0:
        raise LungclsError(f"no image of the '{split}' split belongs to a class the model knows ({model.class_names})")
    pred, overlap = leave_out_training_images(loaded.run, ev.exclude_training_images, dm, split, own_data, pred)
    if dm.duplicate_record.get("label_conflicts"):
        note = (f"WARNING: {dm.duplicate_record['label_conflicts']} group(s) of duplicate images carry different labels "
                "in this data (lungcls-audit lists them); each copy is scored against its own label")
        print(note)
    extra: dict[str, Any] = {
        "checkpoint": str(ckpt),
        "checkpoint_sha256": loaded.sha256,  # lets predict/serve match a chosen threshold to this file
        "data_root": data.root or data.manifest,
        "split": split,
        "class_mismatch": mismatch,
        "tta": {"mode": str(tta), "copies": tta_copies(tta)},
        "training_overlap": overlap,
        "duplicates": dm.duplicate_record,
    }
    if ev.positive_class:
        extra["screening"] = _screening(ev, model, dm, split, pred, mapping, device, cache)
    if ev.temperature_scaling:
        extra["temperature_scaling"] = _temperature_scaling(ev, stats["calibration_bins"], model, dm, split, pred, mapping, device, cache)
    extra.update(cap_and_groups(ev, stats, model, dm, data, (split, pred), lambda s: _predicted(model, dm, s, device, mapping, tta, cache)))
    metrics = write_results(run_dir, {split: pred}, model.class_names, model.normal_class, report_split=split,
                            extra=extra, stats=stats, sources=dm.sources())
    print_summary(split, metrics[split], model.normal_class, images=len(pred.labels))
    if metrics.get("screening"):
        print(screening_line(metrics["screening"]))
    print_cap_and_groups(metrics, model.normal_class)
    scaled = metrics.get("temperature_scaling") or {}
    if scaled.get("temperature"):
        before, after = scaled["before"], scaled["after"]
        print(f"temperature {scaled['temperature']:.3f} fitted on val: {split} ECE {before['ece']:.3f} -> {after['ece']:.3f}, "
              f"Brier {before['brier']:.3f} -> {after['brier']:.3f}")
    print(f"run folder: {run_dir}")
    card_at_end(cfg, run_dir, ckpt=str(ckpt))  # card.auto: the checkpoint's run, with this evaluation as evidence
    return metrics[split]


@hydra_main("evaluate")
def main(cfg: DictConfig) -> float | None:
    return evaluate(cfg).get("accuracy")


if __name__ == "__main__":
    main()
