"""``evaluate.miss_rate``: the threshold is the one conformal risk control (or Learn-then-Test)
gives on the val predictions, its achieved miss rate is what the test predictions say, per group
too, and every bad request is one line before any image is decoded."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from lungcls.errors import LungclsError
from lungcls.evaluate import evaluate
from lungcls.metrics.riskcontrol import calibrate

from conftest import compose_cfg

CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]


def run_evaluate(run: Path, out: Path, data_dir: Path, *overrides: str) -> dict:
    evaluate(compose_cfg("evaluate", [f"ckpt={run}/checkpoints/best.ckpt", *overrides], out, data_dir))
    return json.loads((out / "metrics.json").read_text())


def read_probs(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    rows = list(csv.DictReader(path.open()))
    labels = np.array([CLASSES.index(r["label"]) for r in rows])
    return [r["path"] for r in rows], labels, np.array([[float(r[f"prob_{c}"]) for c in CLASSES] for r in rows])


@pytest.fixture(scope="module")
def scored(logistic_run, data_dir, tmp_path_factory):
    """The val and test predictions of the shared logistic run, as lungcls-evaluate writes them."""
    out = tmp_path_factory.mktemp("scored")
    for split in ("val", "test"):
        run_evaluate(logistic_run, out / split, data_dir, f"dataset.split={split}")
    return {split: read_probs(out / split / "predictions.csv") for split in ("val", "test")}


@pytest.mark.parametrize("guarantee,method", [("expected", "crc"), ("high_probability", "ltt")])
def test_cap_threshold_comes_from_val_and_its_miss_rate_from_test(logistic_run, data_dir, tmp_path, scored, guarantee, method):
    got = run_evaluate(logistic_run, tmp_path, data_dir, "evaluate.miss_rate=0.3", f"evaluate.miss_guarantee={guarantee}",
                       "evaluate.miss_delta=0.5")["miss_rate_control"]
    _, y_val, p_val = scored["val"]
    want = calibrate(p_val[:, 2], y_val != 2, 0.3, method, 0.5)
    assert got["method"] == method and got["threshold"] == pytest.approx(want["threshold"], abs=1e-4)
    assert got["calibration"] == {"split": "val", "disease": int((y_val != 2).sum()), "all": len(y_val)}
    _, y, p = scored["test"]
    missed = (y != 2) & (p[:, 2] > got["threshold"])
    assert got["achieved"]["miss_rate"]["count"] == int(missed.sum())
    assert got["achieved"]["miss_rate"]["images"] == int((y != 2).sum())
    for k, name in enumerate(CLASSES):
        if name != "Normal":
            assert got["achieved"]["per_class"][name]["count"] == int(missed[y == k].sum())
    referred = int(((y == 2) & (p[:, 2] <= got["threshold"])).sum())
    assert got["achieved"]["referred_normal"]["count"] == referred
    lo, hi = got["achieved"]["referred_normal"]["interval"]
    assert lo <= referred / int((y == 2).sum()) <= hi
    assert got["delta"] == (0.5 if method == "ltt" else None)


def test_cap_per_group_and_group_metrics_from_a_manifest_column(logistic_run, data_dir, tmp_path):
    every = list(csv.DictReader((logistic_run / "splits.csv").open()))
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split", "ward"])
        for i, r in enumerate(every):  # half val, half test; one ward too small for the cap
            ward = "annex" if i < 2 else ("east" if i % 4 in (0, 1) else "west")
            w.writerow([r["path"], r["label"], "val" if i % 2 == 0 else "test", ward])
    data = ["dataset=manifest", f"dataset.manifest={manifest}", f"dataset.classes=[{','.join(CLASSES)}]",
            "evaluate.exclude_training_images=false"]
    run_evaluate(logistic_run, tmp_path / "val", data_dir, *data, "dataset.split=val")
    val_paths, y_val, p_val = read_probs(tmp_path / "val" / "predictions.csv")
    wards = {r["path"]: r["ward"] for r in csv.DictReader(manifest.open())}
    got = run_evaluate(logistic_run, tmp_path / "ev", data_dir, *data, "evaluate.miss_rate=0.2",
                       "evaluate.miss_rate_by=ward", "evaluate.group_by=[ward]")
    cap = got["miss_rate_control"]
    assert cap["by"] == "ward" and set(cap["groups"]) == {"annex", "east", "west"}
    for ward in ("east", "west"):
        mine = np.array([wards[p] == ward for p in val_paths])
        want = calibrate(p_val[mine, 2], y_val[mine] != 2, 0.2)["threshold"]
        assert not cap["groups"][ward]["fallback"] and cap["groups"][ward]["threshold"] == pytest.approx(want, abs=1e-4)
    annex = cap["groups"]["annex"]
    assert annex["fallback"] and annex["threshold"] == cap["threshold"] and "at best" in annex["reason"]
    test_paths, y, p = read_probs(tmp_path / "ev" / "predictions.csv")
    west = np.array([wards[q] == "west" for q in test_paths])
    missed = (y != 2) & (p[:, 2] > cap["groups"]["west"]["threshold"])
    assert cap["groups"]["west"]["achieved"]["miss_rate"]["count"] == int(missed[west].sum())
    groups = got["group_metrics"]["ward"]
    assert sum(g["images"] for g in groups["groups"].values()) == len(test_paths)
    covid = (y == 0) & west
    assert groups["groups"]["west"]["recall"]["COVID"]["count"] == int((p[covid].argmax(axis=1) == 0).sum())
    assert groups["gaps"]["largest"]["gap"] >= 0


@pytest.mark.parametrize("overrides,message", [
    (["evaluate.miss_rate=0"], "evaluate.miss_rate=0"),
    (["evaluate.miss_rate=1.5"], "must be in (0, 1)"),
    (["evaluate.miss_rate=0.1", "evaluate.miss_delta=1"], "evaluate.miss_delta=1"),
    (["evaluate.miss_rate=0.1", "evaluate.miss_guarantee=always"], "expected, high_probability"),
    (["evaluate.miss_rate=0.1", "evaluate.calibration=test"], "calibrate on another split"),
    (["evaluate.miss_rate=0.1", "dataset.split=all"], "calibrate on no images"),
    (["evaluate.miss_rate=0.1", "evaluate.miss_rate_by=source"], "this data has no source"),
    (["evaluate.group_by=[ward]"], "only a manifest has columns"),
])
def test_bad_cap_requests_are_one_line_before_any_image_is_decoded(logistic_run, data_dir, tmp_path, monkeypatch, overrides, message):
    from lungcls.data.datamodule import LungDataModule

    def no_decoding(*_a, **_k):
        raise AssertionError("images were decoded before the request was checked")

    monkeypatch.setattr(LungDataModule, "setup", no_decoding)
    with pytest.raises(LungclsError, match=None) as err:
        run_evaluate(logistic_run, tmp_path, data_dir, *overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_calibration_too_small_for_the_cap_says_the_smallest_reachable(logistic_run, data_dir, tmp_path):
    with pytest.raises(LungclsError, match="at best; raise evaluate.miss_rate"):
        run_evaluate(logistic_run, tmp_path, data_dir, "evaluate.miss_rate=0.01")
    assert not (tmp_path / "metrics.json").exists()


def test_a_model_without_normal_class_and_calibration_without_disease_or_normal_are_refused():
    from lungcls.inference.misscap import check_calibration_counts, check_cap_request

    with pytest.raises(LungclsError, match="needs a normal class"):
        check_cap_request(None, ["COVID", "Other"], "test", "val")
    with pytest.raises(LungclsError, match="has no disease image"):
        check_calibration_counts([0, 0, 5, 0], CLASSES, "Normal", "val", 0.1, "crc", 0.1)
    with pytest.raises(LungclsError, match="has no Normal image"):
        check_calibration_counts([30, 0, 0, 0], CLASSES, "Normal", "val", 0.1, "crc", 0.1)
