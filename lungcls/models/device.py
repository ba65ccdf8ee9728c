"""Where models run and in which precision: one rule for training, scoring, reports and the bench.

On a CUDA GPU that supports it everything runs in bf16 autocast (training through Lightning's
``bf16-mixed``); elsewhere in fp32.
"""

from __future__ import annotations

import contextlib

import torch

from lungcls.errors import LungclsError

DEVICES = ("auto", "cpu", "cuda")


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: the GPU when there is one; ``cuda`` without a GPU is a user error."""
    name = str(name)
    if name not in DEVICES:
        raise LungclsError(f"device={name} is not one of {', '.join(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise LungclsError("device=cuda but no CUDA GPU is visible; use device=auto or device=cpu")
    return torch.device(name)


def bf16_available(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def autocast_for(device: torch.device | str, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on a GPU that supports it, nothing elsewhere (or when not ``enabled``)."""
    if enabled and bf16_available(device):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resolve_precision(precision: str, accelerator: str) -> str:
    """Lightning's ``precision`` for ``trainer.precision=auto``: bf16-mixed on GPUs that support
    it, full precision elsewhere; any other value is kept."""
    if precision != "auto":
        return precision
    on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if on_gpu and bf16_available("cuda") else "32-true"
