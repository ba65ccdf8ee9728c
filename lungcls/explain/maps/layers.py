"""Which layer a Grad-CAM map explains (``report.layer``), and how fine its map is.

Grad-CAM weighs a layer's feature maps, so its map has that layer's grid: ResNet's ``layer4`` is 7x7
at 224 px but 4x4 at 128 px and 2x2 at 64 px, too coarse to tell a lesion from the lung around it.
Deeper layers are more class-specific, shallower ones finer. ``auto`` takes the backbone's
registered layer (the last convolutional block) unless its map is coarser than ``min_cells``
across; then it steps down to the deepest layer whose map is at least that fine. ``min_cells=7``
is the grid of the canonical Grad-CAM setting (ImageNet CNNs at 224 px), so real X-rays at 224 px
keep the standard layer and only small working sizes (the demo) move to a finer one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lungcls.errors import LungclsError

__all__ = ["CamLayer", "choose_layer", "layer_grids", "layer_requests"]

AUTO = "auto"
DEFAULT_MIN_CELLS = 7


@dataclass(frozen=True)
class CamLayer:
    """The explained layer of one model: its module path in the backbone and its map's grid."""

    path: str | None  # None: the model is explained by its weights (no layer)
    grid: tuple[int, int]  # rows, columns of the layer's map at the model's input size

    def describe(self) -> str:
        if self.path is None:
            return f"weight map ({self.grid[0]}x{self.grid[1]})"
        return f"{self.path} ({self.grid[0]}x{self.grid[1]})"


def layer_grids(classifier: Any, paths: Sequence[str]) -> dict[str, tuple[int, int]]:
    """The (rows, columns) of each layer's output for one image at the model's input size (a dry
    forward pass with hooks on a CPU copy's modules; layers without a spatial output are left out)."""
    net: nn.Module = classifier.net
    size = classifier.info.image_size
    grids: dict[str, tuple[int, int]] = {}
    hooks = []
    for path in paths:
        def record(_module, _inputs, output, _path=path) -> None:
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                grids[_path] = (int(output.shape[2]), int(output.shape[3]))
        hooks.append(net.get_submodule(path).register_forward_hook(record))
    device = next(iter(net.parameters())).device
    was_training = classifier.training
    try:
        classifier.eval()
        with torch.no_grad():
            classifier(torch.zeros(1, 1, size, size, device=device))
    finally:
        for h in hooks:
            h.remove()
        classifier.train(was_training)
    return grids


def choose_layer(classifier: Any, requested: str = AUTO, min_cells: int = DEFAULT_MIN_CELLS, model_name: str = "") -> CamLayer:
    """The layer to explain for ``report.layer=requested`` (``auto`` or a layer path the backbone's
    registry lists); an unknown path is a one-line error that names the accepted layers."""
    spec = classifier.spec
    requested = AUTO if requested is None else str(requested).strip()
    who = model_name or spec.name
    if spec.explained_by_weights:
        if requested != AUTO:
            raise LungclsError(
                f"report.layer={requested} does not apply to {who}: {spec.name} has no layers and is explained by "
                "its weight map; use report.layer=auto for it"
            )
        side = int(classifier.net.input_size)
        return CamLayer(None, (side, side))
    accepted = spec.explainable_layers(classifier.net)
    if requested != AUTO and requested not in accepted:
        raise LungclsError(
            f"report.layer={requested} is not a layer {spec.name} can explain ({who}); use auto or one of: "
            f"{', '.join(accepted)}"
        )
    grids = layer_grids(classifier, accepted)
    if requested != AUTO:
        if requested not in grids:
            raise LungclsError(f"report.layer={requested} gives no spatial map at {classifier.info.image_size} px; use auto")
        return CamLayer(requested, grids[requested])
    return CamLayer(*_auto(accepted, grids, spec.gradcam_layer, int(min_cells)))


def _auto(accepted: Sequence[str], grids: dict[str, tuple[int, int]], registered: str, min_cells: int) -> tuple[str, tuple[int, int]]:
    """The registered layer if fine enough, else the deepest layer below it with >= min_cells across;
    if none is, the finest one (the deepest of equals)."""
    top = accepted.index(registered) if registered in accepted else len(accepted) - 1
    candidates = [p for p in accepted[: top + 1] if p in grids]
    if not candidates:
        raise LungclsError("no layer of the model gives a spatial map at its input size; use a larger dataset.image_size")
    for path in reversed(candidates):
        if min(grids[path]) >= min_cells:
            return path, grids[path]
    best = max(candidates, key=lambda p: (min(grids[p]), candidates.index(p)))
    return best, grids[best]


def layer_requests(value: Any, n_models: int) -> list[str]:
    """``report.layer``: one value for every model, or a list with one per checkpoint."""
    if isinstance(value, (list, tuple)):
        items = [AUTO if v is None else str(v) for v in value]
        if len(items) != n_models:
            raise LungclsError(
                f"report.layer lists {len(items)} layers for {n_models} checkpoints; give one per checkpoint "
                "(in ckpt order) or a single value for all"
            )
        return items
    return [AUTO if value is None else str(value)] * n_models
