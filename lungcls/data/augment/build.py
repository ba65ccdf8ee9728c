"""The ``augment`` config group as a batch module: Hydra builds its ``_target_`` (``BatchAugment`` by
default) for the working image size, and one that would change nothing is left out."""

from __future__ import annotations

from typing import Any, Mapping

from lungcls.errors import LungclsError


def build_augment(cfg: Mapping[str, Any] | None, image_size: int):
    """The ``augment`` config's module (Hydra ``_target_``), or None when it changes nothing."""
    if not cfg:
        return None
    import hydra

    cfg = dict(cfg)
    cfg.setdefault("_target_", "lungcls.data.augment.gpu.BatchAugment")
    cfg["_partial_"] = True
    try:
        augment = hydra.utils.instantiate(cfg)(image_size=image_size)
    except LungclsError:
        raise
    except Exception as e:
        raise LungclsError(f"cannot build augment {cfg['_target_']} ({' '.join(str(e).split())[:200]}); check augment.* values") from None
    return augment if getattr(augment, "active", True) else None
