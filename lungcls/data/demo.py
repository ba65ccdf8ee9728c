"""The embedded demo data set: a deterministic synthetic chest X-ray phantom.

It is written to disk in the layout of the COVID-19 Radiography Database
(`<Class>/images/<Class>-<n>.png`, lung masks in `<Class>/masks/`), so the demo exercises the same
file-loading path as the real data. Each disease class has its finding at a known place, written to
`<Class>/lesion_masks/`, so Grad-CAM localisation can be scored against ground truth.

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
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lungcls.errors import LungclsError

try:  # POSIX; elsewhere concurrent first use is simply not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DEMO_CLASSES",
    "GENERATOR_VERSION",
    "DemoCase",
    "ensure_demo_dataset",
    "lesion_mask_path",
    "lung_mask_path",
    "render_demo_case",
]

# Bump whenever the pixels change, so existing demo folders are regenerated.
GENERATOR_VERSION = "lungcls-demo-phantom/1"
DEMO_CLASSES: tuple[str, ...] = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")
META_FILE = "demo.json"
ANNOTATIONS_FILE = "demo_annotations.csv"

# Which finding each supported class carries (None: clear lungs).
_FINDINGS: dict[str, str | None] = {
    "COVID": "ground_glass",
    "Lung_Opacity": "consolidation",
    "Normal": None,
    "Viral Pneumonia": "interstitial",
}

# Stream key of the class-independent confounders (ASCII "MARK"), in place of a class key.
_CONFOUNDER_STREAM = 0x4D41524B

# 5x7 bitmaps of the burned-in laterality markers.
_GLYPHS: dict[str, tuple[str, ...]] = {
    "L": ("10000", "10000", "10000", "10000", "10000", "10000", "11111"),
    "R": ("11110", "10001", "10001", "11110", "10100", "10010", "10001"),
}


@dataclass(frozen=True)
class DemoCase:
    """One rendered phantom: the image and its masks (uint8, 0/255 masks) plus its confounders."""

    image: np.ndarray
    lung_mask: np.ndarray
    lesion_mask: np.ndarray
    marker: str  # "L", "R" or "" (no marker)
    marker_box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels (exclusive end); zeros if none
    border_sides: str  # subset of "tblr": sides with a bright collimation edge


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
    images_per_class: int = 150,
    image_size: int = 128,
    seed: int = 0,
    classes: Sequence[str] = DEMO_CLASSES,
) -> Path:
    """Make sure `root` holds the demo data set for these parameters, generating it if needed.

    Returns at once when `root/demo.json` already matches. Otherwise the data set is generated into
    a temporary sibling folder and renamed into place, under a file lock next to `root`, so a
    crash never leaves a half-written data set and concurrent callers generate it only once. A
    non-empty `root` that is not a demo data set is refused rather than overwritten.
    """
    root = Path(root).expanduser()
    classes = tuple(classes)
    _validate(images_per_class, image_size, seed, classes)
    params = {
        "images_per_class": int(images_per_class),
        "image_size": int(image_size),
        "seed": int(seed),
        "classes": list(classes),
    }
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
                digest = _write_dataset(tmp, params)
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


def render_demo_case(class_name: str, index: int, image_size: int = 128, seed: int = 0) -> DemoCase:
    """Render one phantom in memory; exactly the pixels `ensure_demo_dataset` writes for it."""
    _validate(1, image_size, seed, (class_name,))
    class_key = zlib.crc32(class_name.encode("utf-8"))
    # Anatomy, exposure and finding depend on the class; confounders only on (seed, index), so
    # markers and borders are identical across classes and carry no label signal at all.
    anatomy = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, class_key, index])))
    confound = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, _CONFOUNDER_STREAM, index])))
    return _render(int(image_size), anatomy, confound, _FINDINGS[class_name])


# --------------------------------------------------------------------------------------------
# Folder management
# --------------------------------------------------------------------------------------------


def _validate(images_per_class: int, image_size: int, seed: int, classes: tuple[str, ...]) -> None:
    """Reject bad parameters with a message that says what is allowed."""
    if not isinstance(images_per_class, (int, np.integer)) or images_per_class < 1:
        raise LungclsError(f"dataset.demo.images_per_class must be a positive integer, got {images_per_class!r}")
    if not isinstance(image_size, (int, np.integer)) or not 32 <= image_size <= 2048:
        raise LungclsError(f"dataset.demo.source_size must be an integer in [32, 2048], got {image_size!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise LungclsError(f"dataset.demo.seed must be a non-negative integer, got {seed!r}")
    if not classes or len(set(classes)) != len(classes):
        raise LungclsError(f"the demo classes must be a non-empty list without repeats, got {list(classes)}")
    unknown = [c for c in classes if c not in _FINDINGS]
    if unknown:
        raise LungclsError(f"the demo data set has no class {unknown[0]!r}; choose from {list(_FINDINGS)}")


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
    last = params["images_per_class"]
    return all((root / c / "images" / _image_name(c, last)).is_file() for c in params["classes"])


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


def _write_dataset(out: Path, params: dict) -> str:
    """Write all images, masks and the annotation table; return the SHA-256 of all pixels."""
    size, seed, n = params["image_size"], params["seed"], params["images_per_class"]
    digest = hashlib.sha256()
    rows = []
    for class_name in params["classes"]:
        dirs = {k: out / class_name / k for k in ("images", "masks", "lesion_masks")}
        for d in dirs.values():
            d.mkdir(parents=True)
        for i in range(1, n + 1):
            case = render_demo_case(class_name, i, size, seed)
            name = _image_name(class_name, i)
            arrays = {"images": case.image, "masks": case.lung_mask, "lesion_masks": case.lesion_mask}
            for key, arr in arrays.items():
                Image.fromarray(arr).save(dirs[key] / name)  # 2-D uint8: 8-bit grayscale "L"
                digest.update(arr.tobytes())
            rows.append(
                {
                    "path": f"{class_name}/images/{name}",
                    "label": class_name,
                    "marker": case.marker,
                    "marker_x0": case.marker_box[0],
                    "marker_y0": case.marker_box[1],
                    "marker_x1": case.marker_box[2],
                    "marker_y1": case.marker_box[3],
                    "border_sides": case.border_sides,
                    "lesion_pixels": int(np.count_nonzero(case.lesion_mask)),
                }
            )
    with open(out / ANNOTATIONS_FILE, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Rendering. Coordinates are normalised: x, y in [-1, 1], image left = patient's right.
# Pixel arrays are float32 and only +, -, *, /, sqrt and comparisons touch them, with Python-float
# scalars (which keep float32 under both NumPy 1 and 2 promotion rules): bit-identical everywhere.
# --------------------------------------------------------------------------------------------


def _clip01(x: np.ndarray) -> np.ndarray:
    return np.minimum(np.maximum(x, 0.0), 1.0)


def _smoothstep(edge0: float | np.ndarray, edge1: float | np.ndarray, x: np.ndarray) -> np.ndarray:
    """0 before edge0, 1 after edge1 (edges may be reversed), C1-smooth in between."""
    t = x - edge0
    t /= edge1 - edge0
    np.maximum(t, 0.0, out=t)
    np.minimum(t, 1.0, out=t)
    return t * t * (3.0 - 2.0 * t)


def _value_noise(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """Smooth random field (about unit variance) with `cells` features across the image."""
    g = rng.standard_normal((cells + 1, cells + 1), dtype=np.float32)
    pos = (np.arange(n) + 0.5) * (cells / n)
    i0 = np.minimum(pos.astype(np.int64), cells - 1)
    f = pos - i0
    w = (f * f * (3.0 - 2.0 * f)).astype(np.float32)
    left, right = g[:, i0], g[:, i0 + 1]
    rows = left + (right - left) * w[None, :]  # interpolated along x at every grid row
    top, bottom = rows[i0], rows[i0 + 1]
    return top + (bottom - top) * w[:, None]


def _ridges(noise: np.ndarray, width: float) -> np.ndarray:
    """Thin bright lines along the zero crossings of a smooth field: a branching network."""
    return _clip01(1.0 - np.abs(noise) / width)


def _blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian-like blur by repeated [1, 2, 1]/4 passes (exact weights, fixed summation order)."""
    for _ in range(int(round(2.0 * sigma_px * sigma_px))):
        p = np.pad(img, ((0, 0), (1, 1)), mode="edge")
        img = (p[:, :-2] + 2.0 * p[:, 1:-1] + p[:, 2:]) * 0.25
        p = np.pad(img, ((1, 1), (0, 0)), mode="edge")
        img = (p[:-2] + 2.0 * p[1:-1] + p[2:]) * 0.25
    return img


def _blob(X: np.ndarray, Y: np.ndarray, x: float, y: float, rx: float, ry: float) -> np.ndarray:
    """Squared elliptic distance from (x, y) in units of the radii."""
    ex, ey = (X - x) / rx, (Y - y) / ry
    return ex * ex + ey * ey


def _segment_distance(X: np.ndarray, Y: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Distance from every pixel to the segment (x0, y0)-(x1, y1)."""
    dx, dy = x1 - x0, y1 - y0
    t = _clip01(((X - x0) * dx + (Y - y0) * dy) / (dx * dx + dy * dy))
    ex, ey = X - x0 - t * dx, Y - y0 - t * dy
    return np.sqrt(ex * ex + ey * ey)


@dataclass(frozen=True)
class _Pose:
    """Patient placement: body coordinates = rotate(pixel coordinates - shift) / scale."""

    cos: float
    sin: float
    scale: float
    tx: float
    ty: float

    def body_grid(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        c = ((np.arange(n) + 0.5) * (2.0 / n) - 1.0).astype(np.float32)
        gx, gy = c[None, :] - self.tx, c[:, None] - self.ty
        return (self.cos * gx + self.sin * gy) / self.scale, (self.cos * gy - self.sin * gx) / self.scale

    def pixel(self, x: float, y: float, n: int) -> tuple[int, int]:
        """Row and column of the pixel nearest to body point (x, y) (may lie outside the image)."""
        gx = self.scale * (self.cos * x - self.sin * y) + self.tx
        gy = self.scale * (self.sin * x + self.cos * y) + self.ty
        return int(np.floor((gy + 1.0) * n / 2.0)), int(np.floor((gx + 1.0) * n / 2.0))


@dataclass(frozen=True)
class _Anatomy:
    """Per-patient shape parameters, in normalised body coordinates."""

    width: float  # habitus
    height: float  # depth of inspiration
    heart: tuple[float, float, float]  # centre x, centre y, size
    lungs: dict[int, dict[str, float]]  # per side (-1: image left, +1: image right)


def _draw_anatomy(uni: Callable[[float, float], float]) -> _Anatomy:
    width, height = uni(0.92, 1.06), uni(0.93, 1.05)
    heart = (uni(0.03, 0.08), 0.4 * height + uni(-0.03, 0.03), uni(0.9, 1.12))
    lungs = {}
    for sgn in (-1, 1):
        top, bottom = uni(-0.8, -0.72), 0.74 * height
        lungs[sgn] = {
            "cx": sgn * uni(0.37, 0.4) * width,
            "hw": uni(0.28, 0.31) * width,
            "cy": 0.5 * (top + bottom),
            "hh": 0.5 * (bottom - top),
            "dome": (0.36 if sgn < 0 else 0.42) * height + uni(-0.04, 0.04),
            "hilum_y": uni(-0.12, -0.02) * height,
        }
    return _Anatomy(width, height, heart, lungs)


def _lateral_profile(v: np.ndarray | float) -> np.ndarray | float:
    """Lateral half-width factor along the lung's height (v: -1 apex .. 1 base): narrow apex."""
    return 0.62 + 0.38 * np.minimum(np.maximum((v + 1.0) / 1.2, 0.0), 1.0)


def _medial_profile(v: np.ndarray) -> np.ndarray:
    """Medial half-width factor: the mediastinal border is nearly straight."""
    return 0.8 + 0.2 * _clip01((v + 1.0) / 0.6)


def _organs(X: np.ndarray, Y: np.ndarray, a: _Anatomy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Soft (0..1) lung fields, heart and sub-diaphragmatic region at body coordinates X, Y."""
    hx, hy, hs = a.heart
    hdx = (X - hx) / np.where(X > hx, np.float32(0.36 * hs), np.float32(0.2 * hs))
    hdy = (Y - hy) / (0.4 * hs)
    heart = _smoothstep(1.0, 0.8, hdx * hdx + hdy * hdy)
    lungs = np.zeros(X.shape, np.float32)
    abdomen = np.zeros(X.shape, np.float32)
    for sgn, g in a.lungs.items():
        lv = (Y - g["cy"]) / g["hh"]
        lu = (X - g["cx"]) * (sgn / g["hw"])
        q = lu / np.where(lu > 0.0, _lateral_profile(lv), _medial_profile(lv))
        shape = _smoothstep(1.0, 0.88, q * q + lv * lv)
        ddx = (X - sgn * 0.32 * a.width) / 0.42
        dome_y = g["dome"] + 0.3 * ddx * ddx  # highest mid-lung, down at both sulci
        below = _smoothstep(dome_y - 0.02, dome_y + 0.02, Y)
        abdomen = np.maximum(abdomen, below * _smoothstep(-0.02, 0.02, X * sgn))
        lungs += shape * (1.0 - below) * _smoothstep(0.05, 0.09, X * sgn)
    return _clip01(lungs) * (1.0 - heart), heart, abdomen


def _lung_point(
    uni: Callable[[float, float], float],
    lung_at: Callable[[float, float], float],
    a: _Anatomy,
    sgn: int,
    u_range: tuple[float, float],
    v_range: tuple[float, float],
) -> tuple[float, float]:
    """A random point well inside one lung; u: 0 medial .. 1 lateral, v: -1 apex .. 1 base."""
    g = a.lungs[sgn]
    x = y = 0.0
    for _ in range(40):
        u, v = uni(*u_range), uni(*v_range)
        x = g["cx"] + sgn * u * float(_lateral_profile(v)) * g["hw"]
        y = g["cy"] + v * g["hh"]
        if lung_at(x, y) > 0.9:
            break
    return x, y


def _finding(
    kind: str,
    rng: np.random.Generator,
    uni: Callable[[float, float], float],
    lung_at: Callable[[float, float], float],
    X: np.ndarray,
    Y: np.ndarray,
    a: _Anatomy,
    hilum_dist: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Opacity pattern (0..1), its envelope (where the finding is) and its peak opacity."""
    n = X.shape[0]
    if kind == "ground_glass":  # peripheral, bilateral, lower-zone hazy patches
        env = np.zeros((n, n), np.float32)
        for sgn in (-1, 1):
            for _ in range(int(rng.integers(1, 4))):
                x, y = _lung_point(uni, lung_at, a, sgn, (0.5, 0.9), (0.05, 0.7))
                r2 = _blob(X, Y, x, y, uni(0.11, 0.18), uni(0.12, 0.2))
                env = np.maximum(env, _smoothstep(1.0, 0.3, r2))
        texture = 0.7 + 0.3 * np.minimum(np.maximum(_value_noise(rng, n, 22), -1.0), 1.0)
        return env * texture, env, uni(0.14, 0.26)
    if kind == "consolidation":  # one dense, well-defined lobar opacity
        sgn = -1 if rng.random() < 0.5 else 1
        g = a.lungs[sgn]
        lobe = ("upper", "lower", "middle")[int(rng.integers(0, 3 if sgn < 0 else 2))]
        slope = uni(-0.25, 0.25)
        if lobe == "upper":
            x, y = _lung_point(uni, lung_at, a, sgn, (0.2, 0.6), (-0.5, -0.2))
            fissure = g["cy"] + g["hh"] * uni(-0.15, 0.05)
            lobe_region = _smoothstep(fissure + 0.01, fissure - 0.01, Y - slope * (X - g["cx"]))
        elif lobe == "lower":
            x, y = _lung_point(uni, lung_at, a, sgn, (0.2, 0.6), (0.3, 0.6))
            fissure = g["cy"] + g["hh"] * uni(-0.05, 0.2)
            lobe_region = _smoothstep(fissure - 0.01, fissure + 0.01, Y - slope * (X - g["cx"]))
        else:  # right middle lobe: medial, against the heart border
            x, y = _lung_point(uni, lung_at, a, sgn, (0.0, 0.4), (0.05, 0.35))
            fissure = g["cy"] + g["hh"] * uni(-0.12, 0.0)
            lobe_region = _smoothstep(fissure - 0.01, fissure + 0.01, Y - slope * 0.3 * (X - g["cx"]))
        r2 = _blob(X, Y, x, y, uni(0.2, 0.3), uni(0.22, 0.32))
        env = _smoothstep(1.0, 0.75, r2) * lobe_region
        bronchi = _ridges(_value_noise(rng, n, 14), 0.12)  # air bronchograms
        texture = 0.92 + 0.08 * np.minimum(np.maximum(_value_noise(rng, n, 20), -1.0), 1.0) - 0.25 * bronchi
        return env * texture, env, uni(0.24, 0.38)
    if kind == "interstitial":  # diffuse bilateral reticular/streaky perihilar pattern
        reach = uni(0.55, 0.75)
        env = _smoothstep(reach, 0.25 * reach, hilum_dist)
        reticular = _ridges(_value_noise(rng, n, 26), 0.3)
        streaks = np.zeros((n, n), np.float32)
        for sgn in (-1, 1):
            hx, hy = sgn * 0.17, a.lungs[sgn]["hilum_y"]
            for _ in range(8):
                x, y = _lung_point(uni, lung_at, a, sgn, (0.3, 1.0), (-0.8, 0.8))
                dist = _segment_distance(X, Y, hx, hy, x, y) / 0.014
                streaks = np.maximum(streaks, 1.0 - dist * dist)
        pattern = _clip01(0.25 + 0.55 * reticular + 0.45 * np.maximum(streaks, 0.0))
        return env * pattern, env, uni(0.13, 0.24)
    raise ValueError(kind)


def _render(n: int, rng: np.random.Generator, confound: np.random.Generator, finding: str | None) -> DemoCase:
    """Compose one radiograph as an attenuation map (bright = dense), then expose and quantise."""

    def uni(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(rng.random())

    # Patient pose: rotation from a rational parametrisation (no sin/cos), scale and shift.
    t = uni(-0.035, 0.035)  # tan(angle / 2): about +-4 degrees
    cos_a, sin_a = (1.0 - t * t) / (1.0 + t * t), 2.0 * t / (1.0 + t * t)
    pose = _Pose(cos_a, sin_a, uni(0.88, 1.02), uni(-0.04, 0.04), uni(-0.02, 0.06))
    X, Y = pose.body_grid(n)
    aX = np.abs(X)
    a = _draw_anatomy(uni)

    # Body silhouette: barrel-shaped chest wall, shoulders sloping down from the neck, the neck.
    tw = 0.9 * a.width
    qx = X / tw
    slope = _clip01((aX - 0.2) / (tw - 0.2))
    shoulder_y = -0.9 + 0.32 * slope * slope
    barrel = Y - 0.2
    chest_wall = tw * (1.0 - 0.07 * barrel * barrel)
    torso = _smoothstep(chest_wall, chest_wall - 0.05, aX)
    torso *= _smoothstep(shoulder_y - 0.03, shoulder_y + 0.03, Y)
    neck_w = 0.2 + 0.06 * _clip01((Y + 0.75) / 0.2)  # flares into the shoulders
    body = np.maximum(torso, _smoothstep(neck_w + 0.03, neck_w - 0.02, aX))
    A = body * (0.42 + 0.12 * np.maximum(1.0 - qx * qx, 0.0) + 0.025 * _value_noise(rng, n, 6))

    lungs, heart, abdomen = _organs(X, Y, a)
    lung_mask = lungs > 0.5

    def lung_at(x: float, y: float) -> float:
        r, c = pose.pixel(x, y, n)
        return float(lungs[r, c]) if 0 <= r < n and 0 <= c < n else 0.0

    # Mediastinum and heart merge with the liver/spleen below; aortic knob, spine, trachea.
    mw = 0.1 + 0.04 * _clip01((Y + 0.5) / 0.9)
    mediastinum = _smoothstep(mw + 0.03, mw - 0.01, np.abs(X - 0.01))
    knob = _smoothstep(1.0, 0.6, _blob(X, Y, 0.11, -0.3, 0.08, 0.07))
    phase = (Y + 1.0) / (0.11 * a.height)
    tri = np.abs(phase - np.floor(phase) - 0.5) * 2.0  # 1 at the disc spaces
    spine = _smoothstep(0.075, 0.05, aX) * (0.75 + 0.25 * _smoothstep(0.85, 0.6, tri))
    trachea = _smoothstep(0.035, 0.02, np.abs(X - 0.01)) * _smoothstep(-0.2, -0.32, Y)
    soft = np.maximum(np.maximum(mediastinum, heart), abdomen)
    A += body * (0.1 * soft + 0.06 * knob + 0.07 * spine - 0.12 * trachea)

    # Lung fields: air; a little lighter at the apices and bases, where more tissue overlies them.
    depth = uni(0.27, 0.33) * (1.0 - 0.18 * _smoothstep(0.0, 0.6, Y) - 0.15 * _smoothstep(-0.55, -0.8, Y))
    A -= lungs * depth

    # Ribs: posterior ribs arch out and down from the spine (bright cortex), anterior ribs run
    # down and in; each pixel belongs to its nearest rib of each kind.
    base, spacing = uni(-0.74, -0.68), uni(0.1, 0.115) * a.height
    s = (Y - base + 0.3 * aX - 0.85 * aX * aX) / spacing
    s = s - 0.02 * s * s  # lower ribs lie further apart
    k = np.floor(s + 0.5)
    dy = (s - k) * spacing / (0.03 + 0.002 * np.minimum(np.maximum(k, 0.0), 9.0))
    dy2 = dy * dy
    ribs = np.where((dy2 < 1.0) & (k >= 0.0) & (k <= 9.0), (1.0 - dy2) * (0.55 + 0.45 * dy2), 0.0)
    e = 0.78 - aX
    s = (Y - base - 0.08 - 0.42 * e + 0.1 * e * e) / (1.15 * spacing)
    k = np.floor(s + 0.5)
    dy = (s - k) * (1.15 * spacing / 0.045)
    front = np.where((k >= 0.0) & (k <= 5.0), np.maximum(1.0 - dy * dy, 0.0), 0.0)
    ribs += 0.45 * front * _smoothstep(0.2, 0.3, aX)
    rib_region = _smoothstep(0.05, 0.1, aX) * _smoothstep(0.96, 0.82, aX / chest_wall) * (1.0 - 0.6 * abdomen)
    A += uni(0.07, 0.11) * ribs * rib_region * body

    # Clavicles: from the sternum out and slightly up, with a gentle sag.
    for sgn in (-1, 1):
        tt = _clip01((X * sgn - 0.06) / 0.56)
        cdy = (Y - (uni(-0.66, -0.6) - 0.1 * tt + 0.08 * tt * (1.0 - tt))) / (0.035 - 0.01 * tt)
        ends = _smoothstep(0.04, 0.08, X * sgn) * _smoothstep(0.66, 0.6, X * sgn)
        A += 0.16 * np.maximum(1.0 - cdy * cdy, 0.0) * ends * body

    # Normal broncho-vascular markings: ridged noise fanning out from each hilum.
    hilum_dist = np.full((n, n), 9.0, np.float32)
    for sgn in (-1, 1):
        vx, vy = X - sgn * 0.17, Y - a.lungs[sgn]["hilum_y"]
        hilum_dist = np.minimum(hilum_dist, np.sqrt(vx * vx + vy * vy))
    fan = np.maximum(1.0 - hilum_dist / 0.7, 0.0)
    A += lungs * fan * (uni(0.06, 0.1) * _ridges(_value_noise(rng, n, 12), 0.3) + 0.06 * fan)

    # The class-specific finding, confined to the lungs.
    lesion_mask = np.zeros((n, n), dtype=bool)
    if finding is not None:
        pattern, envelope, opacity = _finding(finding, rng, uni, lung_at, X, Y, a, hilum_dist)
        A += opacity * pattern * lungs
        lesion_mask = (envelope > 0.3) & lung_mask

    # Exposure and detector: contrast, brightness, tone curve, blur, quantum noise.
    contrast, offset, bias = uni(0.8, 1.2), uni(-0.09, 0.09), uni(-0.35, 0.35)
    A = _clip01((A - 0.35) * contrast + 0.35 + offset)
    A = A * (1.0 + bias) / (1.0 + bias * A)
    A = _blur(A, 0.006 * n)
    A = A + uni(0.006, 0.022) * rng.standard_normal((n, n), dtype=np.float32)

    marker, box, sides = _burn_in_confounders(A, confound)
    image = np.floor(_clip01(A) * 255.0 + 0.5).astype(np.uint8)
    return DemoCase(
        image=image,
        lung_mask=lung_mask.astype(np.uint8) * 255,
        lesion_mask=lesion_mask.astype(np.uint8) * 255,
        marker=marker,
        marker_box=box,
        border_sides=sides,
    )


def _burn_in_confounders(A: np.ndarray, rng: np.random.Generator) -> tuple[str, tuple[int, int, int, int], str]:
    """Draw a laterality marker near a top corner and, sometimes, bright collimation edges (in place)."""
    n = A.shape[0]
    marker, box, sides = "", (0, 0, 0, 0), ""
    if rng.random() < 0.9:
        marker = "L" if rng.random() < 0.5 else "R"
        cell = max(1, round(n / 80))
        glyph = np.array([[ch == "1" for ch in row] for row in _GLYPHS[marker]])
        glyph = np.repeat(np.repeat(glyph, cell, axis=0), cell, axis=1)
        gh, gw = glyph.shape
        mx = int(n * (0.04 + 0.06 * rng.random()))
        my = int(n * (0.03 + 0.05 * rng.random()))
        x0 = mx if rng.random() < 0.5 else n - mx - gw
        A[my : my + gh, x0 : x0 + gw][glyph] = 0.88 + 0.12 * rng.random()
        box = (x0, my, x0 + gw, my + gh)
    if rng.random() < 0.25:
        chosen = [s for s in "tblr" if rng.random() < 0.4] or ["tblr"[int(rng.random() * 4)]]
        value = 0.75 + 0.2 * rng.random()
        for side in chosen:
            w = max(2, int(n * (0.015 + 0.035 * rng.random())))
            if side == "t":
                A[:w] = value
            elif side == "b":
                A[-w:] = value
            elif side == "l":
                A[:, :w] = value
            else:
                A[:, -w:] = value
        sides = "".join(chosen)
    return marker, box, sides
