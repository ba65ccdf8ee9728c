"""Putting a card together: the sections in order, the limitations, the list of files read, then
the three files; and the card written at the end of ``lungcls-train`` and ``lungcls-evaluate``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import lungcls
from lungcls.card.checklist import checklist
from lungcls.card.evidence import Evidence
from lungcls.card.explanations import explanations_section
from lungcls.card.gather import gather
from lungcls.card.limitations import limitations
from lungcls.card.performance import performance_section
from lungcls.card.render import fresh_paths, relative, to_html, write_new
from lungcls.card.sections import data_section, model_section, use_section
from lungcls.card.settings import CardSettings, card_settings
from lungcls.errors import LungclsError


@dataclass(frozen=True)
class CardFiles:
    markdown: Path
    html: Path
    checklist: Path


def evidence_lines(evid: Evidence) -> list[str]:
    files = [evid.run / "metrics.json", evid.run / "splits.csv", evid.run / "status.json", evid.run / ".hydra" / "config.yaml"]
    files += [p / "metrics.json" for p, _ in evid.evaluations] + [p / "audit.json" for p, _ in evid.audits]
    files += [r.path / "methods.csv" for r in evid.reports] + [p / "generalisation.csv" for p, _ in evid.generalisation]
    lines = ["## Evidence read", "", *[f"- `{f}`" for f in files if f.is_file()]]
    return lines + [f"- Note: {note}" for note in evid.notes] + [""]


def card_markdown(evid: Evidence, settings: CardSettings, folder: Path, checklist_name: str) -> str:
    figures = {key: Path(relative(evid.run / name, folder)) for key, name in
               (("confusion", "confusion_matrix.png"), ("reliability", "reliability.png")) if (evid.run / name).is_file()}
    attribution = next((r.figure for r in evid.reports if r.figure is not None), None)
    title = f"{evid.metrics.get('backbone') or '?'}/{evid.metrics.get('finetune') or '?'} ({evid.run.name})"
    lines = [f"# Model card: {title}", "",
             f"Written by lungcls {lungcls.__version__} on {datetime.now():%Y-%m-%d %H:%M} from the files the run and its "
             "evidence left on disk (listed at the end); every number below is copied from the file named beside it. "
             f"The reporting checklist (CLAIM 2024, TRIPOD+AI) is in [{checklist_name}]({checklist_name}).", ""]
    lines += model_section(evid) + use_section(settings.intended_use, settings.out_of_scope) + data_section(evid)
    lines += performance_section(evid, figures)
    lines += explanations_section(evid, Path(relative(attribution, folder)) if attribution else None)
    found = limitations(evid, settings.calibration_limit, settings.min_class_images)
    lines += ["## Limitations", "", *[f"- {sentence}" for sentence in found], ""]
    return "\n".join(lines + evidence_lines(evid))


def write_card(evid: Evidence, settings: CardSettings, folder: Path) -> CardFiles:
    """model_card.md, model_card.html and checklist.md in ``folder``, under fresh names."""
    md_path, html_path, list_path = fresh_paths(folder)
    text = card_markdown(evid, settings, folder, list_path.name)
    page = to_html(text, folder, f"Model card: {evid.run.name}")
    write_new(md_path, text)
    write_new(html_path, page)
    write_new(list_path, checklist(evid))
    return CardFiles(md_path, html_path, list_path)


def log_to_wandb(loggers: Sequence[Any], files: CardFiles) -> None:
    """The card as an HTML panel of a live W&B run (the training run's own)."""
    runs = [lg.experiment for lg in loggers if type(lg).__name__ == "WandbLogger"]
    if not runs:
        return
    import wandb

    for run in runs:
        run.log({"model_card": wandb.Html(files.html.read_text(encoding="utf-8"))})
        run.save(str(files.markdown), base_path=str(files.markdown.parent), policy="now")


def card_at_end(cfg: Any, run_dir: Path, run: str | None = None, ckpt: str | None = None,
                loggers: Sequence[Any] = ()) -> CardFiles | None:
    """The card a finished train or evaluate run writes into ``run_dir`` (``card.auto``). A card that
    cannot be written is a warning: the run's own results are already complete."""
    settings = card_settings(cfg.card)
    if not settings.auto:
        return None
    named = list(settings.evidence) + ([str(run_dir)] if run is None else [])
    try:
        evid = gather(run, ckpt, named)
        files = write_card(evid, settings, run_dir)
    except LungclsError as e:
        print(f"model card not written: {e}")
        return None
    except Exception as e:  # noqa: BLE001 - the run's results are written; its card must not undo that
        print(f"model card not written ({type(e).__name__}: {e}); the run's results are complete: "
              f"write it with lungcls-card card.run={run or run_dir}")
        return None
    log_to_wandb(loggers, files)
    print(f"model card: {files.html} (and {files.markdown.name}, {files.checklist.name})")
    return files
