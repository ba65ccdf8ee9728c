"""Data: layouts, decoding of every bit depth and mode, splits, and the decode-once cache."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lungcls.data.cache.decoded import load_or_decode
from lungcls.data.datamodule import LungDataModule
from lungcls.data.pixels.images import read_gray
from lungcls.data.samples.layouts import LAYOUTS, cap_per_class, discover_samples, find_samples
from lungcls.data.samples.splits import apply_splits_csv, make_splits, read_splits_csv, write_splits_csv
from lungcls.errors import LungclsError

from conftest import make_class_tree, write_png

CLASSES = ["COVID", "Normal", "Viral Pneumonia"]


def _manifest_data(tmp_path: Path) -> dict:
    make_class_tree(tmp_path / "m", {c: 3 for c in CLASSES})
    with (tmp_path / "m" / "list.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows([f"{c}/images/{c}-{i}.png", c] for c in CLASSES for i in range(3))
    return {"manifest": str(tmp_path / "m" / "list.csv")}


def _litdata_data(tmp_path: Path) -> dict:
    pytest.importorskip("litdata")
    from lungcls.data.cache.prepared import write_prepared

    root = make_class_tree(tmp_path / "l", {c: 3 for c in CLASSES})
    dm = LungDataModule({"layout": "radiography", "root": str(root), "classes": CLASSES, "image_size": 16, "cache": "none",
                         "duplicates": "none", "val_fraction": 0.2, "test_fraction": 0.2})
    dm.setup()
    write_prepared(dm, tmp_path / "prepared", "1MB", 1)
    return {"root": str(tmp_path / "prepared"), "image_size": 16}


# How to make a data set of each registered layout: a new layout needs an entry here.
LAYOUT_DATA = {
    "radiography": lambda tmp: {"root": str(make_class_tree(tmp / "r", {c: 3 for c in CLASSES}))},
    "folder": lambda tmp: {"root": str(make_class_tree(tmp / "f", {c: 3 for c in CLASSES}, images_folder=False))},
    "manifest": _manifest_data,
    "demo": lambda tmp: {"root": str(tmp / "demo"), "demo": {"images_per_class": 3, "source_size": 32, "seed": 0}},
    "litdata": _litdata_data,
}


@pytest.mark.parametrize("layout", LAYOUTS.names())
def test_every_layout_finds_labelled_images_through_one_interface(tmp_path, layout):
    assert layout in LAYOUT_DATA, f"layout {layout} has no test data; add it to LAYOUT_DATA"
    cfg = {"layout": layout, "classes": CLASSES, **LAYOUT_DATA[layout](tmp_path)}
    samples = find_samples(cfg)
    assert Counter(s.label for s in samples) == {0: 3, 1: 3, 2: 3}
    assert all(Path(s.path).is_file() for s in samples)
    assert len({s.path for s in samples}) == 9


def test_radiography_layout_finds_images_and_masks(tmp_path):
    root = make_class_tree(tmp_path, {c: 3 for c in CLASSES})
    write_png(root / "COVID" / "masks" / "COVID-0.png", np.full((40, 40), 255, np.uint8))
    samples = discover_samples("radiography", CLASSES, root)
    assert len(samples) == 9
    assert Counter(s.label for s in samples) == {0: 3, 1: 3, 2: 3}
    with_mask = [s for s in samples if s.mask]
    assert len(with_mask) == 1 and with_mask[0].path.endswith("COVID/images/COVID-0.png")
    assert with_mask[0].mask.endswith("COVID/masks/COVID-0.png")


def test_label_ids_follow_config_order_not_folder_order(tmp_path):
    root = make_class_tree(tmp_path, {c: 2 for c in CLASSES})
    samples = discover_samples("folder", ["Viral Pneumonia", "COVID", "Normal"], root)
    by_label = {s.label: Path(s.path).parent.parent.name for s in samples}
    assert by_label == {0: "Viral Pneumonia", 1: "COVID", 2: "Normal"}


def test_folder_layout_without_images_subfolder_skips_masks(tmp_path):
    root = make_class_tree(tmp_path, {c: 2 for c in CLASSES}, images_folder=False)
    write_png(root / "COVID" / "masks" / "COVID-0.png", np.zeros((40, 40), np.uint8))
    samples = discover_samples("folder", CLASSES, root)
    assert len(samples) == 6
    assert not any("/masks/" in s.path for s in samples)


def test_empty_class_is_an_error_unless_allowed(tmp_path):
    root = make_class_tree(tmp_path, {"COVID": 2, "Normal": 2})
    classes = ["COVID", "Lung_Opacity", "Normal"]
    with pytest.raises(LungclsError, match="Lung_Opacity.*allow_missing_classes=true"):
        discover_samples("folder", classes, root)
    samples = discover_samples("folder", classes, root, allow_missing_classes=True)
    assert {s.label for s in samples} == {0, 2}


def test_missing_root_names_the_folder_and_the_fix(tmp_path):
    with pytest.raises(LungclsError, match=r"does not exist; set dataset.root="):
        discover_samples("radiography", CLASSES, tmp_path / "nowhere")
    with pytest.raises(LungclsError, match="dataset.root is not set"):
        discover_samples("radiography", CLASSES, None)


def test_manifest_layout_with_patients_and_fixed_splits(tmp_path):
    make_class_tree(tmp_path / "imgs", {"COVID": 4, "Normal": 4})
    manifest = tmp_path / "imgs" / "manifest.csv"
    with manifest.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split", "patient"])
        for c in ("COVID", "Normal"):
            for i in range(4):
                w.writerow([f"{c}/images/{c}-{i}.png", c, "test" if i == 0 else "", f"{c}-p{i // 2}"])
        w.writerow(["COVID/images/COVID-0.png", "Tuberculosis", "", ""])  # unknown label: skipped
    samples = discover_samples("manifest", ["COVID", "Normal"], manifest=manifest)
    assert len(samples) == 8
    assert all(Path(s.path).is_file() for s in samples)
    assignment = make_splits(samples, 0.25, 0.25, seed=1)
    fixed = [s for s in samples if s.split == "test"]
    assert all(assignment[s.path] == "test" for s in fixed)


def test_images_of_every_depth_and_mode_decode_to_gray_uint8(tmp_path):
    ramp = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))
    write_png(tmp_path / "l8.png", ramp)
    Image.fromarray(ramp.astype(np.uint16) * 257).save(tmp_path / "l16.png")  # 16-bit
    Image.fromarray(ramp.astype(np.uint16) * 16).save(tmp_path / "l12.png")  # 12-bit values in 16-bit
    rgb = np.stack([ramp] * 3, axis=-1)
    write_png(tmp_path / "rgb.png", rgb)
    rgba = np.concatenate([rgb, np.full((64, 64, 1), 128, np.uint8)], axis=-1)
    write_png(tmp_path / "rgba.png", rgba)
    Image.fromarray(rgb).save(tmp_path / "rgb.jpg", quality=95)
    for name in ("l8.png", "l16.png", "l12.png", "rgb.png", "rgba.png", "rgb.jpg"):
        arr = read_gray(tmp_path / name)
        assert arr.dtype == np.uint8 and arr.shape == (64, 64), name
        assert np.abs(arr.astype(int) - ramp.astype(int)).max() <= 3, name


def test_corrupt_image_is_one_clear_line(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(LungclsError) as e:
        read_gray(bad)
    assert str(bad) in str(e.value) and "remove or replace" in str(e.value) and "\n" not in str(e.value)


def test_split_is_stratified_80_10_10_and_deterministic(tmp_path):
    root = make_class_tree(tmp_path, {"COVID": 50, "Normal": 30, "Viral Pneumonia": 20}, size=8)
    samples = discover_samples("folder", CLASSES, root)
    a = make_splits(samples, 0.1, 0.1, seed=1)
    assert a == make_splits(samples, 0.1, 0.1, seed=1)
    assert a != make_splits(samples, 0.1, 0.1, seed=2)
    counts = Counter((s.label, a[s.path]) for s in samples)
    assert (counts[(0, "val")], counts[(0, "test")]) == (5, 5)
    assert (counts[(1, "val")], counts[(1, "test")]) == (3, 3)
    assert (counts[(2, "val")], counts[(2, "test")]) == (2, 2)
    assert sum(1 for v in a.values() if v == "train") == 80


def test_patients_never_straddle_splits(tmp_path):
    from lungcls.data.samples.sample import Sample

    samples = [Sample(path=f"p{p}-{i}.png", label=p % 2, patient=f"p{p}") for p in range(20) for i in range(3)]
    a = make_splits(samples, 0.2, 0.2, seed=1)
    per_patient = {}
    for s in samples:
        per_patient.setdefault(s.patient, set()).add(a[s.path])
    assert all(len(v) == 1 for v in per_patient.values())
    assert set(a.values()) == {"train", "val", "test"}


def test_splits_csv_round_trip_and_reuse(tmp_path):
    root = make_class_tree(tmp_path / "d", {c: 5 for c in CLASSES}, size=8)
    samples = discover_samples("folder", CLASSES, root)
    a = make_splits(samples, 0.2, 0.2)
    write_splits_csv(tmp_path / "splits.csv", samples, a, CLASSES)
    assert read_splits_csv(tmp_path / "splits.csv") == a
    assert apply_splits_csv(samples, tmp_path / "splits.csv") == a
    extra = make_class_tree(tmp_path / "d", {"COVID": 7}, size=8, seed=3)  # two new COVID images
    more = discover_samples("folder", CLASSES, extra)
    reused = apply_splits_csv(more, tmp_path / "splits.csv")
    assert len(reused) == len(samples)  # the new images are left out, not silently trained on


def test_cap_per_class_is_a_seeded_subset(tmp_path):
    root = make_class_tree(tmp_path, {"COVID": 20, "Normal": 5}, size=8)
    samples = discover_samples("folder", ["COVID", "Normal"], root)
    capped = cap_per_class(samples, 8, seed=1)
    assert Counter(s.label for s in capped) == {0: 8, 1: 5}
    assert capped == cap_per_class(samples, 8, seed=1)
    first8 = sorted(s.path for s in samples if s.label == 0)[:8]
    assert sorted(s.path for s in capped if s.label == 0) != first8


def test_decoded_cache_is_reused_and_rebuilt_when_files_change(tmp_path):
    root = make_class_tree(tmp_path / "d", {"COVID": 3}, size=40)
    paths = [s.path for s in discover_samples("folder", ["COVID"], root)]
    first = load_or_decode(paths, 16, tmp_path / "cache")
    files = list((tmp_path / "cache").glob("*.pt"))
    assert len(files) == 1
    again = load_or_decode(paths, 16, tmp_path / "cache")
    assert torch.equal(first, again) and list((tmp_path / "cache").glob("*.pt")) == files
    write_png(Path(paths[0]), np.zeros((40, 40), np.uint8))  # the file changes: a new cache
    changed = load_or_decode(paths, 16, tmp_path / "cache")
    assert changed[0].sum() == 0 and len(list((tmp_path / "cache").glob("*.pt"))) == 2


def test_datamodule_serves_uint8_batches_and_augments_only_in_training(class_tree):
    cfg = {
        "name": "folder", "layout": "folder", "root": str(class_tree), "classes": CLASSES,
        "normal_class": "Normal", "image_size": 32, "batch_size": 4, "normalization": "dataset",
        "cache": "ram", "val_fraction": 0.2, "test_fraction": 0.2,
    }
    dm = LungDataModule(cfg, {"name": "default", "rotation": 30, "hflip": 1.0})
    dm.setup()
    x, y, rows = next(iter(dm.loader("train", shuffle=True)))
    assert x.dtype == torch.uint8 and x.shape == (4, 1, 32, 32)
    assert all(dm.samples[int(r)].label == int(l) for r, l in zip(rows, y))
    assert 0 < dm.mean[0] < 1 and dm.std[0] > 0

    class FakeTrainer:
        training = True

    dm.trainer = FakeTrainer()
    xa, _, _ = dm.on_after_batch_transfer((x, y, rows), 0)
    FakeTrainer.training = False
    xe, _, _ = dm.on_after_batch_transfer((x, y, rows), 0)
    assert xe.dtype == torch.float32 and torch.allclose(xe, x.float() / 255)
    assert not torch.allclose(xa, xe)  # flip p=1 and rotation changed the training batch


def test_dataset_normalization_is_exact_in_chunks_of_any_size():
    """``normalization=dataset`` reads the train split a few MB at a time (a float copy of a 19 GB
    split would not fit): the mean and std must equal those of the whole split at once."""
    from lungcls.data.pixels.normalization import normalization_stats, pixel_moments

    rng = np.random.default_rng(1)
    images = torch.from_numpy(rng.integers(0, 256, (97, 1, 20, 20), dtype=np.uint8)) // 3 + 40
    x = images.double() / 255.0
    whole = normalization_stats("dataset", images)
    for step in (1, 10, 97):
        chunked = normalization_stats("dataset", (images[i : i + step] for i in range(0, len(images), step)))
        assert chunked == whole
    assert whole[0][0] == pytest.approx(float(x.mean()), abs=1e-12) and whole[1][0] == pytest.approx(float(x.std()), abs=1e-12)
    assert pixel_moments(iter([])) is None
    with pytest.raises(LungclsError, match="needs training images"):
        normalization_stats("dataset", iter([]))
