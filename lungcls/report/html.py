"""The self-contained `report.html`: figures embedded as data URIs, inline CSS, no scripts.

One file that opens offline anywhere (mailed, copied off a cluster, attached to a paper review)
and shows exactly what the PNGs and the CSV beside it show. Every piece of text is escaped.
"""

from __future__ import annotations

import base64
import html
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from lungcls.errors import LungclsError
from lungcls.runs.files import write_text_atomic

__all__ = ["FigureSection", "GroupSection", "TableSection", "write_report_html"]

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1400px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
.meta { color: #666; font-size: 0.9em; }
section { margin: 2em 0; }
figure { margin: 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { color: #444; font-size: 0.95em; margin-top: 0.4em; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; }
th { background: #f3f3f3; position: sticky; top: 0; }
tr:nth-child(even) td { background: #fafafa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.tablewrap { overflow-x: auto; }
.legend { color: #444; font-size: 0.92em; }
"""


@dataclass(frozen=True)
class FigureSection:
    """One figure of the report: its heading, the image file to embed and a caption."""

    title: str
    image: str | Path
    caption: str = ""


def _section(item: FigureSection | Mapping[str, Any]) -> FigureSection:
    if isinstance(item, FigureSection):
        return item
    if isinstance(item, Mapping) and "title" in item and ("image" in item or "path" in item):
        return FigureSection(
            title=str(item["title"]),
            image=item.get("image", item.get("path")),
            caption=str(item.get("caption", "")),
        )
    raise LungclsError(
        "each report section must be a FigureSection or a dict with 'title', 'image' (or 'path') "
        f"and optional 'caption'; got {item!r}"
    )


def _data_uri(path: str | Path) -> str:
    """The image file as a base64 data URI, so the HTML needs nothing beside it."""
    file = Path(path)
    mime = _MIME.get(file.suffix.lower())
    if mime is None:
        raise LungclsError(
            f"cannot embed {file.name}: unsupported image type {file.suffix!r}; "
            f"use one of {', '.join(sorted(_MIME))}"
        )
    if not file.is_file():
        raise LungclsError(f"report figure {file} does not exist; write the figure before the HTML")
    return f"data:{mime};base64," + base64.b64encode(file.read_bytes()).decode("ascii")


def _cell(value: Any) -> tuple[str, bool]:
    """Escaped cell text and whether it is numeric (right-aligned); None and NaN read as blank."""
    if value is None:
        return "", False
    if isinstance(value, (bool, np.bool_)):
        return html.escape(str(bool(value))), False
    if isinstance(value, numbers.Integral):
        return str(int(value)), True
    if isinstance(value, numbers.Real):
        return ("" if math.isnan(value) else f"{float(value):.3f}"), True
    return html.escape(str(value)), False


def filled_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The columns (first-seen order) that hold a value on some row: a column that is blank on every
    row (localisation without masks) would only push the others off the page. The CSVs keep them."""
    columns: list[str] = []
    for row in rows:
        columns.extend(str(k) for k in row if str(k) not in columns)
    lookup = [{str(k): v for k, v in row.items()} for row in rows]
    return [c for c in columns if any(_cell(r.get(c))[0] for r in lookup)]


def _table(rows: Sequence[Mapping[str, Any]]) -> str:
    columns = filled_columns(rows)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        lookup = {str(k): v for k, v in row.items()}
        cells = []
        for c in columns:
            text, numeric = _cell(lookup.get(c))
            cells.append(f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    rows_html = "\n".join(body)
    return (
        f'<div class="tablewrap"><table>\n<thead><tr>{head}</tr></thead>\n'
        f"<tbody>\n{rows_html}\n</tbody></table></div>"
    )


@dataclass(frozen=True)
class TableSection:
    """A table of the report: heading, rows (dicts; columns in first-seen order), a short legend."""

    title: str
    rows: Sequence[Mapping[str, Any]]
    caption: str = ""
    anchor: str = ""


def _table_section(table: TableSection, k: int) -> list[str]:
    anchor = html.escape(table.anchor or f"table-{k}", quote=True)
    caption = f'<p class="legend">{html.escape(table.caption)}</p>' if table.caption else ""
    return [f'<section id="{anchor}">', f"<h2>{html.escape(table.title)}</h2>", caption, _table(table.rows), "</section>"]


@dataclass(frozen=True)
class GroupSection:
    """A titled section of sentences, tables and figures (the report's "Which map to trust")."""

    title: str
    lines: Sequence[str]
    tables: Sequence[TableSection] = ()
    figures: Sequence[FigureSection] = ()
    anchor: str = ""


def _figure(fig: FigureSection, anchor: str, level: str = "h2") -> list[str]:
    alt = html.escape(fig.title, quote=True)
    caption = f"<figcaption>{html.escape(fig.caption)}</figcaption>" if fig.caption else ""
    return [f'<section id="{anchor}">', f"<{level}>{html.escape(fig.title)}</{level}>",
            f'<figure><img src="{_data_uri(fig.image)}" alt="{alt}">{caption}</figure>', "</section>"]


def _group(group: GroupSection, k: int) -> list[str]:
    anchor = html.escape(group.anchor or f"group-{k}", quote=True)
    items = "\n".join(f"<li>{html.escape(str(line))}</li>" for line in group.lines)
    parts = [f'<section id="{anchor}">', f"<h2>{html.escape(group.title)}</h2>", f"<ul>\n{items}\n</ul>"]
    for j, table in enumerate(group.tables, start=1):
        parts += _table_section(table, 100 * k + j)
    for j, fig in enumerate(group.figures, start=1):
        parts += _figure(fig, f"{anchor}-figure-{j}", "h3")
    return parts + ["</section>"]


def write_report_html(
    out_dir: str | Path,
    title: str,
    sections: Sequence[FigureSection | Mapping[str, Any]],
    table_rows: Sequence[Mapping[str, Any]],
    summary_lines: Sequence[str],
    table_title: str = "Per-image numbers",
    tables: Sequence[TableSection] = (),
    legend: Sequence[str] = (),
    table_caption: str = "",
    groups: Sequence[GroupSection] = (),
) -> Path:
    """Write `out_dir/report.html` and return its path.

    sections: figures in display order (FigureSection, or dicts with title/image/caption).
    table_rows: the per-image CSV rows (dicts; columns in first-seen order), shown last.
    summary_lines: short statements for the top of the page. tables: more tables (per model, the
    sanity cascade), shown after the summary. legend: how to read the numbers, one line each.
    groups: titled sections of sentences, tables and figures, shown right after the legend.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = [_section(s) for s in sections]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        "<header>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">Written {html.escape(stamp)}. Grad-CAM maps are scaled so that each '
        "map's maximum is 1; shares are of the map's total energy.</p>",
        "</header>",
    ]
    if summary_lines:
        items = "\n".join(f"<li>{html.escape(str(line))}</li>" for line in summary_lines)
        parts += ['<section id="summary">', "<h2>Summary</h2>", f"<ul>\n{items}\n</ul>", "</section>"]
    if legend:
        items = "\n".join(f"<li>{html.escape(str(line))}</li>" for line in legend)
        parts += ['<section id="legend">', "<h2>How to read the numbers</h2>", f'<ul class="legend">\n{items}\n</ul>', "</section>"]
    for k, group in enumerate(groups, start=1):
        parts += _group(group, k)
    for k, table in enumerate(tables, start=1):
        parts += _table_section(table, k)
    for k, fig in enumerate(figures, start=1):
        parts += _figure(fig, f"figure-{k}")
    if table_rows:
        parts += _table_section(TableSection(table_title, table_rows, table_caption, "table"), 0)
    parts += ["</body>", "</html>", ""]
    path = out / "report.html"
    write_text_atomic(path, "\n".join(parts))
    return path
