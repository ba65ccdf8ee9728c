"""Rank finished runs side by side from their run folders, without any logging service.

A sweep leaves one run folder per job (`.hydra/`, `metrics.json`). `lungcls-compare` reads them and
writes `comparison.md`, `comparison.csv` and `comparison.png`: one row per run with what set it
apart (the overrides that differ between the compared runs), accuracy per split, per-class recall
and missed disease (disease X-rays predicted Normal). The default order is the reference study's
criterion: fewest COVID + Viral Pneumonia predicted Normal on the test split, then highest test
accuracy. Runs that failed or never reached the test split stay in the table, at the bottom, with
their status.

    lungcls-compare outputs/multirun/2026-01-31/10-00-00
    lungcls-compare runs_a/ runs_b/ --out report/ --rank-by val/macro_f1 --stage val
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lungcls.errors import LungclsError

PROG = "lungcls-compare"
STAGES = ("train", "val", "test")
DEFAULT_MISSED = ("COVID", "Viral Pneumonia")
OUTPUT_NAMES = ("comparison.md", "comparison.csv", "comparison.png")
# Folders that never hold run folders; skipping them keeps the walk fast on big sweeps.
_SKIP_DIRS = {"checkpoints", "wandb", "lightning_logs", "__pycache__"}

STATUS_OK = "ok"


# --------------------------------------------------------------------------------------------
# Reading run folders
# --------------------------------------------------------------------------------------------


def _natural_key(text: str) -> list[Any]:
    """Sort `2` before `10` (Hydra numbers jobs 0, 1, ..., 10)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def find_run_folders(folder: Path) -> list[Path]:
    """`folder` itself when it is a run folder (has `.hydra/`), else every run folder below it."""
    if (folder / ".hydra").is_dir():
        return [folder]
    found: list[Path] = []
    for root, dirs, _files in os.walk(folder):
        if ".hydra" in dirs:
            found.append(Path(root))
            dirs[:] = []  # run folders do not nest
            continue
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS]
    return sorted(found, key=lambda p: _natural_key(str(p)))


def _read_yaml(path: Path) -> Any:
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
    config = _read_yaml(folder / ".hydra" / "config.yaml")
    overrides = _read_yaml(folder / ".hydra" / "overrides.yaml")
    if not isinstance(config, dict):
        config = {}
    if not isinstance(overrides, list):
        overrides = []

    metrics: dict | None = None
    status = STATUS_OK
    metrics_file = folder / "metrics.json"
    error_file = folder / "error.txt"
    if metrics_file.is_file():
        try:
            loaded = json.loads(metrics_file.read_text())
            metrics = loaded if isinstance(loaded, dict) else None
            if metrics is None:
                status = "failed: metrics.json is not a JSON object"
        except (OSError, ValueError) as err:
            status = f"failed: unreadable metrics.json ({type(err).__name__})"
    elif error_file.is_file():
        status = f"failed: {_first_line(error_file) or 'see error.txt'}"
    else:
        status = "failed: no metrics.json (crashed, killed or still running)"

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
        found = find_run_folders(folder)
        if not found:
            raise LungclsError(f"no run folders (folders with .hydra/) under {folder}")
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
# Rows and ranking
# --------------------------------------------------------------------------------------------


def _split_override(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def distinguishing_overrides(runs: Sequence[dict]) -> list[list[str]]:
    """Per run, the overrides whose value is not the same in every compared run.

    With a single run nothing differs, so all of its overrides are shown.
    """
    if len(runs) == 1:
        return [list(runs[0]["overrides"])]
    parsed = [dict(_split_override(o) for o in run["overrides"]) for run in runs]
    keys = {k for p in parsed for k in p}
    varying = {k for k in keys if len({p.get(k) for p in parsed}) > 1}
    return [
        [o for o in run["overrides"] if _split_override(o)[0] in varying] for run in runs
    ]


def _stage(metrics: dict | None, stage: str) -> dict | None:
    block = metrics.get(stage) if isinstance(metrics, dict) else None
    return block if isinstance(block, dict) else None


def _class_names(runs: Sequence[dict], stage: str) -> list[str]:
    names: list[str] = []
    for run in runs:
        for key in (stage, *STAGES):
            block = _stage(run["metrics"], key)
            if block:
                for name in block.get("class_names") or list((block.get("per_class") or {})):
                    if name not in names:
                        names.append(name)
    return names


def _sum(values: Iterable[Any]) -> int | None:
    present = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return sum(present) if present else None


def build_rows(
    runs: Sequence[dict], missed: Sequence[str] = DEFAULT_MISSED, stage: str = "test"
) -> tuple[list[dict], list[str]]:
    """One flat row per run (column name -> value, numbers exactly as in metrics.json) and notes.

    Column names follow the logged metric names (`test/acc`, `test/recall/COVID`,
    `test/fn_to_normal/COVID`), so `--rank-by` takes the same names as the W&B dashboard.
    `missed` sums fn_to_normal over the `missed` classes a run has; a run that has none of them
    counts every class except its normal class, and a note says so.
    """
    if stage not in STAGES:
        raise LungclsError(f"stage must be one of {', '.join(STAGES)}, not {stage!r}")
    classes = _class_names(runs, stage)
    normals = {run["normal_class"] for run in runs}
    disease = [c for c in classes if c not in normals]
    notes: list[str] = []
    fallback_runs: list[str] = []
    shown = distinguishing_overrides(runs)

    rows = []
    for run, overrides in zip(runs, shown):
        metrics = run["metrics"]
        block = _stage(metrics, stage)
        status = run["status"]
        if status == STATUS_OK and block is None:
            status = f"no {stage} metrics"
        row: dict[str, Any] = {
            "rank": None,
            "run": run["run"],
            "overrides": " ".join(overrides),
            "backbone": run["backbone"],
            "finetune": run["finetune"],
            "trainable_params": metrics.get("trainable_params") if metrics else None,
        }
        for name in STAGES:
            row[f"{name}/acc"] = (_stage(metrics, name) or {}).get("accuracy")
        for name in ("val", "test"):
            row[f"{name}/macro_f1"] = (_stage(metrics, name) or {}).get("macro_f1")
        per_class = (block or {}).get("per_class") or {}
        for cls in classes:
            row[f"{stage}/recall/{cls}"] = (per_class.get(cls) or {}).get("recall")
        fn = (block or {}).get("fn_to_normal") or {}
        run_disease = [c for c in fn if c != run["normal_class"]]
        for cls in disease:
            row[f"{stage}/fn_to_normal/{cls}"] = fn.get(cls)
        row[f"{stage}/fn_to_normal_total"] = _sum(fn[c] for c in run_disease) if block else None
        chosen = [c for c in missed if c in fn]
        if block and not chosen and run_disease:
            chosen = run_disease
            fallback_runs.append(run["run"])
        row["missed"] = _sum(fn[c] for c in chosen) if block else None
        row["status"] = status
        rows.append(row)

    if fallback_runs:
        notes.append(
            f"{len(fallback_runs)} run(s) have none of {', '.join(missed)}: their `missed` counts "
            f"every class except the normal one."
        )
    # every row gets every column, in one order
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    rows = [{c: row.get(c) for c in columns} for row in rows]
    return rows, notes


def rank_direction(column: str) -> bool:
    """True when larger is better: accuracy, F1, recall, precision, specificity."""
    name = column.lower()
    if any(word in name for word in ("fn_to_normal", "missed", "loss")):
        return False
    return any(word in name for word in ("acc", "f1", "recall", "precision", "specificity"))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not (
        isinstance(value, float) and math.isnan(value)
    )


def _sort_key(row: dict, column: str, descending: bool) -> tuple:
    value = row.get(column)
    if _is_number(value):
        return (0, -value if descending else value)
    if value is None or value == "":
        return (2, 0)
    return (1, _natural_key(str(value)))


def rank_runs(
    runs: Sequence[dict],
    rank_by: str | None = None,
    missed: Sequence[str] = DEFAULT_MISSED,
    stage: str = "test",
) -> tuple[list[dict], list[str]]:
    """Rows in rank order, and notes for the report.

    Default: fewest `missed` on `stage`, then highest `stage` accuracy, then macro F1. With
    `rank_by` (any column; `COLUMN:asc` or `COLUMN:desc` to force the direction) that column
    decides first, the default criteria break ties. Runs without `stage` metrics come after the
    ranked ones and failed runs last; neither gets a rank number.
    """
    rows, notes = build_rows(runs, missed=missed, stage=stage)
    if not rows:
        return rows, notes
    keys: list[tuple[str, bool]] = []
    if rank_by:
        column, _, direction = rank_by.rpartition(":")
        if not column or direction not in ("asc", "desc"):
            column, direction = rank_by, ""
        if column not in rows[0]:
            available = ", ".join(c for c in rows[0] if c != "rank")
            raise LungclsError(f"no column {column!r} to rank by (columns: {available})")
        descending = direction == "desc" if direction else rank_direction(column)
        keys.append((column, descending))
    keys += [("missed", False), (f"{stage}/acc", True), (f"{stage}/macro_f1", True)]

    def group(row: dict) -> int:
        if row["status"] == STATUS_OK:
            return 0
        return 2 if str(row["status"]).startswith("failed") else 1

    def key(row: dict) -> tuple:
        return (group(row), *(_sort_key(row, c, d) for c, d in keys), _natural_key(row["run"]))

    ordered = sorted(rows, key=key)
    rank = 0
    for row in ordered:
        if group(row) == 0:
            rank += 1
            row["rank"] = rank
    return ordered, notes


# --------------------------------------------------------------------------------------------
# Writing the table and the figure
# --------------------------------------------------------------------------------------------


def _cell_md(value: Any) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(rows: Sequence[dict], title: str = "", notes: Sequence[str] = ()) -> str:
    """A Markdown report: title, notes, then the table (floats to 4 decimals; CSV keeps all)."""
    lines = []
    if title:
        lines += [f"# {title}", ""]
    for note in notes:
        lines.append(f"- {note}")
    if notes:
        lines.append("")
    if rows:
        columns = list(rows[0])
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "|".join("---:" if _numeric_column(rows, c) else "---" for c in columns) + "|")
        for row in rows:
            lines.append("| " + " | ".join(_cell_md(row[c]) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _numeric_column(rows: Sequence[dict], column: str) -> bool:
    values = [r[column] for r in rows if r[column] is not None]
    return bool(values) and all(_is_number(v) for v in values)


def to_csv(rows: Sequence[dict]) -> str:
    """CSV with the exact numbers from metrics.json; an undefined or missing value is empty."""
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buffer.getvalue()


def _label(row: dict, width: int = 48) -> str:
    text = row["overrides"] or row["run"]
    if len(text) > width:
        text = text[: width - 3] + "..."
    prefix = f"{row['rank']}. " if row["rank"] is not None else ""
    suffix = "" if row["status"] == STATUS_OK else f"  [{row['status'].split(':')[0]}]"
    return f"{prefix}{text}{suffix}"


def plot_comparison(
    rows: Sequence[dict],
    path: Path,
    missed: Sequence[str] = DEFAULT_MISSED,
    stage: str = "test",
    title: str = "",
) -> None:
    """Accuracy per split (left) and missed disease per class (right), one line per run, best on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(rows), 1)
    height = max(3.0, 0.5 * n + 1.6)
    fig, (ax_acc, ax_miss) = plt.subplots(
        1, 2, figsize=(13, height), sharey=True, gridspec_kw={"width_ratios": [3, 2]}
    )
    y = list(range(len(rows)))
    labels = [_label(r) for r in rows]

    bar = 0.26
    colours = {"train": "#c7d7ea", "val": "#7ea6cf", "test": "#1f4e89"}
    for offset, name in zip((-bar, 0.0, bar), STAGES):
        values = [r.get(f"{name}/acc") for r in rows]
        ax_acc.barh(
            [i + offset for i in y],
            [v if _is_number(v) else 0 for v in values],
            height=bar,
            color=colours[name],
            label=f"{name} accuracy",
        )
    for i, row in enumerate(rows):
        value = row.get(f"{stage}/acc")
        if _is_number(value):
            ax_acc.text(min(value, 1.0) + 0.01, i + (STAGES.index(stage) - 1) * bar, f"{value:.3f}",
                        va="center", fontsize=8)
        elif row["status"] != STATUS_OK:
            ax_acc.text(0.01, i + bar, row["status"][:60], va="center", fontsize=8, color="#a33")
    ax_acc.set_xlim(0, 1.12)
    ax_acc.set_title("accuracy", fontsize=9)
    ax_acc.set_yticks(y)
    ax_acc.set_yticklabels(labels, fontsize=8)
    ax_acc.invert_yaxis()
    ax_acc.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, fontsize=8, frameon=False)
    ax_acc.grid(axis="x", alpha=0.3)

    miss_columns = [c for c in (f"{stage}/fn_to_normal/{m}" for m in missed) if c in (rows[0] if rows else {})]
    if not miss_columns and rows:
        miss_columns = [c for c in rows[0] if c.startswith(f"{stage}/fn_to_normal/")]
    palette = ["#c0392b", "#e67e22", "#8e44ad", "#16a085", "#7f8c8d"]
    left = [0.0] * len(rows)
    for k, column in enumerate(miss_columns):
        values = [r.get(column) if _is_number(r.get(column)) else 0 for r in rows]
        ax_miss.barh(y, values, left=left, height=0.6, color=palette[k % len(palette)],
                     label=column.rsplit("/", 1)[-1])
        left = [a + b for a, b in zip(left, values)]
    for i, row in enumerate(rows):
        if _is_number(row.get("missed")):
            ax_miss.text(left[i], i, f" {row['missed']}", va="center", fontsize=8)
    ax_miss.set_title(f"{stage}: disease X-rays predicted Normal (missed)", fontsize=9)
    ax_miss.set_xlim(0, max(max(left, default=0) * 1.15, 1))
    if miss_columns:
        ax_miss.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(miss_columns),
                       fontsize=8, frameon=False)
    ax_miss.grid(axis="x", alpha=0.3)

    fig.suptitle(title or f"Runs, best first: fewest missed on {stage}, then {stage} accuracy", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _optuna_note(dirs: Sequence[Path]) -> list[str]:
    notes = []
    for folder in dirs:
        results = folder / "optimization_results.yaml"
        if results.is_file():
            data = _read_yaml(results) or {}
            if "best_value" in data:
                notes.append(
                    f"Optuna ({folder.name}): best value {data['best_value']} with "
                    f"{data.get('best_params')}"
                )
    return notes


def compare(
    dirs: Sequence[str | Path],
    out: str | Path | None = None,
    rank_by: str | None = None,
    missed: Sequence[str] = DEFAULT_MISSED,
    stage: str = "test",
) -> tuple[str, list[Path]]:
    """Collect, rank and write the three files; returns the Markdown text and the paths written."""
    dirs = [Path(d) for d in dirs]
    runs = collect_runs(dirs)
    rows, notes = rank_runs(runs, rank_by=rank_by, missed=missed, stage=stage)
    if out is None:
        out = dirs[0] if len(dirs) == 1 else Path.cwd()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    ok = sum(1 for r in rows if r["status"] == STATUS_OK)
    order = (
        f"`{rank_by}`, then fewest missed" if rank_by else "fewest missed"
    ) + f" ({' + '.join(missed)} predicted Normal) on {stage}, then {stage} accuracy"
    header = [
        f"{len(rows)} run(s) from {', '.join(str(d) for d in dirs)}; {ok} ranked by {order}.",
    ]
    if ok < len(rows):
        header.append(f"{len(rows) - ok} run(s) without {stage} metrics or failed: listed last.")
    text = to_markdown(rows, title="Run comparison", notes=header + notes + _optuna_note(dirs))

    paths = [out / name for name in OUTPUT_NAMES]
    paths[0].write_text(text)
    paths[1].write_text(to_csv(rows))
    plot_comparison(rows, paths[2], missed=missed, stage=stage, title=f"Runs, best first: {order}")
    return text, paths


def main(argv: Sequence[str] | None = None) -> int:
    """`lungcls-compare DIR... [--out DIR] [--rank-by KEY] [--missed CLASS...] [--stage S]`."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Rank run folders (a multirun folder, folders of runs, or run folders) and "
        "write comparison.md, comparison.csv and comparison.png.",
        epilog="example: lungcls-compare outputs/multirun/2026-01-31/10-00-00 --rank-by val/macro_f1",
    )
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="multirun folder(s) or run folder(s)")
    parser.add_argument(
        "--out", default=None,
        help="folder for the three files (default: the single DIR given, else the current folder)",
    )
    parser.add_argument(
        "--rank-by", default=None, metavar="COLUMN",
        help="rank by this column first (e.g. val/macro_f1, test/recall/COVID, missed); accuracy, "
        "F1 and recall rank high first, fn_to_normal, missed and loss low first; "
        "append :asc or :desc to choose",
    )
    parser.add_argument(
        "--missed", nargs="+", default=list(DEFAULT_MISSED), metavar="CLASS",
        help="disease classes whose X-rays predicted Normal count as missed "
        "(default: COVID 'Viral Pneumonia')",
    )
    parser.add_argument(
        "--stage", choices=STAGES, default="test", help="split the ranking uses (default: test)"
    )
    args = parser.parse_args(argv)
    try:
        text, paths = compare(
            args.dirs, out=args.out, rank_by=args.rank_by, missed=args.missed, stage=args.stage
        )
    except LungclsError as err:
        parser.exit(2, f"{PROG}: error: {err}\n")
    print(text, end="")
    print(f"\nWrote {', '.join(str(p) for p in paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
