"""``report.methods``: every attribution method on real (tiny) checkpoints, side by side on the same
X-rays: gradcam.csv rows per image x model x method, methods.csv with intervals, the "Which map to
trust" section and its figures, the model-free edge control exposed by the sanity check, methods a
backbone cannot run skipped with one line; and, slow, the demo measurement docs/benchmarks.md reports and
the same report on real X-rays without masks."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from lungcls.report.run import make_report

from conftest import SHARED_REAL, TINY, compose_cfg, requires_shared

ALL = {"gradcam", "guided_gradcam", "integrated_gradients", "smoothgrad", "occlusion", "saliency", "layercam", "edge"}
CHEAP = ["report.faithfulness_steps=4", "report.ig_steps=4", "report.smoothgrad_samples=2",
         "report.occlusion_window=16", "report.occlusion_stride=16", "report.misses=false"]
DESIGN_COLUMNS = ["images", "hit_rate", "iou", "lesion_share", "lesion_uniform", "lung_share", "border_share",
                  "deletion_auc", "insertion_auc", "deletion_auc_random", "sanity_spearman", "sanity_flagged"]


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, data_dir) -> list[Path]:
    """A tiny ResNet18 (64 px) and the logistic baseline (48 px)."""
    from lungcls.train import train

    root = tmp_path_factory.mktemp("method_runs")
    ckpts = []
    for name, extra in (("resnet18", ["backbone=resnet18"]), ("logistic", ["backbone=logistic", "dataset.image_size=48"])):
        train(compose_cfg("train", TINY + ["trainer.limit_train_batches=2", "test=false", *extra], root / name, data_dir))
        ckpts.append(root / name / "checkpoints" / "best.ckpt")
    return ckpts


def methods_cfg(out: Path, data_dir: Path, ckpts, *overrides: str):
    listed = ",".join(str(p) for p in ckpts)
    return compose_cfg("report", [f"ckpt=[{listed}]", "report.exclude_training_images=false", *overrides], out, data_dir)


def test_all_methods_side_by_side_with_faithfulness_sanity_and_timing(two_runs, tmp_path, data_dir, capsys):
    out = tmp_path / "all"
    make_report(methods_cfg(out, data_dir, two_runs, "report.split=all", "report.per_class=1", "report.methods=all",
                            "report.target=true", *CHEAP))
    printed = capsys.readouterr().out
    rows = read_rows(out / "gradcam.csv")
    models = list(dict.fromkeys(r["model"] for r in rows))
    images = list(dict.fromkeys(r["path"] for r in rows))
    assert len(models) == 2 and len(images) == 4
    by_model = {m: {r["method"] for r in rows if r["model"] == m} for m in models}
    assert by_model[models[0]] == ALL
    # the logistic baseline has no conv layer: the CAM variants that need one are skipped, with one line each
    assert by_model[models[1]] == ALL - {"guided_gradcam", "layercam"}
    for method in ("guided_gradcam", "layercam"):
        assert re.search(rf"^{method} skipped for logistic/full .*: logistic has no convolutional layer", printed, re.M)
    assert len(rows) == len(images) * (len(ALL) + len(ALL) - 2)

    for r in rows:
        assert 0.0 <= float(r["deletion_auc"]) <= 1.0 and 0.0 <= float(r["insertion_auc"]) <= 1.0
        assert float(r["ms_per_image"]) > 0.0 and r["target"] == r["label"]
        if r["label"] == "Normal":
            assert r["hit"] == r["iou"] == r["lesion_share"] == ""
        elif r["lesion_share"] == "":  # an all-zero map (an untrained tiny model's): nothing to point with
            assert r["hit"] == r["iou"] == "" and float(r["lesion_uniform"]) > 0.0
        else:
            assert float(r["hit"]) in (0.0, 1.0) and 0.0 <= float(r["iou"]) <= 1.0
    for m in models:  # the random-order yardstick is one per image and model, the same for every method
        for path in images:
            same = {r["deletion_auc_random"] for r in rows if r["model"] == m and r["path"] == path}
            assert len(same) == 1
    # the model-free control is exposed: its map does not change when the weights are destroyed
    for r in rows:
        if r["method"] == "edge":
            assert float(r["sanity_spearman"]) == pytest.approx(1.0) and r["sanity_flag"] == "True"
            assert r["layer"] == "image"

    table = read_rows(out / "methods.csv")
    assert [(t["model"], t["method"]) for t in table] == list(dict.fromkeys((r["model"], r["method"]) for r in rows))
    for t in table:
        assert set(DESIGN_COLUMNS) <= set(t) and int(t["images"]) == 4 and float(t["ms_per_image"]) > 0
        for key in ("deletion_auc", "insertion_auc", "sanity_spearman", "border_share"):
            assert float(t[f"{key}_lo"]) <= float(t[key]) <= float(t[f"{key}_hi"])
        if t["method"] == "edge":
            assert float(t["sanity_flagged"]) == 1.0
    for method in ALL:
        assert re.search(rf"{method}: \d+\.\d ms per image", printed)

    html = (out / "report.html").read_text()
    assert "Which map to trust" in html and "Recommended for" in html and "methods.csv" in html
    assert "edge (" in html and "FAILS the sanity check" in html
    for name in ("methods_1", "methods_2", "methods_deletion"):
        with Image.open(out / f"{name}.png") as im:
            assert im.size[0] == 2100 and round(im.info["dpi"][0]) == 300  # page-wide, 300 dpi
        assert (out / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"


def test_default_report_runs_gradcam_only(two_runs, tmp_path, data_dir):
    out = tmp_path / "default"
    make_report(methods_cfg(out, data_dir, two_runs[:1], "report.split=all", "report.per_class=1", "report.misses=false"))
    rows = read_rows(out / "gradcam.csv")
    assert {r["method"] for r in rows} == {"gradcam"} and len(rows) == 4
    assert all(r["deletion_auc"] == "" for r in rows)  # one method: no curves unless asked (as fast as before)
    assert [t["method"] for t in read_rows(out / "methods.csv")] == ["gradcam"]
    assert (out / "gradcam_per_class.png").is_file() and not (out / "methods.png").exists()
    assert "Which map to trust" not in (out / "report.html").read_text()  # the page of one method is as before


def _table(out: Path) -> dict[str, dict[str, str]]:
    return {t["method"]: t for t in read_rows(out / "methods.csv")}


@pytest.mark.slow
def test_demo_evidence_the_readme_reports(tmp_path, data_dir):
    """The default model, report.target=true, the demo's held-out images (10 per class): the edge
    control is flagged and deletes no faster than random, Grad-CAM puts at least twice a uniform
    map's share on the lesions, and a method finer than 8x8 that passes the sanity check does as well
    on the lesions. (Grad-CAM's strict hit rate was 0.20 in the benchmarks page's run: its 8x8 maximum
    sits beside the lesion; that is reported, not asserted. Whether Grad-CAM deletes faster than
    random is reported, not asserted either: on the phantom's generator 2 it did, on generator 3 one
    run's deletion-gain interval reached below 0, [-0.11, ...].)"""
    from lungcls.train import train

    run = tmp_path / "default"
    train(compose_cfg("train", ["trainer.accelerator=cpu", "logger=csv"], run, data_dir))
    out = tmp_path / "report"
    make_report(methods_cfg(out, data_dir, [run / "checkpoints" / "best.ckpt"], "report.methods=all",
                            "report.target=true", "report.per_class=10", "report.misses=false"))
    t = _table(out)
    edge, gradcam = t["edge"], t["gradcam"]
    assert float(edge["sanity_spearman"]) >= 0.5, edge
    assert float(edge["deletion_auc"]) >= float(edge["deletion_auc_random"]) - 0.02, edge
    assert float(gradcam["lesion_ratio"]) >= 2.0, gradcam
    finer = [m for m in ("layercam", "occlusion", "integrated_gradients", "smoothgrad", "saliency", "guided_gradcam")
             if float(t[m]["lesion_ratio"]) >= 2.0 and float(t[m]["sanity_spearman"]) < 0.5]
    assert finer, {m: t[m]["lesion_ratio"] for m in t}


@requires_shared
@pytest.mark.slow
def test_all_methods_on_real_xrays_without_masks(two_runs, tmp_path, data_dir):
    out = tmp_path / "real"
    make_report(methods_cfg(out, data_dir, two_runs, f"report.root='{SHARED_REAL}'", "report.per_class=2",
                            "report.methods=all", *CHEAP))
    rows = read_rows(out / "gradcam.csv")
    assert {r["method"] for r in rows} == ALL
    for r in rows:  # no masks: localisation empty, the rest filled
        assert r["hit"] == r["iou"] == r["lesion_share"] == r["lung_share"] == ""
        assert r["deletion_auc"] and r["insertion_auc"] and r["border_share"] and r["ms_per_image"]
        assert r["sanity_spearman"] != "" or r["method"] == "edge"
    table = read_rows(out / "methods.csv")
    assert all(t["hit_rate"] == "" and t["deletion_auc"] != "" for t in table)
    html = (out / "report.html").read_text()
    assert "Recommended for" in html
    # the page: blank columns left out (named in the caption), the legend about these films, not the demo's
    assert "<th>hit_rate</th>" not in html and "<th>sanity_flagged</th>" in html and "Left out, no value" in html
    assert "the demo data set" not in html and "lesion_share, hit_rate, iou: not measured" in html


# --------------------------------------------------------------------------- real films: no masks


def _real_film_rows(images: int = 6) -> list[dict]:
    """Per-image rows as method_rows writes them for films without lung or lesion masks: every
    localisation number blank, faithfulness, sanity and timing filled; one map constant (no ranking)."""
    rows = []
    for model in ("resnet18/full (2026-12-07_21-50-34_resnet18-full)", "logistic/full (2026-12-07_21-51-02_logistic-full)"):
        for method, grid in (("gradcam", "layer4 (7x7)"), ("occlusion", "window 16 px, stride 8 (27x27)"),
                             ("edge", "pixels (224x224), model-free")):
            for i in range(images):
                rho = None if i == 0 else 0.1 * i
                rows.append({"model": model, "method": method, "grid": grid, "ms_per_image": 123.456,
                             "sanity_spearman": rho, "sanity_flag": None if rho is None else rho >= 0.5,
                             "deletion_auc": 0.29, "insertion_auc": 0.31, "deletion_auc_random": 0.3,
                             "insertion_auc_random": 0.3, "lung_share": None, "lung_uniform": None,
                             "lesion_share": None, "lesion_uniform": None, "border_share": 0.2, "border_uniform": 0.19,
                             "hit": None, "iou": None})
    return rows


def test_methods_table_on_films_without_masks_fits_a_1280_px_page(tmp_path):
    """Blank localisation columns are left out of the page, so the sanity and timing columns stay in
    view on a 1280-px screen (measured in Chromium); methods.csv keeps every column."""
    from lungcls.explain.checks.trust import method_table
    from lungcls.report.html import GroupSection, write_report_html
    from lungcls.report.tables import methods_section

    playwright = pytest.importorskip("playwright.sync_api")
    chromium = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser", shutil.which("chromium") or "")
                     if p and Path(p).is_file()), None)
    if chromium is None:
        pytest.skip("no Chromium installed (Debian: apt-get install chromium)")
    section = methods_section(method_table(_real_film_rows()))
    assert "hit_rate" in section.caption and "hit_rate:" not in section.caption  # named as left out, not explained
    page_file = write_report_html(tmp_path, "report", [], [], ["summary"], groups=[GroupSection("Which map to trust", ["x"], [section])])
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(page_file.as_uri())
            headers = page.locator("#methods th").all_inner_texts()
            assert "hit_rate" not in headers and "lung_share" not in headers
            for name in ("sanity_spearman", "sanity_flagged", "ms_per_image"):
                box = page.locator("#methods th", has_text=name).bounding_box()
                assert box["x"] + box["width"] <= 1280, f"{name} is off the page"
            scroll, width = page.locator("#methods .tablewrap").evaluate("w => [w.scrollWidth, w.clientWidth]")
            assert scroll <= width
        finally:
            browser.close()


def test_flagged_maps_are_counted_over_the_maps_that_have_a_ranking_everywhere():
    """A constant map has no rank correlation: neither flagged nor passed. The console sentence and
    methods.csv's share use the same maps, so 2 of 5 in one is 0.4 in the other (not 2 of 6)."""
    from types import SimpleNamespace

    from lungcls.explain.checks.sanity import SanityResult
    from lungcls.explain.checks.trust import method_table
    from lungcls.report.outputs import sanity_line

    rows = [r for r in _real_film_rows() if r["model"].startswith("resnet18") and r["method"] == "gradcam"]
    for r, rho in zip(rows, (None, 0.1, 0.2, 0.6, 0.7, 0.3)):
        r["sanity_spearman"], r["sanity_flag"] = rho, None if rho is None else rho >= 0.5
    share = method_table(rows)[0]["sanity_flagged"]
    result = SanityResult([r["sanity_spearman"] for r in rows], [r["sanity_flag"] for r in rows], [("layer4", 0.38)], 0.5)
    line = sanity_line(SimpleNamespace(sanity=result, model=SimpleNamespace(name="resnet18")))
    assert share == pytest.approx(2 / 5)
    assert "2 of 5 maps flagged" in line and "1 constant map(s) have no rank correlation and are left out" in line


def test_how_to_read_says_what_was_measured_on_films_without_masks():
    """The legend describes the masks these images have, not the demo's lesion masks."""
    from types import SimpleNamespace

    from lungcls.report.tables import legend_lines

    bare = [SimpleNamespace(mask=None, lesion_mask=None) for _ in range(4)]
    text = " ".join(legend_lines(0.1, 0.5, bare))
    assert "demo" not in text and "lesion_share, hit_rate, iou: not measured: none of the 4 images has a lesion mask" in text
    assert "lung_share: not measured" in text
    demo = [SimpleNamespace(mask="m.png", lesion_mask="l.png" if i else None) for i in range(4)]
    text = " ".join(legend_lines(0.1, 0.5, demo))
    assert "3 of 4 images have one" in text and "not measured" not in text
