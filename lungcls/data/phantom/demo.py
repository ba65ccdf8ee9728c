"""The embedded demo data set: a deterministic synthetic chest X-ray phantom.

It is written to disk in the layout of the COVID-19 Radiography Database
(`<Class>/images/<Class>-<n>.png`, lung masks in `<Class>/masks/`), so the demo exercises the same
file-loading path as the real data. Each disease class has its finding at a known place, written to
`<Class>/lesion_masks/`, so Grad-CAM localisation can be scored against ground truth. With
``shortcut=p`` a share p of each class's images also carries a class-specific tag in the border
band (a planted shortcut, recorded in `demo_annotations.csv`), so shortcut learning can be shown.
With ``sources=k`` (k >= 2) the films come from k hospitals that expose, blur, collimate and mark
them differently, and ``source_bias=p`` ties a share p of each class to one hospital (see
`lungcls.data.phantom.sites`); each image's site is the `site` column of `demo_annotations.csv`, a
manifest (`path,label,...,site`), so leave-one-source-out runs on the demo with no download.

Determinism: every image is drawn from its own `numpy.random.Generator(PCG64)` seeded from
(seed, class, index), and the pixel maths uses only IEEE-exact operations (+, -, *, /, sqrt, no
transcendental functions on arrays, no BLAS), so the pixels do not depend on the machine, the order
of generation or the number of processes. `demo.json` records a SHA-256 of all pixels so that can be
checked anywhere; the PNG bytes are identical wherever the same zlib build encodes them.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import shutil
import multiprocessing
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from lungcls.data.phantom import FINDINGS, DemoCase
from lungcls.data.phantom import render_demo_case as _render_case
from lungcls.data.phantom.sites import MAX_SITES, pick_site
from lungcls.errors import LungclsError
from lungcls.console import tracked

try:  # POSIX; elsewhere concurrent first use is simply not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DEMO_CLASSES",
    "GENERATOR_VERSION",
    "DemoCase",
    "demo_folder",
    "demo_sites",
    "ensure_demo_dataset",
    "lesion_mask_path",
    "lung_mask_path",
    "render_demo_case",
]

# Bump whenever the pixels change, so existing demo folders are regenerated.
GENERATOR_VERSION = "lungcls-demo-phantom/3"
DEMO_CLASSES: tuple[str, ...] = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")
META_FILE = "demo.json"
ANNOTATIONS_FILE = "demo_annotations.csv"


# --------------------------------------------------------------------------------------------
# Public helpers
# --------------------------------------------------------------------------------------------


def lung_mask_path(image_path: str | os.PathLike[str]) -> Path:
    """The lung mask of an image in the Radiography layout: same name in the sibling `masks/`."""
    p = Path(image_path)
    return p.parent.parent / "masks" / p.name


def lesion_mask_path(image_path: str | os.PathLike[str]) -> Path:
    """Where the finding of a demo image is: same name in the sibling `lesion_masks/`."""
    p = Path(image_path)
    return p.parent.parent / "lesion_masks" / p.name


def ensure_demo_dataset(
    root: str | os.PathLike[str],
    images_per_class: int | Mapping[str, int] = 150,
    image_size: int = 128,
    seed: int = 0,
    classes: Sequence[str] = DEMO_CLASSES,
    workers: int = 1,
    shortcut: float = 0.0,
    sources: int = 1,
    source_bias: float = 0.0,
) -> Path:
    """Make sure `root` holds the demo data set for these parameters, generating it if needed.

    `images_per_class` is one count for every class or a count per class (the benchmark uses the
    database's proportions). `shortcut` is the share of each class's images that carry the
    class's planted tag in the border band (0: none; see `lungcls.data.phantom.burned_in`). Returns at once when `root/demo.json` already matches. Otherwise the
    data set is generated (by `workers` processes) into a temporary sibling folder and renamed into
    place, under a file lock next to `root`, so a crash never leaves a half-written data set and
    concurrent callers generate it only once. A non-empty `root` that is not a demo data set is
    refused rather than overwritten.
    """
    root = Path(root).expanduser()
    classes = tuple(classes)
    _validate(images_per_class, image_size, seed, classes, shortcut)
    _validate_sites(sources, source_bias)
    params = {
        "images_per_class": images_per_class if isinstance(images_per_class, (int, np.integer)) else dict(images_per_class),
        "image_size": int(image_size),
        "seed": int(seed),
        "classes": list(classes),
        "shortcut": float(shortcut),
    }
    if sources > 1:  # only then: a single-source demo folder stays what it always was
        params.update(sources=int(sources), source_bias=float(source_bias))
    if isinstance(params["images_per_class"], np.integer):
        params["images_per_class"] = int(params["images_per_class"])
    if _is_current(root, params):
        return root
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        with _locked(root.parent / f".{root.name}.lock"):
            if _is_current(root, params):  # another process finished it while we waited
                return root
            _check_replaceable(root)
            _remove_stale_siblings(root)
            tmp = _new_sibling(root, "tmp")
            try:
                digest = _write_dataset(tmp, params, max(1, int(workers)))
                meta = {"generator": GENERATOR_VERSION, **params, "pixels_sha256": digest}
                (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
                _move_into_place(tmp, root)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except OSError as exc:
        raise LungclsError(
            f"cannot write the demo data set to {root}: {exc.strerror or exc}; "
            "set dataset.root to a writable folder"
        ) from exc
    return root


def demo_folder(root: str | os.PathLike[str], sources: int = 1, source_bias: float = 0.0) -> Path:
    """Where a demo with these sites lives: `root` itself for one site, else a sibling named after
    the sites (so a multi-source demo never replaces the single-source one a run was trained on)."""
    root = Path(root).expanduser()
    return root if sources <= 1 else root.with_name(f"{root.name}-sites{int(sources)}-bias{float(source_bias):g}")


def demo_sites(root: str | os.PathLike[str]) -> dict[str, str]:
    """``{image path: site}`` from a multi-source demo's annotations (empty for one site)."""
    root = Path(root)
    with open(root / ANNOTATIONS_FILE, newline="") as f:
        return {str(root / r["path"]): r["site"] for r in csv.DictReader(f) if r.get("site")}


def class_count(params: Mapping, class_name: str) -> int:
    """How many images of `class_name` the data set has."""
    n = params["images_per_class"]
    return int(n[class_name]) if isinstance(n, Mapping) else int(n)


def render_demo_case(class_name: str, index: int, image_size: int = 128, seed: int = 0, shortcut: float = 0.0,
                     site: int | None = None) -> DemoCase:
    """Render one phantom in memory; exactly the pixels `ensure_demo_dataset` writes for it (pass
    the `site` its annotation names, ``site-A`` = 0, for a multi-source demo)."""
    _validate(1, image_size, seed, (class_name,), shortcut)
    return _render_case(class_name, index, image_size, seed, shortcut, site)


def _validate_sites(sources: int, source_bias: float) -> None:
    if isinstance(sources, bool) or not isinstance(sources, (int, np.integer)) or not 1 <= sources <= MAX_SITES:
        raise LungclsError(f"dataset.demo.sources must be a whole number of sites in [1, {MAX_SITES}], got {sources!r}")
    if isinstance(source_bias, bool) or not isinstance(source_bias, (int, float, np.number)) or not 0.0 <= source_bias <= 1.0:
        raise LungclsError(f"dataset.demo.source_bias must be a share in [0, 1] (e.g. 0.8), got {source_bias!r}")
    if source_bias > 0 and sources < 2:
        raise LungclsError("dataset.demo.source_bias ties classes to sites and needs dataset.demo.sources >= 2, e.g. dataset.demo.sources=3")


# --------------------------------------------------------------------------------------------
# Folder management
# --------------------------------------------------------------------------------------------


def _validate(images_per_class: int, image_size: int, seed: int, classes: tuple[str, ...], shortcut: float = 0.0) -> None:
    """Reject bad parameters with a message that says what is allowed."""
    counts = images_per_class.values() if isinstance(images_per_class, Mapping) else [images_per_class]
    if not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1 for n in counts):
        raise LungclsError(f"dataset.demo.images_per_class must be a positive integer, got {images_per_class!r}")
    if isinstance(images_per_class, Mapping) and set(images_per_class) != set(classes):
        raise LungclsError(f"images_per_class names {sorted(images_per_class)}, but the classes are {list(classes)}")
    if not isinstance(image_size, (int, np.integer)) or not 32 <= image_size <= 2048:
        raise LungclsError(f"dataset.demo.source_size must be an integer in [32, 2048], got {image_size!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise LungclsError(f"dataset.demo.seed must be a non-negative integer, got {seed!r}")
    if isinstance(shortcut, bool) or not isinstance(shortcut, (int, float, np.number)) or not 0.0 <= shortcut <= 1.0:
        raise LungclsError(f"dataset.demo.shortcut must be a share in [0, 1] (e.g. 0.9), got {shortcut!r}")
    if not classes or len(set(classes)) != len(classes):
        raise LungclsError(f"the demo classes must be a non-empty list without repeats, got {list(classes)}")
    unknown = [c for c in classes if c not in FINDINGS]
    if unknown:
        raise LungclsError(f"the demo data set has no class {unknown[0]!r}; choose from {list(FINDINGS)}")


def _image_name(class_name: str, index: int) -> str:
    return f"{class_name}-{index}.png"


def _is_current(root: Path, params: dict) -> bool:
    """True when `root` is a complete demo data set made by this generator with these parameters."""
    try:
        meta = json.loads((root / META_FILE).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or meta.get("generator") != GENERATOR_VERSION:
        return False
    if any(meta.get(k) != v for k, v in params.items()):
        return False
    # Cheap completeness check: the last image of every class is still there.
    return all((root / c / "images" / _image_name(c, class_count(params, c))).is_file() for c in params["classes"])


def _check_replaceable(root: Path) -> None:
    """Refuse to replace anything that is not an earlier demo data set or an empty folder."""
    if not root.exists():
        return
    if not root.is_dir():
        raise LungclsError(f"demo data set folder {root} is a file; set dataset.root to a new or empty folder")
    if (root / META_FILE).is_file() or not any(root.iterdir()):
        return
    raise LungclsError(
        f"{root} is not empty and is not a lungcls demo data set (no {META_FILE}); "
        "set dataset.root to a new or empty folder, or use dataset=folder for your own images"
    )


def _new_sibling(root: Path, kind: str) -> Path:
    """Create a uniquely named hidden folder next to `root` (with the usual umask permissions)."""
    path = root.parent / f".{root.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return path


def _remove_stale_siblings(root: Path) -> None:
    """Remove temporary folders left by a generation that was killed (we hold the lock)."""
    prefixes = (f".{root.name}.tmp-", f".{root.name}.old-")
    for p in root.parent.iterdir():
        if p.name.startswith(prefixes) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def _move_into_place(tmp: Path, root: Path) -> None:
    """Rename the finished data set to `root`, replacing an empty folder or an older demo set."""
    if root.exists():
        if any(root.iterdir()):
            old = _new_sibling(root, "old")
            os.replace(root, old / "data")
            os.replace(tmp, root)
            shutil.rmtree(old, ignore_errors=True)
            return
        root.rmdir()
    os.replace(tmp, root)


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `lock_path` (kept on disk; removing it would race)."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _write_images(job: tuple) -> list[tuple[dict, str]]:
    """Render and write images `start..stop-1` of one class; returns (annotation row, pixel digest)
    per image. Runs in worker processes too, so it takes and returns plain data."""
    out, class_name, start, stop, size, seed, shortcut, class_index, sources, bias = job
    dirs = {k: Path(out) / class_name / k for k in ("images", "masks", "lesion_masks")}
    done = []
    for i in range(start, stop):
        site = pick_site(class_index, class_name, i, seed, sources, bias) if sources > 1 else None
        case = _render_case(class_name, i, size, seed, shortcut, site)
        name = _image_name(class_name, i)
        digest = hashlib.sha256()
        for key, arr in {"images": case.image, "masks": case.lung_mask, "lesion_masks": case.lesion_mask}.items():
            Image.fromarray(arr).save(dirs[key] / name)  # 2-D uint8: 8-bit grayscale "L"
            digest.update(arr.tobytes())
        row = {
            "path": f"{class_name}/images/{name}",
            "label": class_name,
            "marker": case.marker,
            "marker_x0": case.marker_box[0],
            "marker_y0": case.marker_box[1],
            "marker_x1": case.marker_box[2],
            "marker_y1": case.marker_box[3],
            "border_sides": case.border_sides,
            "lesion_pixels": int(np.count_nonzero(case.lesion_mask)),
            "tag": case.tag,
            "tag_x0": case.tag_box[0],
            "tag_y0": case.tag_box[1],
            "tag_x1": case.tag_box[2],
            "tag_y1": case.tag_box[3],
            **({"site": case.site} if site is not None else {}),
        }
        done.append((row, digest.hexdigest()))
    return done


def _write_dataset(out: Path, params: dict, workers: int = 1) -> str:
    """Write all images, masks and the annotation table; return a SHA-256 over every image's
    pixel digest, in class and index order (the same however many workers wrote them)."""
    size, seed, shortcut = params["image_size"], params["seed"], params["shortcut"]
    jobs = []
    sources, bias = params.get("sources", 1), params.get("source_bias", 0.0)  # absent: a single-source demo
    for class_index, class_name in enumerate(params["classes"]):
        for k in ("images", "masks", "lesion_masks"):
            (out / class_name / k).mkdir(parents=True)
        n = class_count(params, class_name)
        jobs += [(str(out), class_name, s, min(s + 256, n + 1), size, seed, shortcut, class_index, sources, bias)
                 for s in range(1, n + 1, 256)]
    total = sum(job[3] - job[2] for job in jobs)
    if workers > 1 and len(jobs) > 1:
        # spawn: workers need only numpy and PIL, never the parent's threads or CUDA state
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(tracked(pool.map(_write_images, jobs), "phantom", total, step=len))
    else:
        results = [_write_images(job) for job in tracked(jobs, "phantom", total, step=lambda job: job[3] - job[2])]
    rows = [row for chunk in results for row, _ in chunk]
    digest = hashlib.sha256("".join(d for chunk in results for _, d in chunk).encode())
    with open(out / ANNOTATIONS_FILE, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return digest.hexdigest()
