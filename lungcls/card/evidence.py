"""Gathering a card's evidence: the training run, and the evaluation, report, audit and
leave-one-source-out folders named with ``card.evidence`` or found beside the run.

Everything is read from files. Evidence about a checkpoint (an evaluation's ``metrics.json``, a
report's ``checkpoints.json``) must carry the SHA-256 of the checkpoint the card describes: a folder
named on the command line that evaluated another file is refused in one line, one found beside the
run is passed over with a note. Data evidence (an audit) is matched by its data root, and
leave-one-source-out rows by their in-source run.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lungcls.errors import LungclsError
from lungcls.runs.folders import read_state
from lungcls.runs.runfolder import RunFolder

EVIDENCE_FILES = ("metrics.json", "audit.json", "generalisation.csv", "methods.csv")


@dataclass
class Report:
    """An attribution report's rows for this checkpoint's model (``methods.csv``) and its settings."""

    path: Path
    model: str
    rows: list[dict[str, Any]]
    sanity_threshold: float | None
    figure: Path | None


@dataclass
class Evidence:
    """What the card is written from; each entry keeps the folder it came from."""

    run: Path
    config: dict[str, Any]
    overrides: list[str]
    state: dict[str, Any]
    metrics: dict[str, Any]
    checkpoint: Path | None
    sha256: str | None
    split_counts: dict[str, Counter]
    source_counts: dict[str, Counter]
    evaluations: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)
    audits: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)
    reports: list[Report] = field(default_factory=list)
    generalisation: list[tuple[Path, list[dict[str, str]]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return list((self.metrics.get("test") or {}).get("class_names") or [])

    def external(self) -> list[tuple[Path, dict[str, Any]]]:
        """Evaluations on other data than the run's own (a whole folder, or another root)."""
        own = data_root(self.config)  # "None" when the run's config is not on disk: then only whole folders count
        return [(p, m) for p, m in self.evaluations
                if m.get("split") == "all" or (own != "None" and str(m.get("data_root")) != own)]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; a corrupt or cut-off file is one line naming it."""
    try:
        loaded = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise LungclsError(f"cannot read {path} ({type(e).__name__}); check the file") from None
    except ValueError as e:
        raise LungclsError(f"{path} is not valid JSON ({e}); the run that wrote it was cut off or the file was "
                           "edited: re-run the command that wrote it") from None
    if not isinstance(loaded, dict):
        raise LungclsError(f"{path} is not a JSON object; re-run the command that wrote it")
    return loaded


def read_rows(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            return list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise LungclsError(f"cannot read {path} as CSV ({type(e).__name__}); re-run the command that wrote it") from None


def read_config(folder: Path) -> dict[str, Any]:
    """A run's composed config, resolved where it can be (Hydra's own resolvers are not there later)."""
    from omegaconf import OmegaConf

    path = folder / ".hydra" / "config.yaml"
    if not path.is_file():
        return {}
    try:
        loaded = OmegaConf.load(path)
    except Exception:  # noqa: BLE001 - an unreadable config costs only what the card says about it
        return {}
    plain = OmegaConf.to_container(loaded, resolve=False)
    for key in ("dataset", "backbone", "finetune", "optimizer", "augment", "loss", "trainer"):
        try:
            plain[key] = OmegaConf.to_container(loaded[key], resolve=True)
        except Exception:  # noqa: BLE001 - keep the unresolved text
            pass
    return plain if isinstance(plain, dict) else {}


def data_root(stored: dict[str, Any]) -> str:
    data = stored.get("dataset") or {}
    return str(data.get("manifest") or data.get("root"))


def task_of(folder: Path) -> str | None:
    """The command that made a folder (its config's ``task_name``), read without composing the config:
    a card looks at every folder beside its run."""
    try:
        text = (folder / ".hydra" / "config.yaml").read_text(errors="replace")
    except OSError:
        return None
    found = re.search(r"^task_name: *([\w-]+)", text, flags=re.MULTILINE)
    return found.group(1) if found else None


def run_checkpoint(run: RunFolder, ckpt: str | None) -> Path | None:
    if ckpt:
        return Path(ckpt).expanduser().resolve()
    for path in (run.best_checkpoint, run.last_checkpoint):
        if path.is_file():
            return path
    return None


def open_run(folder: str | None, ckpt: str | None) -> RunFolder:
    """The training run a card describes, from ``card.run`` or ``card.ckpt``; one line when it is not one."""
    if not folder and not ckpt:
        raise LungclsError("no run given; pass card.run=outputs/runs/<date>/<time>_<name> or card.ckpt=<run>/checkpoints/best.ckpt")
    if ckpt:
        if not Path(ckpt).expanduser().is_file():
            raise LungclsError(f"card.ckpt={ckpt} is not a file; give a run's checkpoints/best.ckpt")
        run = RunFolder.of_checkpoint(ckpt, "a card describes the run a checkpoint was trained in")
    else:
        run = RunFolder.at(folder)
    task = task_of(run.path)
    if task not in (None, "train"):
        raise LungclsError(f"{run.path} is a lungcls-{task} folder, not a training run; give the training run with "
                           f"card.run=... and this folder with card.evidence='[{run.path}]'")
    if not run.metrics_json.is_file():
        raise LungclsError(f"{run.path} has no metrics.json (the run failed or is still running); a card needs a finished run")
    return run


def split_counts(run: RunFolder) -> tuple[dict[str, Counter], dict[str, Counter]]:
    """Images per split and class, and per split and source (``splits.csv``)."""
    labels: dict[str, Counter] = {}
    sources: dict[str, Counter] = {}
    if not run.splits_csv.is_file():
        return labels, sources
    for row in read_rows(run.splits_csv):
        labels.setdefault(row.get("split", "?"), Counter())[row.get("label", "?")] += 1
        if row.get("source"):
            sources.setdefault(row.get("split", "?"), Counter())[row["source"]] += 1
    return labels, sources


def load_run(folder: str | None, ckpt: str | None) -> Evidence:
    """The run's own evidence (no other folder yet)."""
    run = open_run(folder, ckpt)
    checkpoint = run_checkpoint(run, ckpt)
    labels, sources = split_counts(run)
    overrides_file = run.overrides_yaml
    overrides = []
    if overrides_file.is_file():
        from omegaconf import OmegaConf

        overrides = [str(o) for o in OmegaConf.to_container(OmegaConf.load(overrides_file)) or []]
    return Evidence(
        run=run.path, config=read_config(run.path), overrides=overrides, state=read_state(run.path) or {},
        metrics=read_json(run.metrics_json), checkpoint=checkpoint,
        sha256=file_sha256(checkpoint) if checkpoint is not None and checkpoint.is_file() else None,
        split_counts=labels, source_counts=sources)
