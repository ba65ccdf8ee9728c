"""Limitations written from the evidence: one sentence per finding, each with its number, and a
plain sentence for every check that was not run (what was not measured is a limitation too)."""

from __future__ import annotations

from typing import Any

from lungcls.card.evidence import Evidence
from lungcls.card.explanations import checks, supported
from lungcls.card.text import as_float, num, share


def confounding(evid: Evidence) -> list[str]:
    """Classes taken mostly at one source when the audit flags source and label as confounded."""
    out = []
    for _, audit_doc in evid.audits:
        confounded = audit_doc.get("source_confounding") or {}
        if not confounded.get("flagged"):
            continue
        v = num(confounded.get("cramers_v"), 2)
        for name, c in (confounded.get("classes") or {}).items():
            tail = held_out_tail(evid, c.get("main_source"))
            if c.get("single_source"):
                out.append(f"{name} comes from one source ({c.get('main_source')}; V = {v}): {tail}.")
            elif (c.get("main_share") or 0) >= 0.5:
                out.append(f"{name} comes {share(c.get('main_share'))} from one source ({c.get('main_source')}; V = {v}): {tail}.")
    return out


def held_out_tail(evid: Evidence, source: Any) -> str:
    """What leave-one-source-out says about a class's main source, or that nothing does."""
    rows = [r for _, rows in evid.generalisation for r in rows if r.get("source") == source]
    if not rows:
        return "the model was not shown to recognise it at another hospital"
    r = rows[0]
    return (f"with {source} held out, accuracy was {num(as_float(r.get('accuracy')))} against "
            f"{num(as_float(r.get('in_source_accuracy')))} in-source")


def audit_findings(evid: Evidence) -> list[str]:
    if not evid.audits:
        return ["The data were not audited (no lungcls-audit): duplicates, label conflicts, leakage between splits, "
                "shortcuts and source confounding were not checked."]
    out = []
    for _, audit_doc in evid.audits:
        cross = audit_doc.get("cross_split") or {}
        straddling = (cross.get("exact") or 0) + (cross.get("near") or 0)
        if straddling:
            out.append(f"{straddling} group(s) of copies straddle train/val/test under the audited split: test numbers may be flattered.")
        if audit_doc.get("label_conflicts"):
            out.append(f"{len(audit_doc['label_conflicts'])} group(s) of copies carry different labels: the reference standard is inconsistent.")
        shortcut = audit_doc.get("shortcut_probe") or {}
        if shortcut.get("flagged"):
            out.append(f"A probe reads the label from outside the lungs ({shortcut.get('region')}) with balanced accuracy "
                       f"{num(shortcut.get('balanced_accuracy'))} (chance {num(shortcut.get('chance'))}): the images carry shortcuts the model may use.")
    return out + confounding(evid)


def generalisation_findings(evid: Evidence) -> list[str]:
    external = evid.external()
    if not external and not evid.generalisation:
        return ["No external or leave-one-source-out evaluation was run: every number above comes from the sources "
                "the model was trained on."]
    out = []
    if not external:
        out.append("No external evaluation was run (data from another site, scored with lungcls-evaluate).")
    if not evid.generalisation:
        out.append("No leave-one-source-out evaluation was run (dataset.folds=source).")
    test_acc = (evid.metrics.get("test") or {}).get("accuracy")
    for _, metrics in external:
        block = metrics.get(str(metrics.get("split"))) or {}
        missed = sum(v for v in (block.get("fn_to_normal") or {}).values() if isinstance(v, int))
        out.append(f"On external data ({metrics.get('data_root')}, {sum_support(block)} images) accuracy was "
                   f"{num(block.get('accuracy'))} against {num(test_acc)} on the test split, with {missed} disease "
                   "images predicted normal.")
    for _, rows in evid.generalisation:
        for r in rows:
            out.append(f"Held out, source {r.get('source')} ({r.get('images')} images) scored accuracy "
                       f"{num(as_float(r.get('accuracy')))} against {num(as_float(r.get('in_source_accuracy')))} in-source "
                       f"(gap {num(as_float(r.get('gap')))}).")
    return out


def sum_support(block: dict[str, Any]) -> int:
    return sum((v or {}).get("support") or 0 for v in (block.get("per_class") or {}).values())


def test_findings(evid: Evidence, calibration_limit: float, min_images: int) -> list[str]:
    test = evid.metrics.get("test") or {}
    if test.get("accuracy") is None:
        return ["The run scored no test images: no performance was measured."]
    normal = (evid.config.get("dataset") or {}).get("normal_class")
    ci = (test.get("ci") or {}).get("per_class") or {}
    out = []
    for name in test.get("class_names") or []:
        support = ((test.get("per_class") or {}).get(name) or {}).get("support") or 0
        recall_ci = (ci.get(name) or {}).get("recall")
        if support < min_images and recall_ci:
            out.append(f"{name} has {support} test image(s): its recall is known only to within "
                       f"[{num(recall_ci[0])}, {num(recall_ci[1])}].")
    for name, missed in (test.get("fn_to_normal") or {}).items():
        if missed:
            support = ((test.get("per_class") or {}).get(name) or {}).get("support")
            out.append(f"{missed} of {support} {name} test images were predicted {normal} (missed disease).")
    ece = (test.get("calibration") or {}).get("ece")
    if ece is not None and ece > calibration_limit:
        out.append(f"ECE {num(ece)} on the test split (above {num(calibration_limit, 2)}): the probabilities are not "
                   "calibrated; do not read them as risks.")
    return out


def data_findings(evid: Evidence) -> list[str]:
    out = []
    if not evid.source_counts:
        out.append("No source (hospital, scanner) was recorded per image: how the model does per source is unknown.")
    if not (evid.config.get("dataset") or {}).get("manifest"):
        out.append("Images, not patients, were split (no patient identifiers): films of one patient may sit in both "
                   "training and test.")
    return out


def explanation_findings(evid: Evidence) -> list[str]:
    if not evid.reports:
        return ["Where the model looks was not measured (no lungcls-report with this checkpoint)."]
    out = []
    for report in evid.reports:
        method, why = supported(report)
        if method is None:
            out.append(f"No attribution method is supported by the evidence ({why}): the maps are not evidence of what the model uses.")
        failing = [r.get("method") for r in report.rows if checks(r, report.sanity_threshold)[2] is False]
        if failing:
            out.append(f"{len(failing)} attribution method(s) fail the sanity check ({', '.join(failing)}): their maps "
                       "show the image more than the model.")
    return out


def limitations(evid: Evidence, calibration_limit: float, min_images: int) -> list[str]:
    """Every limitation sentence, the data's first."""
    return (audit_findings(evid) + data_findings(evid) + generalisation_findings(evid)
            + test_findings(evid, calibration_limit, min_images) + explanation_findings(evid))
