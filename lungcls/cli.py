"""Shared plumbing of the Hydra entry points: where the configs are, the config nodes and resolvers
that come from lungcls, and how a run ends.

Every Hydra app runs through ``hydra_app``: it records the run's state in its folder
(``status.json``: running, then complete / failed / killed), and a ``LungclsError`` (or a missing
mandatory config value) ends a single run with one line on stderr and exit status 2. Inside a
multirun the failing job writes ``error.txt`` to its run folder and the sweep goes on, so
``lungcls-compare`` can list it as failed; the multirun then exits with status 1.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from lungcls.errors import LungclsError, require_extra
from lungcls.runs.files import write_text_atomic
from lungcls.runs.folders import claim_dir, refuse_taken_dir, safe_name
from lungcls.runs.state import write_state
from lungcls import settings
from lungcls.settings import closest_key

CONF_DIR = str(settings.CONF_DIR)  # the one place: lungcls.settings.bundled_dir

log = logging.getLogger("lungcls")


def register_configs() -> None:
    """Config nodes generated from the registries (``backbone=<name>`` for every registered
    backbone without its own yaml) and the resolvers the configs use (``claim_dir``: a fresh run
    folder; ``safe_name``: a run name that is one folder); runs when this module is imported,
    before Hydra composes."""
    from hydra.core.config_store import ConfigStore

    from lungcls.models.backbones import BACKBONES

    store = ConfigStore.instance()
    for name in BACKBONES:  # a backbone with its own conf/backbone/<name>.yaml keeps it
        if not (Path(CONF_DIR) / "backbone" / f"{name}.yaml").is_file():
            store.store(group="backbone", name=name, node=dict(BACKBONES.get(name).config))
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


class Terminated(SystemExit):
    """The process was asked to stop (SIGTERM: a scheduler's cancel or time limit)."""


def _terminated(signum, frame):
    raise Terminated(128 + signum)


def _user_error(e: BaseException, run_dir: Path | None) -> Any:
    """One line on stderr and exit 2; inside a multirun, NaN for the sweeper and the sweep goes on."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    message = _one_line(e)
    if run_dir is not None:
        write_text_atomic(run_dir / "error.txt", message + "\n")
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        log.error("this run failed: %s", message)
        FAILED_JOBS.append(f"{run_dir or 'a job'}: {message}")
        return float("nan")
    print(f"lungcls: error: {message}", file=sys.stderr)
    sys.exit(2)


# The jobs of this process's multirun that failed with a user error (the sweep goes on without them).
FAILED_JOBS: list[str] = []


def _exit_if_jobs_failed() -> None:
    """After a multirun: exit status 1 when a job failed, so a script or CI running the sweep sees it."""
    if FAILED_JOBS:
        print(f"lungcls: error: {len(FAILED_JOBS)} job(s) of the multirun failed (first: {FAILED_JOBS[0]}); "
              "each failed run folder holds error.txt, and lungcls-compare lists them as failed", file=sys.stderr)
        sys.exit(1)


_HYDRA_FLAGS_WITHOUT_A_RUN = ("-", )  # --help, --cfg, -m ...: Hydra handles them (multiruns compose per job)


def _composition_error(e: BaseException) -> str:
    """Hydra's multi-line composition error as one line (its list of options kept)."""
    text = str(e).split("Config search path")[0]
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(("full_key", "object_type", "reference_type"))]
    if len(lines) > 1 and lines[1].startswith("Available options"):
        return f"{lines[0]}; {lines[1].rstrip(':').lower()}: {', '.join(lines[2:])}"
    return " ".join(lines)


# overrides that need an optional part of lungcls: (modules it imports, the extra that installs them)
NEEDS_EXTRA = {
    "hparams_search=optuna": (("hydra_plugins.hydra_optuna_sweeper", "optuna"), "sweeps"),
    "hydra/sweeper=optuna": (("hydra_plugins.hydra_optuna_sweeper", "optuna"), "sweeps"),
    "hydra/launcher=slurm": (("hydra_plugins.hydra_submitit_launcher", "submitit"), "sweeps"),
    "hydra/launcher=submitit_local": (("hydra_plugins.hydra_submitit_launcher", "submitit"), "sweeps"),
}


def check_extras(args: list[str]) -> None:
    """One line naming ``pip install "lungcls[...]"`` when an override needs a part the install lacks."""
    for arg in args:
        if arg.lstrip("+~") in NEEDS_EXTRA:
            modules, extra = NEEDS_EXTRA[arg.lstrip("+~")]
            require_extra(modules, extra)


def check_run_folders(args: list[str], config_name: str = "train") -> None:
    """A ``hydra.run.dir`` / ``hydra.sweep.dir`` given on the command line that already holds a run
    is refused (one line, exit 2) before Hydra writes its ``.hydra/`` there, unless training resumes
    that folder's own interrupted run (``ckpt_path=<folder>/checkpoints/last.ckpt``); a
    ``${claim_dir:...}`` value claims a fresh folder itself. Other ranks of a distributed run reuse
    rank 0's folder."""
    if not _is_rank_zero():
        return
    used = "hydra.sweep.dir" if {"-m", "--multirun"} & set(args) else "hydra.run.dir"
    given = dict(arg.lstrip("+~").partition("=")[::2] for arg in args)
    resume = given.get("ckpt_path", "").strip("'\"") if config_name == "train" and used == "hydra.run.dir" else ""
    value = given.get(used, "")
    if value and "${" not in value:
        try:
            refuse_taken_dir(value.strip("'\""), used, resume=resume or None)
        except LungclsError as e:
            print(f"lungcls: error: {e}", file=sys.stderr)
            sys.exit(2)


def check_overrides(config_name: str, args: list[str]) -> None:
    """Compose ``config_name`` with the command line's overrides before Hydra runs, so an unknown
    option, key or value is one line (``lungcls: error: ...``, exit status 2) naming it."""
    try:
        check_extras(args)
    except LungclsError as e:
        print(f"lungcls: error: {e}", file=sys.stderr)
        sys.exit(2)
    check_run_folders(args, config_name)
    if any(a.startswith(_HYDRA_FLAGS_WITHOUT_A_RUN) for a in args):
        return
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR, job_name=config_name):
            compose(config_name=config_name, overrides=list(args))
            message = unread_added_key(config_name, list(args))
    except (HydraException, ValueError, KeyError) as e:  # noqa: BLE001 - composition's own errors
        message = misspelt_key(config_name, list(args), e) or f"{_composition_error(e)}; check the override (key=value, group=option)"
    if message:
        print(f"lungcls: error: {message}", file=sys.stderr)
        sys.exit(2)


# config sections whose keys go to a library object (Hydra's _target_) as its arguments: a `+key`
# there is the object's own argument, which lungcls cannot check
LIBRARY_SECTIONS = ("optimizer", "scheduler", "loss", "augment", "trainer", "callbacks", "logger", "hydra")


def _known_keys(config_name: str, args: list[str], parent: str) -> list[str]:
    """The keys under ``parent`` in the config composed from ``args``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    if GlobalHydra.instance().is_initialized():
        cfg = compose(config_name=config_name, overrides=args)
    else:
        with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR, job_name=config_name):
            cfg = compose(config_name=config_name, overrides=args)
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return [f"{parent}.{k}" if parent else str(k) for k in node] if isinstance(node, DictConfig) else []


def misspelt_key(config_name: str, args: list[str], error: BaseException) -> str | None:
    """For ``key=value`` with a key the config lacks: the closest existing key instead of Hydra's
    advice to add it with ``+`` (which would be read by nothing)."""
    import re

    found = re.search(r"Could not override '([^']+)'", str(error))
    if not found:
        return None
    key = found.group(1)
    others = [a for a in args if a.split("=", 1)[0].lstrip("+~") != key]
    parts = key.split(".")
    try:  # the first part of the key that does not exist, and the keys beside it
        for depth in range(len(parts)):
            known = _known_keys(config_name, others, ".".join(parts[:depth]))
            if ".".join(parts[: depth + 1]) not in known:
                break
    except Exception:  # noqa: BLE001 - the other overrides fail too: Hydra's message is the better one
        return None
    wrong = ".".join(parts[: depth + 1])
    return f"{wrong} is not a setting{closest_key(wrong, known)}"


def unread_added_key(config_name: str, args: list[str]) -> str | None:
    """``+key=value`` adds a key; outside the library sections nothing in lungcls would read it."""
    for arg in args:
        if not arg.startswith("+") or arg.startswith("++"):
            continue
        key = arg[1:].split("=", 1)[0]
        if key.split(".")[0].split("/")[0] in LIBRARY_SECTIONS or "/" in key:
            continue  # a library object's argument, or a config group added on purpose
        others = [a for a in args if a != arg]
        known = _known_keys(config_name, others, key.rpartition(".")[0])
        return f"+{key} adds a key that no lungcls code reads{closest_key(key, known)}"
    return None


def hydra_main(config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[..., Any]]:
    """``@hydra.main`` for a lungcls command: the config ``conf/<config_name>.yaml``, overrides
    checked first (``check_overrides``), the task run through ``hydra_app``."""

    def decorate(task: Callable[[DictConfig], Any]) -> Callable[..., Any]:
        app = hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=config_name)(hydra_app(task))

        @functools.wraps(task)
        def main(cfg: DictConfig | None = None) -> Any:
            if cfg is not None:  # called with a composed config: run the task as Hydra would
                return app(cfg)
            try:
                settings.require_bundled("conf")
            except LungclsError as e:
                print(f"lungcls: error: {e}", file=sys.stderr)
                sys.exit(2)
            if not _is_rank_zero() and not any(a.startswith("hydra.output_subdir") for a in sys.argv[1:]):
                sys.argv.append("hydra.output_subdir=null")  # rank 0 writes the run's .hydra/; another would race it
            check_overrides(config_name, sys.argv[1:])
            FAILED_JOBS.clear()
            result = app()
            _exit_if_jobs_failed()
            return result

        return main

    return decorate


# what gloo and NCCL say when another process of the run died (its node lost, killed, out of memory)
_PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "DistBackendError", "NCCL communicator was aborted")


def _crash_reason(e: BaseException) -> str:
    """status.json's reason for a crash: a lost peer process is named as such (the run can resume
    from its last.ckpt), anything else as its exception."""
    text = f"{type(e).__name__}: {_one_line(e)[:300]}"
    if any(mark in text for mark in _PEER_LOST):
        return f"another process of the distributed run was lost (its node died or was killed); resume from last.ckpt ({text})"
    return text


def hydra_app(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Wrap a Hydra task: record the run's state and turn user errors into one line."""

    @functools.wraps(task)
    def wrapper(cfg: DictConfig) -> Any:
        run_dir = _run_dir()
        record = run_dir is not None and _is_rank_zero()
        if record:
            run_dir.mkdir(parents=True, exist_ok=True)
            try:
                write_state(run_dir, "running")  # takes the folder's lock: one live run per folder
            except LungclsError as e:
                return _user_error(e, None)  # the folder is another live run's: nothing written there
            signal.signal(signal.SIGTERM, _terminated)  # a cluster's cancel or time limit
        try:
            result = task(cfg)
        except (LungclsError, MissingMandatoryValue, InterpolationResolutionError) as e:
            if record:
                write_state(run_dir, "failed", _one_line(e))
            return _user_error(e, run_dir if record else None)
        except (KeyboardInterrupt, Terminated) as e:
            if record:
                write_state(run_dir, "killed", "stopped by Ctrl-C" if isinstance(e, KeyboardInterrupt) else f"terminated (exit status {e.code})")
            raise
        except SystemExit as e:  # the task chose its exit status (e.g. lungcls-audit's fail_on)
            if record:
                write_state(run_dir, "complete" if e.code in (0, None) else "failed", None if e.code in (0, None) else f"exit status {e.code}")
            raise
        except BaseException as e:
            if record:
                write_state(run_dir, "failed", _crash_reason(e))
            raise
        if record:
            write_state(run_dir, "complete")
        return result

    return wrapper


register_configs()
