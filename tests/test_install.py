"""lungcls installed like any library: the wheel (and the sdist) built from this checkout, installed
into a fresh virtual environment, runs its commands from a folder that is not a checkout.

The environment reuses the test environment's packages (its site-packages added to the new
environment's path, the wheel installed with ``--no-deps``), so no second torch is downloaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, TINY

pytestmark = pytest.mark.slow


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=str(cwd), env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(bin folder of a fresh venv holding the built wheel, a working folder outside the checkout)."""
    root = tmp_path_factory.mktemp("install")
    dist = root / "dist"
    env = dict(os.environ, PYTHONPATH="")
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(REPO)], root, env)
    wheel, = dist.glob("*.whl")
    sdist, = dist.glob("*.tar.gz")
    names = zipfile.ZipFile(wheel).namelist()
    assert "lungcls/resources/conf/train.yaml" in names and "lungcls/resources/sweeps/backbones.yaml" in names
    assert any(n.endswith("/conf/train.yaml") for n in tarfile.open(sdist).getnames())
    venv = root / "venv"
    run([sys.executable, "-m", "venv", str(venv)], root, env)
    own = run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root, env).stdout.strip()
    # the test environment's packages (torch, Lightning, ...) after the venv's own: the wheel's lungcls wins
    (Path(own) / "test_env.pth").write_text(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], root, env)
    work = root / "elsewhere"
    work.mkdir()
    env = dict(env, PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}", WANDB_MODE="offline", MPLBACKEND="Agg",
               LUNGCLS_DATA_DIR=str(root / "data"))
    where = run([str(venv / "bin" / "python"), "-c", "import lungcls; print(lungcls.__file__)"], work, env).stdout.strip()
    assert where.startswith(str(venv)), f"the wheel's lungcls is not the one imported: {where}"
    return venv / "bin", work, env


def test_the_installed_commands_run_from_any_folder(installed):
    bin_dir, work, env = installed
    job = run([str(bin_dir / "lungcls-train"), "--cfg", "job"], work, env).stdout
    assert "backbone:" in job and "dataset:" in job
    run([str(bin_dir / "lungcls-train"), *TINY, "backbone=logistic", "hydra.run.dir=runs/tiny"], work, env)
    run_dir = work / "runs" / "tiny"
    assert json.loads((run_dir / "status.json").read_text())["state"] == "complete"
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    run([str(bin_dir / "lungcls-evaluate"), f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}", "hydra.run.dir=runs/eval"], work, env)
    assert "test" in json.loads((work / "runs" / "eval" / "metrics.json").read_text())
    dry = run([str(bin_dir / "lungcls-sweep"), "backbones", "dataset=demo", "--dry-run"], work, env).stdout
    assert "lungcls.train" in dry and "--multirun" in dry
    assert "usage" in run([str(bin_dir / "lungcls-sweep"), "backbones", "--help"], work, env).stdout.lower()
    run([str(bin_dir / "lungcls-serve"), "--help"], work, env)
    written = [p for p in bin_dir.parent.rglob("*") if p.name in ("outputs", "status.json", "metrics.json")]
    assert not written, f"commands wrote into the installed package, not the working folder: {written}"


def test_an_unknown_bundled_sweep_lists_the_bundled_ones(installed):
    bin_dir, work, env = installed
    result = subprocess.run([str(bin_dir / "lungcls-sweep"), "nosuch"], cwd=str(work), env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert "nosuch is neither a sweep file nor a bundled sweep; bundled: backbones" in result.stderr


def test_a_broken_installation_is_one_line(installed, tmp_path):
    """A package whose bundled configs are gone names the problem and the fix, not Hydra's
    "Primary config directory not found"."""
    bin_dir, work, env = installed
    site = Path(run([str(bin_dir / "python"), "-c", "import lungcls, pathlib; print(pathlib.Path(lungcls.__file__).parent)"],
                    work, env).stdout.strip())
    conf = site / "resources" / "conf"
    hidden = site / "resources" / "conf-hidden"
    conf.rename(hidden)
    try:
        result = subprocess.run([str(bin_dir / "lungcls-train"), "--cfg", "job"], cwd=str(work), env=env, capture_output=True, text=True)
    finally:
        hidden.rename(conf)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "conf/ folder is missing from this installation" in lines[0] and "reinstall" in lines[0]
