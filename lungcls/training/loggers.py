"""Experiment loggers: W&B (offline by default), TensorBoard, and the CSV file every run writes.

W&B is optional at run time: with ``WANDB_MODE=disabled`` or without the package, a run warns once
and keeps its CSV metrics, so it is always readable without any service.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import hydra
from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from lungcls.runs.files import replacing

log = logging.getLogger(__name__)


def wandb_usable() -> tuple[bool, str]:
    if os.environ.get("WANDB_MODE", "").lower() == "disabled" or os.environ.get("WANDB_DISABLED", "").lower() in ("1", "true"):
        return False, "WANDB_MODE=disabled"
    if importlib.util.find_spec("wandb") is None:
        return False, "the wandb package is not installed (pip install wandb)"
    return True, ""


# W&B's own folders (docs: "Environment variables"): staging of artifacts and media (WANDB_DATA_DIR,
# default ~/.local/share/wandb), its cache and debug logs (WANDB_CACHE_DIR, ~/.cache/wandb). Kept in
# the run folder unless the user set them. WANDB_CONFIG_DIR (~/.config/wandb) is only read by a run:
# it holds the user's own settings (a self-hosted server's address), so it stays where it is.
WANDB_FOLDERS = {"WANDB_DATA_DIR": "data", "WANDB_CACHE_DIR": "cache"}
_USER_SET = {key for key in WANDB_FOLDERS if os.environ.get(key)}


def keep_wandb_in(run_dir: Path) -> None:
    """Point W&B's staging, cache and debug-log folders into ``<run_dir>/wandb/`` (those the user
    did not set), so a run writes nothing under the home folder."""
    for key, name in WANDB_FOLDERS.items():
        if key not in _USER_SET:
            folder = Path(run_dir).resolve() / "wandb" / f".{name}"
            folder.mkdir(parents=True, exist_ok=True)
            os.environ[key] = str(folder)


class ContinuedWriter(ExperimentWriter):
    """Lightning's CSV writer, except that it starts from the rows of an earlier ``metrics.csv`` that
    ``keep`` accepts (a resumed run's rows up to its checkpoint) where Lightning's deletes the file."""

    def __init__(self, log_dir: str, previous: Optional[Path], keep: Callable[[dict], bool]) -> None:
        self.previous, self.keep = previous, keep
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # Lightning's writer deletes an existing metrics.csv here
        if self.previous is None or not self.previous.is_file():
            return
        with self.previous.open(newline="") as f:
            reader = csv.DictReader(f)
            rows = [row for row in reader if self.keep(row)]
            header = list(reader.fieldnames or [])
        os.makedirs(self.log_dir, exist_ok=True)
        with replacing(self.metrics_file_path) as tmp, tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
        self.metrics_keys = sorted(header)


class RunCSVLogger(CSVLogger):
    """The ``CSVLogger`` of every run: each logged row is in the file at once (a run killed hard
    loses none), and a resumed run continues the file of its checkpoint's run (``previous``, the rows
    ``keep`` accepts), so ``metrics.csv`` holds every epoch of the whole run once."""

    def __init__(self, *args: Any, previous: Optional[Path] = None, keep: Callable[[dict], bool] = lambda row: True,
                 **kwargs: Any) -> None:
        super().__init__(*args, flush_logs_every_n_steps=1, **kwargs)
        self.previous, self.keep = previous, keep

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ContinuedWriter(self.log_dir, self.previous, self.keep)
        return self._experiment


def build_loggers(logger_cfg: Mapping[str, Any] | None, run_dir: Path, run_name: str, config: dict | None = None,
                  resume: Any = None) -> list[Logger]:
    """The configured loggers plus a CSVLogger writing ``<run_dir>/csv/metrics.csv``; resuming
    (``resume``: a ``ResumePoint``), the file continues the metrics of the checkpoint's run."""
    loggers: list[Logger] = []
    for cfg in (logger_cfg or {}).values():
        if not isinstance(cfg, Mapping) or "_target_" not in cfg:
            continue
        if issubclass(hydra.utils.get_class(cfg["_target_"]), WandbLogger):
            ok, why = wandb_usable()
            if not ok:
                log.warning("W&B logging is off (%s); metrics are still written to %s/csv/metrics.csv", why, run_dir)
                continue
            keep_wandb_in(run_dir)
            cfg = dict(cfg)
            cfg["name"] = cfg.get("name") or run_name
            if os.environ.get("WANDB_MODE", "").lower() == "online" or os.environ.get("WANDB_SWEEP_ID"):
                cfg["offline"] = False
        lg = hydra.utils.instantiate(cfg)
        if isinstance(lg, WandbLogger) and config is not None:
            lg.log_hyperparams(config)
        loggers.append(lg)
    continued = {"previous": resume.metrics_csv, "keep": resume.keeps} if resume is not None else {}
    loggers.append(RunCSVLogger(save_dir=str(run_dir), name="csv", version="", **continued))
    return loggers


def wandb_loggers(loggers: Sequence[Logger]) -> list[WandbLogger]:
    return [lg for lg in loggers if isinstance(lg, WandbLogger)]


def log_results_to_wandb(loggers: Sequence[Logger], run_dir: Path, metrics: dict, class_names: Sequence[str], normal_class: str | None, test_predictions=None) -> None:
    """Confusion matrix image, a per-class table and the missed-disease table of the test split."""
    for lg in wandb_loggers(loggers):
        import wandb

        run = lg.experiment
        payload: dict[str, Any] = {}
        png = run_dir / "confusion_matrix.png"
        if png.is_file():
            payload["test/confusion_matrix"] = wandb.Image(str(png))
        test = metrics.get("test")
        if test:
            rows = []
            for c in class_names:
                pc = test["per_class"][c]
                rows.append([c, pc["support"], pc["precision"], pc["recall"], pc["f1"], pc["specificity"], test["fn_to_normal"].get(c)])
            payload["test/per_class"] = wandb.Table(
                columns=["class", "support", "precision", "recall", "f1", "specificity", "fn_to_normal"], data=rows
            )
        if test_predictions is not None and normal_class in class_names:
            normal = class_names.index(normal_class)
            miss_rows = []
            for p, y, yhat, pr in zip(test_predictions.paths, test_predictions.labels, test_predictions.preds, test_predictions.probs):
                if y != normal and yhat == normal:
                    miss_rows.append([wandb.Image(p), class_names[y], class_names[yhat]] + [float(v) for v in pr])
            payload["test/missed_as_normal"] = wandb.Table(
                columns=["image", "label", "pred"] + [f"prob_{c}" for c in class_names], data=miss_rows
            )
        if payload:
            run.log(payload)


def finish_wandb(loggers: Sequence[Logger]) -> None:
    """Close W&B runs and say how to upload an offline one."""
    for lg in wandb_loggers(loggers):
        import wandb

        run = lg.experiment
        offline = getattr(run.settings, "mode", "") == "offline" or getattr(run, "offline", False)
        run_dir = Path(run.dir).parent if getattr(run, "dir", None) else None
        wandb.finish()
        if offline and run_dir is not None:
            print(f"W&B run saved offline; upload it later with: wandb sync {run_dir}")


def _wandb_project(run_dir: Path) -> str:
    """The W&B project a training run used (from its .hydra/config.yaml), default lungcls."""
    from omegaconf import OmegaConf

    config = run_dir / ".hydra" / "config.yaml"
    if config.is_file():
        try:
            project = OmegaConf.select(OmegaConf.load(config), "logger.wandb.project")
        except Exception:  # an unreadable config only costs the project name
            project = None
        if project:
            return str(project)
    return "lungcls"


def log_report_to_wandb(run_dir: str | Path, figures: Sequence[tuple[str, Any]], rows: Sequence[Mapping[str, Any]],
                        columns: Sequence[str],
                        tables: Mapping[str, tuple[Sequence[str], Sequence[Mapping[str, Any]]]] | None = None,
                        ) -> tuple[Path, bool] | None:
    """Log a report's figures (``(key, section)`` pairs with ``.image`` and ``.title``) and its
    per-image table to a training run folder's W&B run, offline, and print how to upload it.
    ``tables``: more tables, ``name -> (columns, rows)``, logged as ``gradcam/<name>``.

    Resumes the folder's latest offline run (same id) or starts a new offline run in it. Returns
    the offline run folder and whether it resumed an earlier run, or None when W&B is off.
    """
    from lungcls.errors import LungclsError

    folder = Path(str(run_dir)).expanduser().resolve()
    if not folder.is_dir():
        raise LungclsError(f"report.log_to={run_dir} is not a folder; give a training run folder")
    ok, why = wandb_usable()
    if not ok:
        log.warning("not logging the report to W&B (%s)", why)
        return None
    import wandb

    keep_wandb_in(folder)
    previous = sorted((folder / "wandb").glob("offline-run-*"), key=lambda p: p.name)
    kwargs: dict[str, Any] = {"dir": str(folder), "mode": "offline", "project": _wandb_project(folder)}
    if previous:
        kwargs.update(id=previous[-1].name.rsplit("-", 1)[-1], resume="allow")
    else:
        kwargs.update(name=f"{folder.name}-report", job_type="report")
    run = wandb.init(**kwargs)
    try:
        payload: dict[str, Any] = {f"gradcam/{key}": wandb.Image(str(sec.image), caption=sec.title) for key, sec in figures}
        payload["gradcam/table"] = wandb.Table(columns=list(columns), data=[[row.get(c) for c in columns] for row in rows])
        for name, (cols, items) in (tables or {}).items():
            payload[f"gradcam/{name}"] = wandb.Table(columns=list(cols), data=[[row.get(c) for c in cols] for row in items])
        run.log(payload)
        offline_dir = Path(run.dir).parent
    finally:
        wandb.finish()
    if previous:  # `wandb sync` uploads the parts of one run in order of their start time
        print(f"W&B: appended to the run's offline W&B run ({offline_dir.name}); upload all its "
              f"parts with: wandb sync {offline_dir.parent}/offline-run-*")
    else:
        print(f"W&B: new offline run; upload it with: wandb sync {offline_dir}")
    return offline_dir, bool(previous)
