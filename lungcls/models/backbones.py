"""The backbone registry: one decorated builder per backbone, like torchvision's ``register_model``.

A builder returns the network with its original classifier; the decorator records what the rest of
lungcls needs to know about it: where the classifier head is, the ordered feature blocks that
partial fine-tuning unfreezes from the top, the reference study's ("paper") recipe, the layer
Grad-CAM explains by default and the layers a report may explain instead (``report.layer``). ImageNet weights and the smallest input size come from torchvision's weights
enum of the same name. Every registered backbone is selectable as ``backbone=<name>`` at once: its
config node is the common keys (``BACKBONE_DEFAULTS``) plus the builder's keyword arguments plus
the decorator's ``config`` (per-backbone defaults such as the learning rate ``lr`` that
``optimizer=adam`` reads), so a ``conf/backbone/<name>.yaml`` is only needed for other settings.

Adding a backbone::

    @register_backbone(head="fc", feature_blocks=resnet_blocks, paper=("layer4", "fc"), gradcam_layer="layer4")
    def resnet34() -> nn.Module:
        return tvm.resnet34()
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torchvision.models as tvm
from torch import nn

from lungcls.errors import LungclsError
from lungcls.models.logistic import LogisticRegression
from lungcls.registry import Registry

FeatureBlocks = Callable[[nn.Module], list[list[str]]]

# Keys every backbone config has (besides the builder's own keyword arguments).
BACKBONE_DEFAULTS: dict[str, Any] = {
    "weights": "${dataset.pretrained}",  # imagenet | auto | /path/to/state_dict.pt | null
    "imagenet_weights": "IMAGENET1K_V1",  # which torchvision weights 'imagenet' means
    "dropout": None,  # override the head's dropout probability
    "init": "default",  # how random weights are drawn: default (the builder's) | kaiming (lungcls.models.weights)
    "lr": 1.0e-3,  # the learning rate optimizer=adam uses with this backbone (optimizer.lr=... wins)
    "epochs": 8,  # the default trainer.max_epochs for this backbone (trainer.max_epochs=... wins)
}


@dataclass(frozen=True)
class BackboneSpec:
    """What the rest of lungcls needs to know about a backbone."""

    name: str
    builder: Callable[..., nn.Module]  # the network with its original head
    head: str  # module path of the final classifier layer, replaced for our classes
    feature_blocks: FeatureBlocks  # ordered bottom -> top, for finetune=partial
    paper: tuple[str, ...]  # module paths the reference study trained (besides the head)
    gradcam_layer: str | None  # module path Grad-CAM explains; None: explained by its weights
    cam_layers: Callable[[nn.Module], list[str]] | None = None  # layers report.layer accepts, bottom -> top
    weights_enum: type | None = None  # torchvision weights, for backbone.weights=imagenet
    in_channels: int = 3
    min_input_size: int = 16  # smallest image side the network accepts
    config: Mapping[str, Any] = field(default_factory=dict)  # the backbone=<name> config node

    @property
    def explained_by_weights(self) -> bool:
        """True for linear models, whose evidence map is their weight map (no conv layer)."""
        return self.gradcam_layer is None

    def explainable_layers(self, model: nn.Module) -> list[str]:
        """The module paths a Grad-CAM report may explain (``report.layer``), bottom -> top."""
        if self.gradcam_layer is None:
            return []
        layers = self.cam_layers(model) if self.cam_layers is not None else []
        return layers if self.gradcam_layer in layers else [*layers, self.gradcam_layer]

    def build(self, options: Mapping[str, Any]) -> nn.Module:
        """The network, built with the backbone config's keys that its builder accepts."""
        accepted = inspect.signature(self.builder).parameters
        return self.builder(**{k: v for k, v in options.items() if k in accepted and v is not None})


def _torchvision_weights(name: str) -> type | None:
    try:
        return tvm.get_model_weights(name)
    except (ValueError, KeyError):
        return None


def _builder_options(builder: Callable) -> dict[str, Any]:
    """The builder's keyword arguments with defaults, as config keys (``num_classes`` comes from
    ``dataset.classes``, not from the config)."""
    return {
        p.name: p.default
        for p in inspect.signature(builder).parameters.values()
        if p.default is not inspect.Parameter.empty and p.name != "num_classes"
    }


class BackboneRegistry(Registry[BackboneSpec]):
    def wrap(self, name: str, obj: Callable[..., nn.Module], **fields) -> BackboneSpec:
        weights = fields.pop("weights_enum", None) or _torchvision_weights(name)
        if weights is not None and "min_input_size" not in fields:
            fields["min_input_size"] = max(16, int(weights.DEFAULT.meta.get("min_size", (16, 16))[0]))
        config = {"name": name, **BACKBONE_DEFAULTS, **_builder_options(obj), **fields.pop("config", {})}
        return BackboneSpec(name=name, builder=obj, weights_enum=weights, config=config, **fields)


BACKBONES = BackboneRegistry("backbone", "backbone=<name>")
register_backbone = BACKBONES.register


def get_backbone(name: str) -> BackboneSpec:
    return BACKBONES.get(name)


# -- feature blocks, bottom -> top -----------------------------------------------------------------


def conv_blocks(model: nn.Module) -> list[list[str]]:
    """VGG/AlexNet: each Conv2d of ``features`` opens a block that also holds its BatchNorm."""
    out: list[list[str]] = []
    for i, layer in enumerate(model.features):
        if isinstance(layer, nn.Conv2d):
            out.append([f"features.{i}"])
        elif isinstance(layer, nn.BatchNorm2d) and out:
            out[-1].append(f"features.{i}")
    return out


def resnet_blocks(model: nn.Module) -> list[list[str]]:
    """ResNet: the stem, then every residual block of layer1..layer4."""
    out = [["conv1", "bn1"]]
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        out += [[f"{stage}.{i}"] for i in range(len(getattr(model, stage)))]
    return out


def children_blocks(model: nn.Module) -> list[list[str]]:
    """DenseNet/EfficientNet: each child of ``features``."""
    return [[f"features.{name}"] for name, _ in model.features.named_children()]


# -- layers a Grad-CAM report may explain, bottom -> top ------------------------------------------


def resnet_cam_layers(model: nn.Module) -> list[str]:
    """Every residual block, each stage's name right after its last block (same output)."""
    out: list[str] = []
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        out += [f"{stage}.{i}" for i in range(len(getattr(model, stage)))] + [stage]
    return out


def rectified_conv_layers(model: nn.Module) -> list[str]:
    """VGG/AlexNet: the ReLU after each conv (with its BatchNorm): rectified feature maps."""
    out, after_conv = [], False
    for i, layer in enumerate(model.features):
        if isinstance(layer, nn.Conv2d):
            after_conv = True
        elif isinstance(layer, nn.ReLU) and after_conv:
            out.append(f"features.{i}")
            after_conv = False
    return out


def children_cam_layers(model: nn.Module) -> list[str]:
    return [block[0] for block in children_blocks(model)]


# -- the registered backbones --------------------------------------------------------------------


@register_backbone(head="classifier.6", feature_blocks=conv_blocks, paper=("features.10", "classifier"),
                   gradcam_layer="features.11",  # the ReLU after the last conv: rectified maps
                   cam_layers=rectified_conv_layers,
                   # no BatchNorm: from scratch it needs He initialisation, a low rate and more epochs
                   # (demo, measured: test accuracy 0.32 at 8 epochs with the common defaults, 0.93 with these)
                   config={"lr": 1.0e-4, "init": "kaiming", "dropout": 0.0, "epochs": 32})
def alexnet() -> nn.Module:
    return tvm.alexnet()


@register_backbone(head="classifier.6", feature_blocks=conv_blocks,
                   paper=("features.24", "features.26", "features.28", "classifier"), gradcam_layer="features.29",
                   cam_layers=rectified_conv_layers)
def vgg16() -> nn.Module:
    return tvm.vgg16()


@register_backbone(head="classifier.6", feature_blocks=conv_blocks, gradcam_layer="features.51",
                   cam_layers=rectified_conv_layers,
                   # the last three conv layers (with their BatchNorm) and the whole classifier
                   paper=("features.43", "features.44", "features.46", "features.47", "features.49", "features.50",
                          "classifier"))
def vgg19_bn() -> nn.Module:
    return tvm.vgg19_bn()


@register_backbone(head="fc", feature_blocks=resnet_blocks, paper=("layer3", "layer4", "fc"), gradcam_layer="layer4",
                   cam_layers=resnet_cam_layers)
def resnet18() -> nn.Module:
    return tvm.resnet18()


@register_backbone(head="fc", feature_blocks=resnet_blocks, paper=("layer3", "layer4", "fc"), gradcam_layer="layer4",
                   cam_layers=resnet_cam_layers,
                   # deeper: from scratch it needs more epochs (demo, measured: test accuracy 0.67 at 8, 0.97 at 16)
                   config={"epochs": 16})
def resnet50() -> nn.Module:
    return tvm.resnet50()


@register_backbone(head="classifier", feature_blocks=children_blocks,
                   paper=("features.denseblock4", "features.norm5", "classifier"), gradcam_layer="features.denseblock4",
                   cam_layers=children_cam_layers)
def densenet121() -> nn.Module:
    return tvm.densenet121()


@register_backbone(head="classifier.1", feature_blocks=children_blocks, paper=("features.7", "features.8", "classifier"),
                   gradcam_layer="features.8", cam_layers=children_cam_layers)
def efficientnet_b0() -> nn.Module:
    return tvm.efficientnet_b0()


@register_backbone(head="linear", feature_blocks=lambda model: [], paper=("linear",), gradcam_layer=None,
                   in_channels=1, config={"weights": None})
def logistic(num_classes: int = 2, input_size: int = 32) -> nn.Module:
    """Multinomial logistic regression on ``input_size`` x ``input_size`` grayscale pixels."""
    return LogisticRegression(num_classes=int(num_classes), input_size=int(input_size))


# -- module paths --------------------------------------------------------------------------------


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
