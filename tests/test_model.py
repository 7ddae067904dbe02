"""The ViT with every norm: it learns, attention maps are real, optimizer groups are right."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from autonorm.build import build_model
from autonorm.data import ImageDataModule
from autonorm.norms import AFN, AutoNorm, DyT, LayerNorm
from autonorm.tasks import ClassificationTask

MODEL = {"_target_": "autonorm.models.VisionTransformer", "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0, "patch_size": 8}
NORMS = {
    "ln": {"_target_": "autonorm.norms.LayerNorm"},
    "dyt": {"_target_": "autonorm.norms.DyT", "alpha_init": 0.5},
    "autonorm-soft": {"_target_": "autonorm.norms.AutoNorm", "gate": "soft"},
    "autonorm-gumbel": {"_target_": "autonorm.norms.AutoNorm", "gate": "gumbel"},
    "afn": {"_target_": "autonorm.norms.AFN"},
}
OPTIM = {"lr": 3e-3, "weight_decay": 0.05, "warmup_epochs": 0.0, "min_lr_ratio": 0.0}


@pytest.fixture(scope="module")
def mini_batch():
    dm = ImageDataModule(name="mnist_mini", batch_size=64, val_size=500, seed=0, mean=[0.1307] * 3, std=[0.3081] * 3)
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def _train_losses(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 40) -> list[float]:
    """Full-batch AdamW steps on one batch; the loss after each."""
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return losses


@pytest.mark.parametrize("norm", list(NORMS))
def test_a_few_steps_on_mini_data_lower_the_loss(norm, mini_batch):
    torch.manual_seed(0)
    x, y = mini_batch
    model = build_model(MODEL, NORMS[norm], num_classes=10)
    losses = _train_losses(model, x, y)
    assert sum(losses[-3:]) / 3 < 0.75 * sum(losses[:3]) / 3, losses


def test_every_norm_point_gets_the_injected_norm():
    for name, cls in [("ln", LayerNorm), ("dyt", DyT), ("autonorm-soft", AutoNorm), ("afn", AFN)]:
        model = build_model(MODEL, NORMS[name], num_classes=10)
        points = model.norm_points()
        assert len(points) == 2 * MODEL["depth"] + 1
        assert all(isinstance(m, cls) for _, m in points)


def test_attention_maps_are_softmax_rows_and_match_the_fused_forward():
    torch.manual_seed(0)
    model = build_model({**MODEL, "attention": "sdpa"}, NORMS["ln"], num_classes=10).eval()
    x = torch.randn(3, 3, 32, 32)
    maps = model.get_attention_maps(x)
    n_tokens = 1 + (32 // MODEL["patch_size"]) ** 2
    assert len(maps) == MODEL["depth"] and maps[0].shape == (3, MODEL["num_heads"], n_tokens, n_tokens)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(3, MODEL["num_heads"], n_tokens))
    # the explicit-softmax path computes the same function as the fused one
    feats = model._tokens(x)
    for block in model.blocks:
        fused = block(feats)
        explicit, _ = block.forward_with_attention(feats)
        torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-4)
        feats = fused


def test_no_weight_decay_on_norm_gate_bias_and_embedding_parameters():
    task = ClassificationTask(MODEL, NORMS["autonorm-gumbel"], 10, OPTIM)
    no_decay = {id(p) for g in task.param_groups() if g["weight_decay"] == 0 for p in g["params"]}
    decay = {id(p) for g in task.param_groups() if g["weight_decay"] > 0 for p in g["params"]}
    named = dict(task.model.named_parameters())
    for name, p in named.items():
        expect_no_decay = p.ndim <= 1 or ".norm" in name or name.startswith("norm.") or name in ("pos_embed", "cls_token")
        assert (id(p) in no_decay) == expect_no_decay, name
        assert (id(p) in decay) != expect_no_decay, name
    assert any(".gate." in n and p.ndim == 2 and id(p) in no_decay for n, p in named.items())


@pytest.mark.parametrize("patch", [2, 4, 8])
def test_conv_stem_gives_the_patch_grid_and_learns(patch, mini_batch):
    torch.manual_seed(0)
    cfg = {**MODEL, "patch_size": patch, "stem": "conv", "stem_channels": 8}
    model = build_model(cfg, NORMS["autonorm-soft"], num_classes=10)
    x, y = mini_batch
    tokens = model.patch_embed(x)
    assert tokens.shape == (x.shape[0], (32 // patch) ** 2, MODEL["embed_dim"])
    convs = [m for m in model.patch_embed.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == patch.bit_length() - 1 + 1  # stride-2 convs, then the 1x1 projection
    # the stem's BatchNorm is not a studied norm point
    assert len(model.norm_points()) == 2 * MODEL["depth"] + 1
    losses = _train_losses(model, x, y)
    assert sum(losses[-3:]) / 3 < 0.85 * sum(losses[:3]) / 3, losses


def test_conv_stem_rejects_a_patch_size_that_is_not_a_power_of_two():
    from autonorm.models.vit import ConvStem, VisionTransformer

    with pytest.raises(ValueError, match="power of two"):
        ConvStem(32, 6, 3, 32)
    with pytest.raises(ValueError, match="model.stem"):
        VisionTransformer(stem="hexagon")


def test_explicit_and_sdpa_attention_compute_the_same_function_and_gradients():
    torch.manual_seed(0)
    ref = build_model({**MODEL, "attention": "sdpa"}, NORMS["autonorm-soft"], num_classes=10).train()
    alt = build_model({**MODEL, "attention": "explicit"}, NORMS["autonorm-soft"], num_classes=10).train()
    alt.load_state_dict(ref.state_dict())
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 3])
    for m in (ref, alt):
        F.cross_entropy(m(x), y).backward()
    torch.testing.assert_close(alt(x), ref(x), atol=1e-5, rtol=1e-4)
    for (name, p), (_, q) in zip(ref.named_parameters(), alt.named_parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-3, msg=lambda m, name=name: f"{name}: {m}")


def test_auto_attention_is_explicit_on_cpu_for_short_sequences_only(monkeypatch):
    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(2, 3, 32, 32)
    short = build_model({**MODEL, "patch_size": 8}, NORMS["ln"], num_classes=10)  # 17 tokens
    short(x)
    assert calls == []
    long_ = build_model({**MODEL, "patch_size": 4}, NORMS["ln"], num_classes=10)  # 65 tokens
    long_(x)
    assert len(calls) == MODEL["depth"]
    with pytest.raises(Exception, match="model.attention='flash': choose one of"):  # wrapped by Hydra
        build_model({**MODEL, "attention": "flash"}, NORMS["ln"], num_classes=10)

