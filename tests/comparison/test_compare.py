"""`lungcls-compare` on fabricated run folders: order, exact numbers, failed runs kept, files written."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from lungcls.compare import main
from lungcls.comparison.ranking import rank_runs
from lungcls.runs.folders import collect_runs
from lungcls.errors import LungclsError

from conftest import SHARED_REAL, requires_shared, run_cli

CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]


def stage(accuracy, macro_f1, recall, fn):
    """One stage block as metrics.json stores it (recall and fn_to_normal per class given)."""
    per_class = {
        c: {"precision": 0.5, "recall": recall.get(c), "f1": 0.5, "specificity": 0.9, "support": 10}
        for c in CLASSES
    }
    return {
        "accuracy": accuracy,
        "macro_f1": macro_f1,
        "per_class": per_class,
        "fn_to_normal": {c: fn.get(c, 0) for c in CLASSES if c != "Normal"},
        "confusion_matrix": [[10, 0, 0, 0]] * 4,
        "class_names": CLASSES,
    }


def make_run(folder: Path, overrides, backbone, finetune, metrics=None, error=None) -> Path:
    (folder / ".hydra").mkdir(parents=True)
    config = {
        "backbone": {"name": backbone},
        "finetune": {"name": finetune},
        "optimizer": {"_target_": "torch.optim.Adam", "lr": 1e-4},
        "dataset": {"name": "demo", "classes": CLASSES, "normal_class": "Normal"},
    }
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))
    if error is not None:
        (folder / "error.txt").write_text(error + "\nsecond line\n")
    return folder


def full_metrics(test, trainable, val=None):
    val = val or stage(0.7, 0.6, {"COVID": 0.7}, {"COVID": 2})
    return {
        "train": stage(0.99, 0.98, {"COVID": 1.0}, {}),
        "val": val,
        "test": test,
        "trainable_params": trainable,
        "total_params": 1000,
        "best_checkpoint": "checkpoints/best.ckpt",
    }


@pytest.fixture()
def multirun(tmp_path) -> Path:
    """A sweep folder: three finished runs, one failed, one without test metrics (job 10)."""
    root = tmp_path / "multirun" / "2026-01-31" / "10-00-00"
    common = ["dataset=demo", "trainer.max_epochs=1"]
    make_run(root / "0", ["backbone=alexnet", "finetune=head", *common], "alexnet", "head",
             full_metrics(stage(0.80, 0.75, {"COVID": 0.7, "Viral Pneumonia": 0.8},
                                {"COVID": 3, "Viral Pneumonia": 2}), 8196))
    make_run(root / "1", ["backbone=resnet50", "finetune=paper", *common], "resnet50", "paper",
             full_metrics(stage(0.9123456789012345, 0.9, {"COVID": 0.95, "Viral Pneumonia": None},
                                {"COVID": 1, "Viral Pneumonia": 0}), 22_000_000))
    # same number missed as run 1 but more accurate; its many Lung_Opacity misses are not "missed"
    make_run(root / "2", ["backbone=vgg19_bn", "finetune=full", *common], "vgg19_bn", "full",
             full_metrics(stage(0.95, 0.94, {"COVID": 0.9, "Viral Pneumonia": 1.0},
                                {"COVID": 1, "Viral Pneumonia": 0, "Lung_Opacity": 7}), 139_000_000))
    make_run(root / "3", ["backbone=logistic", "finetune=full", *common], "logistic", "full",
             error="CUDA out of memory")
    no_test = full_metrics(None, 50, val=stage(0.99, 0.99, {"COVID": 1.0}, {"COVID": 0}))
    del no_test["test"]
    make_run(root / "10", ["backbone=resnet18", "finetune=head", *common], "resnet18", "head", no_test)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def test_collect_runs_finds_every_run_in_job_order(multirun):
    runs = collect_runs([multirun])
    assert [r["run"] for r in runs] == ["0", "1", "2", "3", "10"]
    assert [r["backbone"] for r in runs] == ["alexnet", "resnet50", "vgg19_bn", "logistic", "resnet18"]
    assert runs[3]["status"] == "failed: CUDA out of memory" and runs[3]["metrics"] is None
    assert runs[0]["status"] == "ok" and runs[4]["status"] == "ok"
    # run folders given directly
    assert [r["run"] for r in collect_runs([multirun / "2", multirun / "0"])] == ["2", "0"]


def test_default_rank_fewest_missed_then_test_accuracy(multirun):
    rows, _ = rank_runs(collect_runs([multirun]))
    assert [r["run"] for r in rows] == ["2", "1", "0", "10", "3"]
    assert [r["rank"] for r in rows] == [1, 2, 3, None, None]
    assert [r["missed"] for r in rows[:3]] == [1, 1, 5]
    assert rows[0]["test/fn_to_normal_total"] == 8  # every disease class, Lung_Opacity included
    assert rows[3]["status"] == "no test metrics"
    assert rows[4]["status"] == "failed: CUDA out of memory"


def test_numbers_are_copied_exactly(multirun):
    rows, _ = rank_runs(collect_runs([multirun]))
    row = next(r for r in rows if r["run"] == "1")
    assert row["test/acc"] == 0.9123456789012345
    assert row["train/acc"] == 0.99 and row["val/acc"] == 0.7
    assert row["test/macro_f1"] == 0.9 and row["val/macro_f1"] == 0.6
    assert row["trainable_params"] == 22_000_000
    assert row["test/recall/COVID"] == 0.95
    assert row["test/recall/Viral Pneumonia"] is None  # undefined in metrics.json stays undefined
    assert row["test/fn_to_normal/COVID"] == 1 and row["test/fn_to_normal/Viral Pneumonia"] == 0
    assert "test/fn_to_normal/Normal" not in row
    assert row["backbone"] == "resnet50" and row["finetune"] == "paper"


def test_distinguishing_overrides_hide_common_ones(multirun):
    rows, _ = rank_runs(collect_runs([multirun]))
    assert rows[0]["overrides"] == "backbone=vgg19_bn finetune=full"
    single, _ = rank_runs(collect_runs([multirun / "0"]))
    assert single[0]["overrides"] == "backbone=alexnet finetune=head dataset=demo trainer.max_epochs=1"


@pytest.mark.parametrize(
    "rank_by,order",
    [
        ("test/acc", ["2", "1", "0"]),
        ("test/acc:asc", ["0", "1", "2"]),
        ("trainable_params", ["0", "1", "2"]),
        ("test/fn_to_normal/COVID", ["2", "1", "0"]),  # 1 vs 1 tie -> fewest missed, then accuracy
        ("test/recall/COVID", ["1", "2", "0"]),
        ("missed:desc", ["0", "2", "1"]),
    ],
)
def test_rank_by_a_column(multirun, rank_by, order):
    rows, _ = rank_runs(collect_runs([multirun]), rank_by=rank_by)
    assert [r["run"] for r in rows[:3]] == order
    assert [r["run"] for r in rows[3:]] == ["10", "3"]


def test_rank_by_unknown_column_is_a_user_error(multirun):
    with pytest.raises(LungclsError, match="no column 'test/auc'"):
        rank_runs(collect_runs([multirun]), rank_by="test/auc")


def test_stage_val_ranks_runs_without_test(multirun):
    rows, _ = rank_runs(collect_runs([multirun]), stage="val")
    assert rows[0]["run"] == "10" and rows[0]["missed"] == 0
    assert rows[-1]["run"] == "3"


def test_missed_classes_choice_and_fallback(multirun):
    rows, notes = rank_runs(collect_runs([multirun]), missed=["Lung_Opacity"])
    assert rows[0]["run"] == "1" and rows[0]["missed"] == 0
    assert not notes
    rows, notes = rank_runs(collect_runs([multirun]), missed=["Tuberculosis"])
    assert rows[0]["missed"] == rows[0]["test/fn_to_normal_total"]
    assert notes and "Tuberculosis" in notes[0]


def test_cli_writes_the_three_files(multirun, capsys):
    assert main([str(multirun)]) == 0
    out = capsys.readouterr().out
    for name in ("comparison.md", "comparison.csv", "comparison.png"):
        assert (multirun / name).is_file(), name
    assert (multirun / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    md = (multirun / "comparison.md").read_text()
    assert md.splitlines()[0] == "# Run comparison"
    assert "| rank | run | overrides | backbone | finetune |" in md
    assert "failed: CUDA out of memory" in md and "no test metrics" in md
    assert md in out  # the table is printed

    with open(multirun / "comparison.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["run"] for r in table] == ["2", "1", "0", "10", "3"]
    assert float(table[1]["test/acc"]) == 0.9123456789012345
    assert table[1]["test/recall/Viral Pneumonia"] == ""
    assert table[4]["status"] == "failed: CUDA out of memory" and table[4]["rank"] == ""


def test_cli_several_folders_and_out(multirun, tmp_path, capsys, monkeypatch):
    out = tmp_path / "report"
    assert main([str(multirun / "0"), str(multirun / "3"), "--out", str(out), "--missed", "COVID"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["comparison.csv", "comparison.md", "comparison.png"]
    text = (out / "comparison.md").read_text()
    assert "| 1 | 0 |" in text and "failed: CUDA out of memory" in text

    monkeypatch.chdir(tmp_path)
    assert main([str(multirun / "1"), str(multirun / "2")]) == 0
    assert (tmp_path / "comparison.csv").is_file()


@pytest.mark.parametrize("args", [["does-not-exist"], ["EMPTY"], ["RUNS", "--rank-by", "nope"]])
def test_cli_user_errors_are_one_line_exit_2(multirun, tmp_path, capsys, args):
    (tmp_path / "empty").mkdir()
    args = [{"EMPTY": str(tmp_path / "empty"), "RUNS": str(multirun)}.get(a, a) for a in args]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lungcls-compare: error: ") and "\n" not in err


def source_fold_run(folder: Path, fold, site: str, accuracy: float, trained: list[str], tested: dict[str, int],
                    overrides=None) -> Path:
    """A leave-one-source-out run: metrics.json, and a splits.csv naming each image's source."""
    folds = [] if fold is None else ["dataset.folds=source", f"dataset.fold={fold}"]
    make_run(folder, ["dataset.demo.sources=3", *folds, *(overrides or [])], "resnet18", "full")
    config = yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())
    config["dataset"].update(folds=None if fold is None else "source", fold=fold or 0)
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    block = stage(accuracy, accuracy - 0.1, {c: 0.5 for c in CLASSES}, {"COVID": 2, "Viral Pneumonia": 1})
    for c in CLASSES:
        block["per_class"][c]["support"] = tested.get(c, 0)
        block["per_class"][c]["recall"] = 0.5 if tested.get(c) else None
    block["ci"] = {"accuracy": [accuracy - 0.05, accuracy + 0.05], "macro_f1": [accuracy - 0.2, accuracy]}
    (folder / "metrics.json").write_text(json.dumps(full_metrics(block, 10)))
    with (folder / "splits.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split", "source"])
        w.writerows([[f"{site}-{c}-{i}.png", c, "test", site] for c, n in tested.items() for i in range(n)])
        w.writerows([[f"other-{c}.png", c, "train", "other"] for c in trained])
    return folder


def test_leave_one_source_out_runs_become_generalisation_csv_beside_the_in_source_result(tmp_path, capsys):
    root = tmp_path / "loso"
    source_fold_run(root / "0", 0, "site-A", 0.6, CLASSES, {"COVID": 10, "Normal": 5, "Lung_Opacity": 5})
    source_fold_run(root / "1", 1, "site-B", 0.5, ["COVID", "Normal", "Lung_Opacity"], {c: 5 for c in CLASSES})
    source_fold_run(tmp_path / "random" / "0", None, "", 0.9, CLASSES, {c: 5 for c in CLASSES})
    assert main([str(root), str(tmp_path / "random"), "--out", str(tmp_path / "out")]) == 0
    rows = {r["source"]: r for r in csv.DictReader((tmp_path / "out" / "generalisation.csv").open())}
    assert set(rows) == {"site-A", "site-B"}
    a, b = rows["site-A"], rows["site-B"]
    assert a["images"] == "20" and float(a["accuracy"]) == 0.6 and float(a["accuracy_lo"]) == pytest.approx(0.55)
    assert float(a["in_source_accuracy"]) == 0.9 and float(a["gap"]) == pytest.approx(0.3)
    assert a["recall/Viral Pneumonia"] == "" and a["recall/COVID"] == "0.5"  # no test images: null, not 0
    assert b["recall/Viral Pneumonia"] == "" and b["fn_to_normal/Viral Pneumonia"] == ""  # never trained on: null
    assert b["fn_to_normal/COVID"] == "2" and b["missed"] == "2"
    text = (tmp_path / "out" / "comparison.md").read_text()
    assert "## Leave-one-source-out (generalisation.csv)" in text
    assert "held out site-B (loso/1): no training images of Viral Pneumonia: their metrics are null" in text
    assert "held out site-A (loso/0): no test images of Viral Pneumonia" in text
    assert "0.600 [0.550, 0.650]" in text


def composed_run(folder: Path, overrides: list[str], accuracy: float, tested: dict[str, int]) -> Path:
    """A run folder as lungcls-train leaves it: .hydra/config.yaml composed by Hydra from ``overrides``
    (written in overrides.yaml as given), metrics.json and splits.csv."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from lungcls.cli import CONF_DIR

    source_fold_run(folder, None, "site", accuracy, CLASSES, tested)
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose(config_name="train", overrides=overrides)
    (folder / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    return folder


def test_in_source_run_is_paired_by_its_settings_not_by_its_override_text(tmp_path):
    """A multirun writes `Viral\\ Pneumonia` where a single run writes `Viral Pneumonia`, and users give
    overrides in any order: the in-source run is the one whose composed config matches."""
    classes = ["COVID", "Normal", "Viral Pneumonia"]
    tested = {"COVID": 5, "Normal": 5}
    for fold in (0, 1):
        composed_run(tmp_path / "loso" / str(fold), ["dataset.classes=[COVID,Normal,Viral\\ Pneumonia]",
                     "backbone=logistic", "dataset.folds=source", f"dataset.fold={fold}"], 0.5, tested)
    composed_run(tmp_path / "in_source", ["backbone=logistic", "dataset.classes=[COVID,Normal,Viral Pneumonia]"],
                 0.9, tested)
    composed_run(tmp_path / "other", ["dataset.classes=[COVID,Normal,Viral Pneumonia]", "backbone=logistic",
                                      "dataset.image_size=64"], 0.7, tested)  # another setting: not its pair
    assert main([str(tmp_path / "loso"), str(tmp_path / "in_source"), str(tmp_path / "other"),
                 "--out", str(tmp_path / "out")]) == 0
    rows = list(csv.DictReader((tmp_path / "out" / "generalisation.csv").open()))
    assert len(rows) == 2 and {r["in_source_run"] for r in rows} == {"in_source"}
    assert all(float(r["in_source_accuracy"]) == 0.9 and float(r["gap"]) == pytest.approx(0.4) for r in rows)
    assert yaml.safe_load((tmp_path / "loso" / "0" / ".hydra" / "config.yaml").read_text())["dataset"]["classes"] == classes


def test_held_out_sources_are_not_ranked_and_a_fold_with_nothing_to_miss_has_null_missed(tmp_path):
    """A fold whose test source has no COVID and whose Viral Pneumonia never reached training has no
    missed-disease count (null, not 0), and folds tested on different sources get no rank: a fold
    at 0.0 accuracy must not rank above one at 0.5 for "fewest missed"."""
    root = tmp_path / "loso"
    source_fold_run(root / "0", 0, "Actualmed", 0.5, CLASSES, {"COVID": 10, "Normal": 5})
    kermany = source_fold_run(root / "1", 1, "Kermany", 0.0, ["COVID", "Normal"], {"Normal": 5, "Viral Pneumonia": 5})
    metrics = json.loads((kermany / "metrics.json").read_text())
    metrics["test"]["fn_to_normal"] = {"COVID": 0, "Lung_Opacity": 0, "Viral Pneumonia": 0}  # as older runs stored it
    (kermany / "metrics.json").write_text(json.dumps(metrics))
    source_fold_run(tmp_path / "random" / "0", None, "", 0.9, CLASSES, {c: 5 for c in CLASSES})
    assert main([str(root), str(tmp_path / "random"), "--out", str(tmp_path / "out")]) == 0
    general = {r["source"]: r for r in csv.DictReader((tmp_path / "out" / "generalisation.csv").open())}
    assert general["Kermany"]["missed"] == "" and general["Kermany"]["fn_to_normal/COVID"] == ""
    assert general["Actualmed"]["missed"] == "2"
    ranked = {r["run"]: r["rank"] for r in csv.DictReader((tmp_path / "out" / "comparison.csv").open())}
    assert ranked == {"random/0": "1", "loso/0": "", "loso/1": ""}
    text = (tmp_path / "out" / "comparison.md").read_text()
    assert "2 leave-one-source-out run(s) are listed after the ranked runs, without a rank" in text
    assert "different test sets" not in text  # the one ranked run is compared with nothing


@requires_shared
@pytest.mark.slow  # about a minute on 2 CPU cores: three tiny logistic runs on the 823 real films
def test_leave_one_source_out_on_real_films_as_a_user_runs_it(tmp_path):
    """The README's commands on the shared real sample: the multirun's folds pair with the single
    in-source run (its overrides written differently), a fold without COVID films and without Viral
    Pneumonia in training has null counts, and no fold is ranked."""
    common = ["dataset=folder", f"dataset.root={SHARED_REAL}", "backbone=logistic", "dataset.image_size=32",
              "trainer.max_epochs=1", "trainer.accelerator=cpu", "logger=csv", "dataset.source_from=regex",
              "dataset.source_regex='images/([A-Za-z0-9]+)-'", f"paths.log_dir={tmp_path / 'outputs'}"]
    loso = run_cli("lungcls.train", "-m", *common, "dataset.classes=[COVID,Normal,Viral Pneumonia]",
                   "dataset.folds=source", "dataset.fold=Figure1,Kermany", f"hydra.sweep.dir={tmp_path / 'loso'}")
    assert loso.returncode == 0, loso.stderr[-2000:]
    single = run_cli("lungcls.train", "dataset.classes=[COVID,Normal,Viral Pneumonia]", *common,
                     f"hydra.run.dir={tmp_path / 'in_source'}")
    assert single.returncode == 0, single.stderr[-2000:]
    assert "Viral\\ Pneumonia" in (tmp_path / "loso" / "0" / ".hydra" / "overrides.yaml").read_text()
    kermany = json.loads((tmp_path / "loso" / "1" / "metrics.json").read_text())["test"]
    assert kermany["fn_to_normal"]["COVID"] is None and kermany["per_class"]["Viral Pneumonia"]["recall"] is None
    assert main([str(tmp_path / "loso"), str(tmp_path / "in_source"), "--out", str(tmp_path / "cmp")]) == 0
    rows = {r["source"]: r for r in csv.DictReader((tmp_path / "cmp" / "generalisation.csv").open())}
    assert set(rows) == {"Figure1", "Kermany"} and all(r["in_source_accuracy"] and r["gap"] for r in rows.values())
    assert rows["Kermany"]["missed"] == "" and rows["Figure1"]["missed"] != ""
    ranks = {r["run"]: r["rank"] for r in csv.DictReader((tmp_path / "cmp" / "comparison.csv").open())}
    assert ranks == {"in_source": "1", "loso/0": "", "loso/1": ""}
