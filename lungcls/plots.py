"""Figures of a run and of a comparison: the confusion matrix, and the ranked-runs chart.

Both use a bare matplotlib ``Figure`` (no pyplot state, no display), so nothing stays open in
long sweeps or servers. (Grad-CAM figures live in ``lungcls.explain.figures``.)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lungcls.metrics.confusion import _as_confusion, _check_class_names
from lungcls.ranking import DEFAULT_MISSED, STAGES, is_number
from lungcls.runs import STATUS_OK


def plot_confusion_matrix(
    confusion: Any,
    class_names: Sequence[str],
    path: str | Path,
    title: str | None = None,
) -> Path:
    """Write a PNG with the counts and the row-normalised matrix (each row's diagonal = recall).

    Both panels matter: counts show how many images a cell is about, row shares make classes of
    different sizes comparable. Rows with no images show "-" in the normalised panel. Uses
    a bare `Figure` (no pyplot, no display), so nothing stays open. Returns the written path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = _check_class_names(class_names)
    cm = _as_confusion(confusion, len(names))
    k = len(names)
    support = cm.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(support > 0, cm / np.maximum(support, 1), np.nan)

    side = max(4.0, 1.1 * k + 2.5)
    fig = Figure(figsize=(2 * side + 1.0, side + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    panels = [
        (cm.astype(float), "counts", lambda v: f"{int(v)}", None),
        (share, "row-normalised (recall per row)", lambda v: f"{v:.2f}", (0.0, 1.0)),
    ]
    for ax, (data, sub, fmt, lim) in zip(axes, panels):
        vmin, vmax = lim if lim else (0.0, max(float(np.nanmax(data)) if data.size else 0.0, 1.0))
        im = ax.imshow(np.ma.masked_invalid(data), cmap="Blues", vmin=vmin, vmax=vmax)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax.set_title(sub)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_xticks(range(k))
        ax.set_yticks(range(k))
        ax.set_xticklabels(names, rotation=45, ha="right", rotation_mode="anchor")
        ax.set_yticklabels(names)
        mid = (vmin + vmax) / 2.0
        for i in range(k):
            for j in range(k):
                v = data[i, j]
                if np.isnan(v):  # a true class with no images: no share to show
                    ax.text(j, i, "-", ha="center", va="center", fontsize=9, color="gray")
                    continue
                ax.text(j, i, fmt(v), ha="center", va="center", fontsize=9,
                        color="white" if v > mid else "black")
    if title:
        fig.suptitle(title)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    fig.clear()
    return out


def plot_reliability(probs: Any, labels: Any, path: str | Path, bins: int = 15, title: str | None = None) -> Path:
    """Reliability diagram: accuracy against confidence per bin (the diagonal is perfect
    calibration), with the image count per bin beneath, and the ECE and Brier score in the title."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from lungcls.metrics.calibration import calibration, reliability_bins

    rb = reliability_bins(probs, labels, bins)
    cal = calibration(probs, labels, bins)
    fig = Figure(figsize=(5.0, 5.6), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    centres = (rb["edges"][:-1] + rb["edges"][1:]) / 2
    width = 1.0 / bins
    top.bar(centres, np.nan_to_num(rb["accuracy"]), width=width * 0.9, color="#1f4e89", label="accuracy")
    top.plot([0, 1], [0, 1], ls="--", color="gray", label="perfect calibration")
    top.plot(centres, rb["confidence"], "o", color="#c0392b", ms=3, label="mean confidence")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(fontsize=8, loc="upper left")
    bottom.bar(centres, rb["count"], width=width * 0.9, color="#7f8c8d")
    bottom.set_xlabel("confidence (top class probability)")
    bottom.set_ylabel("images")
    ece = "n/a" if cal["ece"] is None else f"{cal['ece']:.3f}"
    brier = "n/a" if cal["brier"] is None else f"{cal['brier']:.3f}"
    fig.suptitle(f"{title + ': ' if title else ''}ECE {ece}, Brier {brier}", fontsize=9)
    out = Path(path)
    fig.savefig(out, dpi=120)
    fig.clear()
    return out


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
    fig.savefig(path, dpi=120)
    fig.clear()
    return path
