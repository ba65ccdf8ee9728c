"""The card's first sections: model details, intended use, and the data (splits, sources, the
audit's findings, how copies and patients were kept apart)."""

from __future__ import annotations

import shlex
from datetime import datetime
from typing import Any

import lungcls
from lungcls.card.evidence import Evidence
from lungcls.card.text import NOT_MEASURED, num, share, table, with_interval


def training_seconds(state: dict[str, Any]) -> float | None:
    try:
        start = datetime.fromisoformat(str(state["started"]))
        end = datetime.fromisoformat(str(state["ended"]))
    except (KeyError, ValueError):
        return None
    return (end - start).total_seconds()


def reproduce_command(evid: Evidence) -> str:
    """``lungcls-train`` with the run's own overrides (a sweep job's, not the sweep's; no run folder, so the
    new run claims a fresh one), else the command ``status.json`` recorded."""
    if evid.overrides or not evid.state.get("command"):
        return shlex.join(["lungcls-train", *evid.overrides])
    return str(evid.state["command"])


def recipe(stored: dict[str, Any]) -> str:
    tune = stored.get("finetune") or {}
    name = tune.get("name", "?")
    if name == "partial":
        return f"partial (top {tune.get('fraction')} of the feature blocks and the head)"
    return {"full": "full (every layer trained)", "head": "head (the classifier only)",
            "paper": "paper (the reference study's layers)"}.get(name, str(name))


def model_section(evid: Evidence) -> list[str]:
    stored, metrics = evid.config, evid.metrics
    net = stored.get("backbone") or {}
    optimizer = stored.get("optimizer") or {}
    seconds = training_seconds(evid.state)
    rows = [
        ("backbone", metrics.get("backbone") or net.get("name", "?")),
        ("initial weights", f"{metrics.get('initial_weights', '?')} (backbone.weights={net.get('weights')})"),
        ("fine-tune recipe", recipe(stored)),
        ("optimiser", f"{str(optimizer.get('_target_', '?')).rsplit('.', 1)[-1]}, lr {optimizer.get('lr')}"),
        ("epochs", (stored.get("trainer") or {}).get("max_epochs", "?")),
        ("image size", f"{(stored.get('dataset') or {}).get('image_size', '?')} px"),
        ("parameters", f"{num(metrics.get('trainable_params'))} trainable of {num(metrics.get('total_params'))}"),
        ("training time", f"{seconds:.0f} s ({evid.state.get('started')} to {evid.state.get('ended')})" if seconds is not None
         else NOT_MEASURED),
        ("checkpoint", f"`{evid.checkpoint}`" if evid.checkpoint else "none in the run folder"),
        ("checkpoint SHA-256", f"`{evid.sha256}`" if evid.sha256 else NOT_MEASURED),
        ("lungcls version", f"{lungcls.__version__} (writing this card)"),
        ("run folder", f"`{evid.run}`"),
    ]
    return ["## Model details", "", *table(["", "value"], rows),
            "Reproduce it with:", "", "```bash", reproduce_command(evid), "```", ""]


def use_section(intended: str, out_of_scope: str) -> list[str]:
    return ["## Intended use", "", intended.strip(), "", "## Out-of-scope use", "", out_of_scope.strip(), ""]


def splits_table(evid: Evidence) -> list[str]:
    splits = [split for split in ("train", "val", "test") if split in evid.split_counts]
    classes = evid.classes or sorted({c for counts in evid.split_counts.values() for c in counts})
    rows = [[c, *[evid.split_counts[split].get(c, 0) for split in splits]] for c in classes]
    rows.append(["all", *[sum(evid.split_counts[split].values()) for split in splits]])
    return table(["class", *splits], rows)


def sources_table(evid: Evidence) -> list[str]:
    if not evid.source_counts:
        return ["Sources: none recorded (no `dataset.source_column`, `source_from` or demo sites): results per "
                "hospital or scanner cannot be given.", ""]
    sources = sorted({s for counts in evid.source_counts.values() for s in counts})
    splits = [split for split in ("train", "val", "test") if split in evid.source_counts]
    return ["Images per source (splits.csv):", "",
            *table(["source", *splits], [[src, *[evid.source_counts[split].get(src, 0) for split in splits]] for src in sources])]


def grouping_lines(evid: Evidence) -> list[str]:
    data = evid.config.get("dataset") or {}
    record = evid.metrics.get("duplicates") or {}
    lines = [f"- Copies of one picture kept in one split: `dataset.duplicates={record.get('mode', data.get('duplicates'))}` "
             f"({num(record.get('groups'))} groups of copies, {num(record.get('images_in_groups'))} images; "
             f"{num(record.get('label_conflicts'))} label conflicts, {num(len(record.get('dropped') or []))} images dropped)."]
    folds = data.get("folds")
    lines.append(f"- Split: stratified random, val {data.get('val_fraction')}, test {data.get('test_fraction')}, seed "
                 f"{data.get('split_seed')}" + (f"; fold {data.get('fold')} of `dataset.folds={folds}`" if folds else "") + ".")
    if data.get("manifest"):
        lines.append("- Patients: a `patient` column of the manifest, where present, keeps each patient in one split.")
    else:
        lines.append("- Patients: no patient identifiers were given; images (with their copies), not patients, were split.")
    return lines + [""]


def audit_lines(path, audit_doc: dict[str, Any]) -> list[str]:
    cross = audit_doc.get("cross_split") or {}
    shortcut = audit_doc.get("shortcut_probe") or {}
    lines = [f"Audit `{path / 'audit.json'}` ({num(audit_doc.get('images'))} images of {audit_doc.get('data_root')}):", "",
             f"- exact duplicate groups: {len(audit_doc.get('exact_duplicates') or [])}; near-duplicate pairs: "
             f"{len(audit_doc.get('near_duplicates') or [])}; label conflicts: {len(audit_doc.get('label_conflicts') or [])}; "
             f"unreadable files: {len(audit_doc.get('unreadable') or [])}",
             f"- copies straddling train/val/test (leakage): {num(cross.get('exact'))} exact, {num(cross.get('near'))} near"]
    if shortcut:
        lines.append(f"- shortcut probe ({shortcut.get('region')}): balanced accuracy "
                     f"{with_interval(shortcut.get('balanced_accuracy'), shortcut.get('ci'))}, chance {num(shortcut.get('chance'))}"
                     f"{': FLAGGED (the label can be read from outside the lungs)' if shortcut.get('flagged') else ''}")
    confounding = audit_doc.get("source_confounding") or {}
    if confounding.get("cramers_v") is not None:
        parts = [f"{c} {share(v.get('main_share'))} from {v.get('main_source')}"
                 for c, v in (confounding.get("classes") or {}).items()]
        lines.append(f"- source confounding: Cramer's V {with_interval(confounding.get('cramers_v'), confounding.get('ci'), 2)} "
                     f"over {confounding.get('sources')} sources{' (FLAGGED)' if confounding.get('flagged') else ''}; "
                     + "; ".join(parts))
    return lines + [""]


def data_section(evid: Evidence) -> list[str]:
    data = evid.config.get("dataset") or {}
    lines = ["## Data", "", f"Data: `{data.get('manifest') or data.get('root')}` (`dataset={data.get('name', '?')}`); "
             f"classes in label order: {', '.join(evid.classes)}; normal class: {data.get('normal_class')}.", "",
             "Images per split and class (splits.csv):", "", *splits_table(evid), *sources_table(evid), *grouping_lines(evid)]
    if not evid.audits:
        lines += ["Audit: not run (`lungcls-audit` with the run's `dataset=` settings checks duplicates, label "
                  "conflicts, leakage, shortcuts and source confounding).", ""]
    for path, audit_doc in evid.audits:
        lines += audit_lines(path, audit_doc)
    return lines
