"""A multi-node launch that does not match the config, and the DDP timeout: one line each, before any
image is decoded and before a process could wait for peers that never come."""

from __future__ import annotations

from datetime import timedelta

import pytest

from lungcls.errors import LungclsError
from lungcls.training.trainer import build_trainer, trainer_settings

from conftest import run_cli


def test_num_nodes_that_does_not_match_the_launch_is_one_line(tmp_path, monkeypatch):
    """torchrun started 3 processes, the config expects 2 nodes x 1: every process stops with the fix."""
    monkeypatch.setenv("WORLD_SIZE", "3")
    out = run_cli("lungcls.train", "trainer=ddp_cpu", "trainer.num_nodes=2", "trainer.devices=1", "logger=csv",
                  f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}", timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1].startswith("lungcls: error: trainer.num_nodes=2 x trainer.devices=1 = 2 "
                                                          "processes, but the launch started 3 (WORLD_SIZE)")
    assert "Traceback" not in out.stderr and not (tmp_path / "data").exists()


def test_a_matching_launch_and_a_bad_timeout(train_cfg, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert trainer_settings(train_cfg("trainer=ddp_cpu", "trainer.num_nodes=2")).num_nodes == 2
    with pytest.raises(LungclsError, match=r"trainer.process_timeout_s=0(\.0)? must be more than 0"):
        trainer_settings(train_cfg("trainer.process_timeout_s=0"))


def test_ddp_processes_wait_for_a_lost_peer_only_process_timeout_s(train_cfg):
    """torch's default would keep a process whose peer died waiting 30 minutes (NCCL: forever)."""
    trainer = build_trainer(train_cfg("trainer=ddp_cpu", "trainer.process_timeout_s=45"), [], [])
    assert trainer.strategy._timeout == timedelta(seconds=45)
    assert type(trainer.strategy).__name__ == "DDPStrategy" and trainer.strategy._start_method == "popen"


def _sbatch_script() -> str:
    """The docs' SLURM batch script (README, or a page under docs/)."""
    import re

    from conftest import REPO

    for page in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
        if page.is_file():
            for block in re.findall(r"```bash\n(#!/bin/bash\n#SBATCH.*?)```", page.read_text(), re.S):
                return block
    raise AssertionError("no sbatch script (```bash #!/bin/bash #SBATCH ...) in the docs")


def test_the_docs_slurm_script_is_valid_bash_and_its_tasks_are_what_lightning_and_lungcls_expect(tmp_path, monkeypatch, train_cfg):
    """bash -n; run with a stand-in srun, its command composes with lungcls's config; and the
    environment srun gives each task (SLURM_NTASKS, SLURM_PROCID...) is what Lightning's SLURM
    detection reads, for as many processes as trainer.num_nodes x trainer.devices."""
    import re
    import shlex
    import subprocess

    from lightning_fabric.plugins.environments import SLURMEnvironment

    script = tmp_path / "train.sbatch"
    script.write_text(_sbatch_script())
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    sbatch = " ".join(line for line in script.read_text().splitlines() if line.startswith("#SBATCH"))
    nodes, per_node = (int(re.search(rf"--{k}=(\d+)", sbatch).group(1)) for k in ("nodes", "ntasks-per-node"))
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/srun-args\n')
    (tmp_path / "bin" / "srun").chmod(0o755)
    ran = subprocess.run(["bash", str(script)], env={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"}, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    command = (tmp_path / "srun-args").read_text().split("\n")[:-1]
    assert command[0] == "lungcls-train", shlex.join(command)
    overrides = [o for o in command[1:] if not o.startswith("dataset.root=")]
    assert f"trainer.num_nodes={nodes}" in overrides and f"trainer.devices={per_node}" in overrides
    for key, value in {"SLURM_NTASKS": nodes * per_node, "SLURM_NNODES": nodes, "SLURM_NTASKS_PER_NODE": per_node, "SLURM_PROCID": 3, "SLURM_LOCALID": 3,
                       "SLURM_NODEID": 0, "SLURM_JOB_ID": 7, "SLURM_JOB_NAME": script.name,
                       "SLURM_NODELIST": f"node[1-{nodes}]"}.items():
        monkeypatch.setenv(key, str(value))
    assert SLURMEnvironment.detect()
    env = SLURMEnvironment()
    assert (env.world_size(), env.global_rank(), env.local_rank()) == (nodes * per_node, 3, 3)
    env.validate_settings(num_devices=per_node, num_nodes=nodes)
    monkeypatch.setenv("WORLD_SIZE", str(env.world_size()))  # what Lightning exports to the process group
    settings = trainer_settings(train_cfg(*overrides))
    assert (settings.num_nodes, settings.devices) == (nodes, per_node)
