"""One stage of the scale ladder, run alone in a fresh process (``python -m lungcls.benchmark.stages
<stage> <json>``), so that its peak memory is its own; it prints ``{"seconds": ...}`` as its last
line. The clock covers the stage's work only, not the interpreter's start and imports, which
would add a constant that flattens the measured growth.

Stages: ``scan`` (find the files), ``audit`` (lungcls-audit: read pass with fingerprints,
duplicate search, probe), ``decode`` (decode into the uint8 cache), ``epoch_logistic`` and
``epoch_resnet18`` (one training epoch after the data module is set up, with the decoded cache
``cache``: mmap by default), ``predict`` (the file
prediction loop over every image, with the model the resnet18 epoch saved).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

STAGES = ("scan", "audit", "decode", "epoch_logistic", "epoch_resnet18", "predict")


def _compose(config: str, overrides: list[str], out: str):
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from lungcls.cli import CONF_DIR

    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR, job_name="scale"):
        cfg = compose(config_name=config, overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = out
    return cfg


def _data_overrides(a: dict[str, Any]) -> list[str]:
    return ["dataset=covid_radiography", f"dataset.root={a['root']}", f"dataset.image_size={a['image_size']}",
            "dataset.near_duplicate_bits=6", f"dataset.cache={a.get('cache', 'mmap')}", "dataset.on_label_conflict=keep"]


def _dataset(a: dict[str, Any]):
    from omegaconf import OmegaConf

    from lungcls.data.settings import dataset_settings

    cfg = _compose("train", _data_overrides(a), a["out"])
    return dataset_settings(OmegaConf.to_container(cfg.dataset, resolve=True))


def _samples(a: dict[str, Any]):
    from lungcls.data.samples.layouts import find_samples

    return find_samples(_dataset(a))


def _epoch(a: dict[str, Any], backbone: str) -> float:
    import pytorch_lightning as pl
    from omegaconf import OmegaConf

    from lungcls.data.datamodule import LungDataModule
    from lungcls.training.setup import make_model
    from lungcls.training.trainer import build_trainer

    overrides = [*_data_overrides(a), f"backbone={backbone}", "backbone.weights=null", "logger=none",
                 "trainer.max_epochs=1", "trainer.accelerator=auto", "trainer.limit_val_batches=0",
                 "+trainer.enable_checkpointing=false", "+trainer.enable_progress_bar=false"]
    cfg = _compose("train", overrides, a["out"])
    pl.seed_everything(1, verbose=False)
    dm = LungDataModule(OmegaConf.to_container(cfg.dataset, resolve=True), OmegaConf.to_container(cfg.augment, resolve=True), seed=1)
    dm.setup("fit")
    model = make_model(cfg, dm)
    trainer = build_trainer(cfg, [], [])
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    seconds = time.perf_counter() - t0
    if backbone == "resnet18":
        trainer.save_checkpoint(str(Path(a["out"]) / "model.ckpt"))
    return seconds


def run_stage(name: str, a: dict[str, Any]) -> float:
    """Seconds of the stage's work."""
    if name == "scan":
        from lungcls.data.samples.layouts import find_samples

        data = _dataset(a)
        t0 = time.perf_counter()
        find_samples(data)
        return time.perf_counter() - t0
    if name == "audit":
        from lungcls.audit.run import audit

        cfg = _compose("audit", _data_overrides(a), a["out"])
        t0 = time.perf_counter()
        audit(cfg)
        return time.perf_counter() - t0
    paths = [s.path for s in _samples(a)]
    if name == "decode":
        from lungcls.data.cache.decoded import decode_images

        t0 = time.perf_counter()
        decode_images(paths, int(a["image_size"]))
        return time.perf_counter() - t0
    if name.startswith("epoch_"):
        return _epoch(a, name.split("_", 1)[1])
    if name == "predict":
        from lungcls.inference.prediction import predict_files
        from lungcls.inference.checkpoints import load_classifier

        model = load_classifier(str(Path(a["out"]) / "model.ckpt"))
        t0 = time.perf_counter()
        predict_files(model, paths, batch_size=64)
        return time.perf_counter() - t0
    raise ValueError(f"unknown stage {name}")


if __name__ == "__main__":
    import logging
    import warnings

    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    seconds = run_stage(sys.argv[1], json.loads(sys.argv[2]))
    print(json.dumps({"seconds": seconds}))
