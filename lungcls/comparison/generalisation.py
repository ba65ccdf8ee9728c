"""Will it work at another hospital? Leave-one-source-out runs folded into ``generalisation.csv``.

A model scored on a random split of its own sources is scored on the hospitals it trained on; the
literature's estimate for a new hospital holds whole sources out (Zech et al. 2018, DeGrave et al.
2021). ``dataset.folds=source`` runs (one per held-out source) give one row each: the source's
images, accuracy and macro F1 with their 95% intervals, recall and ``fn_to_normal`` per class, beside
the same setting's in-source result (a run with a random split whose composed config is the same
but for ``dataset.folds``/``dataset.fold``, however its overrides were written) and the gap. A
class with no training images when its source is held out, or no test images in it, gets null
metrics and one line saying so; ``missed`` sums the missed classes that have a count.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lungcls.comparison.settings import FOLD_KEYS, setting_key
from lungcls.runs.folders import STATUS_OK


def _family(overrides: Sequence[str]) -> tuple[str, ...]:
    return tuple(sorted(o for o in overrides if o.lstrip("+~").split("=", 1)[0] not in FOLD_KEYS))


def _dataset(run: dict) -> dict:
    return (run.get("config") or {}).get("dataset") or {}


def is_source_fold(run: dict) -> bool:
    return _dataset(run).get("folds") == "source"


def _split_rows(run: dict) -> list[dict[str, str]]:
    path = Path(run["path"]) / "splits.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _held_out(run: dict, splits: list[dict[str, str]]) -> str:
    names = sorted({r.get("source") or "" for r in splits if r["split"] == "test"} - {""})
    return names[0] if len(names) == 1 else str(_dataset(run).get("fold"))


def _ci(block: dict, key: str) -> tuple[Any, Any]:
    ci = (block.get("ci") or {}).get(key)
    return (ci[0], ci[1]) if isinstance(ci, (list, tuple)) and len(ci) == 2 else (None, None)


def fold_record(run: dict, missed: Sequence[str]) -> tuple[dict[str, Any], str | None]:
    """One held-out source's row, and the line naming its untrained or untested classes."""
    block = (run.get("metrics") or {}).get("test") or {}
    splits = _split_rows(run)
    trained = Counter(r["label"] for r in splits if r["split"] == "train")
    names = list(block.get("class_names") or [])
    source = _held_out(run, splits)
    per_class = block.get("per_class") or {}
    untrained = [c for c in names if not trained.get(c)]
    untested = [c for c in names if not (per_class.get(c) or {}).get("support")]
    acc_lo, acc_hi = _ci(block, "accuracy")
    f1_lo, f1_hi = _ci(block, "macro_f1")
    row: dict[str, Any] = {
        "source": source, "run": run["run"], "images": sum((per_class.get(c) or {}).get("support") or 0 for c in names),
        "accuracy": block.get("accuracy"), "accuracy_lo": acc_lo, "accuracy_hi": acc_hi,
        "macro_f1": block.get("macro_f1"), "macro_f1_lo": f1_lo, "macro_f1_hi": f1_hi,
    }
    fn = block.get("fn_to_normal") or {}
    for c in names:
        known = c not in untrained and c not in untested
        row[f"recall/{c}"] = (per_class.get(c) or {}).get("recall") if known else None
        row[f"fn_to_normal/{c}"] = fn.get(c) if known and c in fn else None
    for alpha, cap in ((run.get("metrics") or {}).get("miss_rate_at_held_out_source") or {}).items():
        row[f"miss_rate_cap/{alpha}"] = cap["miss_rate"]  # achieved at the held-out source by a cap calibrated on the others
    counted = [v for c in missed if (v := row.get(f"fn_to_normal/{c}")) is not None]
    row["missed"] = sum(counted) if counted else None  # over the missed classes with a count; none: null
    parts = []
    if untrained:
        parts.append(f"no training images of {', '.join(untrained)}")
    if untested:
        parts.append(f"no test images of {', '.join(untested)}")
    line = f"held out {source} ({run['run']}): " + "; ".join(parts) + ": their metrics are null" if parts else None
    return row, line


def _in_source(runs: Sequence[dict], key: str) -> dict | None:
    for run in runs:
        if run["status"] == STATUS_OK and not _dataset(run).get("folds") and setting_key(run) == key:
            return run
    return None


def generalisation_rows(runs: Sequence[dict], missed: Sequence[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per held-out source of every leave-one-source-out setting, with the setting's
    in-source accuracy (``in_source_accuracy``, null when no such run was given) and the ``gap``."""
    rows: list[dict[str, Any]] = []
    lines: list[str] = []
    names: dict[str, str] = {}  # setting -> how its first fold's overrides name it
    for run in runs:
        if not is_source_fold(run):
            continue
        if run["status"] != STATUS_OK:
            lines.append(f"{run['run']}: leave-one-source-out run without test metrics ({run['status']}): left out")
            continue
        key = setting_key(run)
        name = names.setdefault(key, " ".join(_family(run["overrides"])) or "(defaults)")
        row, line = fold_record(run, missed)
        own = _in_source(runs, key)
        in_acc = ((own.get("metrics") or {}).get("test") or {}).get("accuracy") if own else None
        lo, hi = _ci(((own.get("metrics") or {}).get("test") or {}) if own else {}, "accuracy")
        row = {"setting": name, **row, "in_source_run": own["run"] if own else None,
               "in_source_accuracy": in_acc, "in_source_accuracy_lo": lo, "in_source_accuracy_hi": hi,
               "gap": in_acc - row["accuracy"] if in_acc is not None and row["accuracy"] is not None else None}
        rows.append(row)
        if line:
            lines.append(line)
    rows.sort(key=lambda r: (r["setting"], r["source"]))
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    return [{c: row.get(c) for c in columns} for row in rows], lines


def _cell(value: Any) -> str:
    return "n/a" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))


def _interval(row: dict, key: str) -> str:
    if row.get(key) is None:
        return "n/a"
    lo, hi = row.get(f"{key}_lo"), row.get(f"{key}_hi")
    return f"{row[key]:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else f"{row[key]:.3f}"


def markdown_section(rows: Sequence[dict[str, Any]], lines: Sequence[str]) -> str:
    """The comparison's "Leave-one-source-out" section: a table per setting and the per-fold lines."""
    out = ["", "## Leave-one-source-out (generalisation.csv)", "",
           "Each row tests on one source after training on the others; in-source = the same setting on a random split."]
    for setting in dict.fromkeys(r["setting"] for r in rows):
        group = [r for r in rows if r["setting"] == setting]
        classes = [c.split("/", 1)[1] for c in group[0] if c.startswith("recall/")]
        header = ["held-out source", "images", "accuracy [95% CI]", "macro F1 [95% CI]",
                  *[f"recall {c}" for c in classes], "missed", "in-source accuracy", "gap"]
        out += ["", f"Setting: `{setting}`", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in group:
            cells = [r["source"], r["images"], _interval(r, "accuracy"), _interval(r, "macro_f1"),
                     *[_cell(r[f"recall/{c}"]) for c in classes], _cell(r["missed"]),
                     _interval(r, "in_source_accuracy"), _cell(r["gap"])]
            out.append("| " + " | ".join(str(c) for c in cells) + " |")
    if lines:
        out += [""] + [f"- {line}" for line in lines]
    return "\n".join(out) + "\n"
