"""``lungcls-card``: a model card and a reporting checklist for a finished run, written from the files
it and its evidence folders left (Hydra app; see conf/card.yaml).

    lungcls-card card.run=outputs/runs/<date>/<time>_resnet18-full
    lungcls-card card.ckpt=<run>/checkpoints/best.ckpt card.evidence='[outputs/ext_eval,outputs/loso_cmp]'

Writes ``model_card.md``, ``model_card.html`` and ``checklist.md`` into the run folder (``-2``, ``-3``...
when a card is already there) and attaches the page to the run's offline W&B run when it has one.
"""

from __future__ import annotations

from omegaconf import DictConfig

from lungcls.card.gather import gather
from lungcls.card.settings import card_settings, card_target
from lungcls.card.tracking import attach_to_run
from lungcls.card.write import write_card
from lungcls.cli import hydra_main


@hydra_main("card")
def main(cfg: DictConfig) -> None:
    settings, target = card_settings(cfg.card), card_target(cfg.card)
    evid = gather(target.run, target.ckpt, settings.evidence)
    files = write_card(evid, settings, evid.run)
    print(f"model card: {files.html}")
    print(f"  {files.markdown}; checklist: {files.checklist}")
    found = [f"{len(evid.evaluations)} evaluation(s)", f"{len(evid.audits)} audit(s)", f"{len(evid.reports)} report(s)",
             f"{len(evid.generalisation)} leave-one-source-out table(s)"]
    print(f"  evidence: the run, {', '.join(found)}")
    project = ((evid.config.get("logger") or {}).get("wandb") or {}).get("project")
    attach_to_run(evid.run, files.html, project)


if __name__ == "__main__":
    main()
