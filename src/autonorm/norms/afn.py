"""Adaptive Fusion Normalization (AFN) for token tensors, with BatchNorm-like running stats."""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from . import native
from .fused import DEFAULT_IMPL, call_compiled, check_impl, prefer_kernel
from .layer_args import channel_affine, place
from .registry import register_norm


def _encoder_decoder(dim: int, hidden: int) -> nn.Sequential:
    """Linear(dim, hidden) - ReLU - Linear(hidden, dim)."""
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=False), nn.Linear(hidden, dim))


def _logit_param(value: float) -> nn.Parameter:
    return nn.Parameter(torch.tensor(float(value)))


@register_norm("afn", display="AFN", logs={k: k for k in ("lambda_mu", "lambda_sigma", "lambda_gamma", "lambda_beta")})
class AFN(nn.Module):
    r"""Adaptive Fusion Normalization (Zhou, Zhang, Wang, Chen, 2023, "AFN: Adaptive Fusion
    Normalization via an Encoder-Decoder Framework", arXiv:2308.03321), which fuses BatchNorm with
    ASRNorm (Fan et al., 2021, "Adversarially Adaptive Normalization for Single Domain
    Generalization"), applied to tokens ``x`` of shape (B, N, C) (any (..., C) works).

    Statistics (per channel, over every dimension except the last, i.e. batch and tokens)::

        mu    = mean(x)                    sigma = sqrt(var(x) + eps)       (biased variance)

    Adaptive standardisation (encoder-decoders f: Linear(C, C_r) - ReLU - Linear(C_r, C),
    C_r = max(C // reduction, 4); ``lambda = sigmoid(raw)``, raw initialised to -3)::

        mu_hat    = (1 - l_mu)    * mu    + l_mu    * f_mu(mu)
        sigma_hat = (1 - l_sigma) * sigma + l_sigma * softplus(f_sigma(sigma))      (> 0)
        x_hat     = (x - mu_hat) / sigma_hat

    Adaptive rescaling (encoder-decoders g with the same bottleneck; raw lambdas init -5)::

        gamma_a = sigmoid(g_gamma(sigma))           beta_a = tanh(g_beta(mu))      (bounded)
        gamma   = weight + l_gamma * gamma_a        beta   = bias + l_beta * beta_a
        y       = gamma * x_hat + beta              (weight ones, bias zeros)

    With the small initial lambdas (sigmoid(-3) ~= 0.047, sigmoid(-5) ~= 0.0067) AFN starts close
    to plain batch standardisation with affine (1, 0), i.e. BatchNorm over (batch, tokens), and
    the residual gates let the network move towards learned statistics. The lambdas are the
    logged quantities (properties ``lambda_mu``, ``lambda_sigma``, ``lambda_gamma``,
    ``lambda_beta``; 0.0 when ``use_encoders=False``). Note ``eps`` enters once, inside the square
    root; ``sigma_hat`` is kept strictly positive by the softplus.

    Running statistics and eval mode: like BatchNorm, training updates the buffers
    ``running_mean`` and ``running_var`` (unbiased variance) with ``momentum``
    (``running = (1 - momentum) * running + momentum * batch``). In eval mode the running stats
    replace the batch stats (``mu = running_mean``, ``sigma = sqrt(running_var + eps)``) and then go
    through the *same* encoder-decoders and lambdas. This differs from the papers, where the
    statistics fed to the encoder-decoders are always those of the input being normalized; here
    eval outputs are deterministic and independent of the composition of the test batch
    (a sample's output does not depend on the other samples), as with BatchNorm.

    Options: ``use_encoders=False`` removes the four encoder-decoders and lambdas (plain batch
    standardisation + affine, an ablation). ``sync_stats=True`` all-reduces the batch moments
    (sum, sum of squares, count) when ``torch.distributed`` is initialised with world size > 1,
    so the statistics equal those of the global batch (differentiably, like SyncBatchNorm).

    A drop-in norm layer (:mod:`.layer_args`): ``elementwise_affine=False`` / ``bias=False`` make
    the base affine ``weight`` / ``bias`` constants (the adaptive rescaling still learns).

    ``impl`` (default ``"fused"``, as in ``conf/norm``): ``"eager"`` computes the statistics with ``var_mean`` and the output with one fused
    multiply-add ``x * scale + shift`` (the encoder-decoders act on (1, C) vectors); ``"fused"``
    computes the same on float32 CPU inputs with the C++ kernels of :mod:`autonorm.norms.native`
    (:class:`~autonorm.norms.native.BatchAffineNormFunction`: statistics with double accumulators,
    output, and both backward sweeps, one sweep each), elsewhere like ``"eager"``; ``"compiled"``
    runs the forward through ``torch.compile`` (lazily, eager fallback on failure). In eval mode the whole layer is a per-channel affine map, see :meth:`eval_affine`.
    """

    impl: str = "eager"

    running_mean: torch.Tensor
    running_var: torch.Tensor
    num_batches_tracked: torch.Tensor

    def __init__(
        self,
        dim: int,
        reduction: int = 16,
        eps: float = 1e-5,
        momentum: float = 0.1,
        lambda_mu_init: float = -3.0,
        lambda_sigma_init: float = -3.0,
        lambda_gamma_init: float = -5.0,
        lambda_beta_init: float = -5.0,
        use_encoders: bool = True,
        sync_stats: bool = False,
        impl: str = DEFAULT_IMPL,
        elementwise_affine: bool = True,
        bias: bool = True,
        device: Optional[torch.device | str] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        if int(dim) <= 0:
            raise ValueError(f"dim must be a positive integer, got dim={dim!r}")
        if int(reduction) < 1:
            raise ValueError(f"reduction must be >= 1, got reduction={reduction!r}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got eps={eps!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got momentum={momentum!r}")
        for name, val in (
            ("lambda_mu_init", lambda_mu_init),
            ("lambda_sigma_init", lambda_sigma_init),
            ("lambda_gamma_init", lambda_gamma_init),
            ("lambda_beta_init", lambda_beta_init),
        ):
            if not math.isfinite(float(val)):
                raise ValueError(f"{name} must be a finite float (a raw logit), got {name}={val!r}")
        self.impl = check_impl(impl)
        self.dim = int(dim)
        self.reduction = int(reduction)
        self.hidden = max(self.dim // self.reduction, 4)
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.use_encoders = bool(use_encoders)
        self.sync_stats = bool(sync_stats)

        channel_affine(self, self.dim, elementwise_affine, bias)
        if self.use_encoders:
            self.f_mu = _encoder_decoder(self.dim, self.hidden)
            self.f_sigma = _encoder_decoder(self.dim, self.hidden)
            self.g_gamma = _encoder_decoder(self.dim, self.hidden)
            self.g_beta = _encoder_decoder(self.dim, self.hidden)
            self.lambda_mu_raw = _logit_param(lambda_mu_init)
            self.lambda_sigma_raw = _logit_param(lambda_sigma_init)
            self.lambda_gamma_raw = _logit_param(lambda_gamma_init)
            self.lambda_beta_raw = _logit_param(lambda_beta_init)
        self.register_buffer("running_mean", torch.zeros(self.dim))
        self.register_buffer("running_var", torch.ones(self.dim))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        place(self, device, dtype)

    # ---- logging accessors -------------------------------------------------------------
    def _lam(self, name: str) -> Union[torch.Tensor, float]:
        if not self.use_encoders:
            return 0.0
        return torch.sigmoid(getattr(self, name).detach())

    @property
    def lambda_mu(self) -> Union[torch.Tensor, float]:
        """Effective ``sigmoid(raw)`` weight of the learned mean (0-dim tensor, detached)."""
        return self._lam("lambda_mu_raw")

    @property
    def lambda_sigma(self) -> Union[torch.Tensor, float]:
        """Effective weight of the learned std."""
        return self._lam("lambda_sigma_raw")

    @property
    def lambda_gamma(self) -> Union[torch.Tensor, float]:
        """Effective weight of the adaptive scale."""
        return self._lam("lambda_gamma_raw")

    @property
    def lambda_beta(self) -> Union[torch.Tensor, float]:
        """Effective weight of the adaptive shift."""
        return self._lam("lambda_beta_raw")

    # ---- statistics --------------------------------------------------------------------
    def _batch_moments(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, Union[int, torch.Tensor]]:
        """Per-channel mean and biased variance over all but the last dim (float32), and count
        (an int, or a 0-dim tensor holding the global count when statistics are synchronised)."""
        xf = x.float().reshape(-1, self.dim)
        count = xf.shape[0]
        dist = torch.distributed
        if self.sync_stats and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            from torch.distributed.nn.functional import all_reduce  # differentiable all-reduce

            local = torch.cat(
                [xf.sum(0), (xf * xf).sum(0), xf.new_full((1,), float(count))]
            )
            total = all_reduce(local)
            n = total[-1]
            mean = total[: self.dim] / n
            var = (total[self.dim : 2 * self.dim] / n - mean * mean).clamp_min(0.0)
            return mean, var, n
        var, mean = torch.var_mean(xf, dim=0, unbiased=False)
        return mean, var, count

    @torch.no_grad()
    def _update_running(
        self, mean: torch.Tensor, var: torch.Tensor, count: Union[int, torch.Tensor]
    ) -> None:
        unbiased = var * (count / (count - 1))
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
        self.num_batches_tracked.add_(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (..., C) -> normalized tensor of the same shape and dtype."""
        if self.impl == "compiled":
            return call_compiled(_afn_forward, self, x)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"AFN expected last dimension {self.dim}, got shape {tuple(x.shape)}")
        if self.training:
            if x.numel() // self.dim < 2:
                raise ValueError("AFN needs more than one value per channel in training mode")
            if self._kernels(x):
                x2 = x.reshape(-1, self.dim)
                y, mu, var = native.batch_affine_norm(x2, self._affine_cpu, list(self.parameters()))
                self._update_running(mu, var, x2.shape[0])
                return y.view(x.shape)
            mu, var, count = self._batch_moments(x)
            self._update_running(mu.detach(), var.detach(), count)
        else:
            mu, var = self.running_mean.float(), self.running_var.float()
        scale, shift = self._affine(mu, var, x.device.type)
        return affine_output(x, scale, shift, self.impl)

    def _affine_cpu(self, mu: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._affine(mu, var, "cpu")

    def _kernels(self, x: torch.Tensor) -> bool:
        """Whether this forward runs through the C++ kernels (``impl="fused"``, float32 CPU input,
        kernels available, statistics not synchronised across processes)."""
        if self.impl not in ("fused", "auto") or self.sync_stats or native.usable(x, self.weight) is None:
            return False
        return self.impl == "fused" or prefer_kernel(
            "afn_stats", (x.reshape(-1, self.dim),), batch_norm_kernel, batch_norm_torch, native.needs_grad(x, self.weight)
        )

    @torch.no_grad()
    def eval_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, shift)`` (C,) float32 such that the eval-mode output is exactly
        ``addcmul(shift, x.float(), scale).to(x.dtype)``: with the running stats fixed, the
        encoder-decoders' outputs are constants (used by ``deploy``)."""
        mu, var = self.running_mean.float(), self.running_var.float()
        return self._affine(mu, var, mu.device.type)

    def _affine(
        self, mu: torch.Tensor, var: torch.Tensor, device_type: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel ``scale = gamma / sigma_hat`` and ``shift = beta - mu_hat * scale`` from the
        statistics ``mu``, ``var`` (C,) (float32); ``device_type`` is the input's, for autocast."""
        sigma = torch.sqrt(var + self.eps)

        weight, bias = self.weight.float(), self.bias.float()
        if self.use_encoders:
            # Encoder-decoders see the channel statistics as a batch of one vector (1, C).
            # They run in the parameters' dtype with autocast off (tiny (1, C) matmuls).
            p_dtype = self.weight.dtype
            mu_in, sigma_in = mu.unsqueeze(0).to(p_dtype), sigma.unsqueeze(0).to(p_dtype)
            with torch.autocast(device_type=device_type, enabled=False):
                l_mu = torch.sigmoid(self.lambda_mu_raw)
                l_sigma = torch.sigmoid(self.lambda_sigma_raw)
                l_gamma = torch.sigmoid(self.lambda_gamma_raw)
                l_beta = torch.sigmoid(self.lambda_beta_raw)
                f_mu = self.f_mu(mu_in).squeeze(0).float()
                f_sigma = F.softplus(self.f_sigma(sigma_in).squeeze(0).float())
                gamma_a = torch.sigmoid(self.g_gamma(sigma_in).squeeze(0).float())
                beta_a = torch.tanh(self.g_beta(mu_in).squeeze(0).float())
                mu_hat = (1 - l_mu) * mu + l_mu * f_mu
                sigma_hat = (1 - l_sigma) * sigma + l_sigma * f_sigma
                gamma = weight + l_gamma * gamma_a
                beta = bias + l_beta * beta_a
        else:
            mu_hat, sigma_hat, gamma, beta = mu, sigma, weight, bias

        # y = gamma * (x - mu_hat) / sigma_hat + beta, fused into one multiply-add over x.
        scale = gamma / sigma_hat
        shift = beta - mu_hat * scale
        return scale, shift

    def extra_repr(self) -> str:
        return (
            f"{self.dim}, reduction={self.reduction}, hidden={self.hidden}, eps={self.eps}, "
            f"momentum={self.momentum}, use_encoders={self.use_encoders}, sync_stats={self.sync_stats}"
            + ("" if self.impl == "eager" else f", impl={self.impl!r}")
        )


def affine_output(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, impl: str) -> torch.Tensor:
    """AFN's last step ``x * scale + shift`` (float32, returned in x's dtype): one C++ kernel sweep
    for ``impl="fused"`` on float32 CPU input without autograd, ``addcmul`` otherwise. AFN and its
    deployed copy both end here, so their eval outputs are bit-identical."""
    if impl in ("fused", "auto") and native.usable(x) is not None and not native.needs_grad(x, scale, shift):
        x2 = x.reshape(-1, x.shape[-1])
        if impl == "fused" or prefer_kernel("affine", (x2, scale, shift), native.affine, _affine_torch):
            return native.affine(x2, scale, shift).view(x.shape)
    return torch.addcmul(shift, x.float(), scale).to(x.dtype)


def _affine_torch(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    return torch.addcmul(shift, x.float(), scale).to(x.dtype)


def _standardise(mu: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = torch.rsqrt(var + 1e-5)
    return scale, -mu * scale


def batch_norm_kernel(x: torch.Tensor) -> torch.Tensor:
    """AFN's training sweeps through the kernels with a stand-in affine map (plain
    standardisation): what ``impl="auto"`` times against :func:`batch_norm_torch` (the
    encoder-decoders cost the same on both paths)."""
    return native.batch_affine_norm(x, _standardise, ())[0]


def batch_norm_torch(x: torch.Tensor) -> torch.Tensor:
    """AFN's training sweeps through torch ops (``var_mean``, ``addcmul``), same stand-in map."""
    xf = x.float()
    var, mu = torch.var_mean(xf, dim=0, unbiased=False)
    scale, shift = _standardise(mu, var)
    return torch.addcmul(shift, xf, scale).to(x.dtype)


def _afn_forward(module: AFN, x: torch.Tensor) -> torch.Tensor:
    """``module``'s eager forward (a free function, so ``torch.compile`` is shared by instances)."""
    return module._forward(x)
