"""Numbers a reviewer accepts: bootstrap intervals checked against an independent computation and in
the degenerate cases, calibration by hand, paired comparison of runs, test-time augmentation and
temperature scaling as users run them."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from lungcls.compare import main as compare_main
from lungcls.metrics import summarize_confusion
from lungcls.metrics.bootstrap import bootstrap_ci, confusion_statistics, paired_difference_ci
from lungcls.metrics.calibration import brier_score, calibration, fit_temperature, scale_temperature
from lungcls.comparison.paired import mcnemar_exact
from lungcls.train import train

from conftest import run_cli

CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]


def noisy(n: int, accuracy: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    return y, np.where(rng.random(n) < accuracy, y, rng.integers(0, 4, n))


def _wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval written out (Wilson 1927)."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_intervals_agree_with_independent_computations():
    from sklearn.metrics import f1_score

    y, p = noisy(600, 0.8)
    ours = bootstrap_ci(y, p, CLASSES, "Normal", resamples=2000, seed=3)
    assert ours["accuracy"] == pytest.approx(_wilson(int((y == p).sum()), len(y)), abs=1e-9)
    covid = y == 0
    assert ours["per_class"]["COVID"]["recall"] == pytest.approx(_wilson(int((p[covid] == 0).sum()), int(covid.sum())), abs=1e-9)
    assert ours["fn_to_normal_rate"]["COVID"] == pytest.approx(_wilson(int((p[covid] == 2).sum()), int(covid.sum())), abs=1e-9)

    def macro_f1(yy, pp):
        return f1_score(yy, pp, labels=sorted(set(yy)), average="macro", zero_division=0)

    ref = sps.bootstrap((y, p), macro_f1, paired=True, vectorized=False, n_resamples=1000, method="percentile", random_state=7)
    assert ours["macro_f1"] == pytest.approx([ref.confidence_interval.low, ref.confidence_interval.high], abs=0.012)
    assert ours["level"] == 0.95 and ours["resamples"] == 2000 and "wilson" in ours["method"]


def test_intervals_are_seeded_and_fast():
    y, p = noisy(2000, 0.9)
    start = time.perf_counter()
    a = bootstrap_ci(y, p, CLASSES, "Normal", resamples=1000, seed=5)
    elapsed = time.perf_counter() - start
    assert a == bootstrap_ci(y, p, CLASSES, "Normal", resamples=1000, seed=5)
    assert a != bootstrap_ci(y, p, CLASSES, "Normal", resamples=1000, seed=6)
    assert elapsed < 1.0  # well under a second for 1,000 resamples of 2,000 images (typically ~0.1 s)


def test_fn_to_normal_rate_interval_brackets_the_share_predicted_normal():
    y, p = noisy(800, 0.85, seed=2)
    ci = bootstrap_ci(y, p, CLASSES, "Normal", resamples=1000)
    for k, name in enumerate(CLASSES):
        if name == "Normal":
            assert name not in ci["fn_to_normal_rate"]
            continue
        share = np.mean(p[y == k] == 2)
        lo, hi = ci["fn_to_normal_rate"][name]
        assert lo <= share <= hi and hi - lo < 0.1


def test_degenerate_cases_give_null_not_numbers_and_never_zero_width():
    perfect = bootstrap_ci([0, 1, 2, 3] * 10, [0, 1, 2, 3] * 10, CLASSES, "Normal", resamples=200)
    lo, hi = perfect["accuracy"]
    assert 0.85 < lo < hi == 1.0  # 40 of 40 right is not certainty
    lo, hi = perfect["fn_to_normal_rate"]["COVID"]
    assert lo == 0.0 and 0.2 < hi < 0.4  # 0 of 10 COVID missed: up to about 28% is still plausible
    one_class = bootstrap_ci([0] * 30, [0] * 20 + [2] * 10, CLASSES, "Normal", resamples=200)
    assert one_class["per_class"]["COVID"]["specificity"] is None  # no negatives at all
    assert one_class["per_class"]["Lung_Opacity"]["recall"] is None  # absent class
    assert one_class["fn_to_normal_rate"]["Lung_Opacity"] is None
    lo, hi = one_class["fn_to_normal_rate"]["COVID"]
    assert lo < 1 / 3 < hi
    tiny = bootstrap_ci([0, 2, 3], [0, 2, 2], CLASSES, "Normal", resamples=200)
    assert 0.0 < tiny["accuracy"][0] < tiny["accuracy"][1] < 1.0
    empty = bootstrap_ci([], [], CLASSES, "Normal", resamples=200)
    assert empty["accuracy"] is None and empty["macro_f1"] is None
    json.dumps(one_class, allow_nan=False)  # no NaN reaches metrics.json


def test_calibration_by_hand():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    labels = np.array([0, 1, 1, 1])
    # Brier: (0.01+0.01) + (0.36+0.36) + (0.09+0.09) + (0.04+0.04) = 1.0 over 4 images
    assert brier_score(probs, labels) == pytest.approx(0.25)
    cal = calibration(probs, labels, bins=2)
    # bin (0.5, 1]: all four images (confidences .9 .6 .7 .8, mean .75); correct: 1,0,1,1 -> .75
    assert cal["ece"] == pytest.approx(0.0, abs=1e-6) and cal["bins"] == 2


def test_temperature_is_recovered_and_keeps_predictions():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (4000, 4))
    true = np.exp(logits / 2.0)
    true /= true.sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(4, p=row) for row in true])
    overconfident = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    t = fit_temperature(overconfident, labels)
    assert 1.8 < t < 2.2
    scaled = scale_temperature(overconfident, t)
    assert (scaled.argmax(1) == overconfident.argmax(1)).all()
    assert calibration(scaled, labels)["ece"] < calibration(overconfident, labels)["ece"] / 2


def test_paired_difference_and_mcnemar_by_hand():
    a = np.array([1] * 30 + [0] * 10, dtype=bool)  # the reference: right on 30 of 40
    b = np.array([1] * 20 + [0] * 10 + [1] * 2 + [0] * 8, dtype=bool)  # right on 22; 10 vs 2 discordant
    m = mcnemar_exact(a, b)
    assert (m["a_only"], m["b_only"]) == (10, 2)
    assert m["p_value"] == pytest.approx(sps.binomtest(2, 12, 0.5).pvalue)
    diff = paired_difference_ci(b.astype(float), a.astype(float), resamples=2000, seed=1)
    assert diff["difference"] == pytest.approx(-8 / 40)
    assert diff["ci"][1] < 0  # the paired interval excludes 0 here


def test_run_reports_intervals_calibration_and_reliability_diagram(train_cfg, tmp_path, capsys):
    train(train_cfg("backbone=logistic", "trainer.max_epochs=2", "stats.resamples=300"))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for split in ("train", "val", "test"):
        ci = metrics[split]["ci"]
        assert ci["resamples"] == 300 and ci["level"] == 0.95
        lo, hi = ci["accuracy"]
        assert lo <= metrics[split]["accuracy"] <= hi
        assert set(metrics[split]["calibration"]) == {"ece", "bins", "brier"}
    assert (tmp_path / "reliability.png").is_file()
    printed = capsys.readouterr().out
    acc = metrics["test"]["accuracy"]
    assert f"test accuracy {acc:.3f} [{metrics['test']['ci']['accuracy'][0]:.3f}, " in printed


def _predictions(run: Path) -> dict[str, str]:
    with (run / "predictions.csv").open() as f:
        return {r["path"]: r["pred"] for r in csv.DictReader(f)}


def test_compare_paired_on_two_runs_of_the_same_images(train_cfg, tmp_path, capsys):
    runs = tmp_path / "runs"
    for name, lr in (("a", 0.01), ("b", 0.0001)):
        out = runs / name
        out.mkdir(parents=True)
        cfg = train_cfg("backbone=logistic", f"optimizer.lr={lr}", "trainer.max_epochs=2", "stats.resamples=200", out=out)
        train(cfg)
        (out / ".hydra").mkdir(exist_ok=True)
        (out / ".hydra" / "overrides.yaml").write_text(f"- optimizer.lr={lr}\n")
    assert _predictions(runs / "a").keys() == _predictions(runs / "b").keys()
    assert compare_main([str(runs), "--paired"]) == 0
    text = (runs / "comparison.md").read_text()
    assert "## Paired comparison (test split)" in text and "McNemar p =" in text
    assert "significantly different" in text
    with (runs / "comparison_paired.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    assert int(row["images"]) == len(_predictions(runs / "a"))
    assert float(row["accuracy_difference_lo"]) <= float(row["accuracy_difference"]) <= float(row["accuracy_difference_hi"])
    assert "[" in text.split("| test/acc |")[0] or " [" in text  # accuracy shown with its interval


@pytest.mark.slow
def test_evaluate_with_test_time_augmentation_and_temperature_scaling(train_cfg, tmp_path):
    run = tmp_path / "run"
    train(train_cfg("backbone=logistic", "trainer.max_epochs=2", "stats.resamples=100", out=run))
    ev = tmp_path / "ev"
    out = run_cli("lungcls.evaluate", f"ckpt={run}/checkpoints/best.ckpt", f"hydra.run.dir={ev}",
                  "evaluate.tta=flip", "evaluate.temperature_scaling=true")
    assert out.returncode == 0, out.stderr[-1500:]
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["tta"] == {"mode": "flip", "copies": 2}
    scaled = metrics["temperature_scaling"]
    assert scaled["temperature"] > 0 and scaled["before"]["ece"] is not None and scaled["after"]["ece"] is not None
    assert "temperature" in out.stdout and "fitted on val" in out.stdout
    with (ev / "predictions.csv").open() as f:
        tta_probs = {r["path"]: r["prob_COVID"] for r in csv.DictReader(f)}
    with (run / "predictions.csv").open() as f:
        plain = {r["path"]: r["prob_COVID"] for r in csv.DictReader(f)}
    assert tta_probs.keys() == plain.keys() and tta_probs != plain  # the flip changed the averaged probabilities


def test_folds_partition_the_images_and_keep_copies_together(tmp_path):
    import shutil

    from lungcls.data.datamodule import LungDataModule
    from conftest import make_class_tree

    root = make_class_tree(tmp_path / "tree", {"COVID": 9, "Normal": 9, "Viral Pneumonia": 9})
    shutil.copy(root / "COVID/images/COVID-0.png", root / "COVID/images/COVID-copy.png")  # an exact copy
    cfg = {"layout": "folder", "root": str(root), "classes": ["COVID", "Normal", "Viral Pneumonia"], "image_size": 32,
           "folds": 3, "val_fraction": 0.2, "cache": "ram"}
    tests = []
    for fold in range(3):
        dm = LungDataModule({**cfg, "fold": fold})
        dm.setup()
        tests.append({s.path for s in dm.split_samples("test")})
        assert len(dm.split_samples("val")) > 0 and len(dm.split_samples("train")) > len(tests[-1])
        copies = {dm.assignment[str(root / f"COVID/images/{n}.png")] for n in ("COVID-0", "COVID-copy")}
        assert len(copies) == 1  # never on both sides
        assert {dm.class_names[s.label] for s in dm.split_samples("test")} == set(cfg["classes"])  # stratified
    assert sum(len(t) for t in tests) == 28 and len(set().union(*tests)) == 28  # each image tested once


@pytest.mark.parametrize("folds, fold, message", [(1, 0, "must be at least 2"), (3, 3, "must be in 0..2"), ("x", 0, "dataset.folds=x and dataset.fold=0 must be whole numbers")])
def test_fold_settings_are_one_line_errors(folds, fold, message):
    from lungcls.data.settings import dataset_settings
    from lungcls.errors import LungclsError

    with pytest.raises(LungclsError, match=message):
        dataset_settings({"classes": ["A", "B"], "image_size": 32, "folds": folds, "fold": fold})


@pytest.mark.slow
def test_kfold_multirun_is_one_row_in_the_comparison(tmp_path):
    """`lungcls-train -m dataset.folds=3 dataset.fold='range(3)'` then lungcls-compare: one row with
    mean ± sd and the pooled out-of-fold confusion matrix over every image."""
    sweep = tmp_path / "multirun"
    out = run_cli("lungcls.train", "-m", "dataset.folds=3", "dataset.fold=range(3)", "backbone=logistic",
                  "trainer.max_epochs=2", "dataset.demo.images_per_class=12", "dataset.demo.source_size=64",
                  "trainer.accelerator=cpu", "logger=csv", "stats.resamples=100", f"paths.data_dir={tmp_path / 'data'}",
                  f"hydra.sweep.dir={sweep}", timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert compare_main([str(sweep)]) == 0
    with (sweep / "comparison.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    assert row["folds"] == "3" and row["run"].endswith("(3 folds)")
    accs = [json.loads((sweep / str(i) / "metrics.json").read_text())["test"]["accuracy"] for i in range(3)]
    assert float(row["test/acc"]) == pytest.approx(np.mean(accs))
    assert float(row["test/acc_sd"]) == pytest.approx(np.std(accs, ddof=1))
    cms = [np.array(json.loads((sweep / str(i) / "metrics.json").read_text())["test"]["confusion_matrix"]) for i in range(3)]
    assert sum(cm.sum() for cm in cms) == 4 * 12  # every image tested once across the folds
    assert float(row["test/acc_pooled"]) == pytest.approx(np.trace(sum(cms)) / (4 * 12))
    text = (sweep / "comparison.md").read_text()
    assert "pooled out-of-fold test confusion matrix" in text and " ± " in text


def test_test_time_augmentation_is_the_same_on_every_prediction_path(logistic_run):
    """predict/serve score decoded arrays, evaluation scores files: with tta=flip both average the
    image and its mirror and agree; without it they agree too, and the two settings differ."""
    from lungcls.data.pixels.images import read_gray
    from lungcls.inference.checkpoints import load_classifier
    from lungcls.inference.prediction import predict_arrays, predict_files, tta_copies

    model = load_classifier(str(logistic_run / "checkpoints" / "best.ckpt"))
    with (logistic_run / "predictions.csv").open() as f:
        paths = [r["path"] for r in csv.DictReader(f)][:6]
    grays = [read_gray(p) for p in paths]
    plain = predict_files(model, paths).probs
    flipped = predict_files(model, paths, tta="flip").probs
    assert np.allclose(predict_arrays(model, grays, tta="flip"), flipped, atol=1e-6)
    assert np.allclose(predict_arrays(model, grays), plain, atol=1e-6)
    assert not np.allclose(plain, flipped)
    assert np.allclose(predict_files(model, paths, tta=4).probs, predict_files(model, paths, tta=4).probs)  # seeded
    assert tta_copies("none") == 1 and tta_copies("flip") == 2 and tta_copies("8") == 8
    with pytest.raises(Exception, match="tta=sideways must be none, flip or a number"):
        tta_copies("sideways")


def test_resampled_statistics_use_the_summary_definitions():
    """The bootstrap computes its metrics on stacks of confusion matrices; on each matrix they must
    equal metrics.json's (None there is NaN here), absent and never-predicted classes included."""
    rng = np.random.default_rng(0)
    names = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
    cms = rng.integers(0, 6, (40, 4, 4))
    cms[::3, 1, :] = 0  # a class with no images
    cms[::4, :, 3] = 0  # a class never predicted
    stacked = confusion_statistics(cms, names, "Normal")
    for r, cm in enumerate(cms):
        summary = summarize_confusion(cm, names, "Normal")
        expected = {"accuracy": summary["accuracy"], "macro_f1": summary["macro_f1"]}
        for name, per in summary["per_class"].items():
            expected.update({f"{m}/{name}": per[m] for m in ("precision", "recall", "f1", "specificity")})
        for name, missed in summary["fn_to_normal"].items():
            support = cm[names.index(name)].sum()
            expected[f"fn_to_normal_rate/{name}"] = missed / support if support else None
        for key, want in expected.items():
            got = stacked[key][r]
            assert (np.isnan(got) if want is None else got == pytest.approx(want)), (r, key, got, want)


def test_macro_f1_interval_resamples_within_each_class_so_no_resample_drops_a_small_class():
    """3 Normal films all missed among 80 others all right: macro F1 is (0.96 + 0 + 1) / 3. A resample
    that lost Normal would average over two classes and report about 0.98; every resample keeps the
    3 Normal films (all still wrong), so the interval stays at or below 2/3."""
    y = np.array([0] * 40 + [2] * 3 + [3] * 40)
    p = np.array([0] * 40 + [0] * 3 + [3] * 40)
    point = summarize_confusion(np.bincount(y * 4 + p, minlength=16).reshape(4, 4), CLASSES, "Normal")["macro_f1"]
    lo, hi = bootstrap_ci(y, p, CLASSES, "Normal", resamples=1000, seed=0)["macro_f1"]
    assert lo <= point <= hi <= 2 / 3
    assert "stratified" in bootstrap_ci(y, p, CLASSES, "Normal", resamples=10)["method"]


def test_a_class_never_trained_on_or_never_tested_is_null_in_metrics_json_and_the_console(tmp_path, capsys):
    """Leave-one-source-out can take every image of a class out of training, or out of the test split:
    its recall and missed count are then null in metrics.json and left out of the console line."""
    from lungcls.inference.prediction import Predictions
    from lungcls.runs.results import print_summary, write_results

    names = ["COVID", "Normal", "Viral Pneumonia"]

    def pred(labels, preds):
        return Predictions([f"{i}.png" for i in range(len(labels))], np.array(labels), np.eye(3)[preds], names)

    train = pred([0, 0, 1, 1], [0, 0, 1, 1])  # no Viral Pneumonia to learn from
    test = pred([1, 1, 2, 2], [1, 1, 1, 1])  # no COVID to miss; Viral Pneumonia all called Normal
    metrics = write_results(tmp_path, {"train": train, "test": test}, names, "Normal")
    stored = json.loads((tmp_path / "metrics.json").read_text())["test"]
    assert stored["fn_to_normal"] == {"COVID": None, "Viral Pneumonia": None}
    assert stored["per_class"]["COVID"]["recall"] is None and stored["per_class"]["Viral Pneumonia"]["recall"] is None
    assert stored["untrained_classes"] == ["Viral Pneumonia"] and stored["per_class"]["Normal"]["recall"] == 1.0
    print_summary("test", metrics["test"], "Normal")
    assert "predicted Normal: n/a" in capsys.readouterr().out
