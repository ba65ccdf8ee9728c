"""The one prediction loop: a model, batches of images, probabilities out.

Scoring the kept model at the end of training, ``lungcls-evaluate``, ``lungcls-report`` and any
other path that runs a trained model on images go through ``predict_batches``, so the device, the
precision (bf16 autocast on GPUs), eval mode and the softmax are the same everywhere and a
probability means the same thing wherever it is reported.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lungcls.data.images import gray_to_input, load_image, to_unit_float
from lungcls.device import autocast_for


@dataclass
class Predictions:
    """Softmax outputs of a set of images, in their order."""

    paths: list[str]
    labels: np.ndarray  # [N] int, in the label space of the data they came from
    probs: np.ndarray  # [N, C] float, in the model's label space
    class_names: list[str] = field(default_factory=list)  # the model's classes (columns of probs)

    @property
    def preds(self) -> np.ndarray:
        return self.probs.argmax(axis=1) if len(self.probs) else np.zeros(0, dtype=int)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, keep: Sequence[int]) -> "Predictions":
        keep = list(keep)
        return Predictions([self.paths[i] for i in keep], self.labels[keep], self.probs[keep], self.class_names)


def model_device(model: torch.nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def predict_batches(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, Any]],
                    device: torch.device | None = None) -> Iterator[tuple[torch.Tensor, Any]]:
    """For each ``(images, extra)``: ``(probabilities on the CPU, extra)``. Images are uint8 or
    [0, 1] float ``[B, 1, S, S]`` at the model's working size; the model is put in eval mode."""
    device = device or model_device(model)
    model.eval()
    for x, extra in batches:
        x = to_unit_float(x.to(device, non_blocking=True))
        with autocast_for(device):
            logits = model(x)
        yield logits.float().softmax(dim=1).cpu(), extra


def predict_split(model, datamodule, split: str, device: torch.device | None = None,
                  batch_size: int | None = None) -> Predictions:
    """Probabilities for every image of ``split`` of a ``LungDataModule`` (no augmentation)."""
    loader = datamodule.loader(split, shuffle=False, batch_size=batch_size)
    probs, labels, rows = [], [], []
    for p, (y, r) in predict_batches(model, ((x, (y, r)) for x, y, r in loader), device):
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


def file_batches(paths: Sequence[str], image_size: int, batch_size: int) -> Iterator[tuple[torch.Tensor, slice]]:
    """Decode files at ``image_size`` into uint8 batches ``[B, 1, S, S]`` (with their index range)."""
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        yield torch.stack([load_image(p, image_size) for p in chunk]), slice(start, start + len(chunk))


def predict_files(model, paths: Sequence[str], labels: Sequence[int] | None = None, batch_size: int = 32,
                  device: torch.device | None = None) -> Predictions:
    """Probabilities for image files, decoded at the model's working size."""
    size = int(model.hparams.image_size)
    names = list(model.class_names)
    out = [p for p, _ in predict_batches(model, file_batches(list(paths), size, batch_size), device)]
    probs = torch.cat(out).numpy() if out else np.zeros((0, len(names)), dtype=np.float32)
    y = np.asarray(labels if labels is not None else [-1] * len(paths), dtype=int)
    return Predictions(list(paths), y, probs, names)


def predict_arrays(model, grays: Sequence[np.ndarray], batch_size: int = 32, device: torch.device | None = None) -> np.ndarray:
    """Probabilities [N, C] for already decoded images (``read_gray`` output, any size): resized
    by ``gray_to_input`` exactly as ``predict_files`` does, so a file gives the same numbers
    whichever of the two scores it (the web service and ``lungcls-predict`` decode once for
    several models)."""
    size = int(model.hparams.image_size)
    batches = (
        (torch.stack([gray_to_input(g, size) for g in grays[start : start + batch_size]]), None)
        for start in range(0, len(grays), batch_size)
    )
    out = [p for p, _ in predict_batches(model, batches, device)]
    return torch.cat(out).numpy() if out else np.zeros((0, len(model.class_names)), dtype=np.float32)
