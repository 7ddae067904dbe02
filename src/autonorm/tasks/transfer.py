"""Transfer of an MNIST-pretrained student to a new data set (CIFAR-10): freeze or fine-tune.

``freeze`` fixes the same part of the network whatever the norm: the stem (patch embedding, or
the conv stem with its BatchNorm), the class token and position embeddings, and the first
``frozen_blocks`` blocks with everything inside them (attention, MLP, and each norm point whole:
LayerNorm's affine, DyT's alpha and affine, AutoNorm's branches and gate, AFN's affine,
encoder-decoders, lambdas and running statistics). Their parameters get ``requires_grad=False``
(so they are not in the optimizer) and their modules stay in eval mode for the whole fit: no
dropout, running statistics not updated (BatchNorm uses them; AFN normalises as at evaluation,
see its ``eval_stats``), Gumbel gates take their argmax instead of sampling. Lightning switches modules to train mode at the start of fit and
restores the modes it saw after every validation, setting ``.training`` directly, so eval mode is
re-applied at the start of every training batch (:meth:`TransferTask.on_train_batch_start`).

Options: ``freeze_adaptive=True`` also fixes the adaptive part of every norm point outside the
frozen blocks (AutoNorm gates; AFN encoder-decoders and lambdas): the same for every norm that
has one. ``adapt_stats=True`` lets the normalisation statistics inside the frozen part follow the
new data (BatchNorm and AFN modules there normalise with batch statistics and update their
running statistics; AFN's encoder dropout stays off; their parameters stay fixed). ``finetune`` trains everything,
the backbone optionally at ``optim.backbone_lr_scale`` times the head's learning rate.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from autonorm.norms import AFN, gate_modules
from autonorm.tasks.classify import ClassificationTask


def _adaptive_modules(model: nn.Module) -> list[nn.Module]:
    """The adaptive part of every norm point: AutoNorm gates, AFN encoder-decoders and lambdas."""
    modules: list[nn.Module] = list(gate_modules(model))
    for m in model.modules():
        if isinstance(m, AFN):
            modules.append(_AFNAdaptive(m))
    return modules


class _AFNAdaptive(nn.Module):
    """A view of one AFN's encoder-decoders and lambdas (everything but its affine and buffers)."""

    def __init__(self, afn: AFN) -> None:
        super().__init__()
        object.__setattr__(self, "afn", afn)  # not registered: a view, not a second owner

    def parameters(self, recurse: bool = True):  # type: ignore[override]
        return (p for n, p in self.afn.named_parameters() if n not in ("weight", "bias"))

    def train(self, mode: bool = True) -> "_AFNAdaptive":
        for name, child in self.afn.named_children():
            child.train(mode)  # encoder-decoders and their dropout; the statistics follow the AFN
        return self


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
        freeze_adaptive: bool = False,
        adapt_stats: bool = False,
    ) -> None:
        super().__init__(model_cfg, norm_cfg, num_classes, optim, compile)
        if mode not in ("none", "freeze", "finetune"):
            raise ValueError(f"transfer.mode must be none, freeze or finetune, got {mode!r}")
        if not 0 <= frozen_blocks <= len(self.model.blocks):
            raise ValueError(f"transfer.frozen_blocks must be in [0, {len(self.model.blocks)}], got {frozen_blocks}")
        self.adapt_stats = bool(adapt_stats)
        self.frozen: list[nn.Module] = []
        if mode == "freeze":
            self.frozen = self._select_frozen(frozen_blocks, freeze_adaptive)
            for module in self.frozen:
                for p in module.parameters():
                    p.requires_grad_(False)
            for name in ("cls_token", "pos_embed"):
                param = getattr(self.model, name, None)
                if isinstance(param, torch.Tensor):
                    param.requires_grad_(False)

    def _select_frozen(self, frozen_blocks: int, freeze_adaptive: bool) -> list[nn.Module]:
        modules: list[nn.Module] = [self.model.patch_embed, *self.model.blocks[:frozen_blocks]]
        if freeze_adaptive:
            modules += _adaptive_modules(self.model)
        return modules

    def hold_frozen_in_eval(self) -> None:
        """Put the frozen modules in eval mode (with ``adapt_stats``: their BatchNorm and AFN
        modules in train mode, so only their statistics adapt)."""
        for module in self.frozen:
            module.train(False)
        if self.adapt_stats:
            for module in self.frozen:
                if isinstance(module, _AFNAdaptive):
                    continue  # an AFN outside the frozen part keeps its own statistics' mode
                for m in module.modules():
                    if isinstance(m, (nn.modules.batchnorm._BatchNorm, AFN)):
                        m.training = True  # statistics only: the AFN's encoder dropout stays off

    def train(self, mode: bool = True) -> "TransferTask":
        super().train(mode)
        if mode:
            self.hold_frozen_in_eval()
        return self

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.hold_frozen_in_eval()
