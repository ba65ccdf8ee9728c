"""lungcls-export: each format writes a file that runs without lungcls, carries its preprocessing
and class names, and reproduces the checkpoint's probabilities on sample images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import compose_cfg, write_dicom

from lungcls.data.images import load_image
from lungcls.errors import LungclsError
from lungcls.export import FORMATS, export, run_exported
from lungcls.models.module import load_classifier
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


def test_unknown_format_and_a_failed_check_are_clear_errors(logistic_run, tmp_path):
    with pytest.raises(LungclsError, match="export.format=tflite is not one of"):
        export(export_cfg(logistic_run, tmp_path, "export.format=tflite"))
    with pytest.raises(LungclsError, match="differs from the checkpoint by .* do not use it"):
        export(export_cfg(logistic_run, tmp_path, "export.format=torchscript", "export.tolerance=-1"))
