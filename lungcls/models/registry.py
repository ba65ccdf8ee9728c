"""The backbone registry: one small table per backbone, like torchvision's model builders.

Each entry says how to build the network, where its classifier head is, the ordered feature blocks
that partial fine-tuning unfreezes from the top, the reference study's ("paper") recipe, and the
layer Grad-CAM explains. Adding a backbone is adding an entry here and a ``conf/backbone`` file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torchvision.models as tvm
from torch import nn

from lungcls.errors import LungclsError


def _conv_blocks(features_attr: str) -> Callable[[nn.Module], list[list[str]]]:
    """VGG/AlexNet: each Conv2d opens a block that also holds the BatchNorm right after it."""

    def blocks(model: nn.Module) -> list[list[str]]:
        out: list[list[str]] = []
        for i, layer in enumerate(getattr(model, features_attr)):
            name = f"{features_attr}.{i}"
            if isinstance(layer, nn.Conv2d):
                out.append([name])
            elif isinstance(layer, nn.BatchNorm2d) and out:
                out[-1].append(name)
        return out

    return blocks


def _resnet_blocks(model: nn.Module) -> list[list[str]]:
    """ResNet: the stem, then every residual block of layer1..layer4."""
    out = [["conv1", "bn1"]]
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for i in range(len(getattr(model, stage))):
            out.append([f"{stage}.{i}"])
    return out


def _densenet_blocks(model: nn.Module) -> list[list[str]]:
    return [[f"features.{name}"] for name, _ in model.features.named_children()]


def _efficientnet_blocks(model: nn.Module) -> list[list[str]]:
    return [[f"features.{i}"] for i in range(len(model.features))]


@dataclass(frozen=True)
class BackboneSpec:
    """What the rest of lungcls needs to know about a backbone."""

    name: str
    builder: Callable[..., nn.Module] | None  # torchvision builder (None: built by lungcls itself)
    weights_enum: type | None  # torchvision weights enum, for backbone.weights=imagenet
    head: str  # module path of the final classifier layer to replace
    feature_blocks: Callable[[nn.Module], list[list[str]]]  # ordered bottom -> top
    paper: tuple[str, ...]  # module paths the reference study trained (besides the head)
    gradcam_layer: str  # module path of the Grad-CAM target layer
    in_channels: int = 3
    min_input_size: int = 32  # smallest image side the network accepts (its pooling stages shrink it to 1)


BACKBONES: dict[str, BackboneSpec] = {
    "alexnet": BackboneSpec(
        name="alexnet",
        builder=tvm.alexnet,
        weights_enum=tvm.AlexNet_Weights,
        head="classifier.6",
        feature_blocks=_conv_blocks("features"),
        paper=("features.10", "classifier"),
        gradcam_layer="features.11",  # the ReLU after the last conv: rectified maps, like ResNet's block outputs
        min_input_size=63,
    ),
    "vgg16": BackboneSpec(
        name="vgg16",
        builder=tvm.vgg16,
        weights_enum=tvm.VGG16_Weights,
        head="classifier.6",
        feature_blocks=_conv_blocks("features"),
        paper=("features.24", "features.26", "features.28", "classifier"),
        gradcam_layer="features.29",
    ),
    "vgg19_bn": BackboneSpec(
        name="vgg19_bn",
        builder=tvm.vgg19_bn,
        weights_enum=tvm.VGG19_BN_Weights,
        head="classifier.6",
        feature_blocks=_conv_blocks("features"),
        # the last three conv layers (with their BatchNorm) and the whole classifier
        paper=("features.43", "features.44", "features.46", "features.47", "features.49", "features.50", "classifier"),
        gradcam_layer="features.51",
    ),
    "resnet18": BackboneSpec(
        name="resnet18",
        builder=tvm.resnet18,
        weights_enum=tvm.ResNet18_Weights,
        head="fc",
        feature_blocks=_resnet_blocks,
        paper=("layer3", "layer4", "fc"),
        gradcam_layer="layer4.1",
    ),
    "resnet50": BackboneSpec(
        name="resnet50",
        builder=tvm.resnet50,
        weights_enum=tvm.ResNet50_Weights,
        head="fc",
        feature_blocks=_resnet_blocks,
        paper=("layer3", "layer4", "fc"),
        gradcam_layer="layer4.2",
    ),
    "densenet121": BackboneSpec(
        name="densenet121",
        builder=tvm.densenet121,
        weights_enum=tvm.DenseNet121_Weights,
        head="classifier",
        feature_blocks=_densenet_blocks,
        paper=("features.denseblock4", "features.norm5", "classifier"),
        gradcam_layer="features.denseblock4",
    ),
    "efficientnet_b0": BackboneSpec(
        name="efficientnet_b0",
        builder=tvm.efficientnet_b0,
        weights_enum=tvm.EfficientNet_B0_Weights,
        head="classifier.1",
        feature_blocks=_efficientnet_blocks,
        paper=("features.7", "features.8", "classifier"),
        gradcam_layer="features.8",
    ),
    "logistic": BackboneSpec(
        name="logistic",
        builder=None,
        weights_enum=None,
        head="linear",
        feature_blocks=lambda model: [],
        paper=("linear",),
        gradcam_layer="linear",
        in_channels=1,
        min_input_size=1,
    ),
}


def get_backbone(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise LungclsError(
            f"unknown backbone '{name}'; choose one of {', '.join(sorted(BACKBONES))} (backbone=<name>)"
        ) from None


def get_module(model: nn.Module, path: str) -> nn.Module:
    """``model.get_submodule`` with a readable error."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise LungclsError(f"the model has no layer '{path}'") from None


def replace_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, new)
