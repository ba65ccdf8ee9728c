"""Run folders: claiming a fresh one for every run, recording the run's state in it, and reading what
runs left (config, overrides, metrics, state), so the comparison works from files alone.

Every run gets its own folder even when many start in the same second, on one machine or on several
sharing a file system: the folder is claimed with an exclusive ``mkdir`` (atomic), and a taken name
gets a ``-2``, ``-3``... suffix. A folder that holds a run is refused to a new one, except to resume
that run in place (its state in ``lungcls.runs.state``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lungcls.console import natural_key
from lungcls.errors import LungclsError
from lungcls.runs.files import same_file
from lungcls.runs.state import RESUMABLE, STATE_FILE, read_state, run_state, state_status

STATUS_OK = "ok"
_CLAIMED: dict[str, str] = {}
# Folders that never hold run folders; skipping them keeps the walk fast on big sweeps.
_SKIP_DIRS = {"checkpoints", "wandb", "lightning_logs", "__pycache__"}


def _task(folder: Path) -> str | None:
    """The command that made a run folder (its config's ``task_name``: train, evaluate, report...)."""
    config = read_yaml(folder / ".hydra" / "config.yaml")
    return config.get("task_name") if isinstance(config, dict) else None


def find_run_folders(folder: Path, task: str = "train") -> tuple[list[Path], dict[str, int]]:
    """The run folders (with `.hydra/`) of ``task`` at or below ``folder``, and how many folders of
    other commands (evaluate, report, predict...) were passed over."""
    candidates: list[Path] = []
    if (folder / ".hydra").is_dir():
        candidates = [folder]
    else:
        for root, dirs, _files in os.walk(folder):
            if ".hydra" in dirs:
                candidates.append(Path(root))
                dirs[:] = []  # run folders do not nest
                continue
            dirs[:] = [d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS]
    found, other = [], {}
    for path in candidates:
        kind = _task(path)
        if kind in (None, task):  # None: a run from before task names were recorded
            found.append(path)
        else:
            other[kind] = other.get(kind, 0) + 1
    return sorted(found, key=lambda p: natural_key(str(p))), other


def read_yaml(path: Path) -> Any:
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:
        return None


def _get(mapping: Any, dotted: str, default: Any = None) -> Any:
    for part in dotted.split("."):
        if not isinstance(mapping, dict) or part not in mapping:
            return default
        mapping = mapping[part]
    return mapping


def _first_line(path: Path, limit: int = 200) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    line = text.splitlines()[0].strip() if text else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def read_run(folder: Path) -> dict:
    """One run folder as a record: its config, overrides, metrics (or None) and status."""
    config = read_yaml(folder / ".hydra" / "config.yaml")
    overrides = read_yaml(folder / ".hydra" / "overrides.yaml")
    if not isinstance(config, dict):
        config = {}
    if not isinstance(overrides, list):
        overrides = []

    metrics: dict | None = None
    status = STATUS_OK
    metrics_file = folder / "metrics.json"
    error_file = folder / "error.txt"
    record = read_state(folder)
    from_state = state_status(record, folder) if record else None
    if metrics_file.is_file() and from_state is None:
        try:
            loaded = json.loads(metrics_file.read_text())
            metrics = loaded if isinstance(loaded, dict) else None
            if metrics is None:
                status = "failed: metrics.json is not a JSON object"
        except (OSError, ValueError) as err:
            status = f"failed: unreadable metrics.json ({type(err).__name__})"
    elif from_state is not None:
        status = from_state
    elif error_file.is_file():
        status = f"failed: {_first_line(error_file) or 'see error.txt'}"
    else:
        status = "incomplete: no metrics.json (crashed, killed or still running)"

    return {
        "path": folder,
        "config": config,
        "overrides": [str(o) for o in overrides],
        "metrics": metrics,
        "status": status,
        "backbone": _get(config, "backbone.name"),
        "finetune": _get(config, "finetune.name"),
        "normal_class": _get(config, "dataset.normal_class", "Normal") or "Normal",
    }


def collect_runs(dirs: Iterable[str | Path]) -> list[dict]:
    """Every run below `dirs` (multirun folders, folders of runs, or run folders), in folder order.

    Each record also gets `run`: its folder relative to the single folder given (or to the
    folders' common parent), which is how the table names it.
    """
    dirs = [Path(d) for d in dirs]
    if not dirs:
        raise LungclsError("give at least one run or multirun folder")
    folders: list[Path] = []
    for folder in dirs:
        if not folder.is_dir():
            raise LungclsError(f"no such folder: {folder}")
        found, other = find_run_folders(folder)
        if not found:
            kinds = ", ".join(f"{n} {k}" for k, n in other.items())
            raise LungclsError(f"no training run folders under {folder}{f' (only {kinds} run folders)' if other else ''}; "
                               "give the folder of lungcls-train runs or of a sweep")
        folders += [f for f in found if f.resolve() not in {g.resolve() for g in folders}]
    base = _display_base(dirs)
    runs = []
    for folder in folders:
        run = read_run(folder)
        run["run"] = _relative(folder, base)
        runs.append(run)
    return runs


def _display_base(dirs: list[Path]) -> Path:
    resolved = [d.resolve() for d in dirs]
    if len(resolved) == 1:
        only = resolved[0]
        return only.parent if (only / ".hydra").is_dir() else only
    return Path(os.path.commonpath([str(d) for d in resolved]))


def _relative(folder: Path, base: Path) -> str:
    try:
        rel = folder.resolve().relative_to(base)
        return str(rel) if str(rel) != "." else folder.resolve().name
    except ValueError:
        return str(folder)


# --------------------------------------------------------------------------------------------
# Claiming a run folder and recording its state
# --------------------------------------------------------------------------------------------


def safe_name(name: object) -> str:
    """A run name usable as one folder name: path separators and other unsafe characters become
    ``-`` (``run_name=a/b`` names one folder, it does not nest two)."""
    text = re.sub(r"[^\w.+=@,-]+", "-", str(name)).strip("-.")
    return text or "run"


def claim_dir(path: str) -> str:
    """Create ``path`` (or ``path-2``, ``path-3``... when taken) with an exclusive ``mkdir`` and
    return it. Called again in the same process with the same ``path`` it returns the same folder."""
    if path in _CLAIMED:
        return _CLAIMED[path]
    base = Path(path)
    base.parent.mkdir(parents=True, exist_ok=True)
    for k in range(1, 100_000):
        candidate = base if k == 1 else base.with_name(f"{base.name}-{k}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        _CLAIMED[path] = str(candidate)
        return str(candidate)
    raise LungclsError(f"cannot claim a run folder next to {base}; remove old run folders")


# What a command leaves in its run folder: a folder holding any of these holds a run.
_RUN_MARKERS = (".hydra", STATE_FILE, "metrics.json", "checkpoints", "predictions.csv", "error.txt")


def holds_run(folder: str | Path, sweep: bool = False) -> bool:
    """Whether ``folder`` already holds a run (of any lungcls command); with ``sweep``, also whether
    it holds a sweep (``multirun.yaml``) or a job's run folder one level down."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    if any((folder / marker).exists() for marker in _RUN_MARKERS):
        return True
    if not sweep:
        return False
    return (folder / "multirun.yaml").exists() or any(
        (child / ".hydra").is_dir() or (child / STATE_FILE).is_file() for child in folder.iterdir() if child.is_dir())


def refuse_taken_dir(path: str | Path, key: str, resume: str | None = None) -> None:
    """Refuse a run or sweep folder given on the command line (``key``: ``hydra.run.dir`` or
    ``hydra.sweep.dir``) that already holds a run: a second run would write over its results. The one
    exception is resuming in place: ``resume`` (``ckpt_path``) is a checkpoint of that folder's own
    run, and the run stopped before it finished (interrupted, killed or failed, no ``metrics.json``)."""
    folder = Path(str(path)).expanduser()
    if not holds_run(folder, sweep=key.endswith("sweep.dir")):
        return
    state = run_state(folder)
    resumable = state in RESUMABLE and not (folder / "metrics.json").exists()
    if resumable and resume and same_file(Path(resume).expanduser().parent, folder / "checkpoints"):
        return
    held = f"{'an' if state[0] in 'aeiou' else 'a'} {state} run" if state else "a run"
    how = (f"; resume it in place with ckpt_path={folder / 'checkpoints' / 'last.ckpt'} {key}={path}, or give a folder "
           "that does not exist yet" if resumable and not key.endswith("sweep.dir") else
           f": give a folder that does not exist yet (or leave {key} out: every run gets a fresh folder under outputs/)")
    raise LungclsError(f"{key}={path} already holds {held}; a new run would write over it{how}")
