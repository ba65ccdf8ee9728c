"""The data module and the model of a training run, built from the composed config.

Kept apart from the ``lungcls-train`` command so that the benchmark and the tests build exactly what
training builds, without importing a command module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lungcls.data.datamodule import LungDataModule
from lungcls.models.module import LungClassifier


def make_datamodule(cfg: DictConfig) -> LungDataModule:
    return LungDataModule(OmegaConf.to_container(cfg.dataset, resolve=True), OmegaConf.to_container(cfg.augment, resolve=True), seed=int(cfg.seed))


def make_model(cfg: DictConfig, dm: LungDataModule) -> LungClassifier:
    def plain(node) -> Any:
        return OmegaConf.to_container(node, resolve=True)

    return LungClassifier(
        backbone=plain(cfg.backbone), finetune=plain(cfg.finetune), class_names=dm.class_names,
        normal_class=dm.normal_class, optimizer=plain(cfg.optimizer), scheduler=plain(cfg.scheduler),
        loss=plain(cfg.loss), mean=dm.mean, std=dm.std, image_size=dm.image_size,
        class_counts=dm.class_counts("train"), compile=bool(cfg.compile),
        data=absolute_paths(plain(cfg.dataset)),  # lets lungcls-evaluate find the run's data from anywhere
    )


def absolute_paths(data: dict) -> dict:
    """The data config with its paths made absolute, so it stays valid from any working folder."""
    for key in ("root", "manifest", "splits_csv", "cache_dir"):
        if data.get(key):
            data[key] = str(Path(data[key]).expanduser().resolve())
    return data
