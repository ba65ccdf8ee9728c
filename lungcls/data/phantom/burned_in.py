"""Text burned into the film after exposure: the label-free laterality markers and the planted
shortcut, a class-specific tag like the label a hospital prints on its films.

The tag is what ``dataset.demo.shortcut=p`` plants: a white sticker with a three-letter code,
always inside the outer 10% border band (where real burned-in labels sit), at a place and with a
text that depend on the class. A model can then reach high accuracy by reading the tag instead
of the lungs, which is the shortcut a Grad-CAM report (border share) and an audit's border probe
must expose. Which images carry a tag depends only on (seed, class, index), never on the order or
the number of images generated, and drawing it changes no other pixel: a tagged image is its
untagged twin plus the tag.
"""

from __future__ import annotations

import zlib

import numpy as np

# 5x7 bitmaps of the burned-in characters.
GLYPHS: dict[str, tuple[str, ...]] = {
    "L": ("10000", "10000", "10000", "10000", "10000", "10000", "11111"),
    "R": ("11110", "10001", "10001", "11110", "10100", "10010", "10001"),
    "C": ("01110", "10001", "10000", "10000", "10000", "10001", "01110"),
    "D": ("11110", "10001", "10001", "10001", "10001", "10001", "11110"),
    "M": ("10001", "11011", "10101", "10101", "10001", "10001", "10001"),
    "N": ("10001", "11001", "10101", "10011", "10001", "10001", "10001"),
    "O": ("01110", "10001", "10001", "10001", "10001", "10001", "01110"),
    "P": ("11110", "10001", "10001", "11110", "10000", "10000", "10000"),
    "V": ("10001", "10001", "10001", "10001", "10001", "01010", "00100"),
}

# The planted shortcut of each demo class: its tag's text, the border it sits on and where along
# that border its centre is (a share of the side), like the label positions of different
# hospitals. The places stay apart under the default horizontal flip: COVID's corner mirrors to
# the other bottom corner, Lung_Opacity's left side to the right side, the centred ones to
# themselves, so a flipped tag still names its class.
SHORTCUT_TAGS: dict[str, tuple[str, str, float]] = {
    "COVID": ("CVD", "bottom", 0.14),
    "Lung_Opacity": ("OPC", "left", 0.5),
    "Normal": ("NRM", "bottom", 0.5),
    "Viral Pneumonia": ("VPN", "top", 0.5),
}

TAG_BAND = 0.1  # the tag lies inside this outer share of the image side
_GOLDEN = 0.6180339887498949  # low-discrepancy sequence: any run of indices gets share p tagged


def text_bitmap(text: str, cell: int, vertical: bool = False) -> np.ndarray:
    """Bool bitmap of `text` (5x7 glyphs, one blank column between them, or stacked with one blank
    row when `vertical`), each dot cell x cell px."""
    if vertical:
        rows = [row for k, ch in enumerate(text) for row in ((["00000"] if k else []) + list(GLYPHS[ch]))]
    else:
        rows = ["0".join(GLYPHS[ch][r] for ch in text) for r in range(7)]
    dots = np.array([[c == "1" for c in row] for row in rows])
    return np.repeat(np.repeat(dots, cell, axis=0), cell, axis=1)


def is_tagged(class_name: str, index: int, seed: int, share: float) -> bool:
    """Whether image `index` of a class carries its tag: a Weyl sequence with a per-class, per-seed
    offset, so every class gets its share `share` of tagged images (to within a couple of images)
    whatever range of indices is generated."""
    if share <= 0.0:
        return False
    offset = zlib.crc32(f"{seed}:{class_name}".encode("utf-8")) / 2**32
    return (index * _GOLDEN + offset) % 1.0 < share


def burn_in_tag(image: np.ndarray, class_name: str, rng: np.random.Generator) -> tuple[str, tuple[int, int, int, int]]:
    """Draw the class's tag into the uint8 `image` (in place) inside its border band: dark text on a
    white sticker. Returns its text and box (x0, y0, x1, y1, exclusive end)."""
    n = image.shape[0]
    text, side, centre = SHORTCUT_TAGS[class_name]
    cell = max(1, round(n / 128))
    dots = text_bitmap(text, cell, vertical=side in ("left", "right"))
    band = int(TAG_BAND * n)  # the outer `band` pixels are inside the band whatever the rounding
    across = 0 if side in ("top", "bottom") else 1  # the axis that crosses the band
    pad = cell if dots.shape[across] + 2 * cell <= band else 0
    if dots.shape[across] > band:  # too small to print legible text: a blank sticker as deep as the band
        dots = np.zeros((max(1, band), dots.shape[1]) if across == 0 else (dots.shape[0], max(1, band)), dtype=bool)
    h, w = dots.shape[0] + 2 * pad, dots.shape[1] + 2 * pad
    along, depth = (w, h) if across == 0 else (h, w)
    start = min(max(int(round((centre + 0.04 * (rng.random() - 0.5)) * n - along / 2)), 0), n - along)
    inset = int(rng.random() * (band - depth + 1))  # anywhere inside the band
    edge = inset if side in ("top", "left") else n - inset - depth
    x0, y0 = (start, edge) if across == 0 else (edge, start)
    image[y0 : y0 + h, x0 : x0 + w] = 235  # the white sticker
    image[y0 + pad : y0 + pad + dots.shape[0], x0 + pad : x0 + pad + dots.shape[1]][dots] = 15
    return text, (x0, y0, x0 + w, y0 + h)
