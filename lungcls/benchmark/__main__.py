"""``lungcls-bench``: run the five measurements with one set of settings, print the table and write
``bench.json``. Exit status: 0 all measurements ran, 1 one failed, 2 bad input, 3 a target missed
(with ``--check-targets``)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
import traceback
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import Image

from lungcls.benchmark.data import prepare_data
from lungcls.benchmark.measure import MEASURE, compose_config
from lungcls.benchmark.settings import LABELS, MEASUREMENTS, Settings, build_parser, resolve_settings
from lungcls.benchmark.summary import compute_ratios, environment, evaluate_targets, format_report
from lungcls.benchmark.timing import free_memory
from lungcls.errors import LungclsError


@contextlib.contextmanager
def _quiet() -> Any:
    """Keep Lightning's per-fit banners and known harmless warnings out of the report."""
    import pytorch_lightning  # noqa: F401  (its import sets its logger's level; set ours after it)

    names = ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric")
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.WARNING)
    with warnings.catch_warnings():
        for pattern in (
            ".*does not have many workers.*",
            ".*smaller than the logging interval.*",
            ".*Tensor Cores.*",
            ".*max_epochs.*",
            ".*LeafSpec.*",
            ".*predict_dataloader.*",
            ".*test_dataloader.*",
            ".*No positive samples.*",
            ".*No negative samples.*",
        ):
            warnings.filterwarnings("ignore", message=pattern)
        try:
            yield
        finally:
            for n, level in levels.items():
                logging.getLogger(n).setLevel(level)


def _load_data(s: Settings, out_dir: Path) -> tuple[Any, Any, dict[str, Any]]:
    """The training config, the set-up data module and what bench.json says about the data."""
    from omegaconf import OmegaConf

    from lungcls.data.datamodule import LungDataModule

    t0 = time.perf_counter()
    data_root, origin = prepare_data(s.data, s.gen_dir, s.images, s.source_size)
    print(f"[bench] data: {data_root} ({origin})", flush=True)
    cfg = compose_config(s, data_root, out_dir / "lightning")
    dm = LungDataModule(OmegaConf.to_container(cfg.dataset, resolve=True), OmegaConf.to_container(cfg.augment, resolve=True), seed=s.seed)
    t1 = time.perf_counter()
    dm.setup("fit")
    with Image.open(dm.samples[0].path) as im:
        source = f"{im.width}x{im.height} {im.mode}"
    data = {
        "root": str(data_root),
        "origin": origin,
        "images": len(dm.samples),
        "source": source,
        "train_images": len(dm.split_rows("train")),
        "val_images": len(dm.split_rows("val")),
        "decoded_cache": "none" if dm.images is None else ("gpu" if dm.images.is_cuda else "ram"),
        "prepare_seconds": t1 - t0,
        "decode_seconds": time.perf_counter() - t1,
    }
    return cfg, dm, data


def _measure_all(s: Settings, cfg: Any, dm: Any) -> dict[str, dict]:
    """Every measurement not skipped; a failing one is recorded with its error, the others run."""
    results: dict[str, dict] = {}
    for name in MEASUREMENTS:
        if name in s.skip:
            results[name] = {"skipped": "--skip"}
            continue
        print(f"[bench] {LABELS[name]} ...", flush=True)
        start = time.perf_counter()
        try:
            results[name] = MEASURE[name](s, cfg, dm)
            results[name]["wall_seconds"] = time.perf_counter() - start
            print(f"[bench]   {results[name]['images_per_s']:,.1f} images/s", flush=True)
        except Exception as e:  # one failure must not hide the other numbers
            results[name] = {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"}
            print(f"[bench]   failed: {results[name]['error']}", file=sys.stderr, flush=True)
            traceback.print_exc()
            free_memory()
    return results


def run_bench(s: Settings) -> dict[str, Any]:
    """All measurements with one set of settings, as the dict bench.json holds."""
    import pytorch_lightning as pl
    import torch

    if s.device != "cuda":
        print("[bench] NOTE: running on a CPU with tiny defaults; the numbers are not GPU numbers", flush=True)
    out_dir = Path(s.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.backends.cudnn.benchmark = s.cudnn_benchmark
    pl.seed_everything(s.seed, workers=True, verbose=False)
    cfg, dm, data = _load_data(s, out_dir)
    results = _measure_all(s, cfg, dm)
    del dm
    free_memory()
    ratios = compute_ratios(results)
    notes = []
    if s.device != "cuda":
        notes.append(
            "measured on a CPU: these are not GPU numbers, and the ratios and targets mean nothing here. "
            "Run on a CUDA machine for the real benchmark."
        )
        if s.compile:
            notes.append("--compile has no effect on a CPU: training compiles the backbone on CUDA only")
    return {
        "settings": asdict(s),
        "environment": environment(s),
        "data": data,
        "measurements": results,
        "ratios": ratios,
        "targets": evaluate_targets(s, results, ratios),
        "notes": notes,
        "created": datetime.now().isoformat(timespec="seconds"),
    }


def run_data_scale(args: Any) -> int:
    """``--scale`` or ``--near-duplicates``: the data-size measurements, not the throughput run."""
    from lungcls.benchmark.neardup import run_near_duplicates
    from lungcls.benchmark.scale import parse_scale, run_scale

    gen_dir = args.gen_dir or os.environ.get("LUNGCLS_DATA_DIR") or "outputs/data"
    out = Path(args.out or Path("outputs") / "bench" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
    try:
        if args.scale is not None:
            if args.scale_image_size < 32:
                raise LungclsError(f"--scale-image-size {args.scale_image_size} is too small; use 32 or more (e.g. 64)")
            run_scale(parse_scale(args.scale), args.scale_image_size, gen_dir, str(out), args.scale_cache)
        if args.near_duplicates is not None:
            if (out / "near_duplicates.json").exists():
                raise LungclsError(f"{out}/near_duplicates.json exists; give another --out")
            result = run_near_duplicates(args.near_duplicates, args.near_duplicate_bits, gen_dir, args.recall_subset,
                                         templates_dir=args.templates, faiss_codes=args.faiss_codes)
            out.mkdir(parents=True, exist_ok=True)
            (out / "near_duplicates.json").write_text(json.dumps(result, indent=2) + "\n")
            print(f"near duplicates: {result['codes']:,} codes, {result['pairs']:,} pairs within {result['max_bits']} bits "
                  f"in {result['seconds']} s; recall {result['recall']} against all pairs on {result['recall_subset']:,} codes")
            print(f"written: {out / 'near_duplicates.json'}")
    except LungclsError as e:
        print(f"lungcls-bench: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


def run_miss_rate_cli(args: Any) -> int:
    """``--miss-rate``: the cap's guarantee measured (lungcls.benchmark.missrate)."""
    from lungcls.benchmark.missrate import run_miss_rate

    args.gen_dir = args.gen_dir or os.environ.get("LUNGCLS_DATA_DIR") or "outputs/data"
    args.out = args.out or str(Path("outputs") / "bench" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
    args.seed = 0
    try:
        result = json.loads(run_miss_rate(args).read_text())
    except LungclsError as e:
        print(f"lungcls-bench: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 3 if args.check_targets and not all(c["passed"] for c in result["checks"]) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 all measurements ran, 1 one failed, 2 bad input, 3 a target missed (with
    ``--check-targets``)."""
    import torch

    args = build_parser().parse_args(argv)
    if args.scale is not None or args.near_duplicates is not None:
        return run_data_scale(args)
    if args.miss_rate:
        return run_miss_rate_cli(args)
    threads, cudnn_benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
    try:
        if args.threads is not None:
            if args.threads < 1:
                raise LungclsError("--threads must be at least 1")
            torch.set_num_threads(args.threads)
        s = resolve_settings(args)
        with _quiet():
            report = run_bench(s)
    except LungclsError as e:
        print(f"lungcls-bench: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    finally:  # leave the process as it was (the bench can run inside a test session)
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = cudnn_benchmark
    out = Path(s.out) / "bench.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    os.replace(tmp, out)
    print()
    print(format_report(report))
    print(f"\nwritten: {out}")
    if any("error" in r for r in report["measurements"].values()):
        return 1
    if args.check_targets and any(t["passed"] is False for t in report["targets"]):
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
