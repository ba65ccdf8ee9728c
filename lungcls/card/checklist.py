"""``checklist.md``: the CLAIM 2024 and TRIPOD+AI items a training and evaluation run can answer,
each filled from the evidence (with the file it came from) or marked missing with the lungcls
command that would fill it; the items no tool can answer are left to the author.

Item numbers are the guidelines'; the item texts are short paraphrases of ours, not the
guidelines' wording: read the published checklists (CLAIM 2024: Tejani et al., Radiology: Artificial
Intelligence 2024; TRIPOD+AI: Collins et al., BMJ 2024) for the full items.
"""

from __future__ import annotations

from lungcls.card.answers import ANSWERS
from lungcls.card.evidence import Evidence
from lungcls.card.text import table

AUDIT = "lungcls-audit <the run's dataset= settings>"
LOSO = "lungcls-train -m <same settings> dataset.folds=source 'dataset.fold=range(k)', then lungcls-compare"
REPORT = "lungcls-report ckpt=<run>/checkpoints/best.ckpt report.methods=all report.target=true"
EXTERNAL = "lungcls-evaluate ckpt=<run>/checkpoints/best.ckpt dataset=folder dataset.root=<external data> dataset.split=all"
SCREEN = "lungcls-evaluate ckpt=<run>/checkpoints/best.ckpt evaluate.positive_class=<class>"
RECALIBRATE = "lungcls-evaluate ckpt=<run>/checkpoints/best.ckpt evaluate.temperature_scaling=true"
AUTHOR = None

# (item, our short wording, the answer's name in ANSWERS or AUTHOR, the command that fills a missing answer)
CLAIM = [
    ("1", "say the study uses AI and which kind", AUTHOR, ""), ("2", "structured abstract", AUTHOR, ""),
    ("3", "clinical background, intended use and role", AUTHOR, ""), ("4", "objectives and hypotheses", AUTHOR, ""),
    ("5", "prospective or retrospective", AUTHOR, ""), ("6", "study goal", AUTHOR, ""),
    ("7", "where the data come from", "sources", ""), ("8", "eligibility: how, where and when cases were found", AUTHOR, ""),
    ("9", "pre-processing of the data", "preprocessing", ""), ("10", "which subsets of the data were used", "subsets", ""),
    ("11", "definitions of data elements", AUTHOR, ""), ("12", "de-identification", AUTHOR, ""),
    ("13", "how missing or unreadable data were handled", "missing_data", AUDIT),
    ("14", "image acquisition", AUTHOR, ""), ("15", "reference standard, defined to be replicable", AUTHOR, ""),
    ("16", "why this reference standard", AUTHOR, ""), ("17", "who annotated, and their training", AUTHOR, ""),
    ("18", "annotation tools", AUTHOR, ""), ("19", "variability between and within readers", AUTHOR, ""),
    ("20", "intended sample size and how it was chosen", AUTHOR, ""),
    ("21", "how cases were assigned to partitions, in what proportions", "partitions", ""),
    ("22", "the level at which partitions are disjoint", "disjoint", ""),
    ("23", "the model: inputs, outputs, architecture", "model", ""), ("24", "software and versions", "software", ""),
    ("25", "initialisation of the parameters", "initialisation", ""),
    ("26", "training: augmentation, hyperparameters, models trained", "training", ""),
    ("27", "how the final model was selected", "selection", ""),
    ("28", "ensembling", "ensemble", ""), ("29", "performance metrics", "metrics_used", ""), ("30", "uncertainty: intervals and tests", "uncertainty", ""),
    ("31", "robustness or sensitivity analysis", "robustness", LOSO),
    ("32", "explainability methods and how they were checked", "explainability", REPORT),
    ("33", "testing on external data", "external", EXTERNAL), ("34", "flow of cases, inclusions and exclusions", "flow", ""),
    ("35", "characteristics of the cases in each partition", "characteristics", ""),
    ("36", "performance on every partition", "all_partitions", ""),
    ("37", "accuracy estimates with their precision", "estimates", ""), ("38", "analysis of the failures", "failures", ""),
    ("39", "limitations: bias, uncertainty, generalisability", "limitations_ref", ""),
    ("40", "implications for practice", AUTHOR, ""), ("41", "registration", AUTHOR, ""),
    ("42", "where the protocol can be read", AUTHOR, ""), ("43", "funding and the funders' role", AUTHOR, ""),
]

TRIPOD = [
    ("1", "title: develops or evaluates a model, population, outcome", AUTHOR, ""), ("2", "abstract", AUTHOR, ""),
    ("3a", "healthcare context and rationale", AUTHOR, ""), ("3b", "target population, place in care, users", AUTHOR, ""),
    ("3c", "known health inequalities", AUTHOR, ""), ("4", "objectives", AUTHOR, ""),
    ("5a", "data sources and their representativeness", "sources", ""), ("5b", "dates of the data", AUTHOR, ""),
    ("6a", "setting and centres", AUTHOR, ""), ("6b", "eligibility criteria", AUTHOR, ""),
    ("7", "data preparation and quality checks", "preprocessing", ""), ("8a", "outcome and how it was assessed", AUTHOR, ""),
    ("9b", "the predictors (here: the image at its working size)", "preprocessing", ""),
    ("10", "sample size and how it was chosen", AUTHOR, ""), ("11", "missing data", "missing_data", AUDIT),
    ("12a", "how the data were used for development and evaluation", "partitions", ""),
    ("12c", "model type, building, tuning and internal validation", "training", ""),
    ("12d", "heterogeneity across clusters (hospitals)", "per_source", LOSO),
    ("12e", "performance measures", "metrics_used", ""), ("12f", "model updating or recalibration", "recalibration", RECALIBRATE),
    ("13", "class imbalance", "imbalance", ""), ("14", "fairness", AUTHOR, ""),
    ("15", "model output and decision thresholds", "output", SCREEN),
    ("16", "differences between development and evaluation data", "external", EXTERNAL),
    ("17", "ethical approval", AUTHOR, ""), ("18a", "funding", AUTHOR, ""), ("18b", "conflicts of interest", AUTHOR, ""),
    ("18c", "protocol", AUTHOR, ""), ("18d", "registration", AUTHOR, ""), ("18e", "data availability", AUTHOR, ""),
    ("18f", "code availability", "specification", ""), ("19", "patient and public involvement", AUTHOR, ""),
    ("20a", "flow of participants", "flow", ""), ("20b", "characteristics, per data source", "characteristics", ""),
    ("21", "participants and outcome events in each analysis", "characteristics", ""),
    ("22", "the full model, or how to reach it", "specification", ""),
    ("23a", "performance with intervals, in key subgroups", "estimates", ""),
    ("23b", "heterogeneity of performance across clusters", "per_source", LOSO),
    ("24", "results of model updating", "recalibration", RECALIBRATE), ("25", "interpretation", AUTHOR, ""),
    ("26", "limitations", "limitations_ref", ""), ("27a", "handling poor or missing inputs in use", AUTHOR, ""),
    ("27b", "what users need to know or do", AUTHOR, ""), ("27c", "future research", AUTHOR, ""),
]
NOT_FROM_RUNS = ("ethics approval, a reader study or comparison with radiologists, patient demographics, "
                 "the reference standard and the annotators")


def item_rows(items: list, evid: Evidence) -> tuple[list[list[str]], list[str]]:
    """Table rows for the items evidence can answer, and the author's items."""
    rows, author = [], []
    for number, text, answer, command in items:
        if answer is AUTHOR:
            author.append(f"{number} ({text})")
            continue
        found = ANSWERS[answer](evid)
        if found is None:
            where = str(evid.checkpoint) if evid.checkpoint else "<run>/checkpoints/best.ckpt"
            rows.append([number, text, "missing", f"run `{command.replace('<run>/checkpoints/best.ckpt', where)}`", ""])
        else:
            rows.append([number, text, "filled", found[0], f"`{found[1]}`"])
    return rows, author


def checklist(evid: Evidence) -> str:
    lines = [f"# Reporting checklist: {evid.run.name}", "",
             "Filled from the run's own files. Item numbers follow CLAIM 2024 and TRIPOD+AI (2024) as lungcls maps "
             "them: check each against the published checklist before you submit; the short texts are our "
             "paraphrases, not the guidelines' wording. Every item marked filled states its number and the "
             f"file it came from (a bare file name is the run's own, in `{evid.run}`); a missing item names the lungcls "
             "command that fills it.", ""]
    author_all = []
    for title, items in (("CLAIM 2024", CLAIM), ("TRIPOD+AI", TRIPOD)):
        rows, author = item_rows(items, evid)
        lines += [f"## {title}", "", *table(["item", "asks for", "status", "evidence", "from"], rows)]
        author_all.append(f"- {title}: items " + "; ".join(author))
    lines += ["## For the author to complete", "",
              f"No run can answer these ({NOT_FROM_RUNS}):", "", *author_all, ""]
    return "\n".join(lines)
