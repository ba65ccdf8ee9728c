"""Reliability as a user meets it: every run its own folder, one-line errors for wrong input with
nothing written that looks like a result, run states the comparison reads, and checkpoints that can
only name data to read, never places to write."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from lungcls.data.pixels.images import read_gray
from lungcls.errors import LungclsError
from lungcls.inference.checkpoints import load_classifier

from lungcls.runs.folders import collect_runs, safe_name
from lungcls.runs.state import read_state
from lungcls.train import train

from conftest import REPO, TINY, make_class_tree, run_cli


def test_claims_of_one_name_by_many_processes_get_distinct_folders(tmp_path):
    target = str(tmp_path / "runs" / "12-00-00_resnet18-full")
    code = f"from lungcls.runs.folders import claim_dir; print(claim_dir({target!r}))"
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True) for _ in range(8)]
    claimed = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert len(set(claimed)) == 8 and all(Path(p).is_dir() for p in claimed)
    assert sorted(Path(p).name for p in claimed)[:2] == ["12-00-00_resnet18-full", "12-00-00_resnet18-full-2"]


def test_run_names_are_one_folder():
    assert safe_name("a/b") == "a-b" and "/" not in safe_name("../../etc") and safe_name("") == "run"


@pytest.mark.slow
def test_two_runs_started_together_keep_separate_folders(tmp_path):
    """The same run folder name for two trainings launched at once: each claims its own folder and
    leaves a complete, consistent run there."""
    base = tmp_path / "runs" / "same"
    args = [*TINY, "backbone=logistic", f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir=${{claim_dir:{base}}}"]
    env = dict(os.environ, WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    procs = [subprocess.Popen([sys.executable, "-m", "lungcls.train", *args], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-1500:] for o in outs]
    folders = sorted(p for p in (tmp_path / "runs").iterdir())
    assert [f.name for f in folders] == ["same", "same-2"]
    for folder in folders:
        assert read_state(folder)["state"] == "complete"
        metrics = json.loads((folder / "metrics.json").read_text())
        assert Path(metrics["best_checkpoint"]).parent.parent == folder.resolve()
        assert (folder / "splits.csv").is_file() and (folder / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["dataset.batch_size=0"], "dataset.batch_size=0 must be at least 1"),
        (["dataset.image_size=abc"], "dataset.image_size=abc must be a whole number"),
        (["dataset.val_fraction=abc"], "dataset.val_fraction=abc must be a number"),
        (["dataset.val_fraction=1.5"], "dataset.val_fraction=1.5 must be in [0, 1)"),
        (["dataset.val_fraction=0.6", "dataset.test_fraction=0.5"], "leave no images to train on"),
        (["dataset.classes=[]"], "dataset.classes is empty"),
        (["trainer.max_epochs=0"], "trainer.max_epochs=0 trains nothing"),
        (["dataset.cache=disk"], "dataset.cache=disk is not one of"),
        (["stats.level=1.5"], "stats.level=1.5 must be in (0, 1)"),
        (["stats.calibration_bins=0"], "stats.calibration_bins=0 must be at least 1"),
        (["stats.resamples=-5"], "stats.resamples=-5 must be at least 0"),
        (["dataset.folds=3", "dataset.splits_csv=x.csv"], "dataset.folds and dataset.splits_csv both choose the test images"),
    ],
)
def test_wrong_values_are_one_line_errors_before_anything_is_written(train_cfg, tmp_path, overrides, message):
    with pytest.raises(LungclsError) as e:
        train(train_cfg(*overrides))
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "checkpoints").exists()


def test_cli_user_error_marks_the_run_failed_and_leaves_no_result(tmp_path):
    out = run_cli("lungcls.train", "dataset.batch_size=0", f"hydra.run.dir={tmp_path}/run", "logger=csv", timeout=120)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("lungcls: error: dataset.batch_size=0") and "Traceback" not in out.stderr
    assert read_state(tmp_path / "run")["state"] == "failed"
    assert not (tmp_path / "run" / "metrics.json").exists()
    runs = collect_runs([tmp_path])
    assert runs[0]["status"].startswith("failed: dataset.batch_size=0")


def test_oversized_image_is_refused_unread_with_the_config_key(tmp_path):
    huge = tmp_path / "huge.png"
    Image.new("L", (12000, 9000)).save(huge, optimize=False)
    with pytest.raises(LungclsError, match=r"108,000,000 pixels, more than dataset.max_image_pixels"):
        read_gray(huge)
    assert read_gray(huge, max_pixels=200_000_000).shape == (9000, 12000)


def test_corrupt_image_is_found_before_training_without_a_cache(train_cfg, tmp_path, class_tree):
    victim = sorted((class_tree / "Normal" / "images").iterdir())[-1]
    victim.write_bytes(victim.read_bytes()[:60])  # truncated
    cfg = train_cfg("dataset=folder", f"dataset.root={class_tree}", "dataset.classes=[COVID,Normal,Viral Pneumonia]",
                    "dataset.cache=none", "backbone=logistic")
    with pytest.raises(LungclsError, match=f"cannot read image {victim}") as e:
        train(cfg)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "checkpoints").exists()


def test_manifest_label_with_a_case_typo_is_refused(train_cfg, tmp_path):
    root = make_class_tree(tmp_path / "m", {"COVID": 4, "Normal": 4})
    lines = ["path,label"] + [f"{c}/images/{c}-{i}.png,{c if i else c.lower()}" for c in ("COVID", "Normal") for i in range(4)]
    (root / "list.csv").write_text("\n".join(lines) + "\n")
    cfg = train_cfg("dataset=manifest", f"dataset.manifest={root / 'list.csv'}", "dataset.classes=[COVID,Normal]")
    with pytest.raises(LungclsError, match="label 'covid' \\(1 rows\\) is not in dataset.classes but looks like 'COVID'"):
        train(cfg)


def test_resume_refuses_other_split_settings(train_cfg, tmp_path):
    first = tmp_path / "first"
    train(train_cfg("backbone=logistic", out=first))
    last = first / "checkpoints" / "last.ckpt"
    with pytest.raises(LungclsError, match="trained with dataset.split_seed=1, not 2"):
        train(train_cfg("backbone=logistic", "dataset.split_seed=2", f"ckpt_path={last}", out=tmp_path / "second"))
    with pytest.raises(LungclsError, match="trained with dataset.duplicates=near, not none"):
        train(train_cfg("backbone=logistic", "dataset.duplicates=none", f"ckpt_path={last}", out=tmp_path / "second"))
    with pytest.raises(LungclsError, match="trained with backbone.name=logistic, not resnet18"):
        train(train_cfg("backbone=resnet18", f"ckpt_path={last}", out=tmp_path / "second"))
    assert not (tmp_path / "second" / "checkpoints").exists()


def test_files_that_are_not_lungcls_checkpoints_are_one_line_errors(tmp_path):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(b"PK\x03\x04" + os.urandom(200))
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    crafted = tmp_path / "crafted.ckpt"
    with crafted.open("wb") as f:
        pickle.dump({"state_dict": Payload()}, f)
    for path in (truncated, crafted):
        with pytest.raises(LungclsError, match="is not a readable lungcls checkpoint") as e:
            load_classifier(str(path))
        assert "\n" not in str(e.value)
    assert not marker.exists()  # nothing in the crafted file was executed


@pytest.mark.slow
def test_checkpoint_paths_are_read_only_for_evaluation(train_cfg, tmp_path):
    run = tmp_path / "run"
    cache = tmp_path / "cache-named-at-training"
    train(train_cfg("backbone=logistic", f"dataset.cache_dir={cache}", out=run))
    assert cache.is_dir()
    import shutil

    shutil.rmtree(cache)
    ev = tmp_path / "ev"
    out = run_cli("lungcls.evaluate", f"ckpt={run}/checkpoints/best.ckpt", f"hydra.run.dir={ev}")
    assert out.returncode == 0, out.stderr[-1500:]
    assert not cache.exists()  # the checkpoint named it, evaluation never writes there
    assert (ev / "metrics.json").is_file() and read_state(ev)["state"] == "complete"


@pytest.mark.slow
def test_terminated_run_is_recorded_as_killed(tmp_path):
    folder = tmp_path / "runs" / "term"
    args = [*TINY, "backbone=logistic", "trainer.max_epochs=500", f"paths.data_dir={tmp_path / 'data'}",
            f"hydra.run.dir={folder}"]
    proc = subprocess.Popen([sys.executable, "-m", "lungcls.train", *args], cwd=REPO,
                            env=dict(os.environ, WANDB_MODE="offline"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (folder / "checkpoints" / "last.ckpt").exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert read_state(folder)["state"] == "killed"
    assert not (folder / "metrics.json").exists()


@pytest.mark.slow
def test_a_default_training_and_an_onnx_export_write_nothing_under_home(tmp_path, monkeypatch):
    """W&B's staging, cache and debug logs go to the run folder and ONNX Runtime writes no device
    id: with HOME an empty folder, a default training (W&B offline) and an ONNX export leave it empty.
    Matplotlib's font cache is matplotlib's own, built once per machine: MPLCONFIGDIR moves it."""
    home = tmp_path / "home"
    home.mkdir()
    for key in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "ORT_DISABLE_TELEMETRY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = tmp_path / "run"
    args = [a for a in TINY if not a.startswith("logger=")]
    out = run_cli("lungcls.train", *args, "backbone=logistic", f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={run}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert list((run / "wandb").glob("offline-run-*")), "the default logger is W&B, offline"
    out = run_cli("lungcls.export", f"ckpt={run}/checkpoints/best.ckpt", "export.format=onnx", f"hydra.run.dir={tmp_path / 'export'}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == []
