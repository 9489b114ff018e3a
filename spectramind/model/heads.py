"""Decoder heads: the spectrum mean (:class:`MuHead`) and its uncalibrated standard deviation (:class:`SigmaHead`).

Both read the fused node features (B, N, D), one node per bin (bin 0 is FGS1, bins 1..N-1 are
AIRS in ascending wavelength) and are built from the ``model.decoders.mu_head`` and
``model.decoders.sigma_head`` config nodes (or the ``presets.decoders.*`` nodes). Each returns
one named tuple whatever its type.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spectramind.bins import N_BINS
from spectramind.model.capture import capturing

__all__ = ["MU_SCALES", "MuHead", "MuOutput", "SigmaHead", "SigmaOutput", "scale_operators"]

# AIRS groups per scale ("fine" is one group per bin). ~23.5 and ~5.9 bins a group on the 282-bin
# AIRS grid: coarse carries the continuum and the Rayleigh/haze slope, mid the molecular bands.
MU_SCALES: dict[str, int | None] = {"coarse": 12, "mid": 48, "fine": None}

# How far below log(sigma_min) the flow head softly floors its log-scale: see SigmaHead.
_FLOOR_BELOW_SIGMA_MIN = 4.0


def _trunk(in_dim: int, hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout))


def _check_nodes(nodes: Tensor, n_bins: int, in_dim: int, name: str) -> None:
    # Under tracing shapes are traced values; checking them would freeze the example's shapes.
    if capturing():
        return
    if nodes.dim() != 3 or tuple(nodes.shape[1:]) != (n_bins, in_dim):
        raise ValueError(f"{name} nodes must have shape (batch, {n_bins}, {in_dim}), got {tuple(nodes.shape)}")


def scale_operators(n_groups: int, n_bins: int = N_BINS) -> tuple[Tensor, Tensor]:
    """Pooling and upsampling matrices of one spectral scale.

    Bin 0 (FGS1, 0.7 um, far from the AIRS band) is a group of its own; bins 1..n_bins-1 are
    split into ``n_groups`` contiguous groups of near-equal size. ``pool`` averages the bins of a
    group; ``up`` interpolates linearly between group centres (constant beyond the first and last
    centre), so every column of ``up`` sums to 1 and a constant per-group value gives a constant
    spectrum, with no steps at group edges.

    Shapes: pool (n_groups + 1, n_bins), up (n_groups + 1, n_bins).
    """
    n_airs = n_bins - 1
    if not 1 <= n_groups <= n_airs:
        raise ValueError(f"n_groups must be in [1, {n_airs}] for {n_bins} bins, got {n_groups}")
    edges = torch.linspace(0, n_airs, n_groups + 1).round().long()
    pool = torch.zeros(n_groups + 1, n_bins)
    pool[0, 0] = 1.0
    centres = torch.empty(n_groups)
    for g in range(n_groups):
        lo, hi = int(edges[g]), int(edges[g + 1])
        pool[g + 1, 1 + lo : 1 + hi] = 1.0 / (hi - lo)
        centres[g] = 0.5 * (lo + hi - 1)
    up = torch.zeros(n_groups + 1, n_bins)
    up[0, 0] = 1.0
    a = torch.arange(n_airs, dtype=torch.float32)
    right = torch.searchsorted(centres, a, right=True).clamp(1, max(n_groups - 1, 1))
    left = right - 1
    if n_groups == 1:
        up[1, 1:] = 1.0
    else:
        t = ((a - centres[left]) / (centres[right] - centres[left])).clamp(0.0, 1.0)
        cols = torch.arange(1, n_bins)
        up[left + 1, cols] += 1.0 - t
        up[right + 1, cols] += t
    return pool, up


class MuOutput(NamedTuple):
    """Output of :class:`MuHead`.

    mu: (B, N) predicted spectrum.
    partials: (B, S, N) the spectrum of each scale in ``MuHead.scales`` order (coarse, mid, fine
        upsampled to N bins); ``partials.sum(1) == mu``. For ``single``, S = 1 and it is mu.
    """

    mu: Tensor
    partials: Tensor


class MuHead(nn.Module):
    r"""The spectrum mean, predicted per bin or as a sum over spectral scales.

    ``multiscale``:

    .. math::
        \mathbf{h}_i &= \mathrm{Dropout}(\mathrm{GELU}(W\mathbf{x}_i + \mathbf{b})) \\
        \mu^{(s)} &= U_s\,\mathrm{MLP}_s(P_s\mathbf{h}), \quad s \in \{\text{coarse}, \text{mid}\} \\
        \mu^{(\text{fine})}_i &= \mathrm{MLP}_{\text{fine}}(\mathbf{h}_i), \qquad
        \mu = \textstyle\sum_s \mu^{(s)}

    with :math:`P_s` the mean over the bins of each group and :math:`U_s` the linear
    interpolation back to the bins (:func:`scale_operators`; coarse = FGS1 + 12 AIRS groups,
    mid = FGS1 + 48). The coarse and mid spectra are smooth by construction and the fine one is
    the per-bin residual, so an auxiliary loss on the partials can ask each scale for its own
    part of the spectrum. ``single``: :math:`\mu_i = \mathrm{MLP}(\mathbf{x}_i)`. Every MLP is
    ``hidden`` wide with ``dropout``.

    Built from ``model.decoders.mu_head``: ``type`` (``multiscale | single``), ``hidden``,
    ``dropout``, ``scales`` (a non-empty subset of coarse, mid, fine), ``aux_losses`` (kept as an
    attribute for the losses; the partials are always returned).

    Shapes:
        - **input:** nodes :math:`(B, N, D_{in})`
        - **output:** :class:`MuOutput` with mu :math:`(B, N)` and partials :math:`(B, S, N)`
    """

    def __init__(self, cfg: Mapping[str, Any], in_dim: int, n_bins: int = N_BINS) -> None:
        super().__init__()
        kind = str(cfg["type"])
        if kind not in ("multiscale", "single"):
            raise ValueError(f"decoders.mu_head.type must be 'multiscale' or 'single', got {kind!r}")
        self.kind, self.in_dim, self.n_bins = kind, in_dim, n_bins
        self.aux_losses = bool(cfg.get("aux_losses", False))
        hidden, dropout = int(cfg["hidden"]), float(cfg["dropout"])
        if kind == "single":
            self.scales: tuple[str, ...] = ("fine",)
            self.trunk = _trunk(in_dim, hidden, dropout)
            self.fine = nn.Linear(hidden, 1)
            return
        asked: Sequence[str] = [str(s) for s in cfg["scales"]]
        unknown = sorted(set(asked) - set(MU_SCALES))
        if unknown or not asked or len(set(asked)) != len(asked):
            raise ValueError(
                f"decoders.mu_head.scales must be distinct names from {', '.join(MU_SCALES)}, got {list(asked)}"
            )
        self.scales = tuple(s for s in MU_SCALES if s in asked)
        self.trunk = _trunk(in_dim, hidden, dropout)
        self.group_heads = nn.ModuleDict()
        for name in self.scales:
            n_groups = MU_SCALES[name]
            if n_groups is None:
                self.fine = nn.Linear(hidden, 1)
                continue
            pool, up = scale_operators(n_groups, n_bins)
            # Derived from n_bins, so not persistent: checkpoints carry weights only.
            self.register_buffer(f"pool_{name}", pool, persistent=False)
            self.register_buffer(f"up_{name}", up, persistent=False)
            self.group_heads[name] = nn.Sequential(
                nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1)
            )

    def forward(self, nodes: Tensor) -> MuOutput:
        _check_nodes(nodes, self.n_bins, self.in_dim, "mu_head")
        h = self.trunk(nodes)
        parts = []
        for name in self.scales:
            if name == "fine":
                parts.append(self.fine(h).squeeze(-1))
                continue
            pool: Tensor = getattr(self, f"pool_{name}")
            up: Tensor = getattr(self, f"up_{name}")
            groups = self.group_heads[name](torch.matmul(pool.to(h.dtype), h)).squeeze(-1)  # (B, G)
            parts.append(torch.matmul(groups, up.to(groups.dtype)))
        partials = torch.stack(parts, dim=1)
        return MuOutput(mu=partials.sum(1), partials=partials)


class SigmaOutput(NamedTuple):
    """Output of :class:`SigmaHead`.

    sigma: (B, N) standard deviation, times the temperature when one is given.
    quantiles: (B, N, Q) quantiles of the residual y - mu at ``q_list`` (uncalibrated), non-decreasing
        in Q; (B, N, 0) for the flow head.
    """

    sigma: Tensor
    quantiles: Tensor


class SigmaHead(nn.Module):
    r"""The per-bin standard deviation: a conditional flow's local scale, or a spread of quantiles.

    ``flow``: per node, an MLP trunk :math:`\mathbf{h}_i` gives a base log-scale :math:`s_i` and
    the parameters :math:`(a_{ik}, r_{ik})_{k=1..K}` of :math:`K = 3` elementwise invertible maps
    of the standard-normal residual :math:`\varepsilon`:

    .. math::
        f_{ik}(e) = e^{a_{ik}}\big(e + \tanh(r_{ik})\tanh(e)\big), \quad
        f'_{ik}(e) = e^{a_{ik}}\big(1 + \tanh(r_{ik})\,\mathrm{sech}^2 e\big) > 0, \quad f_{ik}(0) = 0 \\
        y_i - \mu_i = e^{s_i}\, f_{iK}\circ\dots\circ f_{i1}(\varepsilon)

    Every map is odd and increasing, so the residual's median is 0 (:math:`\mu` stays the
    centre) and the tails may be heavier or lighter than the centre (:math:`r < 0` or
    :math:`> 0`). The Gaussian score needs one number per bin: :math:`\sigma` is the flow's
    local scale at the median, the slope of the composite at :math:`\varepsilon = 0`, which
    in closed form is

    .. math::
        \lambda_i = s_i + \sum_k \big(a_{ik} + \log 2 + \log\mathrm{sigmoid}(2 r_{ik})\big)
        = \log\Big(e^{s_i}\prod_k f'_{ik}(0)\Big), \\
        \tilde\lambda_i = \lambda_0 + \mathrm{softplus}(\lambda_i - \lambda_0), \quad
        \lambda_0 = \log\sigma_{min} - 4, \qquad
        \sigma_i = T\,\big(\sigma_{min} + \mathrm{softplus}(\tilde\lambda_i)\big)

    (:math:`1 + \tanh r = 2\,\mathrm{sigmoid}(2r)`, so the log-slope is finite for every
    :math:`r`). Softplus is the link from log-scale to scale: it equals :math:`e^{\lambda}` to a
    relative error :math:`e^{\lambda}/2` (< 0.1 % below :math:`\sigma = 2\cdot10^{-3}`, the
    regime of the labels) and grows linearly, not exponentially, for large :math:`\lambda`, so it
    cannot overflow in fp16. The soft floor :math:`\tilde\lambda \geq \lambda_0` keeps the term
    added to :math:`\sigma_{min}` at least :math:`\approx 1.8\,\%` of :math:`\sigma_{min}`, so
    :math:`\sigma > \sigma_{min}` holds in floating point for every input, not only in exact
    arithmetic. :meth:`flow_residual` applies the flow itself.

    ``quantile``: the trunk predicts the residual's quantiles at ``quantile.q_list``
    :math:`p_1 < \dots < p_Q` made non-decreasing by construction,
    :math:`q_1 = o_1,\ q_{j+1} = q_j + \mathrm{softplus}(o_{j+1})`, and
    :math:`\sigma = T\,\big((q_Q - q_1)/(\Phi^{-1}(p_Q) - \Phi^{-1}(p_1)) + \sigma_{min}\big)`,
    for [0.1, 0.5, 0.9] the 10-90 % spread over :math:`2 \times 1.2816`. The quantiles are
    returned uncalibrated (no temperature) for the pinball and monotonicity losses;
    ``quantile.monotonic_penalty`` is the loss's business and is zero on these quantiles.

    Temperature scaling: with ``temperature_scaling_compatible`` (default true) ``forward``
    takes a temperature :math:`T` (a scalar or one per bin) that multiplies the returned
    :math:`\sigma`; without one :math:`T = 1` and :math:`\sigma` is the uncalibrated head output.

    Built from ``model.decoders.sigma_head``: ``type`` (``flow | quantile``), ``hidden``,
    ``dropout``, ``activation`` (``softplus``), ``sigma_min`` (> 0),
    ``temperature_scaling_compatible``, ``quantile.q_list``.

    Shapes:
        - **input:** nodes :math:`(B, N, D_{in})`, temperature :math:`()`, :math:`(1,)`,
          :math:`(N,)` or None
        - **output:** :class:`SigmaOutput` with sigma :math:`(B, N)` and quantiles
          :math:`(B, N, Q)`, Q = 0 for ``flow``
    """

    n_transforms: int = 3

    def __init__(self, cfg: Mapping[str, Any], in_dim: int, n_bins: int = N_BINS) -> None:
        super().__init__()
        kind = str(cfg["type"])
        if kind not in ("flow", "quantile"):
            raise ValueError(f"decoders.sigma_head.type must be 'flow' or 'quantile', got {kind!r}")
        activation = str(cfg.get("activation", "softplus"))
        if activation != "softplus":
            raise ValueError(f"decoders.sigma_head.activation must be 'softplus', got {activation!r}")
        sigma_min = float(cfg["sigma_min"])
        if not sigma_min > 0.0:
            raise ValueError(f"decoders.sigma_head.sigma_min must be > 0, got {sigma_min}")
        self.kind, self.in_dim, self.n_bins = kind, in_dim, n_bins
        self.sigma_min = sigma_min
        self.log_floor = math.log(sigma_min) - _FLOOR_BELOW_SIGMA_MIN
        self.temperature_ok = bool(cfg.get("temperature_scaling_compatible", True))
        hidden, dropout = int(cfg["hidden"]), float(cfg["dropout"])
        self.trunk = _trunk(in_dim, hidden, dropout)
        if kind == "flow":
            self.q_list: tuple[float, ...] = ()
            self.log_scale = nn.Linear(hidden, 1)
            self.transforms = nn.Linear(hidden, 2 * self.n_transforms)
            return
        q_list = tuple(float(q) for q in cfg["quantile"]["q_list"])
        if len(q_list) < 2 or any(not 0.0 < q < 1.0 for q in q_list) or list(q_list) != sorted(set(q_list)):
            raise ValueError(
                f"decoders.sigma_head.quantile.q_list must be >= 2 increasing levels in (0, 1), got {list(q_list)}"
            )
        self.q_list = q_list
        normal = NormalDist()
        self.z_span = normal.inv_cdf(q_list[-1]) - normal.inv_cdf(q_list[0])
        self.quantile_out = nn.Linear(hidden, len(q_list))

    def _flow_params(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(s (B, N), a (B, N, K), r (B, N, K)) from the trunk features."""
        a, r = self.transforms(h).chunk(2, dim=-1)
        return self.log_scale(h).squeeze(-1), a, r

    def flow_residual(self, eps: Tensor, nodes: Tensor) -> Tensor:
        """The flow applied to standard-normal draws ``eps`` (B, N): residuals y - mu (B, N), before temperature."""
        if self.kind != "flow":
            raise ValueError(f"flow_residual needs a flow sigma head, this one is {self.kind!r}")
        _check_nodes(nodes, self.n_bins, self.in_dim, "sigma_head")
        s, a, r = self._flow_params(self.trunk(nodes))
        e = eps
        for k in range(self.n_transforms):
            e = torch.exp(a[..., k]) * (e + torch.tanh(r[..., k]) * torch.tanh(e))
        return torch.exp(s) * e

    def _temperature(self, temperature: Tensor | None, like: Tensor) -> Tensor | None:
        if temperature is None:
            return None
        if not self.temperature_ok:
            raise ValueError("decoders.sigma_head.temperature_scaling_compatible is false: no temperature allowed")
        allowed = ((), (1,), (self.n_bins,))
        if not capturing() and tuple(temperature.shape) not in allowed:
            raise ValueError(
                f"temperature must be a scalar or have shape ({self.n_bins},), got {tuple(temperature.shape)}"
            )
        return temperature.to(like.dtype)

    def forward(self, nodes: Tensor, temperature: Tensor | None = None) -> SigmaOutput:
        _check_nodes(nodes, self.n_bins, self.in_dim, "sigma_head")
        h = self.trunk(nodes)
        if self.kind == "flow":
            s, a, r = self._flow_params(h)
            log_slope = s + (a + math.log(2.0) + F.logsigmoid(2.0 * r)).sum(-1)
            floored = self.log_floor + F.softplus(log_slope - self.log_floor)
            sigma = self.sigma_min + F.softplus(floored)
            quantiles = sigma.new_zeros(sigma.shape[0], sigma.shape[1], 0)
        else:
            o = self.quantile_out(h)
            steps = torch.cat([o[..., :1], F.softplus(o[..., 1:])], dim=-1)
            quantiles = torch.cumsum(steps, dim=-1)
            sigma = (quantiles[..., -1] - quantiles[..., 0]) / self.z_span + self.sigma_min
        t = self._temperature(temperature, sigma)
        if t is not None:
            sigma = sigma * t
        return SigmaOutput(sigma=sigma, quantiles=quantiles)
