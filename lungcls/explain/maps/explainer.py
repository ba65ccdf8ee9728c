"""Models explained on the same images: a loaded checkpoint (``lungcls.inference.checkpoints``) with
the Grad-CAM copy and layers it is explained with, made once and reused by every batch (Captum
Grad-CAM for CNNs, the weight-map evidence for linear models)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lungcls.data.pixels.images import load_image
from lungcls.errors import LungclsError
from lungcls.explain.maps.engine import CamResult, grad_cam, logistic_cam
from lungcls.explain.maps.preparation import prepare_for_cam, resolve_layer
from lungcls.explain.maps.layers import AUTO, DEFAULT_MIN_CELLS, CamLayer, choose_layer


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

    @classmethod
    def of(cls, loaded: Any) -> ReportModel:
        """Explain a loaded checkpoint (anything with ``name``, ``checkpoint``, ``run_dir``, ``model``)."""
        return cls(loaded.name, loaded.checkpoint, loaded.run_dir, loaded.model)

    @property
    def image_size(self) -> int:
        return self.model.info.image_size

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


# --------------------------------------------------------------------------- Grad-CAM


def image_batch(images: Sequence[ReportImage], model: ReportModel) -> torch.Tensor:
    """[N, 1, size, size] float in [0, 1] at the model's size: what `LungClassifier.forward` takes."""
    size = model.image_size
    if not images:
        return torch.zeros(0, 1, size, size)
    pre = model.model.info.preprocess  # decoded as the model was trained (crop, equalisation, lung masking)
    return torch.stack([load_image(im.path, size, preprocess=pre, mask=im.mask) for im in images]).float().div_(255.0)


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
    return explain_batch(model, image_batch(images, model), targets, batch_size, layer)


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
        probs = _probabilities(net, x)
        gray = (x - net.input_mean.cpu()) / net.input_std.cpu()  # the model-space values it weighs
        return logistic_cam(
            net.net.weight_maps().cpu(), gray, target=targets, probs=probs, size=(model.image_size, model.image_size)
        )
    cam_model = model.cam_model()
    return grad_cam(cam_model, resolve_layer(cam_model, "net." + chosen.path), x, target=targets, batch_size=batch_size)


@torch.no_grad()
def _probabilities(net: Any, x: torch.Tensor) -> torch.Tensor:
    """Softmax of a linear model on ``x`` (what its weight map is read against), on the CPU."""
    if not len(x):
        return torch.zeros(0, len(net.class_names))
    device = next(net.parameters()).device
    return torch.softmax(net(x.to(device)).float(), dim=1).cpu()


def to_display(cams: torch.Tensor, size: int) -> torch.Tensor:
    """Upsample CAMs bilinearly to the common display size (max stays <= 1)."""
    if cams.shape[-1] == size and cams.shape[-2] == size:
        return cams
    return F.interpolate(cams[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0].clamp(0, 1)
