"""``lungcls-export ckpt=... export.format=torchscript|onnx``: a self-contained model file (Hydra
app; see conf/export.yaml) and the proof that it computes what the checkpoint computes.

The file (``model.pt`` or ``model.onnx`` in the run folder, or ``export.out``) maps uint8 grayscale
images at the model's size to class probabilities, normalisation inside; its metadata
(``lungcls.json``: TorchScript extra file / ONNX metadata property) holds the size, the
normalisation, the class names and the decoding rule. The export is then loaded back (TorchScript /
ONNX Runtime) and run on sample images; the largest difference from the checkpoint's probabilities
through lungcls's own prediction loop is reported in ``export.json`` and must stay within
``export.tolerance``.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from omegaconf import DictConfig

from lungcls.cli import hydra_main
from lungcls.data.pixels.images import load_image
from lungcls.data.samples.inputs import collect_inputs
from lungcls.data.samples.splits import read_splits_csv
from lungcls.errors import LungclsError, require_extra
from lungcls.inference.checkpoints import load_checkpoint
from lungcls.runs.files import replacing, same_file, write_text_atomic
from lungcls.runs.runfolder import RunFolder
from lungcls.settings import check_range, typed
from lungcls.models.packaged import INPUT_NAME, METADATA_NAME, OUTPUT_NAME, PackagedClassifier, metadata
from lungcls.inference.prediction import predict_files

log = logging.getLogger(__name__)
FORMATS = {"torchscript": ".pt", "onnx": ".onnx"}
DYNAMO_MIN_OPSET = 18  # torch.onnx.export(dynamo=True) writes opset 18 or later


def supported_opsets() -> tuple[int, int]:
    """The ONNX opsets the installed torch exporter writes."""
    from torch.onnx import _constants

    return DYNAMO_MIN_OPSET, int(_constants.ONNX_MAX_OPSET)


@dataclass
class ExportSettings:
    """``export.*`` (defaults and meanings in conf/export.yaml), checked before the checkpoint is read."""

    format: str
    out: Optional[str]
    overwrite: bool
    samples: Optional[str]
    num_samples: int
    tolerance: float
    opset: int

    def __post_init__(self) -> None:
        self.format = self.format.lower()
        if self.format not in FORMATS:
            raise LungclsError(f"export.format={self.format} is not one of {', '.join(FORMATS)}")
        check_range(self.num_samples, "export.num_samples", 1)
        check_range(self.tolerance, "export.tolerance", 0)
        if self.format == "onnx":
            require_extra(("onnx", "onnxscript", "onnxruntime"), "export")
            check_range(self.opset, "export.opset", *supported_opsets())


def sample_paths(given: str | None, ckpt: Path, n: int) -> list[str]:
    """``export.samples`` (a file, folder or manifest), else the checkpoint run's test split."""
    if given:
        return [im.path for im in collect_inputs(given).images][:n]
    run = RunFolder.of_checkpoint(ckpt, "its test images are the export's check; or pass export.samples=<folder of X-rays>")
    splits = run.splits_csv
    if not splits.is_file():
        raise LungclsError(f"no splits.csv beside {ckpt} to take sample images from; pass export.samples=<folder of X-rays>")
    paths = [p for p, split in read_splits_csv(splits).items() if split == "test" and Path(p).is_file()]
    paths = paths or [p for p in read_splits_csv(splits) if Path(p).is_file()]
    if not paths:
        raise LungclsError(f"the images listed in {splits} are gone; pass export.samples=<folder of X-rays>")
    return sorted(paths)[:n]


def check_out(path: Path, inputs: list[str | Path], overwrite: bool) -> None:
    """Refuse an ``export.out`` that is one of the export's inputs (the checkpoint, a sample image, a
    manifest), always, or that exists, unless ``export.overwrite=true``; checked before anything is
    written. Inputs are compared as files, so a hard or symbolic link to one is refused too."""
    target = path.resolve()
    for given in inputs:
        if same_file(given, path):
            raise LungclsError(f"export.out={path} is one of the export's inputs ({given}); the export would "
                               "replace it: give a new file name (or leave export.out out: model.pt / model.onnx in the run folder)")
    if target.is_dir():
        raise LungclsError(f"export.out={path} is a folder; give a file name in it, e.g. export.out={path}/model.pt")
    if target.exists() and not overwrite:
        raise LungclsError(f"export.out={path} exists; give a new file name, or export.overwrite=true to replace it")


def export_torchscript(package: torch.nn.Module, example: torch.Tensor, path: Path, meta: dict[str, Any]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is in maintenance upstream; ONNX is the other choice
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks on the fixed [B, 1, S, S] input
        traced = torch.jit.trace(package, example, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={METADATA_NAME: json.dumps(meta)})


def export_onnx(package: torch.nn.Module, example: torch.Tensor, path: Path, meta: dict[str, Any], opset: int) -> None:
    import onnx

    for name in ("onnxscript", "onnx_ir", "torch.onnx"):  # their step-by-step INFO lines are not for users
        logging.getLogger(name).setLevel(logging.WARNING)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(package, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                dynamic_shapes=({0: batch},), opset_version=opset, verbose=False)
    model = program.model_proto
    onnx.helper.set_model_props(model, {METADATA_NAME: json.dumps(meta)})
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path), save_as_external_data=False)


def run_exported(path: Path, fmt: str, images: torch.Tensor) -> tuple[np.ndarray, dict[str, Any]]:
    """Load the written file as a user would and return its probabilities and metadata."""
    if fmt == "torchscript":
        extra = {METADATA_NAME: ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            loaded = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        with torch.no_grad():
            return loaded(images).numpy(), json.loads(extra[METADATA_NAME])
    import onnx

    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # else ONNX Runtime writes a device id under ~/.cache
    import onnxruntime

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0], json.loads(props[METADATA_NAME])


def export(cfg: DictConfig) -> dict[str, Any]:
    """Write the model file and export.json into the run folder; returns the check's numbers."""
    e = typed(cfg.export, ExportSettings, "export")
    fmt = e.format
    loaded = load_checkpoint(cfg.ckpt)
    ckpt, model = loaded.checkpoint, loaded.model
    if model.info.preprocess.active:
        raise LungclsError(f"{ckpt} was trained with decode-time mitigations (dataset.crop_border, equalize or "
                           "mask_outside_lungs) that an exported file does not carry; use the checkpoint itself "
                           "(lungcls-predict, lungcls-serve), which decodes as it was trained")
    paths = sample_paths(e.samples, ckpt, e.num_samples)
    size = model.info.image_size
    images = torch.stack([load_image(p, size) for p in paths])  # the decoder every lungcls path uses
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = Path(e.out).expanduser() if e.out else out_dir / f"model{FORMATS[fmt]}"
    check_out(path, [ckpt, *paths, *([e.samples] if e.samples else [])], e.overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = metadata(model, loaded.sha256, fmt)
    package = PackagedClassifier(model).eval()
    with torch.no_grad(), replacing(path) as tmp:  # a new file: nothing that path links to is truncated
        if fmt == "torchscript":
            export_torchscript(package, images[:1], tmp, meta)
        else:
            export_onnx(package, images[:1], tmp, meta, e.opset)
    got, read_meta = run_exported(path, fmt, images)
    reference = predict_files(model, paths, batch_size=len(paths), device=torch.device("cpu")).probs
    diff = float(np.abs(got - reference).max())
    tolerance = e.tolerance
    record = {"file": str(path.resolve()), "format": fmt, "checkpoint": str(ckpt.resolve()), "metadata": read_meta,
              "check": {"images": len(paths), "max_abs_diff": diff, "tolerance": tolerance, "passed": diff <= tolerance,
                        "same_predictions": bool((got.argmax(1) == reference.argmax(1)).all()), "samples": paths}}
    write_text_atomic(out_dir / "export.json", json.dumps(record, indent=2, allow_nan=False))
    print(f"exported {fmt}: {path} ({path.stat().st_size / 2**20:.1f} MB)")
    print(f"check on {len(paths)} images: max abs difference in probabilities {diff:.2e} (tolerance {tolerance:g})")
    if diff > tolerance:
        raise LungclsError(f"the exported model differs from the checkpoint by {diff:.2e} > export.tolerance={tolerance:g}; "
                           f"the file is kept at {path} for inspection, do not use it")
    return record


@hydra_main("export")
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
