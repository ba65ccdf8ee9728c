"""``occlusion``: Captum `Occlusion` (Zeiler & Fergus 2014): how much the target logit drops when a
``report.occlusion_window`` square (pixels at the model's input size) is replaced by the blurred
image, slid by ``report.occlusion_stride``; ``report.batch_size`` occluded copies per forward pass.
Evidence for the class only (ReLU); its grid is the stride."""

from __future__ import annotations

from captum.attr import Occlusion
from torch import Tensor

from lungcls.explain.maps.methods.registry import MethodContext, register_method


@register_method("occlusion", title="Occlusion", convention="relu", grid="window")
def occlusion(ctx: MethodContext, x: Tensor, targets: Tensor) -> Tensor:
    s = ctx.settings
    window, stride = s.occlusion_window, s.occlusion_stride
    return Occlusion(ctx.net).attribute(
        x, sliding_window_shapes=(x.shape[1], window, window), strides=(x.shape[1], stride, stride),
        baselines=ctx.baseline(x), target=targets, perturbations_per_eval=s.batch_size,
    )
