"""``saliency``: Captum `Saliency` (Simonyan et al. 2014), the magnitude of the target logit's
gradient with respect to each pixel: one backward pass, the finest and noisiest map."""

from __future__ import annotations

from captum.attr import Saliency
from torch import Tensor

from lungcls.explain.maps.methods.registry import MethodContext, register_method


@register_method("saliency", title="Saliency", convention="abs", grid="pixel")
def saliency(ctx: MethodContext, x: Tensor, targets: Tensor) -> Tensor:
    return Saliency(ctx.net).attribute(x, target=targets, abs=True)
