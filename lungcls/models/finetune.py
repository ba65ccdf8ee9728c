"""Fine-tune policies: which parameters train.

- ``head``: the classifier layer only;
- ``partial``: the top ``fraction`` of the backbone's feature blocks, plus the head;
- ``paper``: the reference study's per-backbone recipe (see the registry);
- ``full``: everything.

Frozen BatchNorm layers must also keep their running statistics: ``freeze_batchnorm_stats`` puts
them back in eval mode whenever the module is switched to training.
"""

from __future__ import annotations

import math
from typing import Mapping

from torch import nn

from lungcls.errors import LungclsError
from lungcls.models.registry import BackboneSpec

POLICIES = ("head", "partial", "paper", "full")


def trainable_prefixes(model: nn.Module, spec: BackboneSpec, finetune: Mapping) -> list[str]:
    """Module paths whose parameters train under this policy ("" means the whole model)."""
    name = finetune.get("name")
    if name == "full":
        return [""]
    if name == "head":
        return [spec.head]
    if name == "paper":
        return list(spec.paper) + [spec.head]
    if name == "partial":
        fraction = finetune.get("fraction")
        try:
            fraction = float(fraction)
        except (TypeError, ValueError):
            fraction = float("nan")
        if not 0 < fraction <= 1:
            raise LungclsError(f"finetune.fraction={finetune.get('fraction')} must be in (0, 1], e.g. finetune.fraction=0.25")
        blocks = spec.feature_blocks(model)
        n = math.ceil(fraction * len(blocks))
        return [p for block in blocks[len(blocks) - n :] for p in block] + [spec.head]
    raise LungclsError(f"unknown finetune '{name}'; choose one of {', '.join(POLICIES)} (finetune=<name>)")


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
