"""The comparison table: one row per run (numbers exactly as in its ``metrics.json``, named as they
are logged), ranked by missed disease then accuracy, written as Markdown and CSV.

The default order is the reference study's criterion: fewest COVID + Viral Pneumonia predicted
Normal on the test split, then highest test accuracy. Runs that failed or never reached the test
split stay in the table, at the bottom, with their status.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lungcls.errors import LungclsError
from lungcls.metrics import flat_metrics, metric_direction, metric_key
from lungcls.comparison.crossval import fold_cross_validation, scored_paths
from lungcls.comparison.generalisation import is_source_fold
from lungcls.console import natural_key
from lungcls.runs.folders import STATUS_OK

STAGES = ("train", "val", "test")
DEFAULT_MISSED = ("COVID", "Viral Pneumonia")


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
    """A split's block; a class with no images there has no missed count (null, as metrics.json
    stores it now; older files stored 0)."""
    block = metrics.get(stage) if isinstance(metrics, dict) else None
    if not isinstance(block, dict):
        return None
    per_class = block.get("per_class") or {}
    fn = {c: None if (per_class.get(c) or {}).get("support") == 0 else n
          for c, n in (block.get("fn_to_normal") or {}).items()}
    return {**block, "fn_to_normal": fn}


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


def _flat(metrics: dict | None, stage: str) -> dict[str, Any]:
    """A run's metrics.json block of one split under the logged metric names (empty if absent)."""
    block = _stage(metrics, stage)
    return flat_metrics(block, stage) if block else {}


def _run_row(run: dict, overrides: list[str], stage: str, classes: list[str], disease: list[str],
             missed: Sequence[str]) -> tuple[dict[str, Any], bool]:
    """One run's row, and whether its `missed` fell back to every disease class."""
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
    flat = {name: _flat(metrics, name) for name in STAGES}
    for name in STAGES:
        row[metric_key(name, "acc")] = flat[name].get(metric_key(name, "acc"))
    for name in ("val", "test"):
        row[metric_key(name, "macro_f1")] = flat[name].get(metric_key(name, "macro_f1"))
    ci = (block or {}).get("ci") or {}
    for metric, key in (("acc", "accuracy"), ("macro_f1", "macro_f1")):  # the ranking split's intervals
        lo_hi = ci.get(key) or [None, None]
        row[metric_key(stage, f"{metric}_lo")], row[metric_key(stage, f"{metric}_hi")] = lo_hi
    for cls in classes:
        row[metric_key(stage, "recall", cls)] = flat[stage].get(metric_key(stage, "recall", cls))
    fn = (block or {}).get("fn_to_normal") or {}
    for cls in disease:
        row[metric_key(stage, "fn_to_normal", cls)] = flat[stage].get(metric_key(stage, "fn_to_normal", cls))
    run_disease = [c for c in fn if c != run["normal_class"]]
    row[metric_key(stage, "fn_to_normal_total")] = _sum(fn[c] for c in run_disease) if block else None
    chosen = [c for c in missed if c in fn]
    fallback = bool(block and not chosen and run_disease)
    row["missed"] = _sum(fn[c] for c in (run_disease if fallback else chosen)) if block else None
    row["status"] = status
    row["card"] = latest_card(run["path"])
    return row, fallback


def latest_card(folder: Any) -> str | None:
    """The run's newest model card page (``model_card.html``, ``-2``...), for the table's link."""
    numbered = [(int(m.group(1) or 1), p) for p in (Path(folder).glob("model_card*.html") if folder else [])
                if (m := re.fullmatch(r"model_card(?:-(\d+))?\.html", p.name))]
    return str(max(numbered)[1].resolve()) if numbered else None


def build_rows(
    runs: Sequence[dict], missed: Sequence[str] = DEFAULT_MISSED, stage: str = "test"
) -> tuple[list[dict], list[str]]:
    """One flat row per run (column name -> value, numbers exactly as in metrics.json) and notes.

    Column names are the logged metric names (`test/acc`, `test/recall/COVID`,
    `test/fn_to_normal/COVID`, from `lungcls.metrics.flat_metrics`), so `--rank-by` takes the same
    names as the W&B dashboard. `missed` sums fn_to_normal over the `missed` classes a run has; a
    run that has none of them counts every class except its normal class, and a note says so.
    """
    if stage not in STAGES:
        raise LungclsError(f"stage must be one of {', '.join(STAGES)}, not {stage!r}")
    classes = _class_names(runs, stage)
    normals = {run["normal_class"] for run in runs}
    disease = [c for c in classes if c not in normals]
    rows, fallback_runs = [], []
    for run, overrides in zip(runs, distinguishing_overrides(runs)):
        row, fallback = _run_row(run, overrides, stage, classes, disease, missed)
        rows.append(row)
        if fallback:
            fallback_runs.append(run["run"])
    notes = []
    if fallback_runs:
        notes.append(
            f"{len(fallback_runs)} run(s) have none of {', '.join(missed)}: their `missed` counts "
            f"every class except the normal one."
        )
    columns: list[str] = []  # every row gets every column, in one order
    for row in rows:
        columns += [c for c in row if c not in columns]
    return [{c: row.get(c) for c in columns} for row in rows], notes


def rank_direction(column: str) -> bool:
    """True when larger is better (the direction ``lungcls.metrics.metric_direction`` gives)."""
    return metric_direction(column) == "max"


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not (
        isinstance(value, float) and math.isnan(value)
    )


def _sort_key(row: dict, column: str, descending: bool) -> tuple:
    value = row.get(column)
    if is_number(value):
        return (0, -value if descending else value)
    if value is None or value == "":
        return (2, 0)
    return (1, natural_key(str(value)))


def _test_set_notes(runs: Sequence[dict], rows: Sequence[dict], stage: str, unranked: set[str]) -> list[str]:
    """Warn when the ranked runs were scored on different test images: their numbers (counts above
    all) are then not comparable, whatever the ranking says."""
    if stage != "test":
        return []
    by_name = {r["run"]: r for r in runs}
    sets: dict[frozenset, list[str]] = {}
    for row in rows:
        if row["status"] != STATUS_OK or row["run"] in unranked:
            continue
        members = row["fold_runs"].split(" ") if row.get("fold_runs") else [row["run"]]
        paths = frozenset(p for m in members if m in by_name for p in scored_paths(by_name[m]))
        sets.setdefault(paths, []).append(row["run"])
    if len(sets) <= 1:
        return []
    sizes = ", ".join(f"{len(k)} images ({len(v)} run(s))" for k, v in sets.items())
    return [f"WARNING: the ranked runs were scored on {len(sets)} different test sets ({sizes}); "
            "their accuracies and missed-disease counts are not directly comparable: compare runs on the same data "
            "and split (same dataset.root, classes, split_seed and fractions)."]


def _held_out_note(held_out: set[str]) -> list[str]:
    if not held_out:
        return []
    return [f"{len(held_out)} leave-one-source-out run(s) are listed after the ranked runs, without a rank: each is "
            "tested on another source's images, so their counts and accuracies are not comparable with each other or "
            "with a random split's; generalisation.csv sets each beside its in-source result."]


def rank_runs(
    runs: Sequence[dict],
    rank_by: str | None = None,
    missed: Sequence[str] = DEFAULT_MISSED,
    stage: str = "test",
) -> tuple[list[dict], list[str]]:
    """Rows in rank order, and notes for the report.

    Default: fewest `missed` on `stage`, then highest `stage` accuracy, then macro F1. With
    `rank_by` (any column; `COLUMN:asc` or `COLUMN:desc` to force the direction) that column
    decides first, the default criteria break ties. Leave-one-source-out runs (each tested on
    another source), then runs without `stage` metrics, come after the ranked ones and failed runs
    last; none of them gets a rank number.
    """
    rows, notes = build_rows(runs, missed=missed, stage=stage)
    if not rows:
        return rows, notes
    rows, fold_notes = fold_cross_validation(runs, rows, stage, missed)
    held_out = {r["run"] for r in runs if is_source_fold(r)}
    notes += fold_notes + _test_set_notes(runs, rows, stage, held_out) + _held_out_note(held_out)
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
            return 1 if row["run"] in held_out else 0
        return 2 if str(row["status"]).startswith("no ") else 3  # no test metrics, then failed / incomplete

    def key(row: dict) -> tuple:
        if group(row):  # unranked: in folder order (held-out sources in fold order)
            return (group(row), natural_key(row["run"]))
        return (group(row), *(_sort_key(row, c, d) for c, d in keys), natural_key(row["run"]))

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
        # an interval's bounds (`X_lo`, `X_hi`) and a fold spread (`X_sd`) are shown in X's cell:
        # `0.9300 [0.9100, 0.9500]`, `0.9300 ± 0.0120`
        columns = [c for c in rows[0] if not (c.endswith(("_lo", "_hi", "_sd")) and c[:-3] in rows[0])]
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "|".join("---:" if _numeric_column(rows, c) else "---" for c in columns) + "|")
        for row in rows:
            lines.append("| " + " | ".join(_cell_with_interval(row, c) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _cell_with_interval(row: dict, column: str) -> str:
    lo, hi, sd = row.get(f"{column}_lo"), row.get(f"{column}_hi"), row.get(f"{column}_sd")
    if column == "card" and row.get(column):
        return f"[card](<{row[column]}>)"
    text = _cell_md(row.get(column))
    if is_number(row.get(column)) and is_number(sd):
        text += f" ± {_cell_md(sd)}"
    if is_number(row.get(column)) and is_number(lo) and is_number(hi):
        text += f" [{_cell_md(lo)}, {_cell_md(hi)}]"
    return text


def _numeric_column(rows: Sequence[dict], column: str) -> bool:
    values = [r[column] for r in rows if r[column] is not None]
    return bool(values) and all(is_number(v) for v in values)


def to_csv(rows: Sequence[dict]) -> str:
    """CSV with the exact numbers from metrics.json; an undefined or missing value is empty."""
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buffer.getvalue()
