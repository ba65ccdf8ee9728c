"""``lungcls-train``: fine-tune a backbone on chest X-rays (Hydra app; see conf/train.yaml).

``train(cfg)`` composes the run from its config groups: the data module (``dataset``, ``augment``),
the model (``backbone``, ``finetune``, ``optimizer``, ``scheduler``, ``loss``), the callbacks, the
loggers and the Trainer; it fits, then scores the kept (best) checkpoint on every split and leaves
a complete run folder (``metrics.json``, ``predictions.csv``, ``confusion_matrix.png``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from lungcls.card.write import card_at_end
from lungcls.cli import hydra_main
from lungcls.settings import typed_keys
from lungcls.data.datamodule import LungDataModule
from lungcls.training.loggers import build_loggers, finish_wandb, log_results_to_wandb
from lungcls.metrics import flat_metrics, loss_and_auroc
from lungcls.inference.checkpoints import load_classifier
from lungcls.models.module import LungClassifier
from lungcls.inference.prediction import predict_split
from lungcls.runs.results import check_stats, print_summary, write_results
from lungcls.metrics.riskcontrol import held_out_miss_rates
from lungcls.training.resume import ResumePoint, check_resume, resume_point
from lungcls.training.setup import absolute_paths, make_datamodule, make_model
from lungcls.training.trainer import build_callbacks, build_trainer, trainer_settings, leave_run_folder_to_rank_zero, refuse_ddp_in_local_multirun

log = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    """The top-level keys of conf/train.yaml (the groups have their own settings)."""

    seed: int
    train: bool
    test: bool
    ckpt_path: Optional[str]
    compile: bool
    optimized_metric: Optional[str]


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and evaluate; returns the final metrics (logged keys such as ``val/macro_f1``, ``test/acc``)."""
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if rank_zero_only.rank != 0:
        leave_run_folder_to_rank_zero(run_dir)
    run = typed_keys(cfg, TrainSettings)
    pl.seed_everything(run.seed, workers=True, verbose=False)
    trainer_settings(cfg)  # trainer.* typed and checked before any image is decoded
    refuse_ddp_in_local_multirun(cfg)
    check_stats(OmegaConf.to_container(cfg.stats, resolve=True))  # before, not after, training
    resume: ResumePoint | None = None
    if run.ckpt_path:
        plain = OmegaConf.to_container(cfg, resolve=True)
        check_resume(run.ckpt_path, {"data": absolute_paths(plain["dataset"]), "backbone": plain["backbone"],
                                          "finetune": plain["finetune"], "optimizer": plain["optimizer"]})
        resume = resume_point(run.ckpt_path, run_dir)
    dm = make_datamodule(cfg)
    dm.setup("fit")
    model = make_model(cfg, dm)
    log.info("%s with finetune=%s: %d of %d parameters trainable", cfg.backbone.name, cfg.finetune.name, model.trainable_params, model.total_params)
    loggers = build_loggers(cfg.logger, run_dir, run_name=run_dir.name, config=OmegaConf.to_container(cfg, resolve=True),
                            resume=resume)
    callbacks = build_callbacks(cfg.callbacks, has_val=len(dm.split_rows("val")) > 0, has_logger=bool(loggers),
                                class_names=dm.class_names)
    trainer = build_trainer(cfg, list(callbacks.values()), loggers)
    if trainer.is_global_zero and not (resume and resume.in_place):  # resumed in place: the run's own, same split
        dm.write_splits(run_dir / "splits.csv")
    for lg in loggers:
        lg.log_hyperparams({"trainable_params": model.trainable_params, "total_params": model.total_params})
    if run.train:
        trainer.fit(model, datamodule=dm, ckpt_path=run.ckpt_path)
    results: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if run.test and trainer.is_global_zero:
        # a sweeper optimises the kept (best) model's score, as metrics.json reports it, never a
        # last-epoch value
        results = {k: v for k, v in results.items() if not k.startswith(("val/", "test/"))}
        results.update(score_kept_model(cfg, run_dir, dm, model, callbacks, loggers, trainer.global_step,
                                        world_size=trainer.world_size))
    if run.test and trainer.is_global_zero:  # card.auto: the model card, before W&B closes (it gets the page)
        card_at_end(cfg, run_dir, run=str(run_dir), loggers=loggers)
    for lg in loggers:
        lg.finalize("success")
    finish_wandb(loggers)
    return results


def _kept_checkpoint(callbacks: dict[str, pl.Callback]) -> str | None:
    for name in ("checkpoint", "last_checkpoint"):
        path = getattr(callbacks.get(name), "best_model_path", None)
        if path:
            return path
    return None


def score_kept_model(cfg: DictConfig, run_dir: Path, dm: LungDataModule, model: LungClassifier,
                     callbacks: dict[str, pl.Callback], loggers: list, step: int, world_size: int = 1) -> dict[str, float]:
    """Score the best checkpoint on train/val/test, write the result files, log the test metrics
    and return the val and test values a sweeper reads."""
    best = _kept_checkpoint(callbacks)
    scored = load_classifier(best, map_location=model.device) if best else model  # train=false: as built
    scored.to(model.device)
    predictions = {split: predict_split(scored, dm, split) for split in ("train", "val", "test")}
    extra = {
        "trainable_params": model.trainable_params,
        "total_params": model.total_params,
        "initial_weights": model.initial_weights,
        "best_checkpoint": str(Path(best).resolve()) if best else None,
        "backbone": cfg.backbone.name,
        "finetune": cfg.finetune.name,
        "duplicates": dm.duplicate_record,
        "world_size": world_size,  # training processes (all nodes); the global batch is dataset.batch_size times this
    }
    if dm.cfg.folds == "source" and dm.normal_class in dm.class_names:  # does the miss-rate cap hold at an unseen source?
        extra["miss_rate_at_held_out_source"] = held_out_miss_rates(predictions["val"], predictions["test"], dm.class_names, dm.normal_class)
    stats = OmegaConf.to_container(cfg.stats, resolve=True)
    metrics = write_results(run_dir, predictions, dm.class_names, dm.normal_class, report_split="test", extra=extra,
                            stats=stats, sources=dm.sources())
    values = {}
    for split in ("val", "test"):
        p = predictions[split]
        values.update({**flat_metrics(metrics[split], split), **loss_and_auroc(p.probs, p.labels, dm.class_names, split)})
    test_values = {k: v for k, v in values.items() if k.startswith("test/")}
    for lg in loggers:
        lg.log_metrics(test_values, step=step)
    log_results_to_wandb(loggers, run_dir, metrics, dm.class_names, dm.normal_class, predictions["test"])
    print_summary("test", metrics["test"], dm.normal_class)
    print(f"run folder: {run_dir}")
    return values


def optimized_value(cfg: DictConfig, results: dict[str, Any]) -> float | None:
    """The value a Hydra sweeper optimises (``optimized_metric``), NaN when the run did not log it."""
    name = typed_keys(cfg, TrainSettings).optimized_metric
    if not name:
        return None
    value = results.get(name)
    if value is None:
        log.warning("optimized_metric %s was not logged; known: %s", name, ", ".join(sorted(results)))
        return float("nan")
    return float(value) if not math.isnan(float(value)) else float("nan")


@hydra_main("train")
def main(cfg: DictConfig) -> float | None:
    return optimized_value(cfg, train(cfg))


if __name__ == "__main__":
    # run by its module name, not as __main__: a Submitit launcher pickles the task by reference
    # (a function of __main__ would be pickled by value, without this module's imports)
    from lungcls.train import main as train_main

    train_main()
