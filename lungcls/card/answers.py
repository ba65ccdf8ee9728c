"""Answers a run's files give to reporting-checklist questions: each is a sentence with its number
and the file it came from, or None when no evidence holds it (the checklist then names the command
that would fill it)."""

from __future__ import annotations

from importlib import metadata
from typing import Any, Callable, Optional

import lungcls
from lungcls.card.evidence import Evidence
from lungcls.card.explanations import supported
from lungcls.card.limitations import sum_support
from lungcls.card.sections import reproduce_command
from lungcls.card.text import num, with_interval

Answer = Optional[tuple[str, str]]  # (what the evidence says, the file it came from)


def _data(ev: Evidence) -> dict[str, Any]:
    return ev.config.get("dataset") or {}


def _counts(ev: Evidence) -> str:
    return "; ".join(f"{split} {sum(c.values())}" for split, c in ev.split_counts.items())


def sources(ev: Evidence) -> Answer:
    data = _data(ev)
    where = f"{data.get('manifest') or data.get('root')} (dataset={data.get('name')})"
    found = sorted({s for c in ev.source_counts.values() for s in c})
    return f"{where}; sources: {', '.join(found) or 'none recorded'}", "splits.csv, .hydra/config.yaml"


def preprocessing(ev: Evidence) -> Answer:
    d = _data(ev)
    return (f"decoded to one 8-bit channel, resized to {d.get('image_size')} px, normalisation {d.get('normalization')}, "
            f"crop_border {d.get('crop_border')}, equalize {d.get('equalize')}, mask_outside_lungs {d.get('mask_outside_lungs')}",
            ".hydra/config.yaml")


def subsets(ev: Evidence) -> Answer:
    d = _data(ev)
    dropped = len((ev.metrics.get("duplicates") or {}).get("dropped") or [])
    return (f"classes {', '.join(ev.classes)}; max_per_class {d.get('max_per_class')}; {dropped} images dropped as "
            "label conflicts", ".hydra/config.yaml, metrics.json")


def missing_data(ev: Evidence) -> Answer:
    if not ev.audits:
        return None
    path, audit_doc = ev.audits[0]
    return (f"{len(audit_doc.get('unreadable') or [])} unreadable files of {num(audit_doc.get('files'))}; "
            "unreadable files stop training with one line", str(path / "audit.json"))


def partitions(ev: Evidence) -> Answer:
    d = _data(ev)
    return (f"stratified random split, val {d.get('val_fraction')}, test {d.get('test_fraction')}, seed {d.get('split_seed')}"
            f"{', folds ' + str(d.get('folds')) if d.get('folds') else ''}: {_counts(ev)} images", "splits.csv")


def disjoint(ev: Evidence) -> Answer:
    record = ev.metrics.get("duplicates") or {}
    level = "patient (manifest patient column) and picture" if _data(ev).get("manifest") else "picture (no patient identifiers)"
    return (f"disjoint at the {level} level: copies kept together (duplicates={record.get('mode')}, "
            f"{num(record.get('groups'))} groups); straddling after the split: {record.get('straddling_splits')}", "metrics.json")


def model(ev: Evidence) -> Answer:
    b = ev.config.get("backbone") or {}
    return (f"{ev.metrics.get('backbone') or b.get('name')}, fine-tune {ev.metrics.get('finetune')}, "
            f"{num(ev.metrics.get('trainable_params'))} of {num(ev.metrics.get('total_params'))} parameters trainable; "
            f"input {_data(ev).get('image_size')} px, output one probability per class ({', '.join(ev.classes)})", "metrics.json")


def software(ev: Evidence) -> Answer:
    versions = []
    for package in ("torch", "torchvision", "pytorch-lightning"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    return f"lungcls {lungcls.__version__}; {', '.join(versions)} (where the card was written)", "the environment"


def initialisation(ev: Evidence) -> Answer:
    b = ev.config.get("backbone") or {}
    return f"{ev.metrics.get('initial_weights')} (backbone.weights={b.get('weights')}, init={b.get('init')}), seed {ev.config.get('seed')}", "metrics.json"


def training(ev: Evidence) -> Answer:
    c = ev.config
    opt, aug, loss = c.get("optimizer") or {}, c.get("augment") or {}, c.get("loss") or {}
    return (f"optimiser {str(opt.get('_target_', '?')).rsplit('.', 1)[-1]} lr {opt.get('lr')}, "
            f"{(c.get('trainer') or {}).get('max_epochs')} epochs, batch {_data(ev).get('batch_size')}, augmentation "
            f"{str(aug.get('_target_', 'none')).rsplit('.', 1)[-1]}, loss {str(loss.get('_target_', '?')).rsplit('.', 1)[-1]} "
            f"(class_weights {loss.get('class_weights')}); one model", ".hydra/config.yaml")


def selection(ev: Evidence) -> Answer:
    cp = ((ev.config.get("callbacks") or {}).get("checkpoint") or {})
    return f"the checkpoint best on {cp.get('monitor')} ({cp.get('mode')}) over the epochs, on val", ".hydra/config.yaml"


def metrics_used(ev: Evidence) -> Answer:
    return ("accuracy, macro F1, per-class precision, recall, F1, specificity, disease images predicted normal, "
            "ECE and Brier score, AUROC per class (logged)", "metrics.json")


def uncertainty(ev: Evidence) -> Answer:
    ci = (ev.metrics.get("test") or {}).get("ci") or {}
    if not ci:
        return None
    return f"{num(ci.get('level'), 2)} intervals: {ci.get('method')}, {ci.get('resamples')} resamples, seed {ci.get('seed')}", "metrics.json"


def robustness(ev: Evidence) -> Answer:
    if not ev.generalisation:
        return None
    path, rows = ev.generalisation[0]
    return ("; ".join(f"{r.get('source')} held out: accuracy {num(r.get('accuracy'))}, gap {num(r.get('gap'))}" for r in rows),
            str(path / "generalisation.csv"))


def explainability(ev: Evidence) -> Answer:
    if not ev.reports:
        return None
    report = ev.reports[0]
    method, why = supported(report)
    return (f"{', '.join(str(r.get('method')) for r in report.rows)} compared (localisation, deletion, sanity check); "
            f"supported: {method or 'none'} ({why})", str(report.path / "methods.csv"))


def external(ev: Evidence) -> Answer:
    found = ev.external()
    if not found:
        return None
    path, m = found[0]
    block = m.get(str(m.get("split"))) or {}
    return (f"{m.get('data_root')}: {sum_support(block)} images, accuracy "
            f"{with_interval(block.get('accuracy'), (block.get('ci') or {}).get('accuracy'))}", str(path / "metrics.json"))


def flow(ev: Evidence) -> Answer:
    dropped = len((ev.metrics.get("duplicates") or {}).get("dropped") or [])
    audited = f"{num(ev.audits[0][1].get('files'))} files found, {num(ev.audits[0][1].get('images'))} read; " if ev.audits else ""
    return f"{audited}{dropped} dropped; {_counts(ev)}", "splits.csv, metrics.json" + (", audit.json" if ev.audits else "")


def characteristics(ev: Evidence) -> Answer:
    parts = [f"{split}: " + ", ".join(f"{k} {v}" for k, v in c.items()) for split, c in ev.split_counts.items()]
    return "classes per split: " + "; ".join(parts) + " (age, sex and other demographics: not recorded)", "splits.csv"


def all_partitions(ev: Evidence) -> Answer:
    parts = [f"{s} {num((ev.metrics.get(s) or {}).get('accuracy'))}" for s in ("train", "val", "test") if s in ev.metrics]
    return "accuracy " + ", ".join(parts), "metrics.json"


def estimates(ev: Evidence) -> Answer:
    test = ev.metrics.get("test") or {}
    if test.get("accuracy") is None:
        return None
    ci = test.get("ci") or {}
    return (f"test accuracy {with_interval(test.get('accuracy'), ci.get('accuracy'))}, macro F1 "
            f"{with_interval(test.get('macro_f1'), ci.get('macro_f1'))}; per class in the card", "metrics.json")


def failures(ev: Evidence) -> Answer:
    missed = (ev.metrics.get("test") or {}).get("fn_to_normal") or {}
    return "disease images predicted normal on test: " + ", ".join(f"{k} {v}" for k, v in missed.items()), "metrics.json, predictions.csv"


def limitations_ref(ev: Evidence) -> Answer:
    return "one sentence per finding under Limitations", "model_card.md"


def per_source(ev: Evidence) -> Answer:
    block = (ev.metrics.get("test") or {}).get("per_source") or {}
    if not block and not ev.generalisation:
        return None
    text = "; ".join(f"{s}: accuracy {num(v.get('accuracy'))} ({v.get('images')} images)" for s, v in block.items())
    return (text or "per source: see leave-one-source-out"), "metrics.json" + (", generalisation.csv" if ev.generalisation else "")


def recalibration(ev: Evidence) -> Answer:
    for path, m in ev.evaluations:
        scaled = m.get("temperature_scaling") or {}
        if scaled.get("temperature"):
            return (f"temperature {num(scaled['temperature'])} fitted on val: ECE {num(scaled['before']['ece'])} -> "
                    f"{num(scaled['after']['ece'])}", str(path / "metrics.json"))
    return None


def imbalance(ev: Evidence) -> Answer:
    train = ev.split_counts.get("train") or {}
    return (f"training images per class {dict(train)}; loss class_weights {(ev.config.get('loss') or {}).get('class_weights')}",
            "splits.csv, .hydra/config.yaml")


def output(ev: Evidence) -> Answer:
    for path, m in ev.evaluations:
        point = ((m.get("screening") or {}).get("target_sensitivity") or {})
        if point.get("threshold") is not None:
            return (f"probabilities per class; {m['screening']['positive_class']} flagged at {num(point['threshold'])} "
                    f"(chosen on val for sensitivity {point.get('target')})", str(path / "metrics.json"))
    return None


def specification(ev: Evidence) -> Answer:
    if not ev.sha256:
        return None
    return f"checkpoint {ev.checkpoint} (SHA-256 {ev.sha256}); reproduce: {reproduce_command(ev)}", "status.json"


ANSWERS: dict[str, Callable[[Evidence], Answer]] = {f.__name__: f for f in (
    sources, preprocessing, subsets, missing_data, partitions, disjoint, model, software, initialisation, training,
    selection, metrics_used, uncertainty, robustness, explainability, external, flow, characteristics, all_partitions,
    estimates, failures, limitations_ref, per_source, recalibration, imbalance, output, specification)}
