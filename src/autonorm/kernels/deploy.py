"""The inference forms of the norms: every norm point's fastest equivalent for eval mode.

:func:`autonorm.norms.deploy_model` (and :meth:`autonorm.models.VisionTransformer.deploy`) returns
a deep copy in eval mode whose norm modules are replaced as follows (declared here in the norm
registry, :func:`~autonorm.norms.registry.set_deploy`); the original model is left untouched.

* :class:`~autonorm.norms.LayerNorm` stays (aten's fused kernel is already one pass).
* :class:`~autonorm.norms.DyT` -> :class:`DeployedDyT`: ``(2w) * sigmoid(2 alpha x) + (b - w)``,
  one sweep of the C++ kernel (:mod:`~autonorm.kernels.native`) on float32 CPU input; elsewhere
  one allocation and in-place temporaries (:func:`~autonorm.kernels.fused.dyt_fused`; ``tanh(z) = 2 sigmoid(2z) - 1``
  exactly; on CPU ``torch.sigmoid`` is several times faster than ``torch.tanh``).
* :class:`~autonorm.norms.AFN` -> :class:`DeployedAffine`: in eval the running statistics are
  constants, hence so are the encoder-decoders' outputs; ``scale`` and ``shift`` are computed once
  (:meth:`AFN.eval_affine`) and the layer becomes ``x * scale + shift`` (bit-identical to AFN's eval
  forward, which ends with the same multiply-add).
* :class:`~autonorm.norms.AutoNorm` with a soft gate (or a constant ``gate_override`` strictly
  inside (0, 1)) -> :class:`DeployedBlend`: the gate as before, then ``a LN(x) + (1-a) DyT(x)`` in
  one pass-minimising expression (:func:`~autonorm.kernels.fused.blend_inference`).
* :class:`~autonorm.norms.AutoNorm` with a Gumbel (hard) gate -> :class:`DeployedDispatch`: the
  eval gate is a per-sample argmax, so each sample uses exactly one branch; the module computes
  the decision, runs the branch most samples chose on the batch and the other branch only on the
  samples that chose it (``index_select``), overwriting their rows (``index_copy_``); when the
  whole batch chose one branch only that branch runs.
  Exact for every input: the decision is computed by the very same ops as the undeployed gate.
* ``gate_override`` 1.0 / 0.0 -> the LayerNorm / :class:`DeployedDyT` alone (as in eager).
* An AutoNorm whose squashing branch is Derf (``squash="erf"``) stays as it is (its eval forward).

A registered norm without a declared form (LayerNorm, Derf) stays as it is.

Exactness: outputs equal the undeployed model's eval outputs up to float rounding (~1e-7 relative
for DyT branches through the sigmoid identity; bit-identical for LN and AFN). Deployed modules
always behave as in eval mode (the Gumbel gate's argmax, AFN's running statistics), even after
``.train()``; the copy is meant for inference, not for further training, and its parameters
have ``requires_grad=False`` (gradients with respect to the input still work).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..norms.afn import AFN, affine_output
from ..norms.autonorm import AutoNorm, as_tokens, token_summary
from ..norms.dyt import DyT
from ..norms.gates import GumbelGate
from ..norms.registry import set_deploy
from . import native
from .fused import blend_auto, blend_fused, dyt_auto, dyt_fused, prefer_kernel


class DeployedDyT(nn.Module):
    """Inference DyT ``(2w) * sigmoid(2 alpha x) + (b - w)`` == ``w * tanh(alpha x) + b``."""

    alpha: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def __init__(self, dyt: DyT) -> None:
        super().__init__()
        self.register_buffer("alpha", dyt.alpha.detach().clone())
        self.register_buffer("weight", dyt.weight.detach().clone())
        self.register_buffer("bias", dyt.bias.detach().clone())
        self.impl = dyt.impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (..., C) -> DyT(x), one new tensor: :func:`~autonorm.kernels.fused.dyt_fused` (one
        kernel sweep on float32 CPU input; otherwise the sigmoid identity with in-place
        temporaries, or its autograd Function when the input needs a gradient); with
        ``impl="auto"`` the route measured fastest (:func:`~autonorm.kernels.fused.dyt_auto`)."""
        return (dyt_auto if getattr(self, "impl", "fused") == "auto" else dyt_fused)(x, self.alpha, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, alpha={float(self.alpha[0]):.4g}"


class DeployedAffine(nn.Module):
    """Eval-mode AFN as the per-channel affine map ``x * scale + shift`` (float32, x's dtype out)."""

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, afn: AFN) -> None:
        super().__init__()
        scale, shift = afn.eval_affine()
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("shift", shift.detach().clone())
        self.impl = afn.impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (..., C) -> ``x * scale + shift`` in one multiply-add, computed as AFN's own eval
        forward computes it (:func:`~autonorm.norms.afn.affine_output`)."""
        return affine_output(x, self.scale, self.shift, self.impl)

    def extra_repr(self) -> str:
        return f"{self.scale.numel()}"


class _DeployedAutoNormBase(nn.Module):
    """Shared parts: the LayerNorm and DyT parameters of an AutoNorm, and ``last_gate``."""

    last_gate: Optional[torch.Tensor]

    def __init__(self, autonorm: AutoNorm) -> None:
        super().__init__()
        self.dim = autonorm.dim
        self.impl = autonorm.impl  # the gate summary is computed as in the undeployed module
        self.gate_features = autonorm.gate_features
        self.ln = autonorm.ln
        self.dyt = DeployedDyT(autonorm.dyt)
        self.last_gate = None

    def _summary(self, x: torch.Tensor) -> torch.Tensor:
        return token_summary(as_tokens(x), self.impl, self.gate_features)  # the same function as AutoNorm.gate_values: the same bits


class DeployedBlend(_DeployedAutoNormBase):
    """Soft-gated AutoNorm for inference: ``a LN(x) + (1-a) DyT(x)`` in one fused expression.

    ``constant`` (a float in (0, 1)) replaces the gate, as ``gate_override`` does.
    """

    def __init__(self, autonorm: AutoNorm, constant: Optional[float] = None) -> None:
        super().__init__(autonorm)
        self.constant = constant
        self.gate = autonorm.gate if constant is None else None
        dyt = autonorm.dyt
        self.alpha = dyt.alpha
        self.dyt_weight = dyt.weight
        self.dyt_bias = dyt.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, N, C) -> ``a LN(x) + (1 - a) DyT(x)`` (other shapes as AutoNorm reads them)."""
        if x.dim() != 3:
            return self.forward(as_tokens(x)).reshape(x.shape)
        if self.constant is not None:
            a = x.new_full((x.shape[0],), self.constant)
        else:
            a = self.gate(self._summary(x))  # type: ignore[misc]
        self.last_gate = a.detach()
        blend = blend_auto if self.impl == "auto" else blend_fused
        return blend(  # blend_inference without autograd, BlendFunction with (or the measured route)
            x, a, self.ln.weight, self.ln.bias, self.ln.eps, self.alpha, self.dyt_weight, self.dyt_bias
        )

    def extra_repr(self) -> str:
        return f"{self.dim}, gate={'constant %g' % self.constant if self.constant is not None else 'soft'}"


class DeployedDispatch(_DeployedAutoNormBase):
    """Hard-gated (Gumbel) AutoNorm for inference: per-sample dispatch to exactly one branch.

    The decision ``logit_LN >= logit_DyT`` is the eval gate's argmax. On float32 CPU input one C++
    kernel (:mod:`~autonorm.kernels.native`) runs each sample's own branch in a single sweep.
    Elsewhere the majority branch runs on
    the whole batch (one dense output buffer, which on CPU is cheaper than scattering two partial
    results into a fresh one) and the minority branch only on its samples, whose rows are then
    overwritten.
    """

    def __init__(self, autonorm: AutoNorm) -> None:
        super().__init__(autonorm)
        if not isinstance(autonorm.gate, GumbelGate):
            raise TypeError("DeployedDispatch needs an AutoNorm with a Gumbel (hard) gate")
        self.gate = autonorm.gate

    def decisions(self, x: torch.Tensor) -> torch.Tensor:
        """Boolean (B,): True where the sample uses the LayerNorm branch (eval argmax)."""
        logits = self.gate.logits(self._summary(x))
        return logits[:, 0] >= logits[:, 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, N, C) -> LN(x_b) or DyT(x_b) per sample ``b`` (other shapes as AutoNorm reads them)."""
        if x.dim() != 3:
            return self.forward(as_tokens(x)).reshape(x.shape)
        choose_ln = self.decisions(x)
        self.last_gate = choose_ln.to(x.dtype)
        no_grad = not (torch.is_grad_enabled() and x.requires_grad)
        if no_grad and native.usable(x, self.ln.weight, self.dyt.alpha) is not None:
            # one kernel sweep: every sample runs only its own branch (no host sync, no gather);
            # the kernel has no backward, so input gradients (saliency maps) take the path below
            if self.impl != "auto" or prefer_kernel("select", (x, choose_ln), self._by_kernel, self._by_index, train=False):
                return self._by_kernel(x, choose_ln)
        return self._by_index(x, choose_ln)

    def _by_kernel(self, x: torch.Tensor, choose_ln: torch.Tensor) -> torch.Tensor:
        return native.ops().select_forward(  # type: ignore[union-attr]
            x, choose_ln, self.ln.weight, self.ln.bias, float(self.ln.eps), self.dyt.alpha, self.dyt.weight, self.dyt.bias
        )

    def _by_index(self, x: torch.Tensor, choose_ln: torch.Tensor) -> torch.Tensor:
        n_ln = int(choose_ln.sum())
        b = x.shape[0]
        if n_ln == b:
            return self.ln(x)
        if n_ln == 0:
            return self.dyt(x)
        # Run the majority branch on the whole batch (its output buffer is written once, densely),
        # then overwrite the minority's rows with the other branch applied to those rows only.
        # Rows are independent in both branches, so every row equals its own branch's output.
        majority_ln = 2 * n_ln >= b
        out = self.ln(x) if majority_ln else self.dyt(x)
        minority = (~choose_ln if majority_ln else choose_ln).nonzero().squeeze(1)
        rows = x.index_select(0, minority)
        fixed = self.dyt(rows) if majority_ln else self.ln(rows)
        if fixed.dtype != out.dtype:
            dtype = torch.promote_types(out.dtype, fixed.dtype)
            out, fixed = out.to(dtype), fixed.to(dtype)
        return out.index_copy_(0, minority, fixed)

    def extra_repr(self) -> str:
        return f"{self.dim}, gate='gumbel (per-sample dispatch)'"


# ----------------------------------------------------------------------------------- conversion
def _deploy_autonorm(module: AutoNorm) -> Optional[nn.Module]:
    if module.squash != "tanh":
        return None  # the blend and dispatch kernels compute tanh; the eval forward is exact
    override = module.gate_override
    if override == 1.0:
        return module.ln
    if override == 0.0:
        return DeployedDyT(module.dyt)
    if override is not None:
        return DeployedBlend(module, constant=override)
    if isinstance(module.gate, GumbelGate):
        return DeployedDispatch(module)
    return DeployedBlend(module)


set_deploy(DyT, DeployedDyT)
def _deploy_afn(module: AFN) -> Optional[nn.Module]:
    # with eval_stats="batch" AFN stays: its output depends on the batch
    return DeployedAffine(module) if module.eval_stats == "running" else None


set_deploy(AFN, _deploy_afn)  # type: ignore[arg-type]
set_deploy(AutoNorm, _deploy_autonorm)  # type: ignore[arg-type]


__all__ = [
    "DeployedAffine",
    "DeployedBlend",
    "DeployedDispatch",
    "DeployedDyT",
]
