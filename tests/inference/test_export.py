"""lungcls-export: each format writes a file that runs without lungcls, carries its preprocessing
and class names, and reproduces the checkpoint's probabilities on sample images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import compose_cfg, write_dicom

from lungcls.data.pixels.images import load_image
from lungcls.errors import LungclsError
from lungcls.export import FORMATS, export, run_exported
from lungcls.inference.checkpoints import load_classifier
from lungcls.inference.prediction import predict_files


def export_cfg(run, out, *overrides):
    return compose_cfg("export", [f"ckpt={run}/checkpoints/best.ckpt", *overrides], out, out)


@pytest.mark.parametrize("fmt", [pytest.param(f, marks=[pytest.mark.slow] if f == "onnx" else []) for f in sorted(FORMATS)])
def test_the_exported_file_reproduces_the_checkpoint_with_its_preprocessing(logistic_run, tmp_path, fmt):
    record = export(export_cfg(logistic_run, tmp_path, f"export.format={fmt}"))
    assert record["check"]["passed"] and record["check"]["max_abs_diff"] < 1e-4 and record["check"]["images"] >= 4
    saved = json.loads((tmp_path / "export.json").read_text())
    assert saved["check"]["max_abs_diff"] == record["check"]["max_abs_diff"]
    path = tmp_path / f"model{FORMATS[fmt]}"
    model = load_classifier(str(logistic_run / "checkpoints" / "best.ckpt"))
    # a DICOM the export never saw, in a batch of another size than the traced example
    arr = (np.linspace(0, 4095, 48 * 48).reshape(48, 48)).astype(np.uint16)
    dcm = write_dicom(tmp_path / "x.dcm", arr, bits_stored=12)
    paths = [str(dcm)] + record["check"]["samples"][:2]
    size = model.hparams.image_size
    got, meta = run_exported(path, fmt, torch.stack([load_image(p, size) for p in paths]))
    assert np.abs(got - predict_files(model, paths).probs).max() < 1e-4
    assert meta["class_names"] == model.class_names and meta["image_size"] == size
    assert meta["normalization"]["mean"] == list(model.hparams.mean) and meta["input"]["dtype"] == "uint8"


@pytest.mark.parametrize("overrides, message", [
    (["export.format=tflite"], "export.format=tflite is not one of"),
    (["export.tolerance=-1"], "export.tolerance=-1.0 must be at least 0"),
    (["export.format=onnx", "export.opset=99"], "export.opset=99 must be in [18, "),
    (["export.format=onnx", "export.opset=abc"], "export.opset=abc must be a whole number"),
    (["export.num_samples=0"], "export.num_samples=0 must be at least 1"),
])
def test_wrong_export_settings_are_one_line_before_the_checkpoint_is_read(logistic_run, tmp_path, overrides, message):
    with pytest.raises(LungclsError) as e:
        export(export_cfg(logistic_run, tmp_path, *overrides))
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
    assert not list(tmp_path.glob("model.*"))


def test_a_failed_check_keeps_the_file_and_says_not_to_use_it(logistic_run, tmp_path, monkeypatch):
    import lungcls.export as export_module

    real = export_module.run_exported
    monkeypatch.setattr(export_module, "run_exported", lambda *a: (real(*a)[0] + 0.01, real(*a)[1]))
    with pytest.raises(LungclsError, match="differs from the checkpoint by .* do not use it"):
        export(export_cfg(logistic_run, tmp_path, "export.format=torchscript"))


def copied_run(run, tmp_path):
    import shutil

    return shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("wandb"))


def test_export_out_as_a_hard_link_to_the_checkpoint_is_refused_and_the_checkpoint_kept(logistic_run, tmp_path):
    """A hard link has another path but is the same file: comparing paths let the export replace the
    checkpoint's contents with the TorchScript file."""
    run = copied_run(logistic_run, tmp_path)
    best = run / "checkpoints" / "best.ckpt"
    before = best.read_bytes()
    link = tmp_path / "x.ckpt"
    link.hardlink_to(best)
    with pytest.raises(LungclsError, match="is one of the export's inputs"):
        export(export_cfg(run, tmp_path / "e", f"export.out={link}", "export.overwrite=true"))
    assert best.read_bytes() == before and load_classifier(str(best)).class_names


def test_an_export_replaces_its_output_with_a_new_file_and_never_writes_into_the_old_one(logistic_run, tmp_path):
    """export.overwrite=true gives the name a new file: a file the old one was a hard link to keeps its bytes."""
    kept = tmp_path / "kept.bin"
    kept.write_bytes(b"someone else's file")
    out = tmp_path / "model.pt"
    out.hardlink_to(kept)
    export(export_cfg(logistic_run, tmp_path / "e", f"export.out={out}", "export.overwrite=true"))
    assert kept.read_bytes() == b"someone else's file"
    assert out.stat().st_ino != kept.stat().st_ino and run_exported(out, "torchscript", torch.zeros(1, 1, 64, 64, dtype=torch.uint8))[0].shape[0] == 1
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left
