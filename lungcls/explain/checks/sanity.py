"""The model-randomisation sanity check of Adebayo et al. (2018), "Sanity Checks for Saliency Maps".

A map that explains what a model learned must change when the learned weights are destroyed. The
check re-initialises the model's layers in a cascade from the head down to the explained layer
(one re-initialised group more at each stage), re-computes every map for the same class, and
measures the Spearman rank correlation with the trained model's map. A map that stays nearly the
same (correlation at or above ``threshold`` after the whole cascade) reflects the image (edges,
bright regions) rather than the model, and is flagged: its localisation numbers do not show where
the model looks.

Re-initialisation uses each layer's own ``reset_parameters`` under a fixed seed (BatchNorm back
to identity statistics), on a copy: the caller's model is never touched.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn

from lungcls.explain.maps.engine import CamResult, grad_cam, logistic_cam
from lungcls.explain.maps.preparation import prepare_for_cam, resolve_layer
from lungcls.explain.maps.layers import CamLayer

if TYPE_CHECKING:
    from lungcls.explain.maps.explainer import ReportModel

__all__ = ["SanityResult", "cascade_stages", "randomised_check", "rank_correlations", "sanity_check"]

DEFAULT_THRESHOLD = 0.5


@dataclass
class SanityResult:
    """Per image: the rank correlation after the full cascade and whether the map is flagged;
    per stage (what was re-initialised so far): the mean correlation over the images."""

    spearman: list[float | None]
    flagged: list[bool | None]
    stages: list[tuple[str, float | None]] = field(default_factory=list)
    threshold: float = DEFAULT_THRESHOLD


def cascade_stages(net: nn.Module, spec, layer_path: str | None) -> list[tuple[str, list[str]]]:
    """(label, module paths) to re-initialise at each stage, top down: first everything above the
    last feature block (the classifier), then each feature block down to the one that produces the
    explained layer's output (a container layer, e.g. ``layer3``, is reached with its first block)."""
    order = {name: i for i, (name, _) in enumerate(net.named_modules())}
    blocks = spec.feature_blocks(net)
    if not blocks or layer_path is None:
        return [(spec.head, [spec.head])]
    last_block = order[blocks[-1][0]]
    last_block_end = max(i for name, i in order.items() if any(name == p or name.startswith(p + ".") for p in blocks[-1]))
    head = [name for name, m in net.named_modules() if order[name] > last_block_end and _owns_parameters(m)]
    stages = [("classifier", head or [spec.head])]
    start = order[layer_path]
    end = max(i for name, i in order.items() if name == layer_path or name.startswith(layer_path + "."))
    feeding = max((order[b[0]] for b in blocks if order[b[0]] <= end), default=last_block)
    floor = min(start, feeding)
    for block in reversed(blocks):
        if order[block[0]] < floor:
            break
        stages.append((block[0], list(block)))
    return stages


def _owns_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def _reinitialise(net: nn.Module, paths: Sequence[str], seed: int) -> None:
    """``reset_parameters`` (and BatchNorm's running statistics) of every module under `paths`."""
    with torch.random.fork_rng():  # the global generators (CPU and CUDA) are left as they were
        torch.manual_seed(seed)
        for path in paths:
            for module in net.get_submodule(path).modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()


def rank_correlations(a: torch.Tensor, b: torch.Tensor) -> list[float | None]:
    """Spearman rank correlation of each pair of maps (ties get average ranks); None where either
    map is constant (an all-zero map has no ranking to compare)."""
    x = a.flatten(1).double().numpy()
    y = b.flatten(1).double().numpy()
    out: list[float | None] = []
    for u, v in zip(x, y):
        if np.ptp(u) == 0 or np.ptp(v) == 0:
            out.append(None)
            continue
        ru, rv = rankdata(u), rankdata(v)
        out.append(float(np.corrcoef(ru, rv)[0, 1]))
    return out


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def sanity_check(model: ReportModel, images: torch.Tensor, trained: CamResult, layer: CamLayer,
                 batch_size: int = 16, threshold: float = DEFAULT_THRESHOLD, seed: int = 0) -> SanityResult:
    """Re-compute the maps of `trained` (same images [N, 1, S, S] in [0, 1], same explained
    classes) while the cascade re-initialises the model, and compare each with the trained map."""
    net = model.model
    targets = trained.targets
    stages = cascade_stages(net.net, net.spec, layer.path)
    if layer.path is None:  # the logistic baseline: its weight map, re-initialised
        copy_net = copy.deepcopy(net.net).cpu()
        gray = (images - net.input_mean.cpu()) / net.input_std.cpu()
    else:
        cam_model = prepare_for_cam(net)
        cam_layer = resolve_layer(cam_model, "net." + layer.path)
    per_stage: list[tuple[str, float | None]] = []
    correlations: list[float | None] = [None] * len(targets)
    for k, (label, paths) in enumerate(stages):
        if layer.path is None:
            _reinitialise(copy_net, paths, seed + k)
            result = logistic_cam(copy_net.weight_maps().cpu(), gray, target=targets, probs=trained.probs,
                                  size=tuple(trained.cams.shape[-2:]))
        else:
            _reinitialise(cam_model.net, paths, seed + k)
            result = grad_cam(cam_model, cam_layer, images, target=targets, batch_size=batch_size)
        correlations = rank_correlations(trained.cams, result.cams)
        per_stage.append((label, _mean(correlations)))
    flagged = [None if r is None else bool(r >= threshold) for r in correlations]
    return SanityResult(correlations, flagged, per_stage, threshold)


def randomised_check(model: ReportModel, trained_cams: torch.Tensor, layer_path: str | None,
                     maps: Callable[[nn.Module], torch.Tensor], threshold: float = DEFAULT_THRESHOLD,
                     seed: int = 0) -> SanityResult:
    """The same test for any attribution method, at the end of the cascade only (one extra pass of
    the method, not one per stage): every stage from the classifier down to ``layer_path`` (a
    method's own layer; for pixel-level methods the first feature block, so the whole network) is
    re-initialised as `sanity_check` would, then ``maps(randomised_copy)`` gives the maps [N, S, S]
    that are compared with ``trained_cams``. A model-free map (the edge control) is unchanged: 1.0."""
    net = model.model
    stages = cascade_stages(net.net, net.spec, layer_path)
    randomised = prepare_for_cam(net)
    for k, (_, paths) in enumerate(stages):
        _reinitialise(randomised.net, paths, seed + k)
    correlations = rank_correlations(trained_cams, maps(randomised))
    flagged = [None if r is None else bool(r >= threshold) for r in correlations]
    return SanityResult(correlations, flagged, [(stages[-1][0], _mean(correlations))], threshold)
