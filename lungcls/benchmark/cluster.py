"""``python -m lungcls.benchmark.cluster``: the two-node rehearsal measured against one process on the
same machine. Two torchrun "nodes" of one process each (localhost, gloo on CPU, one shared
``dataset.cache_dir``) and one process train the demo with the same global batch; each is run for
two numbers of epochs, and the difference of their wall times gives the time per epoch without
start-up (a first one-epoch run generates the demo and decodes the cache). It prints images/s of each, their ratio, and each training process's peak resident
memory (RSS) and its share of the decoded cache's mapping. On a machine of a few cores this is a
correctness rehearsal, not a speed-up: the two "nodes" share the same cores.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

MAPPING = re.compile(r"process \d of this machine: decoded cache ([\d.]+) MB mapped, (\d+) images read from it, "
                     r"resident ([\d.]+) MB, proportional share \(pss\) ([\d.]+) MB")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _commands(nodes: int, args: list[str]) -> list[list[str]]:
    if nodes == 1:
        return [[sys.executable, "-m", "lungcls.train", *args]]
    port = _port()
    return [[sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}", f"--node_rank={i}", "--nproc_per_node=1",
             "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "lungcls.train", *args, "trainer=ddp_cpu",
             f"trainer.num_nodes={nodes}", "trainer.devices=1"] for i in range(nodes)]


def run(work: Path, nodes: int, epochs: int, common: list[str]) -> dict:
    """One training run (``nodes`` torchrun nodes, or one plain process): wall seconds, each training
    process's peak RSS in MB (sampled every 0.1 s), and the mapping lines of its log."""
    folder = work / f"{nodes}-nodes-{epochs}-epochs"
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="offline")
    args = [*common, f"trainer.max_epochs={epochs}", f"hydra.run.dir={folder}"]
    start, peaks = time.monotonic(), {}
    procs = [subprocess.Popen(c, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c in _commands(nodes, args)]
    outputs = [[] for _ in procs]
    while any(p.poll() is None for p in procs):
        for p in procs:
            try:
                tree = [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
                for q in tree:
                    if "lungcls.train" in " ".join(q.cmdline()) and "torch.distributed.run" not in " ".join(q.cmdline()):
                        peaks[q.pid] = max(peaks.get(q.pid, 0.0), q.memory_info().rss / 2**20)
            except psutil.Error:
                pass
        time.sleep(0.1)
    seconds = time.monotonic() - start
    for k, p in enumerate(procs):
        outputs[k] = p.stdout.read()
        if p.returncode != 0:
            sys.exit(f"lungcls-bench: error: the {nodes}-node run failed (exit {p.returncode}):\n{outputs[k][-2000:]}")
    return {"seconds": seconds, "peak_rss_mb": sorted(peaks.values()), "mapping": MAPPING.findall("".join(outputs))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lungcls.benchmark.cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", default="2,12", help="two numbers of epochs; the time per epoch is their difference")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--images-per-class", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16, help="global batch (each of 2 nodes takes half)")
    a = parser.parse_args(argv)
    low, high = (int(x) for x in a.epochs.split(","))
    work = Path(tempfile.mkdtemp(prefix="lungcls-cluster-bench-"))
    common = ["backbone=logistic", "logger=csv", "augment=none", "dataset.cache=mmap", f"dataset.cache_dir={work / 'cache'}",
              f"dataset.image_size={a.image_size}", f"dataset.demo.images_per_class={a.images_per_class}",
              f"paths.data_dir={work / 'data'}"]
    train_images = round(4 * a.images_per_class * 0.8)  # the demo's default split: 80 % train
    run(work, 1, 1, [*common, f"dataset.batch_size={a.batch_size}"])  # warm-up: generates the demo, decodes the cache
    rows = {}
    for nodes, batch in ((1, a.batch_size), (2, a.batch_size // 2)):
        runs = [run(work, nodes, e, [*common, f"dataset.batch_size={batch}"]) for e in (low, high)]
        per_epoch = (runs[1]["seconds"] - runs[0]["seconds"]) / (high - low)
        rows[nodes] = {"images_per_s": train_images / per_epoch, **runs[1]}
    print(f"{'run':<28}{'images/s':>10}  peak RSS per training process (MB)   decoded cache mapping per process")
    for nodes, r in rows.items():
        mapping = "; ".join(f"{m[0]} MB mapped, rss {m[2]} MB, pss {m[3]} MB" for m in r["mapping"]) or "-"
        name = "1 process" if nodes == 1 else "2 torchrun nodes x 1 process"
        print(f"{name:<28}{r['images_per_s']:>10.1f}  {', '.join(f'{x:.0f}' for x in r['peak_rss_mb']):<36}{mapping}")
    print(f"ratio (2 nodes / 1 process): {rows[2]['images_per_s'] / rows[1]['images_per_s']:.2f} on {os.cpu_count()} cores "
          f"(a correctness rehearsal: both nodes share these cores)")
    print(f"runs and cache kept in {work}")


if __name__ == "__main__":
    main()
