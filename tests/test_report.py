"""`lungcls-report`: Grad-CAM reports of real checkpoints on the demo phantom (and on real X-rays
when the shared sample is present): files, one CSV row per image x model, determinism, the
localisation check against the lesion masks, W&B offline logging, and one-line user errors."""

from __future__ import annotations

import base64
import csv
import math
import re
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
from lungcls.explain.cams import ReportModel
from lungcls.explain.outputs import SHARE_COLUMNS
from lungcls.explain.selection import ReportImage, _missed
from lungcls.report import make_report
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
    return compose_cfg("report", [f"ckpt=[{listed}]", *overrides], out, data_dir)


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

    figures = sorted(out.glob("gradcam_*.png"))
    assert {f.name for f in figures} >= {"gradcam_per_class.png", "gradcam_paths.png"}
    assert (out / "gradcam_misses.png").is_file() == ("misses" in selections)
    for fig in figures:
        with Image.open(fig) as im:
            im.verify()
    with Image.open(out / "gradcam_per_class.png") as im:
        width, height = im.size
    assert height > width  # 8 rows of 4 columns

    html = html_path.read_text()
    embedded = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(embedded) == len(figures)
    assert base64.b64decode(embedded[0])[:8] == b"\x89PNG\r\n\x1a\n"
    outside = re.sub(r'src="data:image/png;base64,[A-Za-z0-9+/=]+"', "", html)
    assert not re.search(r"(https?:|ftp:|file:|src=|href=|url\(|<script|<link|<iframe)", outside)
    for m in models:
        assert f"Localisation, {m}: lesion share" in html
        assert f"{m}: lesion share" in printed
    assert "report.html" in printed


def test_report_is_deterministic_and_batch_independent(runs, tmp_path, data_dir):
    ckpts = [runs["resnet18"], runs["logistic"]]
    common = ["report.split=all", "report.per_class=2", "report.misses=false"]
    first = read_rows(report_cfg_run(tmp_path / "a", data_dir, ckpts, *common, "report.batch_size=16"))
    again = read_rows(report_cfg_run(tmp_path / "b", data_dir, ckpts, *common, "report.batch_size=16"))
    single = read_rows(report_cfg_run(tmp_path / "c", data_dir, ckpts, *common, "report.batch_size=1"))
    assert first == again  # same images, same numbers, to the last printed digit
    assert [r["path"] for r in single] == [r["path"] for r in first]
    assert [r["prediction"] for r in single] == [r["prediction"] for r in first]
    np.testing.assert_allclose(numbers(single), numbers(first), rtol=1e-4, atol=1e-5)


def report_cfg_run(out: Path, data_dir: Path, ckpts, *overrides: str) -> Path:
    make_report(report_cfg(out, data_dir, ckpts, *overrides))
    return out / "gradcam.csv"


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
        hparams = SimpleNamespace(image_size=8)

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
        Image.fromarray(np.full((16, 16), level, np.uint8)).save(path)
        pool.append(ReportImage(str(path), label))
    model = ReportModel("stand-in", tmp_path / "x.ckpt", tmp_path, BrightIsNormal())
    chosen = _missed(pool, [model], batch_size=2, limit=2)
    assert [im.path for im in chosen] == [pool[0].path, pool[2].path]  # no Normal image, brightest first


# --------------------------------------------------------------------------- localisation


# Big enough for the finding to matter: at 64 px ResNet-18's target layer is 2x2, so even a map
# that is the lesion mask itself, pooled to that grid, gets only ~1.3x the uniform share.
LOCALISATION_TRAINING = [
    "backbone=resnet18",
    "finetune=full",
    "dataset.demo.images_per_class=48",
    "dataset.demo.source_size=96",
    "dataset.image_size=96",
    "dataset.batch_size=16",
    "optimizer.lr=1e-3",
    "augment=none",
    "trainer.max_epochs=6",
]


def test_trained_model_puts_its_cam_on_the_lesions(tmp_path, data_dir, capsys):
    """Explaining each disease image's true class, the CAM beats a uniform map on the lesion:
    higher mean share, and on significantly more than half of the held-out images (sign test)."""
    start = time.perf_counter()
    train(compose_cfg("train", TINY + LOCALISATION_TRAINING, tmp_path / "run", data_dir))
    seconds = time.perf_counter() - start
    out = tmp_path / "report"
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    overrides = ["report.split=test", "report.per_class=100", "report.misses=false", "report.target=true"]
    make_report(report_cfg(out, data_dir, [ckpt], *overrides))
    printed = capsys.readouterr().out

    rows = [r for r in read_rows(out / "gradcam.csv") if r["lesion_share"]]
    shares = np.array([float(r["lesion_share"]) for r in rows])
    uniform = np.array([float(r["lesion_uniform"]) for r in rows])
    n, wins = len(rows), int((shares > uniform).sum())
    p_value = sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n  # one-sided sign test
    measured = (
        f"lesion share {shares.mean():.3f} vs uniform {uniform.mean():.3f}, better on {wins} of {n} "
        f"images (p={p_value:.1e}); training took {seconds:.0f} s"
    )
    assert n >= 10, measured
    assert shares.mean() > uniform.mean() and p_value < 0.01, measured
    for text in (printed, (out / "report.html").read_text()):  # stated in both, as measured
        said = re.search(r"lesion share ([\d.]+) vs uniform ([\d.]+) \(beats uniform", text)
        assert said, text[-2000:]
        assert abs(float(said[1]) - shares.mean()) < 0.006 and abs(float(said[2]) - uniform.mean()) < 0.006


# --------------------------------------------------------------------------- real X-rays


@requires_shared
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


def test_cli_writes_the_run_folder_and_logs_to_wandb_offline(runs, tmp_path):
    run_dir = runs["resnet18"].parent.parent
    out = tmp_path / "cli"
    result = run_cli(
        "lungcls.report", f"ckpt=[{runs['resnet18']},{runs['alexnet']}]", "report.split=all",
        "report.per_class=1", "report.misses=false", f"report.log_to={run_dir}", f"hydra.run.dir={out}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "report.html").is_file() and (out / "gradcam.csv").is_file()
    assert "lesion share" in result.stdout and "wandb sync" in result.stdout
    first = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(first) == 1 and any(first[0].glob("*.wandb"))  # a new offline run in the run folder

    # a second report resumes that run (same id) instead of starting another
    from lungcls.explain.outputs import CSV_COLUMNS
    from lungcls.loggers import log_report_to_wandb

    log_report_to_wandb(run_dir, [], read_rows(out / "gradcam.csv"), CSV_COLUMNS)
    runs_now = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs_now) == 2
    assert {p.name.rsplit("-", 1)[-1] for p in runs_now} == {first[0].name.rsplit("-", 1)[-1]}


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
