"""W&B is the default logger: offline in the run folder, with the design's per-class keys; it
degrades to CSV with one warning when disabled."""

from __future__ import annotations

import json
import logging
import time


from lungcls.train import train


def test_wandb_offline_run_holds_per_class_keys_and_tables(train_cfg, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    train(train_cfg("logger=wandb", "backbone=logistic", "trainer.max_epochs=1"))
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    keys = ("val/recall/COVID", "val/recall/Viral Pneumonia", "val/specificity/Normal", "val/fn_to_normal/COVID",
            "val/macro_f1", "test/fn_to_normal/Lung_Opacity", "test/f1/Normal")
    # W&B's service process writes the offline file; give it a bounded moment on a busy machine
    deadline = time.time() + 30
    while True:
        records = next(runs[0].glob("*.wandb")).read_bytes()
        if all(k.encode() in records for k in keys) or time.time() > deadline:
            break
        time.sleep(0.5)
    for key in keys:
        assert key.encode() in records, key
    media = runs[0] / "files" / "media"
    assert list(media.glob("table/test/per_class_*.table.json"))
    missed = list(media.glob("table/test/missed_as_normal_*.table.json"))
    assert missed
    table = json.loads(missed[0].read_text())
    assert table["columns"][:3] == ["image", "label", "pred"]
    assert all(row[2] == "Normal" and row[1] != "Normal" for row in table["data"])
    assert list(media.glob("images/test/confusion_matrix_*.png"))
    assert f"wandb sync {runs[0]}" in capsys.readouterr().out
    assert (tmp_path / "csv" / "metrics.csv").is_file()  # CSV is always written


def test_wandb_disabled_degrades_to_csv_with_one_warning(train_cfg, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    with caplog.at_level(logging.WARNING, logger="lungcls.training.loggers"):
        train(train_cfg("logger=wandb", "backbone=logistic", "trainer.max_epochs=1"))
    warnings = [r for r in caplog.records if r.name == "lungcls.training.loggers" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "WANDB_MODE=disabled" in warnings[0].getMessage()
    assert not (tmp_path / "wandb").exists()
    assert (tmp_path / "csv" / "metrics.csv").is_file() and (tmp_path / "metrics.json").is_file()
