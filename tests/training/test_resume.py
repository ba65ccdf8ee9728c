"""Resuming a run that stopped: in its own folder, with the best epoch, one metrics file and the
numbers an uninterrupted run gives."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

import lungcls.train as train_module
from lungcls.runs.state import read_state, run_state
from lungcls.train import train

from conftest import REPO, TINY, run_cli


class Crash(pl.Callback):
    """Stops the run with an error during epoch ``at`` (before that epoch's checkpoints are saved)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.at:
            raise RuntimeError("simulated crash")


def metrics_rows(run: Path) -> list[dict]:
    with (run / "csv" / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


SETTINGS = ("backbone=logistic", "trainer.max_epochs=3", "optimizer.lr=0.05")


@pytest.mark.slow
def test_a_run_stopped_mid_way_resumes_in_its_folder_to_the_numbers_of_an_uninterrupted_run(train_cfg, tmp_path, monkeypatch):
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    train(train_cfg(*SETTINGS, out=whole))
    real = train_module.build_callbacks
    monkeypatch.setattr(train_module, "build_callbacks", lambda *a, **k: {**real(*a, **k), "crash": Crash(at=1)})
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(train_cfg(*SETTINGS, out=stopped))
    monkeypatch.setattr(train_module, "build_callbacks", real)
    assert torch.load(stopped / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    train(train_cfg(*SETTINGS, f"ckpt_path={stopped / 'checkpoints' / 'last.ckpt'}", out=stopped))

    a, b = (json.loads((run / "metrics.json").read_text()) for run in (whole, stopped))
    assert Path(b["best_checkpoint"]).parent == (stopped / "checkpoints").resolve()
    for split in ("train", "val", "test"):
        assert b[split]["accuracy"] == a[split]["accuracy"] and b[split]["confusion_matrix"] == a[split]["confusion_matrix"]
    steps = [torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] for run in (whole, stopped)]
    assert steps[0] == steps[1] > 0
    # one metrics file: every epoch once, the same numbers as the uninterrupted run's
    rows_a, rows_b = metrics_rows(whole), metrics_rows(stopped)
    assert rows_b == rows_a


def train_process(folder: Path, data: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lungcls.train", *TINY, *SETTINGS[:1], "trainer.max_epochs=30", f"paths.data_dir={data}",
            f"hydra.run.dir={folder}", *extra]


@pytest.mark.slow
def test_a_training_killed_hard_resumes_in_its_own_folder_as_the_readme_says(tmp_path):
    """kill -9 during training, then the command again with ckpt_path=<its last.ckpt> and the same
    folder: the run completes there with the numbers, steps and metrics file of an uninterrupted run."""
    data, whole, folder = tmp_path / "data", tmp_path / "whole", tmp_path / "killed"
    env = dict(os.environ, WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    done = subprocess.run(train_process(whole, data), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    proc = subprocess.Popen(train_process(folder, data), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (folder / "checkpoints" / "last.ckpt").exists():
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert run_state(folder) == "interrupted" and not (folder / "metrics.json").exists()
    stopped_at = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["epoch"]
    assert stopped_at < 29, "the run finished before it was killed"

    again = run_cli("lungcls.train", *train_process(folder, data)[3:])
    assert again.returncode == 2 and "already holds an interrupted run; a new run would write over it; resume it in place" in again.stderr
    resumed = run_cli("lungcls.train", *train_process(folder, data, f"ckpt_path={folder}/checkpoints/last.ckpt")[3:])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    state = read_state(folder)
    assert state["state"] == "complete" and state["resumed"] == 1

    a, b = (json.loads((run / "metrics.json").read_text()) for run in (whole, folder))
    assert b["test"]["confusion_matrix"] == a["test"]["confusion_matrix"] and b["val"]["accuracy"] == a["val"]["accuracy"]
    best = [torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["epoch"] for run in (whole, folder)]
    assert best[0] == best[1] and Path(b["best_checkpoint"]) == (folder / "checkpoints" / "best.ckpt").resolve()
    steps = [torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] for run in (whole, folder)]
    assert steps[0] == steps[1]
    assert metrics_rows(folder) == metrics_rows(whole)  # one file, every epoch once
