"""Tests for lungcls.inference.screening: hand-checked operating points, the val-chosen threshold, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lungcls.errors import LungclsError
from lungcls.inference.screening import screening_report

NAMES = ["COVID", "Normal", "Viral Pneumonia"]
# COVID scores (column 0): positives 0.7, 0.4, 0.3; negatives 0.1, 0.5, 0.2.
TEST_PROBS = np.array(
    [
        [0.7, 0.2, 0.1],  # COVID, argmax COVID -> TP
        [0.4, 0.5, 0.1],  # COVID, argmax Normal -> FN
        [0.3, 0.3, 0.4],  # COVID, argmax Viral -> FN
        [0.1, 0.8, 0.1],  # Normal -> TN
        [0.5, 0.1, 0.4],  # Viral, argmax COVID -> FP
        [0.2, 0.1, 0.7],  # Viral -> TN
    ]
)
TEST_LABELS = np.array([0, 0, 0, 1, 2, 2])
# COVID scores on val: positives 0.9, 0.6, 0.5, 0.2; negatives 0.55, 0.1.
VAL_PROBS = np.array(
    [
        [0.9, 0.05, 0.05],
        [0.6, 0.3, 0.1],
        [0.5, 0.4, 0.1],
        [0.2, 0.7, 0.1],
        [0.55, 0.4, 0.05],
        [0.1, 0.1, 0.8],
    ]
)
VAL_LABELS = np.array([0, 0, 0, 0, 1, 2])


def _point(r):
    return {k: r[k] for k in ("tp", "fn", "tn", "fp")}


def test_argmax_and_fixed_threshold_by_hand():
    r = screening_report(NAMES, "COVID", TEST_PROBS, TEST_LABELS, threshold=0.35)
    assert r["n_test"] == 6 and r["n_test_positive"] == 3
    a = r["argmax"]
    assert _point(a) == {"tp": 1, "fn": 2, "tn": 2, "fp": 1}
    assert a["sensitivity"] == pytest.approx(1 / 3)
    assert a["specificity"] == pytest.approx(2 / 3)
    assert a["threshold"] is None
    f = r["fixed_threshold"]
    assert _point(f) == {"tp": 2, "fn": 1, "tn": 2, "fp": 1}
    assert f["sensitivity"] == pytest.approx(2 / 3)
    assert f["threshold"] == 0.35
    # 7 of the 9 positive/negative pairs are ranked correctly.
    assert r["test_roc_auc"] == pytest.approx(7 / 9)


def test_threshold_is_inclusive():
    r = screening_report(NAMES, "COVID", TEST_PROBS, TEST_LABELS, threshold=0.3)
    assert _point(r["fixed_threshold"]) == {"tp": 3, "fn": 0, "tn": 2, "fp": 1}
    assert r["fixed_threshold"]["sensitivity"] == 1.0


def test_no_threshold_and_no_val_give_none_with_reason():
    r = screening_report(NAMES, "COVID", TEST_PROBS, TEST_LABELS)
    assert r["fixed_threshold"] is None
    t = r["target_sensitivity"]
    assert t["threshold"] is None and t["val"] is None and t["test"] is None
    assert isinstance(t["reason"], str) and t["reason"]
    json.dumps(r, allow_nan=False)


@pytest.mark.parametrize("target, expected", [(0.75, 0.5), (0.5, 0.6), (1.0, 0.2), (0.25, 0.9)])
def test_threshold_chosen_on_val_by_hand(target, expected):
    r = screening_report(
        NAMES, "COVID", TEST_PROBS, TEST_LABELS, VAL_PROBS, VAL_LABELS, target_sensitivity=target
    )
    t = r["target_sensitivity"]
    assert t["reason"] is None
    assert t["target"] == target
    assert t["threshold"] == pytest.approx(expected)
    assert t["val"]["sensitivity"] >= target


def test_val_threshold_applied_to_test():
    r = screening_report(
        NAMES, "COVID", TEST_PROBS, TEST_LABELS, VAL_PROBS, VAL_LABELS, target_sensitivity=0.75
    )
    t = r["target_sensitivity"]
    assert _point(t["val"]) == {"tp": 3, "fn": 1, "tn": 1, "fp": 1}
    assert t["val"]["specificity"] == 0.5
    # Test scores >= 0.5: 0.7 (COVID) and 0.5 (Viral).
    assert _point(t["test"]) == {"tp": 1, "fn": 2, "tn": 2, "fp": 1}
    assert t["test"]["threshold"] == pytest.approx(0.5)
    json.dumps(r, allow_nan=False)


def test_highest_threshold_not_hidden_by_roc_point_dropping():
    # Positives 0.9, 0.8, 0.7, 0.6 share FPR 0: roc_curve's default dropping of collinear points
    # would skip 0.8 and 0.7 and pick 0.6 for a 0.75 target; the highest correct answer is 0.7.
    val = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4], [0.1, 0.9]])
    r = screening_report(["COVID", "Normal"], "COVID", val, np.array([0, 0, 0, 0, 1]), val,
                         np.array([0, 0, 0, 0, 1]), target_sensitivity=0.75)
    assert r["target_sensitivity"]["threshold"] == pytest.approx(0.7)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("target", [0.8, 0.95])
def test_chosen_threshold_reaches_target_and_is_highest(seed, target):
    rng = np.random.default_rng(seed)
    k, n = 4, 400
    names = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]

    def fake(n_img):
        labels = rng.integers(0, k, n_img)
        logits = rng.normal(size=(n_img, k))
        logits[np.arange(n_img), labels] += 1.5
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        return probs, labels

    vp, vl = fake(n)
    tp_, tl = fake(n)
    r = screening_report(names, "COVID", tp_, tl, vp, vl, target_sensitivity=target)
    thr = r["target_sensitivity"]["threshold"]
    pos = vl == 0
    score = vp[:, 0]
    sens = np.mean(score[pos] >= thr)
    assert sens >= target
    assert r["target_sensitivity"]["val"]["sensitivity"] == pytest.approx(sens)
    # Any higher threshold misses the target.
    assert np.mean(score[pos] >= np.nextafter(thr, np.inf)) < target
    test_sens = np.mean(tp_[tl == 0, 0] >= thr)
    assert r["target_sensitivity"]["test"]["sensitivity"] == pytest.approx(test_sens)


def test_val_without_positives_gives_reason():
    vl = np.array([1, 1, 2, 2, 1, 2])
    r = screening_report(NAMES, "COVID", TEST_PROBS, TEST_LABELS, VAL_PROBS, vl)
    t = r["target_sensitivity"]
    assert t["threshold"] is None and t["test"] is None
    assert "COVID" in t["reason"]


def test_test_without_negatives_has_no_auc():
    r = screening_report(NAMES, "COVID", TEST_PROBS[:3], TEST_LABELS[:3])
    assert r["test_roc_auc"] is None
    assert r["argmax"]["specificity"] is None
    assert r["argmax"]["sensitivity"] == pytest.approx(1 / 3)


def test_unknown_positive_class_names_known_classes():
    with pytest.raises(LungclsError) as err:
        screening_report(NAMES, "Covid", TEST_PROBS, TEST_LABELS)
    msg = str(err.value)
    assert "Covid" in msg and "Viral Pneumonia" in msg and "Normal" in msg


@pytest.mark.parametrize("kw", [{"threshold": 1.5}, {"target_sensitivity": 0.0}])
def test_bad_config_values_are_user_errors(kw):
    with pytest.raises(LungclsError):
        screening_report(NAMES, "COVID", TEST_PROBS, TEST_LABELS, VAL_PROBS, VAL_LABELS, **kw)


def test_bad_shapes_are_value_errors():
    with pytest.raises(ValueError):
        screening_report(NAMES, "COVID", TEST_PROBS[:, :2], TEST_LABELS)
    with pytest.raises(ValueError):
        screening_report(NAMES, "COVID", TEST_PROBS, TEST_LABELS[:3])
    with pytest.raises(ValueError):
        screening_report(NAMES, "COVID", TEST_PROBS, TEST_LABELS, val_probs=VAL_PROBS)


def test_report_is_plain_json():
    r = screening_report(
        NAMES, "COVID", TEST_PROBS, TEST_LABELS, VAL_PROBS, VAL_LABELS, threshold=0.4
    )
    assert json.loads(json.dumps(r, allow_nan=False)) == r

    def walk(o):
        if isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)
        else:
            assert o is None or type(o) in (int, float, str, bool), type(o)

    walk(r)
