"""Per-sample gates that decide how much of the LayerNorm branch AutoNorm uses.

Both gates map a per-sample summary ``h`` (B, D) of the norm's input over tokens (see
:func:`autonorm.norms.autonorm.token_summary`: the mean, D = C, or the mean relative to the
token RMS and the log RMS, D = 2C) to a mixing weight ``a`` (B,) in [0, 1]. Both carry a registered buffer ``tau``
(scalar float tensor, saved in checkpoints) and ``set_tau(float)`` so that a temperature
schedule can treat every gate alike.
"""
from __future__ import annotations

import torch
from torch import nn

_LAST_LAYER_INIT_STD = 1e-2


def _make_head(dim: int, hidden: int, out_features: int) -> nn.Module:
    """One Linear (hidden == 0) or Linear-GELU-Linear, last layer initialised small."""
    if int(dim) <= 0:
        raise ValueError(f"dim must be a positive integer, got dim={dim!r}")
    if int(hidden) < 0:
        raise ValueError(f"hidden must be >= 0, got hidden={hidden!r}")
    if hidden == 0:
        last = nn.Linear(dim, out_features)
        head: nn.Module = last
    else:
        last = nn.Linear(hidden, out_features)
        head = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), last)
    nn.init.normal_(last.weight, std=_LAST_LAYER_INIT_STD)
    nn.init.zeros_(last.bias)
    return head


class _GateBase(nn.Module):
    """Shared temperature handling."""

    tau: torch.Tensor

    def __init__(self, tau: float = 1.0) -> None:
        super().__init__()
        self._check_tau(tau)
        self.register_buffer("tau", torch.tensor(float(tau)))

    @staticmethod
    def _check_tau(tau: float) -> None:
        if not float(tau) > 0:
            raise ValueError(f"tau must be > 0, got tau={tau!r}")

    def set_tau(self, tau: float) -> None:
        """Set the temperature in place (keeps device/dtype of the buffer)."""
        self._check_tau(tau)
        self.tau.fill_(float(tau))


class SoftGate(_GateBase):
    """Soft gate ``a = sigmoid(w^T h + b)`` per sample, ``a`` strictly in (0, 1).

    ``hidden > 0`` replaces the single Linear by Linear(dim, hidden)-GELU-Linear(hidden, 1).
    The last layer's weight is initialised with a small std (1e-2) and its bias to ``bias_init``,
    so at init ``a ~= sigmoid(bias_init)`` (0.5 by default).

    ``tau`` is kept for a uniform gate interface (``set_temperature`` touches every gate) but
    does not enter the soft gate's formula.
    """

    def __init__(self, dim: int, hidden: int = 0, bias_init: float = 0.0) -> None:
        super().__init__()
        self.dim, self.hidden = int(dim), int(hidden)
        self.net = _make_head(self.dim, self.hidden, 1)
        last = self.net if isinstance(self.net, nn.Linear) else self.net[-1]
        nn.init.constant_(last.bias, float(bias_init))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``h`` (B, dim) -> ``a`` (B,)."""
        return torch.sigmoid(self.net(h).squeeze(-1))


class GumbelGate(_GateBase):
    """Hard binary gate trained with the straight-through Gumbel-softmax (Jang et al., 2017).

    Two logits per sample (index 0 = LayerNorm, index 1 = DyT).

    * training: straight-through Gumbel-softmax, ``a = F.gumbel_softmax(logits, tau=tau,
      hard=True)[:, 0]`` in distribution (computed in its two-class form,
      :func:`straight_through_binary`), so the forward value is exactly 0 or 1 while gradients flow through the
      soft relaxation (gradient of ``a`` = gradient of the soft probability of index 0);
    * eval: deterministic argmax, ``a = 1`` where ``logit0 >= logit1`` else ``0`` (never random).

    The last layer is initialised small so the two logits start (nearly) equal.
    """

    def __init__(self, dim: int, hidden: int = 0) -> None:
        super().__init__()
        self.dim, self.hidden = int(dim), int(hidden)
        self.net = _make_head(self.dim, self.hidden, 2)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """``h`` (B, dim) -> logits (B, 2)."""
        return self.net(h)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``h`` (B, dim) -> ``a`` (B,) in {0, 1}."""
        logits = self.net(h)
        if self.training:
            # Straight-through Gumbel-softmax, F.gumbel_softmax(logits, tau, hard=True)[:, 0] in
            # distribution, written for two classes (see straight_through_binary) and as
            # y_hard + (y_soft - y_soft.detach()) so the forward value is *exactly* 0 or 1 (the
            # library form y_hard - y_soft.detach() + y_soft can be off by one ulp). tau is a
            # 0-dim tensor buffer: no host sync, follows the module's device.
            d = logits[:, 0] - logits[:, 1]
            return straight_through_binary(d, logistic_noise(d), self.tau)
        return (logits[:, 0] >= logits[:, 1]).to(logits.dtype)


def logistic_noise(like: torch.Tensor) -> torch.Tensor:
    """Standard logistic samples ``log(u) - log(1 - u)``, ``u ~ U(0, 1)``, shaped like ``like``
    (global RNG). The difference of two independent Gumbel(0, 1) variables has exactly this
    distribution."""
    return torch.logit(torch.rand_like(like), eps=1e-7)


def straight_through_binary(d: torch.Tensor, noise: torch.Tensor, tau: torch.Tensor | float) -> torch.Tensor:
    """Straight-through Gumbel-softmax for two classes.

    With logits ``(l0, l1)``, ``d = l0 - l1`` and Gumbel noise ``(g0, g1)``, the relaxed probability
    of class 0 is ``softmax((l + g) / tau)[0] = sigmoid((d + g0 - g1) / tau)``, and ``g0 - g1`` is
    standard logistic: the binary Concrete distribution (Maddison, Mnih and Teh, 2017, "The
    Concrete Distribution"), i.e. ``F.gumbel_softmax`` (Jang, Gu and Poole, 2017) for two classes.
    One logistic sample and one sigmoid replace two Gumbel samples and a softmax: fewer small ops
    per norm point in every training step.

    Returns ``a`` (B,): exactly 1.0 where ``d + noise >= 0`` (class 0, LayerNorm) else 0.0 in the
    forward pass, with the gradient of ``sigmoid((d + noise) / tau)``.
    """
    z = d + noise
    p0 = torch.sigmoid(z / tau)
    hard0 = (z >= 0).to(p0.dtype)
    return hard0 + (p0 - p0.detach())
