"""A trained model's hyper-parameters, typed: what every command that uses a checkpoint needs to
know about it (its working size, classes, normal class, backbone, normalisation and the decode-time
steps it was trained with), read in one place instead of as untyped ``model.hparams`` lookups."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lungcls.data.pixels.preprocess import Preprocess, preprocess_from


@dataclass(frozen=True)
class ModelHparams:
    image_size: int
    class_names: tuple[str, ...]
    normal_class: str | None
    backbone: str
    finetune: str | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_counts: tuple[int, ...] = ()
    data: Mapping[str, Any] = field(default_factory=dict)  # the training data config, as stored
    recipe: Mapping[str, Any] = field(default_factory=dict)  # the whole fine-tune setting (name, fraction, ...)

    @classmethod
    def from_hparams(cls, hp: Mapping[str, Any]) -> ModelHparams:
        finetune = hp.get("finetune") or {}
        return cls(
            image_size=int(hp.get("image_size", 224)),
            class_names=tuple(str(c) for c in hp["class_names"]),
            normal_class=hp.get("normal_class", "Normal"),
            backbone=str((hp.get("backbone") or {}).get("name")),
            finetune=finetune.get("name"),
            mean=tuple(float(v) for v in hp.get("mean", (0.5, 0.5, 0.5))),
            std=tuple(float(v) for v in hp.get("std", (0.5, 0.5, 0.5))),
            class_counts=tuple(int(c) for c in (hp.get("class_counts") or ())),
            data=dict(hp.get("data") or {}),
            recipe={k: v for k, v in dict(finetune).items() if not str(k).startswith("_")},
        )

    @property
    def preprocess(self) -> Preprocess:
        """The decode-time steps (crop, equalisation, lung masking) every image must get first."""
        return preprocess_from(dict(self.data))
