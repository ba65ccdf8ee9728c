"""The LightningModule: a registry backbone with a fine-tune policy, trained with cross-entropy, and
scored per class (precision, recall, F1, missed disease) from a confusion matrix kept on device.

Inputs are [0, 1] grayscale batches [B, 1, S, S]; channel replication and normalisation live inside
the module, so a checkpoint alone is enough to run the model on new X-rays.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import hydra
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import MulticlassAUROC

from lungcls.errors import LungclsError
from lungcls.metrics import flat_metrics, summarize_confusion
from lungcls.models.finetune import apply_finetune, freeze_batchnorm_stats
from lungcls.models.logistic import LogisticRegression
from lungcls.models.registry import BackboneSpec, get_backbone, get_module, replace_module
from lungcls.models.weights import load_initial_weights

log = logging.getLogger(__name__)

STAGES = ("train", "val", "test")
SCHEDULERS = ("none", "step", "cosine", "warmup_cosine")


class ConfusionCounts(Metric):
    """A confusion matrix (rows = true class) that accumulates with ``index_add_``.

    torchmetrics' MulticlassConfusionMatrix counts with ``torch.bincount``, which on a GPU reads the
    maximum back to the host on every update; this keeps training free of per-step host syncs and
    still sums across processes (DDP) at ``compute``.
    """

    full_state_update = False

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.add_state("counts", default=torch.zeros(num_classes * num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.counts.index_add_(0, target * self.num_classes + preds, torch.ones_like(target))

    def compute(self) -> torch.Tensor:
        return self.counts.view(self.num_classes, self.num_classes)


def build_network(spec: BackboneSpec, backbone: Mapping[str, Any], num_classes: int, load_weights: bool = True) -> tuple[nn.Module, str]:
    """The torchvision network with initial weights loaded and its head replaced for our classes;
    also says which initial weights it got."""
    if spec.builder is None:
        return LogisticRegression(num_classes, input_size=int(backbone.get("input_size", 32))), "zeros"
    net = spec.builder(weights=None)
    source = "from checkpoint"
    if load_weights:
        source = load_initial_weights(net, spec, backbone.get("weights"), backbone.get("imagenet_weights", "IMAGENET1K_V1"))
    old = get_module(net, spec.head)
    replace_module(net, spec.head, nn.Linear(old.in_features, num_classes))
    dropout = backbone.get("dropout")
    if dropout is not None:
        for m in net.modules():
            if isinstance(m, nn.Dropout):
                m.p = float(dropout)
    return net, source


def class_weight_tensor(setting: Any, class_counts: Sequence[int] | None, num_classes: int) -> torch.Tensor | None:
    """``none``, ``inverse_frequency`` (n / (k * count), 0 for empty classes) or an explicit list."""
    if setting in (None, "none", "null"):
        return None
    if setting == "inverse_frequency":
        if not class_counts:
            raise LungclsError("loss.class_weights=inverse_frequency needs the train split's class counts")
        counts = torch.tensor(class_counts, dtype=torch.float)
        present = counts > 0
        w = torch.zeros(num_classes)
        w[present] = counts.sum() / (present.sum() * counts[present])
        return w
    if isinstance(setting, (list, tuple)) or hasattr(setting, "__len__") and not isinstance(setting, str):
        w = torch.tensor([float(v) for v in setting])
        if len(w) != num_classes or (w < 0).any():
            raise LungclsError(f"loss.class_weights has {len(w)} values; give {num_classes} non-negative weights, one per class")
        return w
    raise LungclsError(f"loss.class_weights={setting} must be none, inverse_frequency or a list of {num_classes} numbers")


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
        log.info("%s with finetune=%s: %d of %d parameters trainable", self.spec.name, finetune.get("name"), self.trainable_params, self.total_params)
        channels = self.spec.in_channels
        self.register_buffer("input_mean", torch.tensor(list(mean)[:channels]).view(1, channels, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(list(std)[:channels]).view(1, channels, 1, 1), persistent=False)
        loss = dict(loss or {})
        weights = class_weight_tensor(loss.get("class_weights"), class_counts, num_classes)
        self.register_buffer("class_weights", weights if weights is not None else torch.ones(num_classes), persistent=False)
        self.label_smoothing = float(loss.get("label_smoothing") or 0.0)
        if not 0 <= self.label_smoothing < 1:
            raise LungclsError(f"loss.label_smoothing={self.label_smoothing} must be in [0, 1)")
        self.confusion = nn.ModuleDict({f"{s}_": ConfusionCounts(num_classes) for s in STAGES})
        self.auroc = nn.ModuleDict({f"{s}_": MulticlassAUROC(num_classes, average=None, validate_args=False) for s in ("val", "test")})
        self.mean_loss = nn.ModuleDict({f"{s}_": MeanMetric(nan_strategy="disable") for s in STAGES})  # keys get "_": "train" is taken
        self.summaries: dict[str, dict] = {}
        self._compiled: nn.Module | None = None

    # -- model ---------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] grayscale (or RGB) images -> logits."""
        if x.shape[1] == 1 and self.spec.in_channels == 3:
            x = x.expand(-1, 3, -1, -1)
        x = (x - self.input_mean) / self.input_std
        if x.is_cuda and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        net = self._compiled if (self._compiled is not None and self.training) else self.net
        return net(x)

    @property
    def gradcam_layer(self) -> nn.Module:
        return get_module(self.net, self.spec.gradcam_layer)

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
        loss = F.cross_entropy(logits.float(), y, weight=self.class_weights, label_smoothing=self.label_smoothing)
        preds = logits.argmax(dim=1)
        self.confusion[f"{stage}_"].update(preds, y)
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

    def _epoch_end(self, stage: str) -> None:
        """Turn the epoch's confusion matrix into the per-class metrics of the design and log them."""
        cm = self.confusion[f"{stage}_"].compute().cpu().numpy().astype(int)
        loss = float(self.mean_loss[f"{stage}_"].compute()) if self.mean_loss[f"{stage}_"].update_count else float("nan")
        self.confusion[f"{stage}_"].reset()
        self.mean_loss[f"{stage}_"].reset()
        summary = summarize_confusion(cm, self.class_names, self.normal_class)
        self.summaries[stage] = summary
        values = flat_metrics(summary, stage)
        values[f"{stage}/loss"] = loss
        if f"{stage}_" in self.auroc:
            if self.auroc[f"{stage}_"].update_count:
                aurocs = self.auroc[f"{stage}_"].compute()
                for name, v in zip(self.class_names, aurocs.tolist()):
                    if v == v and cm[self.class_names.index(name)].sum() > 0:
                        values[f"{stage}/auroc/{name}"] = float(v)
            self.auroc[f"{stage}_"].reset()
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
    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise LungclsError("no parameter is trainable; choose another finetune policy")
        opt_cfg = dict(self.hparams.optimizer or {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-4})
        opt_cfg["_partial_"] = True
        try:
            optimizer = hydra.utils.instantiate(opt_cfg)(params)
        except Exception as e:
            raise LungclsError(f"cannot build optimizer {opt_cfg.get('_target_')} ({e}); check optimizer.* values") from None
        sched = dict(self.hparams.scheduler or {"name": "none"})
        name = sched.get("name", "none")
        if name == "none":
            return optimizer
        if name == "step":
            s = torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(sched["step_size"]), gamma=float(sched["gamma"]))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": s, "interval": "epoch"}}
        total = max(1, int(self.trainer.estimated_stepping_batches))
        base_lr = optimizer.param_groups[0]["lr"]
        eta_min = base_lr * float(sched.get("min_lr_ratio", 0.01))
        if name == "cosine":
            s = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=eta_min)
        elif name == "warmup_cosine":
            epochs = max(1, int(self.trainer.max_epochs or 1))
            warm = min(total - 1, max(1, round(total * float(sched.get("warmup_epochs", 1)) / epochs)))
            if warm < 1:
                s = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=eta_min)
            else:
                s = torch.optim.lr_scheduler.SequentialLR(
                    optimizer,
                    [
                        torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=warm),
                        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total - warm), eta_min=eta_min),
                    ],
                    milestones=[warm],
                )
        else:
            raise LungclsError(f"unknown scheduler '{name}'; choose one of {', '.join(SCHEDULERS)}")
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": s, "interval": "step"}}


def load_classifier(path: str, map_location: str | torch.device = "cpu") -> LungClassifier:
    """A trained model from a checkpoint file, without fetching any initial weights."""
    from pathlib import Path

    if not Path(path).is_file():
        raise LungclsError(f"checkpoint {path} does not exist; give the path of a run's checkpoints/best.ckpt")
    try:
        model = LungClassifier.load_from_checkpoint(path, map_location=map_location, load_weights=False)
    except (RuntimeError, KeyError, TypeError) as e:
        raise LungclsError(f"cannot load checkpoint {path} ({str(e).splitlines()[0]}); is it a lungcls checkpoint?") from None
    model.eval()
    return model
