"""Shared plumbing of the Hydra entry points: where the configs are, the config nodes that come from
registries, and how user errors look.

A ``LungclsError`` (or a missing mandatory config value) ends a single run with one line on stderr
and exit status 2. Inside a multirun the failing job writes ``error.txt`` to its run folder and
the sweep goes on, so ``lungcls-compare`` can list it as failed.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from lungcls.errors import LungclsError

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")

log = logging.getLogger("lungcls")


def register_configs() -> None:
    """Config nodes generated from the registries (``backbone=<name>`` for every registered
    backbone without its own yaml); runs when this module is imported, before Hydra composes."""
    from lungcls.models.backbones import register_backbone_configs

    register_backbone_configs()


def _one_line(e: BaseException) -> str:
    if isinstance(e, MissingMandatoryValue):
        key = getattr(e, "full_key", None) or str(e).splitlines()[0]
        return f"missing value for {key}; pass it on the command line, e.g. {key}=..."
    return " ".join(str(e).split())


def hydra_app(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Wrap a Hydra task so that user errors end it with one line (see the module docstring)."""

    @functools.wraps(task)
    def wrapper(cfg: DictConfig) -> Any:
        try:
            return task(cfg)
        except (LungclsError, MissingMandatoryValue, InterpolationResolutionError) as e:
            message = _one_line(e)
            from hydra.core.hydra_config import HydraConfig
            from hydra.types import RunMode

            hc = HydraConfig.get() if HydraConfig.initialized() else None
            if hc is not None:
                run_dir = Path(hc.runtime.output_dir)
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / "error.txt").write_text(message + "\n")
            if hc is not None and hc.mode == RunMode.MULTIRUN:
                log.error("this run failed: %s", message)
                return float("nan")
            print(f"lungcls: error: {message}", file=sys.stderr)
            sys.exit(2)

    return wrapper


register_configs()
