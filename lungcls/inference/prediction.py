"""The one prediction loop: a model, batches of images, probabilities out.

Scoring the kept model at the end of training, ``lungcls-evaluate``, ``lungcls-report`` and any
other path that runs a trained model on images go through ``predict_batches``, so the device, the
precision (bf16 autocast on GPUs), eval mode and the softmax are the same everywhere and a
probability means the same thing wherever it is reported.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lungcls.data.pixels.images import gray_to_input, load_image, to_unit_float
from lungcls.data.samples.sample import sibling_mask
from lungcls.models.device import autocast_for
from lungcls.errors import LungclsError
from lungcls.metrics.predictions import Predictions
from lungcls.console import tracked


def model_device(model: torch.nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


# Test-time augmentation: mild geometry only (what training augmentation also draws), seeded.
TTA_AUGMENT = {"rotation": 5.0, "translate": 0.03, "scale": (0.95, 1.05), "hflip": 0.5}


def tta_copies(tta: str | int | None) -> int:
    """``none`` -> 1, ``flip`` -> 2 (the image and its mirror), ``n`` -> n (the image and n-1
    randomly augmented copies)."""
    if tta in (None, "none", "null", 0, 1, "1", False):
        return 1
    if tta == "flip":
        return 2
    try:
        n = int(tta)
    except (TypeError, ValueError):
        n = 0
    if isinstance(tta, bool) or n < 1:
        raise LungclsError(f"tta={tta} must be none, flip or a number of copies (e.g. 8)")
    return n


def _augmented_probs(model: torch.nn.Module, x: torch.Tensor, tta: str | int | None, seed: int) -> torch.Tensor:
    """Softmax averaged over the test-time copies of the batch ``x`` ([0, 1] floats on the device)."""
    n = tta_copies(tta)
    views = [x]
    if n >= 2 and tta == "flip":
        views.append(torch.flip(x, dims=[-1]))
    elif n >= 2:
        from lungcls.data.augment.gpu import BatchAugment

        augment = BatchAugment(image_size=x.shape[-1], **TTA_AUGMENT).to(x.device)
        with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
            torch.manual_seed(seed)
            views += [augment(x) for _ in range(n - 1)]
    probs = []
    for view in views:
        with autocast_for(x.device):
            probs.append(model(view).float().softmax(dim=1))
    return torch.stack(probs).mean(dim=0)


@torch.no_grad()
def predict_batches(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, Any]],
                    device: torch.device | None = None, tta: str | int | None = None,
                    seed: int = 0) -> Iterator[tuple[torch.Tensor, Any]]:
    """For each ``(images, extra)``: ``(probabilities on the CPU, extra)``. Images are uint8 or
    [0, 1] float ``[B, 1, S, S]`` at the model's working size; the model is put in eval mode.
    ``tta`` averages the probabilities over test-time copies (see ``tta_copies``)."""
    device = device or model_device(model)
    model.eval()
    for i, (x, extra) in enumerate(batches):
        x = to_unit_float(x.to(device, non_blocking=True))
        yield _augmented_probs(model, x, tta, seed + i).cpu(), extra


def predict_split(model, datamodule, split: str, device: torch.device | None = None,
                  batch_size: int | None = None, tta: str | int | None = None) -> Predictions:
    """Probabilities for every image of ``split`` of a ``LungDataModule`` (no training augmentation;
    ``tta`` for test-time copies)."""
    loader = datamodule.loader(split, shuffle=False, batch_size=batch_size)
    probs, labels, rows = [], [], []
    for p, (y, r) in predict_batches(model, ((x, (y, r)) for x, y, r in loader), device, tta=tta):
        probs.append(p)
        labels.append(y.cpu())
        rows.append(r.cpu())
    names = list(getattr(model, "class_names", datamodule.class_names))
    if not rows:
        return Predictions([], np.zeros(0, dtype=int), np.zeros((0, len(names)), dtype=np.float32), names)
    row_idx = torch.cat(rows).tolist()
    return Predictions(
        paths=[datamodule.samples[i].path for i in row_idx],
        labels=torch.cat(labels).numpy().astype(int),
        probs=torch.cat(probs).numpy(),
        class_names=names,
    )


def file_batches(paths: Sequence[str], image_size: int, batch_size: int, preprocess=None) -> Iterator[tuple[torch.Tensor, slice]]:
    """Decode files at ``image_size`` into uint8 batches ``[B, 1, S, S]`` (with their index range),
    through the model's decode-time ``preprocess`` (``lungcls.data.pixels.preprocess``; lung masks are
    looked up next to each image when it masks outside the lungs)."""
    masked = preprocess is not None and preprocess.mask_outside_lungs
    for start in tracked(range(0, len(paths), batch_size), "predict", len(paths),
                         step=lambda start: min(batch_size, len(paths) - start)):
        chunk = paths[start : start + batch_size]
        yield torch.stack([load_image(p, image_size, preprocess=preprocess, mask=sibling_mask(Path(p), "masks") if masked else None)
                           for p in chunk]), slice(start, start + len(chunk))


def predict_files(model, paths: Sequence[str], labels: Sequence[int] | None = None, batch_size: int = 32,
                  device: torch.device | None = None, tta: str | int | None = None) -> Predictions:
    """Probabilities for image files, decoded at the model's working size."""
    size = model.info.image_size
    names = list(model.class_names)
    pre = model.info.preprocess  # as the model was trained
    out = [p for p, _ in predict_batches(model, file_batches(list(paths), size, batch_size, pre), device, tta=tta)]
    probs = torch.cat(out).numpy() if out else np.zeros((0, len(names)), dtype=np.float32)
    y = np.asarray(labels if labels is not None else [-1] * len(paths), dtype=int)
    return Predictions(list(paths), y, probs, names)


LUNG_MASK_NEEDED = ("this model was trained with dataset.mask_outside_lungs=true and needs each image's lung mask, which "
                    "{what} do not carry; score a folder with masks/ next to images/ with lungcls-evaluate ckpt={ckpt} "
                    "dataset=folder dataset.root=<folder> dataset.split=all, or use a model trained without it")


def refuse_lung_masked(models: Sequence, what: str) -> None:
    """One line before any image is read when a model needs lung masks that ``what`` cannot give."""
    for m in models:
        if m.model.info.preprocess.mask_outside_lungs:
            raise LungclsError(f"{m.name}: " + LUNG_MASK_NEEDED.format(what=what, ckpt=m.checkpoint))


def predict_arrays(model, grays: Sequence[np.ndarray], batch_size: int = 32, device: torch.device | None = None,
                   tta: str | int | None = None) -> np.ndarray:
    """Probabilities [N, C] for already decoded images (``read_gray`` output, any size): resized
    by ``gray_to_input`` exactly as ``predict_files`` does, so a file gives the same numbers
    whichever of the two scores it (the web service and ``lungcls-predict`` decode once for
    several models)."""
    size = model.info.image_size
    pre = model.info.preprocess  # as the model was trained (no masks here)
    if pre.mask_outside_lungs and len(grays):
        raise LungclsError(LUNG_MASK_NEEDED.format(what="images scored one by one", ckpt="..."))
    batches = (
        (torch.stack([gray_to_input(pre.apply(g), size) for g in grays[start : start + batch_size]]), None)
        for start in range(0, len(grays), batch_size)
    )
    out = [p for p, _ in predict_batches(model, batches, device, tta=tta)]
    return torch.cat(out).numpy() if out else np.zeros((0, len(model.class_names)), dtype=np.float32)
