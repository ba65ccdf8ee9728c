"""Ratios between the measurements, the targets they are judged against, and the printed table."""

from __future__ import annotations

import platform
from typing import Any

from lungcls.benchmark.data import cpu_count
from lungcls.benchmark.settings import LABELS, MEASUREMENTS, RATIOS, TARGET_SETTINGS, TARGETS, Settings

def rate(results: dict[str, dict], name: str) -> float | None:
    r = results.get(name) or {}
    v = r.get("images_per_s")
    return float(v) if isinstance(v, (int, float)) and v > 0 else None


def compute_ratios(results: dict[str, dict]) -> dict[str, float]:
    out = {}
    for a, b in RATIOS:
        ra, rb = rate(results, a), rate(results, b)
        if ra is not None and rb is not None:
            out[f"{a}/{b}"] = ra / rb
    return out


def evaluate_targets(s: Settings, results: dict[str, dict], ratios: dict[str, float]) -> list[dict[str, Any]]:
    """The targets that apply to this backbone; ``passed`` is None on a CPU or when a number is missing."""
    rows = []
    for t in TARGETS:
        if (t.backbones and s.backbone not in t.backbones) or (t.needs_compile and not s.compile):
            continue
        value = ratios.get(t.key) if "/" in t.key else rate(results, t.key)
        judged = s.device == "cuda" and value is not None
        differs = [f"{k}={getattr(s, k)}" for k, v in TARGET_SETTINGS.items() if getattr(s, k) != v]
        rows.append(
            {
                "name": t.name,
                "key": t.key,
                "threshold": t.threshold,
                "value": value,
                "passed": (value >= t.threshold) if judged else None,
                "settings_differ": differs,
            }
        )
    return rows


def _fmt_rate(v: float | None) -> str:
    return f"{v:,.1f}" if v is not None else "-"


def format_report(report: dict[str, Any]) -> str:
    s = report["settings"]
    env = report["environment"]
    results = report["measurements"]
    ratios = report["ratios"]
    lines = [
        f"lungcls-bench: {s['backbone']} | finetune={s['finetune']} | batch {s['batch_size']} | {s['image_size']} px | "
        f"{s['precision']} | compile {'on' if s['compile'] else 'off'} | optimizer {s['optimizer']} | "
        f"{env['device_name']} | torch {env['torch']}",
        f"data: {report['data']['images']} PNGs ({report['data']['origin']}), train {report['data']['train_images']}, "
        f"val {report['data']['val_images']}",
        "",
        f"{'measurement':<44}{'images/s':>12}{'x ceiling':>11}",
    ]
    for name in MEASUREMENTS:
        r = results.get(name, {})
        if "skipped" in r:
            tail = f"skipped: {r['skipped']}"
        elif "error" in r:
            tail = f"FAILED: {r['error']}"
        else:
            ratio = 1.0 if name == "ceiling" and rate(results, name) else ratios.get(f"{name}/ceiling")
            tail = f"{_fmt_rate(rate(results, name)):>12}{(f'{ratio:.2f}' if ratio is not None else '-'):>11}"
            lines.append(f"{LABELS[name]:<44}{tail}")
            continue
        lines.append(f"{LABELS[name]:<44}  {tail}")
    extra = [f"{k} = {v:.2f}" for k, v in ratios.items() if not k.endswith("/ceiling")]
    if extra:
        lines += ["", "other ratios: " + ", ".join(extra)]
    e2e = results.get("end_to_end", {})
    if "host_syncs_per_step" in e2e:
        sites = ", ".join(f"{k} ({v})" for k, v in list(e2e["host_sync_sites"].items())[:6]) or "none"
        lines.append(f"host syncs per end-to-end step: {e2e['host_syncs_per_step']:g} [{sites}]")
    if report["targets"]:
        lines += ["", f"{'target':<44}{'value':>12}{'needed':>11}  result"]
        for t in report["targets"]:
            v = t["value"]
            shown = "-" if v is None else (f"{v:,.0f}" if t["threshold"] >= 100 else f"{v:.2f}")
            need = f"{t['threshold']:,.0f}" if t["threshold"] >= 100 else f"{t['threshold']:.2f}"
            verdict = "n/a (not a GPU run)" if s["device"] != "cuda" else ("-" if t["passed"] is None else ("PASS" if t["passed"] else "FAIL"))
            if t["settings_differ"]:
                verdict += f" (target set for finetune=full, bf16; here {', '.join(t['settings_differ'])})"
            lines.append(f"{t['name']:<44}{shown:>12}{need:>11}  {verdict}")
    for note in report["notes"]:
        lines += ["", f"NOTE: {note}"]
    return "\n".join(lines)


def environment(s: Settings) -> dict[str, Any]:
    import pytorch_lightning as pl
    import torch
    import torchvision

    env: dict[str, Any] = {
        "device": s.device,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pytorch_lightning": pl.__version__,
        "python": platform.python_version(),
        "cpu_cores": cpu_count(),
        "cudnn_benchmark": s.cudnn_benchmark,
    }
    if s.device == "cuda":
        env["device_name"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        env["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        env["tf32_cudnn"] = torch.backends.cudnn.allow_tf32
    else:
        n = torch.get_num_threads()
        env["device_name"] = f"CPU ({platform.machine()}, {n} thread{'s' if n != 1 else ''})"
    return env
