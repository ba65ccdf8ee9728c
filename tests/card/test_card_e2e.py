"""The whole path as a researcher takes it on the three-site demo: train (its card says what was not
measured), audit, evaluate on an external folder, leave-one-source-out, a methods report, then
``lungcls-card``: the card's numbers are the numbers of the files it read, and the page works in
a real browser."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import run_cli

CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser", shutil.which("chromium") or "") if p and Path(p).is_file()), None)
DATA = ["dataset.demo.images_per_class=12", "dataset.demo.source_size=64", "dataset.image_size=64",
        "dataset.demo.sources=3", "dataset.demo.source_bias=0.8"]
TRAIN = DATA + ["dataset.batch_size=8", "trainer.max_epochs=2", "trainer.accelerator=cpu", "backbone=logistic"]


def ok(result) -> str:
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def limitations(text: str) -> list[str]:
    block = text[text.index("## Limitations"):text.index("## Evidence read")]
    return [line[2:] for line in block.splitlines() if line.startswith("- ")]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The run and every kind of evidence, side by side in one folder, as the README's commands leave them."""
    out = tmp_path_factory.mktemp("card")
    data = f"paths.data_dir={out / 'data'}"
    ok(run_cli("lungcls.train", *TRAIN, data, f"hydra.run.dir={out / 'run'}"))
    (out / "bare_card.md").write_bytes((out / "run" / "model_card.md").read_bytes())  # the card as training left it
    ok(run_cli("lungcls.audit", *DATA, data, f"hydra.run.dir={out / 'audit'}"))
    ckpt = out / "run" / "checkpoints" / "best.ckpt"
    ok(run_cli("lungcls.evaluate", f"ckpt={ckpt}", "evaluate.positive_class=COVID", f"hydra.run.dir={out / 'eval'}"))
    ok(run_cli("lungcls.evaluate", f"ckpt={ckpt}", "dataset=demo", "dataset.demo.seed=1", *DATA[:3], "dataset.split=all",
               data, f"hydra.run.dir={out / 'ext'}"))
    # the same overrides as the run plus the folds: lungcls-compare pairs the folds with their in-source run
    ok(run_cli("lungcls.train", "-m", *TRAIN, data, "dataset.folds=source", "dataset.fold=range(3)",
               f"hydra.sweep.dir={out / 'loso'}", timeout=900))
    ok(run_cli("lungcls.compare", str(out / "loso"), str(out / "run"), "--out", str(out / "cmp")))
    ok(run_cli("lungcls.report", f"ckpt={ckpt}", "report.methods=[gradcam,saliency,edge]", "report.target=true",
               "report.per_class=2", "report.misses=false", f"hydra.run.dir={out / 'report'}"))
    ok(run_cli("lungcls.card", f"card.run={out / 'run'}", f"hydra.run.dir={out / 'card'}"))
    return out


@pytest.mark.slow
def test_the_card_of_a_bare_run_says_what_was_not_measured(demo):
    text = (demo / "bare_card.md").read_text()
    found = limitations(text)
    assert "The data were not audited (no lungcls-audit): duplicates, label conflicts, leakage between splits, shortcuts and source confounding were not checked." in found
    assert "No external or leave-one-source-out evaluation was run: every number above comes from the sources the model was trained on." in found
    assert "Where the model looks was not measured (no lungcls-report with this checkpoint)." in found
    offline = list((demo / "run" / "wandb").glob("offline-run-*/files/media/html/model_card_*.html"))
    assert offline, "the training run's W&B run did not get the card"


@pytest.mark.slow
def test_the_card_numbers_are_the_numbers_of_the_evidence_files(demo):
    text = (demo / "run" / "model_card-2.md").read_text()
    test = json.loads((demo / "run" / "metrics.json").read_text())["test"]
    ci = test["ci"]
    assert f"Test split: accuracy {test['accuracy']:.3f} [{ci['accuracy'][0]:.3f}, {ci['accuracy'][1]:.3f}]" in text
    assert f"ECE {test['calibration']['ece']:.3f}" in text
    for name, pc in test["per_class"].items():
        recall = ci["per_class"][name]["recall"]
        if pc["recall"] is not None:
            assert f"| {name} | {pc['support']} |" in text and f"{pc['recall']:.3f} [{recall[0]:.3f}, {recall[1]:.3f}]" in text
    audit = json.loads((demo / "audit" / "audit.json").read_text())
    confounding = audit["source_confounding"]
    assert f"Cramer's V {confounding['cramers_v']:.2f}" in text
    viral = confounding["classes"]["Viral Pneumonia"]
    assert any(line.startswith(f"Viral Pneumonia comes {100 * viral['main_share']:.0f}% from one source ({viral['main_source']}; "
                               f"V = {confounding['cramers_v']:.2f}): with {viral['main_source']} held out, accuracy was")
               for line in limitations(text))
    external = json.loads((demo / "ext" / "metrics.json").read_text())
    assert f"External (ext): accuracy {external['all']['accuracy']:.3f}" in text
    with (demo / "cmp" / "generalisation.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    for r in rows:
        assert (f"Held out, source {r['source']} ({r['images']} images) scored accuracy {float(r['accuracy']):.3f} against "
                f"{float(r['in_source_accuracy']):.3f} in-source (gap {float(r['gap']):.3f}).") in limitations(text)
    screening = json.loads((demo / "eval" / "metrics.json").read_text())["screening"]["target_sensitivity"]["test"]
    assert f"| COVID vs rest | target sensitivity (chosen on val) | {screening['threshold']:.3f} | {screening['sensitivity']:.3f} |" in text
    recommended = re.search(r"Recommended for [^:]+: (\w+)", (demo / "report" / "report.html").read_text())
    assert f"Supported method: **{recommended.group(1)}**" in text  # the report's own verdict, read back from methods.csv
    checklist = (demo / "run" / "checklist-2.md").read_text()
    assert f"{external['data_root']}: 48 images, accuracy {external['all']['accuracy']:.3f}" in checklist
    pages = list((demo / "run" / "wandb").glob("offline-run-*/files/media/html/model_card_*.html"))
    assert len(pages) == 2  # training logged its card; lungcls-card added the later one to the same W&B run
    assert (demo / "eval" / "model_card.md").is_file()  # an evaluation's own card, with itself as evidence
    assert "COVID vs rest" in (demo / "eval" / "model_card.md").read_text()


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (Debian: apt-get install chromium)")
def test_the_card_page_in_a_real_browser(demo):
    """Every figure decodes and shows, every section and limitation is on the page, nothing fails."""
    playwright = pytest.importorskip("playwright.sync_api")
    page_file = demo / "run" / "model_card-2.html"
    expected = limitations((demo / "run" / "model_card-2.md").read_text())
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors, requests = [], []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_file.as_uri(), timeout=30_000)
            headings = page.locator("h2").all_inner_texts()
            for heading in ("Model details", "Intended use", "Out-of-scope use", "Data", "Performance", "Explanations",
                            "Limitations", "Evidence read"):
                assert heading in headings
            images = page.locator("img")
            assert images.count() == 3  # confusion matrix, reliability diagram, one attribution figure
            for k in range(images.count()):
                assert images.nth(k).evaluate("img => img.complete && img.naturalWidth") > 100
                assert images.nth(k).bounding_box()["width"] > 200
            assert page.locator("#limitations li").all_inner_texts() == expected
            assert page.locator("table").count() >= 6
            assert all(url.startswith(("file:", "data:")) for url in requests), requests  # opens offline
            page.screenshot(path=str(demo / "card_screenshot.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()


@pytest.mark.slow
def test_lungcls_card_on_a_folder_that_is_not_a_run_is_one_line(tmp_path):
    (tmp_path / "notes").mkdir()
    result = run_cli("lungcls.card", f"card.run={tmp_path / 'notes'}", f"hydra.run.dir={tmp_path / 'card'}")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "is not a lungcls run folder" in result.stderr, result.stderr
    assert not list((tmp_path / "notes").iterdir())  # nothing written into the folder it was given
