"""Typed settings: every key a user sets is checked for its type, its range and its spelling when the
command starts, before any image is read, and each one-line error's advice is a fix that works."""

from __future__ import annotations

import dataclasses
from typing import Optional

import pytest
from hydra import compose, initialize_config_dir

from lungcls.cli import CONF_DIR, check_overrides
from lungcls.errors import LungclsError
from lungcls.settings import typed

CASES = [
    # (command, overrides, the one line's start, the fixed overrides its advice gives, or None)
    ("train", ["dataset.imagesize=64"], "dataset.imagesize is not a setting; did you mean dataset.image_size?", ["dataset.image_size=64"]),
    ("train", ["datset.image_size=64"], "datset is not a setting; did you mean dataset?", ["dataset.image_size=64"]),
    ("train", ["+dataset.imagesize=64"], "+dataset.imagesize adds a key that no lungcls code reads; did you mean dataset.image_size?", ["dataset.image_size=64"]),
    ("train", ["dataset.demo.shortcutt=0.5"], "dataset.demo.shortcutt is not a setting; did you mean dataset.demo.shortcut?", ["dataset.demo.shortcut=0.5"]),
    ("evaluate", ["ckpt=x.ckpt", "evaluate.tta_=flip"], "evaluate.tta_ is not a setting; did you mean evaluate.tta?", ["ckpt=x.ckpt", "evaluate.tta=flip"]),
    ("predict", ["ckpt=x.ckpt", "predict.batchsize=8"], "predict.batchsize is not a setting; did you mean predict.batch_size?", ["ckpt=x.ckpt", "predict.batch_size=8"]),
    ("train", ["+foo=1"], "+foo adds a key that no lungcls code reads", None),
]


@pytest.mark.parametrize("command, overrides, message, fixed", CASES, ids=[" ".join(c[1]) for c in CASES])
def test_a_misspelt_or_unread_key_is_one_line_with_a_fix_that_composes(command, overrides, message, fixed, capsys):
    with pytest.raises(SystemExit) as e:
        check_overrides(command, overrides)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith(f"lungcls: error: {message}"), err
    if fixed is not None:
        check_overrides(command, fixed)  # the advice composes: no error, no exit
        with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
            compose(config_name=command, overrides=fixed)


def test_arguments_of_library_objects_may_still_be_added():
    check_overrides("train", ["+trainer.fast_dev_run=1", "+optimizer.amsgrad=true"])  # Lightning's and torch's own


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["seed=abc"], "seed=abc must be a whole number"),
        (["trainer.max_epochs=abc"], "trainer.max_epochs=abc must be a whole number"),
        (["trainer.max_epochs=0"], "trainer.max_epochs=0 trains nothing"),
        (["trainer.max_epochs=-1"], "trainer.max_epochs=-1 gives the run no length"),
        (["dataset.near_duplicate_bits=500"], "dataset.near_duplicate_bits=500 must be in [0, 144]"),
        (["dataset.near_duplicate_bits=-1"], "dataset.near_duplicate_bits=-1 must be in [0, 144]"),
        (["dataset.allow_missing_classes=maybe"], "dataset.allow_missing_classes=maybe must be true or false"),
    ],
)
def test_typed_values_fail_before_any_image_is_read(train_cfg, tmp_path, monkeypatch, overrides, message):
    import lungcls.data.samples.layouts as layouts

    monkeypatch.setattr(layouts, "find_samples", lambda *a, **k: pytest.fail("images were read before the check"))
    from lungcls.train import train

    with pytest.raises(LungclsError) as e:
        train(train_cfg(*overrides))
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_a_cache_dir_that_is_a_file_is_one_line(train_cfg, tmp_path):
    from lungcls.train import train

    not_a_folder = tmp_path / "cache.txt"
    not_a_folder.write_text("x")
    with pytest.raises(LungclsError, match="is a file, not a folder"):
        train(train_cfg(f"dataset.cache_dir={not_a_folder}"))
    assert not_a_folder.read_text() == "x"


@dataclasses.dataclass
class Example:
    size: int
    share: float
    name: Optional[str]


def test_typed_reports_the_key_and_takes_no_default_from_code():
    assert typed({"size": "3", "share": 0.5, "name": None}, Example, "x") == Example(3, 0.5, None)
    with pytest.raises(LungclsError, match=r"^x.size=big must be a whole number$"):
        typed({"size": "big", "share": 0.5, "name": None}, Example, "x")
    with pytest.raises(LungclsError, match=r"^x.sise is not a setting; did you mean x.size\?$"):
        typed({"sise": 3, "share": 0.5, "name": None}, Example, "x")
    with pytest.raises(LungclsError, match=r"^x.name has no value"):  # the yaml forgot it: no silent default
        typed({"size": 3, "share": 0.5}, Example, "x")
