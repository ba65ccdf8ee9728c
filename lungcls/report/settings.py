"""The typed ``report.*`` settings of ``lungcls-report`` (defaults live in conf/report.yaml only).

Built once where the command starts (`report_settings`), so a misspelt key, a wrong type or a value
out of range is one line before any checkpoint is loaded; code below reads attributes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from lungcls.errors import LungclsError
from lungcls.settings import check_range, typed

__all__ = ["ReportSettings", "report_settings"]


@dataclass
class ReportSettings:
    per_class: Optional[int]
    misses: Optional[bool]
    max_misses: int
    paths: Any  # a list of image files, or one file
    split: str
    root: Optional[str]
    exclude_training_images: bool
    target: Any  # predicted | true | a class name (`true` arrives as a YAML bool)
    layer: Any  # auto | a layer path | one per checkpoint
    min_cells: int
    sanity: bool
    sanity_threshold: float
    batch_size: int
    display_size: int
    border_frac: float
    log_to: Optional[str]
    device: str
    methods: Any  # a list of method names, or all
    faithfulness_steps: int
    faithfulness_blur: float
    occlusion_window: int
    occlusion_stride: int
    ig_steps: int
    smoothgrad_samples: int
    smoothgrad_noise: float
    layercam_min_cells: int
    methods_figure_images: int
    hit_tolerance: float
    faithfulness: Optional[bool]  # null: on when two or more methods are compared

    def __post_init__(self) -> None:
        self.target = "true" if self.target is True else str(self.target)
        self.paths = [] if self.paths is None else [self.paths] if isinstance(self.paths, str) else [str(p) for p in self.paths]
        self.methods = self.methods if isinstance(self.methods, str) else [str(m) for m in self.methods]
        check_range(self.display_size, "report.display_size", 16)
        check_range(self.batch_size, "report.batch_size", 1)
        check_range(self.max_misses, "report.max_misses", 0)
        check_range(self.min_cells, "report.min_cells", 1)
        check_range(self.layercam_min_cells, "report.layercam_min_cells", 1)
        check_range(self.sanity_threshold, "report.sanity_threshold", -1.0, 1.0)
        check_range(self.border_frac, "report.border_frac", 0.0, 0.5, high_open=True)
        check_range(self.faithfulness_steps, "report.faithfulness_steps", 2)
        check_range(self.faithfulness_blur, "report.faithfulness_blur", 0.0, 1.0, low_open=True)
        check_range(self.occlusion_window, "report.occlusion_window", 1)
        check_range(self.occlusion_stride, "report.occlusion_stride", 1)
        check_range(self.ig_steps, "report.ig_steps", 2)
        check_range(self.smoothgrad_samples, "report.smoothgrad_samples", 1)
        check_range(self.smoothgrad_noise, "report.smoothgrad_noise", 0.0)
        check_range(self.methods_figure_images, "report.methods_figure_images", 1)
        check_range(self.hit_tolerance, "report.hit_tolerance", 0.0, 0.5)
        if self.per_class is not None:
            check_range(self.per_class, "report.per_class", 0)
        if self.log_to and not Path(self.log_to).expanduser().is_dir():
            raise LungclsError(f"report.log_to={self.log_to} is not a folder; give a training run folder (or leave it unset)")

    def faithful_curves(self) -> bool:
        """Deletion/insertion curves: on when asked, or by default when methods are compared (a
        Grad-CAM-only report stays as fast as before)."""
        if self.faithfulness is not None:
            return self.faithfulness
        return self.methods == "all" or len(self.methods) > 1

    def check_image_size(self, size: int, model_name: str) -> None:
        """Occlusion's window must fit in every model's input image."""
        if self.occlusion_window > size:
            raise LungclsError(
                f"report.occlusion_window={self.occlusion_window} is larger than the {size} px input of {model_name}; "
                f"give report.occlusion_window={max(1, size // 8)} or another value up to {size}"
            )


def report_settings(cfg: DictConfig) -> ReportSettings:
    """``cfg.report`` as `ReportSettings`, checked before any model is loaded."""
    return typed(cfg.report, ReportSettings, "report")
