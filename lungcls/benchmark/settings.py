"""The benchmark's settings: the command line, per-device defaults, and the targets it judges."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from lungcls.benchmark.data import DATABASE_COUNTS, DATABASE_SIZE, cpu_count
from lungcls.errors import LungclsError
from lungcls.models.backbones import BACKBONES
from lungcls.models.finetune import POLICIES

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


def _miss_rate_arguments(p: argparse.ArgumentParser) -> None:
    """``--miss-rate`` and its options (lungcls.benchmark.missrate)."""
    p.add_argument("--miss-rate", action="store_true", help="instead of the throughput run: measure the miss-rate cap's guarantee "
                   "(conformal risk control, Learn-then-Test, today's validation quantile) over --miss-splits calibration/test "
                   "splits of a scored pool at alpha 0.02, 0.05, 0.10; writes miss_rate.json and miss_rate.png")
    p.add_argument("--ckpt", help="--miss-rate: the checkpoint (default: train or reuse the default demo model)")
    p.add_argument("--miss-splits", type=int, default=500, help="--miss-rate: random calibration/test splits (default 500)")
    p.add_argument("--miss-delta", type=float, default=0.1, help="--miss-rate: Learn-then-Test's delta (default 0.1)")
    p.add_argument("--calibration-share", type=float, default=0.3, help="--miss-rate: share of the pool in each calibration part (default 0.3)")
    p.add_argument("--pool-per-class", type=int, default=150, help="--miss-rate: demo images per class in the scored pool (default 150)")
    p.add_argument("--pool-seed", type=int, default=1, help="--miss-rate: demo seed of the pool (default 1: other patients than the model's)")
    p.add_argument("--pool-source-size", type=int, default=128, help="--miss-rate: side of the pool's demo PNGs (default 128)")
    p.add_argument("--pool-root", help="--miss-rate: score this class-folder tree instead of a demo pool")
    p.add_argument("--pool-classes", help="--miss-rate with --pool-root: its class names, comma-separated")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lungcls-bench",
        description="Measure training throughput: model-step ceiling, the project's end-to-end loop, a whole "
        "epoch with validation, a naive ImageFolder loop and Grad-CAM, with the same settings; write bench.json.",
        epilog="Why flags and not Hydra key=value overrides: each measurement composes the real training configs "
        "itself (the --optimizer and --augment choices are their config groups) and must hold every other setting "
        "the same across the five measurements, so only these comparable knobs are open.",
    )
    p.add_argument("--backbone", choices=BACKBONES.names(), help="default: resnet50 on CUDA, resnet18 on CPU")
    p.add_argument("--finetune", default="full", choices=POLICIES.names())
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
    p.add_argument("--scale", help="instead of the throughput run: the scale ladder over these data set sizes "
                   "(increasing, e.g. 1000,4000,16000): seconds and peak RSS of every stage; writes scale.json and scale.png")
    p.add_argument("--scale-image-size", type=int, default=64, help="side of the generated PNGs and working size of the scale ladder (default 64)")
    p.add_argument("--scale-cache", default="mmap", choices=("mmap", "ram"), help="decoded cache of the ladder's training "
                   "epochs (default mmap: the form for sets larger than RAM, whose memory must not grow with the images)")
    p.add_argument("--near-duplicates", type=int, metavar="N", help="instead of the throughput run: the near-duplicate search "
                   "on N synthetic hashes distributed like chest X-ray hashes (the phantom's, or --templates), with recall against all pairs; writes near_duplicates.json")
    p.add_argument("--near-duplicate-bits", type=int, default=12, help="threshold of --near-duplicates (default 12, as for real X-rays)")
    p.add_argument("--recall-subset", type=int, default=20000, help="codes checked against all pairs for --near-duplicates' recall (default 20000)")
    p.add_argument("--templates", metavar="DIR", help="--near-duplicates: draw the codes around the hashes of the X-rays under DIR "
                   "(any layout, e.g. a sample of your data) instead of the demo phantom's")
    _miss_rate_arguments(p)
    p.add_argument("--faiss-codes", type=int, default=100000, help="--near-duplicates: time faiss's IndexBinaryMultiHash beside "
                   "lungcls's index on the first this many codes (default 100000; 0 skips it)")
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
        workers=args.workers if args.workers is not None else cpu_count(),
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
    if BACKBONES.get(s.backbone).explained_by_weights:
        raise LungclsError(f"--backbone {s.backbone} is a linear model with no convolutional step worth benchmarking; choose a CNN backbone")
    return s
