"""A W&B sweep file as Hydra arguments: what ``lungcls-sweep`` runs locally, with no W&B server.

The files in `sweeps/` are written for `wandb sweep FILE` + `wandb agent`. So that a study can be
rerun on a laptop or a cluster without a W&B server, this module turns the same file into the
arguments of `python -m lungcls.train --multirun ...`:

- `method: grid` -> Hydra's basic sweeper (`key=v1,v2` for every swept key: the same cartesian
  product W&B's grid enumerates);
- `method: random | bayes` -> the Optuna sweeper (`hparams_search=optuna`) with the random or TPE
  sampler, the file's distributions in Hydra's sweep syntax, `run_cap` as the number of trials and
  `metric` as `optimized_metric` + direction.

`value:` parameters become plain overrides; overrides given on the command line apply to every run
and win over the file. Values are written in Hydra's override grammar (quoted where a space, comma,
quote or bracket would change their meaning), so each run receives exactly the value in the file.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from lungcls.errors import LungclsError
from lungcls.sweeps.overrides import hydra_value, override_key

TRAIN_MODULE = "lungcls.train"
ARGS_MACRO = "${args_no_hyphens}"

LOCAL_METHODS = ("grid", "random", "bayes")
# What each local method can express; the names are W&B's `distribution` values.
GRID_KINDS = ("constant", "categorical", "int_uniform", "q_uniform")
OPTUNA_KINDS = (
    "constant",
    "categorical",
    "int_uniform",
    "uniform",
    "q_uniform",
    "log_uniform_values",
    "log_uniform",
)
SAMPLERS = {"random": "random", "bayes": "tpe"}


# --------------------------------------------------------------------------------------------
# W&B sweep file -> parameters
# --------------------------------------------------------------------------------------------


def load_sweep(path: str | Path) -> dict:
    """Read a sweep YAML file; a missing or malformed file is a user error."""
    path = Path(path)
    if not path.is_file():
        raise LungclsError(f"no sweep file {path}")
    try:
        sweep = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise LungclsError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(sweep, dict):
        raise LungclsError(f"{path} must hold a mapping with method, metric and parameters")
    return sweep


def parameter_kind(name: str, spec: Any) -> str:
    """The W&B distribution of one parameter, inferred the way W&B's sweeps library does."""
    if not isinstance(spec, dict):
        raise LungclsError(f"sweep parameter {name!r} must be a mapping (value:, values:, min:/max:...)")
    if "distribution" in spec:
        return str(spec["distribution"])
    if "value" in spec:
        return "constant"
    if "values" in spec:
        return "categorical_w_probabilities" if "probabilities" in spec else "categorical"
    if "min" in spec and "max" in spec:
        ints = all(isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("min", "max"))
        return "int_uniform" if ints else "uniform"
    raise LungclsError(f"sweep parameter {name!r} needs value:, values: or min:/max:")


def flatten_parameters(parameters: dict, prefix: str = "") -> list[tuple[str, dict]]:
    """(dotted key, spec) pairs; nested `parameters:` blocks become dotted keys."""
    flat: list[tuple[str, dict]] = []
    for name, spec in parameters.items():
        key = f"{prefix}{name}"
        if isinstance(spec, dict) and "parameters" in spec:
            flat.extend(flatten_parameters(spec["parameters"] or {}, prefix=f"{key}."))
        else:
            flat.append((key, spec))
    return flat


def _bounds(name: str, spec: dict) -> tuple[Any, Any]:
    lo, hi = spec.get("min"), spec.get("max")
    if lo is None or hi is None:
        raise LungclsError(f"sweep parameter {name!r} needs both min and max")
    if not lo < hi:
        raise LungclsError(f"sweep parameter {name!r}: min {lo} is not less than max {hi}")
    return lo, hi


def _number(value: Any, as_float: bool) -> str:
    """A bound of a sweep expression; floats are kept floats so Optuna samples floats."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LungclsError(f"expected a number, got {value!r}")
    return repr(float(value)) if as_float else str(int(value))


def _grid_values(name: str, spec: dict, kind: str) -> list[Any]:
    """The values W&B's grid would enumerate for one parameter."""
    if kind == "constant":
        return [spec["value"]]
    if kind == "categorical":
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise LungclsError(f"sweep parameter {name!r}: values must be a non-empty list")
        return values
    if kind == "int_uniform":
        lo, hi = _bounds(name, spec)
        return list(range(int(lo), int(hi) + 1))
    if kind == "q_uniform":
        lo, hi = _bounds(name, spec)
        q = spec.get("q", 1.0)
        count = math.ceil((hi - lo) / q)  # numpy.arange(min, max, q), as W&B's grid does
        values = [lo + i * q for i in range(count)]
        return [round(v, 12) if isinstance(v, float) else v for v in values]
    raise LungclsError(
        f"sweep parameter {name!r}: grid search cannot enumerate distribution {kind!r} "
        f"(supported with method: grid: value, values, int_uniform, q_uniform)"
    )


def _optuna_expression(name: str, spec: dict, kind: str) -> str:
    """One parameter in the Optuna sweeper's override syntax."""
    if kind == "categorical":
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise LungclsError(f"sweep parameter {name!r}: values must be a non-empty list")
        # The comma form (not choice(...)) keeps quoted strings, lists and null intact per trial.
        return ",".join(hydra_value(v) for v in values)
    if kind == "int_uniform":
        lo, hi = _bounds(name, spec)
        return f"int(interval({_number(lo, False)},{_number(hi, False)}))"
    if kind == "uniform":
        lo, hi = _bounds(name, spec)
        return f"interval({_number(lo, True)},{_number(hi, True)})"
    if kind == "log_uniform_values":
        lo, hi = _bounds(name, spec)
        if lo <= 0:
            raise LungclsError(f"sweep parameter {name!r}: log_uniform_values needs min > 0")
        return f"tag(log,interval({_number(lo, True)},{_number(hi, True)}))"
    if kind == "log_uniform":  # W&B's older form: min/max are natural-log exponents
        lo, hi = _bounds(name, spec)
        return f"tag(log,interval({math.exp(lo)!r},{math.exp(hi)!r}))"
    if kind == "q_uniform":
        lo, hi = _bounds(name, spec)
        q = spec.get("q", 1.0)
        as_float = not all(isinstance(v, int) for v in (lo, hi, q))
        bounds = ",".join(_number(v, as_float) for v in (lo, hi, q))
        return f"range({bounds})"  # Optuna: a stepped distribution including max
    raise LungclsError(
        f"sweep parameter {name!r}: distribution {kind!r} has no Optuna equivalent "
        f"(supported with method: random/bayes: value, values, int_uniform, uniform, q_uniform, "
        f"log_uniform_values, log_uniform)"
    )


def command_overrides(sweep: dict) -> list[str]:
    """Fixed overrides written into the W&B `command` after `lungcls.train`.

    The command must run lungcls.train and pass the parameters with `${args_no_hyphens}`:
    `--key=value` (W&B's default `${args}`) is not Hydra syntax.
    """
    command = sweep.get("command")
    if command is None:
        raise LungclsError(
            f"the sweep has no command; W&B would run `python <program> --key=value`, which Hydra "
            f"rejects: add command: [${{env}}, ${{interpreter}}, -m, {TRAIN_MODULE}, {ARGS_MACRO}]"
        )
    if not isinstance(command, list):
        raise LungclsError("the sweep's command must be a list")
    items = [str(c) for c in command]
    if ARGS_MACRO not in items:
        raise LungclsError(
            f"the sweep's command must pass the parameters as Hydra overrides with {ARGS_MACRO}"
        )
    if TRAIN_MODULE in items:
        start = items.index(TRAIN_MODULE) + 1
    elif "${program}" in items:
        start = items.index("${program}") + 1
    else:
        raise LungclsError(f"the sweep's command does not run {TRAIN_MODULE}")
    return [c for c in items[start:] if not (c.startswith("${") and c.endswith("}"))]


# --------------------------------------------------------------------------------------------
# sweep -> Hydra command line
# --------------------------------------------------------------------------------------------


def sweep_arguments(sweep: dict) -> tuple[list[tuple[str, str]], set[str]]:
    """(key, override) pairs for the sweep itself, and the keys it searches over."""
    method = sweep.get("method")
    if method not in LOCAL_METHODS:
        raise LungclsError(
            f"method {method!r} cannot run locally (supported: {', '.join(LOCAL_METHODS)})"
        )
    parameters = sweep.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        raise LungclsError("the sweep has no parameters")

    pairs: list[tuple[str, str]] = []
    swept: set[str] = set()
    if method != "grid":
        metric = sweep.get("metric")
        if not isinstance(metric, dict) or not metric.get("name"):
            raise LungclsError(f"method: {method} needs metric: {{name: ..., goal: ...}}")
        goal = metric.get("goal", "minimize")
        if goal not in ("minimize", "maximize"):
            raise LungclsError(f"metric goal must be minimize or maximize, not {goal!r}")
        pairs += [
            ("hparams_search", "hparams_search=optuna"),
            ("hydra/sweeper/sampler", f"hydra/sweeper/sampler={SAMPLERS[method]}"),
            ("hydra.sweeper.direction", f"hydra.sweeper.direction={goal}"),
        ]
        run_cap = sweep.get("run_cap")
        if run_cap is not None:
            if isinstance(run_cap, bool) or not isinstance(run_cap, int) or run_cap < 1:
                raise LungclsError(f"run_cap must be a positive integer, not {run_cap!r}")
            pairs.append(("hydra.sweeper.n_trials", f"hydra.sweeper.n_trials={run_cap}"))
        # the file's parameters are the whole search space: drop the config's default one
        pairs.append(("hydra.sweeper.params", "hydra.sweeper.params=null"))
        pairs.append(("optimized_metric", f"optimized_metric={hydra_value(metric['name'])}"))

    for override in command_overrides(sweep):
        pairs.append((override_key(override), override))

    for name, spec in flatten_parameters(parameters):
        kind = parameter_kind(name, spec)
        if kind == "constant":
            pairs.append((name, f"{name}={hydra_value(spec['value'])}"))
            continue
        if method == "grid":
            values = _grid_values(name, spec, kind)
            expression = ",".join(hydra_value(v) for v in values)
            if len(values) > 1:
                swept.add(name)
        else:
            if kind == "categorical_w_probabilities":
                raise LungclsError(
                    f"sweep parameter {name!r}: Optuna cannot weight values with probabilities "
                    f"(use values: without probabilities)"
                )
            expression = _optuna_expression(name, spec, kind)
            swept.add(name)
        pairs.append((name, f"{name}={expression}"))
    return pairs, swept


def merge_overrides(pairs: list[tuple[str, str]], extra: Sequence[str]) -> tuple[list[str], list[str]]:
    """Sweep overrides, then `extra`; an extra override replaces the sweep's for the same key."""
    extra = [e for e in extra if e not in ("-m", "--multirun")]
    extra_keys = {override_key(e) for e in extra}
    kept = [override for key, override in pairs if key not in extra_keys]
    replaced = [key for key, _ in pairs if key in extra_keys]
    return ["--multirun", *kept, *extra], replaced


def sweep_to_hydra_args(sweep: dict, extra: Sequence[str] = ()) -> list[str]:
    """The arguments after `python -m lungcls.train` that run `sweep` as a Hydra multirun.

    Raises LungclsError (one line, naming the parameter) for what the local sweepers cannot do.
    """
    pairs, _ = sweep_arguments(sweep)
    args, _ = merge_overrides(pairs, extra)
    return args


def train_command(args: Sequence[str]) -> list[str]:
    """The training command, with this interpreter so the same environment runs every job."""
    return [sys.executable, "-m", TRAIN_MODULE, *args]


def continue_study(args: Sequence[str], default_seed: int = 1234) -> tuple[list[str], int]:
    """Overrides that let a relaunched Optuna sweep with persistent storage continue its study:
    the sampler's seed moves on by the number of trials already stored, so the new trials are new
    proposals rather than the first launch's again. Returns (extra overrides, trials stored)."""
    values = {key: value for key, _, value in (a.partition("=") for a in args if "=" in a)}
    storage = values.get("hydra.sweeper.storage")
    optuna_sweep = values.get("hparams_search") == "optuna" or "hydra.sweeper.sampler.seed" in values
    if not storage or storage == "null" or not optuna_sweep:
        return [], 0
    import optuna

    name = values.get("hydra.sweeper.study_name")
    try:
        summaries = optuna.get_all_study_summaries(storage=storage.strip("'\""))
    except Exception:  # noqa: BLE001 - a new or unreachable storage: nothing to continue
        return [], 0
    stored = sum(s.n_trials for s in summaries if name in (None, "null") or s.study_name == name.strip("'\""))
    if not stored:
        return [], 0
    seed = int(values.get("hydra.sweeper.sampler.seed", default_seed))
    return [f"hydra.sweeper.sampler.seed={seed + stored}"], stored
