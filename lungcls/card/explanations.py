"""The card's explanations section, from a report's ``methods.csv``: which attribution method the
evidence supports and how each did in the sanity check.

The verdicts follow the report's own rules (its "Which map to trust" section), read back from the
CSV: a method localises when the lower end of its lesion share's interval is above the uniform
share, is faithful when the lower end of ``deletion_gain`` is above 0, and passes the sanity check
when its mean Spearman correlation is below the report's ``report.sanity_threshold``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lungcls.card.evidence import Evidence, Report
from lungcls.card.text import NOT_MEASURED, as_float, num, share, table


def checks(row: dict[str, Any], threshold: float | None) -> tuple[bool | None, bool | None, bool | None]:
    """(localises, faithful, passes the sanity check); None where the report did not measure it."""
    low, lesion, ratio = as_float(row.get("lesion_share_lo")), as_float(row.get("lesion_share")), as_float(row.get("lesion_ratio"))
    localises = None if low is None or not lesion or not ratio else low > lesion / ratio
    gain = as_float(row.get("deletion_gain_lo"))
    faithful = None if gain is None else gain > 0
    spearman = as_float(row.get("sanity_spearman"))
    sane = None if spearman is None or threshold is None else spearman < threshold
    return localises, faithful, sane


def model_free(row: dict[str, Any]) -> bool:
    return "model-free" in str(row.get("grid")) or row.get("method") == "edge"


def supported(report: Report) -> tuple[str | None, str]:
    """The method the evidence supports, and why (or why none)."""
    rows = [r for r in report.rows if not model_free(r)]
    if not rows:
        return None, "no model-dependent method was run"
    if all(checks(r, report.sanity_threshold)[1] is None for r in rows):
        return None, "faithfulness was not measured (report.faithfulness=true, or compare two or more methods)"
    good = [r for r in rows if checks(r, report.sanity_threshold)[1] and checks(r, report.sanity_threshold)[2] is not False]
    if not good:
        return None, "no method is both faithful and passes the sanity check"
    if any(as_float(r.get("hit_rate")) is not None for r in good):
        best = max(good, key=lambda r: (as_float(r.get("hit_rate")) or 0.0, as_float(r.get("lesion_share")) or 0.0))
        return best["method"], (f"of the {len(good)} faithful methods that pass the sanity check it has the highest hit "
                                f"rate ({num(best.get('hit_rate'), 2)})")
    best = max(good, key=lambda r: as_float(r.get("deletion_gain")) or 0.0)
    return best["method"], f"of the {len(good)} faithful methods that pass the sanity check it deletes fastest against random"


def verdict(ok: bool | None, yes: str, no: str) -> str:
    return NOT_MEASURED if ok is None else (yes if ok else no)


def method_rows(report: Report) -> list[list[str]]:
    rows = []
    for r in report.rows:
        loc, faithful, sane = checks(r, report.sanity_threshold)
        rows.append([r.get("method"), r.get("images"), num(r.get("hit_rate"), 2), num(r.get("lesion_ratio"), 2),
                     verdict(loc, "yes", "no"), verdict(faithful, "yes", "no"), num(r.get("sanity_spearman"), 2),
                     share(as_float(r.get("sanity_flagged"))), verdict(sane, "passes", "FAILS")])
    return rows


def explanations_section(evid: Evidence, figure: Path | None) -> list[str]:
    lines = ["## Explanations", ""]
    if not evid.reports:
        return lines + [f"Attribution maps: {NOT_MEASURED} (`lungcls-report ckpt=... report.methods=all report.target=true` "
                        "compares the methods and runs the sanity check).", ""]
    for report in evid.reports:
        method, why = supported(report)
        lines += [f"From `{report.path / 'methods.csv'}` (model {report.model}; sanity threshold "
                  f"{num(report.sanity_threshold, 2)}):", "",
                  f"Supported method: **{method}**: {why}." if method else f"Supported method: none: {why}.", "",
                  *table(["method", "images", "hit rate", "lesion share (x uniform)", "localises", "faithful",
                          "sanity Spearman", "maps flagged", "sanity check"], method_rows(report))]
    if figure is not None:
        lines += [f"![Attribution maps]({figure})", ""]
    return lines
