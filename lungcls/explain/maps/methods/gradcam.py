"""``gradcam``: Captum `LayerGradCam` on the model's Grad-CAM layer (Selvaraju et al. 2017), the
report's default map. The logistic baseline, which has no layer, is explained by its weight map
(`lungcls.explain.maps.engine.logistic_cam`) instead."""

from __future__ import annotations

from torch import Tensor

from lungcls.explain.maps.engine import grad_cam
from lungcls.explain.maps.methods.registry import MethodContext, register_method


@register_method("gradcam", title="Grad-CAM", convention="relu", needs_layer=True, grid="layer")
def gradcam(ctx: MethodContext, x: Tensor, targets: Tensor) -> Tensor:
    return grad_cam(ctx.net, ctx.layer, x, target=targets, batch_size=max(1, len(x))).cams
