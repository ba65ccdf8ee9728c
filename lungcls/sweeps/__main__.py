"""``lungcls-sweep FILE [overrides]``: run a W&B sweep file locally as one Hydra multirun.

The same file runs on a W&B server (``wandb sweep`` + ``wandb agent``); here ``lungcls.sweeps.sweepfile``
turns it into ``python -m lungcls.train --multirun ...`` (grid: Hydra's basic sweeper; random /
bayes: the Optuna sweeper), and the multirun folder to compare is printed at the end.

    lungcls-sweep sweeps/backbones.yaml dataset=demo trainer.max_epochs=1 --dry-run
    lungcls-sweep backbones dataset=demo --dry-run     # a sweep bundled with lungcls, by name
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from lungcls.errors import LungclsError
from lungcls.settings import SWEEPS_DIR
from lungcls.sweeps.sweepfile import continue_study, load_sweep, merge_overrides, sweep_arguments, train_command

PROG = "lungcls-sweep"


# --------------------------------------------------------------------------------------------
# Finding the multirun folder afterwards
# --------------------------------------------------------------------------------------------


def _output_roots(extra: Sequence[str] = ()) -> list[Path]:
    """Where `<log_dir>/multirun/<date>/<time>` may appear: the cwd's or the repo's outputs/, or
    the `paths.log_dir` / `paths.root_dir` given on the command line."""
    roots = [Path.cwd() / "outputs" / "multirun"]
    repo = Path(__file__).resolve().parents[1]
    if (repo / "conf").is_dir():
        roots.append(repo / "outputs" / "multirun")
    for override in extra:
        key, _, value = override.lstrip("+").partition("=")
        value = value.strip("'\"")
        if key == "paths.log_dir" and value:
            roots.insert(0, Path(value) / "multirun")
        elif key == "paths.root_dir" and value:
            roots.insert(0, Path(value) / "outputs" / "multirun")
    unique: list[Path] = []
    for root in roots:
        if root.resolve() not in [u.resolve() for u in unique]:
            unique.append(root)
    return unique


def _sweep_dirs(roots: Iterable[Path]) -> set[Path]:
    return {p.resolve() for root in roots if root.is_dir() for p in root.glob("*/*") if p.is_dir()}


def _explicit_sweep_dir(extra: Sequence[str]) -> Path | None:
    for override in extra:
        if override.startswith("hydra.sweep.dir="):
            return Path(override.split("=", 1)[1].strip("'\""))
    return None


def bundled_sweeps() -> list[str]:
    return sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml")) if SWEEPS_DIR.is_dir() else []


def sweep_file(given: str) -> str:
    """A sweep file's path: the file given, or a sweep bundled with lungcls named without its folder
    and ``.yaml`` (``backbones`` -> ``<lungcls>/sweeps/backbones.yaml``), so an installed lungcls runs
    its own sweeps from any folder."""
    if Path(given).expanduser().is_file() or "/" in given or given.endswith((".yaml", ".yml")):
        return given
    bundled = SWEEPS_DIR / f"{given}.yaml"
    if bundled.is_file():
        return str(bundled)
    raise LungclsError(f"{given} is neither a sweep file nor a bundled sweep; bundled: {', '.join(bundled_sweeps()) or 'none'} "
                       "(or give the path of a W&B sweep YAML file)")


def _notes(sweep: dict, replaced: list[str], swept: set[str], hydra_args: list[str]) -> list[str]:
    """Say what the local run does differently from the file, and continue a stored Optuna study."""
    for key in replaced:
        if key in swept:
            print(f"{PROG}: note: {key} from the command line replaces the sweep's search over it")
    if sweep.get("method") != "grid" and "run_cap" not in sweep:
        print(f"{PROG}: note: no run_cap in the file: hydra.sweeper.n_trials from the config applies")
    if sweep.get("early_terminate"):
        print(f"{PROG}: note: early_terminate is a W&B feature; local runs all go to the end")
    extra, stored = continue_study(hydra_args)
    if stored:
        print(f"{PROG}: note: the study in hydra.sweeper.storage holds {stored} trial(s); continuing it with {extra[0]}")
        hydra_args = [a for a in hydra_args if not a.startswith("hydra.sweeper.sampler.seed=")] + extra
    return hydra_args


def _point_at_results(explicit: Path | None, roots: list[Path], before: set[Path]) -> None:
    """Print the multirun folder the sweep wrote and the command that compares its runs."""
    new = sorted(_sweep_dirs(roots) - before, key=lambda p: p.stat().st_mtime)
    folder = explicit if explicit is not None else (new[-1] if new else None)
    if folder is not None and folder.exists():
        try:
            shown = str(folder.resolve().relative_to(Path.cwd().resolve()))
        except ValueError:
            shown = str(folder)
        print(f"\nMultirun folder: {shown}")
        print(f"Compare the runs: lungcls-compare {shlex.quote(shown)}")
    else:
        print("\nThe runs are in Hydra's multirun folder (hydra.sweep.dir); compare them with "
              "lungcls-compare <that folder>")


def main(argv: Sequence[str] | None = None) -> int:
    """`lungcls-sweep FILE [overrides] [--dry-run]`: run a W&B sweep file as a Hydra multirun."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run a W&B sweep file locally (no W&B server) as a Hydra multirun of "
        "lungcls.train: grid through Hydra's basic sweeper, random/bayes through Optuna.",
        epilog="example: lungcls-sweep sweeps/backbones.yaml dataset=demo trainer.max_epochs=1",
    )
    parser.add_argument("sweep_file", help="a W&B sweep YAML file (e.g. sweeps/backbones.yaml) or the name of a "
                        f"bundled sweep ({', '.join(bundled_sweeps())})")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="Hydra overrides for every run; they win over the file (e.g. dataset=demo)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the Hydra command and exit without running"
    )
    args = parser.parse_intermixed_args(argv)

    try:
        sweep = load_sweep(sweep_file(args.sweep_file))
        pairs, swept = sweep_arguments(sweep)
        hydra_args, replaced = merge_overrides(pairs, args.overrides)
    except LungclsError as err:
        parser.exit(2, f"{PROG}: error: {err}\n")

    hydra_args = _notes(sweep, replaced, swept, hydra_args)
    command = train_command(hydra_args)
    print(shlex.join(command), flush=True)
    if args.dry_run:
        return 0

    roots = _output_roots(args.overrides)
    before = _sweep_dirs(roots)
    process = subprocess.Popen(command)
    try:
        code = process.wait()
    except KeyboardInterrupt:  # the jobs got the same Ctrl-C; let them finish cleaning up
        code = process.wait()
    _point_at_results(_explicit_sweep_dir(args.overrides), roots, before)
    return code


if __name__ == "__main__":
    sys.exit(main())
