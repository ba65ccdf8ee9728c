"""The cluster recipe rehearsed on one machine with the real engines: two torchrun "nodes" over
localhost (one process each, gloo on CPU), each started from its own working folder, over one shared
data folder and one run folder (``hydra.run.dir``), as on a cluster with a shared file system."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, run_cli

pytestmark = pytest.mark.slow  # each test launches several training processes

DEMO = ["dataset.demo.images_per_class=12", "dataset.demo.source_size=64", "dataset.image_size=64", "logger=csv",
        "backbone=logistic", "optimizer.lr=0.001", "trainer.max_epochs=3"]
TWO_NODES = ["trainer=ddp_cpu", "trainer.num_nodes=2", "trainer.devices=1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nodes(tmp: Path, *args: str, nodes: int = 2, per_node: int = 1) -> list[subprocess.Popen]:
    """One ``torchrun`` per node, each in its own working folder ``tmp/node<i>``, all on one port."""
    port, procs = free_port(), []
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="offline", OMP_NUM_THREADS="1")
    for i in range(nodes):
        cwd = tmp / f"node{i}"
        cwd.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}", f"--node_rank={i}",
                   f"--nproc_per_node={per_node}", "--master_addr=127.0.0.1", f"--master_port={port}",
                   "-m", "lungcls.train", *args]
        procs.append(subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return procs


def finish(procs: list[subprocess.Popen], timeout: float = 240) -> list[tuple[int, str]]:
    out = []
    for p in procs:
        text, _ = p.communicate(timeout=timeout)
        out.append((p.returncode, text))
    return out


def two_node_run(tmp: Path, run: Path, *extra: str) -> list[tuple[int, str]]:
    ended = finish(start_nodes(tmp, *DEMO, *TWO_NODES, "dataset.batch_size=4", f"paths.data_dir={tmp / 'shared'}",
                               f"hydra.run.dir={run}", *extra))
    for rc, text in ended:
        assert rc == 0, text[-3000:]
    return ended


def _scores(run: Path) -> dict[str, float]:
    metrics = json.loads((run / "metrics.json").read_text())
    return {f"{split}/{key}": metrics[split][key] for split in ("train", "val", "test") for key in ("accuracy", "macro_f1")}


def _val_losses(run: Path) -> list[float]:
    with (run / "csv" / "metrics.csv").open() as f:
        return [float(r["val/loss"]) for r in csv.DictReader(f) if r.get("val/loss")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The two-node run, the same two processes launched by Lightning on one node, and one process
    with the same global batch (8)."""
    tmp = tmp_path_factory.mktemp("cluster")
    two_node_run(tmp, tmp / "two-nodes")
    shared = f"paths.data_dir={tmp / 'shared'}"
    one_node = run_cli("lungcls.train", *DEMO, "trainer=ddp_cpu", "dataset.batch_size=4", shared,
                       f"hydra.run.dir={tmp / 'one-node'}", timeout=240)
    single = run_cli("lungcls.train", *DEMO, "dataset.batch_size=8", shared, f"hydra.run.dir={tmp / 'single'}", timeout=240)
    for proc in (one_node, single):
        assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp


def test_two_nodes_write_one_run_folder_that_records_the_world_size(runs):
    run = runs / "two-nodes"
    for name in ("metrics.json", "predictions.csv", "splits.csv", "checkpoints/last.ckpt", "status.json"):
        assert (run / name).is_file(), name
    assert json.loads((run / "metrics.json").read_text())["world_size"] == 2
    assert json.loads((runs / "single" / "metrics.json").read_text())["world_size"] == 1
    assert json.loads((run / "status.json").read_text())["state"] == "complete"
    # each node's working folder stays empty: rank 0 writes the one run folder, the data is shared
    assert [list((runs / f"node{i}").iterdir()) for i in (0, 1)] == [[], []]
    assert (run / "splits.csv").read_text() == (runs / "single" / "splits.csv").read_text()


def test_two_nodes_train_as_two_processes_on_one_node_and_as_one_process_with_the_same_global_batch(runs):
    """Two nodes of one process each are the same DDP run as two processes on one node: equal
    metrics and losses. One process with the same global batch takes the same optimiser steps but
    draws its batches in another order (its own sampler, not DistributedSampler's), so its
    validation loss after each epoch agrees within a stated tolerance: 5 % (the demo's scores on
    5 validation images move in steps of 0.2, too coarse to compare)."""
    sizes = [json.loads((runs / name / "metrics.json").read_text())["world_size"] for name in ("two-nodes", "one-node", "single")]
    assert sizes == [2, 2, 1]
    two, one_node, single = (_scores(runs / name) for name in ("two-nodes", "one-node", "single"))
    assert two == pytest.approx(one_node, abs=1e-6)
    assert _val_losses(runs / "two-nodes") == pytest.approx(_val_losses(runs / "one-node"), rel=1e-5)
    assert len(_val_losses(runs / "single")) == 3
    assert _val_losses(runs / "two-nodes") == pytest.approx(_val_losses(runs / "single"), rel=0.05)
    steps = [torch.load(runs / name / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
             for name in ("two-nodes", "single")]
    assert steps[0] == steps[1] > 0
