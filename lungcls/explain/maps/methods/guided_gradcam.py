"""``guided_gradcam``: Captum `GuidedGradCam` (Selvaraju et al. 2017): guided backpropagation at
pixel level times the Grad-CAM of the model's layer, so pixel detail only where Grad-CAM looks.
Needs a convolutional layer (not the logistic baseline); magnitudes are shown (abs)."""

from __future__ import annotations

from captum.attr import GuidedGradCam
from torch import Tensor

from lungcls.explain.maps.methods.registry import MethodContext, register_method


@register_method("guided_gradcam", title="Guided Grad-CAM", convention="abs", needs_layer=True, grid="pixel")
def guided_gradcam(ctx: MethodContext, x: Tensor, targets: Tensor) -> Tensor:
    return GuidedGradCam(ctx.net, ctx.layer).attribute(x.clone().requires_grad_(), target=targets)
