"""lungcls-predict end to end: the same probabilities as lungcls-evaluate for the same files,
unlabelled folders with DICOM, several checkpoints side by side, flags, overlays, clear errors."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from conftest import run_cli, write_dicom, write_png
from PIL import Image



@pytest.fixture(scope="module")
def trained(tmp_path_factory, logistic_run):
    """A tiny logistic run and its evaluation with a screening threshold chosen on val."""
    run = logistic_run
    ev = tmp_path_factory.mktemp("predict") / "ev"
    out = run_cli("lungcls.evaluate", f"ckpt={run}/checkpoints/best.ckpt", f"hydra.run.dir={ev}",
                  "evaluate.positive_class=COVID", "evaluate.target_sensitivity=0.5")
    assert out.returncode == 0, out.stderr
    return run, ev


def read_rows(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_predicted_probabilities_equal_the_evaluated_ones_with_flags_and_overlays(trained, tmp_path):
    run, ev = trained
    evaluated = {r["path"]: r for r in read_rows(ev / "predictions.csv")}
    manifest = tmp_path / "list.csv"
    manifest.write_text("path\n" + "\n".join(evaluated) + "\n")  # no labels
    out_dir = tmp_path / "pred"
    out = run_cli("lungcls.predict", f"ckpt={run}/checkpoints/best.ckpt", f"input={manifest}", f"hydra.run.dir={out_dir}",
                  "predict.cam=true", f"predict.screening={ev}", "predict.normal_margin=0.3")
    assert out.returncode == 0, out.stderr
    rows = read_rows(out_dir / "predictions.csv")
    assert [r["path"] for r in rows] == list(evaluated)
    classes = json.loads((ev / "metrics.json").read_text())["test"]["class_names"]
    threshold = json.loads((ev / "metrics.json").read_text())["screening"]["target_sensitivity"]["threshold"]
    normal = classes.index("Normal")
    for r in rows:
        want = evaluated[r["path"]]
        assert r["pred"] == want["pred"] and r["label"] == ""
        got = np.array([float(r[f"prob_{c}"]) for c in classes])
        assert np.abs(got - np.array([float(want[f"prob_{c}"]) for c in classes])).max() <= 1e-6
        assert r["screen_COVID"] == str(int(got[classes.index("COVID")] >= threshold - 5e-7))
        lead = got[normal] - np.delete(got, normal).max()
        if abs(lead - 0.3) > 1e-5:
            assert r["possible_missed_disease"] == str(int(bool(got.argmax() == normal and lead < 0.3)))
        overlay = Image.open(out_dir / r["overlay"])
        assert overlay.mode == "RGB" and overlay.size == Image.open(r["path"]).size
    record = json.loads((out_dir / "predict.json").read_text())
    assert record["images"] == len(rows) and record["models"][0]["screening"]["threshold"] == pytest.approx(threshold)
    assert f"COVID at threshold {threshold:.4g}" in out.stdout


@pytest.mark.slow
def test_unlabelled_folders_with_dicom_and_several_checkpoints_side_by_side(trained, tmp_path):
    run, _ = trained
    twin = tmp_path / "twin"
    shutil.copytree(run / "checkpoints", twin / "checkpoints")
    folder = tmp_path / "new"
    rng = np.random.default_rng(1)
    png = write_png(folder / "a.png", rng.integers(0, 255, (50, 40), dtype=np.uint8))
    arr16 = (np.asarray(Image.open(png), dtype=np.uint16) * 16 + 8)  # the same picture as 12-bit DICOM
    write_dicom(folder / "sub" / "b.dcm", arr16, bits_stored=12)
    write_dicom(folder / "sub" / "IM0003", arr16, bits_stored=12)  # a PACS export without extension
    (folder / "readme.txt").write_text("notes")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    out_dir = tmp_path / "pred"
    args = [f"ckpt=[{run}/checkpoints/best.ckpt,{twin}/checkpoints/best.ckpt]", f"input={folder}"]
    out = run_cli("lungcls.predict", *args, f"hydra.run.dir={tmp_path / 'refused'}")
    assert out.returncode == 2 and "broken.png" in out.stderr and "predict.skip_unreadable=true" in out.stderr
    assert len([l for l in out.stderr.splitlines() if l.startswith("lungcls: error:")]) == 1
    # the advice, followed, in a new folder (the failed run's folder is kept, never written over)
    out = run_cli("lungcls.predict", *args, f"hydra.run.dir={out_dir}", "predict.skip_unreadable=true")
    assert out.returncode == 0, out.stderr
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in read_rows(out_dir / "predictions.csv")}
    assert set(rows) == {"a.png", "b.dcm", "IM0003", "broken.png"}
    assert "1 other files skipped" in out.stdout and "1 unreadable" in out.stdout
    first, second = [c[: -len(":pred")] for c in rows["a.png"] if c.endswith(":pred")]
    assert "run" in first and "twin" in second
    for name in ("a.png", "b.dcm", "IM0003"):
        assert rows[name][f"{first}:prob_COVID"] == rows[name][f"{second}:prob_COVID"] != ""
    # 12-bit DICOM of the same picture scores like the PNG (scaled by 4095, not stretched)
    assert abs(float(rows["b.dcm"][f"{first}:prob_COVID"]) - float(rows["a.png"][f"{first}:prob_COVID"])) < 0.02
    assert rows["broken.png"]["error"].startswith("cannot read image") and rows["broken.png"][f"{first}:pred"] == ""


@pytest.mark.slow
def test_a_threshold_chosen_for_another_checkpoint_is_refused(trained, tmp_path):
    run, ev = trained
    other = tmp_path / "other" / "checkpoints"
    shutil.copytree(run / "checkpoints", other)
    with open(other / "best.ckpt", "ab") as f:
        f.write(b"\0")  # a different file
    image = write_png(tmp_path / "x.png", np.zeros((32, 32), np.uint8))
    out = run_cli("lungcls.predict", f"ckpt={other}/best.ckpt", f"input={image}", f"predict.screening={ev}",
                  f"hydra.run.dir={tmp_path}/p")
    assert out.returncode == 2 and "is not one of the checkpoints given" in out.stderr


def test_possible_missed_disease_flags_only_narrow_normal_wins():
    from lungcls.inference.screening import possible_missed_disease

    classes = ["COVID", "Normal", "Viral Pneumonia"]
    probs = np.array([
        [0.40, 0.45, 0.15],  # Normal ahead of COVID by 0.05: flagged
        [0.10, 0.80, 0.10],  # a clear Normal
        [0.50, 0.45, 0.05],  # COVID wins: not a missed disease
        [0.05, 0.47, 0.48],  # Viral Pneumonia wins
        [0.30, 0.38, 0.32],  # Normal ahead of Viral Pneumonia by 0.06
    ])
    assert possible_missed_disease(probs, classes, "Normal", 0.1).tolist() == [True, False, False, False, True]
    assert not possible_missed_disease(probs, classes, "Normal", 0.0).any()
    assert not possible_missed_disease(probs, classes, None, 0.1).any()


def test_predict_takes_the_same_dataset_configs_as_training(logistic_run, class_tree, tmp_path):
    """`dataset=folder dataset.root=X` scores the images `input=X` does, with their classes as labels;
    giving both (or neither) is one line naming the two ways."""
    from conftest import compose_cfg
    from lungcls.predict import predict

    ckpt = f"ckpt={logistic_run}/checkpoints/best.ckpt"
    by_input, by_dataset = tmp_path / "by_input", tmp_path / "by_dataset"
    predict(compose_cfg("predict", [ckpt, f"input={class_tree}"], by_input, tmp_path))
    predict(compose_cfg("predict", [ckpt, "dataset=folder", f"dataset.root={class_tree}",
                                    "dataset.classes=[COVID,Normal,Viral Pneumonia]"], by_dataset, tmp_path))
    a, b = read_rows(by_input / "predictions.csv"), read_rows(by_dataset / "predictions.csv")
    assert len(a) == len(b) == 30
    assert {r["path"]: (r["label"], r["pred"]) for r in a} == {r["path"]: (r["label"], r["pred"]) for r in b}
    from omegaconf import OmegaConf

    from lungcls.errors import LungclsError
    from lungcls.predict import images_to_score

    for both in ({"input": str(class_tree), "dataset": {"name": "folder", "root": str(class_tree)}}, {"input": None, "dataset": {}}):
        with pytest.raises(LungclsError, match="one of the two"):
            images_to_score(OmegaConf.create(both), ["COVID"])


def test_predict_refuses_what_serve_refuses_and_names_the_files_it_skips(logistic_run, tmp_path):
    """A GIF given directly, a TIFF renamed .png in a folder and a 1x1 PNG are refused as
    lungcls-serve refuses them (one line; listed in the error column with skip_unreadable); files
    without an image's name are named in predict.json, not only counted."""
    from conftest import compose_cfg
    from lungcls.errors import LungclsError
    from lungcls.predict import predict

    ckpt = f"ckpt={logistic_run}/checkpoints/best.ckpt"
    picture = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    Image.fromarray(picture).save(tmp_path / "scan.gif")
    with pytest.raises(LungclsError, match="scan.gif is a GIF image; lungcls reads PNG, JPEG and DICOM"):
        predict(compose_cfg("predict", [ckpt, f"input={tmp_path / 'scan.gif'}"], tmp_path / "gif", tmp_path))
    folder = tmp_path / "new"
    write_png(folder / "a.png", picture)
    Image.fromarray(picture).save(folder / "tiff.png", format="TIFF")
    write_png(folder / "icon.png", np.full((1, 1), 9, np.uint8))
    (folder / "notes.txt").write_text("notes")
    with pytest.raises(LungclsError, match="icon.png is 1x1 pixels, smaller than predict.min_side=32"):
        predict(compose_cfg("predict", [ckpt, f"input={folder}"], tmp_path / "refused", tmp_path))
    out = tmp_path / "listed"
    predict(compose_cfg("predict", [ckpt, f"input={folder}", "predict.skip_unreadable=true"], out, tmp_path))
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in read_rows(out / "predictions.csv")}
    assert rows["a.png"]["pred"] and not rows["a.png"]["error"]
    assert "is a TIFF image" in rows["tiff.png"]["error"] and rows["tiff.png"]["pred"] == ""
    assert "1x1 pixels, smaller than predict.min_side=32" in rows["icon.png"]["error"] and rows["icon.png"]["pred"] == ""
    record = json.loads((out / "predict.json").read_text())
    assert record["unreadable"] == 2 and record["skipped"] == [str(folder / "notes.txt")]
