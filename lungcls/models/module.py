"""The LightningModule: a registry backbone with a fine-tune policy, trained with the configured
loss, optimizer and schedule, and scored per class (precision, recall, F1, missed disease) from a
confusion matrix kept on the device.

Inputs are [0, 1] grayscale batches [B, 1, S, S]; channel replication and normalisation live inside
the module, so a checkpoint alone is enough to run the model on new X-rays.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAUROC

from lungcls.errors import LungclsError
from lungcls.metrics import ConfusionCounts, flat_metrics, metric_key, summarize_confusion
from lungcls.models.backbones import BackboneSpec, get_backbone, get_module, replace_module
from lungcls.models.finetune import apply_finetune, freeze_batchnorm_stats
from lungcls.models.hparams import ModelHparams
from lungcls.models.weights import init_function, load_initial_weights

log = logging.getLogger(__name__)

STAGES = ("train", "val", "test")
DEFAULT_OPTIMIZER = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}
DEFAULT_SCHEDULER = {"_target_": "lungcls.models.schedulers.constant", "_partial_": True}
DEFAULT_LOSS = {"_target_": "lungcls.models.losses.CrossEntropy", "_partial_": True}


def build_network(spec: BackboneSpec, backbone: Mapping[str, Any], num_classes: int, load_weights: bool = True) -> tuple[nn.Module, str]:
    """The backbone with its initial weights loaded (random ones drawn as ``backbone.init`` says)
    and its head replaced for our classes; also says which initial weights it got."""
    # a checkpoint of an earlier release may lack keys added since: the backbone's registered defaults
    backbone = {**{k: spec.config[k] for k in ("init", "imagenet_weights", "dropout", "weights") if k in spec.config and "${" not in str(spec.config[k])}, **backbone}
    draw = init_function(backbone["init"])  # checked first: a misspelt name fails whatever the weights
    net = spec.build({**backbone, "num_classes": num_classes})  # builders that take num_classes get it
    source = "from checkpoint"
    if load_weights:
        source = load_initial_weights(net, spec, backbone["weights"], backbone["imagenet_weights"] or "IMAGENET1K_V1")
    old = get_module(net, spec.head)
    if old.out_features != num_classes:  # torchvision's 1000-class head
        replace_module(net, spec.head, nn.Linear(old.in_features, num_classes))
    if source.startswith("random"):  # the head too: it is new whatever the weights
        draw(net)
    dropout = backbone["dropout"]
    if dropout is not None:
        for m in net.modules():
            if isinstance(m, nn.Dropout):
                m.p = float(dropout)
    return net, source


def _instantiate(cfg: Mapping[str, Any], what: str, *args, **kwargs):
    """Finish a ``_partial_`` config with the arguments only the module knows."""
    cfg = dict(cfg)
    cfg["_partial_"] = True
    try:
        factory = hydra.utils.instantiate(cfg)
    except Exception as e:
        raise LungclsError(f"cannot build the {what} {cfg.get('_target_')} ({' '.join(str(e).split())[:200]}); check {what}.* values") from None
    try:
        return factory(*args, **kwargs)
    except LungclsError:
        raise
    except (TypeError, ValueError) as e:
        raise LungclsError(f"cannot build the {what} {cfg.get('_target_')} ({' '.join(str(e).split())[:200]}); check {what}.* values") from None


def normalize_input(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> the backbone's input: grayscale replicated to the channels ``mean`` has,
    then normalised (the one rule for training, scoring and exported models)."""
    if x.shape[1] == 1 and mean.shape[1] == 3:
        x = x.expand(-1, 3, -1, -1)
    return (x - mean) / std


class LungClassifier(pl.LightningModule):
    def __init__(
        self,
        backbone: Mapping[str, Any],
        finetune: Mapping[str, Any],
        class_names: Sequence[str],
        normal_class: str | None = "Normal",
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        loss: Mapping[str, Any] | None = None,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        image_size: int = 224,
        class_counts: Sequence[int] | None = None,
        compile: bool = False,
        data: Mapping[str, Any] | None = None,
        load_weights: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["load_weights"])
        self.class_names = list(class_names)
        self.normal_class = normal_class
        num_classes = len(self.class_names)
        if num_classes < 2:
            raise LungclsError(f"dataset.classes={self.class_names} needs at least two classes")
        self.spec = get_backbone(backbone["name"])
        if int(image_size) < self.spec.min_input_size:
            raise LungclsError(
                f"dataset.image_size={image_size} is too small for {self.spec.name}; use {self.spec.min_input_size} or more "
                "(224 for ImageNet weights)"
            )
        self.net, self.initial_weights = build_network(self.spec, backbone, num_classes, load_weights=load_weights)
        self.trainable_params, self.total_params = apply_finetune(self.net, self.spec, finetune)
        log.debug("%s with finetune=%s: %d of %d parameters trainable", self.spec.name, finetune["name"], self.trainable_params, self.total_params)
        channels = self.spec.in_channels
        self.register_buffer("input_mean", torch.tensor(list(mean)[:channels]).view(1, channels, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(list(std)[:channels]).view(1, channels, 1, 1), persistent=False)
        self.criterion = _instantiate(loss or DEFAULT_LOSS, "loss", num_classes=num_classes, class_counts=class_counts)
        # metric states per stage; keys get "_": "train" is taken by nn.Module
        self.confusion = nn.ModuleDict({f"{s}_": ConfusionCounts(num_classes) for s in STAGES})
        self.auroc = nn.ModuleDict({f"{s}_": MulticlassAUROC(num_classes, average=None, validate_args=False) for s in ("val", "test")})
        self.mean_loss = nn.ModuleDict({f"{s}_": MeanMetric(nan_strategy="disable") for s in STAGES})
        self.summaries: dict[str, dict] = {}
        self._compiled: nn.Module | None = None

    # -- model ---------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] grayscale (or RGB) images -> logits."""
        x = normalize_input(x, self.input_mean, self.input_std)
        if x.is_cuda and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        net = self._compiled if (self._compiled is not None and self.training) else self.net
        return net(x)

    @property
    def info(self) -> ModelHparams:
        """The hyper-parameters every user of a trained model reads, typed."""
        return ModelHparams.from_hparams(self.hparams)

    @property
    def gradcam_layer(self) -> nn.Module | None:
        return None if self.spec.gradcam_layer is None else get_module(self.net, self.spec.gradcam_layer)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            freeze_batchnorm_stats(self.net)
        return self

    def on_fit_start(self) -> None:
        if self.device.type == "cuda":
            self.net.to(memory_format=torch.channels_last)
            if self.hparams.get("compile"):
                self._compiled = torch.compile(self.net)

    # -- steps ---------------------------------------------------------------------------------------
    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y, _ = batch
        logits = self(x)
        loss = self.criterion(logits, y)
        self.confusion[f"{stage}_"].update(logits.argmax(dim=1), y)
        # one value per image (weights by batch size) without a host-to-device copy of len(y)
        self.mean_loss[f"{stage}_"].update(loss.detach().expand(len(y)))
        if f"{stage}_" in self.auroc:
            self.auroc[f"{stage}_"].update(logits.float().softmax(dim=1), y)
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train")
        # not on the progress bar: that would read the loss back to the host after every step
        self.log("train/loss_step", loss, on_step=True, on_epoch=False, batch_size=len(batch[1]))
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def _epoch_values(self, stage: str) -> dict[str, float]:
        """The epoch's confusion matrix as the design's per-class metrics, plus loss and AUROC."""
        cm = self.confusion[f"{stage}_"].compute().cpu().numpy().astype(int)
        mean_loss = self.mean_loss[f"{stage}_"]
        loss = float(mean_loss.compute()) if mean_loss.update_count else float("nan")
        self.confusion[f"{stage}_"].reset()
        mean_loss.reset()
        summary = summarize_confusion(cm, self.class_names, self.normal_class)
        self.summaries[stage] = summary
        values = {k: float(v) for k, v in flat_metrics(summary, stage).items()}  # Lightning logs floats
        values[metric_key(stage, "loss")] = loss
        auroc = self.auroc[f"{stage}_"] if f"{stage}_" in self.auroc else None
        if auroc is not None and auroc.update_count:
            support = cm.sum(axis=1)
            with warnings.catch_warnings():  # a class without images has no AUROC: it is left out below, not 0
                warnings.filterwarnings("ignore", message=".*(positive|negative) samples.*")
                aurocs = auroc.compute().tolist()
            for k, (name, v) in enumerate(zip(self.class_names, aurocs)):
                if v == v and 0 < support[k] < support.sum():
                    values[metric_key(stage, "auroc", name)] = float(v)
        if auroc is not None:
            auroc.reset()
        return values

    def _epoch_end(self, stage: str) -> None:
        values = self._epoch_values(stage)
        if self.trainer.sanity_checking:
            return
        # the values are already summed over processes (ConfusionCounts); syncing them again is a
        # no-op that keeps Lightning from warning under DDP
        self.log_dict(values, on_epoch=True, sync_dist=self.trainer.world_size > 1)

    def on_train_epoch_end(self) -> None:
        self._epoch_end("train")

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    # -- optimisation --------------------------------------------------------------------------------
    def build_optimizer(self) -> torch.optim.Optimizer:
        """The configured optimizer over the trainable parameters."""
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise LungclsError("no parameter is trainable; choose another finetune policy")
        return _instantiate(self.hparams.optimizer or DEFAULT_OPTIMIZER, "optimizer", params)

    def configure_optimizers(self):
        optimizer = self.build_optimizer()
        total = max(1, int(self.trainer.estimated_stepping_batches))
        epochs = max(1, int(self.trainer.max_epochs or 1))
        schedule = _instantiate(self.hparams.scheduler or DEFAULT_SCHEDULER, "scheduler", optimizer, total_steps=total, epochs=epochs)
        return optimizer if schedule is None else {"optimizer": optimizer, "lr_scheduler": schedule}
