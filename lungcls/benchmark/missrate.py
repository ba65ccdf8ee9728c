"""``lungcls-bench --miss-rate``: measure the miss-rate cap's guarantee instead of claiming it.

A pool of images the model never saw (by default an independent demo draw, ``dataset.demo.seed``
one above the model's) is scored once by ``lungcls-evaluate``; then R random calibration/test
splits of the pool are drawn and, for each alpha, conformal risk control, Learn-then-Test and
today's validation quantile each choose a threshold on the calibration part and are measured on the
test part (``lungcls.metrics.riskcontrol.simulate``: vectorised, seconds for 500 splits of 600
images). Writes ``miss_rate.json`` and ``miss_rate.png`` (achieved against target) and prints the table.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from lungcls.errors import LungclsError

__all__ = ["run_miss_rate", "miss_rate_table", "ALPHAS"]

ALPHAS = (0.02, 0.05, 0.10)
DEFAULT_MODEL = Path("outputs") / "bench" / "miss-rate-model"


def _command(module: str, overrides: list[str], out: Path, gen_dir: str) -> None:
    """Run a lungcls command in its own process (as a user would); its one-line error becomes ours."""
    cmd = [sys.executable, "-m", module, *overrides, f"hydra.run.dir={out}", f"paths.data_dir={gen_dir}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise LungclsError(f"{module.split('.')[-1]} failed for the miss-rate bench: {last}")


def default_model(gen_dir: str) -> Path:
    """The default demo model (``lungcls-train`` with every default), trained once and reused."""
    ckpt = DEFAULT_MODEL / "checkpoints" / "best.ckpt"
    if ckpt.is_file():
        print(f"[bench] reusing the default demo model {ckpt}", flush=True)
        return ckpt
    if DEFAULT_MODEL.exists():
        raise LungclsError(f"{DEFAULT_MODEL} exists without checkpoints/best.ckpt; remove it or give --ckpt")
    print(f"[bench] training the default demo model into {DEFAULT_MODEL} (about 2 minutes on a CPU)", flush=True)
    _command("lungcls.train", ["logger=csv"], DEFAULT_MODEL.resolve(), gen_dir)
    return ckpt


def score_pool(ckpt: Path, args: Any, out: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Normal scores and disease truth of the pool, from one ``lungcls-evaluate`` pass."""
    from lungcls.inference.checkpoints import load_checkpoint

    normal = load_checkpoint(str(ckpt), "cpu").model.normal_class
    if not normal:
        raise LungclsError(f"{ckpt} has no normal class (dataset.normal_class) to cap the miss rate against")
    if args.pool_root:
        data = ["dataset=folder", f"dataset.root={args.pool_root}", "dataset.split=all"]
    else:
        data = ["dataset=demo", f"dataset.demo.seed={args.pool_seed}", f"dataset.demo.images_per_class={args.pool_per_class}",
                f"dataset.demo.source_size={args.pool_source_size}", "dataset.split=all"]
    if args.pool_root and args.pool_classes:
        data.append(f"dataset.classes=[{args.pool_classes}]")
    print(f"[bench] scoring the pool with {ckpt}", flush=True)
    _command("lungcls.evaluate", [f"ckpt={ckpt.resolve()}", *data], (out / "pool").resolve(), args.gen_dir)
    metrics = json.loads((out / "pool" / "metrics.json").read_text())
    rows = list(csv.DictReader((out / "pool" / "predictions.csv").open()))
    if not rows or f"prob_{normal}" not in rows[0]:
        raise LungclsError(f"the pool scored by {ckpt} has no image or no {normal} column")
    scores = np.array([float(r[f"prob_{normal}"]) for r in rows])
    disease = np.array([r["label"] != normal for r in rows])
    pool = {"images": len(rows), "disease": int(disease.sum()), "normal": int((~disease).sum()),
            "data": metrics.get("data_root"), "checkpoint": str(ckpt), "checkpoint_sha256": metrics.get("checkpoint_sha256")}
    return scores, disease, pool


def miss_rate_table(result: dict[str, Any]) -> str:
    """The printed table: per alpha and rule, the mean miss rate, the share of splits above alpha
    and the mean share of Normal images referred; and whether each promise held."""
    lines = [f"miss-rate cap over {result['splits']} calibration/test splits (delta {result['delta']:g}, "
             f"{result['calibration_share']:.0%} calibration)",
             f"{'alpha':>6} {'rule':<20} {'mean miss':>10} {'share > alpha':>14} {'Normal referred':>16}"]
    for alpha, rows in result["alphas"].items():
        for rule, r in rows.items():
            lines.append(f"{alpha:>6} {rule:<20} {r['mean_miss']:>10.4f} {r['share_above_alpha']:>14.3f} {r['mean_referred_normal']:>16.3f}")
    for check in result["checks"]:
        lines.append(f"{'PASS' if check['passed'] else 'FAIL'}: {check['what']} ({check['value']:.4f} <= {check['limit']:.4f})")
    return "\n".join(lines)


def _checks(result: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for alpha, rows in result["alphas"].items():
        a = float(alpha)
        out.append({"what": f"crc mean miss rate at alpha {alpha}", "value": rows["crc"]["mean_miss"], "limit": a + 0.01,
                    "passed": rows["crc"]["mean_miss"] <= a + 0.01})
        limit = result["delta"] + 0.03
        out.append({"what": f"ltt share of splits above alpha {alpha}", "value": rows["ltt"]["share_above_alpha"], "limit": limit,
                    "passed": rows["ltt"]["share_above_alpha"] <= limit})
    return out


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alphas = [float(a) for a in result["alphas"]]
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    ax.plot([0, max(alphas) * 1.1], [0, max(alphas) * 1.1], color="grey", lw=1, ls="--", label="target")
    for rule, marker in (("crc", "o"), ("ltt", "s"), ("validation_quantile", "^")):
        ax.plot(alphas, [result["alphas"][a][rule]["mean_miss"] for a in result["alphas"]], marker=marker, label=rule)
    ax.set(xlabel="target miss rate (alpha)", ylabel="mean achieved miss rate", title=f"{result['splits']} splits")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def run_miss_rate(args: Any) -> Path:
    """The whole measurement; returns the path of miss_rate.json (never written over)."""
    from lungcls.metrics.riskcontrol import simulate

    if not 0 < args.miss_delta < 1:
        raise LungclsError(f"--miss-delta {args.miss_delta} must be in (0, 1)")
    if args.miss_splits < 1 or args.pool_per_class < 2:
        raise LungclsError("--miss-splits must be at least 1 and --pool-per-class at least 2")
    out = Path(args.out)
    if (out / "miss_rate.json").exists():
        raise LungclsError(f"{out}/miss_rate.json exists; give another --out")
    ckpt = Path(args.ckpt) if args.ckpt else default_model(args.gen_dir)
    if not ckpt.is_file():
        raise LungclsError(f"--ckpt {ckpt} does not exist; give a checkpoint file (a run's checkpoints/best.ckpt)")
    scores, disease, pool = score_pool(ckpt, args, out)
    result = simulate(scores, disease, ALPHAS, args.miss_delta, args.miss_splits, args.calibration_share, args.seed)
    result["pool"] = pool
    result["checks"] = _checks(result)
    tmp = out / f".miss_rate.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out / "miss_rate.json")
    _plot(result, out / "miss_rate.png")
    print(miss_rate_table(result))
    print(f"written: {out / 'miss_rate.json'}")
    return out / "miss_rate.json"
