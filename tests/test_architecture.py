"""The shape of the code stays easy to see: one way from a config group to its code, every registry
entry selectable from the command line, modules and functions of a readable size, and the README's
"where things live" table true."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lungcls.cli import CONF_DIR
from lungcls.data.layouts import LAYOUTS
from lungcls.data.normalization import NORMALIZATIONS
from lungcls.models.backbones import BACKBONES
from lungcls.models.finetune import POLICIES

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "lungcls"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60

# Groups whose options build a library object from `_target_`, and where the target sits.
TARGET_GROUPS = {"optimizer": "", "scheduler": "", "loss": "", "augment": "", "trainer": ""}
# Groups whose entries (one per key) each build a library object from `_target_`.
TARGET_COLLECTIONS = ("callbacks", "logger")


def compose_train(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        return compose(config_name="train", overrides=list(overrides))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def function_lengths(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            first = body[0]
            doc = isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant) and isinstance(first.value.value, str)
            start = body[1].lineno if doc and len(body) > 1 else first.lineno
            yield node.name, node.end_lineno - start + 1


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(REPO)))
def test_modules_and_functions_stay_readable(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.name} has {lines} lines; split it by concept"
    long = [(name, n) for name, n in function_lengths(path) if n > MAX_FUNCTION_LINES]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


@pytest.mark.parametrize("group", sorted(TARGET_GROUPS))
def test_library_groups_build_from_target(group):
    for option in options(group):
        cfg = compose_train(f"{group}={option}")
        assert "_target_" in cfg[group], f"{group}={option} has no _target_"


@pytest.mark.parametrize("group", TARGET_COLLECTIONS)
def test_callbacks_and_loggers_build_from_target(group):
    for option in options(group):
        cfg = compose_train(f"{group}={option}")
        for name, entry in (cfg[group] or {}).items():
            assert "_target_" in entry, f"{group}={option}: {name} has no _target_"


def test_plugin_groups_name_a_registry_entry():
    for name in options("finetune"):
        assert compose_train(f"finetune={name}").finetune.name in POLICIES
    for name in options("dataset"):
        ds = compose_train(f"dataset={name}").dataset
        assert ds.layout in LAYOUTS and ds.normalization in NORMALIZATIONS


@pytest.mark.parametrize("name", BACKBONES.names())
def test_every_registered_backbone_is_selectable(name):
    cfg = compose_train(f"backbone={name}")
    assert cfg.backbone.name == name
    spec = BACKBONES.get(name)
    assert spec.explained_by_weights or spec.gradcam_layer
    assert OmegaConf.to_container(cfg.backbone, resolve=False).keys() >= {"name", "weights", "dropout"}


def test_readme_says_where_every_config_group_lives():
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("## Where things live"):]
    table = table[: table.index("\n## ", 4)]
    groups = sorted(p.name for p in Path(CONF_DIR).iterdir() if p.is_dir()) + ["backbone"]
    missing = [g for g in groups if f"`{g}`" not in table]
    assert not missing, f"README 'Where things live' lacks {missing}"
    for module in ("lungcls/models/backbones.py", "lungcls/prediction.py", "lungcls/metrics/"):
        assert module in table
