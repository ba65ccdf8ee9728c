"""The model a map is taken from: an eval-mode copy whose activations no longer overwrite what
Captum's hooks hold (``prepare_for_cam``), and its layers looked up by a path such as
``layer4[-1]`` (``resolve_layer``), with one line naming the valid choices when the path is wrong."""

from __future__ import annotations

import copy
import difflib
import re

from torch import nn

from lungcls.errors import LungclsError

__all__ = ["prepare_for_cam", "resolve_layer"]


def prepare_for_cam(model: nn.Module, freeze: bool = True) -> nn.Module:
    """Return a deep copy in eval mode with every `inplace=True` module made out-of-place.

    In-place activations (torchvision's `ReLU(inplace=True)`) overwrite the tensors that autograd
    and Captum's hooks hold, which breaks or silently corrupts gradient-based attributions. The
    caller's model is not touched. With `freeze` (default) the copy's parameters stop requiring
    grad: Grad-CAM needs gradients w.r.t. the target layer's output only, so no autograd graph is
    built for the layers before it (less memory, faster).
    """
    if not isinstance(model, nn.Module):
        raise LungclsError(
            f"prepare_for_cam expects a torch.nn.Module, got {type(model).__name__}; "
            "pass the network itself (e.g. the LightningModule's backbone)"
        )
    cam_model = copy.deepcopy(model)
    for module in cam_model.modules():
        if isinstance(getattr(module, "inplace", None), bool) and module.inplace:
            module.inplace = False
    if freeze:
        cam_model.requires_grad_(False)
    return cam_model.eval()


_PATH = re.compile(r"[^.\[\]\s]+(\[-?\d+\])*(\.[^.\[\]\s]+(\[-?\d+\])*)*")
_TOKEN = re.compile(r"([^.\[\]\s]+)|\[(-?\d+)\]")


def _split_path(path: str) -> list[str | int]:
    """'layer4[-1].conv3' -> ['layer4', -1, 'conv3']: names and bracketed indices."""
    if not _PATH.fullmatch(path):
        raise LungclsError(
            f"cannot parse layer path {path!r}; use dotted names with optional [index], "
            "e.g. 'layer4.2', 'layer4[-1]' or 'features.11'"
        )
    return [name if name else int(index) for name, index in _TOKEN.findall(path)]


def resolve_layer(model: nn.Module, path: str) -> nn.Module:
    """Find a submodule by dotted path: "layer4.2", "features.10", "layer4[-1]", "features[-1]".

    Look the layer up in the model you pass to `grad_cam` (the prepared copy), not in the
    original: Captum hooks the module object itself.
    """
    if not isinstance(path, str) or not path.strip():
        raise LungclsError(
            f"layer path must be a non-empty string such as 'layer4[-1]', got {path!r}"
        )
    module, here = model, ""
    for token in _split_path(path.strip()):
        where = here or f"the {type(model).__name__}"
        children = dict(module.named_children())
        if isinstance(token, int):
            if not isinstance(module, (nn.Sequential, nn.ModuleList)):
                fix = (
                    f"use a name, one of: {', '.join(children)}"
                    if children
                    else "it is a leaf module, so drop the index"
                )
                raise LungclsError(
                    f"layer path {path!r}: {where} is a {type(module).__name__}, not a "
                    f"Sequential/ModuleList, so [{token}] cannot index it; {fix}"
                )
            if not -len(module) <= token < len(module):
                raise LungclsError(
                    f"layer path {path!r}: index [{token}] is out of range for {where} with "
                    f"{len(module)} children; use an index from -{len(module)} to {len(module) - 1}"
                )
            module, here = module[token], f"{here}[{token}]"
            continue
        if token not in children:
            close = difflib.get_close_matches(token, list(children), n=3, cutoff=0.5)
            if re.fullmatch(r"-\d+", token):
                close = [f"{here}[{token}]"]
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            raise LungclsError(
                f"layer path {path!r}: no module {token!r} in {where}{hint}; valid names there: "
                f"{', '.join(children) or '(none, it is a leaf module)'}"
            )
        module, here = children[token], f"{here}.{token}" if here else token
    return module
