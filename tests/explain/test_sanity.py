"""The model-randomisation sanity check: which layers the cascade re-initialises, the rank
correlation, and that the caller's model is never touched."""

from __future__ import annotations

import pytest
import torch

from lungcls.explain.maps.explainer import ReportModel, explain_batch
from lungcls.explain.maps.layers import choose_layer
from lungcls.explain.checks.sanity import cascade_stages, rank_correlations, sanity_check
from lungcls.models.backbones import get_backbone
from lungcls.models.module import LungClassifier

CLASSES = ["COVID", "Normal", "Viral Pneumonia"]


def _model(name: str, size: int = 64) -> ReportModel:
    torch.manual_seed(0)
    net = LungClassifier({"name": name, "weights": None}, {"name": "full"}, CLASSES, image_size=size).eval()
    return ReportModel(name, None, None, net)


@pytest.mark.parametrize(
    "backbone, layer, expected",
    [
        ("resnet18", "layer3", ["classifier", "layer4.1", "layer4.0", "layer3.1", "layer3.0"]),
        ("resnet18", "layer4.1", ["classifier", "layer4.1"]),
        ("alexnet", "features.11", ["classifier", "features.10"]),  # the ReLU's conv is reached
        ("vgg19_bn", "features.51", ["classifier", "features.49"]),
    ],
)
def test_cascade_goes_from_the_classifier_down_to_the_explained_layer(backbone, layer, expected):
    spec = get_backbone(backbone)
    net = spec.build({})
    stages = cascade_stages(net, spec, layer)
    assert [label for label, _ in stages] == expected
    classifier = stages[0][1]
    assert spec.head in classifier and all(not p.startswith(("features", "layer")) for p in classifier)


def test_logistic_cascade_is_its_linear_layer():
    spec = get_backbone("logistic")
    assert cascade_stages(spec.build({"num_classes": 3}), spec, None) == [("linear", ["linear"])]


def test_rank_correlation_known_answers():
    a = torch.arange(16.0).view(1, 4, 4)
    assert rank_correlations(a, a * 3 + 1) == [pytest.approx(1.0)]
    assert rank_correlations(a, -a) == [pytest.approx(-1.0)]
    assert rank_correlations(a, torch.zeros(1, 4, 4)) == [None]  # an all-zero map has no ranking


@pytest.mark.parametrize("backbone", ["resnet18", "logistic"])
def test_sanity_check_leaves_the_model_alone_and_is_deterministic(backbone):
    model = _model(backbone)
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    x = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    layer = choose_layer(model.model, "auto")
    trained = explain_batch(model, x, [0, 1, 2], layer=layer)
    first = sanity_check(model, x, trained, layer, threshold=0.3)
    again = sanity_check(model, x, trained, layer, threshold=0.3)
    assert first.spearman == again.spearman and first.stages == again.stages
    assert first.flagged == [None if r is None else r >= 0.3 for r in first.spearman]
    assert all(torch.equal(before[k], v) for k, v in model.model.state_dict().items())
