"""``edge``: a model-free control, the Sobel gradient magnitude of the image itself (kornia). It
looks like a plausible saliency map (outlines of lungs, ribs and opacities) but knows nothing of
the model: the sanity check must flag it and its deletion curve must be no better than random.
A method that scores like it is not explaining the model (Adebayo et al. 2018)."""

from __future__ import annotations

import kornia
from torch import Tensor

from lungcls.explain.maps.methods.registry import MethodContext, register_method


@register_method("edge", title="Edge control (Sobel)", convention="none", grid="pixel", model_free=True)
def edge(ctx: MethodContext, x: Tensor, targets: Tensor) -> Tensor:
    return kornia.filters.sobel(x.float())
