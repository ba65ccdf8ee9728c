"""Streaming with LitData: ``lungcls-prepare`` writes a data set's decoded images, labels, sources
and split as LitData optimised datasets; ``dataset.layout=litdata dataset.root=<it>`` serves exactly
the images, labels and split the original layout gives, and training and evaluation from it give
the same metrics. A root that does not exist, was not prepared, or was prepared by another format,
image size or class list is one line naming the fix."""

from __future__ import annotations

import csv
import json
import shutil
import sys

import pytest
import torch

from lungcls.data.datamodule import LungDataModule
from lungcls.errors import LungclsError
from lungcls.prepare import prepare

from conftest import TINY, compose_cfg, make_class_tree, run_cli

pytest.importorskip("litdata")

CLASSES = ["COVID", "Normal", "Viral Pneumonia"]
FOLDER = ["dataset=folder", f"dataset.classes=[{','.join(CLASSES)}]", "dataset.image_size=24",
          "dataset.duplicates=none", "dataset.normalization=dataset"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A small class tree and its prepared LitData set (written once for the module)."""
    tmp = tmp_path_factory.mktemp("stream")
    tree = make_class_tree(tmp / "tree", {name: 8 for name in CLASSES}, size=32)
    cfg = compose_cfg("prepare", [*FOLDER, f"dataset.root={tree}", f"prepare.output={tmp / 'prepared'}"], tmp, tmp / "data")
    meta = prepare(cfg)
    return {"tree": tree, "root": tmp / "prepared", "meta": meta, "tmp": tmp}


def _data(root, layout: str, **extra) -> dict:
    return {"name": "x", "layout": layout, "root": str(root), "classes": CLASSES, "normal_class": "Normal",
            "image_size": 24, "batch_size": 5, "normalization": "dataset", "cache": "ram", "duplicates": "none",
            "val_fraction": 0.1, "test_fraction": 0.1, "split_seed": 1, **extra}


def _batches(dm: LungDataModule, split: str) -> dict[str, tuple[torch.Tensor, int]]:
    out = {}
    for x, y, rows in dm.loader(split):
        for image, label, row in zip(x, y, rows):
            out[dm.samples[int(row)].path] = (image, int(label))
    return out


def test_a_prepared_set_streams_the_same_images_labels_and_split_as_the_folder(prepared):
    folder = LungDataModule(_data(prepared["tree"], "folder"))
    folder.setup("fit")
    streamed = LungDataModule(_data(prepared["root"], "litdata"))
    streamed.setup("fit")
    assert streamed.assignment == folder.assignment
    assert streamed.mean + streamed.std == pytest.approx(folder.mean + folder.std)  # normalization=dataset
    assert streamed.class_counts("train") == folder.class_counts("train")
    for split in ("train", "val", "test"):
        a, b = _batches(folder, split), _batches(streamed, split)
        assert a.keys() == b.keys() and len(a) == len(folder.split_rows(split))
        for path, (image, label) in a.items():
            assert torch.equal(b[path][0], image) and b[path][1] == label, path
    files = {p.name for p in prepared["root"].iterdir()}
    assert {"lungcls.json", "splits.csv", "train", "val", "test"} <= files
    assert (prepared["root"] / "train" / "index.json").is_file()  # LitData's own index
    assert prepared["meta"]["images"] == {s: len(folder.split_rows(s)) for s in ("train", "val", "test")}


def _copy_with(prepared, tmp_path, **changes):
    root = tmp_path / "copy"
    shutil.copytree(prepared["root"], root)
    meta = json.loads((root / "lungcls.json").read_text())
    meta.update(changes)
    (root / "lungcls.json").write_text(json.dumps(meta))
    return root


@pytest.mark.parametrize("case, message", [
    ("missing", r"dataset.root=.*does not exist; prepare it first: lungcls-prepare"),
    ("not_prepared", r"has no lungcls.json: it was not written by lungcls-prepare"),
    ("format", r"was prepared by lungcls 0.0.1 \(format 99\); this is lungcls .*prepare it again"),
    ("size", r"prepared at 24 px, not dataset.image_size=32; set dataset.image_size=24 or prepare again"),
    ("classes", r"prepared with classes .* not dataset.classes="),
])
def test_a_root_that_cannot_be_streamed_is_one_line(prepared, tmp_path, case, message):
    root, extra = prepared["root"], {}
    if case == "missing":
        root = tmp_path / "nowhere"
    elif case == "not_prepared":
        root = prepared["tree"]
    elif case == "format":
        root = _copy_with(prepared, tmp_path, format=99, lungcls_version="0.0.1")
    elif case == "size":
        extra = {"image_size": 32}
    else:
        extra = {"classes": ["Normal", "COVID", "Viral Pneumonia"]}
    dm = LungDataModule(_data(root, "litdata", **extra))
    with pytest.raises(LungclsError, match=message):
        dm.setup("fit")


@pytest.mark.parametrize("case, message", [
    ("truncated", r"train/chunk-0-0.bin has [0-9,]+ of its [0-9,]+ bytes \(truncated\); copy the whole prepared folder again"),
    ("no_val", r"has no val/index.json though it was prepared with 3 val images; copy the whole prepared folder again"),
])
def test_a_damaged_copy_of_a_prepared_set_is_one_line_before_training(prepared, tmp_path, case, message):
    """An interrupted copy (a chunk cut short, a split folder missing) is named before any batch is
    read, instead of LitData waiting minutes for the chunk or failing mid-run on the folder."""
    root = _copy_with(prepared, tmp_path)
    if case == "truncated":
        chunk = root / "train" / "chunk-0-0.bin"
        chunk.write_bytes(chunk.read_bytes()[:-100])
    else:
        shutil.rmtree(root / "val")
    assert prepared["meta"]["images"]["val"] == 3
    with pytest.raises(LungclsError, match=message):
        LungDataModule(_data(root, "litdata")).setup("fit")


def test_prepare_refuses_a_used_output_folder_before_decoding_anything(prepared, monkeypatch):
    cfg = compose_cfg("prepare", [*FOLDER, f"dataset.root={prepared['tree']}", f"prepare.output={prepared['root']}"],
                      prepared["tmp"], prepared["tmp"] / "data")
    monkeypatch.setattr(LungDataModule, "setup", lambda *a, **k: pytest.fail("images were decoded before the check"))
    with pytest.raises(LungclsError, match="already exists and is not empty; name a new folder"):
        prepare(cfg)


def test_prepare_never_writes_over_a_folder_and_names_the_missing_extra(prepared, monkeypatch):
    cfg = compose_cfg("prepare", [*FOLDER, f"dataset.root={prepared['tree']}", f"prepare.output={prepared['root']}"],
                      prepared["tmp"], prepared["tmp"] / "data")
    before = (prepared["root"] / "lungcls.json").read_bytes()
    with pytest.raises(LungclsError, match="already exists and is not empty; name a new folder"):
        prepare(cfg)
    assert (prepared["root"] / "lungcls.json").read_bytes() == before
    remote = compose_cfg("prepare", [*FOLDER, f"dataset.root={prepared['tree']}", "prepare.output=s3://bucket/x"],
                         prepared["tmp"], prepared["tmp"] / "data")
    with pytest.raises(LungclsError, match="prepare into a local folder, then copy it"):
        prepare(remote)
    monkeypatch.setitem(sys.modules, "litdata", None)  # as if LitData were not installed
    with pytest.raises(LungclsError, match=r'pip install "lungcls\[stream\]"'):
        prepare(cfg)


def _metrics(run) -> dict:
    return json.loads((run / "metrics.json").read_text())


def _probs(run) -> dict[str, list[float]]:
    with (run / "predictions.csv").open() as f:
        return {r["path"]: [float(v) for k, v in r.items() if k.startswith("prob_")] for r in csv.DictReader(f)}


@pytest.mark.slow
def test_train_and_evaluate_from_the_prepared_demo_give_the_folder_layouts_metrics(tmp_path):
    """Same split and seed: the model trained from LitData chunks scores like the one trained from PNGs.
    One batch per epoch and no augmentation, so only the order within the batch (LitData shuffles
    its own way) differs: metrics equal, probabilities equal to rounding."""
    data = tmp_path / "data"
    same = [*TINY, "backbone=logistic", "augment=none", "dataset.batch_size=64", "trainer.max_epochs=3",
            f"paths.data_dir={data}", f"paths.root_dir={tmp_path}"]
    folder = run_cli("lungcls.train", *same, f"hydra.run.dir={tmp_path / 'folder'}", timeout=300)
    assert folder.returncode == 0, folder.stderr[-2000:]
    prep = run_cli("lungcls.prepare", *[o for o in same if o.startswith(("dataset.", "paths."))],
                   f"prepare.output={tmp_path / 'prepared'}", f"hydra.run.dir={tmp_path / 'prep-run'}", timeout=300)
    assert prep.returncode == 0, prep.stderr[-2000:]
    streamed = run_cli("lungcls.train", *same, "dataset.layout=litdata", f"dataset.root={tmp_path / 'prepared'}",
                       f"hydra.run.dir={tmp_path / 'streamed'}", timeout=300)
    assert streamed.returncode == 0, streamed.stderr[-2000:]
    a, b = _metrics(tmp_path / "folder"), _metrics(tmp_path / "streamed")
    for split in ("train", "val", "test"):
        assert a[split]["confusion_matrix"] == b[split]["confusion_matrix"], split
        assert a[split]["accuracy"] == b[split]["accuracy"]
    assert (tmp_path / "folder" / "splits.csv").read_bytes() == (tmp_path / "streamed" / "splits.csv").read_bytes()
    pa, pb = _probs(tmp_path / "folder"), _probs(tmp_path / "streamed")
    assert pa.keys() == pb.keys()
    assert max(abs(x - y) for p in pa for x, y in zip(pa[p], pb[p])) < 1e-3
    evaluated = run_cli("lungcls.evaluate", f"ckpt_path={tmp_path / 'streamed' / 'checkpoints' / 'best.ckpt'}",
                        f"paths.root_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'eval'}", timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert _metrics(tmp_path / "eval")["test"]["confusion_matrix"] == b["test"]["confusion_matrix"]


@pytest.mark.slow
def test_ddp_from_a_prepared_set_streams_shards_and_scores_every_image_once(tmp_path):
    """Under DDP LitData gives each process its share of a split: the synced val metrics describe the
    whole split once (they equal what rank 0 alone scores on every val image), and metrics.json
    counts every image of each split."""
    data = tmp_path / "data"
    base = [*TINY, "backbone=logistic", "augment=none", f"paths.data_dir={data}", f"paths.root_dir={tmp_path}"]
    prep = run_cli("lungcls.prepare", *[o for o in base if o.startswith(("dataset.", "paths."))],
                   f"prepare.output={tmp_path / 'prepared'}", f"hydra.run.dir={tmp_path / 'prep-run'}", timeout=300)
    assert prep.returncode == 0, prep.stderr[-2000:]
    run = tmp_path / "ddp"
    out = run_cli("lungcls.train", *base, "trainer=ddp_cpu", "dataset.layout=litdata",
                  f"dataset.root={tmp_path / 'prepared'}", f"hydra.run.dir={run}", timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = _metrics(run)
    counts = json.loads((tmp_path / "prepared" / "lungcls.json").read_text())["images"]
    assert {s: sum(pc["support"] for pc in metrics[s]["per_class"].values()) for s in counts} == counts
    with (run / "csv" / "metrics.csv").open() as f:
        logged = [r for r in csv.DictReader(f) if r.get("val/acc")]
    assert len(logged) == 1  # one epoch: the logged model is the scored one
    assert float(logged[0]["val/acc"]) == pytest.approx(metrics["val"]["accuracy"], abs=1e-6)
    assert float(logged[0]["val/macro_f1"]) == pytest.approx(metrics["val"]["macro_f1"], abs=1e-6)


def test_a_stream_stopped_mid_epoch_resumes_where_it_stopped(prepared):
    """The loader's state (what Lightning keeps in a checkpoint) resumes the epoch: the batches after
    the stop are the ones an uninterrupted epoch gives, none seen twice, none skipped."""
    from lungcls.data.cache.prepared import streaming_loader

    n, root = prepared["meta"]["images"]["train"], str(prepared["root"])

    def loader():
        return streaming_loader(root, "train", n, batch_size=3, shuffle=True, seed=7, workers=0, world=1)

    whole = [rows.tolist() for _, _, rows in loader()]
    assert len(whole) >= 4
    first = loader()
    it = iter(first)
    seen = [next(it)[2].tolist() for _ in range(2)]
    state = first.state_dict()
    resumed = loader()
    resumed.load_state_dict(state)
    rest = [rows.tolist() for _, _, rows in resumed]
    assert seen + rest == whole
    assert sorted(r for batch in whole for r in batch) == sorted(set(r for batch in whole for r in batch))
