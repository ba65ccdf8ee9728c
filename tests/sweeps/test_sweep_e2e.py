"""End to end: the sweep files run locally through `lungcls-sweep` with the real training app, and
`lungcls-compare` ranks what they leave. Shrunk to a few one-epoch runs on the tiny demo phantom."""

from __future__ import annotations

import csv
import json
import math
import pickle
from pathlib import Path

import pytest
import yaml

from conftest import REPO, run_cli

pytestmark = pytest.mark.slow  # long end-to-end runs (CI runs them when time allows)

# A test split with several images of every class (COVID and Viral Pneumonia included), so that
# missed-disease counts and accuracy can differ between runs and the ranking has something to order.
SMALL = [
    "dataset=demo",
    "trainer.accelerator=cpu",
    "dataset.demo.images_per_class=20",
    "dataset.demo.source_size=64",
    "dataset.image_size=64",
    "dataset.test_fraction=0.25",
    "dataset.batch_size=8",
    "logger=csv",
]
RUN_FILES = ("splits.csv", "checkpoints/best.ckpt", "checkpoints/last.ckpt", "metrics.json",
             "predictions.csv", "confusion_matrix.png", "csv/metrics.csv", ".hydra/config.yaml")
MISSED = ("COVID", "Viral Pneumonia")


def _fail_message(proc) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"


def _run_folders(multi: Path) -> list[Path]:
    return sorted((p for p in multi.iterdir() if p.is_dir()), key=lambda p: int(p.name))


def _overrides(run: Path) -> dict[str, str]:
    items = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
    return dict(o.split("=", 1) for o in items)


def _assert_standard_run_folder(run: Path) -> None:
    assert not (run / "error.txt").exists(), (run / "error.txt").read_text()
    for name in RUN_FILES:
        assert (run / name).is_file(), f"{run.name}/{name}"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sweep-data")


@pytest.fixture(scope="module")
def grid(tmp_path_factory, data_dir):
    """sweeps/backbones.yaml narrowed from the command line to 2 backbones x 2 fine-tunings."""
    tmp = tmp_path_factory.mktemp("grid")
    multi = tmp / "multi"
    sweep = run_cli("lungcls.sweeps", str(REPO / "sweeps" / "backbones.yaml"), *SMALL, "trainer.max_epochs=2",
                    "backbone=logistic,resnet18", "finetune=head,full",
                    f"hydra.sweep.dir={multi}", f"paths.data_dir={data_dir}", cwd=tmp)
    assert sweep.returncode == 0, _fail_message(sweep)
    compare = run_cli("lungcls.compare", str(multi), cwd=tmp)
    assert compare.returncode == 0, _fail_message(compare)
    return multi


def test_grid_sweep_runs_the_narrowed_grid_with_standard_run_folders(grid):
    """Command-line values replace the file's: `dataset=demo` over its covid_radiography, and the
    2 x 2 backbone/fine-tune grid over its 4 x 3 one."""
    runs = _run_folders(grid)
    assert [r.name for r in runs] == ["0", "1", "2", "3"]
    combos = set()
    for run in runs:
        _assert_standard_run_folder(run)
        config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
        assert config["dataset"]["name"] == "demo"
        combos.add((config["backbone"]["name"], config["finetune"]["name"]))
        metrics = json.loads((run / "metrics.json").read_text())
        assert {"train", "val", "test"} <= set(metrics)
    assert combos == {("logistic", "head"), ("logistic", "full"), ("resnet18", "head"), ("resnet18", "full")}


def test_compare_table_repeats_each_runs_metrics_and_ranks_by_missed_then_accuracy(grid):
    """The table users rank backbones with must carry each run's own numbers, in the study's order."""
    for name in ("comparison.md", "comparison.csv", "comparison.png"):
        assert (grid / name).is_file(), name
    with (grid / "comparison.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["run"] for r in rows) == ["0", "1", "2", "3"]

    for row in rows:
        run = grid / row["run"]
        metrics = json.loads((run / "metrics.json").read_text())
        test = metrics["test"]
        assert row["status"] == "ok"
        assert (row["backbone"], row["finetune"]) == (metrics["backbone"], metrics["finetune"])
        assert float(row["test/acc"]) == test["accuracy"]
        disease = [c for c in test["class_names"] if c != "Normal"]
        assert set(MISSED) <= set(disease) and all(test["per_class"][c]["support"] > 0 for c in MISSED)
        for cls in disease:
            assert int(row[f"test/fn_to_normal/{cls}"]) == test["fn_to_normal"][cls], cls
        assert int(row["test/fn_to_normal_total"]) == sum(test["fn_to_normal"][c] for c in disease)
        assert int(row["missed"]) == sum(test["fn_to_normal"][c] for c in MISSED)

    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4]
    order = [(int(r["missed"]), -float(r["test/acc"])) for r in rows]
    assert order == sorted(order), "fewest COVID + Viral Pneumonia missed first, then highest test accuracy"


def test_optuna_sweep_returns_each_runs_logged_metric(tmp_path, data_dir):
    """sweeps/lr_search.yaml through Optuna: the value each trial reports to the search is the
    run's logged val/macro_f1 (the file's metric), and the best trial is the one with the highest."""
    multi = tmp_path / "multi"
    sweep = run_cli("lungcls.sweeps", str(REPO / "sweeps" / "lr_search.yaml"), *SMALL, "trainer.max_epochs=1",
                    "backbone=logistic", "hydra.sweeper.n_trials=2",
                    # keeps each job's return value in its .hydra/ folder
                    "+hydra.callbacks.job_info._target_=hydra.experimental.callbacks.PickleJobInfoCallback",
                    f"hydra.sweep.dir={multi}", f"paths.data_dir={data_dir}", cwd=tmp_path)
    assert sweep.returncode == 0, _fail_message(sweep)
    runs = _run_folders(multi)
    assert [r.name for r in runs] == ["0", "1"]

    returned = {}
    for run in runs:
        _assert_standard_run_folder(run)
        config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
        assert (config["backbone"]["name"], config["finetune"]["name"]) == ("logistic", "paper")
        assert config["optimized_metric"] == "val/macro_f1"
        overrides = _overrides(run)
        assert overrides["optimizer"] in ("adam", "sgd", "adamw")
        assert 1e-5 <= float(overrides["optimizer.lr"]) <= 1e-2
        assert config["optimizer"]["lr"] == float(overrides["optimizer.lr"])
        assert 0.0 <= float(overrides["loss.label_smoothing"]) <= 0.2

        with (run / ".hydra" / "job_return.pickle").open("rb") as f:
            value = float(pickle.load(f).return_value)
        with (run / "csv" / "metrics.csv").open() as f:
            logged = [float(r["val/macro_f1"]) for r in csv.DictReader(f) if r.get("val/macro_f1")]
        assert len(logged) == 1 and not math.isnan(value)
        assert value == pytest.approx(logged[0], rel=1e-6)  # the CSV holds the float32 logged value
        # one epoch: the same model the run folder reports
        metrics = json.loads((run / "metrics.json").read_text())
        assert value == pytest.approx(metrics["val"]["macro_f1"], abs=1e-6)
        returned[run.name] = (value, overrides)

    results = yaml.safe_load((multi / "optimization_results.yaml").read_text())
    best_value, best_overrides = max(returned.values(), key=lambda item: item[0])
    assert results["best_value"] == pytest.approx(best_value, rel=1e-9)
    for key, value in results["best_params"].items():
        if isinstance(value, float):
            assert float(best_overrides[key]) == value, key
        else:
            assert best_overrides[key] == str(value), key
