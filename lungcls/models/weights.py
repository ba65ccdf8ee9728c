"""Initial weights for a backbone: ImageNet (downloaded or from the torch hub cache), a local
state-dict file, or random, drawn by the initialisation ``backbone.init`` names (``INITIALIZATIONS``).

ImageNet weights go through torchvision's own weights enums and ``torch.hub``'s cache
(``$TORCH_HOME/hub/checkpoints``), so a file fetched once, or copied there by hand on an offline
machine, is used without a network. Offline with nothing cached is a one-line error that names the
file and the folder to put it in.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from lungcls.errors import LungclsError
from lungcls.models.backbones import BackboneSpec
from lungcls.registry import Registry

log = logging.getLogger(__name__)

# How random weights are drawn (``backbone.init``); pretrained weights replace them anyway.
INITIALIZATIONS: Registry = Registry("initialisation", "backbone.init=<name>")


@INITIALIZATIONS.register("default")
def builder_init(model: nn.Module) -> None:
    """Keep the weights the builder drew (torchvision's own initialisation)."""


@INITIALIZATIONS.register("kaiming")
def kaiming_init(model: nn.Module) -> None:
    """He et al. (2015) for every conv (normal, variance 2 / fan_in: the signal keeps its size
    through each ReLU layer) and N(0, 0.01) for linear layers (torchvision's VGG scheme: small
    logits at the start), biases 0; normalisation layers keep the builder's values. Under PyTorch's
    default (variance 1 / (3 fan_in)) a deep ReLU network without BatchNorm (AlexNet) loses about
    a factor six in signal power per layer and starts as a constant function."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            nn.init.zeros_(m.bias)


def init_function(name: str | None) -> Callable[[nn.Module], None]:
    """What draws a model's random weights as ``backbone.init`` says (None: the builder's own)."""
    return INITIALIZATIONS.get(name or "default")


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def imagenet_state_dict(spec: BackboneSpec, variant: str = "IMAGENET1K_V1") -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights for ``spec``, from the hub cache or downloaded into it."""
    if spec.weights_enum is None:
        raise LungclsError(f"backbone {spec.name} has no ImageNet weights; set backbone.weights=null")
    try:
        weights = spec.weights_enum[variant]
    except KeyError:
        options = ", ".join(w.name for w in spec.weights_enum)
        raise LungclsError(f"backbone.imagenet_weights={variant} is not one of {options}") from None
    filename = os.path.basename(weights.url)
    cached = hub_checkpoint_dir() / filename
    if cached.is_file():
        return _load_file(cached)
    try:
        log.info("downloading %s to %s", weights.url, cached.parent)
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # offline, proxy, truncated download...
        raise LungclsError(
            f"ImageNet weights for {spec.name} are not cached and could not be downloaded ({type(e).__name__}); "
            f"put {filename} (from {weights.url}) in {cached.parent}/, or set backbone.weights=/path/to/state_dict.pt "
            "or backbone.weights=null"
        ) from None


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise LungclsError(f"cannot read weights file {path} ({e}); it must be a torch state dict (.pt/.pth)") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # a Lightning checkpoint: take the backbone's weights
        obj = {k.removeprefix("net."): v for k, v in obj.items() if k.startswith("net.")} or obj
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise LungclsError(f"weights file {path} does not hold a state dict of tensors")
    return obj


def load_initial_weights(model: nn.Module, spec: BackboneSpec, weights: str | None, variant: str = "IMAGENET1K_V1") -> str:
    """Load ``weights`` (imagenet | auto | path | None) into ``model`` before its head is replaced,
    and say what was loaded.

    ``imagenet`` fails clearly when the weights cannot be had; ``auto`` (the default for real data
    sets) uses them when cached or downloadable and otherwise warns loudly and starts from random
    weights, so a first run on a machine without internet still trains.

    Tensors whose shape does not fit (a 1000-class ImageNet head, a head for other classes) are
    skipped and named in the log; any other missing or unexpected key is an error, since it means
    the file belongs to another architecture.
    """
    if weights in (None, "", "null", "none", "random"):
        return "random"
    if weights == "auto":
        if spec.weights_enum is None:
            return "random"
        try:
            state = imagenet_state_dict(spec, variant)
        except LungclsError as e:
            log.warning("%s -- training from RANDOM weights (backbone.weights=auto)", e)
            return "random (ImageNet weights unavailable)"
        source = f"ImageNet ({variant})"
    elif weights == "imagenet":
        state = imagenet_state_dict(spec, variant)
        source = f"ImageNet ({variant})"
    else:
        path = Path(str(weights)).expanduser()
        if not path.is_file():
            raise LungclsError(
                f"backbone.weights={weights} is neither 'imagenet', null, nor an existing file; give a state-dict path"
            )
        state = _load_file(path)
        source = str(path)
    own = model.state_dict()
    skipped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    state = {k: v for k, v in state.items() if k not in skipped}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k not in skipped and not k.endswith("num_batches_tracked")]
    if result.unexpected_keys or missing:
        raise LungclsError(
            f"weights from {source} do not fit backbone {spec.name} "
            f"({len(missing)} missing, {len(result.unexpected_keys)} unexpected keys, e.g. "
            f"{(missing or result.unexpected_keys)[0]}); use weights saved from the same architecture"
        )
    log.info("loaded %s weights into %s%s", source, spec.name, f" (skipped {skipped})" if skipped else "")
    return source
