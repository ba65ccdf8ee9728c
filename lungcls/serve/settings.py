"""``serve.*`` as typed settings (defaults and meanings in conf/serve.yaml), checked before any model
is loaded: a wrong type, a misspelt key or a limit out of range is one line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from lungcls.errors import LungclsError
from lungcls.inference.scoring import check_margin
from lungcls.settings import check_range


@dataclass
class ServeSettings:
    host: str
    port: int
    device: str
    max_upload_mb: float
    max_files: int
    max_pixels: int
    max_request_pixels: int
    max_pixels_in_flight: int
    min_side: int
    batch_size: int
    max_wait_ms: float
    cam: bool
    overlay_size: int
    normal_margin: float
    screening: Optional[Any]
    miss_rate: Optional[Any]

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise LungclsError(f"serve.port={self.port} must be in 0..65535 (0 = any free port)")
        for key, low in (("max_upload_mb", 0.001), ("max_files", 1), ("max_pixels", 1), ("max_request_pixels", 1),
                         ("min_side", 1), ("batch_size", 1), ("overlay_size", 16), ("max_wait_ms", 0)):
            check_range(getattr(self, key), f"serve.{key}", low)
        if self.max_pixels_in_flight < self.max_request_pixels:
            raise LungclsError(f"serve.max_pixels_in_flight={self.max_pixels_in_flight:,} is less than serve.max_request_pixels="
                               f"{self.max_request_pixels:,}: one full request could never run; raise it or lower the other")
        self.normal_margin = check_margin(self.normal_margin, "serve.normal_margin")
