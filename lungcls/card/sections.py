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


def reproduce_command(ev: Evidence) -> str:
    """The command that made the run (``status.json``), else ``lungcls-train`` with its overrides."""
    command = ev.state.get("command")
    if command:
        return str(command)
    return shlex.join(["lungcls-train", *ev.overrides])


def recipe(config: dict[str, Any]) -> str:
    finetune = config.get("finetune") or {}
    name = finetune.get("name", "?")
    if name == "partial":
        return f"partial (top {finetune.get('fraction')} of the feature blocks and the head)"
    return {"full": "full (every layer trained)", "head": "head (the classifier only)",
            "paper": "paper (the reference study's layers)"}.get(name, str(name))


def model_section(ev: Evidence) -> list[str]:
    config, metrics = ev.config, ev.metrics
    backbone = config.get("backbone") or {}
    optimizer = config.get("optimizer") or {}
    seconds = training_seconds(ev.state)
    rows = [
        ("backbone", metrics.get("backbone") or backbone.get("name", "?")),
        ("initial weights", f"{metrics.get('initial_weights', '?')} (backbone.weights={backbone.get('weights')})"),
        ("fine-tune recipe", recipe(config)),
        ("optimiser", f"{str(optimizer.get('_target_', '?')).rsplit('.', 1)[-1]}, lr {optimizer.get('lr')}"),
        ("epochs", (config.get("trainer") or {}).get("max_epochs", "?")),
        ("image size", f"{(config.get('dataset') or {}).get('image_size', '?')} px"),
        ("parameters", f"{num(metrics.get('trainable_params'))} trainable of {num(metrics.get('total_params'))}"),
        ("training time", f"{seconds:.0f} s ({ev.state.get('started')} to {ev.state.get('ended')})" if seconds is not None
         else NOT_MEASURED),
        ("checkpoint", f"`{ev.checkpoint}`" if ev.checkpoint else "none in the run folder"),
        ("checkpoint SHA-256", f"`{ev.sha256}`" if ev.sha256 else NOT_MEASURED),
        ("lungcls version", f"{lungcls.__version__} (writing this card)"),
        ("run folder", f"`{ev.run}`"),
    ]
    return ["## Model details", "", *table(["", ""], rows),
            "Reproduce it with:", "", "```bash", reproduce_command(ev), "```", ""]


def use_section(intended: str, out_of_scope: str) -> list[str]:
    return ["## Intended use", "", intended.strip(), "", "## Out-of-scope use", "", out_of_scope.strip(), ""]


def splits_table(ev: Evidence) -> list[str]:
    splits = [s for s in ("train", "val", "test") if s in ev.split_counts]
    classes = ev.classes or sorted({c for counts in ev.split_counts.values() for c in counts})
    rows = [[c, *[ev.split_counts[s].get(c, 0) for s in splits]] for c in classes]
    rows.append(["all", *[sum(ev.split_counts[s].values()) for s in splits]])
    return table(["class", *splits], rows)


def sources_table(ev: Evidence) -> list[str]:
    if not ev.source_counts:
        return ["Sources: none recorded (no `dataset.source_column`, `source_from` or demo sites): results per "
                "hospital or scanner cannot be given.", ""]
    sources = sorted({s for counts in ev.source_counts.values() for s in counts})
    splits = [s for s in ("train", "val", "test") if s in ev.source_counts]
    return ["Images per source (splits.csv):", "",
            *table(["source", *splits], [[src, *[ev.source_counts[s].get(src, 0) for s in splits]] for src in sources])]


def grouping_lines(ev: Evidence) -> list[str]:
    data = ev.config.get("dataset") or {}
    record = ev.metrics.get("duplicates") or {}
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
    probe = audit_doc.get("shortcut_probe") or {}
    lines = [f"Audit `{path / 'audit.json'}` ({num(audit_doc.get('images'))} images of {audit_doc.get('data_root')}):", "",
             f"- exact duplicate groups: {len(audit_doc.get('exact_duplicates') or [])}; near-duplicate pairs: "
             f"{len(audit_doc.get('near_duplicates') or [])}; label conflicts: {len(audit_doc.get('label_conflicts') or [])}; "
             f"unreadable files: {len(audit_doc.get('unreadable') or [])}",
             f"- copies straddling train/val/test (leakage): {num(cross.get('exact'))} exact, {num(cross.get('near'))} near"]
    if probe:
        lines.append(f"- shortcut probe ({probe.get('region')}): balanced accuracy "
                     f"{with_interval(probe.get('balanced_accuracy'), probe.get('ci'))}, chance {num(probe.get('chance'))}"
                     f"{': FLAGGED (the label can be read from outside the lungs)' if probe.get('flagged') else ''}")
    confounding = audit_doc.get("source_confounding") or {}
    if confounding.get("cramers_v") is not None:
        parts = [f"{c} {share(v.get('main_share'))} from {v.get('main_source')}"
                 for c, v in (confounding.get("classes") or {}).items()]
        lines.append(f"- source confounding: Cramer's V {with_interval(confounding.get('cramers_v'), confounding.get('ci'), 2)} "
                     f"over {confounding.get('sources')} sources{' (FLAGGED)' if confounding.get('flagged') else ''}; "
                     + "; ".join(parts))
    return lines + [""]


def data_section(ev: Evidence) -> list[str]:
    data = ev.config.get("dataset") or {}
    lines = ["## Data", "", f"Data: `{data.get('manifest') or data.get('root')}` (`dataset={data.get('name', '?')}`); "
             f"classes in label order: {', '.join(ev.classes)}; normal class: {data.get('normal_class')}.", "",
             "Images per split and class (splits.csv):", "", *splits_table(ev), *sources_table(ev), *grouping_lines(ev)]
    if not ev.audits:
        lines += ["Audit: not run (`lungcls-audit` with the run's `dataset=` settings checks duplicates, label "
                  "conflicts, leakage, shortcuts and source confounding).", ""]
    for path, audit_doc in ev.audits:
        lines += audit_lines(path, audit_doc)
    return lines
