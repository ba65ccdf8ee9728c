"""A run's state as the folder tells it: a run whose process died however it died (kill -9, out of
memory, a lost node) reads as interrupted, names how to resume it, and only that resume may reuse
its folder."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lungcls.cli import check_run_folders
from lungcls.runs.folders import collect_runs
from lungcls.runs.state import write_state

from conftest import REPO


def killed_hard(folder: Path) -> Path:
    """A run folder whose process recorded ``running`` and was then killed with SIGKILL."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"a checkpoint")
    code = ("import os, signal; from lungcls.runs.state import write_state; "
            f"write_state({str(folder)!r}, 'running'); os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == -9 and json.loads((folder / "status.json").read_text())["state"] == "running"
    return folder


def status(folder: Path) -> str:
    return collect_runs([folder])[0]["status"]


def test_a_run_whose_process_was_killed_reads_interrupted_and_says_how_to_resume(tmp_path):
    folder = killed_hard(tmp_path / "run")
    assert status(folder) == (f"interrupted: process {json.loads((folder / 'status.json').read_text())['pid']} on "
                              f"{socket.gethostname()} is gone; resume it with ckpt_path={folder}/checkpoints/last.ckpt "
                              f"hydra.run.dir={folder}")


def test_the_lock_not_the_process_id_decides_for_a_run_recorded_on_another_host(tmp_path):
    """A process id means nothing on another node (or after the id is reused): the folder's lock,
    released by the system with the process, tells a dead run from a live one."""
    folder = killed_hard(tmp_path / "run")
    record = json.loads((folder / "status.json").read_text())
    (folder / "status.json").write_text(json.dumps({**record, "host": "another-node", "pid": os.getpid()}))
    assert status(folder).startswith("interrupted: process")
    live = tmp_path / "live"
    (live / ".hydra").mkdir(parents=True)
    write_state(live, "running")  # this process holds its lock
    try:
        assert status(live).startswith(f"running on {socket.gethostname()}")
    finally:
        write_state(live, "complete")
    (live / "metrics.json").write_text("{}")
    assert status(live) == "ok"


def refused(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as e:
        check_run_folders(args, "train")
    assert e.value.code == 2
    return capsys.readouterr().err.strip()


def test_only_its_own_resume_may_reuse_the_folder_of_an_interrupted_run(tmp_path, capsys):
    folder = killed_hard(tmp_path / "run")
    last = folder / "checkpoints" / "last.ckpt"
    assert refused([f"hydra.run.dir={folder}"], capsys) == (
        f"lungcls: error: hydra.run.dir={folder} already holds an interrupted run; a new run would write over it; "
        f"resume it in place with ckpt_path={last} hydra.run.dir={folder}, or give a folder that does not exist yet")
    check_run_folders([f"ckpt_path={last}", f"hydra.run.dir={folder}"], "train")  # its own checkpoint: resumed in place
    other = killed_hard(tmp_path / "other")
    assert "already holds an interrupted run" in refused(
        [f"ckpt_path={other / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={folder}"], capsys)
    (folder / "metrics.json").write_text("{}")  # a finished run is never resumed over
    assert "already holds" in refused([f"ckpt_path={last}", f"hydra.run.dir={folder}"], capsys)


def test_a_folder_whose_run_is_alive_is_refused_even_to_its_resume(tmp_path, capsys):
    folder = tmp_path / "live"
    (folder / ".hydra").mkdir(parents=True)
    write_state(folder, "running")
    try:
        message = refused([f"ckpt_path={folder}/checkpoints/last.ckpt", f"hydra.run.dir={folder}"], capsys)
        assert "already holds a running run" in message
    finally:
        write_state(folder, "complete")
