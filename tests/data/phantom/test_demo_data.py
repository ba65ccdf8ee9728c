"""The synthetic demo data set: layout, masks, determinism, safe regeneration, learnability."""

from __future__ import annotations

import csv
import hashlib
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lungcls.data.phantom import demo
from lungcls.data.phantom.demo import (
    DEMO_CLASSES,
    GENERATOR_VERSION,
    ensure_demo_dataset,
    lesion_mask_path,
    lung_mask_path,
    render_demo_case,
)
from lungcls.errors import LungclsError

N_PER_CLASS = 60
SIZE = 128

# SHA-256 of the pixels of render_demo_case(c, i, 64, seed=0) for every class and i in (1, 2).
# It pins the phantom across machines and library versions: if it changes on purpose, bump
# demo.GENERATOR_VERSION (so old folders regenerate) and update this value.
GOLDEN_PIXELS_SHA256 = "e21b49c6b878a6e09be5791c09a470b68d164d4a828d1f13f46ef39791d36928"


@pytest.fixture(scope="module")
def demo60(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo60") / "demo"
    return ensure_demo_dataset(root, images_per_class=N_PER_CLASS, image_size=SIZE, seed=0)


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "L", path
        return np.asarray(im)


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# ------------------------------------------------------------------------------------------------
# Layout and masks
# ------------------------------------------------------------------------------------------------


def test_layout_counts_modes_and_sizes(demo60: Path) -> None:
    assert sorted(p.name for p in demo60.iterdir() if p.is_dir()) == sorted(DEMO_CLASSES)
    for c in DEMO_CLASSES:
        expected = {f"{c}-{i}.png" for i in range(1, N_PER_CLASS + 1)}
        for sub in ("images", "masks", "lesion_masks"):
            assert _names(demo60 / c / sub) == expected, (c, sub)
        for i in (1, N_PER_CLASS):
            img = _load(demo60 / c / "images" / f"{c}-{i}.png")
            assert img.shape == (SIZE, SIZE) and img.dtype == np.uint8
            assert img.std() > 20, "an image should have real contrast"
    meta = json.loads((demo60 / "demo.json").read_text())
    assert meta["generator"] == GENERATOR_VERSION
    assert (meta["images_per_class"], meta["image_size"], meta["seed"]) == (N_PER_CLASS, SIZE, 0)
    assert meta["classes"] == list(DEMO_CLASSES)
    assert len(meta["pixels_sha256"]) == 64


def test_mask_paths_point_to_sibling_folders() -> None:
    image = Path("data/Viral Pneumonia/images/Viral Pneumonia-7.png")
    assert lung_mask_path(image) == Path("data/Viral Pneumonia/masks/Viral Pneumonia-7.png")
    assert lesion_mask_path(str(image)) == Path("data/Viral Pneumonia/lesion_masks/Viral Pneumonia-7.png")


def test_masks_are_binary_and_lesions_sit_in_the_lungs(demo60: Path) -> None:
    for c in DEMO_CLASSES:
        for image_path in sorted((demo60 / c / "images").iterdir()):
            lung, lesion = _load(lung_mask_path(image_path)), _load(lesion_mask_path(image_path))
            assert lung.shape == lesion.shape == (SIZE, SIZE)
            assert set(np.unique(lung)) <= {0, 255} and set(np.unique(lesion)) <= {0, 255}
            assert 0.12 < (lung > 0).mean() < 0.5, f"implausible lung field in {image_path.name}"
            # Both lungs are present: lung pixels on both sides of the image.
            assert (lung[:, : SIZE // 2] > 0).sum() > 200 and (lung[:, SIZE // 2 :] > 0).sum() > 200
            if c == "Normal":
                assert not lesion.any(), f"{image_path.name} must have clear lungs"
            else:
                assert (lesion > 0).sum() >= 20, f"{image_path.name} has no finding"
                inside = ((lesion > 0) & (lung > 0)).sum() / (lesion > 0).sum()
                assert inside >= 0.95, f"{image_path.name}: lesion outside the lungs"


def test_findings_have_their_class_specific_distribution(demo60: Path) -> None:
    """COVID and viral pneumonia are bilateral; a lobar consolidation is in one lung only."""
    half = SIZE // 2
    for c in ("COVID", "Lung_Opacity", "Viral Pneumonia"):
        for image_path in sorted((demo60 / c / "images").iterdir()):
            lesion = _load(lesion_mask_path(image_path)) > 0
            left, right = lesion[:, :half].sum(), lesion[:, half:].sum()
            if c == "Lung_Opacity":
                assert min(left, right) == 0, f"{image_path.name}: consolidation should be unilateral"
            else:
                assert min(left, right) > 0, f"{image_path.name}: finding should be bilateral"
            if c == "COVID":  # peripheral, lower zone: below the middle of the lung field
                rows = np.nonzero(lesion)[0]
                lung_rows = np.nonzero(_load(lung_mask_path(image_path)))[0]
                assert rows.mean() > lung_rows.mean(), f"{image_path.name}: COVID patches should be basal"


def test_render_matches_written_files(demo60: Path) -> None:
    case = render_demo_case("Lung_Opacity", 5, SIZE, seed=0)
    folder = demo60 / "Lung_Opacity"
    assert np.array_equal(case.image, _load(folder / "images" / "Lung_Opacity-5.png"))
    assert np.array_equal(case.lung_mask, _load(folder / "masks" / "Lung_Opacity-5.png"))
    assert np.array_equal(case.lesion_mask, _load(folder / "lesion_masks" / "Lung_Opacity-5.png"))


# ------------------------------------------------------------------------------------------------
# Confounders: present, burned in, and identical across classes (no label signal)
# ------------------------------------------------------------------------------------------------


def test_confounders_carry_no_label_signal(demo60: Path) -> None:
    with open(demo60 / "demo_annotations.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 * N_PER_CLASS
    by_index: dict[str, set[tuple]] = {}
    for r in rows:
        index = r["path"].rsplit("-", 1)[1]
        key = (r["marker"], r["marker_x0"], r["marker_y0"], r["marker_x1"], r["marker_y1"], r["border_sides"])
        by_index.setdefault(index, set()).add(key)
    assert all(len(keys) == 1 for keys in by_index.values()), "confounders must not depend on the class"
    markers = [r["marker"] for r in rows]
    assert markers.count("L") > 0 and markers.count("R") > 0 and markers.count("") < len(rows) / 4
    assert any(r["border_sides"] for r in rows), "some images should have a collimation edge"
    for r in rows[:20]:  # the marker really is burned into the pixels
        if r["marker"]:
            img = _load(demo60 / r["path"])
            x0, y0, x1, y1 = (int(r[k]) for k in ("marker_x0", "marker_y0", "marker_x1", "marker_y1"))
            assert img[y0:y1, x0:x1].max() >= 200


# ------------------------------------------------------------------------------------------------
# Determinism and safe (re)generation
# ------------------------------------------------------------------------------------------------


def test_same_parameters_give_byte_identical_files(tmp_path: Path) -> None:
    a = ensure_demo_dataset(tmp_path / "a", images_per_class=3, image_size=64, seed=5)
    b = ensure_demo_dataset(tmp_path / "b", images_per_class=3, image_size=64, seed=5)
    files_a, files_b = _all_files(a), _all_files(b)
    assert len(files_a) == 4 * 3 * 3 + 2  # images, lung masks, lesion masks, demo.json, annotations
    assert files_a == files_b


def test_pixels_do_not_depend_on_generation_order_or_set_size(tmp_path: Path) -> None:
    small = ensure_demo_dataset(tmp_path / "small", 2, image_size=64, seed=3, classes=("Normal",))
    big = ensure_demo_dataset(tmp_path / "big", images_per_class=4, image_size=64, seed=3)
    for name in ("Normal-1.png", "Normal-2.png"):
        assert (small / "Normal/images" / name).read_bytes() == (big / "Normal/images" / name).read_bytes()


def test_pixels_match_the_pinned_digest() -> None:
    h = hashlib.sha256()
    for c in DEMO_CLASSES:
        for i in (1, 2):
            case = render_demo_case(c, i, 64, seed=0)
            for arr in (case.image, case.lung_mask, case.lesion_mask):
                h.update(arr.tobytes())
    assert h.hexdigest() == GOLDEN_PIXELS_SHA256, (
        "the demo phantom's pixels changed: if intended, bump GENERATOR_VERSION and update the digest"
    )


def test_second_call_does_not_rewrite(tmp_path: Path) -> None:
    root = ensure_demo_dataset(tmp_path / "demo", images_per_class=2, image_size=64)
    for p in [root, *root.rglob("*")]:
        os.utime(p, ns=(1_000_000_000, 1_000_000_000))  # any rewrite would reset these
    assert ensure_demo_dataset(tmp_path / "demo", images_per_class=2, image_size=64) == root
    assert all(p.stat().st_mtime_ns == 1_000_000_000 for p in [root, *root.rglob("*")])


def test_changed_parameters_regenerate(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    ensure_demo_dataset(root, images_per_class=4, image_size=64, seed=0)
    before = _load(root / "COVID/images/COVID-1.png")

    ensure_demo_dataset(root, images_per_class=3, image_size=64, seed=0)
    assert _names(root / "COVID/images") == {"COVID-1.png", "COVID-2.png", "COVID-3.png"}  # no stale files
    assert json.loads((root / "demo.json").read_text())["images_per_class"] == 3

    ensure_demo_dataset(root, images_per_class=3, image_size=64, seed=1)
    assert not np.array_equal(_load(root / "COVID/images/COVID-1.png"), before)

    ensure_demo_dataset(root, images_per_class=3, image_size=48, seed=1)
    assert _load(root / "COVID/images/COVID-1.png").shape == (48, 48)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_incomplete_demo_folder_is_regenerated(tmp_path: Path) -> None:
    root = ensure_demo_dataset(tmp_path / "demo", images_per_class=2, image_size=64)
    (root / "Normal/images/Normal-2.png").unlink()
    ensure_demo_dataset(root, images_per_class=2, image_size=64)
    assert (root / "Normal/images/Normal-2.png").is_file()


def test_foreign_folder_is_refused_and_left_alone(tmp_path: Path) -> None:
    root = tmp_path / "my_xrays"
    (root / "COVID" / "images").mkdir(parents=True)
    (root / "COVID" / "images" / "patient1.png").write_bytes(b"precious")
    (root / "notes.txt").write_text("do not delete")
    with pytest.raises(LungclsError) as info:
        ensure_demo_dataset(root, images_per_class=2, image_size=64)
    message = str(info.value)
    assert str(root) in message and "\n" not in message and "dataset.root" in message
    assert (root / "COVID" / "images" / "patient1.png").read_bytes() == b"precious"
    assert (root / "notes.txt").read_text() == "do not delete"
    assert sorted(p.name for p in root.rglob("*")) == ["COVID", "images", "notes.txt", "patient1.png"]


def test_empty_existing_folder_is_filled(tmp_path: Path) -> None:
    (tmp_path / "demo").mkdir()
    root = ensure_demo_dataset(tmp_path / "demo", images_per_class=1, image_size=64)
    assert (root / "demo.json").is_file()


def test_bad_parameters_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(LungclsError, match="images_per_class"):
        ensure_demo_dataset(tmp_path / "d", images_per_class=0)
    with pytest.raises(LungclsError, match="Pneumothorax"):
        ensure_demo_dataset(tmp_path / "d", classes=("Normal", "Pneumothorax"))
    assert not (tmp_path / "d").exists()


def test_crash_during_generation_leaves_nothing_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_render, calls = demo._render_case, []

    def flaky(*args, **kwargs):
        calls.append(args)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return real_render(*args, **kwargs)

    monkeypatch.setattr(demo, "_render_case", flaky)
    with pytest.raises(RuntimeError, match="killed"):
        ensure_demo_dataset(tmp_path / "demo", images_per_class=2, image_size=64)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
    monkeypatch.setattr(demo, "_render_case", real_render)
    assert (ensure_demo_dataset(tmp_path / "demo", images_per_class=2, image_size=64) / "demo.json").is_file()


def test_stale_temporary_folders_are_cleaned(tmp_path: Path) -> None:
    stale = tmp_path / ".demo.tmp-123-deadbeef"
    (stale / "COVID").mkdir(parents=True)
    ensure_demo_dataset(tmp_path / "demo", images_per_class=1, image_size=64)
    assert not stale.exists()


def _generate_in_child(root: str) -> str:
    ensure_demo_dataset(root, images_per_class=3, image_size=64, seed=2)
    return (Path(root) / "demo.json").read_text()


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_concurrent_first_use_is_safe(tmp_path: Path) -> None:
    root = str(tmp_path / "demo")
    with ProcessPoolExecutor(3, mp_context=multiprocessing.get_context("fork")) as pool:
        metas = list(pool.map(_generate_in_child, [root] * 3))
    assert len(set(metas)) == 1
    assert all(len(_names(Path(root) / c / "images")) == 3 for c in DEMO_CLASSES)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".demo.lock", "demo"]


# ------------------------------------------------------------------------------------------------
# The task is learnable, but not from global brightness
# ------------------------------------------------------------------------------------------------


def test_findings_are_learnable_but_not_from_mean_brightness(demo60: Path) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features, labels, index = [], [], []
    for label, c in enumerate(DEMO_CLASSES):
        for i in range(1, N_PER_CLASS + 1):
            with Image.open(demo60 / c / "images" / f"{c}-{i}.png") as im:
                small = im.resize((32, 32), Image.BILINEAR)
            features.append(np.asarray(small, np.float64).ravel() / 255.0)
            labels.append(label)
            index.append(i)
    x, y, index = np.array(features), np.array(labels), np.array(index)
    train, test = index <= 0.6 * N_PER_CLASS, index > 0.6 * N_PER_CLASS  # 60/40, stratified

    pixels = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))
    pixel_acc = pixels.fit(x[train], y[train]).score(x[test], y[test])
    mean = x.mean(axis=1, keepdims=True)
    brightness = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    mean_acc = brightness.fit(mean[train], y[train]).score(mean[test], y[test])

    assert pixel_acc > 0.5, f"pixel logistic regression only reaches {pixel_acc:.2f} (chance 0.25)"
    assert mean_acc < 0.4, f"mean brightness alone predicts the class ({mean_acc:.2f})"
    assert pixel_acc - mean_acc > 0.2


# ------------------------------------------------------------------------------------------------
# The planted shortcut (dataset.demo.shortcut)
# ------------------------------------------------------------------------------------------------


def test_shortcut_tags_a_share_of_each_class_inside_the_border_band(tmp_path: Path) -> None:
    from lungcls.data.phantom.burned_in import SHORTCUT_TAGS
    from lungcls.explain.checks.localisation import border_band

    n = 40
    root = ensure_demo_dataset(tmp_path / "tagged", images_per_class=n, image_size=128, seed=0, shortcut=0.75)
    clean = ensure_demo_dataset(tmp_path / "clean", images_per_class=n, image_size=128, seed=0)
    with open(root / "demo_annotations.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    band = border_band((128, 128), 0.1)
    places: dict[str, set[int]] = {}
    for c in DEMO_CLASSES:
        mine = [r for r in rows if r["label"] == c]
        tagged = [r for r in mine if r["tag"]]
        assert abs(len(tagged) - 0.75 * n) <= 2, f"{c}: {len(tagged)} of {n} tagged"
        assert {r["tag"] for r in tagged} == {SHORTCUT_TAGS[c][0]}  # one text per class
        for r in mine:
            img, twin = _load(root / r["path"]), _load(clean / r["path"])
            changed = img != twin
            if not r["tag"]:
                assert not changed.any(), f"{r['path']}: an untagged image must equal its clean twin"
                continue
            x0, y0, x1, y1 = (int(r[k]) for k in ("tag_x0", "tag_y0", "tag_x1", "tag_y1"))
            box = np.zeros_like(changed)
            box[y0:y1, x0:x1] = True
            assert changed.any() and not (changed & ~box).any(), "the tag changes only its own box"
            assert band[box].all(), f"{r['path']}: the tag leaves the outer 10% border band"
            assert img[box].max() >= 230 and img[box].min() <= 20  # a white sticker with dark text
            places.setdefault(c, []).append(((x0 + x1) / 2, (y0 + y1) / 2))
    centres = {c: np.mean(v, axis=0) for c, v in places.items()}
    mirrored = {c: (128 - x, y) for c, (x, y) in centres.items()}  # what a horizontal flip makes of it
    for c in DEMO_CLASSES:  # each class has its own place, and a flipped tag is nearest its own class
        for other in DEMO_CLASSES:
            if other != c:
                for x, y in (centres[c], mirrored[c]):
                    assert np.hypot(x - centres[other][0], y - centres[other][1]) > 24, (c, other)
    assert json.loads((root / "demo.json").read_text())["shortcut"] == 0.75


def test_shortcut_zero_tags_nothing_and_bad_values_are_clear_errors(tmp_path: Path) -> None:
    assert render_demo_case("COVID", 3, 64, seed=0, shortcut=0.0).tag == ""
    assert render_demo_case("COVID", 3, 64, seed=0, shortcut=1.0).tag == "CVD"
    small = render_demo_case("Normal", 3, 64, seed=0, shortcut=1.0)  # too small for text: a blank sticker
    x0, y0, x1, y1 = small.tag_box
    assert y0 >= 64 - int(0.1 * 64) and y1 <= 64 and x1 > x0
    for bad in (1.5, -0.1, "most", True):  # a share, not a count or a word
        with pytest.raises(LungclsError, match=r"dataset.demo.shortcut must be a share in \[0, 1\]"):
            ensure_demo_dataset(tmp_path / "d", images_per_class=1, image_size=64, shortcut=bad)


# ------------------------------------------------------------------------------------------------
# The multi-source demo (dataset.demo.sources, dataset.demo.source_bias)
# ------------------------------------------------------------------------------------------------


def _site_rows(root: Path) -> list[dict[str, str]]:
    with open(root / "demo_annotations.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_sites_differ_like_hospitals_while_the_patient_stays_the_same() -> None:
    plain = render_demo_case("COVID", 3, 64, seed=0)
    a, b = (render_demo_case("COVID", 3, 64, seed=0, site=s) for s in (0, 1))
    assert plain.site == "" and (a.site, b.site) == ("site-A", "site-B")
    assert np.array_equal(a.lung_mask, plain.lung_mask) and np.array_equal(a.lesion_mask, b.lesion_mask)
    gap = np.abs(a.image.astype(int) - b.image.astype(int)).mean()
    assert gap > 10  # exposure, noise, blur, edge and marker differ between the sites
    assert np.array_equal(render_demo_case("COVID", 3, 64, seed=0, site=1).image, b.image)  # and deterministically


def test_source_bias_ties_each_class_to_its_site_and_sites_are_a_manifest_column(tmp_path: Path) -> None:
    n = 40
    root = ensure_demo_dataset(tmp_path / "sites", images_per_class=n, image_size=64, sources=3, source_bias=0.75)
    rows = _site_rows(root)
    assert {r["site"] for r in rows} == {"site-A", "site-B", "site-C"}
    for i, c in enumerate(DEMO_CLASSES):
        own = sum(1 for r in rows if r["label"] == c and r["site"] == "site-" + "ABC"[i % 3]) / n
        assert 0.6 < own < 0.98  # about 0.75 + 0.25/3 = 0.83 from its own site, the rest anywhere
    for r in rows[:: max(1, len(rows) // 8)]:  # the written pixels are the site's rendering
        c, i = r["label"], int(r["path"].rsplit("-", 1)[1].split(".")[0])
        site = "ABC".index(r["site"][-1])
        assert np.array_equal(_load(root / r["path"]), render_demo_case(c, i, 64, seed=0, site=site).image)
    unbiased = _site_rows(ensure_demo_dataset(tmp_path / "even", images_per_class=n, image_size=64, sources=3))
    for i, c in enumerate(DEMO_CLASSES):
        assert sum(1 for r in unbiased if r["label"] == c and r["site"] == "site-" + "ABC"[i % 3]) / n < 0.6


def test_one_site_is_todays_demo_and_bad_site_settings_are_clear(tmp_path: Path) -> None:
    root = ensure_demo_dataset(tmp_path / "one", images_per_class=2, image_size=64, sources=1)
    assert "sources" not in json.loads((root / "demo.json").read_text())  # the same folder as before the option
    assert "site" not in _site_rows(root)[0]
    for kwargs, message in [({"sources": 0}, "dataset.demo.sources must be a whole number"),
                            ({"sources": 2, "source_bias": 1.5}, r"dataset.demo.source_bias must be a share in \[0, 1\]"),
                            ({"sources": 1, "source_bias": 0.5}, "needs dataset.demo.sources >= 2")]:
        with pytest.raises(LungclsError, match=message):
            ensure_demo_dataset(tmp_path / "bad", images_per_class=1, image_size=64, **kwargs)


@pytest.mark.slow  # 600 films per configuration, three sizes
@pytest.mark.parametrize("size", [64, 128, 224])
def test_no_demo_configuration_plants_a_near_duplicate(size: int) -> None:
    """Every demo the docs name (64/128/224 px, one site or three with source bias, the planted
    shortcut on or off; 150 images a class) keeps distinct patients further apart than the demo's
    near-duplicate threshold, so training never stops on a label conflict between two phantoms."""
    from omegaconf import OmegaConf

    from lungcls.data.dedup.fingerprints import fingerprint_array, near_pairs
    from lungcls.data.phantom.sites import pick_site

    bits = OmegaConf.load(Path(__file__).parents[3] / "conf" / "dataset" / "demo.yaml").near_duplicate_bits
    for sources, bias in ((1, 0.0), (3, 0.8)):
        for shortcut in (0.0, 0.9):
            names, hashes = [], []
            for k, c in enumerate(DEMO_CLASSES):
                for i in range(1, 151):
                    site = pick_site(k, c, i, 0, sources, bias) if sources > 1 else None
                    hashes.append(fingerprint_array(render_demo_case(c, i, size, 0, shortcut, site).image)[1])
                    names.append(f"{c}-{i}")
            close = near_pairs(np.packbits(np.stack(hashes), axis=-1), max_bits=bits)
            assert not close, (f"{size} px, {sources} site(s), shortcut {shortcut}: distinct phantoms within {bits} bits: "
                               f"{[(names[a], names[b], d) for a, b, d in close[:3]]}")
