"""How a card writes numbers and tables: one format everywhere, so a number in the card can be
found again in the file it came from (three decimals, intervals in brackets, "not measured" for
what no evidence holds)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

NOT_MEASURED = "not measured"


def num(value: Any, digits: int = 3) -> str:
    """``0.933``; whole numbers as they are; ``n/a`` for a null (undefined) value."""
    if value is None or value == "":
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return str(value)


def interval(pair: Any, digits: int = 3) -> str:
    """`` [0.910, 0.950]`` (with its leading space), or nothing without an interval."""
    if not isinstance(pair, (list, tuple)) or len(pair) != 2 or pair[0] is None or pair[1] is None:
        return ""
    return f" [{num(pair[0], digits)}, {num(pair[1], digits)}]"


def with_interval(value: Any, pair: Any, digits: int = 3) -> str:
    return num(value, digits) + (interval(pair, digits) if value is not None else "")


def cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A Markdown table (no rows: nothing)."""
    if not rows:
        return []
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines + [""]


def share(value: Any) -> str:
    return "n/a" if value is None else f"{100 * float(value):.0f}%"


def as_float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
