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
