"""Sweep files are valid for W&B, and `lungcls-sweep` turns them into the right Hydra multirun."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from lungcls.sweeps import sweepfile as sweep_mod
from lungcls.errors import LungclsError
from lungcls.sweeps.__main__ import main
from lungcls.sweeps.overrides import hydra_value
from lungcls.sweeps.sweepfile import continue_study, sweep_to_hydra_args

ROOT = Path(__file__).resolve().parents[2]
SWEEP_FILES = sorted((ROOT / "sweeps").glob("*.yaml"))
OPTUNA_YAML = ROOT / "conf" / "hparams_search" / "optuna.yaml"
SLURM_YAML = ROOT / "conf" / "hydra" / "launcher" / "slurm.yaml"

# What sweeps may vary (the training config's contract).
GROUPS = {
    "dataset": {"demo", "covid_radiography", "folder"},
    "backbone": {"alexnet", "vgg19_bn", "resnet50", "resnet18", "logistic"},
    "finetune": {"head", "partial", "paper", "full"},
    "optimizer": {"adam", "sgd", "adamw"},
    "scheduler": {"none", "step", "cosine", "warmup_cosine"},
}

# W&B's sweep config JSON schema (wandb/sweeps config/schema.json), the parts our files use:
# top-level keys, metric keys, and the keys each parameter distribution allows.
WANDB_TOP_KEYS = {
    "apiVersion", "kind", "controller", "description", "program", "job", "image_uri", "entity",
    "project", "method", "command", "name", "run_cap", "metric", "metrics", "scheduler",
    "early_terminate", "parameters",
}
WANDB_PARAM_KEYS = {
    "constant": {"value", "distribution"},
    "categorical": {"values", "distribution"},
    "categorical_w_probabilities": {"values", "probabilities", "distribution"},
    "int_uniform": {"min", "max", "distribution"},
    "uniform": {"min", "max", "distribution"},
    "log_uniform_values": {"min", "max", "distribution"},
    "q_uniform": {"min", "max", "q", "distribution"},
}
WANDB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


@pytest.fixture(autouse=True)
def _no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")


def _hydra_parse(override: str):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_override(override)


def _wandb_args_no_hyphens(params: dict) -> list[str]:
    """What `wandb agent` puts in ${args_no_hyphens}, by wandb's own code."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    command = {"args": {k: {"value": v} for k, v in params.items()}}
    return create_sweep_command_args(command)["args_no_hyphens"]


# --------------------------------------------------------------------------------------------
# The sweep files
# --------------------------------------------------------------------------------------------


def test_sweep_files_exist():
    names = {p.name for p in SWEEP_FILES}
    assert {"backbones.yaml", "lr_search.yaml", "finetune_fraction.yaml"} <= names


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_sweep_file_matches_wandb_schema(path):
    text = path.read_text()
    sweep = yaml.safe_load(text)
    assert isinstance(sweep, dict)
    assert set(sweep) <= WANDB_TOP_KEYS, set(sweep) - WANDB_TOP_KEYS
    assert sweep["method"] in ("grid", "random", "bayes")
    metric = sweep["metric"]
    assert set(metric) <= {"name", "goal", "target", "impute", "impute_while_running"}
    assert isinstance(metric["name"], str) and metric["name"].startswith(("val/", "test/", "train/"))
    assert metric["goal"] in ("minimize", "maximize")
    if sweep["method"] != "grid":
        run_cap = sweep.get("run_cap")
        assert isinstance(run_cap, int) and not isinstance(run_cap, bool) and run_cap > 0
    if "program" in sweep:
        assert isinstance(sweep["program"], str)

    command = sweep["command"]
    assert isinstance(command, list)
    assert command[-1] == "${args_no_hyphens}"
    assert command[:4] == ["${env}", "${interpreter}", "-m", "lungcls.train"]

    assert sweep["parameters"]
    for name, spec in sweep["parameters"].items():
        assert WANDB_NAME.match(name), name
        kind = sweep_mod.parameter_kind(name, spec)
        assert kind in WANDB_PARAM_KEYS, (name, kind)
        assert set(spec) <= WANDB_PARAM_KEYS[kind], (name, set(spec))
        if "distribution" in spec:
            assert spec["distribution"] == kind
        if kind == "categorical":
            assert isinstance(spec["values"], list) and spec["values"]
        if kind in ("int_uniform", "uniform", "log_uniform_values", "q_uniform"):
            lo, hi = spec["min"], spec["max"]
            # YAML reads `1e-5` as a string; W&B needs numbers
            assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi))
            assert lo < hi
            if kind == "log_uniform_values":
                assert lo > 0
        if sweep["method"] == "grid":
            assert kind in ("constant", "categorical", "int_uniform", "q_uniform"), name

    # the header tells how to run it both ways
    header = text.split("\n\n")[0]
    assert "wandb sweep" in header and "wandb agent" in header and "lungcls-sweep" in header


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_sweep_file_passes_wandb_validation_when_available(path):
    try:  # our own sweeps/ folder is importable as a namespace package, without this function
        from sweeps import schema_violations_from_proposed_config
    except ImportError:
        pytest.skip("wandb's sweeps package (pip install 'wandb[sweeps]') is not installed")
    sweep = yaml.safe_load(path.read_text())
    assert schema_violations_from_proposed_config(sweep) == []


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_sweep_parameters_are_training_config_keys(path):
    """Every swept parameter is a config group whose options exist, or a key of the composed
    training config (composed with each of the file's values, so a wrong name or value fails)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from lungcls.cli import CONF_DIR

    sweep = yaml.safe_load(path.read_text())
    fixed = [f"{n}={spec['value']}" for n, spec in sweep["parameters"].items() if n in GROUPS and "value" in spec]
    for name, spec in sweep["parameters"].items():
        options = spec.get("values") or ([spec["value"]] if "value" in spec else [spec.get("min"), spec.get("max")])
        for option in options:
            with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
                cfg = compose("train", overrides=fixed + ([f"{name}={option}"] if name in GROUPS else []))
            if name in GROUPS:
                assert cfg[name].get("name", option) == option or name == "dataset", (name, option)
            else:
                assert OmegaConf.select(cfg, name, default="<missing>") != "<missing>", f"{path.name}: unknown key {name}"


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_wandb_agent_arguments_are_the_intended_hydra_overrides(path):
    """`wandb agent` writes key=str(value); Hydra must read back exactly the value in the file."""
    sweep = yaml.safe_load(path.read_text())
    for name, spec in sweep["parameters"].items():
        samples = spec.get("values") or ([spec["value"]] if "value" in spec else [spec["min"], spec["max"]])
        for value in samples:
            (arg,) = _wandb_args_no_hyphens({name: value})
            override = _hydra_parse(arg)
            assert not override.is_sweep_override(), arg
            assert override.key_or_group == name
            assert override.value() == value and type(override.value()) is type(value), arg


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_sweep_files_convert_to_parsable_hydra_arguments(path):
    sweep = yaml.safe_load(path.read_text())
    args = sweep_to_hydra_args(sweep, ["dataset=demo", "trainer.max_epochs=1"])
    assert args[0] == "--multirun"
    for arg in args[1:]:
        _hydra_parse(arg)  # raises on bad syntax
    assert "dataset=demo" in args and "dataset=covid_radiography" not in args


# --------------------------------------------------------------------------------------------
# sweep_to_hydra_args
# --------------------------------------------------------------------------------------------

COMMAND = ["${env}", "${interpreter}", "-m", "lungcls.train", "${args_no_hyphens}"]


def test_grid_becomes_basic_sweeper_multirun():
    sweep = {
        "method": "grid",
        "metric": {"name": "val/fn_to_normal_total", "goal": "minimize"},
        "parameters": {
            "dataset": {"value": "covid_radiography"},
            "backbone": {"values": ["alexnet", "vgg19_bn", "resnet50", "logistic"]},
            "finetune": {"values": ["head", "paper", "full"]},
            "seed": {"min": 1, "max": 3},
            "finetune.fraction": {"distribution": "q_uniform", "min": 0.25, "max": 1.0, "q": 0.25},
        },
        "command": COMMAND,
    }
    assert sweep_to_hydra_args(sweep, []) == [
        "--multirun",
        "dataset=covid_radiography",
        "backbone=alexnet,vgg19_bn,resnet50,logistic",
        "finetune=head,paper,full",
        "seed=1,2,3",
        "finetune.fraction=0.25,0.5,0.75",
    ]


def test_random_becomes_optuna_with_random_sampler():
    sweep = {
        "method": "random",
        "metric": {"name": "val/loss", "goal": "minimize"},
        "run_cap": 12,
        "parameters": {
            "backbone": {"value": "resnet18"},
            "optimizer": {"values": ["adam", "sgd"]},
            "optimizer.lr": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-2},
            "loss.label_smoothing": {"min": 0.0, "max": 0.2},
            "dataset.batch_size": {"values": [16, 32, 64]},
            "trainer.max_epochs": {"min": 2, "max": 10},
        },
        "command": COMMAND,
    }
    assert sweep_to_hydra_args(sweep, []) == [
        "--multirun",
        "hparams_search=optuna",
        "hydra/sweeper/sampler=random",
        "hydra.sweeper.direction=minimize",
        "hydra.sweeper.n_trials=12",
        "hydra.sweeper.params=null",
        "optimized_metric=val/loss",
        "backbone=resnet18",
        "optimizer=adam,sgd",
        "optimizer.lr=tag(log,interval(1e-05,0.01))",
        "loss.label_smoothing=interval(0.0,0.2)",
        "dataset.batch_size=16,32,64",
        "trainer.max_epochs=int(interval(2,10))",
    ]


def test_bayes_becomes_optuna_tpe_and_distributions_are_right():
    sweep = {
        "method": "bayes",
        "metric": {"name": "val/macro_f1", "goal": "maximize"},
        "run_cap": 30,
        "parameters": {
            "optimizer": {"values": ["adam", "sgd", "adamw"]},
            "optimizer.lr": {"distribution": "log_uniform_values", "min": 1.0e-5, "max": 1.0e-2},
            "optimizer.weight_decay": {"distribution": "uniform", "min": 0, "max": 0.1},
            "seed": {"distribution": "int_uniform", "min": 1, "max": 5},
            "dataset.image_size": {"distribution": "q_uniform", "min": 128, "max": 256, "q": 32},
        },
        "command": COMMAND,
    }
    args = sweep_to_hydra_args(sweep, [])
    assert args == [
        "--multirun",
        "hparams_search=optuna",
        "hydra/sweeper/sampler=tpe",
        "hydra.sweeper.direction=maximize",
        "hydra.sweeper.n_trials=30",
        "hydra.sweeper.params=null",
        "optimized_metric=val/macro_f1",
        "optimizer=adam,sgd,adamw",
        "optimizer.lr=tag(log,interval(1e-05,0.01))",
        "optimizer.weight_decay=interval(0.0,0.1)",
        "seed=int(interval(1,5))",
        "dataset.image_size=range(128,256,32)",
    ]
    # the Optuna sweeper reads them as the intended distributions
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
    from optuna import distributions as d

    space, fixed = create_params_from_overrides(args[7:])
    assert fixed == {}
    assert isinstance(space["optimizer"], d.CategoricalDistribution)
    assert space["optimizer.lr"] == d.LogUniformDistribution(1e-5, 1e-2)
    assert space["optimizer.weight_decay"] == d.UniformDistribution(0.0, 0.1)
    assert space["seed"] == d.IntUniformDistribution(1, 5)  # W&B's int_uniform includes max too
    assert space["dataset.image_size"] == d.IntUniformDistribution(128, 256, step=32)


@pytest.mark.parametrize(
    "value",
    [
        "Viral Pneumonia", "a,b", "it's", "x'y z", "[not a list]", "true", "10", "null",
        " padded ", "back\\slash", "ends\\", "{x}", "val/macro_f1", "${oc.env:HOME}",
        ["COVID", "Viral Pneumonia"], ["a,b", 1, 2.5, None, True], {"k": "v w"},
        1, -2, 0.5, 1e-7, True, False, None,
    ],
)
def test_hydra_value_round_trips(value):
    text = hydra_value(value)
    override = _hydra_parse(f"k={text}")
    assert not override.is_sweep_override()
    assert override.value() == value and type(override.value()) is type(value)


def test_escaping_values_with_spaces_commas_and_brackets():
    sweep = {
        "method": "grid",
        "parameters": {
            "dataset.classes": {"value": ["COVID", "Normal", "Viral Pneumonia"]},
            "dataset.normal_class": {"values": ["Normal", "Viral Pneumonia", "a,b"]},
        },
        "command": COMMAND,
    }
    args = sweep_to_hydra_args(sweep, [])
    assert args == [
        "--multirun",
        "dataset.classes=[COVID,Normal,'Viral Pneumonia']",
        "dataset.normal_class=Normal,'Viral Pneumonia','a,b'",
    ]
    # each grid job receives exactly the file's value
    jobs = list(_hydra_parse(args[2]).sweep_string_iterator())
    assert [_hydra_parse(f"k={j}").value() for j in jobs] == ["Normal", "Viral Pneumonia", "a,b"]
    assert _hydra_parse(args[1]).value() == ["COVID", "Normal", "Viral Pneumonia"]


def test_optuna_categorical_keeps_quoted_and_list_values():
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    sweep = {
        "method": "random",
        "metric": {"name": "val/macro_f1", "goal": "maximize"},
        "parameters": {"dataset.classes": {"values": [["COVID", "Normal"], ["a,b", "Viral Pneumonia"]]}},
        "command": COMMAND,
    }
    arg = sweep_to_hydra_args(sweep, [])[-1]
    space, _ = create_params_from_overrides([arg])
    # each choice is what a trial passes as `key=<choice>`: it must read back as the list
    values = [_hydra_parse(f"k={c}").value() for c in space["dataset.classes"].choices]
    assert values == [["COVID", "Normal"], ["a,b", "Viral Pneumonia"]]


@pytest.mark.parametrize(
    "method,spec,words",
    [
        ("bayes", {"distribution": "normal", "mu": 0, "sigma": 1}, ["optimizer.lr", "normal", "log_uniform_values"]),
        ("random", {"distribution": "q_log_uniform_values", "min": 1, "max": 8}, ["optimizer.lr", "q_log_uniform_values"]),
        ("bayes", {"values": [1, 2], "probabilities": [0.5, 0.5]}, ["optimizer.lr", "probabilities"]),
        ("grid", {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-2}, ["optimizer.lr", "grid", "values"]),
        ("grid", {"min": 0.1, "max": 0.5}, ["optimizer.lr", "uniform"]),
    ],
)
def test_unsupported_distribution_is_a_one_line_error(method, spec, words):
    sweep = {
        "method": method,
        "metric": {"name": "val/loss"},
        "parameters": {"optimizer.lr": spec},
        "command": COMMAND,
    }
    with pytest.raises(LungclsError) as err:
        sweep_to_hydra_args(sweep, [])
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


@pytest.mark.parametrize(
    "change,words",
    [
        ({"method": "custom"}, ["custom", "grid"]),
        ({"metric": None}, ["metric"]),
        ({"command": ["${env}", "${interpreter}", "${program}", "${args}"]}, ["args_no_hyphens"]),
        ({"command": ["python", "other.py", "${args_no_hyphens}"]}, ["lungcls.train"]),
        ({"parameters": {}}, ["parameters"]),
    ],
)
def test_sweep_level_errors(change, words):
    sweep = {
        "method": "bayes",
        "metric": {"name": "val/loss"},
        "parameters": {"seed": {"values": [1, 2]}},
        "command": COMMAND,
    }
    sweep.update(change)
    sweep = {k: v for k, v in sweep.items() if v is not None}
    with pytest.raises(LungclsError) as err:
        sweep_to_hydra_args(sweep, [])
    assert all(w in str(err.value) for w in words), str(err.value)


def test_extra_overrides_win_over_the_file():
    sweep = yaml.safe_load((ROOT / "sweeps" / "lr_search.yaml").read_text())
    args = sweep_to_hydra_args(
        sweep,
        ["dataset=demo", "backbone=resnet18", "hydra.sweeper.n_trials=3", "+trainer.fast_dev_run=true",
         "optimizer=adam"],
    )
    assert args[-5:] == [
        "dataset=demo", "backbone=resnet18", "hydra.sweeper.n_trials=3", "+trainer.fast_dev_run=true",
        "optimizer=adam",
    ]
    for gone in ("dataset=covid_radiography", "backbone=resnet50", "hydra.sweeper.n_trials=30",
                 "optimizer=adam,sgd,adamw"):
        assert gone not in args
    assert "finetune=paper" in args  # untouched fixed values stay


def test_nested_parameters_and_command_overrides():
    sweep = {
        "method": "grid",
        "parameters": {"optimizer": {"parameters": {"lr": {"values": [0.1, 0.01]}}}},
        "command": ["${env}", "${interpreter}", "-m", "lungcls.train", "logger=csv", "${args_no_hyphens}"],
    }
    assert sweep_to_hydra_args(sweep, ["logger=none"]) == ["--multirun", "optimizer.lr=0.1,0.01", "logger=none"]
    assert sweep_to_hydra_args(sweep, []) == ["--multirun", "logger=csv", "optimizer.lr=0.1,0.01"]


# --------------------------------------------------------------------------------------------
# The CLI
# --------------------------------------------------------------------------------------------


def _no_popen(*args, **kwargs):
    raise AssertionError("must not run anything")


def test_cli_dry_run_prints_the_command(capsys, monkeypatch):
    monkeypatch.setattr(subprocess, "Popen", _no_popen)
    code = main([str(ROOT / "sweeps" / "backbones.yaml"), "dataset=demo", "--dry-run", "trainer.max_epochs=1"])
    assert code == 0
    out = capsys.readouterr().out
    assert "-m lungcls.train --multirun backbone=alexnet,vgg19_bn,resnet50,logistic finetune=head,paper,full" in out
    assert out.strip().endswith("dataset=demo trainer.max_epochs=1")


def test_cli_runs_training_and_points_at_the_multirun_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seen = {}

    class FakeProcess:
        def __init__(self, command):
            seen["command"] = command
            (tmp_path / "outputs" / "multirun" / "2026-01-31" / "10-00-00" / "0" / ".hydra").mkdir(parents=True)

        def wait(self):
            return 3

    monkeypatch.setattr(subprocess, "Popen", FakeProcess)
    code = main([str(ROOT / "sweeps" / "finetune_fraction.yaml"), "dataset=demo"])
    assert code == 3  # the training's exit code
    assert seen["command"][:4] == [sys.executable, "-m", "lungcls.train", "--multirun"]
    out = capsys.readouterr().out
    folder = os.path.join("outputs", "multirun", "2026-01-31", "10-00-00")
    assert f"Multirun folder: {folder}" in out
    assert f"lungcls-compare {folder}" in out


@pytest.mark.parametrize(
    "content,words",
    [(None, ["no sweep file"]), ("method: [unclosed", ["not valid YAML"]),
     ("method: bayes\nparameters: {optimizer.lr: {distribution: beta}}\ncommand: "
      "['${env}', '${interpreter}', -m, lungcls.train, '${args_no_hyphens}']\nmetric: {name: val/loss}\n",
      ["optimizer.lr", "beta"])],
)
def test_cli_user_errors_are_one_line_exit_2(tmp_path, capsys, content, words):
    path = tmp_path / "sweep.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        main([str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lungcls-sweep: error: ") and "\n" not in err
    assert all(w in err for w in words)


# --------------------------------------------------------------------------------------------
# Against real Hydra: a stand-in training app on a minimal config tree with our Optuna config
# --------------------------------------------------------------------------------------------

APP = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    @hydra.main(version_base="1.3", config_path=sys.argv.pop(1), config_name="train")
    def main(cfg):
        seen = OmegaConf.to_container(cfg, resolve=True)
        Path(HydraConfig.get().runtime.output_dir, "seen.json").write_text(json.dumps(seen))
        if cfg.optimized_metric is None:
            return None
        return float(cfg.optimizer.lr) + 0.01 * float(cfg.loss.label_smoothing)

    main()
    """
)


@pytest.fixture()
def toy_app(tmp_path):
    """A config tree shaped like conf/ (groups, `hparams_search: null`) and an app that records its config."""
    conf = tmp_path / "conf"
    for group, options in GROUPS.items():
        (conf / group).mkdir(parents=True)
        for option in options:
            (conf / group / f"{option}.yaml").write_text(f"name: {option}\n")
    (conf / "optimizer" / "adam.yaml").write_text("name: adam\nlr: 0.001\nweight_decay: 0.0\n")
    (conf / "optimizer" / "sgd.yaml").write_text("name: sgd\nlr: 0.01\nweight_decay: 0.0\n")
    (conf / "optimizer" / "adamw.yaml").write_text("name: adamw\nlr: 0.001\nweight_decay: 0.01\n")
    (conf / "finetune" / "partial.yaml").write_text("name: partial\nfraction: 0.5\n")
    (conf / "dataset" / "demo.yaml").write_text(
        "name: demo\nclasses: [COVID, Normal]\nnormal_class: Normal\nmax_per_class: null\n"
    )
    (conf / "train.yaml").write_text(
        textwrap.dedent(
            """
            defaults:
              - _self_
              - dataset: demo
              - backbone: resnet50
              - finetune: head
              - optimizer: adam
              - hparams_search: null
            optimized_metric: null
            seed: 1
            loss: {label_smoothing: 0.0}
            trainer: {max_epochs: 5}
            """
        )
    )
    (conf / "hparams_search").mkdir()
    shutil.copy(OPTUNA_YAML, conf / "hparams_search" / "optuna.yaml")
    app = tmp_path / "app.py"
    app.write_text(APP)

    def run(args: list[str]) -> Path:
        out = tmp_path / "multirun"
        env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1"}
        result = subprocess.run(
            [sys.executable, str(app), str(conf), *args, f"hydra.sweep.dir={out}"],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return out

    return run


def _jobs(out: Path) -> list[dict]:
    folders = sorted((p for p in out.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    return [json.loads((f / "seen.json").read_text()) for f in folders]


def test_grid_sweep_runs_under_hydra(toy_app):
    sweep = {
        "method": "grid",
        "parameters": {
            "backbone": {"values": ["alexnet", "logistic"]},
            "finetune.fraction": {"values": [0.25, 1.0]},
            "dataset.classes": {"value": ["COVID", "Normal", "Viral Pneumonia"]},
            "dataset.normal_class": {"value": "Viral Pneumonia"},
        },
        "command": COMMAND,
    }
    out = toy_app(sweep_to_hydra_args(sweep, ["finetune=partial", "dataset.max_per_class=8"]))
    jobs = _jobs(out)
    assert [(j["backbone"]["name"], j["finetune"]["fraction"]) for j in jobs] == [
        ("alexnet", 0.25), ("alexnet", 1.0), ("logistic", 0.25), ("logistic", 1.0)
    ]
    for job in jobs:
        assert job["dataset"]["classes"] == ["COVID", "Normal", "Viral Pneumonia"]
        assert job["dataset"]["normal_class"] == "Viral Pneumonia"
        assert job["dataset"]["max_per_class"] == 8
    assert (out / "multirun.yaml").is_file()


def test_bayes_sweep_runs_under_optuna(toy_app):
    sweep = yaml.safe_load((ROOT / "sweeps" / "lr_search.yaml").read_text())
    out = toy_app(sweep_to_hydra_args(sweep, ["dataset=demo", "hydra.sweeper.n_trials=4"]))
    jobs = _jobs(out)
    assert len(jobs) == 4
    for job in jobs:
        assert job["optimized_metric"] == "val/macro_f1"
        assert job["optimizer"]["name"] in ("adam", "sgd", "adamw")
        assert 1e-5 <= job["optimizer"]["lr"] <= 1e-2
        assert 1e-6 <= job["optimizer"]["weight_decay"] <= 1e-2
        assert 0.0 <= job["loss"]["label_smoothing"] <= 0.2
        assert job["backbone"]["name"] == "resnet50" and job["finetune"]["name"] == "paper"
    results = yaml.safe_load((out / "optimization_results.yaml").read_text())
    assert results["name"] == "optuna"
    assert set(results["best_params"]) == {"optimizer", "optimizer.lr", "optimizer.weight_decay", "loss.label_smoothing"}


def test_optuna_config_alone_searches_its_default_space(toy_app):
    out = toy_app(["--multirun", "hparams_search=optuna", "hydra.sweeper.n_trials=2", "hydra/sweeper/sampler=random"])
    jobs = _jobs(out)
    assert len(jobs) == 2
    assert all(j["optimized_metric"] == "val/macro_f1" for j in jobs)
    assert len({j["optimizer"]["lr"] for j in jobs}) == 2
    results = yaml.safe_load((out / "optimization_results.yaml").read_text())
    assert set(results["best_params"]) == {"optimizer.lr", "optimizer.weight_decay", "loss.label_smoothing"}


# --------------------------------------------------------------------------------------------
# The cluster launcher config
# --------------------------------------------------------------------------------------------


def _compose_launcher(tmp_path, overrides):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    conf = tmp_path / "conf"
    (conf / "hydra" / "launcher").mkdir(parents=True, exist_ok=True)
    shutil.copy(SLURM_YAML, conf / "hydra" / "launcher" / "slurm.yaml")
    (conf / "train.yaml").write_text("seed: 1\n")
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True)
        cfg.hydra.sweep.dir = str(tmp_path / "sweep")
        cfg.hydra.job.name = "train"
        return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


def test_slurm_launcher_config(tmp_path, monkeypatch):
    for var in ("PARTITION", "ACCOUNT", "QOS", "TIMEOUT_MIN", "GPUS", "CPUS", "MEM_GB"):
        monkeypatch.delenv(f"LUNGCLS_SLURM_{var}", raising=False)
    launcher = _compose_launcher(tmp_path, [])
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher["partition"] is None and launcher["account"] is None
    assert launcher["timeout_min"] == 240 and launcher["gpus_per_node"] == 1
    assert launcher["tasks_per_node"] == 1 and launcher["mem_gb"] == 32

    monkeypatch.setenv("LUNGCLS_SLURM_PARTITION", "gpu")
    monkeypatch.setenv("LUNGCLS_SLURM_GPUS", "2")
    launcher = _compose_launcher(tmp_path, ["hydra.launcher.timeout_min=30"])
    assert launcher["partition"] == "gpu" and launcher["gpus_per_node"] == 2
    assert launcher["timeout_min"] == 30


def test_slurm_launcher_config_is_accepted_by_submitit(tmp_path, monkeypatch):
    """submitit turns the config into sbatch lines (a stand-in `srun` on PATH; nothing is submitted)."""
    submitit = pytest.importorskip("submitit")
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("LUNGCLS_SLURM_PARTITION", "gpu")

    params = _compose_launcher(tmp_path, [])
    params.pop("_target_")
    executor = submitit.AutoExecutor(
        cluster="slurm", folder=params.pop("submitit_folder"), slurm_max_num_timeout=params.pop("max_num_timeout")
    )
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    make_text = getattr(executor._executor, "_make_submission_file_text", None)
    if make_text is None:
        pytest.skip("this submitit version does not expose its sbatch script")
    script = make_text("python -c pass", "uid")
    for line in ("--partition=gpu", "--gpus-per-node=1", "--time=240", "--ntasks-per-node=1", "--mem=32GB"):
        assert line in script


def _compose_repo(overrides: list[str], hydra: bool = False):
    if not (ROOT / "conf" / "train.yaml").is_file():
        pytest.skip("conf/train.yaml is not there yet")
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=hydra)


def test_repo_configs_select_optuna_and_slurm():
    cfg = _compose_repo(["hparams_search=optuna", "hydra/launcher=slurm"], hydra=True)
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert cfg.hydra.sweeper.params["optimizer.lr"].startswith("tag(log")
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")


def test_repo_train_config_keeps_the_optuna_metric():
    """`lungcls-train -m hparams_search=optuna` must optimise val/macro_f1, not None."""
    cfg = _compose_repo(["hparams_search=optuna"])
    assert cfg.optimized_metric == "val/macro_f1", (
        "conf/train.yaml lists `_self_` after `hparams_search`, so its `optimized_metric: null` "
        "overrides the search config: put `_self_` first in its defaults list"
    )


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_wandb_agent_arguments_compose_with_the_repo_config(path):
    """The overrides one W&B agent run gets (first value of every parameter) set those keys."""
    sweep = yaml.safe_load(path.read_text())
    first = {}
    for name, spec in sweep["parameters"].items():
        first[name] = spec["values"][0] if "values" in spec else spec.get("value", spec.get("min"))
    cfg = _compose_repo(_wandb_args_no_hyphens(first), hydra=True)
    from omegaconf import OmegaConf

    for name, value in first.items():
        if name in GROUPS:
            assert cfg.hydra.runtime.choices[name] == value, name
        else:
            assert OmegaConf.select(cfg, name, throw_on_missing=False) == value, name


@pytest.mark.slow
def test_optuna_study_in_sqlite_storage_resumes(toy_app, tmp_path):
    """A Bayesian sweep with persistent storage: a second launch continues the same study (its
    sampler sees the earlier trials) instead of starting over."""
    import optuna

    db = tmp_path / "study.db"
    args = ["--multirun", "hparams_search=optuna", "hydra.sweeper.n_trials=2", f"hydra.sweeper.storage=sqlite:///{db}",
            "hydra.sweeper.study_name=lr-search"]
    toy_app(args)
    assert len(optuna.load_study(study_name="lr-search", storage=f"sqlite:///{db}").trials) == 2
    extra, stored = continue_study(args)  # what lungcls-sweep adds when it relaunches
    assert stored == 2 and extra == ["hydra.sweeper.sampler.seed=1236"]
    toy_app(args + extra)  # e.g. after the first launch was killed
    trials = optuna.load_study(study_name="lr-search", storage=f"sqlite:///{db}").trials
    assert len(trials) == 4 and len({t.params["optimizer.lr"] for t in trials}) == 4
