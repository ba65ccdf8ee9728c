"""``train(cfg)``: compose data, model, callbacks, loggers and trainer from a config, fit, then score
the best checkpoint on every split and leave a complete run folder."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_only

from lungcls.data.datamodule import LungDataModule
from lungcls.errors import LungclsError
from lungcls.evaluation import loss_and_auroc, predict_split, write_results
from lungcls.loggers import build_loggers, finish_wandb, log_results_to_wandb
from lungcls.metrics import flat_metrics
from lungcls.models.module import LungClassifier, load_classifier

log = logging.getLogger(__name__)


def resolve_precision(trainer_cfg: DictConfig) -> str:
    """``auto``: bf16 mixed precision on GPUs that support it, full precision elsewhere."""
    precision = str(trainer_cfg.get("precision", "auto"))
    if precision != "auto":
        return precision
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if on_gpu and torch.cuda.is_bf16_supported() else "32-true"


def build_trainer(cfg: DictConfig, callbacks: list, loggers: list) -> pl.Trainer:
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg["precision"] = resolve_precision(cfg.trainer)
    for key in ("max_epochs", "min_epochs", "log_every_n_steps", "accumulate_grad_batches", "check_val_every_n_epoch"):
        value = trainer_cfg.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise LungclsError(f"trainer.{key}={value} must be a whole number")
    try:
        return hydra.utils.instantiate(trainer_cfg, callbacks=callbacks, logger=loggers or False)
    except Exception as e:
        raise LungclsError(f"cannot build the Trainer ({' '.join(str(e).split())[:300]}); check trainer.* overrides") from None


def _checkpoint_callbacks(cfg: DictConfig, run_dir: Path, has_val: bool) -> tuple[ModelCheckpoint, ModelCheckpoint]:
    """``best.ckpt`` on the monitored metric, and ``last.ckpt`` after every epoch (for resuming).

    ``last`` is its own callback: ModelCheckpoint(save_last=True) only refreshes it when the best
    checkpoint changes, which would resume a run from a stale epoch.
    """
    ck = cfg.callbacks.checkpoint
    monitor = ck.monitor if has_val else None
    if not has_val:
        log.warning("the val split is empty: best.ckpt is the last epoch's model (no %s to monitor)", ck.monitor)
    folder = str(run_dir / "checkpoints")
    best = ModelCheckpoint(dirpath=folder, filename="best", monitor=monitor, mode=ck.mode, save_top_k=1,
                           auto_insert_metric_name=False, enable_version_counter=False)
    last = ModelCheckpoint(dirpath=folder, filename="last", monitor=None, save_top_k=1, enable_version_counter=False)
    return best, last


def make_model(cfg: DictConfig, dm: LungDataModule) -> LungClassifier:
    return LungClassifier(
        backbone=OmegaConf.to_container(cfg.backbone, resolve=True),
        finetune=OmegaConf.to_container(cfg.finetune, resolve=True),
        class_names=dm.class_names,
        normal_class=dm.normal_class,
        optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
        scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True),
        loss=OmegaConf.to_container(cfg.loss, resolve=True),
        mean=dm.mean,
        std=dm.std,
        image_size=dm.image_size,
        class_counts=dm.class_counts("train"),
        compile=bool(cfg.get("compile", False)),
        data=_absolute_paths(OmegaConf.to_container(cfg.dataset, resolve=True)),  # lets lungcls-evaluate find the run's data
    )


def _absolute_paths(data: dict) -> dict:
    """The data config with its paths made absolute, so it stays valid from any working folder."""
    for key in ("root", "manifest", "splits_csv", "cache_dir"):
        if data.get(key):
            data[key] = str(Path(data[key]).expanduser().resolve())
    return data


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and evaluate; returns the final metrics (logged keys such as ``val/macro_f1``, ``test/acc``)."""
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if rank_zero_only.rank != 0:
        _leave_run_folder_to_rank_zero(run_dir)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)

    _refuse_ddp_in_local_multirun(cfg)
    dm = LungDataModule(OmegaConf.to_container(cfg.dataset, resolve=True), OmegaConf.to_container(cfg.augment, resolve=True), seed=int(cfg.seed))
    dm.setup("fit")
    model = make_model(cfg, dm)

    has_val = len(dm.split_rows("val")) > 0
    checkpoint, last_checkpoint = _checkpoint_callbacks(cfg, run_dir, has_val)
    callbacks: list = [checkpoint, last_checkpoint]
    es = cfg.callbacks.get("early_stopping")
    if es and es.get("enabled") and has_val:
        callbacks.append(EarlyStopping(monitor=es.monitor, mode=es.mode, patience=int(es.patience)))
    resolved = OmegaConf.to_container(cfg, resolve=True)
    loggers = build_loggers(cfg.get("logger"), run_dir, run_name=run_dir.name, config=resolved)
    if cfg.callbacks.get("lr_monitor") and loggers:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    trainer = build_trainer(cfg, callbacks, loggers)
    if trainer.is_global_zero:
        dm.write_splits(run_dir / "splits.csv")
    for lg in loggers:
        lg.log_hyperparams({"trainable_params": model.trainable_params, "total_params": model.total_params})

    if cfg.get("train", True):
        ckpt_path = cfg.get("ckpt_path")
        if ckpt_path and not Path(ckpt_path).is_file():
            raise LungclsError(f"ckpt_path={ckpt_path} does not exist; give a run's checkpoints/last.ckpt to resume")
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)

    results: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if cfg.get("test", True) and trainer.is_global_zero:
        best = checkpoint.best_model_path or last_checkpoint.best_model_path
        if best:
            scored = load_classifier(best, map_location=model.device)
        else:  # train=false: score the model as built (e.g. from backbone.weights)
            scored = model
        scored.to(model.device)
        predictions = {split: predict_split(scored, dm, split) for split in ("train", "val", "test")}
        metrics = write_results(
            run_dir,
            predictions,
            dm.class_names,
            dm.normal_class,
            report_split="test",
            extra={
                "trainable_params": model.trainable_params,
                "total_params": model.total_params,
                "initial_weights": model.initial_weights,
                "best_checkpoint": str(Path(best).resolve()) if best else None,
                "backbone": cfg.backbone.name,
                "finetune": cfg.finetune.name,
            },
        )
        final = {**flat_metrics(metrics["test"], "test"), **loss_and_auroc(predictions["test"], "test")}
        for lg in loggers:
            lg.log_metrics(final, step=trainer.global_step)
        log_results_to_wandb(loggers, run_dir, metrics, dm.class_names, dm.normal_class, predictions["test"])
        # what a sweeper optimises is the kept (best) model's score, as metrics.json reports it,
        # never a last-epoch value
        results = {k: v for k, v in results.items() if not k.startswith(("val/", "test/"))}
        results.update(final)
        results.update({**flat_metrics(metrics["val"], "val"), **loss_and_auroc(predictions["val"], "val")})
        _print_summary(run_dir, metrics, dm)
    for lg in loggers:
        lg.finalize("success")
    finish_wandb(loggers)
    return results


def _refuse_ddp_in_local_multirun(cfg: DictConfig) -> None:
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


def _leave_run_folder_to_rank_zero(run_dir: Path) -> None:
    """DDP runs this app again for every other process, in the same run folder; only rank 0 writes
    there, so the other processes' log lines go to the console and not into rank 0's log file."""
    root = logging.getLogger()
    folder = run_dir.resolve()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and folder in Path(handler.baseFilename).resolve().parents:
            root.removeHandler(handler)
            handler.close()


def _print_summary(run_dir: Path, metrics: dict, dm: LungDataModule) -> None:
    test = metrics["test"]
    acc = test["accuracy"]
    missed = ", ".join(f"{c} {n}" for c, n in test["fn_to_normal"].items()) or "n/a"
    print(
        f"test accuracy {acc:.3f}" if acc is not None else "test split is empty",
        f"| macro F1 {test['macro_f1']:.3f}" if test["macro_f1"] is not None else "",
        f"| predicted {dm.normal_class}: {missed}",
    )
    print(f"run folder: {run_dir}")


def optimized_value(cfg: DictConfig, results: dict[str, Any]) -> float | None:
    """The value a Hydra sweeper optimises (``optimized_metric``), NaN when the run did not log it."""
    name = cfg.get("optimized_metric")
    if not name:
        return None
    value = results.get(name)
    if value is None:
        log.warning("optimized_metric %s was not logged; known: %s", name, ", ".join(sorted(results)))
        return float("nan")
    return float(value) if not math.isnan(float(value)) else float("nan")


