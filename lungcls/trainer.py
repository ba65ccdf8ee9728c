"""The Lightning ``Trainer`` of a run and its callbacks, built from ``conf/trainer`` and
``conf/callbacks`` (Hydra ``_target_``), with the checks that turn a wrong value into one line."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from lungcls.device import resolve_precision
from lungcls.errors import LungclsError

log = logging.getLogger(__name__)

WHOLE_NUMBER_KEYS = ("max_epochs", "min_epochs", "log_every_n_steps", "accumulate_grad_batches", "check_val_every_n_epoch")


def build_callbacks(callbacks_cfg: Mapping[str, Any] | DictConfig, has_val: bool, has_logger: bool) -> dict[str, pl.Callback]:
    """Every ``callbacks.<name>`` entry with a ``_target_``, except those with ``enabled: false``.

    Without a val split there is nothing to monitor: the best checkpoint becomes the last epoch's
    model and early stopping is off. Without a logger the learning-rate monitor has nowhere to log.
    """
    cfg = OmegaConf.to_container(callbacks_cfg, resolve=True) if isinstance(callbacks_cfg, DictConfig) else dict(callbacks_cfg)
    out: dict[str, pl.Callback] = {}
    for name, entry in cfg.items():
        if not isinstance(entry, Mapping) or "_target_" not in entry or not entry.get("enabled", True):
            continue
        entry = {k: v for k, v in entry.items() if k != "enabled"}
        if "EarlyStopping" in entry["_target_"] and not has_val:
            continue
        if "LearningRateMonitor" in entry["_target_"] and not has_logger:
            continue
        if "ModelCheckpoint" in entry["_target_"] and not has_val and entry.get("monitor"):
            log.warning("the val split is empty: %s is the last epoch's model (no %s to monitor)", entry.get("filename"), entry["monitor"])
            entry["monitor"] = None
        try:
            out[name] = hydra.utils.instantiate(entry)
        except Exception as e:
            raise LungclsError(f"cannot build callback callbacks.{name} ({' '.join(str(e).split())[:200]}); check callbacks.{name}.*") from None
    return out


def build_trainer(cfg: DictConfig, callbacks: list, loggers: list) -> pl.Trainer:
    """The configured Trainer; ``trainer.precision=auto`` becomes bf16-mixed on capable GPUs."""
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg["precision"] = resolve_precision(trainer_cfg)
    for key in WHOLE_NUMBER_KEYS:
        value = trainer_cfg.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise LungclsError(f"trainer.{key}={value} must be a whole number")
    if isinstance(trainer_cfg.get("max_epochs"), int) and 0 <= trainer_cfg["max_epochs"] < 1:
        raise LungclsError(f"trainer.max_epochs={trainer_cfg['max_epochs']} trains nothing; use 1 or more (or train=false to only score)")
    try:
        return hydra.utils.instantiate(trainer_cfg, callbacks=callbacks, logger=loggers or False)
    except Exception as e:
        raise LungclsError(f"cannot build the Trainer ({' '.join(str(e).split())[:300]}); check trainer.* overrides") from None


def refuse_ddp_in_local_multirun(cfg: DictConfig) -> None:
    """Lightning starts the other DDP processes by re-running the command line, which inside a local
    Hydra multirun would re-run the whole sweep in each of them."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    strategy = str(cfg.trainer.get("strategy", "auto"))
    devices = cfg.trainer.get("devices", 1)
    launcher = str(HydraConfig.get().launcher.get("_target_", ""))
    if "ddp" in strategy and devices not in (1, "1") and "BasicLauncher" in launcher:
        raise LungclsError(
            "trainer=ddp inside a local multirun (-m / lungcls-sweep) would re-run the sweep in every process; "
            "run DDP jobs one at a time, or sweep with hydra/launcher=slurm"
        )


def leave_run_folder_to_rank_zero(run_dir) -> None:
    """DDP runs the app again for every other process, in the same run folder; only rank 0 writes
    there, so the other processes' log lines go to the console and not into rank 0's log file."""
    from pathlib import Path

    root = logging.getLogger()
    folder = Path(run_dir).resolve()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and folder in Path(handler.baseFilename).resolve().parents:
            root.removeHandler(handler)
            handler.close()
