"""AutoNorm: a per-sample, learned mixture of LayerNorm and Dynamic Tanh."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .derf import Derf
from .dyt import DyT, dynamic_tanh
from .impl import DEFAULT_IMPL, check_impl, fast_path
from .gates import GumbelGate, SoftGate
from .layer_args import check_dim, place
from .ln import LayerNorm
from .registry import register_norm

GATES: tuple[str, ...] = ("soft", "gumbel")
#: the squashing branch: DyT's tanh or Derf's erf
SQUASHES: tuple[str, ...] = ("tanh", "erf")


def _display(cfg: dict) -> str:
    """``AutoNorm-<gate>``, ``-erf`` appended when the squashing branch is Derf."""
    erf = "-erf" if cfg.get("squash", "tanh") == "erf" else ""
    return f"AutoNorm-{cfg.get('gate', 'soft')}{erf}"


GATE_FEATURES: tuple[str, ...] = ("mean", "mean_scale")
_SCALE_EPS = 1e-6


def token_summary(x: torch.Tensor, impl: str = "eager", features: str = "mean") -> torch.Tensor:
    """The gate's input ``h`` for tokens ``x`` (B, N, C).

    * ``"mean"``: ``h = m = x.mean(dim=1)`` (B, C), the first moment over tokens;
    * ``"mean_scale"``: ``h = [m / r, log r]`` (B, 2C) with ``r = sqrt(mean over tokens of x^2 +
      1e-6)`` per channel: the token scale (log RMS), which is what separates LayerNorm (scale
      removed) from DyT (scale kept, squashed), and the mean relative to it (in [-1, 1]), so the
      input does not grow with the residual stream's magnitude.

    The moments are the ops ``"token_mean"`` and ``"token_moments"`` (:mod:`.impl`; with
    ``impl="fused"`` on float32 CPU input the C++ kernels: one read of ``x`` for both moments and
    one pass for their gradient; with ``impl="auto"`` where they were measured faster). Deployed
    copies call this same function, so their gate decisions are bit-identical."""
    if features == "mean":
        return (fast_path("token_mean", impl) or token_mean)(x)
    m, q = (fast_path("token_moments", impl) or token_moments)(x)
    r = torch.sqrt(q + _SCALE_EPS)
    return torch.cat([m / r, torch.log(r)], dim=-1)


def token_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean over tokens ``x.mean(dim=1)`` (B, C) of ``x`` (B, N, C)."""
    return x.mean(dim=1)


def token_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The first two moments over tokens of ``x`` (B, N, C): ``(x.mean(dim=1), x.square().mean(dim=1))``."""
    return x.mean(dim=1), x.square().mean(dim=1)


def mix(ln_out: torch.Tensor, squash_out: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``a * ln_out + (1 - a) * squash_out`` with ``a`` (B,) per sample, in the promoted dtype:
    ``lerp(start, end, w) = start + w * (end - start)``, exact at ``a = 0`` and ``a = 1``."""
    dtype = torch.promote_types(ln_out.dtype, squash_out.dtype)
    return torch.lerp(squash_out.to(dtype), ln_out.to(dtype), a.to(dtype).view(-1, 1, 1))


def blend(
    x: torch.Tensor,
    a: torch.Tensor,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor,
    eps: float,
    alpha: torch.Tensor,
    dyt_weight: torch.Tensor,
    dyt_bias: torch.Tensor,
) -> torch.Tensor:
    """The AutoNorm blend with the DyT branch, ``a LN(x) + (1 - a) DyT(x)`` for ``x`` (B, N, C)
    and ``a`` (B,): the eager formula of the op ``"blend"`` (what its fast paths compute)."""
    ln_out = F.layer_norm(x, (x.shape[-1],), ln_weight, ln_bias, eps)
    return mix(ln_out, dynamic_tanh(x, alpha, dyt_weight, dyt_bias), a)


def gate_input_dim(dim: int, features: str) -> int:
    """Width of :func:`token_summary`'s output for ``dim`` channels."""
    return dim * (2 if features == "mean_scale" else 1)


def as_tokens(x: torch.Tensor) -> torch.Tensor:
    """``x`` (B, ..., C) as tokens (B, N, C): (B, C) is one token per sample, channels-last
    (B, H, W, C) has H * W tokens; a view where possible."""
    if x.dim() < 2:
        raise ValueError(f"AutoNorm expects (B, C), (B, N, C) or (B, H, W, C) input, got shape {tuple(x.shape)}")
    return x if x.dim() == 3 else x.reshape(x.shape[0], -1, x.shape[-1])


FREEZE_BRANCHES: tuple[Optional[str], ...] = (None, "ln", "dyt")


@register_norm("autonorm", display=_display, logs={"gate": "last_gate", "alpha": "dyt.alpha", "shift": "dyt.shift"})
class AutoNorm(nn.Module):
    """Adaptive normalization that lets each sample choose between LayerNorm and DyT.

    Method
    ------
    For tokens ``x`` of shape (B, N, C) the layer keeps two normalization branches,

    * ``LN(x)``  -- LayerNorm over channels (statistics per token), and
    * ``DyT(x) = weight * tanh(alpha * x) + bias`` -- Dynamic Tanh (Zhu et al., 2025,
      "Transformers without Normalization"), a statistics-free element-wise squashing,

    and a small gate that looks at a per-sample summary ``h`` of the layer's input over tokens
    (``gate_features="mean"``: the mean ``x.mean(dim=1)`` (B, C); ``"mean_scale"``: the mean
    relative to the token RMS and the log RMS per channel (B, 2C), see :func:`token_summary`)
    and returns a mixing weight ``a`` (B,) in [0, 1]:

        out = a * LN(x) + (1 - a) * DyT(x),        a broadcast as (B, 1, 1).

    Gates (``gate=``):

    * ``"soft"``:   ``a = sigmoid(w^T h + b)`` (a continuous blend, strictly inside (0, 1));
    * ``"gumbel"``: two logits, straight-through Gumbel-softmax with temperature ``tau`` in
      training (``a`` exactly 0 or 1 per sample, i.e. a hard choice of one branch, with
      gradients through the relaxation) and deterministic argmax in eval.

    ``gate_hidden > 0`` makes the gate a Linear-GELU-Linear MLP instead of one Linear. Gates are
    initialised so that ``a`` starts near 0.5 (soft) / the two logits start almost equal (gumbel).

    Baselines via ``freeze_branch``: ``"ln"`` freezes the LayerNorm branch's parameters
    (``requires_grad=False``; the "OnlyDyT" baseline) and ``"dyt"`` freezes DyT's parameters
    (the "OnlyLayerNorm" baseline). The gate itself always stays trainable and still blends the
    frozen branch in (the rows' original definitions; they are not single-norm models).

    ``alpha_param`` is passed to the inner DyT (``"direct"`` or ``"positive"``, see
    :class:`~autonorm.norms.DyT`).

    Analysis hooks: ``last_gate`` holds a detached copy (B,) of the last forward's ``a`` (None
    before the first forward); setting ``gate_override`` to a float in [0, 1] makes ``a`` that
    constant for every sample (the gate is then not evaluated; 1.0 returns exactly ``LN(x)``,
    0.0 exactly ``DyT(x)``). ``None`` restores the learned gate.

    Cost: ``h`` is computed once from ``x`` (one reduction over tokens), both branches are
    evaluated once, and the blend is a single fused ``torch.lerp``.

    ``impl`` selects how the blend is computed (the gate is always plain PyTorch; see
    :mod:`.impl`, the fast paths are :mod:`autonorm.kernels`' op ``"blend"``): ``"eager"``
    (:func:`blend`, the reference above), ``"fused"`` (C++ kernels or one custom autograd
    Function for ``a LN(x) + (1-a) DyT(x)`` with an analytic backward, equal up to float
    rounding), ``"compiled"`` (``torch.compile`` of :func:`blend`) or ``"auto"`` (the default: the
    fastest, measured). The inner ``.dyt`` uses the same ``impl``. For inference, see
    :func:`autonorm.norms.deploy.deploy_model` (per-sample dispatch for hard gates).

    ``squash="erf"`` replaces the DyT branch by Derf, ``weight * erf(alpha * x + shift) + bias``
    (Chen et al., 2025, "Stronger Normalization-Free Transformers"), kept under the same
    attribute ``.dyt`` (so ``freeze_branch="dyt"``, ``gate_override=0.0`` and the logged
    ``alpha`` mean the squashing branch either way); the blend then runs eagerly whatever ``impl``
    (the fused kernels compute tanh) and :func:`~autonorm.norms.deploy.deploy_model` keeps it as is.

    A drop-in norm layer: (B, C) input is one token per sample, channels-last (B, H, W, C) input
    has H * W tokens; ``eps`` is the LayerNorm branch's, ``elementwise_affine`` / ``bias`` apply
    to both branches, ``device`` / ``dtype`` to every parameter.
    """

    last_gate: Optional[torch.Tensor]
    impl: str = "eager"

    def __init__(
        self,
        dim: int,
        gate: str = "soft",
        alpha_init: float = 0.5,
        gate_hidden: int = 0,
        freeze_branch: Optional[str] = None,
        eps: float = 1e-6,
        impl: str = DEFAULT_IMPL,
        squash: str = "tanh",
        gate_features: str = "mean_scale",
        alpha_param: str = "direct",
        elementwise_affine: bool = True,
        bias: bool = True,
        device: Optional[torch.device | str] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        dim = check_dim(dim)
        if gate not in GATES:
            raise ValueError(f"gate must be one of {list(GATES)}, got gate={gate!r}")
        if freeze_branch not in FREEZE_BRANCHES:
            raise ValueError(
                f"freeze_branch must be one of {list(FREEZE_BRANCHES)}, got freeze_branch={freeze_branch!r}"
            )
        if int(gate_hidden) < 0:
            raise ValueError(f"gate_hidden must be >= 0, got gate_hidden={gate_hidden!r}")
        if squash not in SQUASHES:
            raise ValueError(f"squash must be one of {list(SQUASHES)}, got squash={squash!r}")
        self.squash = squash
        if gate_features not in GATE_FEATURES:
            raise ValueError(f"gate_features must be one of {list(GATE_FEATURES)}, got gate_features={gate_features!r}")
        self.gate_features = gate_features
        if alpha_param != "direct" and squash != "tanh":
            raise ValueError(f"alpha_param={alpha_param!r} is only available with squash='tanh' (Derf keeps its alpha direct)")
        self.impl = check_impl(impl)
        self.dim = int(dim)
        self.gate_type = gate
        self.freeze_branch = freeze_branch
        self.ln = LayerNorm(self.dim, eps=eps, elementwise_affine=elementwise_affine, bias=bias)
        self.dyt: nn.Module = (
            DyT(self.dim, alpha_init=alpha_init, impl=self.impl, alpha_param=alpha_param, elementwise_affine=elementwise_affine, bias=bias)
            if squash == "tanh"
            else Derf(self.dim, alpha_init=alpha_init, elementwise_affine=elementwise_affine, bias=bias)
        )
        gate_dim = gate_input_dim(self.dim, gate_features)
        self.gate: nn.Module = (
            SoftGate(gate_dim, hidden=int(gate_hidden))
            if gate == "soft"
            else GumbelGate(gate_dim, hidden=int(gate_hidden))
        )
        if freeze_branch is not None:
            branch = self.ln if freeze_branch == "ln" else self.dyt
            for p in branch.parameters():
                p.requires_grad_(False)
        self.last_gate = None
        self._gate_override: Optional[float] = None
        place(self, device, dtype)

    @property
    def gate_override(self) -> Optional[float]:
        """None (use the learned gate) or a constant ``a`` in [0, 1] for every sample."""
        return self._gate_override

    @gate_override.setter
    def gate_override(self, value: Optional[float]) -> None:
        if value is not None:
            value = float(value)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"gate_override must be None or in [0, 1], got gate_override={value!r}")
        self._gate_override = value

    def gate_values(self, x: torch.Tensor) -> torch.Tensor:
        """The mixing weight ``a`` (B,) for input ``x`` (B, N, C), honouring ``gate_override``."""
        if self._gate_override is not None:
            return x.new_full((x.shape[0],), self._gate_override)
        return self.gate(token_summary(as_tokens(x), self.impl, self.gate_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, N, C) -> ``a * LN(x) + (1 - a) * DyT(x)`` of the same shape; (B, C) and
        channels-last (B, H, W, C) input are read as tokens (:func:`as_tokens`)."""
        if x.dim() != 3:
            return self.forward(as_tokens(x)).reshape(x.shape)
        a = self.gate_values(x)
        self.last_gate = a.detach()
        if self._gate_override == 1.0:
            return self.ln(x)
        if self._gate_override == 0.0:
            return self.dyt(x)
        fast = fast_path("blend", self.impl) if self.squash == "tanh" else None  # the fast paths compute tanh
        if fast is not None:
            return fast(x, a, self.ln.weight, self.ln.bias, self.ln.eps, self.dyt.alpha, self.dyt.weight, self.dyt.bias)
        return mix(self.ln(x), self.dyt(x), a)

    def extra_repr(self) -> str:
        impl = "" if self.impl == "eager" else f", impl={self.impl!r}"
        squash = "" if self.squash == "tanh" else f", squash={self.squash!r}"
        return f"{self.dim}, gate={self.gate_type!r}, gate_features={self.gate_features!r}, freeze_branch={self.freeze_branch!r}{squash}{impl}"
