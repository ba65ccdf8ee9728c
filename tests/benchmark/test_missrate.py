"""lungcls-bench --miss-rate: the pool is scored once, miss_rate.json holds what the issue asks for
(per alpha and rule: mean miss, share above alpha, mean Normal referred) computed from that pool,
and a finished measurement is never written over."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from lungcls.benchmark.__main__ import main as bench_main
from lungcls.metrics.riskcontrol import simulate


def test_miss_rate_bench_on_a_tiny_pool(logistic_run, data_dir, tmp_path, capsys):
    out = tmp_path / "bench"
    args = ["--miss-rate", "--ckpt", str(logistic_run / "checkpoints" / "best.ckpt"), "--pool-per-class", "12",
            "--pool-source-size", "64", "--miss-splits", "100", "--gen-dir", str(data_dir), "--out", str(out)]
    assert bench_main(args) == 0
    result = json.loads((out / "miss_rate.json").read_text())
    assert result["delta"] == 0.1 and result["splits"] == 100 and set(result["alphas"]) == {"0.02", "0.05", "0.10"}
    for rows in result["alphas"].values():
        assert set(rows) == {"crc", "ltt", "validation_quantile"}
        assert all({"mean_miss", "share_above_alpha", "mean_referred_normal"} <= set(r) for r in rows.values())
    rows = list(csv.DictReader((out / "pool" / "predictions.csv").open()))
    assert result["pool"]["images"] == len(rows) > 0
    scores = np.array([float(r["prob_Normal"]) for r in rows])
    again = simulate(scores, np.array([r["label"] != "Normal" for r in rows]), [0.02, 0.05, 0.10], 0.1, 100, 0.3, 0)
    assert again["alphas"] == result["alphas"]
    printed = capsys.readouterr().out
    assert "validation_quantile" in printed and "share > alpha" in printed and (out / "miss_rate.png").is_file()
    assert bench_main(args) == 2 and "exists; give another --out" in capsys.readouterr().err


def test_miss_rate_bench_refuses_bad_delta_and_missing_checkpoint(tmp_path, capsys):
    assert bench_main(["--miss-rate", "--miss-delta", "1.5", "--out", str(tmp_path / "a")]) == 2
    assert "--miss-delta 1.5" in capsys.readouterr().err
    assert bench_main(["--miss-rate", "--ckpt", str(tmp_path / "none.ckpt"), "--out", str(tmp_path / "b")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_miss_rate_bench_on_the_default_demo_model(tmp_path, monkeypatch):
    """The issue's measurement: the default demo model, 150 images per class, 500 splits; the
    promises of conformal risk control and Learn-then-Test hold."""
    monkeypatch.chdir(tmp_path)
    assert bench_main(["--miss-rate", "--gen-dir", str(tmp_path / "data"), "--out", str(tmp_path / "bench")]) == 0
    result = json.loads((tmp_path / "bench" / "miss_rate.json").read_text())
    assert result["pool"]["images"] >= 500 and result["splits"] == 500
    assert all(check["passed"] for check in result["checks"]), result["checks"]
    assert Path(tmp_path / "outputs" / "bench" / "miss-rate-model" / "checkpoints" / "best.ckpt").is_file()
