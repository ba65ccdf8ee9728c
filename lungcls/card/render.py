"""Writing a card: Markdown (figures linked beside it), a self-contained HTML page (figures embedded,
opens offline) and the checklist, under names no earlier card holds (``model_card.md``, then
``model_card-2.md``...: a card never writes over another)."""

from __future__ import annotations

import base64
import html
import io
import os
import re
from pathlib import Path

from lungcls.errors import LungclsError

NAMES = ("model_card.md", "model_card.html", "checklist.md")
MAX_SIDE = 1400  # pixels: figures are shrunk to this for the page (the files keep their size)
STYLE = """body{font-family:system-ui,sans-serif;max-width:68rem;margin:2rem auto;padding:0 1rem;line-height:1.45;color:#1b1b1b}
table{border-collapse:collapse;margin:.5rem 0 1rem}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f1f4f8}code{background:#f4f4f4;padding:0 .2rem;word-break:break-all}pre{background:#f4f4f4;padding:.6rem;overflow-x:auto}
img{max-width:100%;border:1px solid #ddd}img[alt="Attribution maps"]{max-width:40rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
#limitations li{margin:.2rem 0}"""


def fresh_paths(folder: Path) -> tuple[Path, Path, Path]:
    """The first ``model_card[-k].md``/``.html``/``checklist[-k].md`` triple none of which exists."""
    for k in range(1, 10_000):
        suffix = "" if k == 1 else f"-{k}"
        paths = tuple(folder / name.replace(".", f"{suffix}.", 1) for name in NAMES)
        if not any(p.exists() for p in paths):
            return paths  # type: ignore[return-value]
    raise LungclsError(f"{folder} holds 10,000 model cards; remove old ones")


def relative(target: Path, folder: Path) -> str:
    return Path(os.path.relpath(target, folder)).as_posix()


def data_uri(path: Path) -> str:
    """A PNG as a ``data:`` URI, shrunk to ``MAX_SIDE`` (a 300 dpi figure would make the page heavy)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((MAX_SIDE, MAX_SIDE))
        buffer = io.BytesIO()
        im.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def to_html(markdown_text: str, folder: Path, title: str) -> str:
    """The Markdown as one self-contained page: tables, code, figures embedded."""
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables", "fenced_code", "attr_list"])

    def embed(match: re.Match) -> str:
        src = html.unescape(match.group(1))
        path = (folder / src).resolve()
        return f'src="{data_uri(path)}"' if path.is_file() else match.group(0)

    body = re.sub(r'src="([^"]+)"', embed, body)
    body = body.replace("<h2>Limitations</h2>\n<ul>", '<h2>Limitations</h2>\n<ul id="limitations">', 1)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{STYLE}</style></head>"
            f"<body>\n{body}\n</body></html>\n")


def write_new(path: Path, text: str) -> None:
    """Create ``path``; never write over a file (another card written at the same moment keeps its own)."""
    try:
        with path.open("x", encoding="utf-8") as f:
            f.write(text)
    except FileExistsError:
        raise LungclsError(f"{path} appeared while the card was written; run lungcls-card again") from None
    except OSError as e:
        raise LungclsError(f"cannot write {path} ({e.strerror}); give a folder you can write to") from None
