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

# The planted shortcut of each demo class: its tag's text and where along the bottom border band
# the tag's centre sits (a share of the width), like the label positions of different hospitals.
SHORTCUT_TAGS: dict[str, tuple[str, float]] = {
    "COVID": ("CVD", 0.14),
    "Lung_Opacity": ("OPC", 0.38),
    "Normal": ("NRM", 0.62),
    "Viral Pneumonia": ("VPN", 0.86),
}

TAG_BAND = 0.1  # the tag lies inside this outer share of the image side
_GOLDEN = 0.6180339887498949  # low-discrepancy sequence: any run of indices gets share p tagged


def text_bitmap(text: str, cell: int) -> np.ndarray:
    """Bool bitmap of `text` (5x7 glyphs, one blank column between them), each dot cell x cell px."""
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
    """Draw the class's tag into the uint8 `image` (in place) inside the bottom border band: dark
    text on a white sticker. Returns its text and box (x0, y0, x1, y1, exclusive end)."""
    n = image.shape[0]
    text, centre = SHORTCUT_TAGS[class_name]
    cell = max(1, round(n / 128))
    dots = text_bitmap(text, cell)
    band = int(TAG_BAND * n)  # rows n - band .. n - 1 are in the band whatever the rounding
    pad = cell if dots.shape[0] + 2 * cell <= band else 0
    if dots.shape[0] > band:  # too small to print legible text: a blank sticker of the band's height
        dots = np.zeros((max(1, band), dots.shape[1]), dtype=bool)
    h, w = dots.shape[0] + 2 * pad, dots.shape[1] + 2 * pad
    x0 = int(round((centre + 0.04 * (rng.random() - 0.5)) * n - w / 2))
    x0 = min(max(x0, 0), n - w)
    y1 = n - int(rng.random() * (band - h + 1))  # exclusive end, anywhere in the band
    y0 = y1 - h
    image[y0:y1, x0 : x0 + w] = 235  # the white sticker
    image[y0 + pad : y0 + pad + dots.shape[0], x0 + pad : x0 + pad + dots.shape[1]][dots] = 15
    return text, (x0, y0, x0 + w, y1)
