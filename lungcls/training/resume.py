"""Resuming a run (``ckpt_path=.../last.ckpt``): the settings a continued run must share with its
checkpoint, checked before any image is decoded."""

from __future__ import annotations

from typing import Any

from lungcls.errors import LungclsError
from lungcls.inference.checkpoints import checkpoint_file, read_checkpoint
from lungcls.models.compat import upgrade_data

# What decides which images a run trains on and how they are split: a resumed run must match.
SPLIT_KEYS = ("layout", "root", "manifest", "classes", "val_fraction", "test_fraction", "split_seed",
              "splits_csv", "max_per_class", "image_size", "demo", "folds", "fold", "duplicates",
              "near_duplicate_bits", "on_label_conflict", "source_column", "source_from", "source_regex",
              "crop_border", "equalize", "mask_outside_lungs", "clahe_clip_limit", "clahe_grid")


def _resume_differences(saved: dict, current: dict) -> list[tuple[str, Any, Any]]:
    """(config key, checkpoint's value, current value) for every setting a resume must keep."""
    data_saved, data_now = dict(saved.get("data") or {}), dict(current["data"])
    data_saved, data_now = upgrade_data(data_saved), upgrade_data(data_now)  # keys a release added: as before them
    for d in (data_saved, data_now):  # the fold only matters in a k-fold run
        if not d.get("folds"):
            d["fold"] = None
    out = [(f"dataset.{k}", data_saved.get(k), data_now.get(k)) for k in SPLIT_KEYS if data_saved.get(k) != data_now.get(k)]
    model_keys = (("backbone.name", ("backbone", "name")), ("finetune.name", ("finetune", "name")),
                  ("finetune.fraction", ("finetune", "fraction")), ("optimizer._target_", ("optimizer", "_target_")))
    for key, (group, field) in model_keys:
        was, now = (saved.get(group) or {}).get(field), (current.get(group) or {}).get(field)
        if was != now:
            out.append((key, was, now))
    return out


def check_resume(ckpt_path: str, current: dict) -> None:
    """Refuse to resume a checkpoint with other data or split settings (the continued run would train
    on images the checkpoint held out, or score images it trained on) or another model, fine-tune
    or optimizer (its weights and optimizer state would not fit)."""
    path = checkpoint_file(ckpt_path, key="ckpt_path", expect="last.ckpt")
    saved = read_checkpoint(path, key="ckpt_path", expect="last.ckpt", weights=False)["hyper_parameters"]
    for key, was, now in _resume_differences(saved, current)[:1]:
        raise LungclsError(
            f"ckpt_path={ckpt_path} was trained with {key}={was}, not {now}; resume with the checkpoint's settings, "
            "or start a new run without ckpt_path"
        )
