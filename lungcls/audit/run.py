"""The audit itself (what ``lungcls-audit`` runs): read every image once, find duplicates, label
conflicts, split leakage, source confounding and shortcuts, and write ``audit.json`` / ``audit.md``.
Kept apart from the command so that the benchmark can time it without importing a command."""


from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lungcls.audit.findings import (class_statistics, cross_split, data_root, duplicate_findings, relative, source_confounding,
                                   source_counts)
from lungcls.audit.outputs import check_fail_on, failures, summary_lines, write_audit
from lungcls.audit.probe import shortcut_probe
from lungcls.audit.settings import AuditSettings
from lungcls.audit.scan import scan
from lungcls.data.dedup.duplicates import duplicate_groups, find_duplicates
from lungcls.data.settings import dataset_settings
from lungcls.data.samples.layouts import cap_per_class, find_samples
from lungcls.settings import typed

log = logging.getLogger(__name__)


def audit(cfg: DictConfig) -> dict[str, Any]:
    """Audit ``cfg.dataset``; returns what audit.json holds."""
    started = time.perf_counter()
    settings = typed(cfg.audit, AuditSettings, "audit")
    fail_on = check_fail_on(settings.fail_on)
    data = dataset_settings(OmegaConf.to_container(cfg.dataset, resolve=True))
    class_names = list(data.classes)
    samples = cap_per_class(find_samples(data), data.max_per_class, data.split_seed)
    border_frac = settings.border_frac
    scanned = scan(samples, settings.probe.region, border_frac, cache_dir=data.cache_dir)
    near_bits = data.near_duplicate_bits
    dups = find_duplicates(scanned.fingerprints, near_bits)
    root = data_root(data)
    readable = [i for i in range(len(samples)) if i not in scanned.errors]
    groups = duplicate_groups(samples, dups)
    probe = shortcut_probe(scanned.features[readable], [samples[i].label for i in readable], [groups[i] for i in readable],
                           class_names, scanned.region, settings.probe)
    result: dict[str, Any] = {
        "data_root": str(root),
        "images": len(samples) - len(scanned.errors),
        "files": len(samples),
        "near_duplicate_bits": near_bits,
        **duplicate_findings(samples, dups, class_names, root),
        "cross_split": cross_split(samples, data, dups),
        "shortcut_probe": probe,
        "unreadable": [{"path": relative(samples[i].path, root), "error": e} for i, e in sorted(scanned.errors.items())],
        "classes": class_statistics(samples, scanned, class_names),
        "sources": source_counts(samples, class_names),
        "source_confounding": source_confounding(samples, class_names),
    }
    result["seconds"] = round(time.perf_counter() - started, 1)
    out_dir = Path(cfg.paths.output_dir)
    json_path, md_path = write_audit(out_dir, result, settings.max_rows)
    for line in summary_lines(result):
        print(line)
    print(f"audit: {json_path} and {md_path} ({result['seconds']} s)")
    failed = failures(result, fail_on)
    if failed:
        print(f"lungcls-audit: failing on {', '.join(failed)} (audit.fail_on)", file=sys.stderr)
        sys.exit(1)
    return result
