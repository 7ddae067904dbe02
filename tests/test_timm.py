"""The norms as drop-in norm layers: timm's ViT with each registered norm trains and deploys;
every norm takes the keyword arguments timm and torch pass and the input shapes they use."""
from __future__ import annotations

import functools
import inspect
import re

import pytest
import torch
import yaml
from torch import nn

from autonorm.norms import NORMS, AutoNorm, deploy_model, gate_modules, norm_names
from autonorm.norms.deploy import deploy_module

from conftest import CONF, REPO

timm = pytest.importorskip("timm")

B, C = 8, 32
#: every registered norm, and AutoNorm with each gate, as a timm ``norm_layer``
LAYERS = {name: NORMS[name] for name in norm_names()} | {
    "autonorm_gumbel": functools.partial(AutoNorm, gate="gumbel"),
    "autonorm_erf": functools.partial(AutoNorm, squash="erf"),
}


def _vit(norm_layer, **kw) -> nn.Module:
    """A small timm ViT (32x32 images, 16 patches, 2 blocks) with ``norm_layer`` at every norm point."""
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=C, depth=2,
        num_heads=2, num_classes=10, norm_layer=norm_layer, **kw,
    )


@pytest.mark.parametrize("name", list(LAYERS))
def test_timm_vit_with_each_norm_trains_and_deploys(name: str) -> None:
    model = _vit(LAYERS[name])
    cls = LAYERS[name].func if isinstance(LAYERS[name], functools.partial) else LAYERS[name]
    assert sum(isinstance(m, cls) for m in model.modules()) == 5  # 2 per block and the final norm
    x, y = torch.randn(B, 3, 32, 32), torch.arange(B) % 10
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(20):  # overfit one batch: the loss must fall
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        if not losses:  # the first backward reaches every trainable parameter
            missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
            assert not missing, missing
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.75 * losses[0], losses
    model.eval()
    deployed = deploy_model(model)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x), rtol=1e-4, atol=1e-5)
    assert bool(deployed.deploy_info) == (deploy_module(LAYERS[name](C)) is not None)  # replaced where it has a deploy form


def test_timm_pooled_features_reach_autonorm_as_one_token_per_sample() -> None:
    """global_pool="avg" moves the final norm after pooling: AutoNorm gets (B, C)."""
    model = _vit(AutoNorm, global_pool="avg").eval()
    assert isinstance(model.fc_norm, AutoNorm)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
    assert out.shape == (4, 10) and feats.shape == (4, C)
    assert model.fc_norm.last_gate.shape == (4,)


# ----------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("name", list(LAYERS))
def test_each_norm_reads_flat_and_channels_last_input_as_tokens(name: str) -> None:
    norm = LAYERS[name](C).eval()
    x4 = torch.randn(2, 3, 5, C)  # channels-last (B, H, W, C)
    x2 = torch.randn(6, C)  # (B, C)
    with torch.no_grad():
        tokens = norm(x4.reshape(2, 15, C))
        torch.testing.assert_close(norm(x4), tokens.reshape(x4.shape), rtol=0, atol=0)
        per_sample = norm(x2.unsqueeze(1)).squeeze(1)
        torch.testing.assert_close(norm(x2), per_sample, rtol=0, atol=0)
        holder = nn.Sequential(norm)
        dep = deploy_model(holder)
        torch.testing.assert_close(dep(x4), tokens.reshape(x4.shape), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(dep(x2), per_sample, rtol=1e-5, atol=1e-6)
    if isinstance(norm, AutoNorm):
        with pytest.raises(ValueError, match=r"\(B, C\), \(B, N, C\) or \(B, H, W, C\)"):
            norm(torch.randn(C))


# ------------------------------------------------------------------------- keyword arguments
@pytest.mark.parametrize("name", norm_names())
def test_each_norm_takes_the_keyword_arguments_of_a_norm_layer(name: str) -> None:
    cls = NORMS[name]
    m = cls(C, eps=1e-5, elementwise_affine=True, bias=True, device="cpu", dtype=torch.float64)
    floats = [t for t in list(m.parameters()) + list(m.buffers()) if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float64 for t in floats)
    assert m(torch.randn(4, 3, C, dtype=torch.float64)).dtype == torch.float64
    on_meta = cls(C, device="meta")
    assert all(p.device.type == "meta" for p in on_meta.parameters())

    plain = cls(C, elementwise_affine=False)
    affine = [f"{p}{n}" for p in ("", "ln.", "dyt.") for n in ("weight", "bias")]
    assert not set(affine) & set(dict(plain.named_parameters())) and not set(affine) & set(plain.state_dict())
    with_affine = set(affine) & set(dict(cls(C).named_parameters()))
    assert with_affine and all(n.endswith("weight") for n in with_affine & set(dict(cls(C, bias=False).named_parameters())))
    # without the affine the output is the normalized input itself: as with weight 1, bias 0
    ref = cls(C)
    ref.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(4, 3, C)
    ref.eval()
    plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), ref(x), rtol=0, atol=0)
    x.requires_grad_(True)
    plain.train()(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", norm_names())
def test_python_default_impl_is_the_configs(name: str) -> None:
    params = inspect.signature(NORMS[name]).parameters
    cfg = yaml.safe_load((CONF / "norm" / f"{name}.yaml").read_text())
    assert ("impl" in params) == ("impl" in cfg)
    if "impl" in params:
        assert params["impl"].default == cfg["impl"]


# ------------------------------------------------------------------------------- the README
def test_readme_example_runs() -> None:
    """The code of the README section "Use the norms in your own model" runs as written."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Use the norms in your own model", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks
    scope: dict = {}
    exec(compile("\n".join(blocks), "README.md", "exec"), scope)  # noqa: S102
    assert gate_modules(scope["model"])
