"""The lean core install: a command or override that needs an optional part says in one line which
`pip install "lungcls[...]"` adds it, and the extras in pyproject.toml install what the code imports."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

import pytest

from lungcls.cli import NEEDS_EXTRA, check_overrides
from lungcls.errors import EXTRAS, LungclsError, require_extra

REPO = Path(__file__).resolve().parents[1]


def test_a_missing_optional_package_is_one_line_naming_its_extra():
    with pytest.raises(LungclsError) as e:
        require_extra(("json", "lungcls_no_such_package"), "serve")
    message = str(e.value)
    assert "'lungcls_no_such_package'" in message and 'pip install "lungcls[serve]"' in message and "\n" not in message
    require_extra("json", "serve")  # present: nothing happens


def test_an_optuna_sweep_without_the_sweeps_extra_names_the_install(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else real(name, *a))
    with pytest.raises(SystemExit) as e:
        check_overrides("train", ["-m", "hparams_search=optuna"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and 'pip install "lungcls[sweeps]"' in err


def test_every_extra_the_code_names_exists_in_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    named = set(EXTRAS) | {extra for _, extra in NEEDS_EXTRA.values()}
    assert named <= set(extras), named - set(extras)
    everything = " ".join(extras["all"])
    assert all(name in everything for name in named)
    core = " ".join(project["dependencies"])
    for heavy in ("fastapi", "uvicorn", "onnx", "onnxruntime", "hydra-optuna-sweeper", "playwright"):
        assert heavy not in core, f"{heavy} belongs in an extra, not the core install"
