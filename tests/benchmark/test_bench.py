"""Tests for lungcls-bench: the synthetic database generator, and one tiny CPU run of all five
measurements that checks bench.json is complete and self-consistent (not what the numbers are)."""

from __future__ import annotations

import json
import math
import time
import warnings
from types import SimpleNamespace

import pytest
from PIL import Image

from lungcls.benchmark.__main__ import main
from lungcls.benchmark.data import DATABASE_COUNTS, class_counts, ensure_bench_dataset
from lungcls.benchmark.measure import MEASURE
from lungcls.benchmark.settings import MEASUREMENTS
from lungcls.benchmark.timing import make_steady_state_clock, window_edges
from lungcls.errors import LungclsError


def test_class_counts_follow_the_database():
    assert class_counts(sum(DATABASE_COUNTS.values())) == DATABASE_COUNTS
    for total in (4, 5, 64, 1000):
        counts = class_counts(total)
        assert sum(counts.values()) == total and min(counts.values()) >= 1
        assert list(counts) == list(DATABASE_COUNTS)
    assert max(class_counts(1000), key=class_counts(1000).get) == "Normal"
    with pytest.raises(LungclsError, match="at least 4"):
        class_counts(3)


def test_generated_data_set_has_the_database_layout_and_is_reused(tmp_path):
    root = tmp_path / "bench-data"
    ensure_bench_dataset(root, images=12, size=299)
    counts = class_counts(12)
    pngs = sorted(root.glob("*/images/*.png"))
    assert len(pngs) == 12
    for name, n in counts.items():
        files = sorted((root / name / "images").iterdir())
        assert [f.name for f in files] == sorted(f"{name}-{i}.png" for i in range(1, n + 1))
    with Image.open(pngs[0]) as im:
        assert im.format == "PNG" and im.mode == "L" and im.size == (299, 299)
        pixels = im.getextrema()
    assert pixels[1] - pixels[0] > 50  # structured, not a constant image
    raw = 299 * 299
    assert 0.2 * raw < pngs[0].stat().st_size < raw  # compresses like a real radiograph, not like a blank

    stamps = {p: p.stat().st_mtime_ns for p in pngs}
    meta = (root / "demo.json").read_text()
    ensure_bench_dataset(root, images=12, size=299)  # second call: nothing is rewritten
    assert {p: p.stat().st_mtime_ns for p in pngs} == stamps
    assert (root / "demo.json").read_text() == meta

    ensure_bench_dataset(root, images=8, size=64)  # other parameters: regenerated in place
    assert len(list(root.glob("*/images/*.png"))) == 8
    with Image.open(next(root.glob("*/images/*.png"))) as im:
        assert im.size == (64, 64)
    assert not list(tmp_path.glob(".bench-data.tmp-*"))


def test_parallel_generation_matches_the_layout(tmp_path):
    root = ensure_bench_dataset(tmp_path / "many", images=600, size=32, workers=2)
    counts = class_counts(600)
    for name, n in counts.items():
        assert len(list((root / name / "images").glob("*.png"))) == n
        assert (root / name / "images" / f"{name}-{n}.png").is_file()


def test_generator_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(LungclsError, match="not a lungcls demo data set"):
        ensure_bench_dataset(tmp_path / "mine", images=8, size=32)
    assert (tmp_path / "mine" / "notes.txt").is_file()


TINY = [
    "--device", "cpu",
    "--threads", "1",
    "--images", "32",
    "--source-size", "64",
    "--image-size", "32",
    "--batch-size", "4",
    "--finetune", "head",
    "--steps", "2",
    "--warmup", "1",
    "--workers", "1",
]


@pytest.mark.slow
def test_cpu_run_writes_all_five_measurements(tmp_path, capsys):
    out = tmp_path / "out"
    start = time.perf_counter()
    status = main([*TINY, "--gen-dir", str(tmp_path / "data"), "--out", str(out)])
    elapsed = time.perf_counter() - start
    printed = capsys.readouterr().out
    assert status == 0, printed
    report = json.loads((out / "bench.json").read_text())

    results = report["measurements"]
    assert set(results) == set(MEASUREMENTS)
    for name in MEASUREMENTS:
        assert results[name]["images_per_s"] > 0, (name, results[name])
        assert math.isfinite(results[name]["images_per_s"])
    # The rate is the median over windows of images / seconds, and the ratios are of those rates.
    e2e = results["end_to_end"]
    assert e2e["timed_images"] == 2 * 4
    assert e2e["images_per_s"] == pytest.approx(e2e["timed_images"] / e2e["timed_seconds"])
    for key, value in report["ratios"].items():
        a, b = key.split("/")
        assert value == pytest.approx(results[a]["images_per_s"] / results[b]["images_per_s"])
    assert {"end_to_end/ceiling", "end_to_end/naive", "epoch/end_to_end", "gradcam/ceiling"} <= set(report["ratios"])
    assert results["epoch"]["timed_images"] == report["data"]["train_images"] // 4 * 4

    assert report["settings"]["backbone"] == "resnet18" and report["settings"]["precision"] == "fp32"
    assert report["environment"]["torch"] and report["environment"]["device"] == "cpu"
    assert report["data"]["images"] == 32 and report["data"]["source"] == "64x64 L"
    assert all(t["passed"] is None for t in report["targets"])  # never judged on a CPU
    assert "not GPU numbers" in printed and "not GPU numbers" in report["notes"][0]
    for name in ("ceiling", "end-to-end", "whole epoch", "naive", "Grad-CAM"):
        assert name in printed
    assert elapsed < 60

    # A second run reuses the generated data set and honours --skip.
    status = main([*TINY, "--gen-dir", str(tmp_path / "data"), "--out", str(tmp_path / "again"), "--skip", "naive,e", "--checkpoints"])
    assert status == 0
    again = json.loads((tmp_path / "again" / "bench.json").read_text())
    assert again["measurements"]["epoch"]["checkpoints_saved"] is True
    assert {p.name for p in (tmp_path / "again" / "lightning" / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
    assert "reused" in again["data"]["origin"]
    assert again["measurements"]["naive"] == {"skipped": "--skip"}
    assert again["measurements"]["gradcam"] == {"skipped": "--skip"}
    assert "end_to_end/naive" not in again["ratios"]


def test_given_data_and_a_failing_measurement(tmp_path, monkeypatch, capsys):
    """--data uses an existing folder as is; a measurement that fails is reported, the rest still run."""
    root = ensure_bench_dataset(tmp_path / "given", images=24, size=48)

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setitem(MEASURE, "gradcam", broken)
    out = tmp_path / "out"
    status = main([*TINY, "--data", str(root), "--out", str(out), "--skip", "b,c,d"])
    assert status == 1
    report = json.loads((out / "bench.json").read_text())
    assert report["data"]["origin"] == "given" and report["data"]["images"] == 24
    assert report["measurements"]["ceiling"]["images_per_s"] > 0
    assert "out of memory (simulated)" in report["measurements"]["gradcam"]["error"]
    assert "FAILED" in capsys.readouterr().out


def test_steady_state_clock_counts_windows_and_host_syncs(monkeypatch):
    """The Lightning callback of (b), driven by hand: window edges, images per window, and the host
    synchronisations counted only in the check window after the timed ones (GPU-only in real runs)."""
    import torch

    modes = []
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    edges = window_edges(2, 6, 3)
    assert edges == [2, 4, 6, 8]
    clock = make_steady_state_clock("cpu", edges, sync_check=2)
    trainer = SimpleNamespace(current_epoch=0)
    batch = (None, torch.zeros(4), None)
    for k in range(edges[-1] + 3):
        clock.on_train_batch_start(trainer, None, batch, k)
        if k in (edges[-1], edges[-1] + 1):
            warnings.warn("called a synchronizing CUDA operation")
            warnings.warn("called a synchronizing CUDA operation")
    clock.on_train_end(trainer, None)
    assert len(clock.clock) == 4 and clock.images == [8, 8, 8]
    assert clock.sync_steps == 2 and sum(clock.sync_sites.values()) == 4
    assert all("tests/benchmark/test_bench.py:" in site for site in clock.sync_sites)
    assert modes == ["warn", "default"]


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    assert main(["--device", "cpu", "--skip", "everything", "--out", str(tmp_path)]) == 2
    assert "unknown measurement 'everything'" in capsys.readouterr().err
    assert main(["--device", "cpu", "--data", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    assert "is not a folder" in capsys.readouterr().err
