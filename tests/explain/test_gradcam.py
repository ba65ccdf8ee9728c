"""Tests for lungcls.explain: Grad-CAM on small and torchvision CNNs, the logistic evidence map,
energy shares, the CAM grid figure and the self-contained HTML report."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest
import torch
import torchvision.models as tvm
from PIL import Image
from torch import nn

from lungcls.errors import LungclsError
from lungcls.report.figures import PAGE_WIDTH_IN, figure_parts, images_per_row, plot_cam_grid
from lungcls.explain.maps.engine import (
    CamResult,
    grad_cam,
    logistic_cam,
    normalize_cams,
)
from lungcls.explain.maps.preparation import prepare_for_cam, resolve_layer
from lungcls.report.html import FigureSection, write_report_html
from lungcls.explain.checks.localisation import (
    border_band,
    energy_shares,
    localisation_lines,
    summarize_localisation,
)

# The Grad-CAM target layers of the torchvision backbones: the rectified output of the last conv.
TARGETS = {
    "alexnet": ["features.10", "features.11"],
    "vgg19_bn": ["features.49", "features.51"],
    "resnet50": ["layer4.2", "layer4[-1]"],
}


def _no_hooks(model: nn.Module) -> bool:
    return all(
        not m._forward_hooks
        and not m._forward_pre_hooks
        and not m._backward_hooks
        and not m._backward_pre_hooks
        for m in model.modules()
    )


def _inplace_count(model: nn.Module) -> int:
    return sum(bool(getattr(m, "inplace", False)) for m in model.modules())


@pytest.fixture(scope="module")
def images64() -> torch.Tensor:
    return torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def torchvision_models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {name: getattr(tvm, name)(weights=None, num_classes=3) for name in TARGETS}


class TinyCNN(nn.Module):
    """Two conv blocks, global pooling, a linear head: enough structure for Grad-CAM."""

    def __init__(self, n_classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _tiny() -> TinyCNN:
    torch.manual_seed(1)
    return TinyCNN()


# --------------------------------------------------------------------------- target layers


def test_torchvision_target_layer_indices(torchvision_models):
    alex, vgg, res = (torchvision_models[k] for k in ("alexnet", "vgg19_bn", "resnet50"))
    assert isinstance(resolve_layer(alex, "features.10"), nn.Conv2d)
    assert isinstance(resolve_layer(alex, "features.11"), nn.ReLU)
    assert isinstance(alex.features[12], nn.MaxPool2d) and len(alex.features) == 13
    assert isinstance(resolve_layer(vgg, "features.49"), nn.Conv2d)
    assert isinstance(resolve_layer(vgg, "features.51"), nn.ReLU)
    assert isinstance(vgg.features[52], nn.MaxPool2d) and len(vgg.features) == 53
    assert resolve_layer(res, "layer4.2") is resolve_layer(res, "layer4[-1]") is res.layer4[-1]
    assert resolve_layer(res, "layer4[-1].conv3") is res.layer4[2].conv3


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("layer5", "layer4"),  # unknown name: the valid names are listed
        ("layer4[3]", "out of range"),
        ("conv1[0]", "leaf"),
        ("layer4..2", "cannot parse"),
        ("layer4.-1", "layer4[-1]"),
        ("", "non-empty"),
    ],
)
def test_resolve_layer_errors_name_the_fix(torchvision_models, path, needle):
    with pytest.raises(LungclsError, match=re.escape(needle)):
        resolve_layer(torchvision_models["resnet50"], path)


# --------------------------------------------------------------------------- grad_cam


CASES = [(n, p) for n, paths in TARGETS.items() for p in paths[1:]] + [("alexnet", "features.10")]


@pytest.mark.parametrize(("name", "path"), CASES)
def test_grad_cam_torchvision(torchvision_models, images64, name, path):
    original = torchvision_models[name].train()
    n_inplace = _inplace_count(original)
    assert n_inplace > 0
    cam_model = prepare_for_cam(original)
    result = grad_cam(cam_model, resolve_layer(cam_model, path), images64, batch_size=3)

    assert isinstance(result, CamResult) and len(result) == 4
    assert result.cams.shape == (4, 64, 64) and result.cams.dtype == torch.float32
    assert result.cams.device.type == "cpu"
    assert torch.isfinite(result.cams).all()
    assert result.cams.min() >= 0 and result.cams.max() <= 1
    peaks = result.cams.flatten(1).amax(1)
    assert torch.all((peaks == 0) | torch.isclose(peaks, torch.ones(())))
    assert (peaks > 0).any()
    assert result.probs.shape == (4, 3)
    assert torch.allclose(result.probs.sum(1), torch.ones(4), atol=1e-5)
    assert torch.equal(result.preds, result.probs.argmax(1))
    assert torch.equal(result.targets, result.preds)
    # the copy: eval, frozen, no in-place modules, no hooks left behind
    assert not cam_model.training
    assert not any(p.requires_grad for p in cam_model.parameters())
    assert _inplace_count(cam_model) == 0
    assert _no_hooks(cam_model)
    # the caller's model is untouched
    assert original.training and _inplace_count(original) == n_inplace
    assert all(p.requires_grad and p.grad is None for p in original.parameters())


def test_grad_cam_frozen_equals_trainable(images64):
    """A frozen model gives the same CAMs: only the target layer's output needs a gradient."""
    trainable = _tiny().eval()
    frozen = _tiny().eval().requires_grad_(False)
    a = grad_cam(prepare_for_cam(trainable, freeze=False), "features.5", images64)
    b = grad_cam(prepare_for_cam(frozen, freeze=False), "features.5", images64)
    assert (a.cams.flatten(1).amax(1) > 0).any()
    assert torch.allclose(a.cams, b.cams, atol=1e-6)
    assert torch.allclose(a.probs, b.probs)


def test_grad_cam_leaves_no_param_grads_and_eval_mode(images64):
    model = _tiny().train()  # passed directly, unprepared: grad_cam must switch it to eval
    grad_cam(model, model.features[5], images64)
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    assert _no_hooks(model)


def test_grad_cam_deterministic_and_batch_independent(torchvision_models, images64):
    cam_model = prepare_for_cam(torchvision_models["resnet50"])
    layer = resolve_layer(cam_model, "layer4[-1]")
    first = grad_cam(cam_model, layer, images64, batch_size=4)
    again = grad_cam(cam_model, layer, images64, batch_size=4)
    single = grad_cam(cam_model, layer, images64, batch_size=1)
    assert torch.equal(first.cams, again.cams)
    assert torch.allclose(first.cams, single.cams, atol=1e-5)
    assert torch.allclose(first.probs, single.probs, atol=1e-5)


def test_grad_cam_explicit_targets(images64):
    cam_model = prepare_for_cam(_tiny())
    per_image = grad_cam(cam_model, "features.5", images64, target=torch.tensor([0, 1, 2, 0]))
    assert per_image.targets.tolist() == [0, 1, 2, 0]
    as_int = grad_cam(cam_model, "features.5", images64, target=2)
    assert as_int.targets.tolist() == [2, 2, 2, 2]
    assert torch.allclose(per_image.cams[2], as_int.cams[2], atol=1e-6)
    assert torch.allclose(per_image.probs, as_int.probs)  # targets do not change the prediction


@pytest.mark.parametrize(
    ("target", "needle"), [(3, "out of range"), ([0, 1], "one id per image"), (0.5, "integer")]
)
def test_grad_cam_bad_target_raises_and_cleans_up(images64, target, needle):
    cam_model = prepare_for_cam(_tiny())
    with pytest.raises(LungclsError, match=needle):
        grad_cam(cam_model, "features.5", images64, target=target)
    assert _no_hooks(cam_model)


def test_grad_cam_rejects_layer_of_another_model_and_bad_inputs(images64):
    original = _tiny()
    cam_model = prepare_for_cam(original)
    with pytest.raises(LungclsError, match="not a submodule"):
        grad_cam(cam_model, original.features[5], images64)
    with pytest.raises(LungclsError, match="spatial map"):
        grad_cam(cam_model, "head.2", images64)
    with pytest.raises(LungclsError, match="float tensor"):
        grad_cam(cam_model, "features.5", images64[0])
    with pytest.raises(LungclsError, match="batch_size"):
        grad_cam(cam_model, "features.5", images64, batch_size=0)


def test_grad_cam_under_inference_mode(images64):
    cam_model = prepare_for_cam(_tiny())
    expected = grad_cam(cam_model, "features.5", images64)
    with torch.inference_mode():
        frozen_images = images64.clone()
        got = grad_cam(cam_model, "features.5", frozen_images)
    assert torch.allclose(expected.cams, got.cams)


class TwoDetectors(nn.Module):
    """Channel 0 fires on red, channel 1 on green; logit 1 = total red, logit 0 = total green.

    Grad-CAM weights each channel by its mean gradient, so the map for class 1 must follow the
    red blob and the map for class 0 the green blob, wherever they are.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0] = 1.0  # red
            self.conv.weight[1, 1] = 1.0  # green
            self.head.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.relu(self.conv(x))).sum(dim=(2, 3)))


def _two_blob_image(red_size: int = 8, green_size: int = 6) -> torch.Tensor:
    img = torch.zeros(1, 3, 32, 32)
    img[0, 0, 10 : 10 + red_size, 3 : 3 + red_size] = 1.0  # red blob, left half
    img[0, 1, 14 : 14 + green_size, 22 : 22 + green_size] = 1.0  # green blob, right half
    return img


def test_grad_cam_known_answer_follows_the_class_evidence():
    cam_model = prepare_for_cam(TwoDetectors())
    image = _two_blob_image()
    left = np.zeros((32, 32), dtype=bool)
    left[:, :16] = True
    red = grad_cam(cam_model, "pool", image, target=1)
    green = grad_cam(cam_model, "pool", image, target=0)
    predicted = grad_cam(cam_model, "pool", image)  # the red blob is larger: class 1 predicted
    assert energy_shares(red.cams[0], lesion_mask=left)["lesion_share"] > 0.9
    assert energy_shares(green.cams[0], lesion_mask=~left)["lesion_share"] > 0.9
    assert predicted.preds.tolist() == [1] and predicted.targets.tolist() == [1]
    assert torch.equal(predicted.cams, red.cams)
    assert predicted.probs[0, 1] > 0.99


@pytest.mark.gpu
def test_grad_cam_on_gpu_matches_cpu(images64):
    cpu_model = prepare_for_cam(_tiny())
    gpu_model = prepare_for_cam(cpu_model).cuda()
    cpu = grad_cam(cpu_model, "features.5", images64)
    gpu = grad_cam(gpu_model, "features.5", images64.cuda())
    assert gpu.cams.device.type == "cpu" and gpu.probs.device.type == "cpu"
    assert torch.allclose(cpu.cams, gpu.cams, atol=1e-3)


def test_normalize_cams_zero_map_stays_zero():
    maps = torch.stack([torch.zeros(5, 5), -torch.ones(5, 5), torch.arange(25.0).view(5, 5)])
    out = normalize_cams(maps)
    assert torch.equal(out[0], torch.zeros(5, 5)) and torch.equal(out[1], torch.zeros(5, 5))
    assert out[2].max() == 1 and torch.isfinite(out).all()


# --------------------------------------------------------------------------- logistic baseline


def test_logistic_cam_evidence_is_positive_weight_times_pixels():
    weights = torch.zeros(2, 4, 4)
    weights[1, :, :2] = 1.0  # class 1 likes bright pixels in the left half
    weights[1, :, 2:] = -1.0
    weights[0] = -weights[1]
    gray = torch.ones(3, 1, 32, 32)  # pooled to 4x4 inside
    probs = torch.tensor([[0.2, 0.8], [0.9, 0.1], [0.4, 0.6]])
    result = logistic_cam(weights, gray, probs=probs)
    assert result.cams.shape == (3, 32, 32) and result.cams.dtype == torch.float32
    assert result.preds.tolist() == [1, 0, 1] and result.targets.tolist() == [1, 0, 1]
    left = np.zeros((32, 32), dtype=bool)
    left[:, :16] = True
    assert energy_shares(result.cams[0], lesion_mask=left)["lesion_share"] > 0.85
    assert energy_shares(result.cams[1], lesion_mask=~left)["lesion_share"] > 0.85
    # dark image: no evidence anywhere, the map stays zero (no NaN)
    dark = logistic_cam(weights, torch.zeros(1, 32, 32), target=1, probs=probs[:1])
    assert torch.equal(dark.cams, torch.zeros(1, 32, 32))


def test_logistic_cam_bias_gives_prediction_and_is_required_without_probs():
    weights = torch.zeros(3, 2, 2)
    gray = torch.ones(2, 8, 8)
    result = logistic_cam(weights, gray, bias=torch.tensor([0.0, 3.0, 1.0]), size=(16, 16))
    assert result.preds.tolist() == [1, 1] and result.cams.shape == (2, 16, 16)
    with pytest.raises(LungclsError, match="probs"):
        logistic_cam(weights, gray)
    with pytest.raises(LungclsError, match="out of range"):
        logistic_cam(weights, gray, target=5, bias=torch.zeros(3))


# --------------------------------------------------------------------------- localisation


def test_energy_shares_on_hand_made_maps():
    mask = np.zeros((100, 100), dtype=np.uint8)
    mask[20:70, 10:50] = 255  # 0-255 mask image, 20% of the area
    uniform = energy_shares(np.ones((100, 100)), lung_mask=mask, lesion_mask=mask > 0)
    assert uniform["lung_share"] == pytest.approx(0.2)
    assert uniform["lung_uniform"] == pytest.approx(0.2)
    assert uniform["lesion_share"] == pytest.approx(0.2)
    assert uniform["border_uniform"] == pytest.approx(0.36)  # 1 - 0.8^2 for a 10% band
    assert uniform["border_share"] == pytest.approx(0.36)

    inside = np.zeros((100, 100))
    inside[30:40, 20:30] = 0.7
    shares = energy_shares(inside, lesion_mask=mask)
    assert shares["lesion_share"] == pytest.approx(1.0) and shares["border_share"] == 0.0
    assert shares["lung_share"] is None and shares["lung_uniform"] is None

    zero = energy_shares(np.zeros((100, 100)), lung_mask=mask, lesion_mask=mask)
    assert zero["lung_share"] is None and zero["lesion_share"] is None
    assert zero["border_share"] is None
    assert zero["lung_uniform"] == pytest.approx(0.2)

    empty = energy_shares(np.ones((100, 100)), lesion_mask=np.zeros((100, 100), dtype=bool))
    assert empty["lesion_share"] is None and empty["lesion_uniform"] == 0.0


def test_energy_shares_resizes_masks_nearest_and_accepts_tensors():
    small = np.zeros((10, 10), dtype=bool)
    small[:, :5] = True  # left half at another resolution
    cam = torch.zeros(64, 64)
    cam[:, :32] = 1.0
    shares = energy_shares(cam, lung_mask=small, border_frac=0.0)
    assert shares["lung_share"] == pytest.approx(1.0)
    assert shares["lung_uniform"] == pytest.approx(0.5)
    assert shares["border_uniform"] == 0.0


def test_border_band_area_and_validation():
    assert border_band((100, 100), 0.1).sum() == 100 * 100 - 80 * 80
    band = border_band((50, 200), 0.2)
    assert band.sum() == 50 * 200 - 30 * 120
    assert not band[25, 100] and band[0, 0] and band[25, 39] and not band[25, 40]
    with pytest.raises(LungclsError, match="border_frac"):
        border_band((10, 10), 0.5)


def test_summarize_localisation_beats_uniform():
    keys = ("model", "lesion_share", "lesion_uniform", "border_share", "lung_share", "lung_uniform")
    table = [
        ("ResNet50", 0.6, 0.1, 0.1, 0.9, 0.4),
        ("ResNet50", 0.05, 0.2, 0.3, 0.5, 0.4),
        ("ResNet50", None, 0.0, 0.2, None, None),  # no lesion in this image, no lung mask
        ("AlexNet", 0.01, 0.1, 0.8, None, None),
    ]
    rows = [{**dict(zip(keys, values)), "border_uniform": 0.36} for values in table]
    summary = summarize_localisation(rows)
    res, alex = summary["ResNet50"], summary["AlexNet"]
    assert res["n_images"] == 3 and res["n_lesion"] == 2
    assert res["lesion_share_mean"] == pytest.approx(0.325)
    assert res["lesion_uniform_mean"] == pytest.approx(0.15)  # the empty-lesion image is left out
    assert res["lesion_beats_uniform"] is True and res["lesion_beats_frac"] == pytest.approx(0.5)
    assert res["border_share_mean"] == pytest.approx(0.2)
    assert alex["lesion_beats_uniform"] is False and alex["lung_share_mean"] is None
    lines = localisation_lines(summary)
    assert len(lines) == 2 and "does NOT beat" in lines[1] and "no lung masks" in lines[1]
    with pytest.raises(LungclsError, match="model"):
        summarize_localisation([{"lesion_share": 0.1}])


# --------------------------------------------------------------------------- figures and HTML


def _grid(tmp_path, n_images: int, n_models: int, name: str, formats=("png",)):
    rng = np.random.default_rng(n_images)
    images = [rng.integers(0, 255, (40, 40), dtype=np.uint8) for _ in range(n_images)]
    cams = [rng.random((n_images, 5, 5)).astype(np.float32) for _ in range(n_models)]
    cells = [[f"COVID 0.9{i}" for i in range(n_images)] for _ in range(n_models)]
    titles = [f"COVID\nCOVID-{i}.png" for i in range(n_images)]
    names = [f"model{j}/full" for j in range(n_models)]
    return plot_cam_grid(images, cams, titles, names, cells, tmp_path / name, dpi=60, formats=formats)


def test_cam_grid_fits_a_page_with_several_images_per_row(tmp_path):
    """Page width at 300 dpi whatever the count; images share rows; at most six rows per figure."""
    one = plot_cam_grid([np.zeros((40, 40))], [np.ones((1, 4, 4))], ["COVID\na.png"], ["m/full"], None,
                        tmp_path / "one.png")
    with Image.open(one) as im:
        assert im.size[0] == round(PAGE_WIDTH_IN * 300)  # 300 dpi, page wide
    assert images_per_row(1) == 3 and images_per_row(2) == 2 and images_per_row(5) == 1
    six_rows = _grid(tmp_path, 12, 2, "six.png")  # 2 per row -> 6 rows
    three_rows = _grid(tmp_path, 6, 2, "three.png")
    with Image.open(six_rows) as a, Image.open(three_rows) as b:
        assert a.size[0] == b.size[0]
        assert 1.6 < a.size[1] / b.size[1] < 2.0  # rows, not images, set the height
    parts = figure_parts(40, 1)
    assert [len(p) for p in parts] == [18, 18, 4] and parts[0].start == 0 and parts[-1].stop == 40


def test_cam_grid_writes_png_and_pdf(tmp_path):
    png = _grid(tmp_path, 3, 2, "both.png", formats=("png", "pdf"))
    assert png.suffix == ".png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"


def test_plot_cam_grid_validates_titles(tmp_path):
    images = [np.zeros((8, 8))]
    with pytest.raises(LungclsError, match="cell_titles"):
        plot_cam_grid(images, [np.zeros((1, 2, 2))], ["x"], ["A"], [["a", "b"]], tmp_path / "a.png")
    with pytest.raises(LungclsError, match="one map per image"):
        plot_cam_grid(images, [np.zeros((2, 2, 2))], ["x"], ["A"], None, tmp_path / "x.png")
    with pytest.raises(LungclsError, match="one name per model"):
        plot_cam_grid(images, [np.zeros((1, 2, 2))], ["x"], ["A", "B"], None, tmp_path / "x.png")


def test_write_report_html_is_self_contained_and_escaped(tmp_path):
    png = _grid(tmp_path, 1, 1, "fig.png")
    title = "Grad-CAM <report> & friends"
    sections = [
        FigureSection("Per class: COVID", png, "Rows: images; <b>columns</b>: models"),
        {"title": "Misses", "path": png},
    ]
    row = {"path": "a<b>.png", "label": "COVID", "pred": "Normal", "prob_COVID": 0.25}
    summary = ["ResNet50: lesion share 0.61 vs uniform 0.12 (beats uniform)", "ckpt <x>/best.ckpt"]
    path = write_report_html(
        tmp_path / "report", title, sections, [{**row, "lesion_share": None}], summary
    )
    assert path.name == "report.html" and path.is_file()
    text = path.read_text(encoding="utf-8")
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(uris) == 2 and base64.b64decode(uris[0]) == png.read_bytes()
    assert "Grad-CAM &lt;report&gt; &amp; friends" in text and "<report>" not in text
    assert "&lt;b&gt;columns&lt;/b&gt;" in text and "a&lt;b&gt;.png" in text
    assert "ckpt &lt;x&gt;/best.ckpt" in text and "0.250" in text
    assert "http" not in text.lower() and "<script" not in text.lower() and "<link" not in text
    assert "<table>" in text and "<th>prob_COVID</th>" in text


def test_write_report_html_missing_figure_is_a_clear_error(tmp_path):
    with pytest.raises(LungclsError, match="does not exist"):
        write_report_html(tmp_path, "t", [FigureSection("x", tmp_path / "nope.png")], [], [])
