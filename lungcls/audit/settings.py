"""The audit's typed settings (``audit.*`` in conf/audit.yaml): the keys and their types, with the
defaults kept in the yaml only; a wrong type, a misspelt key or a value out of range is one line
naming the key, before any image is read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lungcls.errors import LungclsError
from lungcls.settings import check_range

PROBE_REGIONS = ("auto", "border", "outside_lungs")


@dataclass
class ProbeSettings:
    """``audit.probe.*``: the shortcut probe."""

    region: str
    folds: int
    margin: float
    resamples: int
    max_images: int
    C: float
    seed: int

    def __post_init__(self) -> None:
        if self.region not in PROBE_REGIONS:
            raise LungclsError(f"audit.probe.region={self.region} is not one of {', '.join(PROBE_REGIONS)}")
        check_range(self.folds, "audit.probe.folds", 2)
        check_range(self.resamples, "audit.probe.resamples", 100)
        check_range(self.max_images, "audit.probe.max_images", 20)
        check_range(self.seed, "audit.probe.seed", 0)
        check_range(self.margin, "audit.probe.margin", 0)
        check_range(self.C, "audit.probe.C", 0, low_open=True)


@dataclass
class AuditSettings:
    """``audit.*``."""

    fail_on: Any  # a finding name or a list of them (checked by check_fail_on)
    border_frac: float
    max_rows: int
    probe: ProbeSettings

    def __post_init__(self) -> None:
        check_range(self.border_frac, "audit.border_frac", 0, 0.5, low_open=True, high_open=True)
        check_range(self.max_rows, "audit.max_rows", 1)
