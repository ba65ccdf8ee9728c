"""The ranked-runs chart of ``lungcls-compare``: accuracy per split and missed disease per run.

A bare matplotlib ``Figure`` (no pyplot state, no display), so nothing stays open in long sweeps.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lungcls.comparison.ranking import DEFAULT_MISSED, STAGES, is_number
from lungcls.runs.folders import STATUS_OK
from lungcls.runs.files import replacing


def _label(row: dict, width: int = 48) -> str:
    text = row["overrides"] or row["run"]
    if len(text) > width:
        text = text[: width - 3] + "..."
    prefix = f"{row['rank']}. " if row["rank"] is not None else ""
    suffix = "" if row["status"] == STATUS_OK else f"  [{row['status'].split(':')[0]}]"
    return f"{prefix}{text}{suffix}"


def _accuracy_panel(ax, rows: Sequence[dict], stage: str) -> None:
    """Train / val / test accuracy bars per run, the ranking split's value written out."""
    y = list(range(len(rows)))
    bar = 0.26
    colours = {"train": "#c7d7ea", "val": "#7ea6cf", "test": "#1f4e89"}
    for offset, name in zip((-bar, 0.0, bar), STAGES):
        values = [r.get(f"{name}/acc") for r in rows]
        ax.barh([i + offset for i in y], [v if is_number(v) else 0 for v in values], height=bar,
                color=colours[name], label=f"{name} accuracy")
    for i, row in enumerate(rows):
        value = row.get(f"{stage}/acc")
        if is_number(value):
            ax.text(min(value, 1.0) + 0.01, i + (STAGES.index(stage) - 1) * bar, f"{value:.3f}", va="center", fontsize=8)
        elif row["status"] != STATUS_OK:
            ax.text(0.01, i + bar, row["status"][:60], va="center", fontsize=8, color="#a33")
    ax.set_xlim(0, 1.12)
    ax.set_title("accuracy", fontsize=9)
    ax.set_yticks(y)
    ax.set_yticklabels([_label(r) for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)


def _missed_panel(ax, rows: Sequence[dict], missed: Sequence[str], stage: str) -> None:
    """Disease X-rays predicted Normal per run, stacked by class, the total written out."""
    y = list(range(len(rows)))
    miss_columns = [c for c in (f"{stage}/fn_to_normal/{m}" for m in missed) if c in (rows[0] if rows else {})]
    if not miss_columns and rows:
        miss_columns = [c for c in rows[0] if c.startswith(f"{stage}/fn_to_normal/")]
    palette = ["#c0392b", "#e67e22", "#8e44ad", "#16a085", "#7f8c8d"]
    left = [0.0] * len(rows)
    for k, column in enumerate(miss_columns):
        values = [r.get(column) if is_number(r.get(column)) else 0 for r in rows]
        ax.barh(y, values, left=left, height=0.6, color=palette[k % len(palette)], label=column.rsplit("/", 1)[-1])
        left = [a + b for a, b in zip(left, values)]
    for i, row in enumerate(rows):
        if is_number(row.get("missed")):
            ax.text(left[i], i, f" {row['missed']}", va="center", fontsize=8)
    ax.set_title(f"{stage}: disease X-rays predicted Normal (missed)", fontsize=9)
    ax.set_xlim(0, max(max(left, default=0) * 1.15, 1))
    if miss_columns:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(miss_columns), fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)


def plot_comparison(rows: Sequence[dict], path: Path, missed: Sequence[str] = DEFAULT_MISSED, stage: str = "test",
                    title: str = "") -> Path:
    """Accuracy per split (left) and missed disease per class (right), one line per run, best on top."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, max(3.0, 0.5 * max(len(rows), 1) + 1.6)))
    FigureCanvasAgg(fig)
    ax_acc, ax_miss = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [3, 2]})
    _accuracy_panel(ax_acc, rows, stage)
    _missed_panel(ax_miss, rows, missed, stage)
    fig.suptitle(title or f"Runs, best first: fewest missed on {stage}, then {stage} accuracy", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=120)
    fig.clear()
    return path
