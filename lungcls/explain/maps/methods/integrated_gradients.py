"""``integrated_gradients``: Captum `IntegratedGradients` (Sundararajan et al. 2017) from a black
image, ``report.ig_steps`` steps along the path, all steps of a batch evaluated together in chunks
of ``report.batch_size`` images (Captum's ``internal_batch_size``); magnitudes are shown (abs)."""

from __future__ import annotations

import torch
from captum.attr import IntegratedGradients
from torch import Tensor

from lungcls.explain.maps.methods.registry import MethodContext, register_method


@register_method("integrated_gradients", title="Integrated Gradients", convention="abs", grid="pixel")
def integrated_gradients(ctx: MethodContext, x: Tensor, targets: Tensor) -> Tensor:
    s = ctx.settings
    return IntegratedGradients(ctx.net).attribute(
        x, baselines=torch.zeros_like(x), target=targets, n_steps=s.ig_steps,
        internal_batch_size=s.batch_size * 4,
    )
