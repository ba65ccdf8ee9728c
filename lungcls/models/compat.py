"""Checkpoints of earlier releases, read as today's: what their stored hyper-parameters lack or name
differently is filled in here, once, when a checkpoint is read, so no other module carries
"an older checkpoint may..." branches.

What changed, release by release (each rule fills only what is absent, never a stored value):
- the first release named schedulers (``scheduler: {name: cosine}``) instead of targeting them,
  and stored losses without a ``_target_``;
- decode-time mitigations (``dataset.crop_border``, ``equalize``, ``mask_outside_lungs``, the CLAHE
  keys) came later: a checkpoint without them decoded without them;
- demo sites (``dataset.demo.sources``, ``source_bias``) came later: one site, no bias.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lungcls.data.pixels.preprocess import BEFORE_MITIGATIONS

SCHEDULER_NAMES = {"none": "constant", "step": "step", "cosine": "cosine", "warmup_cosine": "warmup_cosine"}
DEFAULT_LOSS_TARGET = "lungcls.models.losses.CrossEntropy"
DEMO_BEFORE_SITES = {"sources": 1, "source_bias": 0}


def _scheduler(cfg: Any) -> Any:
    if not isinstance(cfg, Mapping) or "_target_" in cfg:
        return cfg
    cfg = dict(cfg)
    name = cfg.pop("name", "none")
    return {**cfg, "_target_": f"lungcls.models.schedulers.{SCHEDULER_NAMES.get(name, name)}"}


def upgrade_data(data: Any) -> Any:
    """A stored data config in today's form (absent mitigation and demo-site keys: off)."""
    if not isinstance(data, Mapping):
        return data
    data = {**BEFORE_MITIGATIONS, **data}
    if isinstance(data.get("demo"), Mapping):
        data["demo"] = {**DEMO_BEFORE_SITES, **data["demo"]}
    return data


def upgrade_hparams(hparams: Mapping[str, Any] | None) -> dict[str, Any]:
    """A checkpoint's ``hyper_parameters`` in today's form (a new dict; the input is not changed)."""
    hp = dict(hparams or {})
    hp["scheduler"] = _scheduler(hp.get("scheduler"))
    if isinstance(hp.get("loss"), Mapping) and "_target_" not in hp["loss"]:
        hp["loss"] = {"_target_": DEFAULT_LOSS_TARGET, **hp["loss"]}
    if "data" in hp:
        hp["data"] = upgrade_data(hp["data"])
    return hp
