"""Finding a card's evidence folders and matching each to the run: named ones (``card.evidence``)
must be about this run's checkpoint or data, or the card stops with one line; folders found beside
the run that are about something else are passed over with a note."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lungcls.card.evidence import (EVIDENCE_FILES, Evidence, Report, data_root, load_run, read_config, read_json,
                                   read_rows, task_of)
from lungcls.errors import LungclsError

FIGURES = ("methods.png", "gradcam_per_class.png", "gradcam_paths.png", "gradcam_misses.png")


class Mismatch(Exception):
    """Evidence about another checkpoint or other data (refused when named, passed over when found)."""


def short(sha: str | None) -> str:
    return (sha or "none")[:12]


def add_evaluation(evid: Evidence, folder: Path) -> None:
    metrics = read_json(folder / "metrics.json")
    if "trainable_params" in metrics and "checkpoint_sha256" not in metrics:
        raise Mismatch(f"{folder} is a training run, not an evaluation")
    sha = metrics.get("checkpoint_sha256")
    if evid.sha256 is None or sha != evid.sha256:
        raise Mismatch(f"{folder} evaluated another checkpoint (SHA-256 {short(sha)}..., this run's checkpoint "
                       f"{short(evid.sha256)}...)")
    evid.evaluations.append((folder, metrics))


def add_report(evid: Evidence, folder: Path) -> None:
    record = folder / "checkpoints.json"
    if not record.is_file():
        raise Mismatch(f"{folder} does not record its checkpoints' SHA-256 (a report from an earlier lungcls); "
                       "re-run lungcls-report")
    import json

    try:
        models = json.loads(record.read_text())
    except (OSError, ValueError):
        raise LungclsError(f"{record} is not valid JSON; re-run lungcls-report") from None
    names = [m.get("model") for m in models if isinstance(m, dict) and m.get("sha256") == evid.sha256]
    if evid.sha256 is None or not names:
        raise Mismatch(f"{folder} explained other checkpoints (SHA-256 "
                       f"{', '.join(short(m.get('sha256')) for m in models if isinstance(m, dict))}..., this run's "
                       f"checkpoint {short(evid.sha256)}...)")
    rows = [r for r in read_rows(folder / "methods.csv") if r.get("model") == names[0]]
    report_keys = read_config(folder).get("report") or {}
    threshold = report_keys.get("sanity_threshold")
    figure = next((folder / f for f in FIGURES if (folder / f).is_file()), None)
    evid.reports.append(Report(folder, names[0], rows, float(threshold) if threshold is not None else None, figure))


def add_audit(evid: Evidence, folder: Path, named: bool) -> None:
    audit_doc = read_json(folder / "audit.json")
    root, own = data_root(read_config(folder)), data_root(evid.config)
    if root != own:
        if not named:
            raise Mismatch(f"{folder} audited other data ({root})")
        evid.notes.append(f"The audit in {folder.name} read {root}; this run trained on {own}.")
    evid.audits.append((folder, audit_doc))


def add_generalisation(evid: Evidence, folder: Path, named: bool) -> None:
    rows = read_rows(folder / "generalisation.csv")
    run = evid.run.as_posix()
    mine = [r for r in rows if r.get("in_source_run") and run.endswith("/" + r["in_source_run"].strip("/"))]
    if not mine:
        if not named:
            raise Mismatch(f"{folder} compares other runs")
        mine = rows
        evid.notes.append(f"The leave-one-source-out rows of {folder.name} name another in-source run "
                        f"({', '.join(sorted({r.get('in_source_run') or '?' for r in rows}))}); they describe the setting, "
                        "not this run.")
    evid.generalisation.append((folder, mine))


def add_folder(evid: Evidence, folder: Path, named: bool) -> bool:
    """Read every kind of evidence ``folder`` holds; whether it held any."""
    found = False
    for name, add in (("audit.json", lambda: add_audit(evid, folder, named)),
                      ("generalisation.csv", lambda: add_generalisation(evid, folder, named)),
                      ("methods.csv", lambda: add_report(evid, folder)),
                      ("metrics.json", lambda: add_evaluation(evid, folder))):
        if (folder / name).is_file():
            found = True
            add()
    return found


def add_named(evid: Evidence, given: str) -> None:
    folder = Path(given).expanduser().resolve()
    if not folder.is_dir():
        raise LungclsError(f"card.evidence: {given} is not a folder; give evaluation, report, audit or comparison folders")
    try:
        found = add_folder(evid, folder, named=True)
    except Mismatch as e:
        raise LungclsError(f"card.evidence: {e}; name only evidence about this run") from None
    if not found:
        raise LungclsError(f"card.evidence: {given} holds none of {', '.join(EVIDENCE_FILES)}; give the folder a "
                           "lungcls-evaluate, -report, -audit or -compare run left")


def add_beside(evid: Evidence, named: set[Path]) -> None:
    """Folders next to the run (and the run itself, where lungcls-compare may have written)."""
    candidates = [evid.run] + sorted(p for p in evid.run.parent.iterdir() if p.is_dir() and p != evid.run)
    passed = []
    for folder in candidates:
        if folder.resolve() in named or not any((folder / f).is_file() for f in EVIDENCE_FILES):
            continue
        if folder != evid.run and task_of(folder) == "train":
            continue  # another training run
        try:
            if folder == evid.run:
                if (folder / "generalisation.csv").is_file():
                    add_generalisation(evid, folder, named=False)
            else:
                add_folder(evid, folder, named=False)
        except Mismatch as e:
            passed.append(str(e))
    if passed:
        evid.notes.append(f"Passed over {len(passed)} folder(s) beside the run that are about something else "
                        f"(first: {passed[0]}).")


def gather(run: str | None, ckpt: str | None, folders: Sequence[str], beside: bool = True) -> Evidence:
    """The run's evidence, the named folders', and (with ``beside``) that of the folders next to it."""
    evid = load_run(run, ckpt)
    for given in folders:
        add_named(evid, given)
    if beside:
        add_beside(evid, {Path(g).expanduser().resolve() for g in folders})
    return evid
