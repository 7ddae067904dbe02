"""Transfer of an MNIST-pretrained student to a new data set (CIFAR-10): freeze or fine-tune.

``freeze`` keeps the patch embedding, the class token and position embeddings, the first
``frozen_blocks`` blocks and (with ``freeze_gates``) every AutoNorm gate fixed: their parameters
get ``requires_grad=False`` (so they are not in the optimizer) and their modules stay in eval mode
(AFN's running statistics and dropout do not move). ``finetune`` trains everything, the backbone
optionally at ``optim.backbone_lr_scale`` times the head's learning rate.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from autonorm.norms import gate_modules
from autonorm.tasks.classify import ClassificationTask


class TransferTask(ClassificationTask):
    """:class:`ClassificationTask` with parts of the backbone frozen (``mode="freeze"``)."""

    def __init__(
        self,
        model_cfg: dict[str, Any],
        norm_cfg: dict[str, Any],
        num_classes: int,
        optim: dict[str, Any],
        compile: bool = False,
        mode: str = "finetune",
        frozen_blocks: int = 0,
        freeze_gates: bool = False,
    ) -> None:
        super().__init__(model_cfg, norm_cfg, num_classes, optim, compile)
        if mode not in ("none", "freeze", "finetune"):
            raise ValueError(f"transfer.mode must be none, freeze or finetune, got {mode!r}")
        if not 0 <= frozen_blocks <= len(self.model.blocks):
            raise ValueError(f"transfer.frozen_blocks must be in [0, {len(self.model.blocks)}], got {frozen_blocks}")
        self.frozen: list[nn.Module] = []
        if mode == "freeze":
            self.frozen = self._select_frozen(frozen_blocks, freeze_gates)
            for module in self.frozen:
                for p in module.parameters():
                    p.requires_grad_(False)
            for name in ("cls_token", "pos_embed"):
                getattr(self.model, name).requires_grad_(False)

    def _select_frozen(self, frozen_blocks: int, freeze_gates: bool) -> list[nn.Module]:
        modules: list[nn.Module] = [self.model.patch_embed, *self.model.blocks[:frozen_blocks]]
        if freeze_gates:
            modules += gate_modules(self.model)
        return modules

    def train(self, mode: bool = True) -> "TransferTask":
        super().train(mode)
        for module in getattr(self, "frozen", []):
            module.eval()
        return self
