"""The cluster recipe rehearsed on one machine with the real engines: two torchrun "nodes" over
localhost (one process each, gloo on CPU), each started from its own working folder, over one shared
data folder and one run folder (``hydra.run.dir``), as on a cluster with a shared file system."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from conftest import run_cli

pytestmark = pytest.mark.slow  # each test launches several training processes

DEMO = ["dataset.demo.images_per_class=12", "dataset.demo.source_size=64", "dataset.image_size=64", "logger=csv",
        "backbone=logistic", "optimizer.lr=0.001", "trainer.max_epochs=3"]
TWO_NODES = ["trainer=ddp_cpu", "trainer.num_nodes=2", "trainer.devices=1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nodes(tmp: Path, *args: str, nodes: int = 2, per_node: int = 1, program: tuple[str, ...] = ("-m", "lungcls.train"),
                ) -> list[subprocess.Popen]:
    """One ``torchrun`` per node, each in its own working folder ``tmp/node<i>``, all on one port,
    running ``program`` (lungcls-train) with ``args``."""
    port, procs = free_port(), []
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="offline", OMP_NUM_THREADS="1")
    for i in range(nodes):
        cwd = tmp / f"node{i}"
        cwd.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}", f"--node_rank={i}",
                   f"--nproc_per_node={per_node}", "--master_addr=127.0.0.1", f"--master_port={port}",
                   *program, *args]
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


def test_two_nodes_share_one_decoded_cache_on_the_shared_file_system_and_a_second_run_reuses_it(tmp_path):
    """Both nodes' first processes (LOCAL_RANK 0 on each) decode into the same ``dataset.cache_dir``:
    the file lock makes one of them write, the other waits and maps the finished file (never a
    half-written one: the file is renamed into place, then its record written). A second run maps it."""
    cache = tmp_path / "cache"
    first = two_node_run(tmp_path, tmp_path / "first", "dataset.cache=mmap", f"dataset.cache_dir={cache}")
    files = sorted(p.name for p in cache.iterdir())
    assert len([f for f in files if f.endswith(".npy")]) == 1 and all(".tmp" not in f for f in files), files
    decoded = [len(re.findall(r"\bdecoded \d+ images", text)) for _, text in first]
    assert sum(decoded) == 1, decoded  # exactly one node decoded
    assert sum(text.count("mapped 48 decoded images read-only") for _, text in first) == 1
    stamp = [(p.name, p.stat().st_mtime_ns) for p in sorted(cache.iterdir())]
    second = two_node_run(tmp_path, tmp_path / "second", "dataset.cache=mmap", f"dataset.cache_dir={cache}")
    assert [len(re.findall(r"\bdecoded \d+ images", text)) for _, text in second] == [0, 0]
    assert [text.count("mapped 48 decoded images read-only") for _, text in second] == [1, 1]
    assert [(p.name, p.stat().st_mtime_ns) for p in sorted(cache.iterdir()) if not p.name.endswith(".lock")] == \
        [s for s in stamp if not s[0].endswith(".lock")]
    assert _scores(tmp_path / "first") == _scores(tmp_path / "second")


def test_litdata_streams_every_sample_once_per_epoch_across_two_nodes(tmp_path):
    """LitData shards the prepared train split over the processes of both nodes: each sample once per
    epoch across the ranks, the same number of batches on each rank (DDP would hang otherwise)."""
    from conftest import make_class_tree

    tree = make_class_tree(tmp_path / "tree", {"COVID": 10, "Normal": 10, "Viral Pneumonia": 10}, size=40)
    prep = run_cli("lungcls.prepare", "dataset=folder", "dataset.classes=[COVID,Normal,Viral Pneumonia]",
                   f"dataset.root={tree}", "dataset.image_size=16", "dataset.duplicates=none", "dataset.val_fraction=0.1",
                   "dataset.test_fraction=0.1", f"prepare.output={tmp_path / 'prepared'}",
                   f"hydra.run.dir={tmp_path / 'prep-run'}", timeout=240)
    assert prep.returncode == 0, prep.stderr[-2000:]
    n = json.loads((tmp_path / "prepared" / "lungcls.json").read_text())["images"]["train"]
    assert n == 24
    procs = start_nodes(tmp_path, str(tmp_path / "prepared"), str(n), "3", str(tmp_path),
                        program=(str(Path(__file__).with_name("stream_probe.py")),))
    for rc, text in finish(procs):
        assert rc == 0, text[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    for epoch in range(2):
        batches = [r["epochs"][epoch] for r in ranks]
        assert len(batches[0]) == len(batches[1]) == n // (2 * 3)
        rows = sorted(row for per_rank in batches for batch in per_rank for row in batch)
        assert len(rows) == n and len(set(rows)) == n, rows


def test_a_sweep_through_the_submitit_launcher_runs_its_jobs_and_a_failed_job_fails_the_multirun(tmp_path):
    """hydra/launcher=submitit_local runs each job as its own process, as SLURM would: the good job
    completes, the failing one leaves error.txt, the multirun exits 1 naming it and lungcls-compare
    lists it as failed."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    out = run_cli("lungcls.train", "-m", "hydra/launcher=submitit_local", *DEMO[:-1], "trainer.max_epochs=1,0",
                  f"paths.data_dir={tmp_path / 'data'}", f"hydra.sweep.dir={sweep}", timeout=300)
    assert out.returncode == 1, out.stderr[-3000:]
    assert "1 job(s) of the multirun failed" in out.stderr and "trainer.max_epochs=0 trains nothing" in out.stderr
    assert (sweep / "0" / "metrics.json").is_file() and (sweep / ".submitit").is_dir()
    assert json.loads((sweep / "1" / "status.json").read_text())["state"] == "failed"
    compared = run_cli("lungcls.compare", str(sweep), "--out", str(tmp_path / "compare"), timeout=120)
    assert "failed: trainer.max_epochs=0 trains nothing" in compared.stdout + compared.stderr, compared.stdout[-2000:]


def test_a_lost_node_fails_the_run_within_the_timeout_and_two_nodes_resume_it_to_the_uninterrupted_steps(tmp_path):
    """SIGKILL to every process of node 1 mid-epoch: node 0 does not hang, its run ends within
    trainer.process_timeout_s (plus start-up), the run's state is failed with the reason, and the
    two nodes started again with ckpt_path=<last.ckpt> in the same folder reach the optimiser steps
    of an uninterrupted two-node run."""
    long = ["trainer.max_epochs=25", "trainer.process_timeout_s=30"]
    two_node_run(tmp_path, tmp_path / "whole", *long)
    run = tmp_path / "lost"
    procs = start_nodes(tmp_path, *DEMO, *TWO_NODES, "dataset.batch_size=4", f"paths.data_dir={tmp_path / 'shared'}",
                        f"hydra.run.dir={run}", *long)
    deadline = time.monotonic() + 180
    while not (run / "checkpoints" / "last.ckpt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    node = psutil.Process(procs[1].pid)
    for process in [*node.children(recursive=True), node]:  # the node is lost: its launcher and its worker
        process.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    (rc, text), _ = finish(procs, timeout=120)
    assert time.monotonic() - killed_at < 30 + 30, "node 0 waited past trainer.process_timeout_s"
    assert rc != 0
    state = json.loads((run / "status.json").read_text())
    assert state["state"] == "failed" and "lost" in state["error"], state
    assert not (run / "metrics.json").exists()
    stopped = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    resumed = two_node_run(tmp_path, run, *long, f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}")
    assert json.loads((run / "status.json").read_text())["state"] == "complete"
    steps = [torch.load(r / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] for r in (tmp_path / "whole", run)]
    assert steps[0] == steps[1] > stopped > 0, (steps, stopped)
    assert resumed[0][0] == 0
