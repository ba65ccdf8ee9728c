"""Tests for lungcls.metrics: hand-computed confusion summaries, scikit-learn agreement, logging
keys, per-class probability intervals and the confusion-matrix figure."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import (
    classification_report,
    confusion_matrix,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
)

from lungcls.errors import LungclsError
from lungcls.metrics import class_probability_ci, flat_metrics, summarize_confusion
from lungcls.runs.figures import plot_confusion_matrix

THREE = ["COVID", "Normal", "Viral Pneumonia"]
# rows = true, columns = predicted
CM_THREE = [
    [8, 1, 1],
    [0, 9, 1],
    [2, 3, 5],
]

FOUR = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
# Lung_Opacity: no support and never predicted; Viral Pneumonia: has support, never predicted.
CM_FOUR = [
    [3, 0, 1, 0],
    [0, 0, 0, 0],
    [1, 0, 4, 0],
    [0, 0, 2, 0],
]


def _assert_plain(obj) -> None:
    """Only JSON's own Python types (no numpy scalars, no NaN) anywhere in obj."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert type(k) is str
            _assert_plain(v)
    elif isinstance(obj, list):
        for v in obj:
            _assert_plain(v)
    else:
        assert obj is None or type(obj) in (int, float, str, bool), (obj, type(obj))
        if type(obj) is float:
            assert math.isfinite(obj)


def test_summary_three_classes_by_hand():
    s = summarize_confusion(CM_THREE, THREE)
    assert set(s) == {"accuracy", "macro_f1", "per_class", "fn_to_normal", "confusion_matrix", "class_names"}
    assert s["accuracy"] == pytest.approx(22 / 30)
    pc = s["per_class"]
    assert list(pc) == THREE
    assert pc["COVID"] == pytest.approx(
        {"precision": 0.8, "recall": 0.8, "f1": 0.8, "specificity": 18 / 20, "support": 10}
    )
    assert pc["Normal"] == pytest.approx(
        {"precision": 9 / 13, "recall": 0.9, "f1": 18 / 23, "specificity": 16 / 20, "support": 10}
    )
    assert pc["Viral Pneumonia"] == pytest.approx(
        {"precision": 5 / 7, "recall": 0.5, "f1": 10 / 17, "specificity": 18 / 20, "support": 10}
    )
    assert s["macro_f1"] == pytest.approx((0.8 + 18 / 23 + 10 / 17) / 3)
    # Missed disease: true class predicted Normal; the Normal class itself is not listed.
    assert s["fn_to_normal"] == {"COVID": 1, "Viral Pneumonia": 3}
    assert s["confusion_matrix"] == CM_THREE
    assert s["class_names"] == THREE
    _assert_plain(s)


def test_summary_undefined_values_are_none_and_json_null():
    s = summarize_confusion(np.array(CM_FOUR), FOUR)
    pc = s["per_class"]
    assert s["accuracy"] == pytest.approx(7 / 11)
    # No support, never predicted: precision, recall and F1 undefined; specificity is 11/11.
    assert pc["Lung_Opacity"] == {
        "precision": None, "recall": None, "f1": None, "specificity": 1.0, "support": 0,
    }
    # Has support but never predicted: recall is a real 0, precision undefined, F1 a real 0
    # (ignoring a class must not raise macro F1).
    assert pc["Viral Pneumonia"]["precision"] is None
    assert pc["Viral Pneumonia"]["recall"] == 0.0
    assert pc["Viral Pneumonia"]["f1"] == 0.0
    assert pc["Viral Pneumonia"]["specificity"] == 1.0
    assert pc["COVID"] == pytest.approx(
        {"precision": 0.75, "recall": 0.75, "f1": 0.75, "specificity": 6 / 7, "support": 4}
    )
    assert pc["Normal"] == pytest.approx(
        {"precision": 4 / 7, "recall": 0.8, "f1": 2 / 3, "specificity": 0.5, "support": 5}
    )
    # Mean over the classes present in the split (COVID, Normal, Viral Pneumonia).
    assert s["macro_f1"] == pytest.approx((0.75 + 2 / 3 + 0.0) / 3)
    # No Lung_Opacity images: nothing to miss is not "none missed", so null like its recall.
    assert s["fn_to_normal"] == {"COVID": 1, "Lung_Opacity": None, "Viral Pneumonia": 2}

    text = json.dumps(s, allow_nan=False)
    assert "NaN" not in text
    back = json.loads(text)
    assert back["per_class"]["Lung_Opacity"]["precision"] is None
    assert '"precision": null' in text
    assert back == s
    _assert_plain(s)


def test_summary_zero_f1_when_precision_and_recall_are_zero():
    s = summarize_confusion([[0, 2], [2, 0]], ["Normal", "COVID"])
    assert s["accuracy"] == 0.0
    for name in ("Normal", "COVID"):
        assert s["per_class"][name]["precision"] == 0.0
        assert s["per_class"][name]["recall"] == 0.0
        assert s["per_class"][name]["f1"] == 0.0
        assert s["per_class"][name]["specificity"] == 0.0
    assert s["macro_f1"] == 0.0
    assert s["fn_to_normal"] == {"COVID": 2}


def test_summary_empty_and_single_class_matrices():
    s = summarize_confusion(np.zeros((2, 2), dtype=int), ["Normal", "COVID"])
    assert s["accuracy"] is None and s["macro_f1"] is None
    assert all(v is None for m in s["per_class"].values() for k, v in m.items() if k != "support")
    assert s["fn_to_normal"] == {"COVID": None}
    # Every image is Normal: Normal's specificity has no negatives to be about.
    s = summarize_confusion([[5, 0], [0, 0]], ["Normal", "COVID"])
    assert s["per_class"]["Normal"]["specificity"] is None
    assert s["per_class"]["COVID"]["specificity"] == 1.0
    assert s["accuracy"] == 1.0
    json.dumps(s, allow_nan=False)


def test_summary_accepts_whole_floats_and_no_normal_class():
    s = summarize_confusion(np.array(CM_THREE, dtype=np.float32), THREE, normal_class=None)
    assert s["fn_to_normal"] == {}
    assert s["confusion_matrix"] == CM_THREE
    _assert_plain(s)


def test_summary_other_normal_class():
    s = summarize_confusion(CM_THREE, THREE, normal_class="COVID")
    assert s["fn_to_normal"] == {"Normal": 0, "Viral Pneumonia": 2}


def test_unknown_normal_class_is_a_user_error():
    with pytest.raises(LungclsError) as err:
        summarize_confusion(CM_THREE, THREE, normal_class="Healthy")
    msg = str(err.value)
    assert "Healthy" in msg and "Viral Pneumonia" in msg and "dataset.normal_class" in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    "cm, names",
    [
        ([[1, 2, 3], [4, 5, 6]], ["A", "B", "C"]),  # not square
        ([[1, 0], [0, 1]], ["A", "B", "C"]),  # names do not match
        ([[1, -1], [0, 1]], ["A", "B"]),  # negative count
        ([[1.5, 0], [0, 1]], ["A", "B"]),  # not a count
        ([1, 2, 3, 4], ["A", "B"]),  # not 2-D
        ([[1, 0], [0, 1]], ["A", "A"]),  # repeated class
    ],
)
def test_bad_confusion_matrix_is_value_error(cm, names):
    with pytest.raises(ValueError):
        summarize_confusion(cm, names, normal_class=None)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_summary_matches_sklearn_on_random_labels(seed):
    rng = np.random.default_rng(seed)
    k, n = 4, 300
    y_true = rng.integers(0, k, n)
    # Mostly right, so the numbers are not all near 1/k.
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, k, n))
    names = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
    cm = confusion_matrix(y_true, y_pred, labels=list(range(k)))
    s = summarize_confusion(cm, names)

    p, r, f, sup = precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(k)), zero_division=np.nan
    )
    report = classification_report(
        y_true, y_pred, labels=list(range(k)), target_names=names, output_dict=True,
        zero_division=np.nan,
    )
    mcm = multilabel_confusion_matrix(y_true, y_pred, labels=list(range(k)))
    for i, name in enumerate(names):
        ours = s["per_class"][name]
        assert ours["precision"] == pytest.approx(p[i], abs=1e-12)
        assert ours["recall"] == pytest.approx(r[i], abs=1e-12)
        assert ours["f1"] == pytest.approx(f[i], abs=1e-12)
        assert ours["support"] == sup[i]
        assert ours["f1"] == pytest.approx(report[name]["f1-score"], abs=1e-12)
        tn, fp = mcm[i][0, 0], mcm[i][0, 1]
        assert ours["specificity"] == pytest.approx(tn / (tn + fp), abs=1e-12)
    assert s["accuracy"] == pytest.approx(report["accuracy"], abs=1e-12)
    assert s["macro_f1"] == pytest.approx(report["macro avg"]["f1-score"], abs=1e-12)
    normal = names.index("Normal")
    expected_fn = {
        name: int(np.sum((y_true == i) & (y_pred == normal))) for i, name in enumerate(names) if i != normal
    }
    assert s["fn_to_normal"] == expected_fn


def test_flat_metrics_keys_and_values():
    s = summarize_confusion(CM_FOUR, FOUR)
    flat = flat_metrics(s, "val")
    expected = {
        "val/acc", "val/macro_f1",
        "val/precision/COVID", "val/precision/Normal",
        "val/recall/COVID", "val/recall/Normal", "val/recall/Viral Pneumonia",
        "val/f1/COVID", "val/f1/Normal", "val/f1/Viral Pneumonia",
        "val/specificity/COVID", "val/specificity/Lung_Opacity", "val/specificity/Normal",
        "val/specificity/Viral Pneumonia",
        "val/fn_to_normal/COVID",  # no Lung_Opacity images: its missed count is undefined, not logged
        "val/fn_to_normal/Viral Pneumonia", "val/fn_to_normal_total",
    }
    assert set(flat) == expected
    assert flat["val/acc"] == pytest.approx(7 / 11)
    assert flat["val/recall/Viral Pneumonia"] == 0.0  # defined zero is logged, undefined is not
    assert flat["val/fn_to_normal/Viral Pneumonia"] == 2.0
    assert flat["val/fn_to_normal_total"] == 3.0
    # ratios are floats, counts stay whole numbers
    assert all(type(v) is (int if "fn_to_normal" in k else float) for k, v in flat.items())


def test_flat_metrics_without_normal_class_and_other_stage():
    flat = flat_metrics(summarize_confusion(CM_THREE, THREE, normal_class=None), "test")
    assert all(k.startswith("test/") for k in flat)
    assert not any("fn_to_normal" in k for k in flat)
    assert len(flat) == 2 + 4 * 3


def test_class_probability_ci_by_hand():
    names = ["COVID", "Normal", "Viral Pneumonia"]
    probs = np.array(
        [
            [0.9, 0.05, 0.05],
            [0.7, 0.2, 0.1],
            [0.8, 0.1, 0.1],
            [0.3, 0.6, 0.1],
        ]
    )
    labels = np.array([0, 0, 0, 1])
    out = class_probability_ci(probs, labels, names)
    # COVID: values 0.9, 0.7, 0.8 -> mean 0.8, sample sd 0.1, t(0.975, df=2) = 4.302652729749462
    half = 4.302652729749462 * 0.1 / math.sqrt(3)
    assert out["COVID"]["n"] == 3
    assert out["COVID"]["mean"] == pytest.approx(0.8)
    assert out["COVID"]["ci_low"] == pytest.approx(0.8 - half)
    assert out["COVID"]["ci_high"] == pytest.approx(0.8 + half)
    assert out["Normal"] == {"mean": pytest.approx(0.6), "ci_low": None, "ci_high": None, "n": 1}
    assert out["Viral Pneumonia"] == {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
    _assert_plain(out)

    narrow = class_probability_ci(probs, labels, names, confidence=0.90)["COVID"]
    assert narrow["ci_high"] - narrow["mean"] == pytest.approx(2.9199855803537242 * 0.1 / math.sqrt(3))


def test_class_probability_ci_rejects_bad_shapes():
    with pytest.raises(ValueError):
        class_probability_ci(np.zeros((3, 2)), np.array([0, 1, 0]), ["A", "B", "C"])
    with pytest.raises(ValueError):
        class_probability_ci(np.zeros((3, 2)), np.array([0, 2, 0]), ["A", "B"])
    with pytest.raises(ValueError):
        class_probability_ci(np.zeros((3, 2)), np.array([0, 1, 0]), ["A", "B"], confidence=95)


def test_plot_confusion_matrix_writes_png(tmp_path):
    import matplotlib.pyplot as plt
    from PIL import Image

    before = set(plt.get_fignums())
    path = plot_confusion_matrix(CM_FOUR, FOUR, tmp_path / "nested" / "confusion_matrix.png", title="test")
    assert path.exists() and path.stat().st_size > 1000
    with Image.open(path) as im:
        assert im.format == "PNG"
        width, height = im.size
    assert width > height  # two panels side by side
    assert set(plt.get_fignums()) == before  # nothing left open
