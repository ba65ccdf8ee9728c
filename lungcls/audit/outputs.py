"""What an audit leaves: ``audit.json`` (the findings, machine-readable), ``audit.md`` (the same for
a person), a short console summary, and the exit status ``audit.fail_on`` asks for."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lungcls.errors import LungclsError
from lungcls.runs.results import write_atomic

FAILABLE = ("unreadable", "exact_duplicates", "near_duplicates", "label_conflicts", "cross_split", "shortcut")


def counts(audit: dict[str, Any]) -> dict[str, int]:
    """How many of each finding (what ``audit.fail_on`` tests)."""
    probe = audit["shortcut_probe"]
    return {
        "unreadable": len(audit["unreadable"]),
        "exact_duplicates": len(audit["exact_duplicates"]),
        "near_duplicates": len(audit["near_duplicates"]),
        "label_conflicts": len(audit["label_conflicts"]),
        "cross_split": int(audit["cross_split"]["exact"]) + int(audit["cross_split"]["near"]),
        "shortcut": int(bool(probe.get("flagged"))),
    }


def check_fail_on(fail_on: Any) -> list[str]:
    names = [fail_on] if isinstance(fail_on, str) else list(fail_on or [])
    unknown = [n for n in names if n not in FAILABLE]
    if unknown:
        raise LungclsError(f"audit.fail_on has unknown finding(s) {unknown}; choose from {', '.join(FAILABLE)}")
    return names


def failures(audit: dict[str, Any], fail_on: Sequence[str]) -> list[str]:
    found = counts(audit)
    return [f"{name} ({found[name]})" for name in fail_on if found[name]]


def _probe_line(probe: dict[str, Any]) -> str:
    if probe.get("balanced_accuracy") is None:
        return f"shortcut probe ({probe['region']}): not run, {probe.get('note')}"
    lo, hi = probe["ci"]
    verdict = "FLAGGED: the labels can be read from outside the lungs" if probe["flagged"] else "not flagged"
    return (f"shortcut probe ({probe['region']}): balanced accuracy {probe['balanced_accuracy']:.3f} "
            f"(95% CI {lo:.3f}-{hi:.3f}, chance {probe['chance']:.3f}): {verdict}")


def confounding_line(conf: dict[str, Any]) -> str:
    """``source confounding: Cramer's V 0.71 (95% CI 0.66-0.75) over 3 sources: FLAGGED (...)``."""
    lo, hi = conf["ci"]
    head = f"source confounding: Cramer's V {conf['cramers_v']:.2f} (95% CI {lo:.2f}-{hi:.2f}) between source and label over {conf['sources']} sources"
    if not conf["flagged"]:
        return head + ": not flagged"
    why = [f"{c} only from {r['main_source']}" for c, r in conf["classes"].items() if r["single_source"]]
    why += [f"{c} {r['main_share']:.0%} from {r['main_source']}" for c, r in conf["classes"].items()
            if not r["single_source"] and r["main_share"] >= 0.5]
    return (head + ": FLAGGED, a model can score by recognising the source" + (f" ({'; '.join(why)})" if why else "")
            + "; test on held-out sources (dataset.folds=source)")


def summary_lines(audit: dict[str, Any]) -> list[str]:
    c = counts(audit)
    cs = audit["cross_split"]
    lines = [
        f"{audit['images']} images read, {c['unreadable']} unreadable",
        f"exact duplicates: {c['exact_duplicates']} groups; near duplicates: {c['near_duplicates']} pairs "
        f"(within {audit['near_duplicate_bits']} of 144 hash bits)",
        f"label conflicts: {c['label_conflicts']} groups of copies with different labels",
        f"straddling train/val/test with dataset.duplicates={cs['duplicates_setting']}: {cs['exact']} exact, "
        f"{cs['near']} near groups (a split ignoring duplicates: {cs['if_ignored']['exact']} exact, {cs['if_ignored']['near']} near)",
        _probe_line(audit["shortcut_probe"]),
    ]
    if audit.get("source_confounding"):
        lines.append(confounding_line(audit["source_confounding"]))
    if audit.get("sources"):
        lines.append("images per source and class: " + "; ".join(
            f"{src}: " + ", ".join(f"{k} {v}" for k, v in row.items() if v) for src, row in audit["sources"].items()))
    return lines


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    def cell(v: Any) -> str:
        return "" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v).replace("|", "\\|"))

    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]


def _range(spread: dict[str, Any]) -> str:
    return "" if spread["min"] is None else f"{spread['min']:.0f}-{spread['max']:.0f}"


def markdown(audit: dict[str, Any], max_rows: int) -> str:
    """audit.md: the summary, then each finding as a table (the first ``max_rows`` rows)."""
    lines = [f"# Data audit: {audit['data_root']}", "", *[f"- {line}" for line in summary_lines(audit)], ""]
    stats = audit["classes"]
    lines += ["## Per class", ""] + _md_table(
        ["class", "images", "unreadable", "width (min-max)", "height (min-max)", "modes", "mean intensity", "border intensity"],
        [[c, s["images"], s["unreadable"], _range(s["width"]), _range(s["height"]),
          ", ".join(f"{k} {v}" for k, v in s["modes"].items()), s["mean_intensity"]["mean"], s["border_intensity"]["mean"]]
         for c, s in stats.items()]) + [""]
    if audit.get("sources"):
        names = list(stats)
        lines += ["## Images per source", ""] + _md_table(["source", *names], [[src, *row.values()] for src, row in audit["sources"].items()]) + [""]
    sections = [
        ("Label conflicts", ["kind", "images (label)"], [[g["kind"], "; ".join(f"{i['path']} ({i['label']})" for i in g["images"])] for g in audit["label_conflicts"]]),
        ("Exact duplicates", ["group"], [["; ".join(g)] for g in audit["exact_duplicates"]]),
        ("Near duplicates", ["a", "b", "bits"], [[p["a"], p["b"], p["distance"]] for p in audit["near_duplicates"]]),
        ("Unreadable files", ["path", "error"], [[u["path"], u["error"]] for u in audit["unreadable"]]),
    ]
    for title, header, rows in sections:
        if rows:
            more = f" (first {max_rows} of {len(rows)}; all in audit.json)" if len(rows) > max_rows else ""
            lines += [f"## {title}{more}", ""] + _md_table(header, rows[:max_rows]) + [""]
    return "\n".join(lines) + "\n"


def write_audit(out_dir: Path, audit: dict[str, Any], max_rows: int = 50) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "audit.json", out_dir / "audit.md"
    write_atomic(json_path, json.dumps(audit, indent=2, allow_nan=False))
    write_atomic(md_path, markdown(audit, max_rows))
    return json_path, md_path
