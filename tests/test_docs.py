"""The documentation a user follows: the site builds without a broken link, the README stays short
and its links land on pages, and every example in docs/examples/ runs as written (the commands
copied from the page, with small sizes appended) or, for a cluster, is a script SLURM and Lightning
agree on."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, TINY, compose_cfg

DOCS = REPO / "docs"
EXAMPLES = DOCS / "examples"

# small sizes appended to each command an example runs (a key the page already sets is left as written)
DEMO_TINY = ["dataset.demo.images_per_class=12", "dataset.demo.source_size=64"]
SMALL = {
    "lungcls-train": [*TINY, "backbone=logistic"],
    "lungcls-evaluate": DEMO_TINY,
    "lungcls-audit": [*DEMO_TINY, "dataset.image_size=64"],
}
# what each runnable example leaves, relative to the folder it runs in
RUNNABLE = {
    "planted-shortcut.md": ["outputs/audit_tagged/audit.json", "outputs/clean/checkpoints/best.ckpt",
                            "outputs/tagged/checkpoints/best.ckpt", "outputs/runs/*/*_report/gradcam_summary.csv"],
    "leave-one-source-out.md": ["outputs/loso_audit/audit.json", "outputs/loso/generalisation.csv"],
}
CLUSTER = {"slurm.md"}  # needs a cluster: checked, not run

# a command as its console script would run it, given the small sizes
LAUNCHER = """
import importlib, json, os, sys
command, args = sys.argv[1], sys.argv[2:]
given = {a.split("=", 1)[0] for a in args}
extra = [o for o in json.loads(os.environ["DOCS_SMALL"]).get(command, []) if o.split("=", 1)[0] not in given]
module, function = json.loads(os.environ["DOCS_SCRIPTS"])[command].split(":")
sys.argv = [command, *args, *extra]
sys.exit(getattr(importlib.import_module(module), function)())
"""


def bash_blocks(page: Path) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S)


def test_the_site_builds_strictly(tmp_path):
    """``mkdocs build --strict``: a broken link, anchor or API reference fails it."""
    for module in ("mkdocs", "material", "mkdocstrings"):
        pytest.importorskip(module)
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"), "-d", str(tmp_path / "site")],
                            cwd=str(REPO), capture_output=True, text=True, timeout=300, env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "architecture" / "index.html").is_file()
    assert "bundled_dir" in (tmp_path / "site" / "api" / "index.html").read_text()  # the API page is built from docstrings


def test_the_readme_fits_on_a_few_screens_and_its_links_land_on_pages():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    links = [link.split("#")[0] for link in re.findall(r"\]\(([^)#][^)]*)\)", readme) if "://" not in link]
    assert links and all((REPO / link).is_file() for link in links), [link for link in links if not (REPO / link).is_file()]
    assert 'python -m pytest -m "not slow"' in readme  # the test command CI closes with


def test_every_example_is_run_or_checked():
    pages = {p.name for p in EXAMPLES.glob("*.md")} - {"index.md"}
    assert pages == set(RUNNABLE) | CLUSTER
    index = (EXAMPLES / "index.md").read_text()
    assert all(f"({name})" in index for name in pages)


def test_the_slurm_script_is_one_lightning_accepts(tmp_path, data_dir, monkeypatch):
    """The script parses, asks for one task per GPU, and with the variables SLURM sets for it
    Lightning sees the world size the training overrides ask for and requeues on its signal."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    script, = [b for b in bash_blocks(EXAMPLES / "slurm.md") if b.startswith("#!/bin/bash")]
    (tmp_path / "train.sbatch").write_text(script)
    assert subprocess.run(["bash", "-n", str(tmp_path / "train.sbatch")], capture_output=True).returncode == 0
    sbatch = dict(re.findall(r"--([\w-]+)=(\S+)", " ".join(line for line in script.splitlines() if line.startswith("#SBATCH"))))
    srun = script.replace("\\\n", " ").split("srun lungcls-train", 1)[1].split()
    overrides = dict(o.split("=", 1) for o in srun)
    nodes, per_node = int(sbatch["nodes"]), int(sbatch["ntasks-per-node"])
    assert int(overrides["trainer.devices"]) == per_node == int(sbatch["gpus-per-node"])
    assert int(overrides["trainer.num_nodes"]) == nodes
    assert sbatch["signal"].startswith("SIGUSR1@") and SLURMEnvironment().requeue_signal == signal.SIGUSR1
    cfg = compose_cfg("train", srun, tmp_path, data_dir)  # every key exists in the configuration
    assert cfg.trainer.num_nodes == nodes and cfg.dataset.layout == "litdata"
    last = {"SLURM_NTASKS": nodes * per_node, "SLURM_NTASKS_PER_NODE": per_node, "SLURM_NNODES": nodes,
            "SLURM_PROCID": nodes * per_node - 1, "SLURM_LOCALID": per_node - 1, "SLURM_NODEID": nodes - 1,
            "SLURM_NODELIST": f"gpu[1-{nodes}]", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": 1}
    for key, value in last.items():
        monkeypatch.setenv(key, str(value))
    assert SLURMEnvironment.detect()
    SLURMEnvironment._validate_srun_variables()
    env = SLURMEnvironment()
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (nodes * per_node, nodes * per_node - 1, per_node - 1, nodes - 1)


@pytest.mark.slow  # 4.3 and 2.4 min on the busy 2-core machine (under 2 CPU-minutes together)
@pytest.mark.parametrize("page", sorted(RUNNABLE))
def test_an_example_runs_as_written(page, tmp_path):
    scripts = dict(re.findall(r'^(lungcls-[\w-]+) = "([\w.]+:\w+)"', (REPO / "pyproject.toml").read_text(), flags=re.M))
    (tmp_path / "launch.py").write_text(LAUNCHER)
    commands = "\n".join(f'{name}() {{ "{sys.executable}" "{tmp_path / "launch.py"}" {name} "$@"; }}' for name in scripts)
    (tmp_path / "example.sh").write_text(f"{commands}\nset -euo pipefail\n" + "\n".join(bash_blocks(EXAMPLES / page)))
    env = dict(os.environ, DOCS_SMALL=json.dumps(SMALL), DOCS_SCRIPTS=json.dumps(scripts), PYTHONUNBUFFERED="1", WANDB_MODE="offline",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop("LUNGCLS_DATA_DIR", None)
    work = tmp_path / "work"
    work.mkdir()
    result = subprocess.run(["bash", str(tmp_path / "example.sh")], cwd=str(work), env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{page}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    for pattern in RUNNABLE[page]:
        assert list(work.glob(pattern)), f"{page} left no {pattern}"
