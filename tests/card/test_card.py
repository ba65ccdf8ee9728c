"""Model cards built from small run folders the tests write: the numbers in the card are the numbers
in the files, what was not measured is said plainly, bad evidence is one line, and no card is
ever written over."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from lungcls.card.gather import gather
from lungcls.card.settings import card_settings
from lungcls.card.write import write_card
from lungcls.errors import LungclsError

CLASSES = ["COVID", "Normal", "Viral Pneumonia"]
SETTINGS = {"auto": True, "evidence": [], "intended_use": "Research only.", "out_of_scope": "Clinics.",
            "calibration_limit": 0.05, "min_class_images": 30}


def split_block(recalls, support, missed, ece):
    per_class = {c: {"precision": 0.8, "recall": r, "f1": 0.7, "specificity": 0.9, "support": n}
                 for c, r, n in zip(CLASSES, recalls, support)}
    return {
        "accuracy": 0.8125, "macro_f1": 0.75, "class_names": CLASSES, "per_class": per_class,
        "fn_to_normal": {"COVID": missed[0], "Viral Pneumonia": missed[1]},
        "ci": {"level": 0.95, "resamples": 1000, "method": "wilson", "seed": 0, "accuracy": [0.71, 0.88],
               "macro_f1": [0.6, 0.85], "per_class": {c: {"precision": [0.5, 0.9], "recall": [r - 0.2, r + 0.05],
                                                          "f1": [0.5, 0.8], "specificity": [0.8, 0.95]}
                                                      for c, r in zip(CLASSES, recalls)},
               "fn_to_normal_rate": {"COVID": [0.05, 0.31], "Viral Pneumonia": [0.01, 0.2]}},
        "calibration": {"ece": ece, "bins": 15, "brier": 0.3011},
        "per_source": {"site-A": {"images": 10, "accuracy": 0.9, "fn_to_normal": {"COVID": 1, "Viral Pneumonia": 0}},
                       "site-B": {"images": 6, "accuracy": 0.6667, "fn_to_normal": {"COVID": 2, "Viral Pneumonia": 1}}},
    }


def write_yaml(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))


def make_run(folder: Path, root: str = "/data/xrays") -> Path:
    """A finished training run: config, state, splits, metrics and a checkpoint file."""
    write_yaml(folder / ".hydra" / "config.yaml", {
        "task_name": "train", "seed": 1,
        "dataset": {"name": "folder", "root": root, "manifest": None, "image_size": 64, "normal_class": "Normal",
                    "val_fraction": 0.1, "test_fraction": 0.2, "split_seed": 1, "duplicates": "near", "folds": None},
        "backbone": {"name": "resnet18", "weights": "imagenet"}, "finetune": {"name": "full"},
        "optimizer": {"_target_": "torch.optim.Adam", "lr": 0.001}, "trainer": {"max_epochs": 3},
        "callbacks": {"checkpoint": {"monitor": "val/macro_f1", "mode": "auto"}}})
    write_yaml(folder / ".hydra" / "overrides.yaml", ["backbone=resnet18"])
    (folder / "status.json").write_text(json.dumps({"state": "complete", "started": "2026-01-01T10:00:00",
                                                   "ended": "2026-01-01T10:02:05", "command": "lungcls-train backbone=resnet18 hydra.run.dir=/x/run"}))
    rows = ["path,label,split,source"] + [f"x{i}.png,{CLASSES[i % 3]},{('train', 'val', 'test')[i % 5 // 2]},site-{'AB'[i % 2]}"
                                         for i in range(40)]
    (folder / "splits.csv").write_text("\n".join(rows) + "\n")
    metrics = {"test": split_block([0.83, 0.9, 0.75], [12, 10, 4], [2, 1], 0.0871),
               "train": {"accuracy": 0.97}, "val": {"accuracy": 0.85},
               "trainable_params": 11178051, "total_params": 11178051, "initial_weights": "imagenet",
               "backbone": "resnet18", "finetune": "full",
               "duplicates": {"mode": "near", "groups": 2, "images_in_groups": 4, "label_conflicts": 0, "dropped": []}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "best.ckpt").write_bytes(b"weights of " + folder.name.encode())
    return folder


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_evidence(base: Path, run: Path) -> dict[str, Path]:
    """An external evaluation, an audit, a leave-one-source-out comparison and a methods report."""
    ext = base / "ext"
    write_yaml(ext / ".hydra" / "config.yaml", {"task_name": "evaluate"})
    ext_block = split_block([0.5, 0.95, 0.25], [20, 20, 8], [9, 5], 0.1734)
    ext_block["accuracy"] = 0.6042
    (ext / "metrics.json").write_text(json.dumps({"all": ext_block, "split": "all", "data_root": "/data/other_hospital",
                                                  "checkpoint_sha256": sha(run / "checkpoints" / "best.ckpt"),
                                                  "training_overlap": {"training_images_found": 3}}))
    audit = base / "audit"
    write_yaml(audit / ".hydra" / "config.yaml", {"task_name": "audit", "dataset": {"root": "/data/xrays"}})
    (audit / "audit.json").write_text(json.dumps({
        "data_root": "/data/xrays", "images": 40, "files": 41, "exact_duplicates": [["a", "b"]], "near_duplicates": [],
        "label_conflicts": [], "unreadable": [{"path": "bad.png", "error": "truncated"}],
        "cross_split": {"exact": 1, "near": 0},
        "shortcut_probe": {"balanced_accuracy": 0.7123, "ci": [0.65, 0.77], "chance": 0.3333, "flagged": True, "region": "border"},
        "source_confounding": {"sources": 2, "cramers_v": 0.6893, "ci": [0.55, 0.8], "flagged": True, "classes": {
            "COVID": {"main_source": "site-A", "main_share": 0.4, "single_source": False},
            "Viral Pneumonia": {"main_source": "site-B", "main_share": 1.0, "single_source": True}}}}))
    cmp = base / "cmp"
    cmp.mkdir()
    (cmp / "generalisation.csv").write_text(
        "setting,source,run,images,accuracy,accuracy_lo,accuracy_hi,missed,in_source_run,in_source_accuracy,"
        "in_source_accuracy_lo,in_source_accuracy_hi,gap\n"
        f"s,site-B,loso/1,18,0.3889,0.2,0.61,7,{run.name},0.8125,0.71,0.88,0.4236\n")
    report = base / "report"
    write_yaml(report / ".hydra" / "config.yaml", {"task_name": "report", "report": {"sanity_threshold": 0.5}})
    (report / "checkpoints.json").write_text(json.dumps([{"model": "resnet18/full (run)", "sha256": sha(run / "checkpoints" / "best.ckpt")}]))
    head = "model,method,grid,images,lesion_ratio,hit_rate,lesion_share,lesion_share_lo,deletion_gain,deletion_gain_lo,sanity_spearman,sanity_flagged\n"
    (report / "methods.csv").write_text(head + "resnet18/full (run),gradcam,layer3 (8x8),40,2.6,0.2,0.18,0.12,0.14,0.08,-0.07,0.0\n"
                                        "resnet18/full (run),integrated_gradients,pixels,40,3.1,0.83,0.22,0.17,0.13,0.02,0.55,0.65\n"
                                        "resnet18/full (run),edge,\"pixels, model-free\",40,0.9,0.0,0.06,0.03,0.0,-0.01,1.0,1.0\n")
    return {"ext": ext, "audit": audit, "cmp": cmp, "report": report}


def card_text(run: Path, *named: str, beside: bool = True) -> tuple[str, str]:
    evid = gather(str(run), None, list(named), beside=beside)
    files = write_card(evid, card_settings(SETTINGS), run)
    return files.markdown.read_text(), files.checklist.read_text()


def test_a_card_copies_its_numbers_from_the_files_it_read(tmp_path):
    run = make_run(tmp_path / "run")
    found = make_evidence(tmp_path, run)
    text, checklist = card_text(run)  # every evidence folder lies beside the run
    metrics = json.loads((run / "metrics.json").read_text())["test"]
    ci = metrics["ci"]["per_class"]["COVID"]["recall"]
    assert f"| COVID | 12 | 0.800 [0.500, 0.900] | 0.830 [{ci[0]:.3f}, {ci[1]:.3f}] |" in text
    assert f"accuracy {metrics['accuracy']:.3f} [0.710, 0.880]" in text
    assert f"ECE {metrics['calibration']['ece']:.3f}" in text
    assert f"`{sha(run / 'checkpoints' / 'best.ckpt')}`" in text and "| training time | 125 s" in text
    assert "```bash\nlungcls-train backbone=resnet18\n```" in text  # its own overrides: a fresh folder, not the old one
    audit = json.loads((found["audit"] / "audit.json").read_text())
    assert f"Cramer's V {audit['source_confounding']['cramers_v']:.2f} [0.55, 0.80]" in text
    ext = json.loads((found["ext"] / "metrics.json").read_text())["all"]
    assert f"External (ext): accuracy {ext['accuracy']:.3f}" in text
    limits = text[text.index("## Limitations"):text.index("## Evidence read")]
    assert "Viral Pneumonia comes from one source (site-B; V = 0.69): with site-B held out, accuracy was 0.389 against 0.812 in-source." in limits
    assert "COVID comes" not in limits  # 40% from its main source: not a one-source class
    assert "Held out, source site-B (18 images) scored accuracy 0.389 against 0.812 in-source (gap 0.424)." in limits
    assert "Viral Pneumonia has 4 test image(s): its recall is known only to within [0.550, 0.800]." in limits
    assert "2 of 12 COVID test images were predicted Normal" in limits
    assert "ECE 0.087 on the test split (above 0.05)" in limits
    assert "1 group(s) of copies straddle train/val/test" in limits and "balanced accuracy 0.712" in limits
    assert "1 attribution method(s) fail the sanity check (integrated_gradients, edge)" not in limits
    assert "2 attribution method(s) fail the sanity check (integrated_gradients, edge)" in limits
    assert "Supported method: **gradcam**" in text
    assert "| 33 | testing on external data | filled | /data/other_hospital: 48 images, accuracy 0.604 [0.710, 0.880] |" in checklist
    assert "| 12f | model updating or recalibration | missing | run `lungcls-evaluate ckpt=" in checklist
    assert "17 (ethical approval)" in checklist


def test_a_bare_run_says_plainly_what_was_not_measured(tmp_path):
    run = make_run(tmp_path / "run")
    text, checklist = card_text(run)
    assert "No external or leave-one-source-out evaluation was run" in text
    assert "The data were not audited (no lungcls-audit)" in text
    assert "Where the model looks was not measured" in text
    assert "Attribution maps: not measured" in text and "Screening operating points: not measured" in text
    assert "| 33 | testing on external data | missing | run `lungcls-evaluate ckpt=" in checklist
    assert "| 32 | explainability methods and how they were checked | missing | run `lungcls-report" in checklist


def test_a_card_never_writes_over_an_earlier_card(tmp_path):
    run = make_run(tmp_path / "run")
    card_text(run)
    first = {p.name: p.read_bytes() for p in run.glob("*") if p.name.startswith(("model_card", "checklist"))}
    assert set(first) == {"model_card.md", "model_card.html", "checklist.md"}
    card_text(run)
    assert (run / "model_card-2.md").is_file() and (run / "model_card-2.html").is_file() and (run / "checklist-2.md").is_file()
    assert all((run / name).read_bytes() == data for name, data in first.items())


def test_evidence_from_another_checkpoint_is_one_line_when_named_and_passed_over_beside(tmp_path):
    run = make_run(tmp_path / "run")
    found = make_evidence(tmp_path, run)
    (run / "checkpoints" / "best.ckpt").write_bytes(b"retrained")  # the evaluation and report are now of another file
    with pytest.raises(LungclsError, match=r"card.evidence: .*ext evaluated another checkpoint \(SHA-256 [0-9a-f]{12}"):
        gather(str(run), None, [str(found["ext"])])
    text, _ = card_text(run)
    assert "Passed over 2 folder(s) beside the run" in text and "External evaluation: not measured" in text


@pytest.mark.parametrize("case, message", [
    ("not_a_run", r"is not a lungcls run folder"),
    ("evaluation", r"is a lungcls-evaluate folder, not a training run"),
    ("corrupt", r"metrics.json is not valid JSON"),
    ("no_evidence", r"holds none of metrics.json, audit.json"),
])
def test_bad_input_is_one_line(tmp_path, case, message):
    run = make_run(tmp_path / "run")
    found = make_evidence(tmp_path, run)
    args: tuple = (str(run), None, [])
    if case == "not_a_run":
        (tmp_path / "empty").mkdir()
        args = (str(tmp_path / "empty"), None, [])
    elif case == "evaluation":
        args = (str(found["ext"]), None, [])
    elif case == "corrupt":
        (found["ext"] / "metrics.json").write_text('{"all": {"accuracy": 0.6')  # cut off
        args = (str(run), None, [str(found["ext"])])
    else:
        (tmp_path / "plain").mkdir()
        args = (str(run), None, [str(tmp_path / "plain")])
    with pytest.raises(LungclsError, match=message) as e:
        gather(*args)
    assert "\n" not in str(e.value)


def test_the_comparison_links_each_runs_card(tmp_path):
    from lungcls.compare import compare

    run = make_run(tmp_path / "runs" / "a")
    card_text(run, beside=False)
    card_text(run, beside=False)
    text, paths = compare([tmp_path / "runs"], out=tmp_path / "cmp")
    row = (tmp_path / "cmp" / "comparison.csv").read_text().splitlines()
    card = row[0].split(",").index("card")
    assert row[1].split(",")[card] == str((run / "model_card-2.html").resolve())
    assert f"[card](<{(run / 'model_card-2.html').resolve()}>)" in text


def test_a_class_with_nothing_to_miss_is_not_a_count_in_the_card(tmp_path):
    """A held-out source can leave a class without test images: its fn_to_normal is null in
    metrics.json (nothing to miss is not "none missed"), and the card neither adds nor prints it."""
    run = make_run(tmp_path / "run")
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["test"]["fn_to_normal"]["Viral Pneumonia"] = None
    metrics["test"]["per_source"]["site-B"]["fn_to_normal"]["Viral Pneumonia"] = None
    (run / "metrics.json").write_text(json.dumps(metrics))
    text, checklist = card_text(run)
    performance = text[text.index("## Performance"):text.index("## Explanations")]
    assert "None" not in performance and "Viral Pneumonia None" not in checklist
    assert "| site-B | 6 | 0.667 | 2 |" in performance  # the COVID misses alone
