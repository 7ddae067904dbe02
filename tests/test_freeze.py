"""transfer=freeze inside a real Trainer.fit: the frozen part stays in eval mode and unchanged,
also in the training steps that follow a validation."""

from __future__ import annotations

from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from torch import nn

from autonorm.norms import AFN, GumbelGate
from autonorm.phases import build_task


class ModeProbe(pl.Callback):
    """Records, for every forward of a frozen module during a training step, whether any of its
    submodules was in train mode, and whether the step came after a validation."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.modules = modules
        self.calls: list[tuple[str, bool, bool]] = []
        self.validated = False
        self.gate_checks: list[bool] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for name, module in self.modules.items():
            module.register_forward_pre_hook(self._hook(name, pl_module))
            for m in module.modules():
                if isinstance(m, GumbelGate):
                    m.register_forward_hook(self._gate_hook(pl_module))

    def _hook(self, name: str, task: pl.LightningModule) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            if task.training:  # a training step (the head is in train mode)
                self.calls.append((name, any(m.training for m in module.modules()), self.validated))
        return hook

    def _gate_hook(self, task: pl.LightningModule) -> Any:
        def hook(gate: GumbelGate, args: Any, out: torch.Tensor) -> None:
            if task.training:
                logits = gate.logits(args[0])
                self.gate_checks.append(bool(torch.equal(out, (logits[:, 0] >= logits[:, 1]).to(out.dtype))))
        return hook

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.validated = True


def _fit(cfg: Any) -> tuple[Any, ModeProbe, dict[str, torch.Tensor]]:
    pl.seed_everything(0)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    task = build_task(cfg, datamodule.num_classes)
    model = task.model
    frozen = {"patch_embed": model.patch_embed, "blocks.0": model.blocks[0], "blocks.1": model.blocks[1]}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probe = ModeProbe(frozen)
    trainer = pl.Trainer(
        max_epochs=2, limit_train_batches=3, limit_val_batches=1, num_sanity_val_steps=1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[probe],
    )
    trainer.fit(task, datamodule=datamodule)
    return task, probe, before


def _frozen_keys(state: dict[str, torch.Tensor]) -> list[str]:
    return [k for k in state if k.startswith(("patch_embed.", "blocks.0.", "blocks.1.", "cls_token", "pos_embed"))]


@pytest.mark.parametrize("norm", [("norm=afn",), ("norm=autonorm", "gate=gumbel")], ids=["afn", "autonorm-gumbel"])
def test_frozen_part_stays_in_eval_and_unchanged_during_fit(make_cfg, norm):
    cfg = make_cfg(*norm, "transfer=freeze", "model=vit_micro_conv", "data=cifar10_mini", "eval=none")
    task, probe, before = _fit(cfg)
    assert probe.calls and any(after for _, _, after in probe.calls), "no training step after a validation"
    in_train = [(name, after) for name, training, after in probe.calls if training]
    assert not in_train, f"frozen modules in train mode during fit (name, after validation): {in_train[:4]}"
    after = task.model.state_dict()
    keys = _frozen_keys(before)
    assert any("running_mean" in k for k in keys)  # the conv stem's BatchNorm (and AFN's statistics)
    moved = [k for k in keys if not torch.equal(before[k], after[k])]
    assert not moved, f"frozen tensors changed during fit: {moved}"
    # the rest trained: a parameter of an unfrozen block moved
    assert not torch.equal(before["blocks.3.attn.qkv.weight"], after["blocks.3.attn.qkv.weight"])
    if norm[0] == "norm=autonorm":
        assert probe.gate_checks and all(probe.gate_checks), "a frozen Gumbel gate sampled instead of its argmax"
    else:
        assert not torch.equal(before["blocks.3.norm1.running_mean"], after["blocks.3.norm1.running_mean"])


def test_adapt_stats_updates_only_the_frozen_statistics(make_cfg):
    cfg = make_cfg("norm=afn", "transfer=freeze", "transfer.adapt_stats=true", "model=vit_micro_conv", "data=cifar10_mini", "eval=none")
    task, _, before = _fit(cfg)
    after = task.model.state_dict()
    keys = _frozen_keys(before)
    stats = [k for k in keys if "running_" in k]
    assert stats and all(not torch.equal(before[k], after[k]) for k in stats)
    params = {n for n, _ in task.model.named_parameters()}
    assert all(torch.equal(before[k], after[k]) for k in keys if k in params)


def test_freeze_fixes_the_same_part_for_every_norm(make_cfg):
    """Every norm freezes the stem and the first blocks whole; nothing else unless asked."""
    frozen_by_norm = {}
    for norm in (("norm=ln",), ("norm=dyt",), ("norm=autonorm", "gate=soft"), ("norm=afn",)):
        task = build_task(make_cfg(*norm, "transfer=freeze", "data=cifar10_mini"), 10)
        names = {n for n, p in task.model.named_parameters() if not p.requires_grad}
        assert names == {n for n, _ in task.model.named_parameters() if n.startswith(("patch_embed.", "blocks.0.", "blocks.1.")) or n in ("cls_token", "pos_embed")}
        frozen_by_norm[norm[0]] = names
    # freeze_adaptive: also the adaptive part of every norm point (AFN: encoder-decoders and
    # lambdas, not the affine; AutoNorm: the gates), in the trainable blocks too
    task = build_task(make_cfg("norm=afn", "transfer=freeze", "transfer.freeze_adaptive=true", "data=cifar10_mini"), 10)
    extra = {n for n, p in task.model.named_parameters() if not p.requires_grad} - frozen_by_norm["norm=afn"]
    afn = task.model.blocks[3].norm1
    assert isinstance(afn, AFN)
    adaptive = {f"blocks.3.norm1.{n}" for n, _ in afn.named_parameters() if n not in ("weight", "bias")}
    assert adaptive and adaptive <= extra
    assert not any(n.endswith(("norm1.weight", "norm1.bias")) for n in extra)
    task = build_task(make_cfg("norm=autonorm", "transfer=freeze", "transfer.freeze_adaptive=true", "data=cifar10_mini"), 10)
    extra = {n for n, p in task.model.named_parameters() if not p.requires_grad} - frozen_by_norm["norm=autonorm"]
    assert extra and all(".gate." in n for n in extra) and any(n.startswith("blocks.3.") for n in extra)
