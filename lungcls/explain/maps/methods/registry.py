"""One registry of attribution methods (``report.methods``): what each computes, the convention its
raw values follow, and the one post-processing every map gets, so maps compare like with like.

A method is a function ``compute(ctx, x, targets) -> raw`` over one batch: ``x`` [B, 1, S, S] images
in [0, 1] on the model's device (what `LungClassifier.forward` takes), ``targets`` [B] the class
ids to explain; ``raw`` [B, h, w] (or [B, 1, h, w]) attribution at any grid. `finish` then applies
the method's convention (``abs``: signed gradients whose magnitude matters; ``relu``: evidence for
the class only, as Grad-CAM defines it), upsamples bilinearly to S x S and scales each map to max 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lungcls.errors import LungclsError
from lungcls.explain.maps.engine import normalize_cams
from lungcls.registry import Registry

__all__ = ["ALL", "METHODS", "AttributionMethod", "MethodContext", "finish", "register_method", "resolve_methods"]

ALL = "all"


@dataclass(frozen=True)
class MethodContext:
    """What a method may use for one model: the frozen out-of-place copy of the classifier, the
    module Grad-CAM explains (None for models explained by their weights), the finer layer that
    LayerCAM explains, and the typed ``report`` settings (window, steps, samples...)."""

    net: nn.Module
    layer: nn.Module | None
    fine_layer: nn.Module | None
    settings: Any
    baseline: Callable[[Tensor], Tensor]  # x -> the "removed" image (blurred) of the same shape


@dataclass(frozen=True)
class AttributionMethod:
    """A registered method: its name, the paper it follows, its sign convention, whether it
    needs a convolutional layer, and what its grid is (for the tables)."""

    name: str
    compute: Callable[[MethodContext, Tensor, Tensor], Tensor]
    title: str
    convention: str  # "abs" | "relu" | "none"
    needs_layer: bool
    grid: str  # "layer" | "fine layer" | "pixel" | "window"
    model_free: bool = False


class _MethodRegistry(Registry[AttributionMethod]):
    def wrap(self, name: str, obj, **fields) -> AttributionMethod:
        return AttributionMethod(name=name, compute=obj, **fields)


METHODS: _MethodRegistry = _MethodRegistry("attribution method", "report.methods=[...] or report.methods=all")


def register_method(name: str, *, title: str, convention: str, needs_layer: bool = False, grid: str = "pixel",
                    model_free: bool = False) -> Callable:
    """Decorator: ``@register_method("saliency", title=..., convention="abs")`` on a compute function."""
    if convention not in ("abs", "relu", "none"):
        raise ValueError(f"unknown convention {convention!r}")
    return METHODS.register(name, title=title, convention=convention, needs_layer=needs_layer, grid=grid,
                            model_free=model_free)


def resolve_methods(value: str | Sequence[str]) -> list[AttributionMethod]:
    """``report.methods`` (a list of names, or ``all``) -> the methods, in the order given (``all``:
    Grad-CAM first, then the registry's order); an unknown name names the registered ones."""
    names = [value] if isinstance(value, str) else [str(v) for v in value]
    if names == [ALL]:
        names = ["gradcam"] + [n for n in METHODS.names() if n != "gradcam"]
    if not names:
        raise LungclsError(f"report.methods is empty; give at least one of {', '.join(METHODS.names())} (or all)")
    if len(set(names)) != len(names):
        raise LungclsError(f"report.methods lists a method twice: {names}; give each once")
    return [METHODS.get(n) for n in names]


def finish(raw: Tensor, convention: str, size: int) -> Tensor:
    """The common post-processing: the convention (abs or ReLU), bilinear upsampling to size x size,
    each map scaled to max 1 (an all-zero map stays zero). Returns [B, size, size] float32 on CPU."""
    raw = raw.detach().float()
    if raw.dim() == 4:
        raw = raw.sum(dim=1)  # channels of an input attribution (one here) add up
    if raw.dim() != 3:
        raise LungclsError(f"an attribution method returned shape {tuple(raw.shape)}; expected [B, h, w]")
    raw = raw.abs() if convention == "abs" else torch.relu(raw) if convention == "relu" else raw
    if raw.shape[-2:] != (size, size):
        raw = F.interpolate(raw[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    return normalize_cams(raw).cpu()
