"""Fine-tune policies: which parameters train. A registry, chosen by ``finetune=<name>``.

- ``head``: the classifier layer only;
- ``partial``: the top ``finetune.fraction`` of the backbone's feature blocks, plus the head;
- ``paper``: the reference study's per-backbone recipe (see the backbone registry);
- ``full``: everything.

A policy maps (network, backbone spec, finetune config) to the module paths that train. Frozen
BatchNorm layers must also keep their running statistics: ``freeze_batchnorm_stats`` puts them
back in eval mode whenever the module is switched to training.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from torch import nn

from lungcls.errors import LungclsError
from lungcls.models.backbones import BackboneSpec
from lungcls.registry import Registry

Policy = Callable[[nn.Module, BackboneSpec, Mapping], list[str]]
POLICIES: Registry[Policy] = Registry("finetune policy", "finetune=<name>")


@POLICIES.register("full")
def full(model: nn.Module, spec: BackboneSpec, finetune: Mapping) -> list[str]:
    return [""]  # "" is the whole model


@POLICIES.register("head")
def head(model: nn.Module, spec: BackboneSpec, finetune: Mapping) -> list[str]:
    return [spec.head]


@POLICIES.register("paper")
def paper(model: nn.Module, spec: BackboneSpec, finetune: Mapping) -> list[str]:
    return list(spec.paper) + [spec.head]


@POLICIES.register("partial")
def partial(model: nn.Module, spec: BackboneSpec, finetune: Mapping) -> list[str]:
    raw = finetune["fraction"] if "fraction" in finetune else None
    try:
        fraction = float(raw)
    except (TypeError, ValueError):
        fraction = float("nan")
    if not 0 < fraction <= 1:
        raise LungclsError(f"finetune.fraction={raw} must be in (0, 1], e.g. finetune.fraction=0.25")
    blocks = spec.feature_blocks(model)
    n = math.ceil(fraction * len(blocks))
    return [p for block in blocks[len(blocks) - n :] for p in block] + [spec.head]


def trainable_prefixes(model: nn.Module, spec: BackboneSpec, finetune: Mapping) -> list[str]:
    """Module paths whose parameters train under the configured policy ("" means the whole model)."""
    return POLICIES.get(finetune["name"])(model, spec, finetune)


def apply_finetune(model: nn.Module, spec: BackboneSpec, finetune: Mapping) -> tuple[int, int]:
    """Set ``requires_grad`` per the policy; returns (trainable, total) parameter counts."""
    prefixes = trainable_prefixes(model, spec, finetune)
    for name, p in model.named_parameters():
        p.requires_grad = any(pre == "" or name == pre or name.startswith(pre + ".") for pre in prefixes)
    return count_parameters(model)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def freeze_batchnorm_stats(model: nn.Module) -> None:
    """Frozen BatchNorm layers stay in eval mode (their running mean/var must not drift)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                m.eval()
