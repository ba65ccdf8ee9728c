"""Shared plumbing of the Hydra entry points: where the configs are, the config nodes and resolvers
that come from lungcls, and how a run ends.

Every Hydra app runs through ``hydra_app``: it records the run's state in its folder
(``status.json``: running, then complete / failed / killed), and a ``LungclsError`` (or a missing
mandatory config value) ends a single run with one line on stderr and exit status 2. Inside a
multirun the failing job writes ``error.txt`` to its run folder and the sweep goes on, so
``lungcls-compare`` can list it as failed.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from lungcls.errors import LungclsError
from lungcls.runs import claim_dir, safe_name, write_state

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")

log = logging.getLogger("lungcls")


def register_configs() -> None:
    """Config nodes generated from the registries (``backbone=<name>`` for every registered
    backbone without its own yaml) and the resolvers the configs use (``claim_dir``: a fresh run
    folder; ``safe_name``: a run name that is one folder); runs when this module is imported,
    before Hydra composes."""
    from lungcls.models.backbones import register_backbone_configs

    register_backbone_configs()
    OmegaConf.register_new_resolver("claim_dir", claim_dir, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("safe_name", safe_name, replace=True)


def _one_line(e: BaseException) -> str:
    if isinstance(e, MissingMandatoryValue):
        key = getattr(e, "full_key", None) or str(e).splitlines()[0]
        return f"missing value for {key}; pass it on the command line, e.g. {key}=..."
    text = str(e)
    if "Original Traceback" in text:  # raised in a DataLoader worker: torch prepends the traceback
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split("LungclsError: ", 1)[-1]
    return " ".join(text.split())


def _run_dir() -> Path | None:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None


def _is_rank_zero() -> bool:
    """Only the first process of a distributed run writes its folder's state."""
    return all(int(os.environ.get(k, "0") or 0) == 0 for k in ("LOCAL_RANK", "NODE_RANK", "RANK"))


def _terminated(signum, frame):
    raise SystemExit(128 + signum)


def _user_error(e: BaseException, run_dir: Path | None) -> Any:
    """One line on stderr and exit 2; inside a multirun, NaN for the sweeper and the sweep goes on."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    message = _one_line(e)
    if run_dir is not None:
        (run_dir / "error.txt").write_text(message + "\n")
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        log.error("this run failed: %s", message)
        return float("nan")
    print(f"lungcls: error: {message}", file=sys.stderr)
    sys.exit(2)


def hydra_app(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Wrap a Hydra task: record the run's state and turn user errors into one line."""

    @functools.wraps(task)
    def wrapper(cfg: DictConfig) -> Any:
        run_dir = _run_dir()
        record = run_dir is not None and _is_rank_zero()
        if record:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_state(run_dir, "running")
            signal.signal(signal.SIGTERM, _terminated)  # a cluster's cancel or time limit
        try:
            result = task(cfg)
        except (LungclsError, MissingMandatoryValue, InterpolationResolutionError) as e:
            if record:
                write_state(run_dir, "failed", _one_line(e))
            return _user_error(e, run_dir if record else None)
        except (KeyboardInterrupt, SystemExit) as e:
            if record:
                write_state(run_dir, "killed", f"stopped ({type(e).__name__} {getattr(e, 'code', '') or ''})".strip())
            raise
        except BaseException as e:
            if record:
                write_state(run_dir, "failed", f"{type(e).__name__}: {_one_line(e)[:300]}")
            raise
        if record:
            write_state(run_dir, "complete")
        return result

    return wrapper


register_configs()
