"""Hydra's override grammar: writing a YAML value so each run receives exactly it, and reading the
key an override sets. Hydra's own parser decides both, so a value is quoted only where Hydra would
otherwise read something else.
"""

from __future__ import annotations

import re
from typing import Any

from lungcls.errors import LungclsError

_PARSER: Any = None


def _override_parser() -> Any:
    """Hydra's own override parser (built once: it is slow to construct)."""
    global _PARSER
    if _PARSER is None:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        _PARSER = OverridesParser.create()
    return _PARSER


def _parses_to(text: str, value: Any) -> bool:
    """Whether `key=<text>` is a plain (non-sweep) override whose value equals `value`."""
    try:
        override = _override_parser().parse_override(f"k={text}")
    except Exception:
        return False
    if override.is_sweep_override():
        return False
    parsed = override.value()
    return type(parsed) is type(value) and parsed == value


def _quote(text: str) -> str:
    """Single-quote a string for Hydra: escape quotes and the backslashes that precede them."""
    body = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    body = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, body)
    return f"'{body}'"


def hydra_value(value: Any) -> str:
    """Write a YAML value as one element of Hydra's override grammar.

    Strings stay bare when Hydra would read them back unchanged (`adam`, `val/macro_f1`,
    `${oc.env:X}`); strings with whitespace, commas, quotes or brackets, or that would read as
    another type (`"true"`, `"10"`), are single-quoted.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        if value and not any(c.isspace() for c in value) and _parses_to(value, value):
            return value
        quoted = _quote(value)
        if not _parses_to(quoted, value):
            raise LungclsError(f"cannot write {value!r} as a Hydra override value")
        return quoted
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = []
        for key, val in value.items():
            if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][\w.-]*", key):
                raise LungclsError(f"cannot write dict key {key!r} in a Hydra override")
            items.append(f"{key}:{hydra_value(val)}")
        return "{" + ",".join(items) + "}"
    raise LungclsError(f"cannot write {value!r} ({type(value).__name__}) as a Hydra override")


def override_key(override: str) -> str:
    """The config key or group an override sets (`+a.b=1` -> `a.b`, `hydra/launcher=x` -> itself)."""
    try:
        return str(_override_parser().parse_override(override).key_or_group)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LungclsError(f"not a Hydra override: {override!r} ({first})") from None
