"""Typed settings: the one bridge from a composed Hydra config to the attributes code reads.

Each command (and each config group that library code consumes) declares a dataclass of its keys
and their types, with no default values: the defaults live in one place, the yaml under ``conf/``.
``typed(node, Schema, "predict")`` merges the composed node into the schema, so a value of the wrong
type (``seed=abc``), a key the schema does not know (a misspelling) or a key the yaml forgot is one
line naming the key (with the closest known key), before any data are read. Code then reads
attributes (``settings.batch_size``), never ``cfg.get("key", default)``.

Range checks that a type cannot express (a positive batch size, a margin in [0, 1)) live in the
dataclass's ``__post_init__``, so they run at the same moment.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, ValidationError

from lungcls.errors import LungclsError

T = TypeVar("T")
PACKAGE_DIR = Path(__file__).resolve().parent


def bundled_dir(name: str) -> Path:
    """lungcls's own ``conf/`` or ``sweeps/``, the one place every command looks: inside an installed
    package (``lungcls/resources/<name>``, where the wheel carries them) or, in a checkout, the
    repository's top-level folder. A path that does not exist when neither is there
    (``require_bundled`` says so in one line)."""
    for candidate in (PACKAGE_DIR / "resources" / name, PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    return PACKAGE_DIR / "resources" / name


def require_bundled(name: str) -> Path:
    """``bundled_dir(name)``, or one line naming the broken installation and the fix."""
    folder = bundled_dir(name)
    if not folder.is_dir() or not any(folder.iterdir()):
        raise LungclsError(
            f"lungcls's {name}/ folder is missing from this installation (looked in {folder} and {PACKAGE_DIR.parent / name}); "
            "reinstall lungcls from a wheel or a git URL (pip install --force-reinstall ...), or use a checkout that has it"
        )
    return folder


CONF_DIR = bundled_dir("conf")
SWEEPS_DIR = bundled_dir("sweeps")


@functools.lru_cache(maxsize=None)
def yaml_defaults(relative: str) -> dict[str, Any]:
    """The keys of ``conf/<relative>`` as written (interpolations unresolved): the defaults code uses
    when it gets no composed config (a checkpoint's stored copy, a library call), from the one file
    that also documents them."""
    return yaml.safe_load((CONF_DIR / relative).read_text()) or {}


def closest_key(key: str, known: list[str]) -> str:
    """`` (did you mean <prefix>.<close>?)`` for a misspelt key, or nothing when none is close."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else f"; known keys: {', '.join(sorted(known))}"


def _prefixed(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def typed(node: Any, schema: type[T], prefix: str = "") -> T:
    """``node`` (a DictConfig or mapping) as an instance of the dataclass ``schema``; a wrong type, an
    unknown key or a missing key is a ``LungclsError`` naming ``prefix.key``."""
    if node is None:
        node = {}
    plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    names = [f.name for f in dataclasses.fields(schema)]
    unknown = [k for k in plain if k not in names]
    if unknown:
        key = unknown[0]
        raise LungclsError(f"{_prefixed(prefix, key)} is not a setting{closest_key(key, names)}".replace(
            "did you mean ", f"did you mean {prefix + '.' if prefix else ''}"))
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), plain)
        return OmegaConf.to_object(merged)
    except MissingMandatoryValue as e:
        key = getattr(e, "full_key", "") or str(e)
        raise LungclsError(f"{_prefixed(prefix, key)} has no value; set it in the yaml or on the command line ({_prefixed(prefix, key)}=...)") from None
    except (ValidationError, ConfigKeyError) as e:
        key = str(getattr(e, "full_key", "") or "?")
        value = plain
        for part in key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else value
        field = {f.name: f for f in dataclasses.fields(schema)}.get(key.split(".")[0])
        raise LungclsError(f"{_prefixed(prefix, key)}={value} {expected(field.type if field else None)}") from None


KINDS = (("bool", "must be true or false"), ("int", "must be a whole number"), ("float", "must be a number"),
         ("list", "must be a list, e.g. [a,b]"), ("str", "must be text"))


def expected(annotation: Any) -> str:
    """What a field's type asks for, in words (``Optional[int]`` -> must be a whole number or null)."""
    text = str(getattr(annotation, "__name__", annotation))
    kind = next((words for name, words in KINDS if name in text), "has the wrong type; see conf/ and docs/configuration.md")
    return kind + (" (or null)" if "Optional" in text or "None" in text else "")


def typed_keys(cfg: Any, schema: type[T], prefix: str = "") -> T:
    """``typed`` over the top-level keys of a composed config that ``schema`` declares (a primary
    config also holds the config groups, each typed by its own schema)."""
    names = [f.name for f in dataclasses.fields(schema)]
    missing = [n for n in names if n not in cfg]
    if missing:
        key = _prefixed(prefix, missing[0])
        raise LungclsError(f"{key} has no value; set it in the yaml or on the command line ({key}=...)")
    return typed({n: cfg[n] for n in names}, schema, prefix)


def check_range(value: float | int | None, key: str, low: float | None = None, high: float | None = None,
                *, low_open: bool = False, high_open: bool = False) -> None:
    """A ``LungclsError`` naming ``key`` when ``value`` lies outside [low, high] (or the open ends)."""
    if value is None:
        return
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if not (too_low or too_high):
        return
    if high is None:
        raise LungclsError(f"{key}={value} must be {'more than' if low_open else 'at least'} {low}")
    lo, hi = "(" if low_open else "[", ")" if high_open else "]"
    raise LungclsError(f"{key}={value} must be in {lo}{low}, {high}{hi}")
