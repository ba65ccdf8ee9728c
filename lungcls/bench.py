"""``lungcls-bench``: how close the project's training loop comes to what the GPU can do.

One run, one set of settings (backbone, fine-tune, batch size, image size, precision, compile),
five measurements in images/s:

(a) ``ceiling``: the model's training step alone (forward, cross-entropy, backward, optimizer step)
    on tensors already on the device, already normalised, channels_last on CUDA;
(b) ``end_to_end``: the project's Lightning loop (``LungDataModule`` + ``LungClassifier`` +
    ``pl.Trainer`` from ``lungcls.training``) in steady state, warm-up excluded, no validation;
(c) ``epoch``: one whole ``trainer.fit`` epoch including validation, after a warm-up epoch;
(d) ``naive``: the usual ImageFolder-style loop on the same PNG files (PIL decode and torchvision
    transforms in DataLoader workers, fp32);
(e) ``gradcam``: ``lungcls.explain.gradcam.grad_cam`` on device-resident batches.

It prints a table with the ratios to the ceiling and the project's target ratios, and writes
everything to ``bench.json``. Without ``--data`` it generates (once, then reuses) a data set of the
COVID-19 Radiography Database's size and format: 21,165 grayscale 299x299 PNGs in four classes.
On a CPU it runs tiny defaults so CI can exercise every path; those numbers are not GPU numbers.

Timing rules: warm-up steps are excluded, the device is synchronised only at the edges of timed
windows (never inside the loop being measured), and the reported rate is the median over windows.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import copy
import gc
import json
import logging
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
from PIL import Image

from lungcls.errors import LungclsError

if TYPE_CHECKING:  # torch is imported lazily: data-generation workers should start fast
    from omegaconf import DictConfig

    from lungcls.data.datamodule import LungDataModule

log = logging.getLogger(__name__)

# The COVID-19 Radiography Database: images per class (21,165 in all), 299x299 grayscale PNGs.
DATABASE_COUNTS: dict[str, int] = {"COVID": 3616, "Lung_Opacity": 6012, "Normal": 10192, "Viral Pneumonia": 1345}
DATABASE_SIZE = 299
DATA_GENERATOR = "lungcls-bench-data/1"
DATA_META = "bench-data.json"

MEASUREMENTS: tuple[str, ...] = ("ceiling", "end_to_end", "epoch", "naive", "gradcam")
LETTERS = dict(zip("abcde", MEASUREMENTS))
LABELS = {
    "ceiling": "(a) ceiling: model step on device tensors",
    "end_to_end": "(b) end-to-end steady state (Lightning)",
    "epoch": "(c) whole epoch incl. validation",
    "naive": "(d) naive ImageFolder + DataLoader, fp32",
    "gradcam": "(e) Grad-CAM",
}
# (numerator, denominator) pairs written to bench.json; the table shows the first four.
RATIOS: tuple[tuple[str, str], ...] = (
    ("end_to_end", "ceiling"),
    ("epoch", "ceiling"),
    ("naive", "ceiling"),
    ("gradcam", "ceiling"),
    ("end_to_end", "naive"),
    ("epoch", "end_to_end"),
    ("gradcam", "end_to_end"),
)


@dataclass(frozen=True)
class Target:
    """A goal the project set itself; judged only on CUDA."""

    name: str
    key: str  # a ratio "x/y" or a measurement name (absolute images/s)
    threshold: float
    backbones: tuple[str, ...] = ()  # empty: every backbone
    needs_compile: bool = False


TARGETS: tuple[Target, ...] = (
    Target("end-to-end >= 0.9 x ceiling", "end_to_end/ceiling", 0.9, ("resnet50", "vgg19_bn")),
    Target("end-to-end >= 0.8 x ceiling", "end_to_end/ceiling", 0.8, ("alexnet",)),
    Target("end-to-end >= 3 x naive", "end_to_end/naive", 3.0, ("resnet50",)),
    Target("end-to-end >= 5,000 img/s with compile", "end_to_end", 5000.0, ("resnet50",), needs_compile=True),
    Target("whole epoch >= 0.75 x steady state", "epoch/end_to_end", 0.75, ("resnet50",)),
    Target("Grad-CAM >= 1.5 x training step", "gradcam/ceiling", 1.5),
)
# The targets were set for a full fine-tune in bf16; other settings are reported but flagged.
TARGET_SETTINGS = {"finetune": "full", "precision": "bf16"}

# Defaults per device: the full database on a GPU, a few seconds of work on a CPU.
GPU_DEFAULTS = dict(backbone="resnet50", images=sum(DATABASE_COUNTS.values()), source_size=DATABASE_SIZE,
                    image_size=224, batch_size=256, steps=50, warmup=10, repeats=3, sync_check=2)
CPU_DEFAULTS = dict(backbone="resnet18", images=64, source_size=DATABASE_SIZE,
                    image_size=64, batch_size=8, steps=3, warmup=1, repeats=1, sync_check=0)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# --------------------------------------------------------------------------------------------
# Data set generation
# --------------------------------------------------------------------------------------------


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


def synthetic_xray(rng: np.random.Generator, size: int) -> np.ndarray:
    """A chest-X-ray-like uint8 image: torso, two dark lung fields, spine, smooth texture and
    detector noise. Realism is irrelevant for throughput; the noise gives PNGs a realistic size
    (about half the raw pixels), so decoding costs what it costs on real radiographs."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    x, y = c[None, :], c[:, None]
    img = 0.55 - 0.25 * x * x + 0.05 * y
    for side in (-1, 1):
        cx, cy = side * rng.uniform(0.33, 0.42), rng.uniform(-0.1, 0.05)
        rx, ry = rng.uniform(0.22, 0.3), rng.uniform(0.45, 0.6)
        d = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
        img = img - rng.uniform(0.25, 0.35) * np.clip(1.2 - d, 0, 1)
    img = img + 0.15 * np.exp(-((x / 0.08) ** 2))
    coarse = rng.standard_normal((12, 12)).astype(np.float32)
    img = img + 0.04 * np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.BICUBIC))
    img = img + rng.normal(0.0, 0.012, (size, size)).astype(np.float32)
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)


def _write_images(job: tuple[str, str, int, int, int, int, int]) -> int:
    """Worker: write images ``start..stop-1`` (1-based names) of one class."""
    root, name, label, start, stop, size, seed = job
    folder = Path(root) / name / "images"
    for n in range(start, stop):
        rng = np.random.default_rng([seed, label, n])
        Image.fromarray(synthetic_xray(rng, size), mode="L").save(folder / f"{name}-{n}.png")
    return stop - start


def _dataset_meta(images: int, size: int, seed: int) -> dict[str, Any]:
    return {"generator": DATA_GENERATOR, "images": images, "size": size, "seed": seed, "counts": class_counts(images)}


def _dataset_is_current(root: Path, meta: dict) -> bool:
    try:
        found = json.loads((root / DATA_META).read_text())
    except (OSError, ValueError):
        return False
    if found != meta:
        return False
    return all((root / c / "images" / f"{c}-{n}.png").is_file() for c, n in meta["counts"].items())


def ensure_bench_dataset(root: str | Path, images: int, size: int = DATABASE_SIZE, seed: int = 0, workers: int | None = None) -> Path:
    """A synthetic data set in the database layout (``<Class>/images/<Class>-<n>.png``) at ``root``,
    generated in parallel on first use and reused afterwards (``bench-data.json`` records what it
    holds). It is written to a temporary sibling and renamed into place, so an interrupted run never
    leaves a half-written set behind."""
    root = Path(root).expanduser()
    if size < 16:
        raise LungclsError(f"--source-size={size} is too small; use 16 or more (the database is {DATABASE_SIZE})")
    meta = _dataset_meta(images, size, seed)
    if _dataset_is_current(root, meta):
        return root
    if root.exists() and any(root.iterdir()) and not (root / DATA_META).is_file():
        raise LungclsError(f"{root} is not empty and is not a generated bench data set; choose another --gen-dir")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        jobs = []
        chunk = 256
        for label, (name, n) in enumerate(meta["counts"].items()):
            (tmp / name / "images").mkdir(parents=True)
            jobs += [(str(tmp), name, label, s, min(s + chunk, n + 1), size, seed) for s in range(1, n + 1, chunk)]
        workers = max(1, min(workers or _cpu_count(), len(jobs)))
        if workers == 1 or images <= 2 * chunk:
            for job in jobs:
                _write_images(job)
        else:
            # spawn: the workers need only numpy and PIL, never the parent's threads or CUDA state
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                for _ in pool.map(_write_images, jobs):
                    pass
        (tmp / DATA_META).write_text(json.dumps(meta, indent=2) + "\n")
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if _dataset_is_current(root, meta):  # a concurrent run finished it first
            return root
        raise
    return root


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


@dataclass
class Settings:
    """Everything a measurement depends on, resolved for the device (and written to bench.json)."""

    device: str
    backbone: str
    finetune: str
    optimizer: str
    augment: str
    precision: str  # bf16 | fp32
    compile: bool
    batch_size: int
    image_size: int
    images: int
    source_size: int
    steps: int
    warmup: int
    repeats: int
    warmup_epochs: int
    workers: int
    cache: str
    cudnn_benchmark: bool
    sync_check: int
    checkpoints: bool
    data: str | None
    gen_dir: str
    out: str
    skip: list[str] = field(default_factory=list)
    seed: int = 1

    @property
    def lightning_precision(self) -> str:
        return "bf16-mixed" if self.precision == "bf16" else "32-true"


def _conf_names(group: str) -> list[str]:
    from lungcls.cli import CONF_DIR

    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lungcls-bench",
        description="Measure training throughput: model-step ceiling, the project's end-to-end loop, a whole "
        "epoch with validation, a naive ImageFolder loop and Grad-CAM, with the same settings; write bench.json.",
    )
    p.add_argument("--backbone", choices=_conf_names("backbone"), help="default: resnet50 on CUDA, resnet18 on CPU")
    p.add_argument("--finetune", default="full", choices=_conf_names("finetune"))
    p.add_argument("--optimizer", default="adam", choices=_conf_names("optimizer"), help="the same optimizer in every training measurement")
    p.add_argument("--augment", default="default", choices=_conf_names("augment"), help="GPU augmentation of the end-to-end loop")
    p.add_argument("--batch-size", type=int, help="default: 256 on CUDA, 8 on CPU")
    p.add_argument("--image-size", type=int, help="working size in pixels; default: 224 on CUDA, 64 on CPU")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"), help="auto: bf16 on GPUs that support it, else fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile the backbone (ceiling and Lightning loop)")
    p.add_argument("--images", type=int, help="size of the generated data set; default: 21165 on CUDA, 64 on CPU")
    p.add_argument("--source-size", type=int, help=f"side of the generated PNGs (default {DATABASE_SIZE}, as in the database)")
    p.add_argument("--data", help="an existing data set in the database layout (<Class>/images/*.png) instead of generating one "
                   "(all its images are used; --images and --source-size do not apply)")
    p.add_argument("--gen-dir", help="where generated data sets and decoded caches are kept for reuse (default: $LUNGCLS_DATA_DIR or outputs/data)")
    p.add_argument("--steps", type=int, help="timed steps per measurement; default: 50 on CUDA, 3 on CPU")
    p.add_argument("--warmup", type=int, help="untimed steps before each measurement; default: 10 on CUDA, 1 on CPU")
    p.add_argument("--repeats", type=int, help="timed windows per measurement (the median is reported); default: 3 on CUDA, 1 on CPU")
    p.add_argument("--warmup-epochs", type=int, default=1, help="untimed epochs before the timed epoch of (c)")
    p.add_argument("--checkpoints", action="store_true", help="(c) also saves best.ckpt and last.ckpt every epoch, as lungcls-train does")
    p.add_argument("--workers", type=int, help="DataLoader workers of the naive loop (default: all cores)")
    p.add_argument("--cache", default="auto", choices=("auto", "ram", "gpu"), help="where the end-to-end loop keeps the decoded images")
    p.add_argument("--cudnn-benchmark", action="store_true", help="set torch.backends.cudnn.benchmark for every measurement")
    p.add_argument("--sync-check", type=int, help="steps after the timed end-to-end windows during which host syncs are counted (CUDA; 0: off)")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--threads", type=int, help="torch CPU threads for the run (default: torch's choice)")
    p.add_argument("--skip", default="", help=f"comma-separated measurements to skip: {', '.join(MEASUREMENTS)} (or a-e)")
    p.add_argument("--out", help="output folder (default: outputs/bench/<timestamp>)")
    p.add_argument("--check-targets", action="store_true", help="exit with status 3 when a target is missed (CUDA only)")
    return p


def _parse_skip(text: str) -> list[str]:
    skip = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        name = LETTERS.get(item, item.replace("-", "_"))
        if name not in MEASUREMENTS:
            raise LungclsError(f"--skip: unknown measurement '{item}'; use {', '.join(MEASUREMENTS)} or the letters a-e")
        skip.append(name)
    return skip


def resolve_settings(args: argparse.Namespace) -> Settings:
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise LungclsError("--device cuda: no CUDA device is available; use --device cpu or auto")
    device = "cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    d = GPU_DEFAULTS if device == "cuda" else CPU_DEFAULTS
    pick = lambda name: getattr(args, name) if getattr(args, name) is not None else d[name]  # noqa: E731
    precision = args.precision
    if precision == "auto":
        precision = "bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    gen_dir = args.gen_dir or os.environ.get("LUNGCLS_DATA_DIR") or "outputs/data"
    out = args.out or str(Path("outputs") / "bench" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
    s = Settings(
        device=device,
        backbone=pick("backbone"),
        finetune=args.finetune,
        optimizer=args.optimizer,
        augment=args.augment,
        precision=precision,
        compile=bool(args.compile),
        batch_size=pick("batch_size"),
        image_size=pick("image_size"),
        images=pick("images"),
        source_size=pick("source_size"),
        steps=pick("steps"),
        warmup=pick("warmup"),
        repeats=pick("repeats"),
        warmup_epochs=args.warmup_epochs,
        workers=args.workers if args.workers is not None else _cpu_count(),
        cache="ram" if device == "cpu" else args.cache,
        cudnn_benchmark=bool(args.cudnn_benchmark),
        sync_check=pick("sync_check") if device == "cuda" else 0,
        checkpoints=bool(args.checkpoints),
        data=args.data,
        gen_dir=gen_dir,
        out=out,
        skip=_parse_skip(args.skip),
    )
    for name in ("batch_size", "image_size", "steps", "repeats"):
        if getattr(s, name) < 1:
            raise LungclsError(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("warmup", "warmup_epochs", "workers", "sync_check"):
        if getattr(s, name) < 0:
            raise LungclsError(f"--{name.replace('_', '-')} must not be negative")
    if s.backbone == "logistic":
        raise LungclsError("--backbone logistic has no convolutional step worth benchmarking; choose a CNN backbone")
    return s


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def window_edges(first: int, steps: int, windows: int) -> list[int]:
    """Step indices where timed windows start (the last one is where the last window ends)."""
    windows = max(1, min(windows, steps))
    return [first + steps * i // windows for i in range(windows + 1)]


def summarize_windows(images: Sequence[int], clock: Sequence[float]) -> dict[str, Any]:
    """images/s per window and their median; ``clock`` has one reading per window edge."""
    seconds = [b - a for a, b in zip(clock, clock[1:])]
    rates = [n / t for n, t in zip(images, seconds) if t > 0]
    if not rates:
        raise RuntimeError("no timed window completed")
    return {
        "images_per_s": statistics.median(rates),
        "mean_images_per_s": sum(images) / sum(seconds),
        "window_images_per_s": rates,
        "timed_images": int(sum(images)),
        "timed_seconds": sum(seconds),
    }


def time_steps(step: Callable[[], int], device: str, warmup: int, steps: int, repeats: int) -> dict[str, Any]:
    """Run ``warmup`` untimed steps, then ``steps`` timed ones in ``repeats`` windows. ``step``
    returns how many images it processed."""
    for _ in range(warmup):
        step()
    edges = window_edges(0, steps, repeats)
    _sync(device)
    clock, images = [time.perf_counter()], []
    for a, b in zip(edges, edges[1:]):
        n = 0
        for _ in range(b - a):
            n += step()
        _sync(device)
        clock.append(time.perf_counter())
        images.append(n)
    return {**summarize_windows(images, clock), "warmup_steps": warmup, "timed_steps": steps}


def _autocast(s: Settings) -> contextlib.AbstractContextManager:
    import torch

    if s.precision == "bf16":
        return torch.autocast(device_type=s.device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------
# The project's configuration, data module and model
# --------------------------------------------------------------------------------------------


def compose_config(s: Settings, data_root: Path, run_dir: Path) -> DictConfig:
    """The training config a user would get (conf/train.yaml), pointed at the bench data set."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from lungcls.cli import CONF_DIR

    overrides = [
        "dataset=covid_radiography",
        f"backbone={s.backbone}",
        f"finetune={s.finetune}",
        f"optimizer={s.optimizer}",
        f"augment={s.augment}",
        "scheduler=none",
        "logger=none",
        "trainer=default",
    ]
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR, job_name="bench"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.seed = s.seed
        cfg.compile = s.compile
        cfg.paths.output_dir = str(run_dir)
        cfg.backbone.weights = None  # throughput does not depend on the weights; never download
        ds = cfg.dataset
        ds.root = str(data_root)
        ds.image_size = s.image_size
        ds.batch_size = s.batch_size
        ds.cache = s.cache
        ds.cache_dir = str(Path(s.gen_dir) / "decoded")
        ds.max_per_class = None
        tr = cfg.trainer
        tr.accelerator = "gpu" if s.device == "cuda" else "cpu"
        tr.devices = 1
        tr.precision = s.lightning_precision
        tr.benchmark = s.cudnn_benchmark
        tr.enable_checkpointing = False
        tr.enable_progress_bar = False
        tr.enable_model_summary = False
        tr.min_epochs = None
        tr.num_sanity_val_steps = 0
    return cfg


def _trainer(cfg: DictConfig, callbacks: list, **trainer_overrides: Any):
    from omegaconf import open_dict

    from lungcls.training import build_trainer

    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        for k, v in trainer_overrides.items():
            cfg.trainer[k] = v
    return build_trainer(cfg, callbacks, [])


# --------------------------------------------------------------------------------------------
# (a) ceiling
# --------------------------------------------------------------------------------------------


def measure_ceiling(s: Settings, cfg: DictConfig, dm: LungDataModule) -> dict[str, Any]:
    """The training step of the same network, fine-tune, optimizer and precision on random tensors
    that are already on the device, normalised, 3-channel and channels_last (as the model's forward
    would hand them to the backbone): what the end-to-end loop could reach with free data."""
    import torch
    import torch.nn.functional as F

    from lungcls.training import make_model

    dev = torch.device(s.device)
    model = make_model(cfg, dm).to(dev)
    model.train()  # also keeps frozen BatchNorm layers in eval mode, as in training
    net = model.net
    if s.device == "cuda":  # what LungClassifier.on_fit_start does (compile only on CUDA, too)
        net = net.to(memory_format=torch.channels_last)
        if s.compile:
            net = torch.compile(net)
    optimizer = model.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    g = torch.Generator(device=dev).manual_seed(0)
    fmt = torch.channels_last if s.device == "cuda" else torch.contiguous_format
    x = torch.randn(s.batch_size, 3, s.image_size, s.image_size, device=dev, generator=g).contiguous(memory_format=fmt)
    y = torch.randint(0, len(dm.class_names), (s.batch_size,), device=dev, generator=g)
    weight = model.class_weights

    def step() -> int:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(s):
            logits = net(x)
        loss = F.cross_entropy(logits.float(), y, weight=weight)
        loss.backward()
        optimizer.step()
        return s.batch_size

    try:
        return time_steps(step, s.device, max(1, s.warmup), s.steps, s.repeats)
    finally:
        del model, net, optimizer, x, y
        _free_memory()


# --------------------------------------------------------------------------------------------
# (b) end-to-end steady state
# --------------------------------------------------------------------------------------------


def _short_site(filename: str, lineno: int) -> str:
    parts = Path(filename).parts
    return f"{'/'.join(parts[-3:])}:{lineno}"


def _make_steady_state_clock(device: str, edges: list[int], sync_check: int):
    """A Lightning callback that reads the clock at ``on_train_batch_start`` of the window edges
    (counting batches across epochs), so each window holds whole iterations: fetch, transfer,
    augmentation, step and hooks. Afterwards it can count host synchronisations for a few steps."""
    import pytorch_lightning as pl
    import torch

    class SteadyStateClock(pl.Callback):
        def __init__(self) -> None:
            self.k = 0
            self.clock: list[float] = []
            self.images = [0] * (len(edges) - 1)
            self.epochs: set[int] = set()
            self.sync_sites: Counter[str] = Counter()
            self.sync_steps = 0
            self._capture: Any = None
            self._records: list = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            k = self.k
            self.k += 1
            if sync_check and k == edges[-1] + sync_check:
                self._stop_capture()
                self.sync_steps = sync_check
            if k in edges:
                _sync(device)
                self.clock.append(time.perf_counter())
            if edges[0] <= k < edges[-1]:
                self.images[bisect.bisect_right(edges, k) - 1] += len(batch[1])
                self.epochs.add(trainer.current_epoch)
            if sync_check and k == edges[-1]:
                self._start_capture()

        def _start_capture(self) -> None:
            self._capture = warnings.catch_warnings(record=True)
            self._records = self._capture.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")

        def _stop_capture(self) -> None:
            if self._capture is None:
                return
            torch.cuda.set_sync_debug_mode("default")
            self._capture.__exit__(None, None, None)
            self._capture = None
            for w in self._records:
                if "synchroniz" in str(w.message):
                    self.sync_sites[_short_site(w.filename, w.lineno)] += 1

        def on_train_end(self, trainer, pl_module) -> None:
            self._stop_capture()

        def on_exception(self, trainer, pl_module, exception) -> None:
            self._stop_capture()

    return SteadyStateClock()


def measure_end_to_end(s: Settings, cfg: DictConfig, dm: LungDataModule) -> dict[str, Any]:
    """The project's loop: ``make_model`` + ``build_trainer`` + ``trainer.fit`` on the data module
    (decoded uint8 cache, per-batch augmentation on the device), validation off, timed after
    ``warmup`` iterations."""
    from lungcls.training import make_model

    edges = window_edges(max(1, s.warmup), s.steps, s.repeats)
    clock = _make_steady_state_clock(s.device, edges, s.sync_check)
    model = make_model(cfg, dm)
    trainer = _trainer(cfg, [clock], max_epochs=-1, max_steps=edges[-1] + s.sync_check + 1, limit_val_batches=0)
    try:
        trainer.fit(model, datamodule=dm)
        if len(clock.clock) != len(edges):
            raise RuntimeError(f"the loop stopped after {clock.k} batches, before the timed windows ended")
        out = {**summarize_windows(clock.images, clock.clock), "warmup_steps": edges[0], "timed_steps": s.steps}
        out["epochs_spanned"] = len(clock.epochs)
        if len(clock.epochs) > 1:
            out["note"] = "the timed steps span an epoch boundary (end-of-epoch work is included)"
        if clock.sync_steps:
            total = sum(clock.sync_sites.values())
            out["host_syncs_per_step"] = total / clock.sync_steps
            out["host_sync_sites"] = dict(clock.sync_sites.most_common())
        return out
    finally:
        del model, trainer
        _free_memory()


# --------------------------------------------------------------------------------------------
# (c) whole epoch with validation
# --------------------------------------------------------------------------------------------


def _make_epoch_clock(device: str, timed_epoch: int):
    """Times epoch ``timed_epoch`` from its start to the end of training, i.e. training batches,
    validation and the end-of-epoch metric work, and counts the images of both parts."""
    import pytorch_lightning as pl

    class EpochClock(pl.Callback):
        def __init__(self) -> None:
            self.t0 = self.t_val = self.t1 = None
            self.train_images = self.val_images = 0

        def _timed(self, trainer) -> bool:
            return trainer.current_epoch == timed_epoch and not trainer.sanity_checking

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if self._timed(trainer):
                _sync(device)
                self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if self._timed(trainer):
                self.train_images += len(batch[1])

        def on_validation_start(self, trainer, pl_module) -> None:
            if self._timed(trainer):
                _sync(device)
                self.t_val = time.perf_counter()

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
            if self._timed(trainer):
                self.val_images += len(batch[1])

        def on_train_end(self, trainer, pl_module) -> None:
            _sync(device)
            self.t1 = time.perf_counter()

    return EpochClock()


def _checkpoint_callbacks(cfg: DictConfig, folder: Path) -> list:
    """What ``lungcls-train`` saves every epoch: ``best.ckpt`` on the monitored metric and ``last.ckpt``."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    ck = cfg.callbacks.checkpoint
    return [
        ModelCheckpoint(dirpath=str(folder), filename="best", monitor=ck.monitor, mode=ck.mode, save_top_k=1,
                        auto_insert_metric_name=False, enable_version_counter=False),
        ModelCheckpoint(dirpath=str(folder), filename="last", monitor=None, save_top_k=1, enable_version_counter=False),
    ]


def measure_epoch(s: Settings, cfg: DictConfig, dm: LungDataModule) -> dict[str, Any]:
    """``trainer.fit`` for ``warmup_epochs + 1`` epochs with validation after each; the last epoch
    is timed whole. images/s = training images of that epoch / its wall time."""
    from lungcls.training import make_model

    timed_epoch = s.warmup_epochs
    clock = _make_epoch_clock(s.device, timed_epoch)
    callbacks: list = [clock]
    if s.checkpoints:
        callbacks += _checkpoint_callbacks(cfg, Path(s.out) / "lightning" / "checkpoints")
    model = make_model(cfg, dm)
    trainer = _trainer(
        cfg, callbacks, max_epochs=timed_epoch + 1, max_steps=-1, limit_val_batches=None, enable_checkpointing=s.checkpoints
    )
    try:
        trainer.fit(model, datamodule=dm)
        if clock.t0 is None or clock.t1 is None or not clock.train_images:
            raise RuntimeError("the timed epoch did not run")
        seconds = clock.t1 - clock.t0
        out: dict[str, Any] = {
            "images_per_s": clock.train_images / seconds,
            "timed_images": clock.train_images,
            "timed_seconds": seconds,
            "val_images": clock.val_images,
            "warmup_epochs": timed_epoch,
            "checkpoints_saved": s.checkpoints,
        }
        if clock.t_val is not None:
            out["train_part_seconds"] = clock.t_val - clock.t0
            out["validation_and_epoch_end_seconds"] = clock.t1 - clock.t_val
        return out
    finally:
        del model, trainer
        _free_memory()


# --------------------------------------------------------------------------------------------
# (d) naive ImageFolder + DataLoader
# --------------------------------------------------------------------------------------------


class FileImages:
    """What ``torchvision.datasets.ImageFolder`` does per item: open the file with PIL, convert to
    RGB, apply the transform. (The database keeps images in ``<Class>/images/``, so the file list
    comes from the data module rather than from ImageFolder's own folder scan.)"""

    def __init__(self, paths: Sequence[str], labels: Sequence[int], transform: Callable):
        self.paths, self.labels, self.transform = list(paths), list(labels), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with open(self.paths[i], "rb") as f:
            img = Image.open(f).convert("RGB")
        return self.transform(img), self.labels[i]


def measure_naive(s: Settings, cfg: DictConfig, dm: LungDataModule) -> dict[str, Any]:
    """The seed-paper way: PIL decode + Resize + RandomRotation + RandomHorizontalFlip + ToTensor +
    Normalize in ``workers`` DataLoader processes, pinned batches copied with ``non_blocking``, the
    same network, fine-tune and optimizer in plain fp32 (no autocast, no channels_last)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader
    from torchvision import transforms as T

    from lungcls.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from lungcls.training import make_model

    dev = torch.device(s.device)
    samples = dm.split_samples("train")
    transform = T.Compose(
        [
            T.Resize((s.image_size, s.image_size)),
            T.RandomRotation(15),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    ds = FileImages([x.path for x in samples], [x.label for x in samples], transform)
    loader = DataLoader(
        ds,
        batch_size=s.batch_size,
        shuffle=True,
        num_workers=s.workers,
        pin_memory=s.device == "cuda",
        drop_last=len(ds) >= s.batch_size,
        persistent_workers=s.workers > 0,
        generator=torch.Generator().manual_seed(s.seed),
    )
    model = make_model(cfg, dm).to(dev)
    model.train()
    net = model.net
    optimizer = model.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    weight = model.class_weights
    batches = iter(loader)

    def step() -> int:
        nonlocal batches
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y, weight=weight)
        loss.backward()
        optimizer.step()
        return len(y)

    try:
        out = time_steps(step, s.device, max(1, s.warmup), s.steps, s.repeats)
        out["workers"] = s.workers
        return out
    finally:
        del batches, loader, model, net, optimizer
        _free_memory()


# --------------------------------------------------------------------------------------------
# (e) Grad-CAM
# --------------------------------------------------------------------------------------------


def measure_gradcam(s: Settings, cfg: DictConfig, dm: LungDataModule) -> dict[str, Any]:
    """``grad_cam`` on a copy made by ``prepare_for_cam`` of the same model, at the backbone's
    registered Grad-CAM layer, over batches of model inputs ([0, 1] grayscale) already on the
    device, under the same precision. Each call returns its maps on the CPU, as the API does."""
    import torch

    from lungcls.explain.gradcam import grad_cam, prepare_for_cam, resolve_layer
    from lungcls.training import make_model

    dev = torch.device(s.device)
    model = make_model(cfg, dm).to(dev).eval()
    if s.device == "cuda":
        model.net.to(memory_format=torch.channels_last)
    cam_model = prepare_for_cam(model)
    layer_path = "net." + model.spec.gradcam_layer
    layer = resolve_layer(cam_model, layer_path)
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.rand(s.batch_size, 1, s.image_size, s.image_size, device=dev, generator=g)

    def step() -> int:
        with _autocast(s):
            result = grad_cam(cam_model, layer, x, batch_size=s.batch_size)
        return len(result)

    try:
        out = time_steps(step, s.device, max(1, s.warmup), s.steps, s.repeats)
        out["layer"] = layer_path
        out["autocast"] = s.precision == "bf16"
        return out
    finally:
        del model, cam_model, layer, x
        _free_memory()


# --------------------------------------------------------------------------------------------
# Ratios, targets, report
# --------------------------------------------------------------------------------------------


def rate(results: dict[str, dict], name: str) -> float | None:
    r = results.get(name) or {}
    v = r.get("images_per_s")
    return float(v) if isinstance(v, (int, float)) and v > 0 else None


def compute_ratios(results: dict[str, dict]) -> dict[str, float]:
    out = {}
    for a, b in RATIOS:
        ra, rb = rate(results, a), rate(results, b)
        if ra is not None and rb is not None:
            out[f"{a}/{b}"] = ra / rb
    return out


def evaluate_targets(s: Settings, results: dict[str, dict], ratios: dict[str, float]) -> list[dict[str, Any]]:
    """The targets that apply to this backbone; ``passed`` is None on a CPU or when a number is missing."""
    rows = []
    for t in TARGETS:
        if (t.backbones and s.backbone not in t.backbones) or (t.needs_compile and not s.compile):
            continue
        value = ratios.get(t.key) if "/" in t.key else rate(results, t.key)
        judged = s.device == "cuda" and value is not None
        differs = [f"{k}={getattr(s, k)}" for k, v in TARGET_SETTINGS.items() if getattr(s, k) != v]
        rows.append(
            {
                "name": t.name,
                "key": t.key,
                "threshold": t.threshold,
                "value": value,
                "passed": (value >= t.threshold) if judged else None,
                "settings_differ": differs,
            }
        )
    return rows


def _fmt_rate(v: float | None) -> str:
    return f"{v:,.1f}" if v is not None else "-"


def format_report(report: dict[str, Any]) -> str:
    s = report["settings"]
    env = report["environment"]
    results = report["measurements"]
    ratios = report["ratios"]
    lines = [
        f"lungcls-bench: {s['backbone']} | finetune={s['finetune']} | batch {s['batch_size']} | {s['image_size']} px | "
        f"{s['precision']} | compile {'on' if s['compile'] else 'off'} | optimizer {s['optimizer']} | "
        f"{env['device_name']} | torch {env['torch']}",
        f"data: {report['data']['images']} PNGs ({report['data']['origin']}), train {report['data']['train_images']}, "
        f"val {report['data']['val_images']}",
        "",
        f"{'measurement':<44}{'images/s':>12}{'x ceiling':>11}",
    ]
    for name in MEASUREMENTS:
        r = results.get(name, {})
        if "skipped" in r:
            tail = f"skipped: {r['skipped']}"
        elif "error" in r:
            tail = f"FAILED: {r['error']}"
        else:
            ratio = 1.0 if name == "ceiling" and rate(results, name) else ratios.get(f"{name}/ceiling")
            tail = f"{_fmt_rate(rate(results, name)):>12}{(f'{ratio:.2f}' if ratio is not None else '-'):>11}"
            lines.append(f"{LABELS[name]:<44}{tail}")
            continue
        lines.append(f"{LABELS[name]:<44}  {tail}")
    extra = [f"{k} = {v:.2f}" for k, v in ratios.items() if not k.endswith("/ceiling")]
    if extra:
        lines += ["", "other ratios: " + ", ".join(extra)]
    e2e = results.get("end_to_end", {})
    if "host_syncs_per_step" in e2e:
        sites = ", ".join(f"{k} ({v})" for k, v in list(e2e["host_sync_sites"].items())[:6]) or "none"
        lines.append(f"host syncs per end-to-end step: {e2e['host_syncs_per_step']:g} [{sites}]")
    if report["targets"]:
        lines += ["", f"{'target':<44}{'value':>12}{'needed':>11}  result"]
        for t in report["targets"]:
            v = t["value"]
            shown = "-" if v is None else (f"{v:,.0f}" if t["threshold"] >= 100 else f"{v:.2f}")
            need = f"{t['threshold']:,.0f}" if t["threshold"] >= 100 else f"{t['threshold']:.2f}"
            verdict = "n/a (not a GPU run)" if s["device"] != "cuda" else ("-" if t["passed"] is None else ("PASS" if t["passed"] else "FAIL"))
            if t["settings_differ"]:
                verdict += f" (target set for finetune=full, bf16; here {', '.join(t['settings_differ'])})"
            lines.append(f"{t['name']:<44}{shown:>12}{need:>11}  {verdict}")
    for note in report["notes"]:
        lines += ["", f"NOTE: {note}"]
    return "\n".join(lines)


def _environment(s: Settings) -> dict[str, Any]:
    import pytorch_lightning as pl
    import torch
    import torchvision

    env: dict[str, Any] = {
        "device": s.device,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pytorch_lightning": pl.__version__,
        "python": platform.python_version(),
        "cpu_cores": _cpu_count(),
        "cudnn_benchmark": s.cudnn_benchmark,
    }
    if s.device == "cuda":
        env["device_name"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        env["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        env["tf32_cudnn"] = torch.backends.cudnn.allow_tf32
    else:
        n = torch.get_num_threads()
        env["device_name"] = f"CPU ({platform.machine()}, {n} thread{'s' if n != 1 else ''})"
    return env


@contextlib.contextmanager
def _quiet() -> Any:
    """Keep Lightning's per-fit banners and known harmless warnings out of the report."""
    import pytorch_lightning  # noqa: F401  (its import sets its logger's level; set ours after it)

    names = ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric")
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.WARNING)
    with warnings.catch_warnings():
        for pattern in (
            ".*does not have many workers.*",
            ".*smaller than the logging interval.*",
            ".*Tensor Cores.*",
            ".*max_epochs.*",
            ".*LeafSpec.*",
            ".*predict_dataloader.*",
            ".*test_dataloader.*",
            ".*No positive samples.*",
            ".*No negative samples.*",
        ):
            warnings.filterwarnings("ignore", message=pattern)
        try:
            yield
        finally:
            for n, level in levels.items():
                logging.getLogger(n).setLevel(level)


def _prepare_data(s: Settings) -> tuple[Path, str]:
    if s.data:
        root = Path(s.data).expanduser()
        if not root.is_dir():
            raise LungclsError(f"--data {s.data} is not a folder; give a data set in the database layout (<Class>/images/*.png)")
        return root, "given"
    root = Path(s.gen_dir) / f"bench-{s.images}x{s.source_size}"
    if s.source_size >= 16 and s.images >= len(DATABASE_COUNTS) and _dataset_is_current(root, _dataset_meta(s.images, s.source_size, 0)):
        return root, "generated earlier, reused"
    t0 = time.perf_counter()
    ensure_bench_dataset(root, s.images, s.source_size)
    return root, f"generated in {time.perf_counter() - t0:.1f} s"


def run_bench(s: Settings) -> dict[str, Any]:
    """All measurements; a failing one is recorded with its error and the others still run."""
    import pytorch_lightning as pl
    import torch

    from lungcls.data.datamodule import LungDataModule

    if s.device != "cuda":
        print("[bench] NOTE: running on a CPU with tiny defaults; the numbers are not GPU numbers", flush=True)
    out_dir = Path(s.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.backends.cudnn.benchmark = s.cudnn_benchmark
    pl.seed_everything(s.seed, workers=True, verbose=False)

    t0 = time.perf_counter()
    data_root, origin = _prepare_data(s)
    print(f"[bench] data: {data_root} ({origin})", flush=True)
    cfg = compose_config(s, data_root, out_dir / "lightning")
    from omegaconf import OmegaConf

    dm = LungDataModule(OmegaConf.to_container(cfg.dataset, resolve=True), OmegaConf.to_container(cfg.augment, resolve=True), seed=s.seed)
    t1 = time.perf_counter()
    dm.setup("fit")
    cache_where = "none" if dm.images is None else ("gpu" if dm.images.is_cuda else "ram")
    first = dm.samples[0].path if dm.samples else None
    with Image.open(first) as im:
        source = f"{im.width}x{im.height} {im.mode}"
    data = {
        "root": str(data_root),
        "origin": origin,
        "images": len(dm.samples),
        "source": source,
        "train_images": len(dm.split_rows("train")),
        "val_images": len(dm.split_rows("val")),
        "decoded_cache": cache_where,
        "prepare_seconds": t1 - t0,
        "decode_seconds": time.perf_counter() - t1,
    }

    measure = {
        "ceiling": measure_ceiling,
        "end_to_end": measure_end_to_end,
        "epoch": measure_epoch,
        "naive": measure_naive,
        "gradcam": measure_gradcam,
    }
    results: dict[str, dict] = {}
    for name in MEASUREMENTS:
        if name in s.skip:
            results[name] = {"skipped": "--skip"}
            continue
        if name == "gradcam":
            try:
                import lungcls.explain.gradcam  # noqa: F401
            except ImportError as e:
                results[name] = {"skipped": f"lungcls.explain.gradcam is not importable ({e})"}
                print(f"[bench] {LABELS[name]}: skipped ({results[name]['skipped']})", flush=True)
                continue
        print(f"[bench] {LABELS[name]} ...", flush=True)
        start = time.perf_counter()
        try:
            results[name] = measure[name](s, cfg, dm)
            results[name]["wall_seconds"] = time.perf_counter() - start
            print(f"[bench]   {results[name]['images_per_s']:,.1f} images/s", flush=True)
        except Exception as e:  # one failure must not hide the other numbers
            results[name] = {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"}
            print(f"[bench]   failed: {results[name]['error']}", file=sys.stderr, flush=True)
            traceback.print_exc()
            _free_memory()
    del dm
    _free_memory()

    ratios = compute_ratios(results)
    notes = []
    if s.device != "cuda":
        notes.append(
            "measured on a CPU: these are not GPU numbers, and the ratios and targets mean nothing here. "
            "Run on a CUDA machine for the real benchmark."
        )
        if s.compile:
            notes.append("--compile has no effect on a CPU: training compiles the backbone on CUDA only")
    return {
        "settings": asdict(s),
        "environment": _environment(s),
        "data": data,
        "measurements": results,
        "ratios": ratios,
        "targets": evaluate_targets(s, results, ratios),
        "notes": notes,
        "created": datetime.now().isoformat(timespec="seconds"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 all measurements ran, 1 one failed, 2 bad input, 3 a target missed (with
    ``--check-targets``)."""
    import torch

    args = build_parser().parse_args(argv)
    threads, cudnn_benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
    try:
        if args.threads is not None:
            if args.threads < 1:
                raise LungclsError("--threads must be at least 1")
            torch.set_num_threads(args.threads)
        s = resolve_settings(args)
        with _quiet():
            report = run_bench(s)
    except LungclsError as e:
        print(f"lungcls-bench: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    finally:  # leave the process as it was (the bench can run inside a test session)
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = cudnn_benchmark
    out = Path(s.out) / "bench.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    os.replace(tmp, out)
    print()
    print(format_report(report))
    print(f"\nwritten: {out}")
    if any("error" in r for r in report["measurements"].values()):
        return 1
    if args.check_targets and any(t["passed"] is False for t in report["targets"]):
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
