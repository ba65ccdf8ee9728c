"""Leave-one-source-out: a source per image (demo sites, folders, a pattern), one fold per source,
the confounding the audit names, and one-line errors before any image is decoded."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from conftest import SHARED_REAL, TINY, compose_cfg, requires_shared, run_cli, write_png
from lungcls.audit.findings import source_confounding
from lungcls.data.datamodule import LungDataModule
from lungcls.data.samples.folds import fold_gaps
from lungcls.data.samples.layouts import find_samples
from lungcls.data.samples.sample import Sample
from lungcls.errors import LungclsError

CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
SITES = ["dataset.demo.sources=3", "dataset.demo.source_bias=0.8"]


def data_module(tmp_path: Path, data_dir: Path, *overrides: str) -> LungDataModule:
    cfg = compose_cfg("train", TINY + list(overrides), tmp_path, data_dir)
    return LungDataModule(OmegaConf.to_container(cfg.dataset, resolve=True))


def test_each_source_fold_tests_on_its_site_only_and_every_image_once(tmp_path, data_dir):
    tested: list[str] = []
    per_fold: dict[str, set[str]] = {}
    for fold, site in enumerate(["site-A", "site-B", "site-C"]):
        dm = data_module(tmp_path, data_dir, *SITES, "dataset.folds=source", f"dataset.fold={fold}")
        dm.setup()
        assert {s.source for s in dm.split_samples("test")} == {site}
        assert site not in {s.source for s in dm.split_samples("train") + dm.split_samples("val")}
        assert dm.split_samples("train") and dm.split_samples("val")
        tested += [s.path for s in dm.split_samples("test")]
        per_fold[site] = {s.path for s in dm.split_samples("test")}
    assert len(tested) == len(set(tested)) == 4 * 12  # the three folds test every image exactly once
    by_name = data_module(tmp_path, data_dir, *SITES, "dataset.folds=source", "dataset.fold=site-B")
    by_name.setup()
    assert {s.path for s in by_name.split_samples("test")} == per_fold["site-B"]  # a name is as good as its index


def test_the_run_records_each_images_site_in_splits_csv(tmp_path, data_dir):
    dm = data_module(tmp_path, data_dir, *SITES)
    dm.setup()
    dm.write_splits(tmp_path / "splits.csv")
    rows = list(csv.DictReader((tmp_path / "splits.csv").open()))
    assert {r["source"] for r in rows} == {"site-A", "site-B", "site-C"}
    counts = Counter((r["label"], r["source"]) for r in rows)
    # source_bias=0.8 ties each class to its site (class i: site i mod 3) for most of its images
    for i, c in enumerate(CLASSES):
        assert counts[(c, "site-" + "ABC"[i % 3])] >= 7


@pytest.mark.parametrize(("overrides", "message"), [
    (["dataset.folds=source"], "needs a source per image"),
    ([*SITES, "dataset.folds=source", "dataset.fold=3"], r"dataset.fold=3 must be in 0..2 .*0=site-A, 1=site-B, 2=site-C"),
    ([*SITES, "dataset.folds=source", "dataset.fold=site-Z"], "dataset.fold=site-Z is not a source; the sources are 0=site-A"),
    (["dataset.folds=source", "dataset.fold=-1"], "must be a source's index"),
    (["dataset.crop_border=0.5"], r"dataset.crop_border=0.5 must be in \[0.0, 0.4\]"),
    (["dataset.equalize=histeq"], "dataset.equalize=histeq is not one of none, clahe"),
    (["dataset.source_from=hospital"], "dataset.source_from=hospital is not one of folder, regex"),
    (["dataset.source_from=regex"], "needs dataset.source_regex"),
])
def test_bad_source_and_mitigation_settings_are_one_line_before_any_image_is_decoded(tmp_path, data_dir, monkeypatch,
                                                                                    overrides, message):
    def refuse(*args, **kwargs):
        raise AssertionError("an image was decoded before the settings were checked")

    monkeypatch.setattr("lungcls.data.datamodule.load_or_compute", refuse)
    monkeypatch.setattr("lungcls.data.cache.machine.load_or_decode", refuse)
    monkeypatch.setattr("lungcls.data.cache.mapped.decode_images", refuse)
    with pytest.raises(LungclsError, match=message) as err:
        data_module(tmp_path, data_dir, *overrides).setup()
    assert "\n" not in str(err.value)


def hospital_tree(root: Path, sources: dict[str, list[str]]) -> Path:
    """<root>/<Class>/<source>/<source>-<i>.png for the classes each source has."""
    rng = np.random.default_rng(0)
    for source, classes in sources.items():
        for c in classes:
            for i in range(3):
                write_png(root / c / source / f"{source}-{i}.png", rng.integers(0, 255, (24, 24), dtype=np.uint8))
    return root


def folder_cfg(root: Path, **extra) -> dict:
    return {"layout": "folder", "root": str(root), "classes": ["COVID", "Normal"], "source_column": None,
            "source_from": None, "source_regex": None, **extra}


def test_source_from_folder_and_from_a_pattern(tmp_path):
    root = hospital_tree(tmp_path / "tree", {"hospA": ["COVID", "Normal"], "hospB": ["Normal"]})
    samples = find_samples(folder_cfg(root, source_from="folder"))
    assert Counter((s.label, s.source) for s in samples) == {(0, "hospA"): 3, (1, "hospA"): 3, (1, "hospB"): 3}
    by_name = find_samples(folder_cfg(root, source_from="regex", source_regex=r"(?P<source>hosp[AB])-\d+\.png$"))
    assert [s.source for s in by_name] == [s.source for s in samples]
    with pytest.raises(LungclsError, match="no source in the path"):
        find_samples(folder_cfg(root, source_from="regex", source_regex=r"(clinic\d)"))


def test_a_single_source_cannot_be_held_out(tmp_path, data_dir):
    root = hospital_tree(tmp_path / "one", {"hospA": ["COVID", "Normal"]})
    tiny = [o for o in TINY if not o.startswith("dataset.demo.")]
    cfg = compose_cfg("train", tiny + ["dataset=folder", f"dataset.root={root}", "dataset.classes=[COVID,Normal]",
                                       "dataset.source_from=folder", "dataset.folds=source"], tmp_path, data_dir)
    with pytest.raises(LungclsError, match="needs at least two sources; every image comes from 'hospA'"):
        LungDataModule(OmegaConf.to_container(cfg.dataset, resolve=True)).setup()


def test_a_class_missing_from_training_or_testing_is_one_line_per_fold():
    samples = [Sample(f"{c}{i}", label, source=src) for c, label, src in [("a", 0, "X"), ("b", 1, "Y"), ("c", 2, "X")] for i in range(2)]
    assignment = {s.path: "test" if s.source == "Y" else "train" for s in samples}
    line = fold_gaps(samples, assignment, ["COVID", "Normal", "Viral Pneumonia"], "1 (Y)")
    assert line.startswith("fold 1 (Y): no training images of Normal")
    assert "no test images of COVID, Viral Pneumonia" in line
    assert fold_gaps(samples, {s.path: "train" if i % 2 else "test" for i, s in enumerate(samples)},
                     ["COVID", "Normal", "Viral Pneumonia"], 0) is None


def test_audit_confounding_is_high_when_classes_are_tied_to_sites_and_low_when_not():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 100)
    tied = [Sample(f"t{i}", int(y), source=f"s{y if rng.random() < 0.9 else rng.integers(3)}") for i, y in enumerate(labels)]
    mixed = [Sample(f"m{i}", int(y), source=f"s{rng.integers(3)}") for i, y in enumerate(labels)]
    names = ["COVID", "Normal", "Viral Pneumonia"]
    high, low = source_confounding(tied, names), source_confounding(mixed, names)
    assert high["flagged"] and high["ci"][0] > 0.6 and high["ci"][0] <= high["cramers_v"] <= high["ci"][1]
    assert not low["flagged"] and low["cramers_v"] < 0.2
    assert high["classes"]["Normal"]["main_source"] == "s1" and sum(high["classes"]["Normal"]["sources"].values()) == 100
    one = [Sample("a", 0, source="X"), Sample("b", 0, source="Y"), Sample("c", 1, source="X"), Sample("d", 1, source="Y"),
           Sample("e", 2, source="Y")] * 4
    single = source_confounding(one, names)
    assert single["flagged"] and single["single_source_classes"] == ["Viral Pneumonia"]
    assert source_confounding([Sample("a", 0)], names) is None


def test_cramers_v_agrees_with_scipy_on_tables_with_empty_rows():
    from scipy.stats.contingency import association

    from lungcls.audit.findings import cramers_v

    rng = np.random.default_rng(1)
    tables = rng.integers(0, 9, (20, 4, 3))
    tables[3, 1] = 0  # an empty row: left out, as a class absent from a resample
    for t, v in zip(tables, cramers_v(tables)):
        kept = t[t.sum(1) > 0][:, t.sum(0) > 0]
        assert v == pytest.approx(association(kept, method="cramer"), abs=1e-12)


@pytest.mark.slow
def test_leave_one_source_out_on_the_multi_source_demo_end_to_end(tmp_path, data_dir):
    """The commands of docs/examples/leave-one-source-out.md: every site held out once, folded by lungcls-compare beside the
    in-source run of the same setting."""
    common = [o for o in TINY if not o.startswith("trainer.")] + [*SITES, "backbone=logistic", "trainer.max_epochs=2",
                                                                 "trainer.accelerator=cpu", f"paths.data_dir={data_dir}"]
    out = run_cli("lungcls.train", "-m", *common, "dataset.folds=source", "dataset.fold=range(3)",
                  f"hydra.sweep.dir={tmp_path / 'loso'}", timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    out = run_cli("lungcls.train", *common, f"hydra.run.dir={tmp_path / 'in_source'}", timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    out = run_cli("lungcls.compare", str(tmp_path / "loso"), str(tmp_path / "in_source"), "--out", str(tmp_path / "cmp"))
    assert out.returncode == 0, out.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "cmp" / "generalisation.csv").open()))
    assert [r["source"] for r in rows] == ["site-A", "site-B", "site-C"]
    assert sum(int(r["images"]) for r in rows) == 4 * 12  # every image tested once
    assert all(r["in_source_run"] == "in_source" and r["in_source_accuracy"] for r in rows)
    assert all(float(r["accuracy_lo"]) <= float(r["accuracy"]) <= float(r["accuracy_hi"]) for r in rows)


@pytest.mark.slow
@requires_shared
def test_leave_one_source_out_on_the_real_sample_end_to_end(tmp_path):
    """Four public collections; holding out the one that gave every Viral Pneumonia image leaves
    none to train on: said in one line, its metrics null, and the audit flags the confounding."""
    data = ["dataset=manifest", f"dataset.manifest={SHARED_REAL / 'manifest.csv'}", "dataset.source_column=source_repo",
            "dataset.classes=[COVID,Normal,Viral Pneumonia]", "dataset.image_size=64", "dataset.cache=ram"]
    out = run_cli("lungcls.train", "-m", *data, "backbone=logistic", "trainer.max_epochs=1", "trainer.accelerator=cpu",
                  "logger=csv", "dataset.folds=source", "dataset.fold=range(4)", f"hydra.sweep.dir={tmp_path / 'loso'}",
                  timeout=1200)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "no training images of Viral Pneumonia" in out.stdout + out.stderr
    out = run_cli("lungcls.compare", str(tmp_path / "loso"), "--out", str(tmp_path / "cmp"))
    assert out.returncode == 0, out.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "cmp" / "generalisation.csv").open()))
    assert len(rows) == 4 and sum(int(r["images"]) for r in rows) == 823
    held = {r["source"]: r for r in rows}
    assert held["lecuong1502/BTL_Machine_Learning"]["recall/Viral Pneumonia"] == ""  # null: never trained on
    assert "no training images of Viral Pneumonia" in (tmp_path / "cmp" / "comparison.md").read_text()
    audit = run_cli("lungcls.audit", *data[:5], f"hydra.run.dir={tmp_path / 'audit'}", timeout=600)
    assert audit.returncode == 0, audit.stderr[-2000:]
    assert "source confounding: Cramer's V" in audit.stdout and "FLAGGED" in audit.stdout
    assert "Viral Pneumonia only from lecuong1502/BTL_Machine_Learning" in audit.stdout
