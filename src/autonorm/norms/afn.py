"""Adaptive Fusion Normalization (AFN) for token tensors."""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .impl import DEFAULT_IMPL, check_impl, fast_path
from .layer_args import channel_affine, check_dim, place
from .registry import register_norm


SIGMOID_M3 = 1.0 / (1.0 + math.exp(3.0))  # sigmoid(-3) ~= 0.0474: initial lambda_mu, lambda_sigma
SIGMOID_M5 = 1.0 / (1.0 + math.exp(5.0))  # sigmoid(-5) ~= 0.0067: initial lambda_gamma, lambda_beta
EVAL_STATS: tuple[str, ...] = ("batch", "running")
_LAMBDAS = ("lambda_mu", "lambda_sigma", "lambda_gamma", "lambda_beta")


def _decoder(hidden: int, dim: int) -> nn.Sequential:
    """ReLU - Linear(hidden, dim): one decoder on a shared encoder's output."""
    return nn.Sequential(nn.ReLU(inplace=False), nn.Linear(hidden, dim))


@register_norm("afn", display="AFN", logs={k: k for k in ("lambda_mu", "lambda_sigma", "lambda_gamma", "lambda_beta")})
class AFN(nn.Module):
    r"""Adaptive Fusion Normalization (Zhou, Zhang, Wang, Chen, 2023, "AFN: Adaptive Fusion
    Normalization via an Encoder-Decoder Framework", arXiv:2308.03321), which fuses BatchNorm with
    ASRNorm (Fan et al., 2021, "Adversarially Adaptive Normalization for Single Domain
    Generalization"), applied to tokens ``x`` of shape (B, N, C) (any (..., C) works).

    Statistics (per channel, over every dimension except the last, i.e. batch and tokens: the
    token analogue of BatchNorm's batch and spatial positions)::

        mu    = mean(x)                    sigma = sqrt(var(x) + eps)       (biased variance)

    Adaptive standardisation: one shared encoder ``E_s = Linear(C, C/2)`` (dropout ``p`` on its
    input), a decoder per statistic (``D = ReLU - Linear(C/2, C)``)::

        mu_hat    = (1 - l_mu)    * mu    + l_mu    * D_mu(E_s(drop(mu)))
        sigma_hat = (1 - l_sigma) * sigma + l_sigma * softplus(D_sigma(E_s(drop(sigma))))   (> 0)
        x_hat     = (x - mu_hat) / sigma_hat

    Adaptive rescaling: one shared encoder ``E_r = Linear(C, C/16)``, a decoder per output::

        gamma_a = sigmoid(D_gamma(E_r(sigma)))          beta_a = tanh(D_beta(E_r(mu)))   (bounded)
        gamma   = weight + l_gamma * gamma_a            beta   = bias + l_beta * beta_a
        y       = gamma * x_hat + beta                  (weight ones, bias zeros)

    The lambdas are parameters used as they are stored (no sigmoid), initialised at
    ``sigmoid(-3)`` (``l_mu``, ``l_sigma``) and ``sigmoid(-5)`` (``l_gamma``, ``l_beta``), so AFN
    starts close to batch standardisation with affine (1, 0) and Adam moves them at its usual
    rate. ``l_mu`` and ``l_sigma`` enter clamped to [0, 1] (each is the weight of a convex
    combination; this keeps ``sigma_hat > 0``); ``l_gamma`` and ``l_beta`` are unconstrained.
    The logged lambdas are these parameters (``lambda_mu`` ...; 0.0 with ``use_encoders=False``).

    Evaluation (``eval_stats``): ``"batch"`` (the default, the paper's behaviour: the statistics
    fed to the encoders are always those of the input being normalised, so the layer adapts at
    test time and a sample's output depends on the rest of its test batch) or ``"running"``
    (BatchNorm's: the running statistics go through the same encoder-decoders and lambdas; eval
    outputs are deterministic per sample and the layer folds into a per-channel affine map, see
    :meth:`eval_affine`). Training always uses batch statistics and updates ``running_mean`` /
    ``running_var`` (unbiased variance) with ``momentum``, whichever ``eval_stats`` is chosen.

    Deviations from the paper and the ASRNorm/AFN reference code, with their reasons:

    * statistics over (batch, tokens) per channel instead of (batch, H, W): the token analogue;
    * ``sigma = sqrt(var + eps)`` (biased) instead of ``std + eps``: the same stabiliser as
      LayerNorm and BatchNorm here, and the statistics the C++ kernels compute;
    * ``softplus`` instead of ReLU at the end of the sigma decoder: strictly positive (a ReLU
      output of 0 would make ``sigma_hat`` depend on ``l_sigma < 1`` alone);
    * the reference code passes ``l_mu`` and ``l_sigma`` through a second sigmoid in the forward
      (their effective start is ``sigmoid(sigmoid(-3)) ~= 0.51``); here every lambda is used as
      stored, starting at the stated ``sigmoid(-3)`` / ``sigmoid(-5)``;
    * hidden widths ``max(C // 2, 1)`` and ``max(C // 16, 1)`` (at least one unit for tiny C);
    * running statistics are kept (the reference has none) for ``eval_stats="running"``.

    Options: ``use_encoders=False`` removes the encoder-decoders and lambdas (plain batch
    standardisation + affine, an ablation). ``sync_stats=True`` all-reduces the batch moments
    (sum, sum of squares, count) when ``torch.distributed`` is initialised with world size > 1,
    so the statistics equal those of the global batch (differentiably, like SyncBatchNorm).

    A drop-in norm layer (:mod:`.layer_args`): ``elementwise_affine=False`` / ``bias=False`` make
    the base affine ``weight`` / ``bias`` constants (the adaptive rescaling still learns).

    ``impl`` (:mod:`.impl`; default ``"auto"``, as in ``conf/norm``): ``"eager"`` computes the
    statistics with ``var_mean`` and the output with one fused multiply-add ``x * scale + shift``
    (the encoder-decoders act on (1, C) vectors); ``"fused"`` computes the same on float32 CPU
    inputs with the C++ kernels of :mod:`autonorm.kernels` (ops ``"afn_batch"``: statistics with
    double accumulators, output, and both backward sweeps, one sweep each, the encoder-decoders
    staying in Python; ``"afn_affine"``: the eval output), elsewhere like ``"eager"``;
    ``"compiled"`` runs this forward through ``torch.compile`` (op ``"afn"``); ``"auto"`` the
    kernels where they were measured faster.
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
        lambda_mu_init: float = SIGMOID_M3,
        lambda_sigma_init: float = SIGMOID_M3,
        lambda_gamma_init: float = SIGMOID_M5,
        lambda_beta_init: float = SIGMOID_M5,
        use_encoders: bool = True,
        sync_stats: bool = False,
        impl: str = DEFAULT_IMPL,
        std_reduction: int = 2,
        dropout: float = 0.3,
        eval_stats: str = "batch",
        elementwise_affine: bool = True,
        bias: bool = True,
        device: Optional[torch.device | str] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        dim = check_dim(dim)
        if int(reduction) < 1:
            raise ValueError(f"reduction must be >= 1, got reduction={reduction!r}")
        if int(std_reduction) < 1:
            raise ValueError(f"std_reduction must be >= 1, got std_reduction={std_reduction!r}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got eps={eps!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got momentum={momentum!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got dropout={dropout!r}")
        if eval_stats not in EVAL_STATS:
            raise ValueError(f"eval_stats must be one of {list(EVAL_STATS)}, got eval_stats={eval_stats!r}")
        for name, val in (
            ("lambda_mu_init", lambda_mu_init),
            ("lambda_sigma_init", lambda_sigma_init),
            ("lambda_gamma_init", lambda_gamma_init),
            ("lambda_beta_init", lambda_beta_init),
        ):
            if not math.isfinite(float(val)):
                raise ValueError(f"{name} must be a finite float (the initial lambda), got {name}={val!r}")
        self.impl = check_impl(impl)
        self.dim = int(dim)
        self.reduction = int(reduction)
        self.std_reduction = int(std_reduction)
        self.std_hidden = max(self.dim // self.std_reduction, 1)
        self.rescale_hidden = max(self.dim // self.reduction, 1)
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.use_encoders = bool(use_encoders)
        self.sync_stats = bool(sync_stats)
        self.eval_stats = eval_stats

        channel_affine(self, self.dim, elementwise_affine, bias)
        if self.use_encoders:
            self.encoder_dropout = nn.Dropout(float(dropout))
            self.std_encoder = nn.Linear(self.dim, self.std_hidden)
            self.mu_decoder = _decoder(self.std_hidden, self.dim)
            self.sigma_decoder = _decoder(self.std_hidden, self.dim)
            self.rescale_encoder = nn.Linear(self.dim, self.rescale_hidden)
            self.gamma_decoder = _decoder(self.rescale_hidden, self.dim)
            self.beta_decoder = _decoder(self.rescale_hidden, self.dim)
            for name, val in zip(_LAMBDAS, (lambda_mu_init, lambda_sigma_init, lambda_gamma_init, lambda_beta_init)):
                setattr(self, name, nn.Parameter(torch.tensor(float(val))))
        else:
            for name in _LAMBDAS:
                setattr(self, name, 0.0)
        self.register_buffer("running_mean", torch.zeros(self.dim))
        self.register_buffer("running_var", torch.ones(self.dim))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        place(self, device, dtype)

    # ---- encoder-decoders (on (1, C) statistics) -----------------------------------------
    def f_mu(self, mu: torch.Tensor) -> torch.Tensor:
        """The learned mean ``D_mu(E_s(drop(mu)))``."""
        return self.mu_decoder(self.std_encoder(self.encoder_dropout(mu)))

    def f_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        """The learned std before the softplus, ``D_sigma(E_s(drop(sigma)))``."""
        return self.sigma_decoder(self.std_encoder(self.encoder_dropout(sigma)))

    def g_gamma(self, sigma: torch.Tensor) -> torch.Tensor:
        """The adaptive scale before its sigmoid, ``D_gamma(E_r(sigma))``."""
        return self.gamma_decoder(self.rescale_encoder(sigma))

    def g_beta(self, mu: torch.Tensor) -> torch.Tensor:
        """The adaptive shift before its tanh, ``D_beta(E_r(mu))``."""
        return self.beta_decoder(self.rescale_encoder(mu))

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
        fast = fast_path("afn", self.impl)
        return fast(self, x) if fast is not None else self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"AFN expected last dimension {self.dim}, got shape {tuple(x.shape)}")
        if self.training or self.eval_stats == "batch":
            if self.training and x.numel() // self.dim < 2:
                raise ValueError("AFN needs more than one value per channel in training mode")
            fast = None if self.sync_stats else fast_path("afn_batch", self.impl)
            out = None if fast is None else fast(x.reshape(-1, self.dim), self.weight, self._affine_cpu, list(self.parameters()))
            if out is not None:  # the fast path took this call: y (M, C), mean, var
                y, mu, var = out
                if self.training:
                    self._update_running(mu, var, y.shape[0])
                return y.view(x.shape)
            mu, var, count = self._batch_moments(x)
            if self.training:
                self._update_running(mu.detach(), var.detach(), count)
        else:
            mu, var = self.running_mean.float(), self.running_var.float()
        scale, shift = self._affine(mu, var, x.device.type)
        return affine_output(x, scale, shift, self.impl)

    def _affine_cpu(self, mu: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._affine(mu, var, "cpu")

    @torch.no_grad()
    def eval_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, shift)`` (C,) float32 such that the eval-mode output is exactly
        ``addcmul(shift, x.float(), scale).to(x.dtype)``: with the running stats fixed, the
        encoder-decoders' outputs are constants (used by ``deploy``). Only for
        ``eval_stats="running"``: with batch statistics the eval output depends on the batch."""
        if self.eval_stats != "running":
            raise RuntimeError("AFN.eval_affine needs eval_stats='running' (with 'batch' the eval output depends on the batch)")
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
                l_mu = self.lambda_mu.clamp(0.0, 1.0)
                l_sigma = self.lambda_sigma.clamp(0.0, 1.0)
                l_gamma, l_beta = self.lambda_gamma, self.lambda_beta
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
            f"{self.dim}, hidden={self.std_hidden}/{self.rescale_hidden}, eps={self.eps}, "
            f"momentum={self.momentum}, use_encoders={self.use_encoders}, eval_stats={self.eval_stats!r}, "
            f"sync_stats={self.sync_stats}"
            + ("" if self.impl == "eager" else f", impl={self.impl!r}")
        )


def affine_output(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, impl: str = "eager") -> torch.Tensor:
    """AFN's last step ``x * scale + shift`` (float32, returned in x's dtype; the op
    ``"afn_affine"``: one C++ kernel sweep for ``impl="fused"`` on float32 CPU input without
    autograd). AFN and its deployed copy both end here, so their eval outputs are bit-identical."""
    fast = fast_path("afn_affine", impl)
    return (fast or affine)(x, scale, shift)


def affine(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """The per-channel affine map ``x * scale + shift`` in one multiply-add (float32, x's dtype out)."""
    return torch.addcmul(shift, x.float(), scale).to(x.dtype)
