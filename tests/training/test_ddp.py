"""Multi-process training: `trainer=ddp_cpu` (2 CPU processes over gloo) runs the same pipeline as a
single process. Lightning re-executes the app for rank 1; the run must still leave one complete run
folder written by rank 0 alone, score every validation image exactly once, and exit with status 0.
The images are decoded once per machine: rank 1 maps rank 0's memory-mapped copy read-only."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from lungcls.data.datamodule import LungDataModule
from lungcls.inference.prediction import predict_split
from lungcls.metrics import flat_metrics
from lungcls.inference.checkpoints import load_classifier

from conftest import run_cli

pytestmark = pytest.mark.slow  # long end-to-end runs (CI runs them when time allows)

ARGS = [
    "logger=csv",
    "dataset.demo.images_per_class=12",
    "dataset.demo.source_size=64",
    "dataset.image_size=64",
    "dataset.batch_size=4",
    "trainer.max_epochs=1",
    "backbone=resnet18",
    "dataset.normalization=dataset",  # rank 1 must use rank 0's statistics without decoding the set itself
]


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def _logged_rows(run: Path) -> list[dict]:
    with (run / "csv" / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def _fail_message(proc) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A DDP run in the default Hydra run folder (so a second folder from rank 1 would show), on a
    data folder that does not exist yet (rank 0 generates the demo), then a single-process run."""
    tmp = tmp_path_factory.mktemp("ddp")
    data = tmp / "data"
    ddp = run_cli("lungcls.train", "trainer=ddp_cpu", *ARGS, f"paths.root_dir={tmp}",
                  f"paths.data_dir={data}", cwd=tmp, timeout=240)
    after_ddp = sorted(p.relative_to(tmp).as_posix() for p in tmp.glob("*"))
    ddp_runs = sorted(p for p in (tmp / "outputs" / "runs").glob("*/*") if p.is_dir())
    single = run_cli("lungcls.train", *ARGS, f"hydra.run.dir={tmp / 'single'}", f"paths.data_dir={data}",
                     cwd=tmp, timeout=240)
    return {"ddp": ddp, "single": single, "after_ddp": after_ddp, "ddp_runs": ddp_runs,
            "single_dir": tmp / "single", "data": data}


@pytest.fixture(scope="module")
def ddp_run(runs) -> Path:
    assert runs["ddp"].returncode == 0, _fail_message(runs["ddp"])
    assert len(runs["ddp_runs"]) == 1, f"expected one run folder, got {runs['ddp_runs']}"
    return runs["ddp_runs"][0]


def test_ddp_run_exits_cleanly_and_leaves_one_standard_run_folder(runs, ddp_run):
    """Users expect a DDP run to end like any other: status 0, one run folder with every file."""
    assert runs["single"].returncode == 0, _fail_message(runs["single"])
    assert runs["after_ddp"] == ["data", "outputs"], "nothing else may appear beside the run"
    for name in ("splits.csv", "checkpoints/best.ckpt", "checkpoints/last.ckpt", "metrics.json",
                 "predictions.csv", "confusion_matrix.png", "csv/metrics.csv", ".hydra/config.yaml"):
        assert (ddp_run / name).is_file(), name
    assert _files(ddp_run) == _files(runs["single_dir"])
    # the demo was generated once, in place, with no leftover temporary copy
    assert [p.name for p in runs["data"].iterdir() if p.is_dir()] == ["demo-12x64-seed0-shortcut0"]


def test_only_rank_zero_writes_and_scores(runs, ddp_run):
    """Rank 1 re-runs the app in the same folder: its config, log lines and scoring must not land there."""
    hydra_cfg = yaml.safe_load((ddp_run / ".hydra" / "hydra.yaml").read_text())["hydra"]
    assert hydra_cfg["job"]["name"] == "train" and hydra_cfg["output_subdir"] == ".hydra"
    overrides = yaml.safe_load((ddp_run / ".hydra" / "overrides.yaml").read_text())
    assert "trainer=ddp_cpu" in overrides and not any(o.startswith("hydra.") for o in overrides)
    log = (ddp_run / "train.log").read_text()
    assert log.count("images per split and class") == 1
    assert runs["ddp"].stdout.count("test accuracy") == 1  # the final scoring ran once
    # same data split as a single-process run, written once
    assert (ddp_run / "splits.csv").read_text() == (runs["single_dir"] / "splits.csv").read_text()
    metrics = json.loads((ddp_run / "metrics.json").read_text())
    assert {"train", "val", "test", "trainable_params", "total_params"} <= set(metrics)
    with (ddp_run / "predictions.csv").open() as f:
        predictions = list(csv.DictReader(f))
    with (ddp_run / "splits.csv").open() as f:
        test_paths = {r["path"] for r in csv.DictReader(f) if r["split"] == "test"}
    assert sorted(r["path"] for r in predictions) == sorted(test_paths)
    assert sum(pc["support"] for pc in metrics["test"]["per_class"].values()) == len(test_paths)
    rows = _logged_rows(ddp_run)
    assert sum(1 for r in rows if r.get("val/acc")) == 1  # one validation epoch, logged once
    assert sum(1 for r in rows if r.get("test/acc")) == 1


def test_ddp_validation_counts_every_val_image_once(ddp_run):
    """The logged val metrics are synced across processes: they must describe the whole val split,
    not one process's half and not a split padded with repeated images."""
    metrics = json.loads((ddp_run / "metrics.json").read_text())
    val_rows = [r for r in _logged_rows(ddp_run) if r.get("val/acc")]
    logged = {k: float(v) for k, v in val_rows[-1].items() if k.startswith("val/") and v != ""}
    # one epoch: the logged epoch's model is best.ckpt, which metrics.json scored on the full val split
    expected = flat_metrics(metrics["val"], "val")
    assert set(expected) <= set(logged)
    for key, value in expected.items():
        assert logged[key] == pytest.approx(value, abs=1e-6), key

    # the logged loss is the mean over every val image: recompute it from the checkpoint
    model = load_classifier(str(ddp_run / "checkpoints" / "best.ckpt"))
    data = dict(model.hparams.data, splits_csv=str(ddp_run / "splits.csv"))
    dm = LungDataModule(data, augment=None)
    dm.setup()
    pred = predict_split(model, dm, "val")
    assert len(pred.labels) == sum(pc["support"] for pc in metrics["val"]["per_class"].values())
    assert len(pred.labels) % 2 == 1  # an odd split: padding to equal shares would repeat an image
    loss = float(np.mean(-np.log(pred.probs[np.arange(len(pred.labels)), pred.labels])))
    assert not math.isnan(logged["val/loss"])
    assert logged["val/loss"] == pytest.approx(loss, abs=1e-4)


def test_ddp_inside_a_local_multirun_is_refused_per_job(tmp_path):
    """Each job of the sweep fails with one clear reason (error.txt) instead of re-running the sweep."""
    out = run_cli("lungcls.train", "-m", "trainer=ddp_cpu", "seed=1,2", *ARGS, f"hydra.sweep.dir={tmp_path}/multi",
                  f"paths.data_dir={tmp_path}/data", timeout=180)
    # the sweep goes on past each failed job, then exits 1 naming the first failure
    assert out.returncode == 1 and "2 job(s) of the multirun failed" in out.stderr, out.stderr
    errors = sorted((tmp_path / "multi").glob("*/error.txt"))
    assert len(errors) == 2
    assert all("trainer=ddp inside a local multirun" in e.read_text() for e in errors)
    assert not (tmp_path / "data").exists()  # refused before any work


def test_ddp_decodes_once_per_machine_and_the_processes_share_one_copy(runs, ddp_run):
    """With cache=auto, rank 0 decodes; rank 1 decodes nothing and reads its batches from rank 0's
    file, so the machine holds one copy (in the page cache): neither process keeps the file's pages
    resident, where private copies would each hold the whole set. The temporary file is gone after."""
    out = runs["ddp"].stdout + runs["ddp"].stderr
    assert len(re.findall(r"\bdecoded \d+ images", out)) == 1, out[-3000:]
    copied = re.findall(r"copied \d+ images \([\d.]+ MB\) into (\S+), memory-mapped", out)
    assert len(copied) == 1
    assert "process 1 of this machine mapped" in out
    memory = re.findall(r"process (\d) of this machine: decoded cache ([\d.]+) MB mapped, (\d+) images read from it, "
                        r"resident ([\d.]+) MB, proportional share \(pss\) ([\d.]+) MB", out)
    assert sorted(m[0] for m in memory) == ["0", "1"], out[-3000:]
    size = float(memory[0][1])
    assert size > 0 and all(int(m[2]) > 0 for m in memory)  # both processes read their batches from the one file
    assert all(float(m[3]) < 0.25 * size for m in memory)  # ... without holding its pages (a copy would be all of it)
    assert not Path(copied[0].rstrip(",")).exists()
