"""Supervised image classification: the student's MNIST pretraining and plain training runs.

The task owns the model (built from its ``model`` and ``norm`` configs, which are stored as
hyperparameters so that :meth:`ClassificationTask.load_from_checkpoint` needs nothing else),
the loss, torchmetrics accuracy, and AdamW with linear warmup and cosine decay per step.
Weight decay is applied only to matrices: norm, gate and bias parameters, the class token and
the position embeddings are excluded (as in nanoGPT and timm).
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Optional

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from autonorm.build import build_model
from autonorm.norms import is_norm

_NO_DECAY_NAMES = ("pos_embed", "cls_token")


class WarmupCosine:
    """Learning-rate multiplier: linear warmup to 1, then cosine decay to ``min_ratio``."""

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float) -> None:
        self.warmup_steps = max(0, int(warmup_steps))
        self.total_steps = max(1, int(total_steps))
        self.min_ratio = float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _is_norm(module: nn.Module) -> bool:
    return is_norm(module)


class ClassificationTask(pl.LightningModule):
    """Cross-entropy classification of a ViT with an injected norm.

    Args:
        model_cfg: the ``model`` config group (a ``_target_`` dict).
        norm_cfg: the ``norm`` config group (a ``_partial_`` ``_target_`` dict).
        num_classes: classes of the data set (sets the head).
        optim: the ``optim`` config group: lr, weight_decay, betas, warmup_epochs, min_lr_ratio,
            label_smoothing, backbone_lr_scale.
        compile: wrap the model's forward in ``torch.compile``.
    """

    def __init__(
        self,
        model_cfg: dict[str, Any],
        norm_cfg: dict[str, Any],
        num_classes: int,
        optim: dict[str, Any],
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = build_model(model_cfg, norm_cfg, num_classes)
        self.optim_cfg = dict(optim)
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self._compiled: Optional[nn.Module] = None
        self._compile = compile

    # ---- forward -------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self._compile and self._compiled is None:
            # Kept outside the module registry so state_dict keys stay those of the plain model.
            object.__setattr__(self, "_compiled", torch.compile(self.model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # not `self._compiled or self.model`: a compiled module's truth test raises (it has a __len__)
        return (self.model if self._compiled is None else self._compiled)(x)

    def classification_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, label_smoothing=float(self.optim_cfg.get("label_smoothing", 0.0)))

    def training_loss(self, x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss minimised in training; distillation overrides this."""
        return self.classification_loss(logits, y)

    # ---- steps ---------------------------------------------------------------------------
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.training_loss(x, logits, y)
        self.train_acc(logits.detach(), y)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", self.train_acc, prog_bar=True)
        return loss

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, metric: MulticlassAccuracy) -> None:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        metric(logits, y)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", sync_dist=True)
        self.log(f"{stage}/acc", metric, prog_bar=stage == "val")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_acc)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_acc)

    # ---- optimisation --------------------------------------------------------------------
    def trainable_named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.model.named_parameters() if p.requires_grad)

    def _no_decay_names(self) -> set[str]:
        """1-D parameters, embeddings, and everything inside a norm (gates, AFN encoder-decoders)."""
        names = {n for n, p in self.model.named_parameters() if p.ndim <= 1 or n in _NO_DECAY_NAMES}
        for mod_name, module in self.model.named_modules():
            if _is_norm(module):
                names.update(f"{mod_name}.{n}" for n, _ in module.named_parameters())
        return names

    def param_groups(self) -> list[dict[str, Any]]:
        """AdamW groups: (decay | no decay) x (head | backbone, with ``backbone_lr_scale``)."""
        lr = float(self.optim_cfg["lr"])
        scale = float(self.optim_cfg.get("backbone_lr_scale", 1.0))
        no_decay = self._no_decay_names()
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for name, p in self.trainable_named_parameters():
            key = (name not in no_decay, name.startswith("head."))
            groups.setdefault(key, []).append(p)
        out = []
        for (decay, is_head), params in sorted(groups.items()):
            out.append(
                {
                    "params": params,
                    "weight_decay": float(self.optim_cfg["weight_decay"]) if decay else 0.0,
                    "lr": lr if is_head else lr * scale,
                }
            )
        return out

    def optimizer(self) -> torch.optim.AdamW:
        """AdamW over :meth:`param_groups` with ``optim.lr``, ``optim.betas`` and ``optim.foreach``."""
        return torch.optim.AdamW(
            self.param_groups(),
            lr=float(self.optim_cfg["lr"]),
            betas=tuple(self.optim_cfg.get("betas", (0.9, 0.999))),
            foreach=bool(self.optim_cfg.get("foreach", True)),
        )

    def configure_optimizers(self) -> dict[str, Any]:
        opt = self.optimizer()
        total = int(self.trainer.estimated_stepping_batches)
        epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        steps_per_epoch = max(1, total // epochs)
        warmup = int(float(self.optim_cfg.get("warmup_epochs", 0.0)) * steps_per_epoch)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, WarmupCosine(min(warmup, total // 2), total, float(self.optim_cfg.get("min_lr_ratio", 0.0)))
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
