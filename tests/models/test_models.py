"""Backbones, fine-tune policies (the exact trainable set of each), and initial weights."""

from __future__ import annotations

import torch
import torchvision.models as tvm
import pytest
from torch import nn

from lungcls.errors import LungclsError
from lungcls.models.finetune import POLICIES, apply_finetune, trainable_prefixes
from lungcls.models.losses import class_weight_tensor
from lungcls.models.module import LungClassifier, build_network
from lungcls.models.backbones import BACKBONES, get_backbone
from lungcls.models.weights import hub_checkpoint_dir, load_initial_weights

CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]


def trainable_modules(net: nn.Module) -> set[str]:
    """Top-level-ish owners of trainable parameters, e.g. 'features.10', 'classifier.6', 'layer3.0'."""
    names = set()
    for name, p in net.named_parameters():
        if p.requires_grad:
            parts = name.split(".")
            names.add(".".join(parts[:2]) if parts[0] in ("features", "classifier") or parts[0].startswith("layer") else parts[0])
    return names


def build(name: str, finetune: dict) -> nn.Module:
    """The network on the meta device: its layers and which of them train, without drawing 140M
    random weights (VGG19_bn) for a test of structure."""
    spec = get_backbone(name)
    with torch.device("meta"):
        net, _ = build_network(spec, {"name": name, "weights": None}, num_classes=4)
    apply_finetune(net, spec, finetune)
    return net


@pytest.mark.parametrize(
    "backbone, finetune, expected",
    [
        ("alexnet", {"name": "head"}, {"classifier.6"}),
        ("alexnet", {"name": "paper"}, {"features.10", "classifier.1", "classifier.4", "classifier.6"}),
        ("alexnet", {"name": "partial", "fraction": 0.4}, {"features.8", "features.10", "classifier.6"}),
        ("vgg19_bn", {"name": "head"}, {"classifier.6"}),
        (
            "vgg19_bn",
            {"name": "paper"},
            {"features.43", "features.44", "features.46", "features.47", "features.49", "features.50",
             "classifier.0", "classifier.3", "classifier.6"},
        ),
        ("vgg19_bn", {"name": "partial", "fraction": 0.125}, {"features.46", "features.47", "features.49", "features.50", "classifier.6"}),
        ("resnet50", {"name": "head"}, {"fc"}),
        ("resnet50", {"name": "paper"}, {f"layer3.{i}" for i in range(6)} | {f"layer4.{i}" for i in range(3)} | {"fc"}),
        # 17 blocks (stem + 16 bottlenecks); 0.25 -> the top 5: layer3.5 and layer4.0-2... plus layer3.4
        ("resnet50", {"name": "partial", "fraction": 0.25}, {"layer3.4", "layer3.5", "layer4.0", "layer4.1", "layer4.2", "fc"}),
        ("logistic", {"name": "head"}, {"linear"}),
    ],
)
def test_finetune_trains_exactly_the_documented_layers(backbone, finetune, expected):
    assert trainable_modules(build(backbone, finetune)) == expected


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_full_trains_everything_and_head_has_our_classes(name):
    net = build(name, {"name": "full"})
    assert all(p.requires_grad for p in net.parameters())
    spec = get_backbone(name)
    assert net.get_submodule(spec.head).out_features == 4
    if not spec.explained_by_weights:
        net.get_submodule(spec.gradcam_layer)  # the Grad-CAM layer exists


@pytest.mark.parametrize("fraction", [0, 1.5, -0.1, "half", None])
def test_partial_fraction_outside_range_is_a_clear_error(fraction):
    with pytest.raises(LungclsError, match=r"finetune.fraction=.* must be in \(0, 1\]"):
        build("resnet18", {"name": "partial", "fraction": fraction})


def test_unknown_backbone_and_policy_name_the_choices():
    with pytest.raises(LungclsError, match="unknown backbone 'resnet5'.*resnet50"):
        get_backbone("resnet5")
    with pytest.raises(LungclsError, match="unknown finetune policy 'most'"):
        trainable_prefixes(tvm.resnet18(), get_backbone("resnet18"), {"name": "most"})


def test_frozen_batchnorm_stays_in_eval_mode_while_training():
    model = LungClassifier({"name": "resnet18", "weights": None}, {"name": "head"}, CLASSES)
    model.train()
    assert not model.net.bn1.training and not model.net.layer4[1].bn2.training
    model = LungClassifier({"name": "resnet18", "weights": None}, {"name": "paper"}, CLASSES)
    model.train()
    assert not model.net.layer2[0].bn1.training and model.net.layer4[1].bn2.training
    stats = model.net.bn1.running_mean.clone()
    model(torch.rand(4, 1, 32, 32))
    assert torch.equal(stats, model.net.bn1.running_mean)


def test_counts_of_trainable_parameters_are_recorded():
    model = LungClassifier({"name": "resnet18", "weights": None}, {"name": "head"}, CLASSES)
    assert model.trainable_params == 512 * 4 + 4
    assert model.total_params == sum(p.numel() for p in model.parameters())


def test_logistic_regression_has_no_hidden_layer_and_a_weight_map():
    model = LungClassifier({"name": "logistic", "input_size": 16}, {"name": "full"}, CLASSES)
    assert [type(m).__name__ for m in model.net.modules()] == ["LogisticRegression", "Linear"]
    assert model.trainable_params == 16 * 16 * 4 + 4
    assert model(torch.rand(2, 1, 64, 64)).shape == (2, 4)
    assert model.net.weight_maps().shape == (4, 16, 16)


def test_imagenet_weights_load_from_the_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = tvm.resnet18(weights=None)
    url = tvm.ResNet18_Weights.IMAGENET1K_V1.url
    target = hub_checkpoint_dir() / url.rsplit("/", 1)[1]
    target.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), target)
    net, source = build_network(get_backbone("resnet18"), {"name": "resnet18", "weights": "imagenet"}, num_classes=3)
    assert source.startswith("ImageNet")
    assert torch.equal(net.conv1.weight, reference.conv1.weight)
    assert net.fc.out_features == 3  # the 1000-class head was replaced


def test_imagenet_offline_without_cache_names_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(LungclsError) as e:
        build_network(get_backbone("alexnet"), {"name": "alexnet", "weights": "imagenet"}, num_classes=3)
    msg = str(e.value)
    assert "alexnet-owt-7be5be79.pth" in msg and str(hub_checkpoint_dir()) in msg and "\n" not in msg
    # 'auto' trains from random weights instead, and says so
    _, source = build_network(get_backbone("alexnet"), {"name": "alexnet", "weights": "auto"}, num_classes=3)
    assert source.startswith("random")


def test_state_dict_file_is_loaded_and_a_wrong_architecture_refused(tmp_path):
    reference = tvm.resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "r18.pt")
    net, source = build_network(get_backbone("resnet18"), {"name": "resnet18", "weights": str(tmp_path / "r18.pt")}, 2)
    assert torch.equal(net.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)
    with pytest.raises(LungclsError, match="do not fit backbone resnet50"):
        build_network(get_backbone("resnet50"), {"name": "resnet50", "weights": str(tmp_path / "r18.pt")}, 2)
    with pytest.raises(LungclsError, match="neither 'imagenet', null, nor an existing file"):
        load_initial_weights(tvm.resnet18(), get_backbone("resnet18"), str(tmp_path / "missing.pt"))


def test_class_weights():
    w = class_weight_tensor("inverse_frequency", [30, 10, 0, 20], 4)
    assert torch.allclose(w, torch.tensor([60 / 90, 60 / 30, 0.0, 60 / 60]))
    assert torch.equal(class_weight_tensor("none", None, 4), torch.ones(4))
    with pytest.raises(LungclsError, match="give 4 non-negative weights"):
        class_weight_tensor([1.0, 2.0], None, 4)


# the VGGs' training step takes seconds on a CPU: with the long tests (their structure is tested above)
HEAVY = ("vgg16", "vgg19_bn")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in BACKBONES.names()])
def test_every_backbone_trains_a_step_under_every_policy(name):
    """Each registered backbone: its config node builds the module, a training step changes the
    trainable weights, and every registered fine-tune policy leaves the head trainable."""
    spec = get_backbone(name)
    options = {k: v for k, v in spec.config.items() if k != "weights"}
    model = LungClassifier({**options, "weights": None}, {"name": "full"}, CLASSES, image_size=64)
    model.train()
    optimizer = model.build_optimizer()
    before = model.net.get_submodule(spec.head).weight.detach().clone()
    x, y = torch.rand(2, 1, 64, 64), torch.tensor([0, 2])
    model.criterion(model(x), y).backward()
    optimizer.step()
    assert not torch.equal(before, model.net.get_submodule(spec.head).weight)
    for policy in POLICIES:
        trainable, total = apply_finetune(model.net, spec, {"name": policy, "fraction": 0.5})
        assert 0 < trainable <= total
        assert all(p.requires_grad for p in model.net.get_submodule(spec.head).parameters()), policy


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_each_backbone_brings_its_learning_rate_and_the_command_line_wins(name):
    """optimizer=adam uses the backbone's own lr; optimizer.lr=... and the paper experiments override it."""
    from hydra import compose, initialize_config_dir

    from lungcls.cli import CONF_DIR

    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        default = compose(config_name="train", overrides=[f"backbone={name}"])
        given = compose(config_name="train", overrides=[f"backbone={name}", "optimizer.lr=0.02"])
        other = compose(config_name="train", overrides=[f"backbone={name}", "optimizer=sgd"])
    assert default.optimizer.lr == get_backbone(name).config["lr"] == default.backbone.lr
    assert given.optimizer.lr == 0.02 and other.optimizer.lr == 1e-3


def test_paper_experiments_keep_the_study_learning_rate():
    from hydra import compose, initialize_config_dir

    from lungcls.cli import CONF_DIR

    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        for backbone in ("alexnet", "vgg19_bn", "resnet50"):
            cfg = compose(config_name="train", overrides=[f"experiment=paper_{backbone}"])
            assert cfg.backbone.name == backbone and cfg.optimizer.lr == 1e-4
    assert get_backbone("alexnet").config["lr"] == 1e-4 and get_backbone("resnet18").config["lr"] == 1e-3


def test_kaiming_init_keeps_a_random_alexnet_from_starting_as_a_constant_function():
    """backbone.init=kaiming: under PyTorch's default initialisation a random AlexNet (no BatchNorm)
    gives nearly the same logits for every image; He initialisation keeps them apart. Pretrained
    weights are never re-drawn."""
    torch.manual_seed(0)
    x = torch.rand(8, 3, 128, 128) * torch.linspace(-1, 1, 8).view(8, 1, 1, 1)  # eight clearly different images

    def spread(init: str) -> float:
        torch.manual_seed(1)
        net, source = build_network(get_backbone("alexnet"), {"name": "alexnet", "weights": None, "init": init}, 4)
        assert source == "random"
        with torch.no_grad():
            logits = net.eval()(x)
        return float(logits.std(0).mean())  # how much the logits differ between the images

    assert spread("kaiming") > 20 * spread("default")  # measured: over 100x
    with pytest.raises(LungclsError, match="backbone.init"):
        build_network(get_backbone("alexnet"), {"name": "alexnet", "weights": None, "init": "xavier_typo"}, 4)


def test_imagenet_weights_are_not_redrawn_by_init(tmp_path):
    reference = tvm.alexnet(weights=None)
    torch.save(reference.state_dict(), tmp_path / "a.pt")
    net, _ = build_network(get_backbone("alexnet"), {"name": "alexnet", "weights": str(tmp_path / "a.pt"), "init": "kaiming"}, 4)
    assert torch.equal(net.features[0].weight, reference.features[0].weight)
    with pytest.raises(LungclsError, match="backbone.init"):  # a misspelt name is caught with any weights
        build_network(get_backbone("alexnet"), {"name": "alexnet", "weights": str(tmp_path / "a.pt"), "init": "kaimnig"}, 4)


def test_each_backbone_brings_its_epochs_and_the_command_line_wins():
    """trainer.max_epochs follows backbone.epochs (AlexNet and ResNet50 need more from scratch);
    trainer.max_epochs=... and the paper experiments override it."""
    from hydra import compose, initialize_config_dir

    from lungcls.cli import CONF_DIR

    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        epochs = {name: compose(config_name="train", overrides=[f"backbone={name}"]).trainer.max_epochs
                  for name in ("resnet18", "resnet50", "alexnet")}
        given = compose(config_name="train", overrides=["backbone=alexnet", "trainer.max_epochs=3"])
        paper = compose(config_name="train", overrides=["experiment=paper_alexnet"])
    assert epochs == {name: get_backbone(name).config.get("epochs", 8) for name in epochs}
    assert epochs["resnet18"] < epochs["resnet50"] < epochs["alexnet"]
    assert given.trainer.max_epochs == 3 and paper.trainer.max_epochs == 20 and paper.backbone.dropout == 0.5
