"""``lungcls-compare DIR...``: rank finished runs side by side from their run folders.

A sweep leaves one run folder per job. This reads them (``lungcls.runs.folders``), builds one row per run
with what set it apart, accuracy per split, per-class recall and missed disease
(``lungcls.comparison.ranking``), and writes ``comparison.md``, ``comparison.csv`` and ``comparison.png``.
Leave-one-source-out runs (``dataset.folds=source``) are also folded into ``generalisation.csv`` and a
section of comparison.md (``lungcls.comparison.generalisation``).

    lungcls-compare outputs/multirun/2026-01-31/10-00-00
    lungcls-compare runs_a/ runs_b/ --out report/ --rank-by val/macro_f1 --stage val
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lungcls.errors import LungclsError
from lungcls.comparison.paired import paired_rows
from lungcls.comparison.chart import plot_comparison
from lungcls.comparison.generalisation import generalisation_rows, markdown_section
from lungcls.comparison.ranking import DEFAULT_MISSED, STAGES, rank_runs, to_csv, to_markdown
from lungcls.runs.folders import STATUS_OK, collect_runs, read_yaml
from lungcls.runs.files import write_text_atomic

PROG = "lungcls-compare"
OUTPUT_NAMES = ("comparison.md", "comparison.csv", "comparison.png")


def _optuna_note(dirs: Sequence[Path]) -> list[str]:
    notes = []
    for folder in dirs:
        results = folder / "optimization_results.yaml"
        if results.is_file():
            data = read_yaml(results) or {}
            if "best_value" in data:
                notes.append(
                    f"Optuna ({folder.name}): best value {data['best_value']} with "
                    f"{data.get('best_params')}"
                )
    return notes


def _header(rows: Sequence[dict], dirs: Sequence[Path], order: str, stage: str) -> list[str]:
    ok = sum(1 for r in rows if r["status"] == STATUS_OK)
    ranked = sum(1 for r in rows if r["rank"] is not None)
    header = [f"{len(rows)} run(s) from {', '.join(str(d) for d in dirs)}; {ranked} ranked by {order}."]
    if ok < len(rows):
        header.append(f"{len(rows) - ok} run(s) without {stage} metrics, failed or incomplete: listed last.")
    return header


def compare(
    dirs: Sequence[str | Path],
    out: str | Path | None = None,
    rank_by: str | None = None,
    missed: Sequence[str] = DEFAULT_MISSED,
    stage: str = "test",
    paired: bool = False,
) -> tuple[str, list[Path]]:
    """Collect, rank and write the files; returns the Markdown text and the paths written. With
    ``paired``, runs on the same test images are tested against the top-ranked one
    (``comparison_paired.csv`` and a section of comparison.md)."""
    dirs = [Path(d) for d in dirs]
    runs = collect_runs(dirs)
    known = {c for r in runs for c in ((r.get("metrics") or {}).get(stage) or {}).get("class_names") or []}
    unknown = [c for c in missed if known and c not in known]
    if unknown:
        raise LungclsError(f"--missed {' '.join(unknown)}: no run has such a class; the classes are {', '.join(sorted(known))}")
    rows, notes = rank_runs(runs, rank_by=rank_by, missed=missed, stage=stage)
    out = Path(out) if out is not None else (dirs[0] if len(dirs) == 1 else Path.cwd())
    out.mkdir(parents=True, exist_ok=True)
    order = (f"`{rank_by}`, then fewest missed" if rank_by else "fewest missed") + (
        f" ({' + '.join(missed)} predicted Normal) on {stage}, then {stage} accuracy")
    text = to_markdown(rows, title="Run comparison", notes=_header(rows, dirs, order, stage) + notes + _optuna_note(dirs))
    paths = [out / name for name in OUTPUT_NAMES]
    if paired:
        pairs, lines = paired_rows(rows, {r["run"]: r for r in runs}, missed)
        text += "\n## Paired comparison (test split)\n\n" + "\n".join(f"- {line}" for line in lines) + "\n"
        paths.append(out / "comparison_paired.csv")
        write_text_atomic(paths[-1], to_csv(pairs))
    general, lines = generalisation_rows(runs, missed)
    if general:
        text += markdown_section(general, lines)
        paths.append(out / "generalisation.csv")
        write_text_atomic(paths[-1], to_csv(general))
    write_text_atomic(paths[0], text)
    write_text_atomic(paths[1], to_csv(rows))
    plot_comparison(rows, paths[2], missed=missed, stage=stage, title=f"Runs, best first: {order}")
    return text, paths


def main(argv: Sequence[str] | None = None) -> int:
    """`lungcls-compare DIR... [--out DIR] [--rank-by KEY] [--missed CLASS...] [--stage S]`."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Rank run folders (a multirun folder, folders of runs, or run folders) and "
        "write comparison.md, comparison.csv and comparison.png.",
        epilog="example: lungcls-compare outputs/multirun/2026-01-31/10-00-00 --rank-by val/macro_f1\n\n"
        "Why flags and not Hydra key=value overrides: lungcls-compare trains and scores nothing, so it composes no "
        "config; it reads finished run folders, whose own settings it takes from their .hydra/ folders, and its "
        "few choices (ranking column, missed classes, split, paired tests) are options of the table.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="multirun folder(s) or run folder(s)")
    parser.add_argument(
        "--out", default=None,
        help="folder for the three files (default: the single DIR given, else the current folder)",
    )
    parser.add_argument(
        "--rank-by", default=None, metavar="COLUMN",
        help="rank by this column first (e.g. val/macro_f1, test/recall/COVID, missed); accuracy, "
        "F1 and recall rank high first, fn_to_normal, missed and loss low first; "
        "append :asc or :desc to choose",
    )
    parser.add_argument(
        "--missed", nargs="+", default=list(DEFAULT_MISSED), metavar="CLASS",
        help="disease classes whose X-rays predicted Normal count as missed "
        "(default: COVID 'Viral Pneumonia')",
    )
    parser.add_argument(
        "--stage", choices=STAGES, default="test", help="split the ranking uses (default: test)"
    )
    parser.add_argument(
        "--paired", action="store_true",
        help="test each run against the top-ranked one on the same test images: McNemar's test on "
        "correctness and paired bootstrap intervals of the accuracy and missed-disease differences",
    )
    args = parser.parse_args(argv)
    try:
        text, paths = compare(
            args.dirs, out=args.out, rank_by=args.rank_by, missed=args.missed, stage=args.stage, paired=args.paired
        )
    except LungclsError as err:
        parser.exit(2, f"{PROG}: error: {err}\n")
    print(text, end="")
    print(f"\nWrote {', '.join(str(p) for p in paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
