"""Which layer a report explains (report.layer): every backbone's accepted layers, the auto choice
by map size, and one-line errors that name the accepted layers."""

from __future__ import annotations

import pytest
import torch

from lungcls.errors import LungclsError
from lungcls.explain.maps.layers import choose_layer, layer_grids, layer_requests
from lungcls.models.backbones import BACKBONES
from lungcls.models.module import LungClassifier

CNNS = [name for name in BACKBONES.names() if not BACKBONES.get(name).explained_by_weights]


def _classifier(name: str, size: int) -> LungClassifier:
    torch.manual_seed(0)
    return LungClassifier({"name": name, "weights": None}, {"name": "full"}, ["A", "B"], image_size=size).eval()


# every registered CNN (slow: DenseNet and VGG at 224 px); ResNet18 and AlexNet cover both kinds of layer list fast
@pytest.mark.parametrize("name", [n if n in ("resnet18", "alexnet") else pytest.param(n, marks=pytest.mark.slow) for n in CNNS])
def test_every_backbone_lists_spatial_layers_bottom_up_and_auto_keeps_the_standard_layer_at_224(name):
    model = _classifier(name, 224)
    accepted = model.spec.explainable_layers(model.net)
    assert model.spec.gradcam_layer in accepted and len(accepted) == len(set(accepted))
    grids = layer_grids(model, accepted)
    assert set(grids) == set(accepted), "every accepted layer gives a spatial map"
    sides = [min(grids[p]) for p in accepted]
    assert sides == sorted(sides, reverse=True), "listed bottom -> top: maps get coarser"
    chosen = choose_layer(model, "auto")
    assert chosen.path == model.spec.gradcam_layer and min(chosen.grid) >= 7  # the canonical Grad-CAM setting


@pytest.mark.parametrize("name", ["resnet18", "alexnet"])
def test_auto_steps_down_to_a_map_fine_enough_at_small_sizes(name):
    model = _classifier(name, 128)
    registered = choose_layer(model, model.spec.gradcam_layer)
    chosen = choose_layer(model, "auto")
    if min(registered.grid) >= 7:
        assert chosen == registered
    else:
        assert min(chosen.grid) >= 7 and chosen.path != registered.path
        accepted = model.spec.explainable_layers(model.net)
        deeper = accepted[accepted.index(chosen.path) + 1 : accepted.index(registered.path) + 1]
        grids = layer_grids(model, deeper)
        assert all(min(grids[p]) < 7 for p in deeper), "auto takes the deepest layer that is fine enough"
    assert choose_layer(model, "auto", min_cells=1) == registered


def test_unknown_layer_names_the_accepted_ones_and_the_logistic_has_none():
    model = _classifier("resnet18", 64)
    with pytest.raises(LungclsError) as info:
        choose_layer(model, "layer5", model_name="resnet18/full (run)")
    message = str(info.value)
    assert "\n" not in message and "report.layer=layer5" in message and "layer4.1, layer4" in message
    with pytest.raises(LungclsError, match="explained by its weight map"):
        choose_layer(_classifier("logistic", 64), "linear")
    assert choose_layer(_classifier("logistic", 64), "auto").path is None


def test_layer_requests_one_for_all_or_one_per_checkpoint():
    assert layer_requests("auto", 2) == ["auto", "auto"]
    assert layer_requests(None, 1) == ["auto"]
    assert layer_requests(["layer3", None], 2) == ["layer3", "auto"]
    with pytest.raises(LungclsError, match="one per checkpoint"):
        layer_requests(["layer3"], 2)
