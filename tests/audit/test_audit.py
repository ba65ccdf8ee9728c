"""Duplicates, label conflicts, split leakage, shortcuts and per-source metrics, on data the tests
build: demo phantom images copied, re-encoded and tagged, and the real X-rays where present."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from lungcls.audit.probe import shortcut_probe
from lungcls.audit.scan import scan
from lungcls.audit.settings import ProbeSettings
from lungcls.data.datamodule import LungDataModule
from lungcls.data.phantom.demo import ensure_demo_dataset
from lungcls.data.dedup.fingerprints import CROP_LEVELS, HASH_SIZE, compute_fingerprints, near_pairs
from lungcls.data.pixels.images import read_gray
from lungcls.data.samples.layouts import find_samples
from lungcls.errors import LungclsError
from lungcls.metrics import summarize_by_source
from lungcls.settings import typed
from lungcls.train import train

from conftest import SHARED_REAL, requires_shared, run_cli

CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """A 4 x 40 phantom at 64 px: enough images for a cross-validated probe, cheap to make."""
    return ensure_demo_dataset(tmp_path_factory.mktemp("demo") / "demo", images_per_class=40, image_size=64)


def copy_tree(src: Path, dst: Path, per_class: int | None = None) -> Path:
    """The demo's images (and masks) in a fresh tree the test may change."""
    for c in CLASSES:
        for sub in ("images", "masks"):
            files = sorted((src / c / sub).glob("*.png"), key=lambda p: int(p.stem.split("-")[-1]))[:per_class]
            (dst / c / sub).mkdir(parents=True, exist_ok=True)
            for f in files:
                shutil.copy(f, dst / c / sub / f.name)
    return dst


def jpeg(path: Path, out: Path, quality: int = 80) -> None:
    buf = io.BytesIO()
    Image.open(path).convert("L").save(buf, "JPEG", quality=quality)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(buf.getvalue())


def burn_tags(root: Path, share: float, seed: int = 0) -> None:
    """A class-specific bright bar in the top border band of ``share`` of each class's images."""
    rng = np.random.default_rng(seed)
    for k, c in enumerate(CLASSES):
        for p in sorted((root / c / "images").glob("*.png")):
            if rng.random() < share:
                a = np.array(Image.open(p))
                h, w = a.shape
                band = max(2, int(0.1 * h))
                x0 = 2 + k * (w // 5)
                a[1 : band - 1, x0 : x0 + w // 8] = 250
                Image.fromarray(a).save(p)


def test_perceptual_hash_is_imagehash_phash_at_every_crop(demo):
    imagehash = pytest.importorskip("imagehash")
    paths = sorted(str(p) for p in (demo / "COVID" / "images").glob("*.png"))[:3]
    fp = compute_fingerprints(paths)
    for i, path in enumerate(paths):
        img = Image.fromarray(read_gray(path))
        w, h = img.size
        for k, f in enumerate(CROP_LEVELS):
            dx, dy = int(round(f * w)), int(round(f * h))
            ref = np.asarray(imagehash.phash(img.crop((dx, dy, w - dx, h - dy)), hash_size=HASH_SIZE).hash).ravel()
            assert (ref == fp.phash[i, k]).all()


@requires_shared
def test_copies_of_real_xrays_are_near_duplicates_and_distinct_films_are_not():
    rows = list(csv.DictReader((SHARED_REAL / "manifest.csv").open()))
    originals = [str(SHARED_REAL / r["path"]) for r in rows[::4]]
    base = compute_fingerprints(originals)
    assert near_pairs(base.phash, max_bits=12) == []  # distinct films: none within the default
    copies = []
    for p in originals[:12]:
        img = Image.open(p).convert("L")
        w, h = img.size
        c = int(0.05 * w)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=70)
        copies += [img.resize((224, 224)), Image.open(io.BytesIO(buf.getvalue())), img.crop((c, c, w - c, h - c)),
                   ImageEnhance.Brightness(img).enhance(1.15)]
    arrays = [np.asarray(im.convert("L")) for im in copies]
    from lungcls.data.dedup.fingerprints import fingerprint_array

    bits = np.stack([fingerprint_array(a)[1] for a in arrays])
    found = {(a, b) for a, b, _ in near_pairs(bits, base.phash, max_bits=12)}
    assert found == {(k, k // 4) for k in range(len(copies))}  # each copy matches its original, only it


def build_dirty_tree(demo: Path, root: Path) -> dict[str, str]:
    """A tree with a byte-identical copy filed under another class, a JPEG copy in the same class,
    two same-label copies, and a corrupt file. Returns the planted paths (relative to root)."""
    copy_tree(demo, root, per_class=12)
    planted = {
        "conflict_a": "COVID/images/COVID-1.png", "conflict_b": "Normal/images/copy-of-covid-1.png",
        "jpeg_a": "Viral Pneumonia/images/Viral Pneumonia-2.png", "jpeg_b": "Viral Pneumonia/images/reencoded.jpg",
        "same_a": "Lung_Opacity/images/Lung_Opacity-3.png", "same_b": "Lung_Opacity/images/again.png",
        "corrupt": "Normal/images/broken.png",
    }
    shutil.copy(root / planted["conflict_a"], root / planted["conflict_b"])
    jpeg(root / planted["jpeg_a"], root / planted["jpeg_b"])
    shutil.copy(root / planted["same_a"], root / planted["same_b"])
    (root / planted["corrupt"]).write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return planted


def test_audit_cli_lists_every_planted_finding_and_fail_on_sets_the_exit_status(demo, tmp_path):
    root = tmp_path / "dirty"
    planted = build_dirty_tree(demo, root)
    args = ["dataset=folder", f"dataset.root={root}", "dataset.near_duplicate_bits=6", "audit.probe.resamples=200"]
    out = run_cli("lungcls.audit", *args, "audit.fail_on=[label_conflicts,shortcut]", f"hydra.run.dir={tmp_path / 'a'}")
    assert out.returncode == 1 and out.stderr.strip().splitlines()[-1] == "lungcls-audit: failing on label_conflicts (1) (audit.fail_on)"
    audit = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert audit["files"] == 4 * 12 + 4 and audit["images"] == audit["files"] - 1
    assert audit["unreadable"][0]["path"] == planted["corrupt"] and "broken.png" in audit["unreadable"][0]["error"]
    assert sorted(map(sorted, audit["exact_duplicates"])) == sorted([
        sorted([planted["conflict_a"], planted["conflict_b"]]), sorted([planted["same_a"], planted["same_b"]])])
    near = {(p["a"], p["b"]) for p in audit["near_duplicates"]}
    assert near == {tuple(sorted([planted["jpeg_a"], planted["jpeg_b"]]))}
    assert [[i["path"] for i in g["images"]] for g in audit["label_conflicts"]] == [sorted([planted["conflict_a"], planted["conflict_b"]])]
    assert audit["label_conflicts"][0]["kind"] == "exact"
    assert audit["cross_split"]["exact"] == 0 and audit["cross_split"]["near"] == 0  # grouped by default
    assert audit["classes"]["COVID"]["images"] == 12 and audit["classes"]["Normal"]["unreadable"] == 1
    assert audit["classes"]["COVID"]["bit_depth"] == {"8": 12}
    assert set(audit["shortcut_probe"]) >= {"balanced_accuracy", "ci", "chance", "flagged", "region"}
    assert "label conflicts: 1 groups" in out.stdout and (tmp_path / "a" / "audit.md").is_file()
    assert planted["conflict_b"] in (tmp_path / "a" / "audit.md").read_text()
    from conftest import compose_cfg
    from lungcls.audit.run import audit

    clean = copy_tree(demo, tmp_path / "clean", per_class=12)
    cfg = compose_cfg("audit", [f"dataset.root={clean}", "dataset.layout=radiography", "audit.probe.resamples=200",
                                "audit.fail_on=[label_conflicts,shortcut]"], tmp_path / "b", tmp_path)
    result = audit(cfg)  # findings only fail the run when found: no SystemExit here
    assert result["label_conflicts"] == [] and json.loads((tmp_path / "b" / "audit.json").read_text())["images"] == 48


def test_duplicates_straddle_splits_only_when_ignored(demo, tmp_path):
    """Many same-label copies: grouped (default) none straddles; dataset.duplicates=none some do."""
    root = copy_tree(demo, tmp_path / "copies", per_class=20)
    for c in CLASSES:
        for p in sorted((root / c / "images").glob("*.png"))[:10]:
            shutil.copy(p, p.with_name("copy-" + p.name))
    base = {"layout": "folder", "root": str(root), "classes": CLASSES, "image_size": 32, "normalization": "half",
            "near_duplicate_bits": 6}
    dm = LungDataModule(base)
    dm.setup()
    assert dm.duplicate_record["exact_groups"] == 40 and dm.duplicate_record["straddling_splits"] == {"exact": 0, "near": 0}
    for group in dm.duplicates.groups:
        assert len({dm.assignment[dm.samples[i].path] for i in group}) == 1
    ignored = LungDataModule({**base, "duplicates": "none"})
    ignored.setup()
    by_picture: dict[str, set[str]] = {}
    for s in ignored.samples:
        by_picture.setdefault(Path(s.path).name.removeprefix("copy-"), set()).add(ignored.assignment[s.path])
    assert sum(len(v) > 1 for v in by_picture.values()) >= 5
    dm.write_splits(tmp_path / "splits.csv")
    rows = list(csv.DictReader((tmp_path / "splits.csv").open()))
    assert {"duplicate_group", "pixel_hash", "phash"} <= set(rows[0])
    assert sum(1 for r in rows if r["duplicate_group"]) == 80


def test_label_conflicts_stop_training_with_one_line_or_are_dropped(demo, tmp_path, train_cfg):
    root = tmp_path / "dirty"
    planted = build_dirty_tree(demo, root)
    (root / planted["corrupt"]).unlink()
    with pytest.raises(LungclsError) as stopped:
        train(train_cfg("dataset=folder", f"dataset.root={root}", "dataset.near_duplicate_bits=6", "backbone=logistic"))
    line = str(stopped.value)
    assert "\n" not in line and line.startswith("1 group(s) of duplicate images carry different labels")
    assert planted["conflict_b"] in line and planted["conflict_a"] in line and "dataset.on_label_conflict" in line
    cfg = {"layout": "folder", "root": str(root), "classes": CLASSES, "image_size": 32, "near_duplicate_bits": 6,
           "normalization": "half", "on_label_conflict": "drop"}
    dm = LungDataModule(cfg)
    dm.setup()
    assert sorted(dm.duplicate_record["dropped"]) == sorted(str(root / planted[k]) for k in ("conflict_a", "conflict_b"))
    assert not {str(root / planted["conflict_a"]), str(root / planted["conflict_b"])} & set(dm.assignment)
    kept = LungDataModule({**cfg, "on_label_conflict": "keep"})
    kept.setup()
    assert kept.assignment[str(root / planted["conflict_a"])] == kept.assignment[str(root / planted["conflict_b"])]


def test_manifest_listing_one_file_twice_with_two_labels_is_a_conflict(demo, tmp_path):
    image = demo / "COVID" / "images" / "COVID-1.png"
    rows = [(image, "COVID"), (image, "Normal")]
    rows += [(p, c) for c in CLASSES for p in sorted((demo / c / "images").glob("*.png"))[2:8]]
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\n" + "".join(f"{p},{c}\n" for p, c in rows))
    cfg = {"layout": "manifest", "manifest": str(manifest), "classes": CLASSES, "image_size": 32, "near_duplicate_bits": 6}
    with pytest.raises(LungclsError, match=r"1 group\(s\) of duplicate images carry different labels.*COVID-1.png \(COVID\), .*COVID-1.png \(Normal\)"):
        LungDataModule(cfg).setup()


def probe_of(root: Path, region: str = "auto") -> dict:
    samples = find_samples({"layout": "radiography", "root": str(root), "classes": CLASSES})
    scanned = scan(samples, region)
    return shortcut_probe(scanned.features, [s.label for s in samples], [s.path for s in samples], CLASSES,
                          scanned.region, probe_settings(resamples=500))


def probe_settings(**overrides) -> ProbeSettings:
    """conf/audit.yaml's ``audit.probe`` with ``overrides``, typed as the audit types it."""
    from omegaconf import OmegaConf

    from lungcls.cli import CONF_DIR

    node = OmegaConf.merge(OmegaConf.load(Path(CONF_DIR) / "audit.yaml").audit.probe, overrides)
    return typed(node, ProbeSettings, "audit.probe")


@pytest.mark.parametrize("region", ["auto", pytest.param("border", marks=pytest.mark.slow)])
def test_shortcut_probe_flags_planted_tags_and_not_the_clean_demo(demo, tmp_path, region):
    clean = probe_of(demo, region)
    assert clean["region"] == ("outside_lungs" if region == "auto" else "border")
    assert not clean["flagged"] and clean["ci"][0] < clean["chance"] + 0.05 and clean["chance"] == 0.25
    tagged = copy_tree(demo, tmp_path / "tagged")
    burn_tags(tagged, share=0.9)
    result = probe_of(tagged, region)
    assert result["flagged"] and result["ci"][0] > 0.6


@requires_shared
@pytest.mark.slow
def test_audit_of_the_real_xrays_flags_their_source_bias(tmp_path):
    out = run_cli("lungcls.audit", "dataset=manifest", f"dataset.manifest={SHARED_REAL / 'manifest.csv'}",
                  "dataset.source_column=source_repo", "dataset.allow_missing_classes=true", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    audit = json.loads((tmp_path / "audit.json").read_text())
    probe = audit["shortcut_probe"]
    assert audit["images"] == 823 and probe["region"] == "border" and probe["flagged"]
    assert probe["ci"][0] > probe["chance"] + 0.3
    kermany = [row for src, row in audit["sources"].items() if row["Viral Pneumonia"]]
    assert len(kermany) == 1 and kermany[0]["Viral Pneumonia"] == 250 and kermany[0]["COVID"] == 0


def test_per_source_breakdown_matches_a_hand_count():
    labels = [0, 0, 1, 1, 2, 2, 0]
    preds = [0, 1, 1, 1, 1, 2, 1]
    sources = ["a", "a", "a", "b", "b", "b", "b"]
    got = summarize_by_source(labels, preds, sources, ["COVID", "Normal", "Viral Pneumonia"], "Normal")
    assert got["a"]["images"] == 3 and got["a"]["accuracy"] == pytest.approx(2 / 3)
    assert got["a"]["recall"] == {"COVID": 0.5, "Normal": 1.0, "Viral Pneumonia": None}
    assert got["b"]["fn_to_normal"] == {"COVID": 1, "Viral Pneumonia": 1}
    assert got["b"]["recall"]["COVID"] == 0.0


def test_external_evaluation_leaves_out_training_copies_and_reports_per_source(demo, tmp_path, train_cfg, data_dir, capsys):
    """Train on a manifest with a source column; score a folder holding renamed, re-encoded and
    resized copies of training images next to new X-rays; the report's pool drops them too."""
    from conftest import compose_cfg
    from lungcls.evaluate import evaluate
    from lungcls.explain.maps.explainer import ReportModel
    from lungcls.inference.checkpoints import load_checkpoints
    from lungcls.report.selection import leave_out_training_images, ReportImage
    import torch

    images = [(p, c) for c in CLASSES for p in sorted((demo / c / "images").glob("*.png"))[:16]]
    manifest = tmp_path / "train.csv"
    manifest.write_text("path,label,site\n" + "".join(f"{p},{c},{'A' if i % 3 else 'B'}\n" for i, (p, c) in enumerate(images)))
    run = tmp_path / "run"
    train(train_cfg("dataset=manifest", f"dataset.manifest={manifest}", "dataset.source_column=site",
                    "dataset.near_duplicate_bits=6", "backbone=logistic", out=run))
    printed = capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    per_source = metrics["test"]["per_source"]
    assert set(per_source) <= {"A", "B"} and sum(s["images"] for s in per_source.values()) == sum(
        metrics["test"]["per_class"][c]["support"] for c in CLASSES)
    assert "test by source:" in printed and metrics["duplicates"]["exact_groups"] == 0
    rows = list(csv.DictReader((run / "splits.csv").open()))
    assert {r["source"] for r in rows} == {"A", "B"}
    trained = [Path(r["path"]) for r in rows if r["split"] == "train"][:6]

    ext = tmp_path / "external"
    fresh = ensure_demo_dataset(tmp_path / "fresh", images_per_class=3, image_size=64, seed=7)
    for c in CLASSES:
        for p in (fresh / c / "images").glob("*.png"):
            (ext / c).mkdir(parents=True, exist_ok=True)
            shutil.copy(p, ext / c / f"new-{p.name}")
    label_of = {Path(r["path"]): r["label"] for r in rows}
    for k, p in enumerate(trained):
        target = ext / label_of[p] / f"copy-{k}.png"
        if k < 2:
            shutil.copy(p, target)  # renamed
        elif k < 4:
            jpeg(p, target.with_suffix(".jpg"), quality=90)  # re-encoded
        else:
            Image.open(p).resize((80, 80), Image.BILINEAR).save(target)  # resized
    args = [f"ckpt={run}/checkpoints/best.ckpt", "dataset=folder", f"dataset.root={ext}", "dataset.split=all",
            "dataset.near_duplicate_bits=6"]
    evaluate(compose_cfg("evaluate", args, tmp_path / "ev", data_dir))
    overlap = json.loads((tmp_path / "ev" / "metrics.json").read_text())["training_overlap"]
    assert overlap["training_images_found"] == 6 and overlap["identical_pixels"] == 2 and overlap["near_duplicates"] == 4
    assert overlap["excluded"] and overlap["scored_before_exclusion"] == 6 + 12
    scored = json.loads((tmp_path / "ev" / "metrics.json").read_text())["all"]
    assert sum(map(sum, scored["confusion_matrix"])) == 12
    assert "left out 6 of 18 images that the checkpoint was trained on" in capsys.readouterr().out
    evaluate(compose_cfg("evaluate", [*args, "evaluate.exclude_training_images=false"], tmp_path / "ev2", data_dir))
    kept = json.loads((tmp_path / "ev2" / "metrics.json").read_text())
    assert sum(map(sum, kept["all"]["confusion_matrix"])) == 18 and not kept["training_overlap"]["excluded"]
    assert "WARNING: 6 of 18 images are training images" in capsys.readouterr().out

    models = [ReportModel.of(m) for m in load_checkpoints(str(run / "checkpoints" / "best.ckpt"), torch.device("cpu"))]
    pool = [ReportImage(str(p), p.parent.name) for p in sorted(ext.glob("*/*.*"))]
    kept_pool, note = leave_out_training_images(pool, models)
    assert len(kept_pool) == 12 and all(Path(im.path).name.startswith("new-") for im in kept_pool)
    assert note.startswith("left out 6 of 18 images of the pool")


def test_a_copy_follows_its_fixed_split_and_fingerprints_are_cached(demo, tmp_path, monkeypatch):
    """A manifest fixes one copy's split: the other copy (no split given) lands there too; the
    fingerprints of a data set are saved to dataset.cache_dir and read back."""
    first = sorted((demo / "COVID" / "images").glob("*.png"))[0]
    copy = tmp_path / "copy.png"
    shutil.copy(first, copy)
    rows = [f"{first},COVID,test", f"{copy},COVID,"]
    rows += [f"{p},{c}," for c in CLASSES for p in sorted((demo / c / "images").glob("*.png"))[1:10]]
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,split\n" + "\n".join(rows) + "\n")
    cfg = {"layout": "manifest", "manifest": str(manifest), "classes": CLASSES, "image_size": 32, "normalization": "half",
           "near_duplicate_bits": 6, "cache_dir": str(tmp_path / "cache")}
    dm = LungDataModule(cfg)
    dm.setup()
    assert dm.assignment[str(copy)] == "test"
    saved = list((tmp_path / "cache").glob("fingerprints-*.npz"))
    assert len(saved) == 1

    def no_recompute(paths):
        raise AssertionError("fingerprints were recomputed instead of read from dataset.cache_dir")

    monkeypatch.setattr("lungcls.data.dedup.fingerprints.compute_fingerprints", no_recompute)
    again = LungDataModule(cfg)
    again.setup()
    assert again.fingerprints.pixel_hash == dm.fingerprints.pixel_hash and (again.fingerprints.phash == dm.fingerprints.phash).all()


@pytest.mark.parametrize("override, needle", [
    ("audit.fail_on=[dups]", "audit.fail_on has unknown finding(s) ['dups']"),
    ("audit.probe.region=lungs", "audit.probe.region=lungs is not one of auto, border, outside_lungs"),
    ("audit.probe.folds=1", "audit.probe.folds=1 must be at least 2"),
    ("audit.probe.C=0", "audit.probe.C=0"),
    ("audit.border_frac=0.7", "audit.border_frac=0.7 must be in"),
    ("+audit.probe.foldz=3", "audit.probe.foldz"),
])
def test_bad_audit_settings_are_one_line_errors(demo, tmp_path, override, needle):
    from conftest import compose_cfg
    from lungcls.audit.run import audit

    cfg = compose_cfg("audit", [f"dataset.root={demo}", "dataset.layout=radiography", override], tmp_path, tmp_path)
    with pytest.raises(LungclsError) as e:
        audit(cfg)
    assert needle in str(e.value) and "\n" not in str(e.value)
