"""The card's performance section: per-class numbers with their intervals, missed disease,
calibration, screening operating points, per-source results, external evaluations and
leave-one-source-out with the gap to the in-source result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lungcls.card.evidence import Evidence
from lungcls.card.text import NOT_MEASURED, as_float, num, table, with_interval


def class_rows(block: dict[str, Any]) -> list[list[str]]:
    ci = (block.get("ci") or {}).get("per_class") or {}
    rates = (block.get("ci") or {}).get("fn_to_normal_rate") or {}
    missed = block.get("fn_to_normal") or {}
    rows = []
    for name in block.get("class_names") or []:
        pc, cc = (block.get("per_class") or {}).get(name) or {}, ci.get(name) or {}
        gone = str(missed[name]) if missed.get(name) is not None else "–"  # null: no images, nothing to miss
        if name in missed and rates.get(name):
            gone += f" (rate 95% CI [{num(rates[name][0])}, {num(rates[name][1])}])"
        rows.append([name, pc.get("support"), with_interval(pc.get("precision"), cc.get("precision")),
                     with_interval(pc.get("recall"), cc.get("recall")), with_interval(pc.get("f1"), cc.get("f1")),
                     with_interval(pc.get("specificity"), cc.get("specificity")), gone])
    return rows


def split_summary(name: str, block: dict[str, Any], normal: str | None) -> list[str]:
    ci = block.get("ci") or {}
    total = sum(v for v in (block.get("fn_to_normal") or {}).values() if isinstance(v, int))
    return [f"{name}: accuracy {with_interval(block.get('accuracy'), ci.get('accuracy'))}, macro F1 "
            f"{with_interval(block.get('macro_f1'), ci.get('macro_f1'))}; disease images predicted {normal}: {total}.", "",
            *table(["class", "images", "precision", "recall (sensitivity)", "F1", "specificity", f"predicted {normal} (missed)"],
                   class_rows(block))]


def calibration_lines(block: dict[str, Any]) -> list[str]:
    cal = block.get("calibration") or {}
    if cal.get("ece") is None:
        return [f"Calibration: {NOT_MEASURED}.", ""]
    return [f"Calibration (test split): ECE {num(cal.get('ece'))} ({cal.get('bins')} bins), Brier score "
            f"{num(cal.get('brier'))}.", ""]


def screening_lines(evid: Evidence) -> list[str]:
    rows = []
    for path, metrics in evid.evaluations:
        screen = metrics.get("screening") or {}
        if not screen:
            continue
        for label, point in (("argmax", screen.get("argmax")), ("fixed threshold", screen.get("fixed_threshold")),
                             ("target sensitivity (chosen on val)", (screen.get("target_sensitivity") or {}).get("test"))):
            if point:
                rows.append([f"{screen.get('positive_class')} vs rest", label, num(point.get("threshold")),
                             num(point.get("sensitivity")), num(point.get("specificity")),
                             f"{point.get('fn')} of {(point.get('tp') or 0) + (point.get('fn') or 0)}", path.name])
    if not rows:
        return [f"Screening operating points: {NOT_MEASURED} (`lungcls-evaluate ckpt=... evaluate.positive_class=COVID`).", ""]
    return ["Screening operating points (test split):", "",
            *table(["view", "decision", "threshold", "sensitivity", "specificity", "positives missed", "evaluation"], rows)]


def source_lines(block: dict[str, Any]) -> list[str]:
    per_source = block.get("per_source") or {}
    if not per_source:
        return [f"Per-source results: {NOT_MEASURED} (no source per image).", ""]
    rows = [[src, v.get("images"), num(v.get("accuracy")), sum(n for n in (v.get("fn_to_normal") or {}).values() if isinstance(n, int))]
            for src, v in per_source.items()]
    return ["Per source (test split):", "", *table(["source", "images", "accuracy", "missed"], rows)]


def external_lines(evid: Evidence, normal: str | None) -> list[str]:
    external = evid.external()
    if not external:
        return [f"External evaluation: {NOT_MEASURED} (`lungcls-evaluate ckpt=... dataset=folder dataset.root=... "
                "dataset.split=all`).", ""]
    lines = ["### External evaluation", ""]
    for path, metrics in external:
        split = str(metrics.get("split"))
        block = metrics.get(split) or {}
        overlap = metrics.get("training_overlap") or {}
        lines += [f"`{path / 'metrics.json'}` on `{metrics.get('data_root')}` ({split}; training images found and "
                  f"left out: {num(overlap.get('training_images_found'))}).", ""]
        lines += split_summary(f"External ({path.name})", block, normal)
    return lines


def loso_lines(evid: Evidence) -> list[str]:
    if not evid.generalisation:
        return [f"Leave-one-source-out: {NOT_MEASURED} (`lungcls-train -m ... dataset.folds=source 'dataset.fold=range(k)'`, "
                "then `lungcls-compare`).", ""]
    lines = ["### Leave-one-source-out", ""]
    for path, rows in evid.generalisation:
        shown = [[r.get("source"), r.get("images"), with_interval(as_float(r.get("accuracy")),
                  [as_float(r.get("accuracy_lo")), as_float(r.get("accuracy_hi"))]),
                  with_interval(as_float(r.get("in_source_accuracy")),
                                [as_float(r.get("in_source_accuracy_lo")), as_float(r.get("in_source_accuracy_hi"))]),
                  num(as_float(r.get("gap"))), r.get("missed") or "n/a"] for r in rows]
        lines += [f"From `{path / 'generalisation.csv'}`:", "",
                  *table(["held-out source", "images", "accuracy", "in-source accuracy", "gap", "missed"], shown)]
    return lines


def performance_section(evid: Evidence, figures: dict[str, Path]) -> list[str]:
    test = evid.metrics.get("test") or {}
    normal = (evid.config.get("dataset") or {}).get("normal_class")
    lines = ["## Performance", ""]
    if not test or test.get("accuracy") is None:
        lines += [f"Test split: {NOT_MEASURED} (the run scored no test images).", ""]
    else:
        lines += split_summary("Test split", test, normal)
    for key, caption in (("confusion", "Confusion matrix (test split)"), ("reliability", "Reliability diagram (test split)")):
        if key in figures:
            lines += [f"![{caption}]({figures[key]})", ""]
    lines += calibration_lines(test) + screening_lines(evid) + source_lines(test)
    return lines + external_lines(evid, normal) + loso_lines(evid)
