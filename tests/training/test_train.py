"""End to end: the training pipeline as users run it, on the demo phantom at tiny CPU size."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lungcls.errors import LungclsError
from lungcls.models.backbones import BACKBONES
from lungcls.models.finetune import POLICIES
from lungcls.train import train

from conftest import SHARED_REAL, requires_shared, run_cli


def read_predictions(run: Path) -> list[dict]:
    with (run / "predictions.csv").open() as f:
        return list(csv.DictReader(f))


def test_demo_run_leaves_a_complete_run_folder(train_cfg, tmp_path):
    cfg = train_cfg("backbone=resnet18", "finetune=full", "trainer.max_epochs=2")
    results = train(cfg)
    for name in ("splits.csv", "checkpoints/best.ckpt", "checkpoints/last.ckpt", "metrics.json",
                 "predictions.csv", "confusion_matrix.png", "csv/metrics.csv"):
        assert (tmp_path / name).is_file(), name
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"train", "val", "test", "trainable_params", "total_params"} <= set(metrics)
    assert metrics["trainable_params"] == metrics["total_params"] > 0
    # metrics.json agrees with predictions.csv recomputed by hand
    rows = read_predictions(tmp_path)
    names = metrics["test"]["class_names"]
    cm = np.zeros((len(names), len(names)), int)
    for r in rows:
        cm[names.index(r["label"]), names.index(r["pred"])] += 1
        probs = [float(r[f"prob_{c}"]) for c in names]
        assert abs(sum(probs) - 1) < 1e-4 and names[int(np.argmax(probs))] == r["pred"]
    assert cm.tolist() == metrics["test"]["confusion_matrix"]
    normal = names.index("Normal")
    assert metrics["test"]["fn_to_normal"] == {c: int(cm[i, normal]) for i, c in enumerate(names) if i != normal}
    assert metrics["test"]["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert results["test/acc"] == pytest.approx(metrics["test"]["accuracy"])
    # the per-class keys of the design were logged during training
    with (tmp_path / "csv" / "metrics.csv").open() as f:
        header = next(csv.reader(f))
    for key in ("val/recall/COVID", "val/precision/Viral Pneumonia", "val/f1/Normal", "val/fn_to_normal/COVID",
                "val/fn_to_normal_total", "val/macro_f1", "train/acc", "val/loss", "test/fn_to_normal/COVID",
                "test/loss", "test/auroc/COVID", "val/auroc/Normal"):
        assert key in header, key
    # the split file covers every image once and holds no leakage between splits
    with (tmp_path / "splits.csv").open() as f:
        split_rows = list(csv.DictReader(f))
    assert len({r["path"] for r in split_rows}) == len(split_rows) == 4 * 12
    test_paths = {r["path"] for r in split_rows if r["split"] == "test"}
    assert test_paths == {r["path"] for r in rows}


def test_resume_from_last_checkpoint_continues_the_run(train_cfg, tmp_path):
    first = tmp_path / "first"
    train(train_cfg("backbone=logistic", "trainer.max_epochs=1", out=first))
    ckpt = torch.load(first / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 0
    second = tmp_path / "second"
    train(train_cfg("backbone=logistic", "trainer.max_epochs=3", f"ckpt_path={first}/checkpoints/last.ckpt", out=second))
    resumed = torch.load(second / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert resumed["epoch"] == 2 and resumed["global_step"] > ckpt["global_step"]
    # in the new folder: the metrics of all three epochs in one file, and the best of the three kept
    with (second / "csv" / "metrics.csv").open() as f:
        f1 = {int(r["epoch"]): float(r["val/macro_f1"]) for r in csv.DictReader(f) if r.get("val/macro_f1")}
    assert sorted(f1) == [0, 1, 2]
    best = torch.load(second / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert best["epoch"] == max(f1, key=lambda e: (f1[e], -e))  # the first epoch with the highest score
    assert json.loads((second / "metrics.json").read_text())["best_checkpoint"] == str((second / "checkpoints" / "best.ckpt").resolve())


def test_best_checkpoint_is_the_epoch_with_fewest_missed_diagnoses(train_cfg, tmp_path):
    # mode: auto (the default) keeps the fewest for a count of missed disease
    cfg = train_cfg("backbone=logistic", "trainer.max_epochs=4", "optimizer.lr=0.05",
                    "callbacks.checkpoint.monitor=val/fn_to_normal_total")
    train(cfg)
    with (tmp_path / "csv" / "metrics.csv").open() as f:
        per_epoch = {int(r["epoch"]): float(r["val/fn_to_normal_total"]) for r in csv.DictReader(f) if r.get("val/fn_to_normal_total")}
    assert len(per_epoch) == 4
    best = min(per_epoch.values())
    first_best_epoch = min(e for e, v in per_epoch.items() if v == best)  # ties keep the earlier checkpoint
    ckpt = torch.load(tmp_path / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == first_best_epoch
    scored = json.loads((tmp_path / "metrics.json").read_text())["val"]
    assert sum(scored["fn_to_normal"].values()) == best  # metrics.json scores that checkpoint


def test_monitoring_checks_names_and_directions_and_survives_undefined_values(train_cfg):
    with pytest.raises(LungclsError, match="callbacks.checkpoint.monitor=val/bogus is not a metric a run logs"):
        train(train_cfg("backbone=logistic", "callbacks.checkpoint.monitor=val/bogus"))
    with pytest.raises(LungclsError, match="mode=max would keep the model with the worst val/fn_to_normal_total"):
        train(train_cfg("backbone=logistic", "callbacks.checkpoint.monitor=val/fn_to_normal_total", "callbacks.checkpoint.mode=max"))
    # zero-initialised logistic regression predicts one class at first: the precision of the others
    # is undefined (not logged) in that epoch, which must not stop the run
    results = train(train_cfg("backbone=logistic", "trainer.max_epochs=2", "callbacks.checkpoint.monitor=val/precision/Normal",
                              "callbacks.early_stopping.enabled=true"))
    assert "test/acc" in results


@pytest.mark.slow
@pytest.mark.parametrize("backbone", BACKBONES.names())
@pytest.mark.parametrize("finetune", POLICIES.names())
def test_every_backbone_and_finetune_trains(train_cfg, tmp_path, backbone, finetune):
    cfg = train_cfg(f"backbone={backbone}", f"finetune={finetune}", "trainer.limit_train_batches=1",
                    "trainer.limit_val_batches=1", "test=false", "dataset.batch_size=4")
    results = train(cfg)
    assert "train/loss" in results and np.isfinite(results["train/loss"])
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_cfg_job_prints_the_composed_config():
    out = run_cli("lungcls.train", "--cfg", "job", "backbone=vgg19_bn", "finetune=partial", "finetune.fraction=0.5")
    assert out.returncode == 0, out.stderr
    assert "name: vgg19_bn" in out.stdout and "fraction: 0.5" in out.stdout


def test_unknown_option_or_key_is_one_line_naming_the_choices(capsys):
    """What `lungcls-train backbone=resnet5` prints (the check its main runs first, in-process)."""
    from lungcls.cli import check_overrides

    with pytest.raises(SystemExit) as e:
        check_overrides("train", ["backbone=resnet5"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert e.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("lungcls: error: In 'train': Could not find 'backbone/resnet5'; available options in 'backbone': ")
    assert "resnet50" in lines[0] and "search path" not in lines[0]  # the registered backbones, not Hydra's internals


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["finetune=partial", "finetune.fraction=1.5"], "finetune.fraction=1.5 must be in (0, 1]"),
        (["dataset=covid_radiography", "dataset.root=/nonexistent/data"], "data folder /nonexistent/data does not exist"),
        (["backbone=alexnet", "dataset.image_size=32"], "dataset.image_size=32 is too small for alexnet; use 63 or more"),
        (["trainer.max_epochs=abc"], "trainer.max_epochs=abc must be a whole number"),
        (["dataset=folder", "dataset.root={tree}", "dataset.classes=[COVID,Normal,Tuberculosis]"],
         "Tuberculosis have no images"),
        (["optimizer.lr=fast"], "cannot build the optimizer torch.optim.Adam"),
        (["scheduler.step_size=abc", "scheduler=step"], "cannot build the scheduler"),
    ],
)
def test_wrong_overrides_fail_fast_with_one_clear_line(train_cfg, class_tree, overrides, message):
    """In-process, the same error the CLI prints as its one `lungcls: error:` line (the CLI path
    itself is tested in test_reliability)."""
    cfg = train_cfg(*[o.replace("{tree}", str(class_tree)) for o in overrides])
    with pytest.raises(LungclsError) as e:
        train(cfg)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow  # 18 s: the README's command keeps its 4-minute budget; CI runs it with the slow set
def test_evaluate_a_checkpoint_on_its_test_split_and_an_external_folder(train_cfg, tmp_path, class_tree, caplog):
    run = tmp_path / "run"
    train(train_cfg("backbone=logistic", "trainer.max_epochs=1", out=run))
    expected = json.loads((run / "metrics.json").read_text())["test"]
    ev = tmp_path / "ev"
    out = run_cli("lungcls.evaluate", f"ckpt={run}/checkpoints/best.ckpt", f"hydra.run.dir={ev}",
                  "evaluate.positive_class=COVID")
    assert out.returncode == 0, out.stderr
    got = json.loads((ev / "metrics.json").read_text())
    assert got["test"]["confusion_matrix"] == expected["confusion_matrix"]  # the same test split, same numbers
    assert got["screening"]["positive_class"] == "COVID"
    assert (ev / "predictions.csv").is_file() and (ev / "confusion_matrix.png").is_file()
    # evaluate's old key still works for one release, with a one-line notice naming the new one
    from conftest import compose_cfg
    from lungcls.evaluate import evaluate

    with caplog.at_level("WARNING"):
        old = evaluate(compose_cfg("evaluate", [f"ckpt_path={run}/checkpoints/best.ckpt"], tmp_path / "ev_old", tmp_path))
    assert "ckpt_path= is now ckpt=" in caplog.text
    assert old["confusion_matrix"] == expected["confusion_matrix"]
    # an external folder with a class the model does not know and known classes missing
    (class_tree / "Tuberculosis" / "images").mkdir(parents=True)
    import shutil

    shutil.copy(next((class_tree / "COVID" / "images").iterdir()), class_tree / "Tuberculosis" / "images" / "t.png")
    ext = tmp_path / "ext"
    out = run_cli("lungcls.evaluate", f"ckpt={run}/checkpoints/best.ckpt", f"hydra.run.dir={ext}", "dataset=folder",
                  f"dataset.root={class_tree}", "dataset.classes=[COVID,Normal,Viral Pneumonia,Tuberculosis]", "dataset.split=all")
    assert out.returncode == 0, out.stderr
    mismatch = [l for l in out.stdout.splitlines() if l.startswith("class mismatch:")]
    assert len(mismatch) == 1
    assert "does not know: Tuberculosis (1 images, left out)" in mismatch[0] and "Lung_Opacity" in mismatch[0]
    # the Tuberculosis image is a copy of a COVID one: scored, and the conflict is said
    assert "WARNING: 1 group(s) of duplicate images carry different labels" in out.stdout
    got = json.loads((ext / "metrics.json").read_text())
    assert sum(got["all"]["per_class"][c]["support"] for c in got["all"]["class_names"]) == 30


@requires_shared
def test_training_on_real_xrays(train_cfg, tmp_path):
    cfg = train_cfg("dataset=folder", f"dataset.root={SHARED_REAL}", "dataset.classes=[COVID,Normal,Viral Pneumonia]",
                    "backbone=resnet18", "finetune=head", "dataset.max_per_class=20", "backbone.weights=null")
    train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test"]["class_names"] == ["COVID", "Normal", "Viral Pneumonia"]
    assert sum(metrics["test"]["per_class"][c]["support"] for c in metrics["test"]["class_names"]) == 6


@pytest.mark.parametrize("scheduler", ["step", "cosine", "warmup_cosine"])
def test_schedulers_change_the_learning_rate_as_configured(train_cfg, tmp_path, scheduler):
    extra = ["scheduler.step_size=1", "scheduler.gamma=0.5"] if scheduler == "step" else []
    train(train_cfg("backbone=logistic", "trainer.max_epochs=3", f"scheduler={scheduler}", "test=false", *extra))
    with (tmp_path / "csv" / "metrics.csv").open() as f:
        lrs = [float(r["lr-Adam"]) for r in csv.DictReader(f) if r.get("lr-Adam")]
    assert len(lrs) == 3
    if scheduler == "step":
        assert lrs == pytest.approx([1e-3, 5e-4, 2.5e-4])
    elif scheduler == "cosine":
        assert lrs[0] == pytest.approx(1e-3) and lrs[0] > lrs[1] > lrs[2]
    else:  # warm-up from 1% of the rate, then decay
        assert lrs[0] < 1e-4 and lrs[1] > lrs[2]


@pytest.mark.parametrize("augment", ["none", "default", "paper", "keras_like", "rrc"])
def test_every_augment_config_builds_and_keeps_batches_valid(augment):
    from hydra import compose, initialize_config_dir

    from lungcls.cli import CONF_DIR
    from lungcls.data.augment.build import build_augment

    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose(config_name="train", overrides=[f"augment={augment}"])
    aug = build_augment(dict(cfg.augment), 32)
    x = torch.rand(8, 1, 32, 32)
    if augment == "none":
        assert aug is None
        return
    torch.manual_seed(0)
    y = aug(x)
    assert y.shape == x.shape and torch.isfinite(y).all() and not torch.allclose(y, x)
    if augment == "rrc":
        assert cfg.augment.brightness == 0 and cfg.augment.contrast == 0


def test_head_dropout_override_reaches_the_network():
    from lungcls.models.module import build_network
    from lungcls.models.backbones import get_backbone

    net, _ = build_network(get_backbone("alexnet"), {"name": "alexnet", "weights": None, "dropout": 0.2}, 3)
    assert {m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)} == {0.2}


def test_an_undefined_monitored_value_counts_as_the_worst():
    from types import SimpleNamespace

    from lungcls.training.trainer import KeptModelCheckpoint

    trainer = SimpleNamespace(callback_metrics={"val/acc": torch.tensor(0.5)}, current_epoch=3, global_step=7)
    for mode, worst in (("max", float("-inf")), ("min", float("inf"))):
        candidates = KeptModelCheckpoint(monitor="val/precision/COVID", mode=mode)._monitor_candidates(trainer)
        assert candidates["val/precision/COVID"].item() == worst and candidates["val/acc"].item() == 0.5
