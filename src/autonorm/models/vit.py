"""A compact Vision Transformer whose every norm point is injected.

The model follows "An Image is Worth 16x16 Words" (Dosovitskiy et al., 2021): patch embedding,
a class token, learned position embeddings, pre-norm blocks of multi-head self-attention and an
MLP, a final norm and a linear head. Like timm's ``VisionTransformer``, the normalisation is
passed in as ``norm_layer`` — a callable ``dim -> nn.Module`` — so LayerNorm, DyT, AutoNorm and
AFN all plug into the same three places (``norm1`` and ``norm2`` of every block, and the final
``norm``) without the model knowing which one it got.

Attention (``attention=``): PyTorch's fused ``scaled_dot_product_attention`` (``sdpa``), the
explicit softmax (``explicit``), or ``auto`` (the default): explicit on CPU for short sequences,
where it is faster (on the 2-core CPU, forward + backward: 1.9 vs 5.0 ms for 17 tokens, 12.9 vs
15.2 ms for 65 tokens at batch 128), fused elsewhere. Attention maps
(:meth:`get_attention_maps`) always use the explicit path.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

NormLayer = Callable[[int], nn.Module]

#: ``model.attention``: ``sdpa`` (``F.scaled_dot_product_attention``), ``explicit`` (softmax of
#: ``q k^T`` times ``v``, two matmuls) or ``auto`` (explicit on CPU up to EXPLICIT_MAX_TOKENS).
ATTENTION_IMPLS: tuple[str, ...] = ("auto", "sdpa", "explicit")
EXPLICIT_MAX_TOKENS = 32


class PatchEmbed(nn.Module):
    """Split an image into non-overlapping ``patch_size`` squares and project each to ``dim``.

    Subclasses change only the projection (:meth:`_make_proj`); the token grid, the input check
    and the (B, N, C) layout are shared."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        if img_size % patch_size != 0:
            raise ValueError(
                f"model.patch_size={patch_size} does not divide the image size {img_size}"
            )
        self.img_size = img_size
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = self._make_proj(patch_size, in_chans, dim)

    def _make_proj(self, patch_size: int, in_chans: int, dim: int) -> nn.Module:
        return nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"expected {self.img_size}x{self.img_size} images, got {tuple(x.shape[-2:])}"
            )
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, C)


class ConvStem(PatchEmbed):
    """A convolutional stem in place of the patchify layer ("Early Convolutions Help Transformers
    See Better", Xiao et al., 2021): ``log2(patch_size)`` stride-2 3x3 convolutions (BatchNorm +
    ReLU, channels doubling from ``channels``), then a 1x1 projection to ``dim``. It yields the
    same token grid as a ``patch_size`` patchify, so the transformer and its norm points are
    unchanged; it makes the model much faster to train. The stem's BatchNorm is shared by every
    norm variant and is not one of the studied norm points."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, dim: int, channels: int = 32) -> None:
        if patch_size < 2 or patch_size & (patch_size - 1):
            raise ValueError(f"model.patch_size={patch_size} must be a power of two >= 2 with model.stem=conv")
        self._channels = int(channels)
        super().__init__(img_size, patch_size, in_chans, dim)

    def _make_proj(self, patch_size: int, in_chans: int, dim: int) -> nn.Module:
        layers: list[nn.Module] = []
        c_in, c_out = in_chans, self._channels
        for _ in range(patch_size.bit_length() - 1):
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            c_in, c_out = c_out, c_out * 2
        layers.append(nn.Conv2d(c_in, dim, kernel_size=1))
        return nn.Sequential(*layers)


class Attention(nn.Module):
    """Multi-head self-attention over all tokens."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, attention: str = "auto") -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"model.embed_dim={dim} is not divisible by model.num_heads={num_heads}")
        if attention not in ATTENTION_IMPLS:
            raise ValueError(f"model.attention={attention!r}: choose one of {list(ATTENTION_IMPLS)}")
        self.attention = attention
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def explicit(self, x: torch.Tensor) -> bool:
        """Whether this call computes the softmax explicitly (``attention``; ``auto``: on CPU for
        up to ``EXPLICIT_MAX_TOKENS`` tokens, where the two matmuls and a softmax beat the fused
        kernel, forward and backward, measured on 17 to 65 tokens; fused elsewhere)."""
        if self.attention == "auto":
            return x.device.type == "cpu" and x.shape[1] <= EXPLICIT_MAX_TOKENS
        return self.attention == "explicit"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self._qkv(x)
        drop = self.attn_drop if self.training else 0.0
        if self.explicit(x):
            out, _ = self._explicit(q, k, v, drop)
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Explicit-softmax path returning the output and the (B, heads, N, N) attention."""
        b, n, c = x.shape
        q, k, v = self._qkv(x)
        out, attn = self._explicit(q, k, v, 0.0)
        return self.proj(out.transpose(1, 2).reshape(b, n, c)), attn

    def _explicit(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, drop: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``softmax(q k^T / sqrt(d)) v`` (B, heads, N, d) and the attention (before dropout)."""
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return (F.dropout(attn, drop) if drop > 0 else attn) @ v, attn


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, norm_layer: NormLayer, drop: float = 0.0, attention: str = "auto"
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, attention=attention)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, attn = self.attn.forward_with_attention(self.norm1(x))
        x = x + out
        return x + self.mlp(self.norm2(x)), attn


class VisionTransformer(nn.Module):
    """ViT classifier with an injected ``norm_layer`` at every norm point.

    Args:
        img_size: input height and width (square images).
        patch_size: side of each square patch; must divide ``img_size``.
        in_chans: input channels (3: MNIST is served as RGB so it transfers to CIFAR-10).
        num_classes: size of the linear head.
        embed_dim, depth, num_heads, mlp_ratio: transformer shape.
        norm_layer: ``dim -> nn.Module``, used for ``norm1``/``norm2`` of each block and the final norm.
        drop_rate: dropout in the MLPs and before the head.
        stem: ``patch`` (a linear patchify, the original ViT) or ``conv`` (:class:`ConvStem`).
        stem_channels: width of the first stem convolution (``stem=conv``).
        attention: ``auto`` | ``sdpa`` | ``explicit`` (see the module docstring).
    """

    def __init__(
        self,
        img_size: int = 32,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 10,
        embed_dim: int = 64,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        norm_layer: NormLayer = nn.LayerNorm,
        drop_rate: float = 0.0,
        stem: str = "patch",
        stem_channels: int = 32,
        attention: str = "auto",
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        if stem == "patch":
            self.patch_embed: nn.Module = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        elif stem == "conv":
            self.patch_embed = ConvStem(img_size, patch_size, in_chans, embed_dim, stem_channels)
        else:
            raise ValueError(f"model.stem={stem!r}: choose patch or conv")
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, norm_layer, drop_rate, attention) for _ in range(depth)
        )
        self.norm = norm_layer(embed_dim)
        self.head_drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def reset_head(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one (used by transfer)."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes).to(self.pos_embed.device)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1) + self.pos_embed

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._tokens(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(self.forward_features(x)[:, 0]))

    @torch.no_grad()
    def get_attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Softmax attention of every block, each (B, heads, N, N); token 0 is the class token."""
        x = self._tokens(x)
        maps = []
        for block in self.blocks:
            x, attn = block.forward_with_attention(x)
            maps.append(attn)
        return maps

    def deploy(self) -> "VisionTransformer":
        """A new model (deep copy, eval mode) that computes the same eval outputs fastest.

        Every norm point is replaced by its inference form (see :mod:`autonorm.kernels.deploy`):
        DyT with precomputed constants, AFN folded into a per-channel affine, soft AutoNorm as one
        fused blend, hard (Gumbel) AutoNorm as a per-sample dispatch to exactly one branch. Exact
        for every input (up to float rounding). ``self`` is not modified.
        """
        from ..norms.deploy import deploy_model

        return deploy_model(self)  # type: ignore[return-value]

    def norm_points(self) -> list[tuple[str, nn.Module]]:
        """Every injected norm module, in forward order, with its qualified name."""
        points = []
        for i, block in enumerate(self.blocks):
            points.append((f"blocks.{i}.norm1", block.norm1))
            points.append((f"blocks.{i}.norm2", block.norm2))
        points.append(("norm", self.norm))
        return points
