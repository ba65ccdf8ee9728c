"""The miss-rate cap keeps its promise: conformal risk control's expected miss rate and
Learn-then-Test's high-probability bound hold over many calibration draws, today's validation
quantile does not, and groups too small for the cap fall back to the pooled threshold."""

from __future__ import annotations

import numpy as np
import pytest

from lungcls.metrics.riskcontrol import (achieved, allowed_misses, calibrate, decide, held_out_miss_rates, mondrian, simulate,
                                         smallest_alpha)


def true_miss_rates(n: int, alpha: float, method: str, draws: int = 4000, delta: float = 0.1) -> np.ndarray:
    """Uniform disease scores: the true miss rate of a threshold t (P(score > t)) is 1 - t."""
    ranked = -np.sort(-np.random.default_rng(0).random((draws, n)), axis=1)
    m = int(allowed_misses(n, alpha, method, delta))
    return np.zeros(draws) if m < 0 else 1.0 - ranked[:, m]


@pytest.mark.parametrize("n", [30, 45, 60])
def test_each_rule_keeps_or_breaks_its_promise_as_the_issue_computes(n):
    crc = true_miss_rates(n, 0.05, "crc")
    assert crc.mean() <= 0.05 + 0.01
    ltt = true_miss_rates(n, 0.05, "ltt")
    assert (ltt > 0.05).mean() <= 0.1 + 0.03
    quantile = true_miss_rates(n, 0.05, "validation_quantile")
    # Beta(m+1, n-m) with m = floor(0.05 n): about 6.5% on average, above 5% for most draws
    assert quantile.mean() == pytest.approx(0.065, abs=0.004)
    assert (quantile > 0.05).mean() > 0.5


def test_guarantees_hold_over_random_splits_of_a_scored_pool():
    rng = np.random.default_rng(1)
    disease = np.r_[np.ones(450, bool), np.zeros(150, bool)]
    scores = np.where(disease, rng.beta(2, 5, 600), rng.beta(5, 2, 600))  # Normal scores
    out = simulate(scores, disease, [0.02, 0.05, 0.10], delta=0.1, splits=500, calibration_share=0.3, seed=2)
    assert out["splits"] == 500 and set(out["alphas"]) == {"0.02", "0.05", "0.10"}
    for key, row in out["alphas"].items():
        alpha = float(key)
        assert row["crc"]["mean_miss"] <= alpha + 0.01
        assert row["ltt"]["share_above_alpha"] <= 0.1 + 0.03
        assert row["ltt"]["mean_miss"] <= row["crc"]["mean_miss"] + 1e-12  # the stronger promise costs more referrals
        assert row["ltt"]["mean_referred_normal"] >= row["crc"]["mean_referred_normal"]
        assert row["validation_quantile"]["share_above_alpha"] > row["ltt"]["share_above_alpha"]


def test_crc_threshold_by_hand_and_the_smallest_reachable_alpha():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.99])
    disease = np.r_[np.ones(10, bool), False]
    # n = 10, alpha = 0.2: m + 1 <= 0.2 * 11 -> one miss allowed: the second largest disease score
    got = calibrate(scores, disease, 0.2)
    assert got["threshold"] == 0.8 and got["allowed_misses"] == 1 and got["calibration"] == {"disease": 10, "all": 11}
    assert (scores[disease] > got["threshold"]).sum() == 1
    out = calibrate(scores, disease, 0.05)  # needs n >= 19
    assert out["threshold"] is None and out["smallest_alpha"] == pytest.approx(1 / 11) and "0.0909" in out["reason"]
    assert int(allowed_misses(19, 0.05)) == 0 and int(allowed_misses(18, 0.05)) == -1
    assert smallest_alpha(45, "ltt", 0.1) == pytest.approx(1 - 0.1 ** (1 / 45))


def test_mondrian_groups_too_small_fall_back_to_the_pooled_threshold():
    rng = np.random.default_rng(3)
    groups = np.array(["big"] * 200 + ["small"] * 10)
    disease = np.ones(210, bool)
    scores = np.r_[rng.random(200) * 0.5, rng.random(10)]
    out = mondrian(scores, disease, groups, 0.05)
    assert not out["groups"]["big"]["fallback"]
    assert out["groups"]["big"]["threshold"] == calibrate(scores[:200], disease[:200], 0.05)["threshold"]
    small = out["groups"]["small"]
    assert small["fallback"] and small["threshold"] == out["pooled"]["threshold"] and small["reason"]


def test_referral_decision_and_achieved_rates_with_wilson_intervals():
    probs = np.array([[0.1, 0.8, 0.1], [0.3, 0.6, 0.1], [0.7, 0.2, 0.1], [0.05, 0.9, 0.05], [0.2, 0.5, 0.3]])
    labels = np.array([0, 0, 2, 1, 1])  # class 1 is Normal
    called, referred = decide(probs, 1, 0.7)
    assert called.tolist() == [1, 0, 0, 1, 2] and referred.tolist() == [False, True, True, False, True]
    got = achieved(~referred, labels, ["COVID", "Normal", "Pneumonia"], 1)
    assert got["miss_rate"]["count"] == 1 and got["miss_rate"]["images"] == 3
    assert got["per_class"]["COVID"]["rate"] == 0.5 and got["per_class"]["Pneumonia"]["rate"] == 0.0
    assert got["referred_normal"]["rate"] == 0.5 and got["specificity"]["rate"] == 0.5
    lo, hi = got["miss_rate"]["interval"]
    assert 0 < lo < 1 / 3 < hi < 1


def test_held_out_source_measures_where_the_cap_ends():
    from lungcls.metrics.predictions import Predictions

    rng = np.random.default_rng(4)
    names = ["COVID", "Normal"]

    def draw(n, shift):  # disease images look more Normal at a shifted source
        y = np.r_[np.zeros(n, int), np.ones(n, int)]
        normal = np.clip(np.where(y == 1, rng.beta(5, 2, 2 * n), rng.beta(2, 5, 2 * n) + shift), 0, 1)
        return Predictions([str(i) for i in range(2 * n)], y, np.c_[1 - normal, normal], names)

    cal = draw(400, 0.0)
    same = held_out_miss_rates(cal, draw(2000, 0.0), names, "Normal")
    moved = held_out_miss_rates(cal, draw(2000, 0.3), names, "Normal")
    assert set(same) == {"0.02", "0.05", "0.10"}
    for alpha in same:
        assert same[alpha]["miss_rate"] <= float(alpha) + 0.02 and same[alpha]["calibration_disease"] == 400
        assert moved[alpha]["miss_rate"] > float(alpha) and moved[alpha]["kept"] is False
        lo, hi = moved[alpha]["interval"]
        assert lo <= moved[alpha]["miss_rate"] <= hi


@pytest.mark.slow
def test_leave_one_source_out_run_reports_the_cap_at_the_held_out_source_in_generalisation_csv(data_dir, tmp_path):
    import csv as csvmod
    import json

    from conftest import TINY, run_cli
    from lungcls.compare import main as compare_main

    run = tmp_path / "loso" / "0"
    out = run_cli("lungcls.train", *TINY, "backbone=logistic", "dataset.demo.sources=3", "dataset.folds=source",
                  "dataset.fold=0", f"paths.data_dir={data_dir}", f"hydra.run.dir={run}")
    assert out.returncode == 0, out.stderr[-2000:]
    caps = json.loads((run / "metrics.json").read_text())["miss_rate_at_held_out_source"]
    assert set(caps) == {"0.02", "0.05", "0.10"} and all(c["images"] > 0 for c in caps.values())
    assert compare_main([str(tmp_path / "loso"), "--out", str(tmp_path / "out")]) == 0
    row, = csvmod.DictReader((tmp_path / "out" / "generalisation.csv").open())
    assert float(row["miss_rate_cap/0.05"]) == pytest.approx(caps["0.05"]["miss_rate"])
