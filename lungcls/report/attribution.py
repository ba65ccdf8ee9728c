"""Every requested attribution method (``report.methods``) on one model and the report's images:
the maps (batched, on the model's device, timed), the sanity check of each, its deletion and
insertion curves, and one ``gradcam.csv`` row per image and method.

Grad-CAM comes from the same pass as the probabilities (`explain_batch`), as in a Grad-CAM-only
report; every other method gets the classes that pass explained, so all maps of an image answer
the same question. A method a model cannot run (a CAM on the logistic baseline, which has no
convolutional layer) is skipped for that model with one line saying why.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lungcls.explain.maps.explainer import ReportImage, ReportModel, class_targets, explain_batch, image_batch
from lungcls.explain.checks.faithfulness import Curves, blurred, faithfulness_curves, random_maps
from lungcls.explain.maps.engine import CamResult
from lungcls.explain.maps.preparation import resolve_layer
from lungcls.explain.maps.layers import AUTO, CamLayer
from lungcls.explain.checks.localisation import energy_shares, hit_and_iou
from lungcls.explain.maps.methods import AttributionMethod, MethodContext, finish
from lungcls.explain.checks.sanity import SanityResult, randomised_check, sanity_check
from lungcls.report.settings import ReportSettings

log = logging.getLogger(__name__)

__all__ = ["MethodRun", "explain_methods", "method_grid"]


@dataclass
class MethodRun:
    """One method's maps of one model on the report's images, and what was measured about them."""

    method: AttributionMethod
    cams: Tensor  # [N, S, S] at the model's size, post-processed
    grid: str
    ms_per_image: float
    sanity: SanityResult | None
    curves: Curves | None  # None: report.faithfulness off
    seconds: float = 0.0  # wall time of the maps, their sanity check and curves


def _timed(fn: Callable[[], Tensor], device: torch.device, n: int) -> tuple[Tensor, float]:
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, 1000.0 * (time.perf_counter() - start) / max(1, n)


def _context(net: nn.Module, layer: CamLayer, fine: CamLayer | None, s: ReportSettings) -> MethodContext:
    """The modules a method explains, looked up in ``net`` (a prepared copy: trained or randomised)."""
    return MethodContext(
        net=net,
        layer=None if layer.path is None else resolve_layer(net, "net." + layer.path),
        fine_layer=None if fine is None or fine.path is None else resolve_layer(net, "net." + fine.path),
        settings=s,
        baseline=lambda x: blurred(x, s.faithfulness_blur),
    )


def run_method(method: AttributionMethod, ctx: MethodContext, x: Tensor, targets: Tensor, batch_size: int) -> Tensor:
    """The method's post-processed maps [N, S, S] (CPU), ``batch_size`` images per call."""
    size = x.shape[-1]
    maps = [finish(method.compute(ctx, x[i:i + batch_size], targets[i:i + batch_size]), method.convention, size)
            for i in range(0, len(x), batch_size)]
    return torch.cat(maps) if maps else torch.zeros(0, size, size)


def method_grid(method: AttributionMethod, layer: CamLayer, fine: CamLayer | None, size: int, s: ReportSettings) -> str:
    """What a method's map resolves, for the tables: a layer and its grid, pixels, or windows."""
    if method.grid == "layer":
        return layer.describe()
    if method.grid == "fine layer" and fine is not None:
        return fine.describe()
    if method.grid == "window":
        cells = (size - s.occlusion_window) // s.occlusion_stride + 1
        return f"window {s.occlusion_window} px, stride {s.occlusion_stride} ({cells}x{cells})"
    return f"pixels ({size}x{size})" + (", model-free" if method.model_free else "")


def _sanity_layer(model: ReportModel, method: AttributionMethod, layer: CamLayer, fine: CamLayer | None) -> str | None:
    """How far down the cascade goes: a CAM's own layer; for pixel-level methods the whole network."""
    if method.grid == "layer":
        return layer.path
    if method.grid == "fine layer" and fine is not None:
        return fine.path
    blocks = model.model.spec.feature_blocks(model.model.net)
    return blocks[0][0] if blocks else None


def _one_method(model: ReportModel, method: AttributionMethod, x: Tensor, base: CamResult, layer: CamLayer,
                fine: CamLayer | None, s: ReportSettings, base_ms: float) -> MethodRun:
    device = x.device
    targets = base.targets.to(device)
    if method.name == "gradcam":
        cams, ms = base.cams, base_ms
        sanity = sanity_check(model, x.cpu(), base, layer, s.batch_size, s.sanity_threshold) if s.sanity else None
    else:
        ctx = _context(model.cam_model(), layer, fine, s)
        cams, ms = _timed(lambda: run_method(method, ctx, x, targets, s.batch_size), device, len(x))
        sanity = None
        if s.sanity:
            def again(net: nn.Module) -> Tensor:
                return run_method(method, _context(net, layer, fine, s), x, targets, s.batch_size)
            sanity = randomised_check(model, cams, _sanity_layer(model, method, layer, fine), again, s.sanity_threshold)
    curves = None
    if s.faithful_curves():
        curves = faithfulness_curves(model.model, x, cams.to(device), targets, s.faithfulness_steps, s.faithfulness_blur,
                                     s.batch_size)
    return MethodRun(method, cams, method_grid(method, layer, fine, x.shape[-1], s), ms, sanity, curves)


def skip_reason(model: ReportModel, method: AttributionMethod, fine: CamLayer | None) -> str | None:
    """Why a method cannot run on a model (one line), or None when it can."""
    if method.needs_layer and method.name != "gradcam" and (model.explained_by_weights or fine is None):
        return (f"{method.name} skipped for {model.name}: {model.model.spec.name} has no convolutional layer to "
                "explain (gradcam shows its weight map instead)")
    return None


def explain_methods(model: ReportModel, layer: CamLayer, images: Sequence[ReportImage],
                    methods: Sequence[AttributionMethod], s: ReportSettings) -> tuple[CamResult, list[MethodRun], Curves | None, list[str]]:
    """Grad-CAM pass (probabilities, explained classes), every method that can run, the random-order
    yardstick, and one-line notes for the methods skipped."""
    device = next(iter(model.model.parameters())).device
    x_cpu = image_batch(images, model)  # Grad-CAM moves its batches itself; the weight map stays on the CPU
    targets = class_targets(s.target, model, images)
    base, base_ms = _timed(lambda: explain_batch(model, x_cpu, targets, s.batch_size, layer), device, len(x_cpu))
    x = x_cpu.to(device)
    fine = None if model.explained_by_weights else model.cam_layer(AUTO, s.layercam_min_cells)
    runs, notes = [], []
    for method in methods:
        reason = skip_reason(model, method, fine)
        if reason:
            notes.append(reason)
            print(reason)
            continue
        log.info("%s of %s on %d images", method.title, model.name, len(images))
        try:
            start = time.perf_counter()
            runs.append(_one_method(model, method, x, base, layer, fine, s, base_ms))
            runs[-1].seconds = time.perf_counter() - start
        except RuntimeError as e:  # an architecture a Captum method cannot handle
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            notes.append(f"{method.name} skipped for {model.name}: it could not run on this backbone ({first[:200]})")
            print(notes[-1])
    rand = None
    if s.faithful_curves():
        rand = faithfulness_curves(model.model, x, random_maps(len(x), x.shape[-1]).to(device), base.targets.to(device),
                                   s.faithfulness_steps, s.faithfulness_blur, s.batch_size)
    return base, runs, rand, notes


def method_rows(model: ReportModel, run: MethodRun, base: CamResult, rand: Curves | None, images: Sequence[ReportImage],
                common: Sequence[Mapping[str, Any]], masks: Mapping[str, tuple[Any, Any]], s: ReportSettings,
                display: Tensor) -> list[dict[str, Any]]:
    """One ``gradcam.csv`` row per image for one method: ``common`` (selection, prediction...) plus
    the localisation, faithfulness and sanity numbers of this method's map."""
    rows = []
    none = [None] * len(images)
    del_auc, ins_auc = (none, none) if run.curves is None else (run.curves.deletion_auc, run.curves.insertion_auc)
    del_rand, ins_rand = (none, none) if rand is None else (rand.deletion_auc, rand.insertion_auc)
    for i, im in enumerate(images):
        lung, lesion = masks[im.path]
        row = {**common[i], "method": run.method.name, "layer": run.grid, "ms_per_image": run.ms_per_image,
               "sanity_spearman": run.sanity.spearman[i] if run.sanity is not None else None,
               "sanity_flag": run.sanity.flagged[i] if run.sanity is not None else None,
               "deletion_auc": _float(del_auc[i]), "insertion_auc": _float(ins_auc[i]),
               "deletion_auc_random": _float(del_rand[i]), "insertion_auc_random": _float(ins_rand[i])}
        row.update(energy_shares(display[i], lung, lesion, border_frac=s.border_frac))
        row.update(hit_and_iou(display[i], lesion, s.hit_tolerance))
        rows.append(row)
    return rows


def _float(value: Any) -> float | None:
    return None if value is None else float(value)
