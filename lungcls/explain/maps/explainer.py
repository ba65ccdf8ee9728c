"""A report's models and their maps: checkpoints loaded once, named readably, and explained on the
same images (Captum Grad-CAM for CNNs, the weight-map evidence for linear models)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import ListConfig

from lungcls.data.pixels.images import load_image
from lungcls.errors import LungclsError
from lungcls.runs.runfolder import RunFolder
from lungcls.explain.maps.engine import (
    CamResult,
    grad_cam,
    logistic_cam,
    prepare_for_cam,
    resolve_layer,
)
from lungcls.explain.maps.layers import AUTO, DEFAULT_MIN_CELLS, CamLayer, choose_layer
from lungcls.inference.prediction import predict_batches


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportImage:
    """One X-ray of the report; `label` is a class name (None when unknown), masks are paths."""

    path: str
    label: str | None = None
    mask: str | None = None
    lesion_mask: str | None = None



@dataclass
class ReportModel:
    """A loaded checkpoint and the readable, unique name it has in figures and the CSV."""

    name: str
    checkpoint: Path
    run_dir: Path
    model: Any  # LungClassifier, eval mode, on the report's device
    _cam_model: Any = field(default=None, repr=False)
    _layers: dict = field(default_factory=dict, repr=False)

    def cam_model(self) -> Any:
        """The frozen, out-of-place copy Grad-CAM runs on (made once, reused by every batch)."""
        if self._cam_model is None:
            self._cam_model = prepare_for_cam(self.model)
        return self._cam_model

    def cam_layer(self, requested: str = AUTO, min_cells: int = DEFAULT_MIN_CELLS) -> CamLayer:
        """The layer its maps explain for ``report.layer=requested`` (chosen once per request)."""
        key = (str(requested), int(min_cells))
        if key not in self._layers:
            self._layers[key] = choose_layer(self.model, requested, min_cells, self.name)
        return self._layers[key]

    @property
    def image_size(self) -> int:
        return int(self.model.hparams.image_size)

    @property
    def class_names(self) -> list[str]:
        return list(self.model.class_names)

    @property
    def normal_class(self) -> str | None:
        return self.model.normal_class

    @property
    def explained_by_weights(self) -> bool:
        """Linear models (the logistic baseline) have no conv layer: their weight map explains them."""
        return self.model.spec.explained_by_weights


def _run_dir(ckpt: Path) -> Path:
    """The checkpoint's run folder (``RunFolder``), or the folder it sits in when it is not in a run
    (its name then tells models apart; a report needs no run files)."""
    run = RunFolder.find(ckpt)
    return run.path if run is not None else RunFolder.naming_folder(ckpt)


def _ckpt_list(value: Any) -> list[Path]:
    """`ckpt=a.ckpt` or `ckpt='[a.ckpt,b.ckpt]'` -> absolute paths, checked before any loading."""
    if isinstance(value, (ListConfig, list, tuple)):
        items = [str(v) for v in value]
    elif value is None or str(value).strip() == "":
        items = []
    else:
        items = [str(value)]
    if not items:
        raise LungclsError(
            "no checkpoint given; pass ckpt=run/checkpoints/best.ckpt or ckpt='[a.ckpt,b.ckpt]'"
        )
    paths = [Path(p).expanduser().resolve() for p in items]
    for p in paths:
        if p.is_dir():
            raise LungclsError(f"checkpoint {p} is a folder, not a checkpoint file; give a file in it, e.g. {p / 'best.ckpt'}")
        if not p.is_file():
            raise LungclsError(
                f"checkpoint {p} does not exist; give the path of a run's checkpoints/best.ckpt"
            )
    if len(set(paths)) != len(paths):
        raise LungclsError(f"ckpt lists the same checkpoint twice: {items}; give each one once")
    return paths


def _unique_names(paths: Sequence[Path], models: Sequence[Any]) -> list[str]:
    """`backbone/finetune (run folder)`, with more of the folder path only where names collide."""
    bases = [f"{m.hparams.backbone['name']}/{m.hparams.finetune.get('name', '?')}" for m in models]
    runs = [_run_dir(p) for p in paths]
    for depth in (1, 2, 3):
        names = [f"{b} ({'/'.join(r.parts[-depth:])})" for b, r in zip(bases, runs)]
        if len(set(names)) == len(names):
            return names
    names = [f"{b} ({r.name}/{p.stem})" for b, r, p in zip(bases, runs, paths)]
    return names if len(set(names)) == len(names) else [f"{n} #{i + 1}" for i, n in enumerate(names)]


def load_models(ckpts: Any, device: torch.device) -> list[ReportModel]:
    """Load every checkpoint (eval mode, on `device`) and name it readably and uniquely."""
    from lungcls.models.module import load_classifier

    paths = _ckpt_list(ckpts)
    models = [load_classifier(str(p), map_location=device).to(device).eval() for p in paths]
    names = _unique_names(paths, models)
    return [ReportModel(n, p, _run_dir(p), m) for n, p, m in zip(names, paths, models)]


# --------------------------------------------------------------------------- Grad-CAM


def image_batch(images: Sequence[ReportImage], size: int) -> torch.Tensor:
    """[N, 1, size, size] float in [0, 1]: what `LungClassifier.forward` takes."""
    if not images:
        return torch.zeros(0, 1, size, size)
    return torch.stack([load_image(im.path, size) for im in images]).float().div_(255.0)


def class_targets(target: str, model: ReportModel, images: Sequence[ReportImage]) -> list[int] | None:
    """report.target -> one class id per image for this model (None: its prediction)."""
    target = str(target)
    classes = model.class_names
    if target == "predicted":
        return None
    if target == "true":
        unknown = [im.path for im in images if im.label is None]
        if unknown:
            raise LungclsError(
                f"report.target=true needs the true class of every image, but {unknown[0]} has none "
                "(not in a splits.csv nor in a <Class>/ folder); use report.target=predicted or a class name"
            )
        absent = sorted({im.label for im in images if im.label not in classes})
        if absent:
            raise LungclsError(
                f"report.target=true: class {absent[0]!r} is not a class of model {model.name} "
                f"({', '.join(classes)}); use report.target=predicted for it"
            )
        return [classes.index(im.label) for im in images]
    if target not in classes:
        raise LungclsError(
            f"report.target={target!r} is not a class of model {model.name}; use predicted, true or "
            f"one of: {', '.join(classes)}"
        )
    return [classes.index(target)] * len(images)


def explain_images(
    model: ReportModel, images: Sequence[ReportImage], target: str = "predicted", batch_size: int = 16,
    layer: str | CamLayer = AUTO,
) -> CamResult:
    """CAMs [N, S, S] of report images at the model's own image size (see ``explain_batch``)."""
    targets = class_targets(target, model, images)
    return explain_batch(model, image_batch(images, model.image_size), targets, batch_size, layer)


def explain_batch(model: ReportModel, x: torch.Tensor, targets: Sequence[int] | None = None, batch_size: int = 16,
                  layer: str | CamLayer = AUTO) -> CamResult:
    """CAMs [N, S, S] of decoded images ``x`` ([N, 1, S, S] in [0, 1] or uint8 at the model's size),
    with the probabilities of the same pass; ``targets`` None explains each prediction.

    CNNs: Captum `LayerGradCam` on `layer` (``auto``: see `lungcls.explain.maps.layers`; a layer path;
    or a `CamLayer` from `choose_layer`), run through the whole `LungClassifier` (so its own
    normalisation applies) on a frozen copy. The logistic baseline: its weight-map evidence
    (`logistic_cam`) on the grayscale values it actually sees.
    """
    x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
    net = model.model
    chosen = layer if isinstance(layer, CamLayer) else model.cam_layer(layer)
    if chosen.path is None:
        probs = torch.cat([p for p, _ in predict_batches(net, [(x, None)])]) if len(x) else torch.zeros(0, len(model.class_names))
        gray = (x - net.input_mean.cpu()) / net.input_std.cpu()  # the model-space values it weighs
        return logistic_cam(
            net.net.weight_maps().cpu(), gray, target=targets, probs=probs, size=(model.image_size, model.image_size)
        )
    cam_model = model.cam_model()
    return grad_cam(cam_model, resolve_layer(cam_model, "net." + chosen.path), x, target=targets, batch_size=batch_size)


def to_display(cams: torch.Tensor, size: int) -> torch.Tensor:
    """Upsample CAMs bilinearly to the common display size (max stays <= 1)."""
    if cams.shape[-1] == size and cams.shape[-2] == size:
        return cams
    return F.interpolate(cams[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0].clamp(0, 1)
