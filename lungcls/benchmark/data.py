"""The benchmark's data: a set of the COVID-19 Radiography Database's size and format (21,165
grayscale 299x299 PNGs in the database's class proportions), drawn with the demo's chest X-ray
phantom and generated in parallel on first use, then reused."""

from __future__ import annotations

import os
import time
from pathlib import Path

from lungcls.data.phantom.demo import DEMO_CLASSES, ensure_demo_dataset
from lungcls.errors import LungclsError

# The COVID-19 Radiography Database: images per class (21,165 in all), 299x299 grayscale PNGs.
DATABASE_COUNTS: dict[str, int] = {"COVID": 3616, "Lung_Opacity": 6012, "Normal": 10192, "Viral Pneumonia": 1345}
DATABASE_SIZE = 299



def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def class_counts(total: int) -> dict[str, int]:
    """Images per class for a data set of ``total`` images, in the database's proportions
    (largest remainder, at least one image per class)."""
    if total < len(DATABASE_COUNTS):
        raise LungclsError(f"--images={total} is too few; the four classes need at least {len(DATABASE_COUNTS)}")
    full = sum(DATABASE_COUNTS.values())
    exact = {c: n * total / full for c, n in DATABASE_COUNTS.items()}
    counts = {c: max(1, int(v)) for c, v in exact.items()}
    by_remainder = sorted(DATABASE_COUNTS, key=lambda c: exact[c] - int(exact[c]), reverse=True)
    i = 0
    while sum(counts.values()) < total:
        counts[by_remainder[i % len(by_remainder)]] += 1
        i += 1
    while sum(counts.values()) > total:  # only when the minimum of one pushed us over
        biggest = max(counts, key=counts.get)
        counts[biggest] -= 1
    return counts


def ensure_bench_dataset(root: str | Path, images: int, size: int = DATABASE_SIZE, seed: int = 0, workers: int | None = None) -> Path:
    """The phantom in the database layout (``<Class>/images/<Class>-<n>.png``, masks beside) with
    ``images`` images in the database's proportions, generated once by ``workers`` processes."""
    if size < 32:
        raise LungclsError(f"--source-size={size} is too small; use 32 or more (the database is {DATABASE_SIZE})")
    counts = class_counts(images)
    return ensure_demo_dataset(root, images_per_class=counts, image_size=size, seed=seed,
                               classes=DEMO_CLASSES, workers=workers or cpu_count())


def prepare_data(data: str | None, gen_dir: str, images: int, source_size: int) -> tuple[Path, str]:
    """The data to measure on (``--data`` or the generated set) and where it came from."""
    if data:
        root = Path(data).expanduser()
        if not root.is_dir():
            raise LungclsError(f"--data {data} is not a folder; give a data set in the database layout (<Class>/images/*.png)")
        return root, "given"
    root = Path(gen_dir) / f"bench-{images}x{source_size}"
    existed = (root / "demo.json").is_file()
    t0 = time.perf_counter()
    ensure_bench_dataset(root, images, source_size)
    took = time.perf_counter() - t0
    return root, ("generated earlier, reused" if existed and took < 5 else f"generated in {took:.1f} s")
