"""What ``lungcls-evaluate`` adds for ``evaluate.miss_rate`` and ``evaluate.group_by``: the checks
that can run before images are decoded, the records of metrics.json and their console lines. The
calibration predictions are the evaluation's own (``predicted``), so the cap costs no extra pass
over images already scored for another view."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lungcls.errors import LungclsError
from lungcls.inference.misscap import (GUARANTEES, check_cap_request, check_calibration_counts, check_group_column,
                                       group_values, miss_rate_control, miss_rate_lines)
from lungcls.metrics.groups import group_lines, group_metrics
from lungcls.metrics.predictions import Predictions

__all__ = ["check_cap", "check_cap_data", "cap_and_groups", "print_cap_and_groups"]


def _columns(ev: Any) -> list[tuple[str, str]]:
    named = [("evaluate.miss_rate_by", ev.miss_rate_by)] if ev.miss_rate_by and ev.miss_rate is not None else []
    return named + [("evaluate.group_by", c) for c in ev.group_by]


def check_cap(ev: Any, model: Any, data: Any, split: str) -> None:
    """Before the data is read: a checkpoint without a normal class, calibrating on the scored
    images, a manifest column that is not there."""
    if ev.miss_rate is not None:
        check_cap_request(model.normal_class, model.class_names, split, ev.calibration)
    if ev.miss_rate_by and ev.miss_rate is None:
        raise LungclsError("evaluate.miss_rate_by needs evaluate.miss_rate (the cap to calibrate per group), e.g. evaluate.miss_rate=0.05")
    demo = getattr(data, "demo", None)
    has_source = bool(data.source_column or data.source_from or (demo is not None and demo.sources > 1))
    for key, column in _columns(ev):
        check_group_column(column, data.manifest, key, has_source)


def check_cap_data(ev: Any, model: Any, dm: Any, data: Any) -> None:
    """Once the split is known, before the forward pass: a calibration split without disease or
    Normal images, or too small for the cap; a source column the data does not have."""
    for key, column in _columns(ev):
        group_values(column, [], dm.sources(), data.manifest, key)
    if ev.miss_rate is not None:
        if not len(dm.split_rows(ev.calibration)):
            raise LungclsError(f"the calibration split '{ev.calibration}' is empty; choose another with evaluate.calibration=...")
        check_calibration_counts(dm.class_counts(ev.calibration), dm.class_names, model.normal_class, ev.calibration,
                                 ev.miss_rate, GUARANTEES[ev.miss_guarantee], ev.miss_delta)


def cap_and_groups(ev: Any, stats: dict[str, Any], model: Any, dm: Any, data: Any, scored: tuple[str, Predictions],
                   predicted: Callable[[str], Predictions]) -> dict[str, Any]:
    """``miss_rate_control`` (the cap, chosen on ``evaluate.calibration``) and ``group_metrics``
    (per ``evaluate.group_by`` column), as metrics.json records them."""
    split, pred = scored
    level, out = float(stats["level"]), {}
    sources = dm.sources()
    if ev.miss_rate is not None:
        cal = predicted(ev.calibration)
        by = ev.miss_rate_by
        groups = ((group_values(by, pred.paths, sources, data.manifest, "evaluate.miss_rate_by"),
                   group_values(by, cal.paths, sources, data.manifest, "evaluate.miss_rate_by")) if by else (None, None))
        out["miss_rate_control"] = miss_rate_control(
            model.class_names, model.normal_class, ev.miss_rate, ev.miss_guarantee, ev.miss_delta, pred, split, cal,
            ev.calibration, level, by, *groups)
    if ev.group_by:
        out["group_metrics"] = {
            column: group_metrics(pred.labels, pred.preds, group_values(column, pred.paths, sources, data.manifest, "evaluate.group_by"),
                                  model.class_names, model.normal_class, level)
            for column in ev.group_by}
    return out


def print_cap_and_groups(metrics: dict[str, Any], normal_class: str | None) -> None:
    for line in miss_rate_lines(metrics["miss_rate_control"]) if metrics.get("miss_rate_control") else []:
        print(line)
    for column, report in (metrics.get("group_metrics") or {}).items():
        for line in group_lines(column, report, normal_class):
            print(line)
