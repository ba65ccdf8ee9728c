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


def _data(evid: Evidence) -> dict[str, Any]:
    return evid.config.get("dataset") or {}


def _counts(evid: Evidence) -> str:
    return "; ".join(f"{split} {sum(c.values())}" for split, c in evid.split_counts.items())


def sources(evid: Evidence) -> Answer:
    data = _data(evid)
    where = f"{data.get('manifest') or data.get('root')} (dataset={data.get('name')})"
    found = sorted({s for c in evid.source_counts.values() for s in c})
    return f"{where}; sources: {', '.join(found) or 'none recorded'}", "splits.csv, .hydra/config.yaml"


def preprocessing(evid: Evidence) -> Answer:
    d = _data(evid)
    return (f"decoded to one 8-bit channel, resized to {d.get('image_size')} px, normalisation {d.get('normalization')}, "
            f"crop_border {d.get('crop_border')}, equalize {d.get('equalize')}, mask_outside_lungs {d.get('mask_outside_lungs')}",
            ".hydra/config.yaml")


def subsets(evid: Evidence) -> Answer:
    d = _data(evid)
    dropped = len((evid.metrics.get("duplicates") or {}).get("dropped") or [])
    return (f"classes {', '.join(evid.classes)}; max_per_class {d.get('max_per_class')}; {dropped} images dropped as "
            "label conflicts", ".hydra/config.yaml, metrics.json")


def missing_data(evid: Evidence) -> Answer:
    if not evid.audits:
        return None
    path, audit_doc = evid.audits[0]
    return (f"{len(audit_doc.get('unreadable') or [])} unreadable files of {num(audit_doc.get('files'))}; "
            "unreadable files stop training with one line", str(path / "audit.json"))


def partitions(evid: Evidence) -> Answer:
    d = _data(evid)
    return (f"stratified random split, val {d.get('val_fraction')}, test {d.get('test_fraction')}, seed {d.get('split_seed')}"
            f"{', folds ' + str(d.get('folds')) if d.get('folds') else ''}: {_counts(evid)} images", "splits.csv")


def disjoint(evid: Evidence) -> Answer:
    record = evid.metrics.get("duplicates") or {}
    level = "patient (manifest patient column) and picture" if _data(evid).get("manifest") else "picture (no patient identifiers)"
    return (f"disjoint at the {level} level: copies kept together (duplicates={record.get('mode')}, "
            f"{num(record.get('groups'))} groups); straddling after the split: {record.get('straddling_splits')}", "metrics.json")


def model(evid: Evidence) -> Answer:
    b = evid.config.get("backbone") or {}
    return (f"{evid.metrics.get('backbone') or b.get('name')}, fine-tune {evid.metrics.get('finetune')}, "
            f"{num(evid.metrics.get('trainable_params'))} of {num(evid.metrics.get('total_params'))} parameters trainable; "
            f"input {_data(evid).get('image_size')} px, output one probability per class ({', '.join(evid.classes)})", "metrics.json")


def software(evid: Evidence) -> Answer:
    versions = []
    for package in ("torch", "torchvision", "pytorch-lightning"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    return f"lungcls {lungcls.__version__}; {', '.join(versions)} (where the card was written)", "the environment"


def initialisation(evid: Evidence) -> Answer:
    b = evid.config.get("backbone") or {}
    return f"{evid.metrics.get('initial_weights')} (backbone.weights={b.get('weights')}, init={b.get('init')}), seed {evid.config.get('seed')}", "metrics.json"


def training(evid: Evidence) -> Answer:
    c = evid.config
    opt, aug, loss = c.get("optimizer") or {}, c.get("augment") or {}, c.get("loss") or {}
    return (f"optimiser {str(opt.get('_target_', '?')).rsplit('.', 1)[-1]} lr {opt.get('lr')}, "
            f"{(c.get('trainer') or {}).get('max_epochs')} epochs, batch {_data(evid).get('batch_size')}, augmentation "
            f"{str(aug.get('_target_', 'none')).rsplit('.', 1)[-1]}, loss {str(loss.get('_target_', '?')).rsplit('.', 1)[-1]} "
            f"(class_weights {loss.get('class_weights')}); one model", ".hydra/config.yaml")


def selection(evid: Evidence) -> Answer:
    cp = ((evid.config.get("callbacks") or {}).get("checkpoint") or {})
    return f"the checkpoint best on {cp.get('monitor')} ({cp.get('mode')}) over the epochs, on val", ".hydra/config.yaml"


def ensemble(evid: Evidence) -> Answer:
    return "none: one checkpoint makes every prediction", "metrics.json (best_checkpoint)"


def metrics_used(evid: Evidence) -> Answer:
    return ("accuracy, macro F1, per-class precision, recall, F1, specificity, disease images predicted normal, "
            "ECE and Brier score, AUROC per class (logged)", "metrics.json")


def uncertainty(evid: Evidence) -> Answer:
    ci = (evid.metrics.get("test") or {}).get("ci") or {}
    if not ci:
        return None
    return f"{num(ci.get('level'), 2)} intervals: {ci.get('method')}, {ci.get('resamples')} resamples, seed {ci.get('seed')}", "metrics.json"


def robustness(evid: Evidence) -> Answer:
    if not evid.generalisation:
        return None
    path, rows = evid.generalisation[0]
    return ("; ".join(f"{r.get('source')} held out: accuracy {num(r.get('accuracy'))}, gap {num(r.get('gap'))}" for r in rows),
            str(path / "generalisation.csv"))


def explainability(evid: Evidence) -> Answer:
    if not evid.reports:
        return None
    report = evid.reports[0]
    method, why = supported(report)
    return (f"{', '.join(str(r.get('method')) for r in report.rows)} compared (localisation, deletion, sanity check); "
            f"supported: {method or 'none'} ({why})", str(report.path / "methods.csv"))


def external(evid: Evidence) -> Answer:
    found = evid.external()
    if not found:
        return None
    path, m = found[0]
    block = m.get(str(m.get("split"))) or {}
    return (f"{m.get('data_root')}: {sum_support(block)} images, accuracy "
            f"{with_interval(block.get('accuracy'), (block.get('ci') or {}).get('accuracy'))}", str(path / "metrics.json"))


def flow(evid: Evidence) -> Answer:
    dropped = len((evid.metrics.get("duplicates") or {}).get("dropped") or [])
    audited = f"{num(evid.audits[0][1].get('files'))} files found, {num(evid.audits[0][1].get('images'))} read; " if evid.audits else ""
    return f"{audited}{dropped} dropped; {_counts(evid)}", "splits.csv, metrics.json" + (", audit.json" if evid.audits else "")


def characteristics(evid: Evidence) -> Answer:
    parts = [f"{split}: " + ", ".join(f"{k} {v}" for k, v in c.items()) for split, c in evid.split_counts.items()]
    return "classes per split: " + "; ".join(parts) + " (age, sex and other demographics: not recorded)", "splits.csv"


def all_partitions(evid: Evidence) -> Answer:
    parts = [f"{s} {num((evid.metrics.get(s) or {}).get('accuracy'))}" for s in ("train", "val", "test") if s in evid.metrics]
    return "accuracy " + ", ".join(parts), "metrics.json"


def estimates(evid: Evidence) -> Answer:
    test = evid.metrics.get("test") or {}
    if test.get("accuracy") is None:
        return None
    ci = test.get("ci") or {}
    return (f"test accuracy {with_interval(test.get('accuracy'), ci.get('accuracy'))}, macro F1 "
            f"{with_interval(test.get('macro_f1'), ci.get('macro_f1'))}; per class in the card", "metrics.json")


def failures(evid: Evidence) -> Answer:
    missed = (evid.metrics.get("test") or {}).get("fn_to_normal") or {}
    return "disease images predicted normal on test: " + ", ".join(f"{k} {v}" for k, v in missed.items() if v is not None), "metrics.json, predictions.csv"


def limitations_ref(evid: Evidence) -> Answer:
    return "one sentence per finding under Limitations", "model_card.md"


def per_source(evid: Evidence) -> Answer:
    block = (evid.metrics.get("test") or {}).get("per_source") or {}
    if not block and not evid.generalisation:
        return None
    text = "; ".join(f"{s}: accuracy {num(v.get('accuracy'))} ({v.get('images')} images)" for s, v in block.items())
    return (text or "per source: see leave-one-source-out"), "metrics.json" + (", generalisation.csv" if evid.generalisation else "")


def recalibration(evid: Evidence) -> Answer:
    for path, m in evid.evaluations:
        scaled = m.get("temperature_scaling") or {}
        if scaled.get("temperature"):
            return (f"temperature {num(scaled['temperature'])} fitted on val: ECE {num(scaled['before']['ece'])} -> "
                    f"{num(scaled['after']['ece'])}", str(path / "metrics.json"))
    return None


def imbalance(evid: Evidence) -> Answer:
    train = evid.split_counts.get("train") or {}
    return (f"training images per class {dict(train)}; loss class_weights {(evid.config.get('loss') or {}).get('class_weights')}",
            "splits.csv, .hydra/config.yaml")


def output(evid: Evidence) -> Answer:
    for path, m in evid.evaluations:
        point = ((m.get("screening") or {}).get("target_sensitivity") or {})
        if point.get("threshold") is not None:
            return (f"probabilities per class; {m['screening']['positive_class']} flagged at {num(point['threshold'])} "
                    f"(chosen on val for sensitivity {point.get('target')})", str(path / "metrics.json"))
    return None


def specification(evid: Evidence) -> Answer:
    if not evid.sha256:
        return None
    return f"checkpoint {evid.checkpoint} (SHA-256 {evid.sha256}); reproduce: {reproduce_command(evid)}", "status.json"


ANSWERS: dict[str, Callable[[Evidence], Answer]] = {f.__name__: f for f in (
    sources, preprocessing, subsets, missing_data, partitions, disjoint, model, software, initialisation, training,
    selection, ensemble, metrics_used, uncertainty, robustness, explainability, external, flow, characteristics, all_partitions,
    estimates, failures, limitations_ref, per_source, recalibration, imbalance, output, specification)}
