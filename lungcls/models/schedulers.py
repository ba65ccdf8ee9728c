"""Learning-rate schedules, built from ``conf/scheduler/*.yaml`` (Hydra ``_target_`` with
``_partial_``).

Each factory takes the optimizer and the run's length (optimizer steps and epochs, known only once
the Trainer is attached) and returns Lightning's ``lr_scheduler`` dict, or None for a constant rate.
"""

from __future__ import annotations

from typing import Any

from torch.optim import Optimizer
from torch.optim import lr_scheduler as sched


def constant(optimizer: Optimizer, total_steps: int, epochs: int) -> None:
    return None


def step(optimizer: Optimizer, total_steps: int, epochs: int, step_size: int = 5, gamma: float = 0.1) -> dict[str, Any]:
    """Multiply the rate by ``gamma`` every ``step_size`` epochs."""
    return {"scheduler": sched.StepLR(optimizer, step_size=int(step_size), gamma=float(gamma)), "interval": "epoch"}


def _eta_min(optimizer: Optimizer, min_lr_ratio: float) -> float:
    return optimizer.param_groups[0]["lr"] * float(min_lr_ratio)


def cosine(optimizer: Optimizer, total_steps: int, epochs: int, min_lr_ratio: float = 0.01) -> dict[str, Any]:
    """Cosine decay over the whole run to ``min_lr_ratio`` of the start, stepped per optimizer step."""
    s = sched.CosineAnnealingLR(optimizer, T_max=max(1, total_steps), eta_min=_eta_min(optimizer, min_lr_ratio))
    return {"scheduler": s, "interval": "step"}


def warmup_cosine(optimizer: Optimizer, total_steps: int, epochs: int, warmup_epochs: float = 1,
                  min_lr_ratio: float = 0.01) -> dict[str, Any]:
    """A linear warm-up over ``warmup_epochs``, then cosine decay, stepped per optimizer step."""
    total = max(1, total_steps)
    warm = min(total - 1, max(1, round(total * float(warmup_epochs) / max(1, epochs))))
    if warm < 1:
        return cosine(optimizer, total, epochs, min_lr_ratio)
    s = sched.SequentialLR(
        optimizer,
        [
            sched.LinearLR(optimizer, start_factor=0.01, total_iters=warm),
            sched.CosineAnnealingLR(optimizer, T_max=max(1, total - warm), eta_min=_eta_min(optimizer, min_lr_ratio)),
        ],
        milestones=[warm],
    )
    return {"scheduler": s, "interval": "step"}
