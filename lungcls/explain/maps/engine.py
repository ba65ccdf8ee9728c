"""Grad-CAM maps for the CNN backbones (Captum `LayerGradCam`) and the logistic baseline.

A CAM here is always a float32 CPU map [H, W] at the input image size, non-negative and scaled so
that its maximum is 1 (an all-zero map stays all zero). Dividing by the maximum, rather than
min-max scaling, keeps zero meaning "no evidence", so the energy shares in
`lungcls.explain.checks.localisation` compare like with like across images and models.

Typical use::

    cam_model = prepare_for_cam(model)                 # a frozen eval-mode copy, no in-place ops
    layer = resolve_layer(cam_model, "layer4[-1]")     # look the layer up in the copy
    result = grad_cam(cam_model, layer, images)        # images normalised, on the model's device

The model copy and the layer lookup live in ``preparation.py``; this module re-exports them, so
the whole engine is imported from one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution, LayerGradCam
from torch import Tensor, nn

from lungcls.errors import LungclsError
from lungcls.explain.maps.preparation import resolve_layer

__all__ = [
    "CamResult",
    "grad_cam",
    "logistic_cam",
    "normalize_cams",
]


@dataclass(frozen=True)
class CamResult:
    """Maps and predictions for N images, all on the CPU.

    cams: [N, H, W] float32 in [0, 1]; probs: [N, C] float32 softmax of the logits of the same
    forward pass the CAM came from; preds: [N] int64 argmax of probs; targets: [N] int64 the class
    each CAM explains (the prediction unless a target was given).
    """

    cams: Tensor
    probs: Tensor
    preds: Tensor
    targets: Tensor

    def __len__(self) -> int:
        return int(self.cams.shape[0])

    @property
    def pred_probs(self) -> Tensor:
        """[N] probability of the predicted class (what figure titles show)."""
        return self.probs.gather(1, self.preds[:, None]).squeeze(1)

    @property
    def target_probs(self) -> Tensor:
        """[N] probability of the explained class."""
        return self.probs.gather(1, self.targets[:, None]).squeeze(1)


# --------------------------------------------------------------------------- Grad-CAM


def normalize_cams(cams: Tensor) -> Tensor:
    """Per-map ReLU then division by the map's maximum; all-zero maps stay zero (no NaN)."""
    cams = torch.relu(cams.float())
    peak = cams.flatten(1).amax(dim=1) if cams.shape[0] else cams.new_zeros(0)
    scale = torch.where(peak > 0, peak, torch.ones_like(peak))
    return cams / scale.view(-1, *([1] * (cams.dim() - 1)))


def _targets_tensor(target: int | Sequence[int] | Tensor | None, n: int) -> Tensor | None:
    """None, an int for every image, or one class id per image -> [N] int64 CPU tensor."""
    if target is None:
        return None
    if isinstance(target, bool):
        raise LungclsError(f"target must be a class id or one class id per image, got {target!r}")
    if isinstance(target, int):
        return torch.full((n,), target, dtype=torch.long)
    t = torch.as_tensor(target).detach().cpu()
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise LungclsError(f"target must hold integer class ids, got dtype {t.dtype}")
    t = t.long().reshape(-1)
    if t.numel() == 1:
        return t.expand(n).clone()
    if t.numel() != n:
        raise LungclsError(
            f"target has {t.numel()} class ids for {n} images; pass one id per image, "
            "a single int, or None for the predicted class"
        )
    return t


def _check_targets(targets: Tensor, n_classes: int) -> None:
    bad = (targets < 0) | (targets >= n_classes)
    if bool(bad.any()):
        raise LungclsError(
            f"target class id {int(targets[bad][0])} is out of range for a model with "
            f"{n_classes} classes; use ids 0..{n_classes - 1}"
        )


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return fallback


def _check_cam_inputs(model: nn.Module, layer: nn.Module | str, images: Tensor, batch_size: int) -> nn.Module:
    """The layer module (looked up when given by path), after checking what grad_cam was given."""
    if isinstance(layer, str):
        layer = resolve_layer(model, layer)
    if not any(m is layer for m in model.modules()):
        raise LungclsError(
            f"the Grad-CAM layer ({type(layer).__name__}) is not a submodule of the model passed "
            "to grad_cam; look it up in that same model: resolve_layer(prepared_model, path)"
        )
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise LungclsError(
            f"images must be a normalised float tensor [N, C, H, W], got {shape}; "
            "stack the transformed images into one batch tensor"
        )
    if not isinstance(batch_size, int) or batch_size < 1:
        raise LungclsError(f"batch_size must be a positive integer, got {batch_size!r}")
    return layer


def _batch_cam(model: nn.Module, layer: nn.Module, x: Tensor, target: Tensor | None,
               size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """One batch's Grad-CAM (CPU maps at ``size``), its float logits and the classes explained,
    all from one forward pass: the forward hands Captum the explained logit and keeps the rest."""
    seen: dict[str, Tensor] = {}

    def forward(inp: Tensor, _t: Tensor | None = target, _s=seen) -> Tensor:
        logits = model(inp)
        if not isinstance(logits, Tensor) or logits.dim() != 2:
            got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits)
            raise LungclsError(
                f"Grad-CAM needs a model that returns logits [N, classes], got {got}; "
                "pass the network that maps images to class logits"
            )
        chosen = logits.argmax(dim=1) if _t is None else _t
        if _t is not None:
            _check_targets(_t, logits.shape[1])
        _s["logits"], _s["target"] = logits.detach(), chosen.detach()
        return logits.gather(1, chosen[:, None]).squeeze(1)

    attr = LayerGradCam(forward, layer).attribute(x)
    if not isinstance(attr, Tensor) or attr.dim() != 4:
        got = tuple(attr.shape) if isinstance(attr, Tensor) else type(attr).__name__
        raise LungclsError(
            f"Grad-CAM layer {type(layer).__name__} gives attributions of shape {got}, "
            "not a spatial map [N, 1, h, w]; pick a convolutional block before pooling "
            "(e.g. 'layer4[-1]' for ResNet, 'features.11' for AlexNet)"
        )
    up = LayerAttribution.interpolate(attr, size, interpolate_mode="bilinear")
    return normalize_cams(up[:, 0].detach()).cpu(), seen["logits"].float(), seen["target"]


def grad_cam(
    model: nn.Module,
    layer: nn.Module | str,
    images: Tensor,
    target: int | Sequence[int] | Tensor | None = None,
    batch_size: int = 32,
) -> CamResult:
    """Grad-CAM of `layer` for each image: Captum `LayerGradCam`, bilinear upsampling, ReLU, max=1.

    `images` are normalised float [N, 3, H, W] (moved to the model's device batch by batch, so a
    GPU model runs on the GPU). `target` None explains the predicted class; an int or one id per
    image explains that class. Probabilities come from the same forward pass as the CAM, which
    selects the target logit itself (Captum's recommended form), so there is one forward per batch.
    The model is put in eval mode (BatchNorm/Dropout in train mode would make a map depend on the
    rest of its batch and on chance) and left there; Captum's hooks are removed even on errors.
    Use `prepare_for_cam` first for torchvision models.
    """
    layer = _check_cam_inputs(model, layer, images, batch_size)
    n, _, height, width = images.shape
    targets = _targets_tensor(target, n)
    model.eval()
    device = _model_device(model, images.device)
    cams, probs, preds, used = [], [], [], []

    with torch.inference_mode(False), torch.enable_grad():
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            # clone(): a normal tensor even if the caller built `images` under inference_mode.
            x = images[start:stop].detach().to(device).clone()
            chunk_target = None if targets is None else targets[start:stop].to(device)
            cam, logits, chosen = _batch_cam(model, layer, x, chunk_target, (height, width))
            cams.append(cam)
            probs.append(torch.softmax(logits, dim=1).cpu())
            preds.append(logits.argmax(dim=1).cpu())
            used.append(chosen.cpu())

    if n == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return CamResult(torch.zeros(0, height, width), torch.zeros(0, 0), empty, empty.clone())
    return CamResult(
        cams=torch.cat(cams).float(),
        probs=torch.cat(probs).float(),
        preds=torch.cat(preds).long(),
        targets=torch.cat(used).long(),
    )


# --------------------------------------------------------------------------- logistic baseline


def _gray_images(weight_maps: Tensor, images_gray: Tensor) -> Tensor:
    """The grayscale images as float [N, H, W] on the CPU, after checking both shapes."""
    if not isinstance(weight_maps, Tensor) or weight_maps.dim() != 3:
        got = tuple(weight_maps.shape) if isinstance(weight_maps, Tensor) else type(weight_maps)
        raise LungclsError(
            f"weight_maps must be [classes, h, w], got {got}; reshape the linear layer's weight "
            "to (classes, input_size, input_size)"
        )
    if not isinstance(images_gray, Tensor) or images_gray.dim() not in (3, 4):
        got = tuple(images_gray.shape) if isinstance(images_gray, Tensor) else type(images_gray)
        raise LungclsError(f"images_gray must be [N, H, W] or [N, 1, H, W], got {got}")
    x = images_gray.detach().float().cpu()
    if x.dim() == 4:
        if x.shape[1] != 1:
            raise LungclsError(
                f"images_gray must have one channel, got {x.shape[1]}; convert to grayscale first"
            )
        x = x[:, 0]
    return x


def _logistic_probs(contrib: Tensor, probs: Tensor | None, bias: Tensor | None) -> Tensor:
    """The model's probabilities as float [N, C] on the CPU; without them, the baseline's own from
    the pixel contributions ``contrib`` [N, C, h, w] and ``bias``."""
    n, n_classes = contrib.shape[:2]
    if probs is None:
        if bias is None:
            raise LungclsError(
                "logistic_cam needs the model's probabilities or its bias to know the prediction; "
                "pass probs=... (from the model) or bias=... (the linear layer's bias)"
            )
        logits = contrib.flatten(2).sum(dim=2) + bias.detach().float().cpu().reshape(1, -1)
        probs = torch.softmax(logits, dim=1)
    probs = probs.detach().float().cpu()
    if probs.shape != (n, n_classes):
        raise LungclsError(
            f"probs has shape {tuple(probs.shape)}, expected ({n}, {n_classes}) "
            "(one row per image, one column per class)"
        )
    return probs


def logistic_cam(
    weight_maps: Tensor,
    images_gray: Tensor,
    target: int | Sequence[int] | Tensor | None = None,
    probs: Tensor | None = None,
    bias: Tensor | None = None,
    size: tuple[int, int] | None = None,
) -> CamResult:
    """Evidence maps for the logistic baseline, which has no conv layer for Grad-CAM.

    Its logit for class c is sum_p w_c[p] * x[p] + b_c over the downsampled grayscale pixels x,
    so the map is the per-pixel contribution to the explained class's logit, positive part only:
    relu(w_c * x). For non-negative pixel values this is exactly "positive weights times
    intensities"; for normalised (signed) inputs it also keeps dark pixels under negative weights,
    which raise the logit too. The map is then upsampled bilinearly and scaled like `grad_cam`.

    weight_maps: [C, h, w] linear weights. images_gray: [N, H, W] or [N, 1, H, W] model-space
    grayscale values (average-pooled to h x w here, as the baseline does, when larger).
    probs: the model's [N, C] probabilities; without them they are computed from the weights
    and `bias` (one of the two is needed to know the prediction). size: output (H, W), default
    the size of `images_gray`.
    """
    x = _gray_images(weight_maps, images_gray)
    w = weight_maps.detach().float().cpu()
    n_classes, h, wd = w.shape
    n, height, width = x.shape
    out_size = tuple(size) if size is not None else (height, width)
    if (height, width) != (h, wd):
        if height < h or width < wd:
            raise LungclsError(
                f"images_gray are {height}x{width}, smaller than the {h}x{wd} weight maps; "
                "pass the images at (or above) the baseline's input size"
            )
        x = F.adaptive_avg_pool2d(x[:, None], (h, wd))[:, 0]

    contrib = x[:, None] * w[None]  # [N, C, h, w]
    probs = _logistic_probs(contrib, probs, bias)
    preds = probs.argmax(dim=1)
    targets = _targets_tensor(target, n)
    targets = preds.clone() if targets is None else targets
    _check_targets(targets, n_classes)
    evidence = torch.relu(contrib[torch.arange(n), targets])  # [N, h, w]
    up = F.interpolate(evidence[:, None], size=out_size, mode="bilinear", align_corners=False)
    return CamResult(cams=normalize_cams(up[:, 0]), probs=probs, preds=preds, targets=targets)
