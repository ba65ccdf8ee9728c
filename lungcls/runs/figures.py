"""Figures of a run: the confusion matrix and the reliability diagram.

Both use a bare matplotlib ``Figure`` (no pyplot state, no display), so nothing stays open in
long sweeps or servers. (Grad-CAM figures live in ``lungcls.report.figures``.)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lungcls.metrics.confusion import as_confusion, check_class_names
from lungcls.runs.files import replacing


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

    names = check_class_names(class_names)
    cm = as_confusion(confusion, len(names))
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
    with replacing(out) as tmp:
        fig.savefig(tmp, dpi=120)
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
    with replacing(out) as tmp:
        fig.savefig(tmp, dpi=120)
    fig.clear()
    return out
