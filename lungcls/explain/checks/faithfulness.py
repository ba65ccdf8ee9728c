"""Faithfulness of a map: does removing what it highlights change the prediction? (Petsiuk et al.
2018, "RISE": deletion and insertion curves; Rong et al. 2022, "ROAD", on why the removed pixels are
replaced by a blurred image rather than a constant.)

Pixels are ranked by the map (most attributed first; ties in a fixed random order). Deletion
replaces the top k/steps of them by the same pixels of a Gaussian-blurred copy of the image
(sigma ``report.faithfulness_blur`` of the image side), for k = 0..steps, and records the
probability of the explained class; insertion starts from the blurred image and puts the original
pixels back in the same order. The area under each curve (trapezoid over the removed share 0..1) is
``deletion_auc`` (lower = more faithful) and ``insertion_auc`` (higher = more faithful). The same
curves in a random pixel order (one per image, the same for every method) are the yardstick: a map
that deletes no faster than random says nothing about what the model uses.

All 2 x (steps + 1) perturbed copies of an image go through the model in batches; there is no
Python loop over steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import kornia
import numpy as np
import torch
from scipy.integrate import trapezoid
from torch import Tensor, nn

__all__ = ["Curves", "blurred", "faithfulness_curves", "random_maps"]


@dataclass(frozen=True)
class Curves:
    """Per image the target probability after each step: deletion and insertion [N, steps + 1]."""

    deletion: np.ndarray
    insertion: np.ndarray

    @property
    def deletion_auc(self) -> np.ndarray:
        return _auc(self.deletion)

    @property
    def insertion_auc(self) -> np.ndarray:
        return _auc(self.insertion)


def _auc(curves: np.ndarray) -> np.ndarray:
    steps = curves.shape[1] - 1
    return trapezoid(curves, dx=1.0 / steps, axis=1) if steps > 0 else curves[:, 0]


def blurred(x: Tensor, sigma_frac: float) -> Tensor:
    """A Gaussian-blurred copy of images [N, C, S, S] (sigma = sigma_frac x side, reflect padding)."""
    sigma = max(0.5, float(sigma_frac) * x.shape[-1])
    k = min(2 * int(round(3 * sigma)) + 1, 2 * (x.shape[-1] // 2) - 1)
    return kornia.filters.gaussian_blur2d(x.float(), (k, k), (sigma, sigma), border_type="reflect")


def random_maps(n: int, size: int, seed: int = 0) -> Tensor:
    """[n, size, size] uniform random maps: the random-order yardstick (seeded, the same every run)."""
    return torch.rand(n, size, size, generator=torch.Generator().manual_seed(seed))


def _ranks(maps: Tensor, seed: int) -> Tensor:
    """[N, P] rank of each pixel, 0 = most attributed; ties broken in a seeded random order."""
    flat = maps.flatten(1).float()
    n, p = flat.shape
    perm = torch.stack([torch.randperm(p, generator=torch.Generator().manual_seed(seed + i)) for i in range(n)])
    order = perm.gather(1, torch.argsort(flat.gather(1, perm), dim=1, descending=True, stable=True))
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(p).expand(n, p).contiguous())
    return ranks


@torch.no_grad()
def _probabilities(net: nn.Module, x: Tensor, targets: Tensor, batch_size: int) -> Tensor:
    out = []
    for start in range(0, len(x), batch_size):
        logits = net(x[start:start + batch_size]).float()
        out.append(torch.softmax(logits, dim=1).gather(1, targets[start:start + batch_size, None])[:, 0])
    return torch.cat(out) if out else torch.zeros(0)


def faithfulness_curves(net: nn.Module, x: Tensor, maps: Tensor, targets: Tensor, steps: int, sigma_frac: float,
                        batch_size: int = 16, seed: int = 0) -> Curves:
    """Deletion and insertion curves of ``maps`` [N, S, S] (at the images' size) for images ``x``
    [N, 1, S, S] in [0, 1] on the model's device and explained classes ``targets`` [N]."""
    n, c, size, _ = x.shape
    device = x.device
    ranks = _ranks(maps.cpu(), seed).to(device)  # [N, P]
    counts = torch.round(torch.arange(steps + 1, device=device) * (size * size) / steps)  # pixels removed per step
    base = blurred(x, sigma_frac)
    deletion, insertion = [], []
    per_chunk = max(1, (batch_size * 4) // (2 * (steps + 1)))
    for start in range(0, n, per_chunk):
        sl = slice(start, min(start + per_chunk, n))
        removed = (ranks[sl, None, :] < counts[None, :, None]).view(-1, steps + 1, 1, size, size)  # [b, T+1, 1, S, S]
        xs, bs = x[sl, None], base[sl, None]
        deleted = torch.where(removed, bs, xs)
        inserted = torch.where(removed, xs, bs)
        batch = torch.cat([deleted, inserted], dim=1).reshape(-1, c, size, size)
        t = targets[sl].to(device).repeat_interleave(2 * (steps + 1))
        probs = _probabilities(net, batch, t, batch_size * 4).view(-1, 2, steps + 1).cpu().numpy()
        deletion.append(probs[:, 0])
        insertion.append(probs[:, 1])
    empty = np.zeros((0, steps + 1))
    return Curves(np.concatenate(deletion) if deletion else empty, np.concatenate(insertion) if insertion else empty)
