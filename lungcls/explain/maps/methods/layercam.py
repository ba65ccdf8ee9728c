"""``layercam``: LayerCAM (Jiang et al. 2021, "LayerCAM: Exploring Hierarchical Class Activation
Maps for Localization", IEEE TIP), a CAM that stays sharp at shallow, finer layers.

Grad-CAM weighs each channel k of a layer's activation A by the spatial mean of its gradient, one
weight per channel; at shallow layers these means cancel out. LayerCAM weighs every location by its
own positive gradient instead:

    M^c[i, j] = ReLU( sum_k ReLU(dy^c / dA^k[i, j]) * A^k[i, j] )

where y^c is the explained class's logit. It is computed here at the finer layer that
``report.layercam_min_cells`` selects (ResNet18 at 128 px: ``layer2``, 16x16; at 224 px:
``layer3``, 14x14), one forward and one backward pass per batch. The ``grad-cam`` package has it
too, but its current release needs numpy 2 and OpenCV.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lungcls.explain.maps.methods.registry import MethodContext, register_method


def layer_cam(net: nn.Module, layer: nn.Module, x: Tensor, targets: Tensor) -> Tensor:
    """LayerCAM maps [B, h, w] of ``layer`` (its own grid, before upsampling) for class ``targets``."""
    seen: dict[str, Tensor] = {}

    def keep(_module: nn.Module, _inputs: tuple, output: Tensor) -> None:
        seen["a"] = output

    handle = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            inputs = x.detach().clone().requires_grad_()
            logits = net(inputs)
            score = logits.gather(1, targets.view(-1, 1)).sum()
            activation = seen["a"]
            (grad,) = torch.autograd.grad(score, activation)
    finally:
        handle.remove()
    return torch.relu((torch.relu(grad) * activation).sum(dim=1)).detach()


@register_method("layercam", title="LayerCAM", convention="relu", needs_layer=True, grid="fine layer")
def layercam(ctx: MethodContext, x: Tensor, targets: Tensor) -> Tensor:
    return layer_cam(ctx.net, ctx.fine_layer, x, targets)
