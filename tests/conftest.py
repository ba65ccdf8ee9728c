"""Shared fixtures: the real Hydra configs, composed as users run them, pointed at temporary folders
and shrunk to CPU-test size (tiny phantom images, a few steps)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict
from PIL import Image

from lungcls.cli import CONF_DIR

REPO = Path(__file__).resolve().parent.parent
SHARED_REAL = REPO.parent / "shared" / "data" / "cxr-real"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

# Small and fast: a 4-class phantom with 12 images per class at 64 px, trained at 64 px.
TINY = [
    "dataset.demo.images_per_class=12",
    "dataset.demo.source_size=64",
    "dataset.image_size=64",
    "dataset.batch_size=8",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "logger=csv",
]


def compose_cfg(config_name: str, overrides: list[str], tmp_path: Path, data_dir: Path) -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose(config_name=config_name, overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        cfg.paths.data_dir = str(data_dir)
    return cfg


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """Generated data sets shared by all tests of a session (the demo phantom is written once)."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def train_cfg(tmp_path, data_dir):
    """A factory: ``train_cfg(*overrides)`` -> composed train config writing into tmp_path."""

    def make(*overrides: str, out: Path | None = None) -> DictConfig:
        other_data = any(o.startswith("dataset=") and o != "dataset=demo" for o in overrides)
        base = [o for o in TINY if not (other_data and o.startswith("dataset.demo."))]
        return compose_cfg("train", base + list(overrides), out or tmp_path, data_dir)

    return make


def run_cli(module: str, *args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run an entry point the way a user does, in a fresh interpreter."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE=os.environ.get("WANDB_MODE", "offline"))
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=str(cwd or REPO),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)
    return path


def make_class_tree(root: Path, classes: dict[str, int], size: int = 40, images_folder: bool = True, seed: int = 0) -> Path:
    """A small class-per-folder tree whose classes differ in brightness (so they are learnable)."""
    rng = np.random.default_rng(seed)
    for k, (name, n) in enumerate(classes.items()):
        for i in range(n):
            arr = np.clip(rng.normal(60 + 50 * k, 20, (size, size)), 0, 255).astype(np.uint8)
            folder = root / name / "images" if images_folder else root / name
            write_png(folder / f"{name}-{i}.png", arr)
    return root


@pytest.fixture
def class_tree(tmp_path) -> Path:
    return make_class_tree(tmp_path / "tree", {"COVID": 10, "Normal": 10, "Viral Pneumonia": 10})


requires_shared = pytest.mark.skipif(not SHARED_REAL.is_dir(), reason="the shared real X-ray sample is not present")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip cleanly on machines without a CUDA GPU."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def write_dicom(path: Path, array: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None,
                transfer_syntax: str | None = None, **elements) -> Path:
    """A DICOM file written with pydicom: a DX image of ``array`` (uint8/uint16 [H, W], or [F, H, W]
    for several frames), uncompressed unless ``transfer_syntax`` says otherwise (compressed with
    pydicom's own encoder). ``elements`` are set as attributes (WindowCenter=..., RescaleSlope=...)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    array = np.asarray(array)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = "PHANTOM"
    if array.ndim == 3:
        ds.NumberOfFrames = array.shape[0]
    ds.Rows, ds.Columns = array.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if array.dtype == np.uint8 else 16
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = array.tobytes()
    for key, value in elements.items():
        setattr(ds, key, value)
    if transfer_syntax is not None:
        ds.compress(transfer_syntax, array)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="session")
def logistic_run(tmp_path_factory, data_dir) -> Path:
    """A tiny trained logistic run folder shared by the tests that use a trained model."""
    from lungcls.train import train

    run = tmp_path_factory.mktemp("logistic") / "run"
    train(compose_cfg("train", TINY + ["backbone=logistic", "trainer.max_epochs=2"], run, data_dir))
    return run
