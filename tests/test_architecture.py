"""The shape of the code stays easy to see: one way from a config group to its code, every registry
entry selectable from the command line, modules and functions of a readable size, and the "where things live" table
(docs/architecture.md) true."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lungcls.cli import CONF_DIR
from lungcls.data.samples.layouts import LAYOUTS
from lungcls.data.pixels.normalization import NORMALIZATIONS
from lungcls.models.backbones import BACKBONES
from lungcls.models.finetune import POLICIES

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "lungcls"
MAX_MODULE_LINES = 350
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
            yield node.name, node.end_lineno - node.lineno + 1


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


def test_the_docs_say_where_every_config_group_lives():
    table = (REPO / "docs" / "architecture.md").read_text()
    assert table.startswith("# Where things live")
    groups = sorted(p.name for p in Path(CONF_DIR).iterdir() if p.is_dir()) + ["backbone"]
    missing = [g for g in groups if f"`{g}`" not in table]
    assert not missing, f"docs/architecture.md 'Where things live' lacks {missing}"
    for module in ("lungcls/models/backbones.py", "lungcls/inference/", "prediction.py", "checkpoints.py", "lungcls/metrics/",
                   "lungcls/runs/", "lungcls/comparison/", "lungcls/training/", "lungcls/settings.py", "lungcls/explain/maps/",
                   "lungcls/explain/checks/", "lungcls/report/", "samples/", "pixels/", "cache/", "dedup/", "phantom/"):
        assert module in table


# -- the rules that keep the lobby readable (checked on the code, so the next change keeps them) --

MAX_TOP_LEVEL_MODULES = 12
COMMANDS = {"train", "evaluate", "predict", "export", "compare", "prepare"}
# names the code gives to configuration (composed configs, their sections, typed settings): a
# `.get("key", default)` on one of them repeats a default the yaml already holds
CONFIG_NAMES = {"cfg", "config", "conf", "settings", "s", "ev", "entry", "trainer_cfg", "backbone", "finetune",
                "dataset", "demo", "stats", "report", "audit", "probe", "export", "serve", "predict", "evaluate"}
MAX_CONFIG_GETS = 19


def library_modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        yield path, "lungcls." + ".".join(parts)


def is_command(module: str) -> bool:
    return module.removeprefix("lungcls.") in COMMANDS or module.endswith(".__main__")


def imported(tree: ast.AST):
    """(module, name) for every import in a module, function-level ones included."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                yield node.module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None


def config_gets(tree: ast.AST):
    """(line, receiver, has_default) for `.get(...)` calls on configuration."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            receiver = ast.unparse(node.func.value)
            root = receiver.split(".")[0].split("[")[0]
            if root in CONFIG_NAMES:
                yield node.lineno, receiver, len(node.args) > 1 or bool(node.keywords)


def test_at_most_twelve_modules_sit_directly_in_lungcls():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, f"{len(top)} modules directly in lungcls/: {top}; move concepts into packages"


def test_no_private_name_is_imported_from_another_module():
    found = [f"{path.relative_to(REPO)}: {mod}.{name}" for path, _ in library_modules()
             for mod, name in imported(ast.parse(path.read_text())) if mod.startswith("lungcls") and name and name.startswith("_")]
    assert not found, f"private names imported across modules (make them public or move the code): {found}"


def test_library_code_never_imports_a_command_module():
    found = []
    for path, module in library_modules():
        if is_command(module):
            continue
        for mod, name in imported(ast.parse(path.read_text())):
            target = f"{mod}.{name}" if name and mod == "lungcls" else mod
            if target.startswith("lungcls.") and is_command(target):
                found.append(f"{path.relative_to(REPO)} imports {target}")
    assert not found, f"library code imports commands (move the shared code into a package): {found}"


def test_configuration_is_read_through_typed_settings():
    """No `.get("key", default)` on configuration outside the settings builders; few `.get` reads at all."""
    with_default, reads = [], []
    for path, _ in library_modules():
        if path.name == "settings.py":
            continue
        for line, receiver, has_default in config_gets(ast.parse(path.read_text())):
            reads.append(f"{path.relative_to(REPO)}:{line} {receiver}")
            if has_default:
                with_default.append(f"{path.relative_to(REPO)}:{line} {receiver}")
    assert not with_default, f"configuration read with a default in code (declare the key in a settings dataclass, its default in the yaml): {with_default}"
    assert len(reads) <= MAX_CONFIG_GETS, f"{len(reads)} .get reads of configuration: {reads}"


def test_the_architecture_rules_catch_what_they_forbid(tmp_path):
    """The checks above find each kind of violation in a planted module (they cannot pass vacuously)."""
    planted = ast.parse(
        "from lungcls.metrics.confusion import _private\n"
        "def f(cfg):\n    from lungcls.train import train\n    return cfg.get('seed', 1)\n")
    assert ("lungcls.metrics.confusion", "_private") in set(imported(planted))
    assert any(is_command(m) for m, _ in imported(planted))
    assert [(r, d) for _, r, d in config_gets(planted)] == [("cfg", True)]


# -- the rooms and the order between them: imports point down, never in a circle --

# Each package (or top-level module) and its layer: a module may import from its own package or from
# a lower layer, never from a higher one or from another package of its layer.
LAYERS = {
    "lungcls": 0, "errors": 0,
    "registry": 1, "settings": 1, "console": 1,
    "metrics": 2,
    "runs": 3,
    "data": 4,
    "models": 5,
    "explain": 6,       # computing and checking maps of a loaded model; loads no checkpoint
    "inference": 7,     # checkpoints, the prediction loop, screening, scoring uploads (with overlays)
    "training": 8,
    "cli": 9,           # the Hydra entry-point plumbing every command shares
    "audit": 10, "comparison": 10, "report": 10, "serve": 10, "sweeps": 10, "card": 10,
    "benchmark": 11,
    "train": 12, "evaluate": 12, "predict": 12, "export": 12, "compare": 12, "prepare": 12,
}
MAX_DATA_TOP_LEVEL_FILES = 8


def module_graph(root: Path, package: str = "lungcls") -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports (function-level and TYPE_CHECKING imports
    included: a circle through them is still a circle for a reader)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join((package, *(parts[:-1] if parts[-1] == "__init__" else parts)))
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        deps = set()
        for mod, alias in imported(ast.parse(path.read_text())):
            if not mod.startswith(package):
                continue
            target = f"{mod}.{alias}" if alias and f"{mod}.{alias}" in modules else mod
            if target in modules and target != name:
                deps.add(target)
        graph[name] = deps
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, circles, counter = {}, {}, set(), [], [], [0]
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    circles.append(sorted(component))
    return circles


def layer_of(module: str) -> tuple[str, int]:
    room = module.split(".")[1] if "." in module else module
    assert room in LAYERS, f"{module}: package {room!r} has no layer in LAYERS; give it one"
    return room, LAYERS[room]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, deps in graph.items():
        room, layer = layer_of(module)
        for dep in deps:
            dep_room, dep_layer = layer_of(dep)
            if dep_room != room and dep_layer >= layer:
                found.append(f"{module} ({room}, layer {layer}) imports {dep} ({dep_room}, layer {dep_layer})")
    return sorted(found)


def test_no_import_circles_anywhere_in_lungcls():
    circles = import_circles(module_graph(PACKAGE))
    assert not circles, f"import circles (move the shared piece into a module both can import): {circles}"


def test_packages_import_only_from_lower_layers():
    found = upward_imports(module_graph(PACKAGE))
    assert not found, "imports that point up or sideways (move the code to the lower package):\n" + "\n".join(found)


def test_the_import_rules_catch_a_planted_circle_and_an_upward_import(tmp_path):
    root = tmp_path / "lungcls"
    (root / "data").mkdir(parents=True)
    (root / "runs").mkdir()
    for folder in (root, root / "data", root / "runs"):
        (folder / "__init__.py").write_text("")
    (root / "data" / "a.py").write_text("from lungcls.data.b import x\n")
    (root / "data" / "b.py").write_text("def f():\n    from lungcls.data import a\n")
    (root / "runs" / "c.py").write_text("from lungcls.data.b import f\n")
    graph = module_graph(root)
    assert import_circles(graph) == [["lungcls.data.a", "lungcls.data.b"]]
    assert upward_imports(graph) == ["lungcls.runs.c (runs, layer 3) imports lungcls.data.b (data, layer 4)"]


def test_data_keeps_its_rooms_and_explain_loads_no_checkpoint():
    top = sorted(p.name for p in (PACKAGE / "data").iterdir() if p.suffix == ".py")
    assert len(top) <= MAX_DATA_TOP_LEVEL_FILES, f"{len(top)} files directly in lungcls/data/: {top}; move them into its rooms"
    loading = [str(p.relative_to(REPO)) for p in (PACKAGE / "explain").rglob("*.py")
               if "torch.load" in p.read_text() or "load_classifier" in p.read_text() or "load_checkpoint" in p.read_text()]
    assert not loading, f"explain/ loads checkpoints (use lungcls.inference.checkpoints in the caller): {loading}"
