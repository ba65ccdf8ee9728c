"""``smoothgrad``: Captum `NoiseTunnel` over `Saliency` (Smilkov et al. 2017): the mean gradient
magnitude over ``report.smoothgrad_samples`` noisy copies (Gaussian, standard deviation
``report.smoothgrad_noise`` of the [0, 1] intensity range), the copies evaluated in batches. The
noise is drawn from a fixed seed, so the same report gives the same maps and numbers twice."""

from __future__ import annotations

import torch
from captum.attr import NoiseTunnel, Saliency
from torch import Tensor

from lungcls.explain.maps.methods.registry import MethodContext, register_method

NOISE_SEED = 0


@register_method("smoothgrad", title="SmoothGrad", convention="abs", grid="pixel")
def smoothgrad(ctx: MethodContext, x: Tensor, targets: Tensor) -> Tensor:
    s = ctx.settings
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(NOISE_SEED)
        return NoiseTunnel(Saliency(ctx.net)).attribute(
            x, nt_type="smoothgrad", nt_samples=s.smoothgrad_samples, stdevs=s.smoothgrad_noise,
            nt_samples_batch_size=s.smoothgrad_samples, target=targets, abs=True,
        )
