"""The Lightning ``Trainer`` of a run and its callbacks, built from ``conf/trainer`` and
``conf/callbacks`` (Hydra ``_target_``), with the checks that turn a wrong value into one line."""

from __future__ import annotations

import logging
import random
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from collections.abc import Sequence

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint

from lungcls.models.device import resolve_precision
from lungcls.errors import LungclsError
from lungcls.settings import check_range, typed_keys
from lungcls.metrics import metric_direction, metric_key
from lungcls.runs.files import replacing, same_file

log = logging.getLogger(__name__)



class KeptModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` for the kept model: an epoch in which the monitored metric is undefined
    (lungcls does not log undefined numbers, e.g. the precision of a class never predicted) counts
    as the worst value instead of stopping the run, so such an epoch is never kept."""

    def _monitor_candidates(self, trainer: pl.Trainer) -> dict[str, torch.Tensor]:
        candidates = super()._monitor_candidates(trainer)
        if self.monitor and self.monitor not in candidates:
            candidates[self.monitor] = torch.tensor(float("inf") if self.mode == "min" else float("-inf"))
        return candidates

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resumed in another folder, Lightning forgets the best score and keeps a path into the old
        folder, so the first resumed epoch would become the best. The best checkpoint is copied into
        this run's folder with its score instead: the best epoch of the whole run stays the kept model."""
        super().load_state_dict(state_dict)
        old, score = state_dict.get("best_model_path"), state_dict.get("best_model_score")
        if self.best_model_score is not None or not old or score is None or not Path(old).is_file() or not self.dirpath:
            return  # resumed in place (Lightning restored all), or nothing kept yet
        new = Path(self.dirpath) / Path(old).name
        if new.exists() and not same_file(old, new):
            raise LungclsError(f"{new} exists; resume into a new run folder (or in the checkpoint's own folder)")
        if not same_file(old, new):
            new.parent.mkdir(parents=True, exist_ok=True)
            with replacing(new) as tmp:
                shutil.copyfile(old, tmp)
        self.best_model_path = self.kth_best_model_path = str(new)
        self.best_model_score = self.kth_value = score
        self.best_k_models = {str(new): score}


class RandomState(pl.Callback):
    """Keeps the random generators (Python, NumPy, torch on the CPU and GPUs, the training loader's
    shuffling) in every checkpoint and restores them when a resumed run starts training, so it
    draws the same shuffles, augmentations and dropout as an uninterrupted run would."""

    KEY = "lungcls_random_state"

    def __init__(self) -> None:
        self.pending: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        import numpy as np

        generator = getattr(trainer.train_dataloader, "generator", None)
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        checkpoint[self.KEY] = {  # tensors, numbers and tuples only: the checkpoint stays loadable with weights_only
            "python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
            "torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "loader": generator.get_state() if generator is not None else None}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        """The generators are restored when training starts (set-up draws numbers too); the training
        loader, built later (for the scheduler's step count, or by the fit loop), gets its shuffling
        state as the data module builds it."""
        self.pending = state = checkpoint.get(self.KEY)
        dm = trainer.datamodule
        if dm is None or state is None or state["loader"] is None:
            return
        build = dm.train_dataloader

        def restored_loader() -> Any:
            loader = build()
            del dm.train_dataloader  # the data module's own method again
            if getattr(loader, "generator", None) is not None:
                loader.generator.set_state(state["loader"])
            return loader

        dm.train_dataloader = restored_loader

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import numpy as np

        state, self.pending = self.pending, None
        if state is None:
            return
        random.setstate(state["python"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(state["torch"])
        if state["cuda"] and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])


def check_monitor(name: str, mode: str, class_names: Sequence[str], key: str = "callbacks.checkpoint") -> str:
    """The mode for monitoring ``name``: ``auto`` becomes what the metric's name says (min for
    missed disease and losses, max for accuracy, F1, recall...); a name lungcls never logs, or a
    mode that keeps the worst model, is a one-line error before training."""
    stages, per_class = ("train", "val"), ("precision", "recall", "f1", "specificity", "fn_to_normal", "auroc")
    known = {metric_key(s, m) for s in stages for m in ("acc", "macro_f1", "loss", "fn_to_normal_total")}
    known |= {metric_key(s, m, c) for s in stages for m in per_class for c in class_names}
    if name not in known:
        raise LungclsError(
            f"{key}.monitor={name} is not a metric a run logs; use e.g. val/macro_f1, val/fn_to_normal_total, "
            f"val/recall/{class_names[0]} or val/loss (classes: {', '.join(class_names)})"
        )
    direction = metric_direction(name)
    if mode == "auto":
        return direction or "max"
    if mode not in ("min", "max"):
        raise LungclsError(f"{key}.mode={mode} must be auto, min or max")
    if direction and mode != direction:
        raise LungclsError(f"{key}.mode={mode} would keep the model with the worst {name}; use {key}.mode={direction} (or auto)")
    return mode


def _callback_class(entry: Mapping[str, Any], name: str) -> type:
    try:
        return hydra.utils.get_class(entry["_target_"])
    except Exception:  # noqa: BLE001 - any import failure is the same user error
        raise LungclsError(f"callbacks.{name}._target_={entry['_target_']} is not an importable class") from None


def build_callbacks(callbacks_cfg: Mapping[str, Any] | DictConfig, has_val: bool, has_logger: bool,
                    class_names: Sequence[str] = ()) -> dict[str, pl.Callback]:
    """Every ``callbacks.<name>`` entry with a ``_target_``, except those with ``enabled: false``.

    Monitored metrics are checked against the metrics a run logs (given ``class_names``) and their
    ``mode: auto`` resolved. Without a val split there is nothing to monitor: the best checkpoint
    becomes the last epoch's model and early stopping is off. Without a logger the learning-rate
    monitor has nowhere to log.
    """
    cfg = OmegaConf.to_container(callbacks_cfg, resolve=True) if isinstance(callbacks_cfg, DictConfig) else dict(callbacks_cfg)
    out: dict[str, pl.Callback] = {}
    for name, entry in cfg.items():
        if not isinstance(entry, Mapping) or "_target_" not in entry or entry.pop("enabled", True) is False:
            continue  # an entry is built unless it says enabled: false
        cls = _callback_class(entry, name)
        if (issubclass(cls, EarlyStopping) and not has_val) or (issubclass(cls, LearningRateMonitor) and not has_logger):
            continue
        monitor = entry["monitor"] if "monitor" in entry else None
        if monitor:  # mode: auto (lungcls's) = the metric's own direction
            mode = str(entry["mode"]) if "mode" in entry else "auto"
            entry["mode"] = (check_monitor(monitor, mode, class_names, f"callbacks.{name}") if class_names
                             else metric_direction(monitor) or "max" if mode == "auto" else mode)
        if issubclass(cls, ModelCheckpoint) and not has_val and monitor:
            log.warning("the val split is empty: callbacks.%s keeps the last epoch's model (no %s to monitor)", name, monitor)
            entry["monitor"] = None
        try:
            out[name] = hydra.utils.instantiate(entry)
        except Exception as e:
            raise LungclsError(f"cannot build callback callbacks.{name} ({' '.join(str(e).split())[:200]}); check callbacks.{name}.*") from None
    return out


@dataclass
class TrainerSettings:
    """The ``trainer.*`` keys lungcls itself reads (every other key goes to Lightning's Trainer as is),
    typed so that a wrong value is one line before any image is decoded."""

    accelerator: str
    devices: Any
    strategy: str
    precision: str
    max_epochs: Optional[int]             # null: Lightning's default; -1 (no limit) only with trainer.max_steps
    min_epochs: Optional[int]
    log_every_n_steps: Optional[int]
    accumulate_grad_batches: int
    check_val_every_n_epoch: Optional[int]
    num_nodes: int
    process_timeout_s: float  # lungcls's, not Lightning's: how long a process waits for a lost one

    def __post_init__(self) -> None:
        check_range(self.num_nodes, "trainer.num_nodes", 1)
        check_range(self.process_timeout_s, "trainer.process_timeout_s", 0, low_open=True)
        if self.max_epochs == 0:
            raise LungclsError("trainer.max_epochs=0 trains nothing; use 1 or more (or train=false to only score)")
        for key in ("min_epochs", "log_every_n_steps", "accumulate_grad_batches", "check_val_every_n_epoch"):
            check_range(getattr(self, key), f"trainer.{key}", 0 if key == "min_epochs" else 1)


def trainer_settings(cfg: DictConfig) -> TrainerSettings:
    """The typed ``trainer.*``; no epoch limit (-1) only with a step limit (``trainer.max_steps``), since
    the learning-rate schedule needs the run's length; under a launcher, the launch's process count."""
    settings = typed_keys(cfg.trainer, TrainerSettings, "trainer")
    steps = cfg.trainer.max_steps if "max_steps" in cfg.trainer else None
    epochs = settings.max_epochs
    if epochs is not None and epochs < 0 and not (epochs == -1 and isinstance(steps, int) and steps > 0):
        raise LungclsError(f"trainer.max_epochs={epochs} gives the run no length (the learning-rate schedule needs one); "
                           "use 1 or more epochs")
    check_launch(settings)
    return settings


def check_launch(settings: TrainerSettings) -> None:
    """Under torchrun (or any launcher that sets ``WORLD_SIZE``) the launch must have started
    ``num_nodes * devices`` processes; otherwise every process stops here with one line, before the
    process group would wait for processes that never come."""
    import os

    launched = os.environ.get("WORLD_SIZE")
    if not launched or "ddp" not in settings.strategy or not str(settings.devices).isdigit():
        return
    expected = settings.num_nodes * int(settings.devices)
    if int(launched) != expected:
        raise LungclsError(
            f"trainer.num_nodes={settings.num_nodes} x trainer.devices={settings.devices} = {expected} processes, but the "
            f"launch started {launched} (WORLD_SIZE); set trainer.num_nodes to the launch's nodes (torchrun --nnodes, "
            "sbatch --nodes) and trainer.devices to its processes per node (--nproc_per_node, --ntasks-per-node)")


def _strategy(name: str, timeout_s: float) -> Any:
    """A registered DDP strategy (``ddp``, ``ddp_spawn``...) built with ``process_timeout_s`` as its
    process group's timeout: a process whose peer died stops after it instead of torch's 30 minutes."""
    from datetime import timedelta

    from pytorch_lightning.strategies import DDPStrategy, StrategyRegistry

    entry = StrategyRegistry.get(name) if name in StrategyRegistry else None
    if entry is None or not isinstance(entry, DDPStrategy):
        return name
    params = StrategyRegistry[name]["init_params"]
    return type(entry)(**params, timeout=timedelta(seconds=timeout_s))


def build_trainer(cfg: DictConfig, callbacks: list, loggers: list) -> pl.Trainer:
    """The configured Trainer; ``trainer.precision=auto`` becomes bf16-mixed on capable GPUs."""
    settings = trainer_settings(cfg)
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg["precision"] = resolve_precision(settings.precision, settings.accelerator)
    trainer_cfg["strategy"] = _strategy(settings.strategy, trainer_cfg.pop("process_timeout_s"))
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
    settings = trainer_settings(cfg)
    strategy, devices = settings.strategy, settings.devices
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
