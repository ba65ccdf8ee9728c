"""Attribution methods (``report.methods``): the registry and its one-line errors, the common
post-processing, LayerCAM against a hand-computed case, the localisation scores (hit, IoU) and the
deletion/insertion curves on models whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lungcls.errors import LungclsError
from lungcls.explain.checks.faithfulness import blurred, faithfulness_curves, random_maps
from lungcls.explain.checks.localisation import hit_and_iou
from lungcls.explain.maps.methods import METHODS, finish, resolve_methods
from lungcls.explain.maps.methods.layercam import layer_cam

EXPECTED = {"gradcam", "guided_gradcam", "integrated_gradients", "smoothgrad", "occlusion", "saliency", "layercam", "edge"}


def test_registry_has_every_method_and_all_puts_gradcam_first():
    assert set(METHODS.names()) == EXPECTED
    chosen = [m.name for m in resolve_methods("all")]
    assert chosen[0] == "gradcam" and set(chosen) == EXPECTED
    assert [m.name for m in resolve_methods(["occlusion", "gradcam"])] == ["occlusion", "gradcam"]
    assert [m.name for m in METHODS.get("edge") and resolve_methods(["edge"])] == ["edge"]
    assert METHODS.get("edge").model_free and not METHODS.get("saliency").model_free


@pytest.mark.parametrize("value, needle", [
    (["gradcam", "gradcma"], "unknown attribution method 'gradcma'; choose one of edge, gradcam, guided_gradcam"),
    ([], "report.methods is empty"),
    (["saliency", "saliency"], "lists a method twice"),
])
def test_bad_method_lists_are_one_line_errors(value, needle):
    with pytest.raises(LungclsError, match=needle) as info:
        resolve_methods(value)
    assert "\n" not in str(info.value)


def test_finish_applies_the_convention_upsamples_and_scales_to_max_one():
    raw = torch.tensor([[[-4.0, 1.0], [2.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    absolute = finish(raw, "abs", 2)
    assert torch.allclose(absolute[0], torch.tensor([[1.0, 0.25], [0.5, 0.0]]))
    assert torch.equal(absolute[1], torch.zeros(2, 2))  # an all-zero map stays zero, no NaN
    relu = finish(raw, "relu", 2)
    assert torch.allclose(relu[0], torch.tensor([[0.0, 0.5], [1.0, 0.0]]))
    up = finish(raw[:, None], "relu", 8)  # [B, 1, h, w] is accepted, bilinear to 8 x 8
    assert up.shape == (2, 8, 8) and float(up.max()) == pytest.approx(1.0) and float(up.min()) >= 0.0


class _ConvGapLinear(nn.Module):
    """x -> 1x1 conv with weights [1, -1] (A = [x, -x]) -> ReLU -> global mean -> linear W."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            self.fc.weight.copy_(w)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_layercam_matches_the_papers_formula_on_a_hand_computed_case():
    # A = [x, -x] with x = [[1, -2], [3, 0]]; y_0 = (1 * mean relu(A_0) + 2 * mean relu(A_1)).
    # dy_0/dA_k[i,j] = W[0,k] / 4 where A_k[i,j] > 0, else 0:
    #   grad_0 = [[.25, 0], [.25, 0]], grad_1 = [[0, .5], [0, 0]]
    # LayerCAM = relu(sum_k relu(grad_k) * A_k) = [[.25*1, .5*2], [.25*3, 0]] = [[.25, 1], [.75, 0]]
    # (Grad-CAM's channel means are both 0.125, so its map 0.125 * (x - x) is zero everywhere.)
    net = _ConvGapLinear(torch.tensor([[1.0, 2.0], [-1.0, 0.5]])).requires_grad_(False)
    x = torch.tensor([[1.0, -2.0], [3.0, 0.0]]).view(1, 1, 2, 2)
    cam = layer_cam(net, net.conv, x, torch.tensor([0]))
    assert torch.allclose(cam, torch.tensor([[[0.25, 1.0], [0.75, 0.0]]]))
    # class 1: relu(W[1]) = [0, .5]: only channel 1 counts, where it is positive: (0, 1) -> .5/4 * 2
    assert torch.allclose(layer_cam(net, net.conv, x, torch.tensor([1])), torch.tensor([[[0.0, 0.25], [0.0, 0.0]]]))
    assert not any(p.grad is not None for p in net.parameters())


def test_hit_and_iou_on_hand_made_maps():
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:4, 2:4] = True  # 4 pixels
    cam = np.zeros((10, 10))
    cam[2:4, 2:4] = [[1.0, 0.9], [0.8, 0.7]]
    cam[8, 8] = 0.75
    assert hit_and_iou(cam, mask) == {"hit": 1.0, "iou": pytest.approx(3 / 5)}  # top 4: three in, one out
    cam[8, 8] = 2.0
    assert hit_and_iou(cam, mask)["hit"] == 0.0
    plateau = np.zeros((10, 10))
    plateau[1:4, 1:4] = 1.0  # 9 maximal pixels, 4 of them on the lesion: no majority, a miss
    assert hit_and_iou(plateau, mask)["hit"] == 0.0
    beside = np.zeros((10, 10))
    beside[2, 5] = 1.0  # two pixels right of the lesion's edge
    assert hit_and_iou(beside, mask)["hit"] == 0.0
    assert hit_and_iou(beside, mask, tolerance=0.2)["hit"] == 1.0  # within 2 px (0.2 of the side)
    assert hit_and_iou(beside, mask, tolerance=0.1)["hit"] == 0.0
    assert hit_and_iou(cam, None) == {"hit": None, "iou": None}
    assert hit_and_iou(cam, np.zeros((10, 10))) == {"hit": None, "iou": None}  # nothing to find
    assert hit_and_iou(np.zeros((10, 10)), mask) == {"hit": None, "iou": None}  # an all-zero map


class _RegionModel(nn.Module):
    """Class 0's logit is the brightness of a square in the top-left quarter: only that region matters."""

    def forward(self, x):
        s = x[:, 0, 2:6, 2:6].mean(dim=(1, 2)) * 20.0
        return torch.stack([s, torch.full_like(s, 10.0)], dim=1)


def test_deletion_falls_faster_for_the_map_that_marks_what_the_model_uses():
    torch.manual_seed(0)
    x = torch.zeros(3, 1, 16, 16)
    x[:, :, 2:6, 2:6] = 1.0  # a bright square the model reads; the blur spreads and dims it
    x[:, :, 10:14, 10:14] = 1.0  # a bright square it ignores
    targets = torch.zeros(3, dtype=torch.long)
    true_map = torch.zeros(3, 16, 16)
    true_map[:, :8, :8] = 1.0 + torch.rand(3, 8, 8)
    wrong_map = torch.zeros(3, 16, 16)
    wrong_map[:, 8:, 8:] = 1.0 + torch.rand(3, 8, 8)
    net = _RegionModel()
    good = faithfulness_curves(net, x, true_map, targets, steps=8, sigma_frac=0.2, batch_size=4)
    bad = faithfulness_curves(net, x, wrong_map, targets, steps=8, sigma_frac=0.2, batch_size=4)
    rand = faithfulness_curves(net, x, random_maps(3, 16), targets, steps=8, sigma_frac=0.2, batch_size=4)
    assert good.deletion.shape == (3, 9)
    full = torch.softmax(net(x), 1)[:, 0].numpy()
    gone = torch.softmax(net(blurred(x, 0.2)), 1)[:, 0].numpy()
    for curves in (good, bad, rand):  # step 0 is the image, the last step the blurred image
        assert np.allclose(curves.deletion[:, 0], full, atol=1e-6) and np.allclose(curves.deletion[:, -1], gone, atol=1e-6)
        assert np.allclose(curves.insertion[:, 0], gone, atol=1e-6) and np.allclose(curves.insertion[:, -1], full, atol=1e-6)
    assert full.min() - gone.max() > 0.5  # the blur removes what the model reads
    assert (good.deletion_auc < rand.deletion_auc - 0.1).all()
    assert (bad.deletion_auc > good.deletion_auc + 0.3).all() and bad.deletion_auc.mean() > rand.deletion_auc.mean()
    assert (good.insertion_auc > rand.insertion_auc + 0.05).all() and (good.insertion_auc > bad.insertion_auc + 0.3).all()


def test_edge_control_is_the_sobel_magnitude_and_ignores_the_model():
    x = torch.zeros(2, 1, 16, 16)
    x[:, :, :, 8:] = 1.0  # a vertical edge
    edge = METHODS.get("edge")
    a = finish(edge.compute(None, x, torch.zeros(2, dtype=torch.long)), edge.convention, 16)
    assert a.shape == (2, 16, 16) and float(a.max()) == 1.0
    assert float(a[:, :, 7:9].min()) > 0.4 and float(a[:, :, :6].max()) < 0.01 and float(a[:, :, 10:].max()) < 0.01


def test_smoothgrad_maps_are_the_same_twice_and_leave_the_global_random_stream_alone():
    from types import SimpleNamespace

    from lungcls.explain.maps.methods.registry import MethodContext

    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    ctx = MethodContext(net=net, layer=None, fine_layer=None, baseline=lambda x: x * 0,
                        settings=SimpleNamespace(smoothgrad_samples=4, smoothgrad_noise=0.2))
    x, targets = torch.rand(2, 3, 8, 8), torch.tensor([0, 1])
    state = torch.get_rng_state()
    first = METHODS.get("smoothgrad").compute(ctx, x, targets)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, METHODS.get("smoothgrad").compute(ctx, x, targets))
