"""``stats.*``: how every summary number's uncertainty and calibration are measured, as typed
settings whose defaults live in ``conf/stats/default.yaml``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from lungcls.settings import check_range, typed, yaml_defaults


@dataclasses.dataclass
class StatsSettings:
    resamples: int          # bootstrap resamples for the [lo, hi] intervals; 0: none
    level: float            # interval coverage
    seed: int               # the resampler's seed
    calibration_bins: int   # bins of the expected calibration error and the reliability diagram

    def __post_init__(self) -> None:
        check_range(self.resamples, "stats.resamples", 0)
        check_range(self.seed, "stats.seed", 0)
        check_range(self.calibration_bins, "stats.calibration_bins", 1)
        check_range(self.level, "stats.level", 0, 1, low_open=True, high_open=True)


def stats_settings(stats: Mapping[str, Any] | StatsSettings | None = None) -> StatsSettings:
    """Typed ``stats.*``; keys not given take ``conf/stats/default.yaml``'s values."""
    if isinstance(stats, StatsSettings):
        return stats
    return typed({**yaml_defaults("stats/default.yaml"), **dict(stats or {})}, StatsSettings, "stats")
