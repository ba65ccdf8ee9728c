"""``card.*`` as typed settings: the keys every command with a card shares (conf/model_card/default.yaml)
and the two that name the run for ``lungcls-card`` (conf/card.yaml)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import OmegaConf

from lungcls.settings import check_range, typed


@dataclass
class CardSettings:
    """What a card says beyond the evidence, and which more evidence it reads."""

    auto: bool
    evidence: Any  # a folder or a list of folders
    intended_use: str
    out_of_scope: str
    calibration_limit: float
    min_class_images: int

    def __post_init__(self) -> None:
        check_range(self.calibration_limit, "card.calibration_limit", 0, 1)
        check_range(self.min_class_images, "card.min_class_images", 0)
        if isinstance(self.evidence, str):
            self.evidence = [self.evidence]
        self.evidence = [str(e) for e in (self.evidence or [])]


@dataclass
class CardTarget:
    """``card.run`` / ``card.ckpt``: the run ``lungcls-card`` describes."""

    run: Optional[str]
    ckpt: Optional[str]


def card_settings(node: Any) -> CardSettings:
    plain = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node or {})
    target = {f.name for f in dataclasses.fields(CardTarget)}
    return typed({k: v for k, v in plain.items() if k not in target}, CardSettings, "card")


def card_target(node: Any) -> CardTarget:
    plain = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node or {})
    target = [f.name for f in dataclasses.fields(CardTarget)]
    return typed({k: plain.get(k) for k in target}, CardTarget, "card")
