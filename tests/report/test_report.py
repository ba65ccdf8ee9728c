"""`lungcls-report`: Grad-CAM reports of real checkpoints on the demo phantom (and on real X-rays
when the shared sample is present): files, one CSV row per image x model, determinism, the
localisation check against the lesion masks, W&B offline logging, and one-line user errors."""

from __future__ import annotations

import base64
import csv
import re
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import open_dict
from PIL import Image
from torch import nn

from lungcls.errors import LungclsError
from lungcls.data.pixels.preprocess import preprocess_from
from lungcls.explain.maps.explainer import ReportModel
from lungcls.report.outputs import SHARE_COLUMNS
from lungcls.report.selection import ReportImage, _missed
from lungcls.report.run import make_report
from lungcls.train import train

from conftest import SHARED_REAL, TINY, compose_cfg, requires_shared, run_cli

DEMO_CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
FAST = ["trainer.limit_train_batches=2", "test=false"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir) -> dict[str, Path]:
    """Three tiny demo checkpoints: two CNNs at 64 px and the logistic baseline at 48 px."""
    root = tmp_path_factory.mktemp("runs")
    setups = {
        "resnet18": ["backbone=resnet18", "finetune=full"],
        "alexnet": ["backbone=alexnet", "finetune=full"],
        "logistic": ["backbone=logistic", "finetune=full", "dataset.image_size=48"],
    }
    ckpts = {}
    for name, overrides in setups.items():
        out = root / f"12-00-00_{name}"
        train(compose_cfg("train", TINY + FAST + overrides, out, data_dir))
        ckpts[name] = out / "checkpoints" / "best.ckpt"
        assert ckpts[name].is_file()
    return ckpts


def report_cfg(out: Path, data_dir: Path, ckpts, *overrides: str):
    """The real report config, as `lungcls-report ckpt=... <overrides>` composes it, into `out`."""
    listed = ",".join(str(p) for p in ckpts)
    # report.split=all draws from the whole tiny phantom, training images included (their
    # exclusion is tested in test_audit); later overrides win
    return compose_cfg("report", [f"ckpt=[{listed}]", "report.exclude_training_images=false", *overrides], out, data_dir)


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def numbers(rows: list[dict[str, str]]) -> np.ndarray:
    cols = ["probability", "target_probability", *SHARE_COLUMNS]
    return np.array([[float(r[c]) if r[c] else np.nan for c in cols] for r in rows])


def demo_images(ckpt: Path, label: str, n: int) -> list[str]:
    rows = read_rows(ckpt.parent.parent / "splits.csv")
    return [r["path"] for r in rows if r["label"] == label][:n]


# --------------------------------------------------------------------------- the report itself


@pytest.mark.slow  # 17 s with its three runs; the methods report test keeps a whole report in the README's command
def test_report_of_three_models_writes_figures_csv_and_self_contained_html(runs, tmp_path, data_dir, capsys):
    ckpts = list(runs.values())
    extra = demo_images(runs["resnet18"], "COVID", 1) + demo_images(runs["resnet18"], "Normal", 1)
    out = tmp_path / "report"
    cfg = report_cfg(
        out, data_dir, ckpts,
        "report.split=all", "report.per_class=2", "report.misses=true", f"report.paths=[{','.join(extra)}]",
    )
    html_path = make_report(cfg)
    printed = capsys.readouterr().out

    assert html_path == out / "report.html"
    rows = read_rows(out / "gradcam.csv")
    models = list(dict.fromkeys(r["model"] for r in rows))
    assert len(models) == 3 and [m.split(" ")[0] for m in models] == ["resnet18/full", "alexnet/full", "logistic/full"]
    assert all("12-00-00_" in m for m in models)  # the run folder makes the name unique per checkpoint
    images = list(dict.fromkeys(r["path"] for r in rows))
    assert len(rows) == len(images) * 3
    assert len({(r["path"], r["model"]) for r in rows}) == len(rows)  # one row per image x model
    selections = {s for r in rows for s in r["selection"].split(";")}
    assert {"per_class", "paths"} <= selections
    per_class = {r["path"] for r in rows if "per_class" in r["selection"]}
    assert len(per_class) == 2 * len(DEMO_CLASSES)
    assert {r["path"] for r in rows if "paths" in r["selection"]} == set(extra)

    for r in rows:
        assert r["label"] in DEMO_CLASSES and r["prediction"] in DEMO_CLASSES
        assert r["target"] == r["prediction"]  # report.target=predicted
        assert 0.0 <= float(r["probability"]) <= 1.0
        for key in ("lung", "border"):  # demo images have lung masks; the border always exists
            assert 0.0 <= float(r[f"{key}_share"]) <= 1.0 and 0.0 < float(r[f"{key}_uniform"]) < 1.0
        if r["label"] == "Normal":  # no finding: the lesion share is undefined, its area 0
            assert r["lesion_share"] == "" and float(r["lesion_uniform"]) == 0.0
        else:
            assert 0.0 <= float(r["lesion_share"]) <= 1.0 and float(r["lesion_uniform"]) > 0.0
    for path in images:  # every model is scored against the same masks, whatever its input size
        baselines = {tuple(r[c] for c in SHARE_COLUMNS[1::2]) for r in rows if r["path"] == path}
        assert len(baselines) == 1
    for r in rows:  # a miss is a disease image that some model predicted as Normal
        if "misses" in r["selection"]:
            assert r["label"] != "Normal"
            assert any(q["prediction"] == "Normal" for q in rows if q["path"] == r["path"])

    for r in rows:  # the sanity check ran on every map; a trained CNN's or baseline's map is rarely flagged
        assert r["layer"] and r["sanity_flag"] in ("True", "False", "")
        assert r["sanity_spearman"] == "" or -1.0 <= float(r["sanity_spearman"]) <= 1.0
    assert {r["layer"] for r in rows if r["model"].startswith("logistic")} == {"weights"}

    figures = sorted(out.glob("gradcam_*.png"))
    # 8 per-class images with 3 models: one image (4 panels) per row, at most 6 rows: two parts
    assert {f.name for f in figures} >= {"gradcam_per_class_1.png", "gradcam_per_class_2.png", "gradcam_paths.png"}
    assert not (out / "gradcam_per_class.png").exists()
    assert any(out.glob("gradcam_misses*.png")) == ("misses" in selections)
    sizes = {}
    for fig in figures:
        with Image.open(fig) as im:
            im.verify()
        with Image.open(fig) as im:
            sizes[fig.name] = im.size
            assert round(im.info.get("dpi", (0, 0))[0]) == 300
        assert fig.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
    assert {w for w, _ in sizes.values()} == {2100}  # page-wide (7 in) at 300 dpi
    six, two = sizes["gradcam_per_class_1.png"][1], sizes["gradcam_per_class_2.png"][1]
    assert 2.2 < six / two < 3.0  # 6 rows vs 2 rows (plus the colour bar strip)
    summary = read_rows(out / "gradcam_summary.csv")
    assert [r["model"] for r in summary] == models
    assert all(int(r["images"]) == len(images) for r in summary)

    html = html_path.read_text()
    embedded = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(embedded) == len(figures)
    assert base64.b64decode(embedded[0])[:8] == b"\x89PNG\r\n\x1a\n"
    outside = re.sub(r'src="data:image/png;base64,[A-Za-z0-9+/=]+"', "", html)
    assert not re.search(r"(https?:|ftp:|file:|src=|href=|url\(|<script|<link|<iframe)", outside)
    for m in models:
        assert f"Localisation, {m}: lesion share" in html
        assert f"{m}: lesion share" in printed
        assert f"Sanity check, {m}:" in html and f"Sanity check, {m}:" in printed
    assert "report.html" in printed
    for heading in ("How to read the numbers", "Per model (gradcam_summary.csv)", "Sanity check: cascading model randomisation"):
        assert f"<h2>{heading}</h2>" in html
    assert "border_share" in html and "Adebayo" in html


@pytest.mark.slow
def test_report_is_deterministic_and_batch_independent(runs, tmp_path, data_dir):
    ckpts = [runs["resnet18"], runs["logistic"]]
    common = ["report.split=all", "report.per_class=2", "report.misses=false"]
    first = read_rows(report_cfg_run(tmp_path / "a", data_dir, ckpts, *common, "report.batch_size=16"))
    again = read_rows(report_cfg_run(tmp_path / "b", data_dir, ckpts, *common, "report.batch_size=16"))
    # one image per batch: predictions and shares (the sanity check's own determinism is compared above)
    single = read_rows(report_cfg_run(tmp_path / "c", data_dir, ckpts, *common, "report.batch_size=1", "report.sanity=false"))
    def results(rows):  # every column but the measured time per image
        return [{k: v for k, v in r.items() if k != "ms_per_image"} for r in rows]

    differing = sorted({k for r1, r2 in zip(results(first), results(again)) for k in r1 if r1[k] != r2[k]})
    assert results(first) == results(again), differing  # same images, same numbers, to the last printed digit
    assert [r["path"] for r in single] == [r["path"] for r in first]
    assert [r["prediction"] for r in single] == [r["prediction"] for r in first]
    np.testing.assert_allclose(numbers(single), numbers(first), rtol=1e-4, atol=1e-5)


def report_cfg_run(out: Path, data_dir: Path, ckpts, *overrides: str) -> Path:
    make_report(report_cfg(out, data_dir, ckpts, *overrides))
    return out / "gradcam.csv"


@pytest.mark.slow  # the fast suite's budget: the in-process report tests cover the same code
def test_target_true_and_a_named_class(runs, tmp_path, data_dir):
    ckpts = [runs["resnet18"], runs["logistic"]]
    base = ["report.split=all", "report.per_class=1", "report.misses=false"]
    rows = read_rows(report_cfg_run(tmp_path / "true", data_dir, ckpts, *base, "report.target=true"))
    assert rows and all(r["target"] == r["label"] for r in rows)
    rows = read_rows(report_cfg_run(tmp_path / "covid", data_dir, ckpts, *base, "report.target=COVID"))
    assert rows and all(r["target"] == "COVID" for r in rows)


def test_misses_are_disease_images_predicted_normal_most_confident_first(tmp_path):
    """`misses` with a stand-in model that calls every image Normal, more surely the brighter."""

    class BrightIsNormal(nn.Module):
        class_names = DEMO_CLASSES
        normal_class = "Normal"
        info = SimpleNamespace(image_size=8, data={}, preprocess=preprocess_from({}))

        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.tensor(10.0))

        def forward(self, x):
            logits = torch.zeros(len(x), 4)
            logits[:, 2] = self.scale * x.flatten(1).mean(1)
            return logits

    pool = []
    for i, (label, level) in enumerate([("COVID", 200), ("Normal", 250), ("Viral Pneumonia", 120), ("COVID", 90)]):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((32, 32), level, np.uint8)).save(path)
        pool.append(ReportImage(str(path), label))
    model = ReportModel("stand-in", tmp_path / "x.ckpt", tmp_path, BrightIsNormal())
    chosen = _missed(pool, [model], batch_size=2, limit=2)
    assert [im.path for im in chosen] == [pool[0].path, pool[2].path]  # no Normal image, brightest first


# --------------------------------------------------------------------------- localisation


def _lesion_numbers(rows: list[dict[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    kept = [r for r in rows if r["lesion_share"]]
    return np.array([float(r["lesion_share"]) for r in kept]), np.array([float(r["lesion_uniform"]) for r in kept])


@pytest.mark.slow  # the fast suite's budget: the in-process report tests cover the same code
def test_report_states_the_numbers_of_its_csv(runs, tmp_path, data_dir, capsys):
    """The summary (printed and in the HTML) and gradcam_summary.csv say what gradcam.csv holds."""
    out = tmp_path / "report"
    overrides = ["report.split=all", "report.per_class=3", "report.misses=false", "report.target=true"]
    make_report(report_cfg(out, data_dir, [runs["resnet18"]], *overrides))
    printed = capsys.readouterr().out
    rows = read_rows(out / "gradcam.csv")
    shares, uniform = _lesion_numbers(rows)
    assert sum(r["label"] != "Normal" for r in rows) == 9 and all(r["target"] == r["label"] for r in rows)
    assert len(shares) >= 5  # an all-zero map (possible for a barely trained model) has no share
    summary = read_rows(out / "gradcam_summary.csv")[0]
    assert float(summary["lesion_share"]) == pytest.approx(shares.mean(), abs=1e-5)
    assert float(summary["lesion_ratio"]) == pytest.approx(shares.mean() / uniform.mean(), rel=1e-4)
    assert float(summary["lesion_better_on"]) == pytest.approx((shares > uniform).mean())
    assert summary["layer"] == "layer2 (8x8)"  # auto at 64 px: layer4 is 2x2, layer3 4x4
    for text in (printed, (out / "report.html").read_text()):
        said = re.search(r"lesion share ([\d.]+) vs uniform ([\d.]+) \((beats|does NOT beat) uniform, ([\d.]+)x", text)
        assert said, text[-2000:]
        assert abs(float(said[1]) - shares.mean()) < 0.006 and abs(float(said[2]) - uniform.mean()) < 0.006


@pytest.fixture(scope="module")
def default_runs(tmp_path_factory, data_dir) -> dict[str, tuple[Path, float]]:
    """The default job (`lungcls-train`: resnet18 on the demo, nothing tuned), and the same job on
    the demo with the planted shortcut (dataset.demo.shortcut=0.9): checkpoint and training time."""
    root = tmp_path_factory.mktemp("default_runs")
    out = {}
    for name, overrides in {"clean": [], "tagged": ["dataset.demo.shortcut=0.9"]}.items():
        start = time.perf_counter()
        train(compose_cfg("train", ["trainer.accelerator=cpu", "logger=csv", *overrides], root / name, data_dir))
        out[name] = (root / name / "checkpoints" / "best.ckpt", time.perf_counter() - start)
    return out


@pytest.mark.slow
def test_default_model_puts_its_cam_on_the_lesions(default_runs, tmp_path, data_dir):
    """The default job's report with report.target=true: on the held-out disease images the mean
    lesion share is at least twice a uniform map's, better than uniform on at least 80% of them,
    and the maps pass the sanity check."""
    ckpt, seconds = default_runs["clean"]
    out = tmp_path / "report"
    overrides = ["report.split=test", "report.per_class=100", "report.misses=false", "report.target=true"]
    make_report(report_cfg(out, data_dir, [ckpt], *overrides))
    rows = read_rows(out / "gradcam.csv")
    shares, uniform = _lesion_numbers(rows)
    n, wins = len(shares), int((shares > uniform).sum())
    flagged = sum(r["sanity_flag"] == "True" for r in rows)
    measured = (
        f"lesion share {shares.mean():.3f} vs uniform {uniform.mean():.3f} ({shares.mean() / uniform.mean():.2f}x), "
        f"better on {wins} of {n} images; {flagged} maps flagged; training took {seconds:.0f} s"
    )
    assert n >= 40, measured
    assert shares.mean() >= 2.0 * uniform.mean() and wins >= 0.8 * n, measured
    assert flagged <= 0.1 * len(rows), measured


@pytest.mark.slow
def test_a_planted_shortcut_fails_elsewhere_and_shows_in_the_report(default_runs, tmp_path, data_dir):
    """The worked example of docs/examples/planted-shortcut.md. Trained where 90% of the films carry a class tag, a model loses
    clearly on other patients' untagged films, and its maps leave the lungs for the border; the
    model trained without tags keeps its accuracy and looks at the lungs and lesions."""
    from lungcls.evaluate import evaluate

    accuracy = {}
    for name, (ckpt, _) in default_runs.items():
        overrides = [f"ckpt={ckpt}", "dataset=demo", "dataset.demo.seed=1", "dataset.split=all"]
        accuracy[name] = evaluate(compose_cfg("evaluate", overrides, tmp_path / f"eval_{name}", data_dir))["accuracy"]
    out = tmp_path / "report"
    ckpts = [default_runs["tagged"][0], default_runs["clean"][0]]  # the tagged run's test split
    make_report(report_cfg(out, data_dir, ckpts, "report.per_class=100", "report.misses=false"))
    tagged, clean = read_rows(out / "gradcam_summary.csv")
    ratio = {key: (float(tagged[key]), float(clean[key])) for key in ("border_ratio", "lesion_ratio")}
    lung = {name: float(r["lung_share"]) / float(r["lung_uniform"]) for name, r in (("tagged", tagged), ("clean", clean))}
    measured = f"accuracy on untagged films {accuracy}; (tagged, clean) ratios to uniform {ratio}, lung {lung}"
    assert accuracy["clean"] >= 0.85 and accuracy["tagged"] <= accuracy["clean"] - 0.3, measured
    assert ratio["border_ratio"][0] >= 1.5 * ratio["border_ratio"][1], measured  # measured: 2.4 times
    assert ratio["lesion_ratio"][0] < 1.0 <= 2.0 <= ratio["lesion_ratio"][1], measured
    assert lung["tagged"] < 1.0 < 1.3 <= lung["clean"], measured  # measured: 0.4 and 1.8
    assert "the maps avoid the lungs" in (out / "report.html").read_text()


# --------------------------------------------------------------------------- real X-rays


@requires_shared
@pytest.mark.slow
def test_report_on_real_xrays_without_masks(runs, tmp_path, data_dir):
    ckpts = [runs["resnet18"], runs["logistic"]]
    out = tmp_path / "real"
    cfg = report_cfg(out, data_dir, ckpts, f"report.root='{SHARED_REAL}'", "report.per_class=2", "report.misses=false")
    make_report(cfg)
    rows = read_rows(out / "gradcam.csv")
    labels = {r["label"] for r in rows}
    assert labels == {"COVID", "Normal", "Viral Pneumonia"}  # no Lung_Opacity folder: fine
    assert len(rows) == 3 * 2 * 2
    for r in rows:
        assert Path(r["path"]).is_relative_to(SHARED_REAL.resolve())  # paths are stored resolved
        assert r["lung_share"] == r["lesion_share"] == r["lung_uniform"] == ""  # no masks
        assert 0.0 <= float(r["border_share"]) <= 1.0

    picked = sorted((SHARED_REAL / "Viral Pneumonia" / "images").glob("*.png"))[:2]
    out = tmp_path / "paths"
    make_report(report_cfg(out, data_dir, ckpts, f"report.paths=[{','.join(f'{p}' for p in picked)}]"))
    rows = read_rows(out / "gradcam.csv")
    assert len(rows) == 2 * 2 and {r["label"] for r in rows} == {"Viral Pneumonia"}  # from the folder
    assert {r["selection"] for r in rows} == {"paths"}  # explicit paths alone: no per-class figure


# --------------------------------------------------------------------------- entry point, W&B, errors


@pytest.mark.slow  # the fast suite's budget: the in-process report tests cover the same code
def test_cli_writes_the_run_folder_and_logs_to_wandb_offline(runs, tmp_path):
    run_dir = runs["resnet18"].parent.parent
    out = tmp_path / "cli"
    result = run_cli(
        "lungcls.report", f"ckpt=[{runs['resnet18']},{runs['alexnet']}]", "report.split=all", "report.exclude_training_images=false",
        "report.per_class=1", "report.misses=false", f"report.log_to={run_dir}", f"hydra.run.dir={out}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "report.html").is_file() and (out / "gradcam.csv").is_file()
    assert "lesion share" in result.stdout and "wandb sync" in result.stdout
    first = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(first) == 1 and any(first[0].glob("*.wandb"))  # a new offline run in the run folder

    # a second report resumes that run (same id) instead of starting another
    from lungcls.report.outputs import CSV_COLUMNS
    from lungcls.training.loggers import log_report_to_wandb

    log_report_to_wandb(run_dir, [], read_rows(out / "gradcam.csv"), CSV_COLUMNS)
    runs_now = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs_now) == 2
    assert {p.name.rsplit("-", 1)[-1] for p in runs_now} == {first[0].name.rsplit("-", 1)[-1]}


@pytest.mark.slow  # the fast suite's budget: the in-process report tests cover the same code
def test_cli_error_is_one_line(tmp_path):
    result = run_cli("lungcls.report", f"ckpt={tmp_path}/nope.ckpt", f"hydra.run.dir={tmp_path / 'out'}")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "does not exist" in lines[0] and "checkpoints/best.ckpt" in lines[0]


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["report.paths=[/no/such/image.png]"], "image /no/such/image.png (report.paths) does not exist"),
        (["report.target=Pneumothorax"], "report.target='Pneumothorax' is not a class"),
        (["report.per_class=0", "report.misses=false"], "no images selected"),
        (["report.split=holdout"], "report.split=holdout must be one of"),
        (["report.root=/no/such/folder"], "report.root=/no/such/folder does not exist"),
        (["report.log_to=/no/such/run"], "report.log_to=/no/such/run is not a folder"),
        (["report.methods=[gradcam,gradcma]"], "unknown attribution method 'gradcma'; choose one of edge, gradcam"),
        (["report.faithfulness_steps=1"], "report.faithfulness_steps=1 must be at least 2"),
        (["report.occlusion_window=999"], "report.occlusion_window=999 is larger than the 48 px input of logistic/full"),
        (["report.ig_steps=abc"], "report.ig_steps=abc must be a whole number"),
    ],
)
def test_bad_input_is_a_clear_error(runs, tmp_path, data_dir, overrides, needle):
    cfg = report_cfg(tmp_path / "out", data_dir, [runs["logistic"]], *overrides)
    with pytest.raises(LungclsError, match=re.escape(needle)) as info:
        make_report(cfg)
    assert "\n" not in str(info.value)


def test_missing_checkpoint_is_named_before_anything_loads(runs, tmp_path, data_dir):
    cfg = report_cfg(tmp_path / "out", data_dir, [runs["logistic"], tmp_path / "gone.ckpt"])
    with pytest.raises(LungclsError, match="gone.ckpt does not exist; give the path of a run's checkpoints/best.ckpt"):
        make_report(cfg)
    with open_dict(cfg):
        cfg.ckpt = []
    with pytest.raises(LungclsError, match="no checkpoint given"):
        make_report(cfg)


def test_target_true_needs_labels(runs, tmp_path, data_dir):
    loose = tmp_path / "loose.png"  # not in any splits.csv, not in a <Class>/ folder
    Image.fromarray(np.full((32, 32), 128, np.uint8)).save(loose)
    cfg = report_cfg(tmp_path / "out", data_dir, [runs["logistic"]], f"report.paths={loose}", "report.target=true")
    with pytest.raises(LungclsError, match="report.target=true needs the true class of every image"):
        make_report(cfg)
    with open_dict(cfg):
        cfg.report.target = "predicted"  # without the true class it is a plain, unlabelled figure
    make_report(cfg)
    rows = read_rows(tmp_path / "out" / "gradcam.csv")
    assert len(rows) == 1 and rows[0]["label"] == "" and rows[0]["selection"] == "paths"


# --------------------------------------------------------------------------- report.layer and the sanity check


@pytest.mark.slow
def test_report_layer_per_checkpoint_and_its_errors(runs, tmp_path, data_dir):
    ckpts = [runs["resnet18"], runs["alexnet"]]
    base = ["report.split=all", "report.per_class=1", "report.misses=false"]
    rows = read_rows(report_cfg_run(tmp_path / "ok", data_dir, ckpts, *base, "report.layer=[layer3,features.9]"))
    assert {r["model"].split(" ")[0]: r["layer"] for r in rows} == {"resnet18/full": "layer3", "alexnet/full": "features.9"}
    summary = read_rows(tmp_path / "ok" / "gradcam_summary.csv")
    assert [r["layer"] for r in summary] == ["layer3 (4x4)", "features.9 (3x3)"]  # grids at 64 px

    cases = [
        ([runs["resnet18"]], "report.layer=layer9", r"report.layer=layer9 is not a layer resnet18 can explain .*; "
                                                  r"use auto or one of: layer1.0, layer1.1, layer1, layer2.0, .*, layer4$"),
        (ckpts, "report.layer=[layer3]", "report.layer lists 1 layers for 2 checkpoints"),
        ([runs["logistic"]], "report.layer=linear", "has no layers and is explained by its weight map"),
        ([runs["resnet18"]], "report.min_cells=0", "report.min_cells=0 must be at least 1"),
        ([runs["resnet18"]], "report.sanity_threshold=2", r"report.sanity_threshold=2.0 must be in \[-1.0, 1.0\]"),
    ]
    for listed, override, needle in cases:
        with pytest.raises(LungclsError, match=needle) as info:
            make_report(report_cfg(tmp_path / "bad", data_dir, listed, *base, override))
        assert "\n" not in str(info.value)


def test_a_map_that_does_not_change_is_flagged_in_csv_html_and_figures(runs, tmp_path, data_dir, monkeypatch):
    """With re-initialisation disabled the 'randomised' maps equal the trained ones: every map must
    be flagged, everywhere the report shows it."""
    from lungcls.explain.checks import sanity

    monkeypatch.setattr(sanity, "_reinitialise", lambda net, paths, seed: None)
    out = tmp_path / "flagged"
    overrides = ["report.split=all", "report.per_class=1", "report.misses=false"]
    rows = read_rows(report_cfg_run(out, data_dir, [runs["resnet18"]], *overrides))
    defined = [r for r in rows if r["sanity_spearman"]]
    assert defined and all(float(r["sanity_spearman"]) == pytest.approx(1.0) for r in defined)
    assert all(r["sanity_flag"] == "True" for r in defined)
    html = (out / "report.html").read_text()
    assert f"{len(defined)} of {len(defined)} maps flagged" in html  # constant maps (no ranking) are left out
    assert read_rows(out / "gradcam_summary.csv")[0]["sanity_flagged"] == str(len(defined))


def test_report_without_the_sanity_check(runs, tmp_path, data_dir):
    overrides = ["report.split=all", "report.per_class=1", "report.misses=false", "report.sanity=false"]
    rows = read_rows(report_cfg_run(tmp_path / "off", data_dir, [runs["resnet18"]], *overrides))
    assert rows and all(r["sanity_spearman"] == "" and r["sanity_flag"] == "" for r in rows)
    assert "Sanity check" not in (tmp_path / "off" / "report.html").read_text()


CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser", shutil.which("chromium") or "") if p and Path(p).is_file()), None)


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (Debian: apt-get install chromium)")
@pytest.mark.slow
def test_report_page_in_a_real_browser(runs, tmp_path, data_dir):
    """Every figure decodes and shows, every table is there with its legend, nothing fails."""
    playwright = pytest.importorskip("playwright.sync_api")
    out = tmp_path / "page"
    rows = read_rows(report_cfg_run(out, data_dir, [runs["resnet18"], runs["logistic"]],
                                    "report.split=all", "report.per_class=2", "report.misses=false"))
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto((out / "report.html").as_uri(), timeout=30_000)
            figures = page.locator("figure img")
            assert figures.count() == len(list(out.glob("gradcam_*.png")))
            for k in range(figures.count()):
                assert figures.nth(k).evaluate("img => img.complete && img.naturalWidth") == 2100
                assert figures.nth(k).bounding_box()["width"] > 600  # shown, scaled to the page
            assert page.locator("figcaption").count() == figures.count()
            headings = page.locator("h2").all_inner_texts()
            for heading in ("Summary", "How to read the numbers", "Per model (gradcam_summary.csv)",
                            "Sanity check: cascading model randomisation"):
                assert heading in headings
            assert page.locator("#table tbody tr").count() == len(rows)
            assert page.locator("#per-model tbody tr").count() == 2
            assert "lesion_share" in page.locator("#legend").inner_text()
            page.screenshot(path=str(out / "screenshot.png"), full_page=False)
            assert not errors, errors
        finally:
            browser.close()


def test_the_report_draws_from_the_same_dataset_configs_as_training(logistic_run, class_tree, tmp_path):
    """`lungcls-report dataset=folder dataset.root=X` draws the images `report.root=X` does (the
    composition that used to fail with Hydra's "Could not override 'dataset'"), and not both at once."""
    from lungcls.data.settings import dataset_settings
    from lungcls.inference.checkpoints import load_checkpoints
    from lungcls.report.selection import collect_pool
    from lungcls.report.settings import report_settings

    ckpt = logistic_run / "checkpoints" / "best.ckpt"
    cfg = compose_cfg("report", [f"ckpt={ckpt}", "dataset=folder", f"dataset.root={class_tree}",
                                 "dataset.classes=[COVID,Normal,Viral Pneumonia]"], tmp_path, tmp_path)
    models = [ReportModel.of(m) for m in load_checkpoints(cfg.ckpt, torch.device("cpu"))]
    data = dataset_settings({**cfg.dataset, "allow_missing_classes": True})
    by_dataset, _ = collect_pool(report_settings(cfg), models, data)
    by_root, _ = collect_pool(report_settings(compose_cfg("report", [f"ckpt={ckpt}", f"report.root={class_tree}"], tmp_path, tmp_path)), models)
    assert len(by_dataset) == 30 and {(im.path, im.label) for im in by_dataset} == {(im.path, im.label) for im in by_root}
    with pytest.raises(LungclsError, match="report.root and dataset= both name the images"):
        collect_pool(report_settings(compose_cfg("report", [f"ckpt={ckpt}", f"report.root={class_tree}"], tmp_path, tmp_path)), models, data)
