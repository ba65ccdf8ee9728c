"""The five measurements, each with the same settings: (a) the model step on device tensors,
(b) the project's Lightning loop in steady state, (c) a whole epoch with validation, (d) a naive
ImageFolder + DataLoader fp32 loop on the same PNG files, (e) Grad-CAM."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from PIL import Image

from lungcls.benchmark.settings import Settings
from lungcls.benchmark.timing import free_memory, make_epoch_clock, make_steady_state_clock, summarize_windows, time_steps, window_edges
from lungcls.data.datamodule import LungDataModule
from lungcls.models.device import autocast_for
from lungcls.training.trainer import build_callbacks, build_trainer
from lungcls.training.setup import make_model


def frees_memory(measure: Callable) -> Callable:
    """Run a measurement, then collect its model and tensors (they are the measurement's locals,
    released when it returns) and empty the CUDA cache before the next one."""

    @functools.wraps(measure)
    def wrapper(*args, **kwargs):
        try:
            return measure(*args, **kwargs)
        finally:
            free_memory()

    return wrapper

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
        if not s.data:  # the generated set is drawn with the demo phantom: the demo's near-duplicate setting
            from omegaconf import OmegaConf

            ds.near_duplicate_bits = OmegaConf.load(Path(CONF_DIR) / "dataset" / "demo.yaml").near_duplicate_bits
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


    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        for k, v in trainer_overrides.items():
            cfg.trainer[k] = v
    return build_trainer(cfg, callbacks, [])


@frees_memory
def measure_ceiling(s: Settings, cfg: DictConfig, dm: LungDataModule) -> dict[str, Any]:
    """The training step of the same network, fine-tune, optimizer and precision on random tensors
    that are already on the device, normalised, 3-channel and channels_last (as the model's forward
    would hand them to the backbone): what the end-to-end loop could reach with free data."""


    dev = torch.device(s.device)
    model = make_model(cfg, dm).to(dev)
    model.train()  # also keeps frozen BatchNorm layers in eval mode, as in training
    net = model.net
    if s.device == "cuda":  # what LungClassifier.on_fit_start does (compile only on CUDA, too)
        net = net.to(memory_format=torch.channels_last)
        if s.compile:
            net = torch.compile(net)
    optimizer = model.build_optimizer()
    g = torch.Generator(device=dev).manual_seed(0)
    fmt = torch.channels_last if s.device == "cuda" else torch.contiguous_format
    x = torch.randn(s.batch_size, 3, s.image_size, s.image_size, device=dev, generator=g).contiguous(memory_format=fmt)
    y = torch.randint(0, len(dm.class_names), (s.batch_size,), device=dev, generator=g)

    def step() -> int:
        optimizer.zero_grad(set_to_none=True)
        with autocast_for(s.device, enabled=s.precision == "bf16"):
            logits = net(x)
        loss = model.criterion(logits, y)
        loss.backward()
        optimizer.step()
        return s.batch_size

    return time_steps(step, s.device, max(1, s.warmup), s.steps, s.repeats)


@frees_memory
def measure_end_to_end(s: Settings, cfg: DictConfig, dm: LungDataModule) -> dict[str, Any]:
    """The project's loop: ``make_model`` + ``build_trainer`` + ``trainer.fit`` on the data module
    (decoded uint8 cache, per-batch augmentation on the device), validation off, timed after
    ``warmup`` iterations."""

    edges = window_edges(max(1, s.warmup), s.steps, s.repeats)
    clock = make_steady_state_clock(s.device, edges, s.sync_check)
    model = make_model(cfg, dm)
    trainer = _trainer(cfg, [clock], max_epochs=-1, max_steps=edges[-1] + s.sync_check + 1, limit_val_batches=0)
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


@frees_memory
def measure_epoch(s: Settings, cfg: DictConfig, dm: LungDataModule) -> dict[str, Any]:
    """``trainer.fit`` for ``warmup_epochs + 1`` epochs with validation after each; the last epoch
    is timed whole. images/s = training images of that epoch / its wall time."""

    timed_epoch = s.warmup_epochs
    clock = make_epoch_clock(s.device, timed_epoch)
    callbacks: list = [clock]
    if s.checkpoints:  # what lungcls-train saves every epoch: best.ckpt and last.ckpt
        callbacks += list(build_callbacks(cfg.callbacks, has_val=True, has_logger=False).values())
    model = make_model(cfg, dm)
    trainer = _trainer(
        cfg, callbacks, max_epochs=timed_epoch + 1, max_steps=-1, limit_val_batches=None, enable_checkpointing=s.checkpoints
    )
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


@frees_memory
def measure_naive(s: Settings, cfg: DictConfig, dm: LungDataModule) -> dict[str, Any]:
    """The seed-paper way: PIL decode + Resize + RandomRotation + RandomHorizontalFlip + ToTensor +
    Normalize in ``workers`` DataLoader processes, pinned batches copied with ``non_blocking``, the
    same network, fine-tune and optimizer in plain fp32 (no autocast, no channels_last)."""
    from torch.utils.data import DataLoader
    from torchvision import transforms as T

    from lungcls.data.pixels.normalization import IMAGENET_MEAN, IMAGENET_STD

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
    optimizer = model.build_optimizer()
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
        loss = model.criterion(net(x), y)
        loss.backward()
        optimizer.step()
        return len(y)

    out = time_steps(step, s.device, max(1, s.warmup), s.steps, s.repeats)
    out["workers"] = s.workers
    return out


@frees_memory
def measure_gradcam(s: Settings, cfg: DictConfig, dm: LungDataModule) -> dict[str, Any]:
    """``grad_cam`` on a copy made by ``prepare_for_cam`` of the same model, at the backbone's
    registered Grad-CAM layer, over batches of model inputs ([0, 1] grayscale) already on the
    device, under the same precision. Each call returns its maps on the CPU, as the API does."""

    from lungcls.explain.maps.engine import grad_cam
    from lungcls.explain.maps.preparation import prepare_for_cam, resolve_layer

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
        with autocast_for(s.device, enabled=s.precision == "bf16"):
            result = grad_cam(cam_model, layer, x, batch_size=s.batch_size)
        return len(result)

    out = time_steps(step, s.device, max(1, s.warmup), s.steps, s.repeats)
    out["layer"] = layer_path
    out["autocast"] = s.precision == "bf16"
    return out


MEASURE: dict[str, Callable[[Settings, DictConfig, LungDataModule], dict[str, Any]]] = {
    "ceiling": measure_ceiling,
    "end_to_end": measure_end_to_end,
    "epoch": measure_epoch,
    "naive": measure_naive,
    "gradcam": measure_gradcam,
}
