"""Training losses: the Gaussian negative log-likelihood and the symbolic (physics-prior) pack.

The supervised objective is::

    total = gll_weight * GLL(mu, sigma, y)
          + pinball_weight * pinball(quantiles, y)                  (only when quantiles are given)
          + symbolic_weight_scale * sum_t lambda_t * L_t(mu, quantiles)   (only when symbolic.enable)

with ``t`` over the symbolic terms configured under ``model.losses.symbolic``: smoothness,
nonnegativity, molecular_coherence, seam_continuity, ratio_envelopes, quantile_monotonicity.
Every term is a scalar averaged over the batch, so a term does not grow with the batch size.

All spectra are (B, 283) in (Rp/Rs)^2 units, bin 0 = FGS1, bins 1..282 = AIRS in ascending
wavelength. The symbolic terms are computed on those raw units (no rescaling), so the squared
terms (smoothness, nonnegativity, seam, quantile crossing) are of order (feature size)^2 ~ 1e-8;
molecular_coherence (normalised) is scale free.

Config keys read beyond ``configs/model/base.yaml`` (all optional, defaults in brackets):
``losses.fgs1_weight`` [57.846, the ADC2025 weight], ``losses.pinball_weight`` [1.0],
``losses.symbolic.<term>.enable`` [true], ``seam_continuity.context`` [3],
``molecular_coherence.floor`` [1e-6], ``losses.symbolic_unit`` [1.0: the unit mu and the quantiles are
divided by before the symbolic terms; the model config sets 1e-4, so the squared terms of a
100 ppm feature are O(1) next to the GLL instead of 1e-8]. The quantile levels and
``monotonic_penalty`` live in ``model.decoders.sigma_head.quantile`` and are passed as ``quantile_cfg``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spectramind.bins import N_AIRS, N_BINS, BinGrid
from spectramind.metric import FGS1_WEIGHT, SIGMA_MIN

__all__ = [
    "SYMBOLIC_TERMS",
    "CoherenceBasis",
    "SymbolicLoss",
    "V50Loss",
    "band_strength",
    "bin_weights",
    "coherence_basis",
    "gaussian_nll",
    "molecular_coherence_loss",
    "nonnegativity_loss",
    "pinball_loss",
    "quantile_monotonicity_loss",
    "ratio_envelope_loss",
    "seam_continuity_loss",
    "smoothness_loss",
    "total_loss",
]

SYMBOLIC_TERMS: tuple[str, ...] = (
    "smoothness",
    "nonnegativity",
    "molecular_coherence",
    "seam_continuity",
    "ratio_envelopes",
    "quantile_monotonicity",
)
LOG_2PI = math.log(2.0 * math.pi)
# Windows shorter than this cannot hold a band shape once their mean is removed.
MIN_WINDOW_BINS = 3


# ---------------------------------------------------------------- boundary checks


def _check_spectrum(name: str, x: Tensor) -> None:
    if x.ndim != 2 or x.shape[1] != N_BINS:
        raise ValueError(f"{name} must have shape (B, {N_BINS}), got {tuple(x.shape)}")


def _check_mask(name: str, mask: Tensor) -> None:
    if mask.shape != (N_BINS,):
        raise ValueError(f"{name} must have shape ({N_BINS},), got {tuple(mask.shape)}")


def _promote(x: Tensor) -> Tensor:
    # Squares of ppm-scale values (1e-4 ** 2 = 1e-8) underflow in fp16 and lose everything in bf16,
    # so losses are always evaluated in at least fp32, whatever precision the model ran in.
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


# ---------------------------------------------------------------- Gaussian log-likelihood


def bin_weights(fgs1_weight: float = FGS1_WEIGHT) -> Tensor:
    """Per-bin weights of the ADC2025 metric: ``fgs1_weight`` for bin 0, 1 for every AIRS bin.

    Shapes: returns (283,), float32.
    """
    if not fgs1_weight > 0:
        raise ValueError(f"fgs1_weight must be positive, got {fgs1_weight}")
    w = torch.ones(N_BINS)
    w[0] = float(fgs1_weight)
    return w


def gaussian_nll(
    mu: Tensor,
    sigma: Tensor,
    y: Tensor,
    reduction: str = "mean",
    weights: Tensor | None = None,
    sigma_min: float = SIGMA_MIN,
) -> Tensor:
    """Negative Gaussian log-likelihood, optionally weighted per bin.

    .. math::
        \\ell_{bj} = \\tfrac12 \\left(\\log 2\\pi + 2\\log\\sigma_{bj}
                     + \\left(\\frac{y_{bj}-\\mu_{bj}}{\\sigma_{bj}}\\right)^2\\right)

    ``sigma`` is clipped below at ``sigma_min`` (1e-15, as the ADC2025 metric does). With
    per-bin ``weights`` w_j: ``"none"`` returns w_j * l_bj, ``"sum"`` their sum, and ``"mean"``
    the weighted average sum_bj w_j l_bj / (B sum_j w_j) -- the metric's weighting, so
    ``weights=bin_weights()`` counts FGS1 57.846 times. Without weights w_j = 1.

    Shapes:
        mu, sigma, y: (B, 283). weights: (283,) or None.
        returns: () for "mean"/"sum", (B, 283) for "none".
    """
    for name, x in (("mu", mu), ("sigma", sigma), ("y", y)):
        _check_spectrum(name, x)
    if not (mu.shape == sigma.shape == y.shape):
        raise ValueError(
            f"mu, sigma and y must have the same shape, got {tuple(mu.shape)}, {tuple(sigma.shape)}, {tuple(y.shape)}"
        )
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    mu, sigma, y = _promote(mu), _promote(sigma), _promote(y)
    s = sigma.clamp_min(sigma_min)
    nll = 0.5 * (LOG_2PI + 2.0 * torch.log(s) + ((y - mu) / s) ** 2)
    if weights is None:
        if reduction == "none":
            return nll
        return nll.sum() if reduction == "sum" else nll.mean()
    _check_mask("weights", weights)
    w = weights.to(device=nll.device, dtype=nll.dtype)
    weighted = nll * w
    if reduction == "none":
        return weighted
    if reduction == "sum":
        return weighted.sum()
    return weighted.sum() / (nll.shape[0] * w.sum())


# ---------------------------------------------------------------- symbolic terms


def smoothness_loss(mu: Tensor, window: int = 2, exclude: Tensor | None = None) -> Tensor:
    """Mean squared deviation of each AIRS bin from the mean of its +-``window`` neighbours.

    With ``a = mu[:, 1:]`` the AIRS spectrum (FGS1 is not spectrally adjacent to AIRS) and
    w = ``window``:

    .. math::
        r_{bj} = a_{bj} - \\frac{1}{2w} \\sum_{1 \\le |k| \\le w} a_{b,j+k}, \\qquad
        L = \\frac{1}{B |J|} \\sum_b \\sum_{j \\in J} r_{bj}^2

    J holds the AIRS bins with a full neighbourhood (w <= j <= 281 - w) whose full-grid bin
    1 + j is not in ``exclude`` (molecule windows, where lines may be sharp). For w = 1,
    r is minus half the second difference; a linear spectrum gives exactly 0; a spike of
    height h with all 2w + 1 residuals counted gives h^2 (1 + 1/(2w)) / |J| per spectrum.
    An empty J gives 0.

    Shapes:
        mu: (B, 283). exclude: (283,) bool or None. returns: ().
    """
    _check_spectrum("mu", mu)
    if window < 1 or 2 * window + 1 > N_AIRS:
        raise ValueError(f"smoothness window must be in [1, {(N_AIRS - 1) // 2}], got {window}")
    a = _promote(mu)[:, 1:]
    patches = a.unfold(1, 2 * window + 1, 1)  # (B, 282 - 2w, 2w + 1)
    centre = patches[..., window]
    resid = centre - (patches.sum(-1) - centre) / (2 * window)
    if exclude is None:
        return (resid**2).mean()
    _check_mask("exclude", exclude)
    keep = (~exclude.to(device=a.device, dtype=torch.bool))[1 + window : N_BINS - window].to(a.dtype)
    # clamp_min keeps an all-excluded grid at 0 instead of 0/0, without a host sync on keep.any().
    return (resid**2 * keep).sum() / (a.shape[0] * keep.sum().clamp_min(1.0))


def nonnegativity_loss(mu: Tensor, power: float = 2.0) -> Tensor:
    """Mean penalty on negative transit depths.

    .. math:: L = \\frac{1}{283 B} \\sum_{b,j} \\mathrm{relu}(-\\mu_{bj})^p

    ``power`` p >= 1 (below 1 the gradient at mu = 0 is infinite).

    Shapes:
        mu: (B, 283). returns: ().
    """
    _check_spectrum("mu", mu)
    if not power >= 1:
        raise ValueError(f"nonnegativity power must be >= 1, got {power}")
    return (F.relu(-_promote(mu)) ** power).mean()


class CoherenceBasis(NamedTuple):
    """Padded description of the molecule windows for :func:`molecular_coherence_loss`.

    Attributes:
        index: (W, L) int64, full-grid bin of each slot of each window (0 in padding).
        valid: (W, L) float64, 1 for real bins, 0 for padding.
        basis: (W, L, K) float64, orthonormal columns, zero in padding and orthogonal to the
            constant over each window: the shapes a band may take inside the window.
        nonneg_amplitude: True for a single template column whose amplitude must be >= 0.
    """

    index: Tensor
    valid: Tensor
    basis: Tensor
    nonneg_amplitude: bool


def coherence_basis(windows: Sequence[tuple[int, int]], use_templates: bool = True) -> CoherenceBasis:
    """The band shapes allowed inside each inclusive bin window ``(lo, hi)``.

    With ``use_templates`` the shape is one Gaussian band profile per window, centred on the
    window, standard deviation (hi - lo + 1) / 4 bins (the window spans +-2 sigma), with a
    non-negative amplitude because absorption only raises the transit depth. Without
    templates the allowed shapes are any quadratic in the bin index (ramps, bumps, dips): a
    template-free "the band is smooth" prior. Windows shorter than 3 bins are skipped.

    Shapes: see :class:`CoherenceBasis` (W = number of windows kept, K = 1 or 2).
    """
    kept = [(int(lo), int(hi)) for lo, hi in windows if int(hi) - int(lo) + 1 >= MIN_WINDOW_BINS]
    for lo, hi in kept:
        if not 0 <= lo <= hi < N_BINS:
            raise ValueError(f"coherence window [{lo}, {hi}] must satisfy 0 <= lo <= hi < {N_BINS}")
    k = 1 if use_templates else 2
    length = max((hi - lo + 1 for lo, hi in kept), default=0)
    index = np.zeros((len(kept), length), dtype=np.int64)
    valid = np.zeros((len(kept), length))
    basis = np.zeros((len(kept), length, k))
    for w, (lo, hi) in enumerate(kept):
        n = hi - lo + 1
        x = np.arange(n, dtype=np.float64)
        if use_templates:
            centre, width = (n - 1) / 2.0, n / 4.0
            cols = np.exp(-0.5 * ((x - centre) / width) ** 2)[:, None]
        else:
            cols = np.stack([x, x * x], axis=1)
        cols = cols - cols.mean(axis=0, keepdims=True)
        q, _ = np.linalg.qr(cols)
        index[w, :n] = np.arange(lo, hi + 1)
        valid[w, :n] = 1.0
        basis[w, :n] = q
    return CoherenceBasis(torch.from_numpy(index), torch.from_numpy(valid), torch.from_numpy(basis), use_templates)


def molecular_coherence_loss(
    mu: Tensor,
    basis: CoherenceBasis,
    normalize_within_window: bool = True,
    floor: float = 1e-6,
) -> Tensor:
    """How much of the structure inside each molecule window the allowed band shape leaves unexplained.

    For window w with n_w bins, x = mu inside the window minus its window mean, Q = the
    window's basis (:func:`coherence_basis`), c = Q^T x (clamped at 0 for templates), e = x - Q c:

    .. math::
        \\ell_{bw} = \\frac{\\lVert e \\rVert^2}{\\lVert x \\rVert^2 + n_w f^2}
            \\ (\\text{normalize\\_within\\_window}), \\qquad
        \\ell_{bw} = \\frac{\\lVert e \\rVert^2}{n_w} \\ (\\text{otherwise}), \\qquad
        L = \\operatorname{mean}_{b,w} \\ell_{bw}

    Normalised, a template window gives 1 - relu(cos(x, t))^2: 0 for a band of the template's
    shape at any depth, ~1 for a dip or structure orthogonal to the band, and 0 for a flat
    window (a planet may lack a molecule). ``floor`` f (RMS, in mu units; 1 ppm) keeps structure
    far below the noise from counting as a full incoherent window. Unnormalised, the term is
    the mean squared unexplained residual in mu^2 units. No windows give 0.

    Shapes:
        mu: (B, 283). returns: ().
    """
    _check_spectrum("mu", mu)
    m = _promote(mu)
    if basis.index.shape[0] == 0:
        return m.new_zeros(())
    index = basis.index.to(m.device)
    valid = basis.valid.to(device=m.device, dtype=m.dtype)
    q = basis.basis.to(device=m.device, dtype=m.dtype)
    n = valid.sum(-1)  # (W,)
    x = m[:, index] * valid  # (B, W, L)
    xc = (x - (x.sum(-1) / n)[..., None]) * valid
    coef = torch.einsum("bwl,wlk->bwk", xc, q)
    if basis.nonneg_amplitude:
        coef = F.relu(coef)
    resid = xc - torch.einsum("bwk,wlk->bwl", coef, q)
    unexplained = (resid**2).sum(-1)  # (B, W)
    if normalize_within_window:
        return (unexplained / ((xc**2).sum(-1) + n * floor**2)).mean()
    return (unexplained / n).mean()


def seam_continuity_loss(mu: Tensor, seam_index: int, context: int = 3) -> Tensor:
    """Excess squared jump across the AIRS detector seam.

    With d_i = mu[:, i] - mu[:, i-1] and s = ``seam_index`` (first bin past the seam):

    .. math::
        L = \\frac1B \\sum_b \\mathrm{relu}\\Big(d_{bs}^2
              - \\operatorname{mean}_{i \\in N} d_{bi}^2\\Big), \\quad
        N = \\{ i : \\max(2, s-c) \\le i \\le \\min(282, s+c),\\ i \\ne s \\}

    c = ``context``; only AIRS pairs count (i >= 2), and an empty N means a typical step of 0.
    A smooth spectrum (steps at the seam like its neighbours') costs ~0; a step h on a flat
    spectrum costs h^2; on a ramp of slope g it costs (g + h)^2 - g^2.

    Shapes:
        mu: (B, 283). returns: ().
    """
    _check_spectrum("mu", mu)
    if not 2 <= seam_index <= N_BINS - 1:
        raise ValueError(f"seam_index must be an AIRS bin in [2, {N_BINS - 1}], got {seam_index}")
    if context < 0:
        raise ValueError(f"seam context must be >= 0, got {context}")
    m = _promote(mu)
    d2 = (m[:, 2:] - m[:, 1:-1]) ** 2  # column i - 2 holds d_i for i = 2..282
    jump = d2[:, seam_index - 2]
    near = [i - 2 for i in range(max(2, seam_index - context), min(N_BINS - 1, seam_index + context) + 1)]
    near = [i for i in near if i != seam_index - 2]
    typical = d2[:, near].mean(-1) if near else torch.zeros_like(jump)
    return F.relu(jump - typical).mean()


def band_strength(mu: Tensor, mask: Tensor, continuum: Tensor) -> Tensor:
    """Mean depth inside ``mask`` minus the mean depth of the ``continuum`` bins.

    Both masks must select at least one bin.

    Shapes:
        mu: (B, 283). mask, continuum: (283,) bool. returns: (B,).
    """
    _check_spectrum("mu", mu)
    _check_mask("mask", mask)
    _check_mask("continuum", continuum)
    m = _promote(mu)
    inside = mask.to(device=m.device, dtype=m.dtype)
    outside = continuum.to(device=m.device, dtype=m.dtype)
    return (m * inside).sum(-1) / inside.sum() - (m * outside).sum(-1) / outside.sum()


def ratio_envelope_loss(
    mu: Tensor,
    mask_a: Tensor,
    mask_b: Tensor,
    continuum: Tensor,
    bounds: tuple[float, float],
) -> Tensor:
    """Penalty on molecule A's band strength leaving ``bounds`` = (lo, hi) times molecule B's.

    .. math::
        L = \\frac1B \\sum_b \\mathrm{relu}\\big(S_A(\\mu_b) - hi\\,S_B(\\mu_b)\\big)^2
              + \\mathrm{relu}\\big(lo\\,S_B(\\mu_b) - S_A(\\mu_b)\\big)^2

    S = :func:`band_strength`. This is the envelope lo <= S_A / S_B <= hi multiplied through by
    S_B, so it is squared in the units of mu like the other symbolic terms and stays bounded when
    B has no band: the ratio itself would divide by ~0 and swamp every other loss, while here a
    missing B band only asks A's band not to exceed hi * S_B (about zero).

    Shapes:
        mu: (B, 283). mask_a, mask_b, continuum: (283,) bool. returns: ().
    """
    lo, hi = float(bounds[0]), float(bounds[1])
    if not lo <= hi:
        raise ValueError(f"ratio bounds must satisfy lo <= hi, got ({lo}, {hi})")
    s_a = band_strength(mu, mask_a, continuum)
    s_b = band_strength(mu, mask_b, continuum)
    return (F.relu(s_a - hi * s_b) ** 2 + F.relu(lo * s_b - s_a) ** 2).mean()


def _check_quantiles(quantiles: Tensor) -> None:
    if quantiles.ndim != 3 or quantiles.shape[1] != N_BINS:
        raise ValueError(f"quantiles must have shape (B, {N_BINS}, Q), got {tuple(quantiles.shape)}")


def quantile_monotonicity_loss(quantiles: Tensor) -> Tensor:
    """Mean squared crossing of consecutive quantile predictions (ordered by ascending level).

    .. math:: L = \\frac{1}{283 B (Q-1)} \\sum_{b,j,k} \\mathrm{relu}(q_{bjk} - q_{bj,k+1})^2

    Q = 1 gives 0.

    Shapes:
        quantiles: (B, 283, Q). returns: ().
    """
    _check_quantiles(quantiles)
    q = _promote(quantiles)
    if q.shape[-1] < 2:
        return q.new_zeros(())
    return (F.relu(q[..., :-1] - q[..., 1:]) ** 2).mean()


def pinball_loss(quantiles: Tensor, y: Tensor, q_list: Sequence[float]) -> Tensor:
    """Mean pinball (quantile) loss of the predicted quantiles.

    .. math::
        u = y_{bj} - \\hat q_{bjk}, \\qquad
        L = \\frac{1}{283 B Q} \\sum_{b,j,k} \\max(\\tau_k u, (\\tau_k - 1) u)

    with tau_k = ``q_list[k]`` in (0, 1).

    Shapes:
        quantiles: (B, 283, Q). y: (B, 283). returns: ().
    """
    _check_quantiles(quantiles)
    _check_spectrum("y", y)
    if y.shape[0] != quantiles.shape[0]:
        raise ValueError(f"y has {y.shape[0]} rows for {quantiles.shape[0]} rows of quantiles")
    if len(q_list) != quantiles.shape[-1]:
        raise ValueError(f"q_list has {len(q_list)} levels for {quantiles.shape[-1]} quantile outputs")
    if not all(0.0 < float(t) < 1.0 for t in q_list):
        raise ValueError(f"q_list levels must lie in (0, 1), got {list(q_list)}")
    q = _promote(quantiles)
    tau = torch.tensor([float(t) for t in q_list], device=q.device, dtype=q.dtype)
    u = _promote(y)[..., None] - q
    return torch.maximum(tau * u, (tau - 1.0) * u).mean()


# ---------------------------------------------------------------- the configured pack


def _sum_terms(values: Any, like: Tensor) -> Tensor:
    # Plain addition, not torch.stack: terms may differ in dtype (fp64 labels, fp32 predictions).
    total = like.new_zeros(())
    for value in values:
        total = total + value
    return total


def _node(cfg: Any, key: str) -> Any:
    """``cfg[key]`` for plain mappings and DictConfig alike; None when absent."""
    return cfg.get(key) if cfg is not None else None


def _required(node: Any, key: str, where: str) -> Any:
    if key not in node or node[key] is None:
        raise ValueError(f"{where}.{key} is missing")
    return node[key]


class SymbolicLoss(nn.Module):
    """The symbolic loss pack configured by ``model.losses.symbolic`` on a :class:`BinGrid`.

    ``forward`` returns each enabled term already multiplied by its ``lambda`` (and, for
    quantile_monotonicity, by ``decoders.sigma_head.quantile.monotonic_penalty``):

    ======================  =====================================================
    smoothness              lambda * :func:`smoothness_loss` (window; molecule windows
                            excluded when mask_strong_lines)
    nonnegativity           lambda * :func:`nonnegativity_loss` (power)
    molecular_coherence     lambda * :func:`molecular_coherence_loss` over every window of
                            every molecule (use_templates, normalize_within_window)
    seam_continuity         lambda * :func:`seam_continuity_loss` at ``grid.seam_index``
    ratio_envelopes         lambda * sum over pairs [A, B] of :func:`ratio_envelope_loss`
                            with bounds ``grid.ratio_bounds[f"{A}_{B}"]``; continuum = AIRS
                            bins outside every molecule window
    quantile_monotonicity   lambda * monotonic_penalty * :func:`quantile_monotonicity_loss`
    ======================  =====================================================

    A term is omitted from the dict when its config node is absent or has ``enable: false``,
    when ``symbolic.enable`` is false (the dict is empty), and, for quantile_monotonicity, when
    no quantiles are passed. A term with ``lambda: 0`` is present as an exact 0 (not computed).

    Shapes:
        mu: (B, 283). quantiles: (B, 283, Q) ordered by ascending level, or None.
        returns: dict of () tensors.
    """

    def __init__(self, cfg: Mapping[str, Any], grid: BinGrid, quantile_cfg: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        enable = _node(cfg, "enable")
        self.enabled = True if enable is None else bool(enable)
        self.lambdas: dict[str, float] = {}
        # Carries the module's device for an empty total().
        self.register_buffer("anchor", torch.zeros(()), persistent=False)
        if not self.enabled:
            return
        for term in SYMBOLIC_TERMS:
            node = _node(cfg, term)
            if node is None or not bool(node.get("enable", True)):
                continue
            self.lambdas[term] = float(_required(node, "lambda", f"losses.symbolic.{term}"))
        windows_mask = np.zeros(N_BINS, dtype=bool)
        for name in grid.molecules:
            windows_mask |= grid.molecule_mask(name)

        if "smoothness" in self.lambdas:
            node = cfg["smoothness"]
            self.window = int(node.get("window", 2))
            if self.window < 1 or 2 * self.window + 1 > N_AIRS:
                raise ValueError(
                    f"losses.symbolic.smoothness.window must be in [1, {(N_AIRS - 1) // 2}], got {self.window}"
                )
            exclude = windows_mask if bool(node.get("mask_strong_lines", True)) else np.zeros(N_BINS, dtype=bool)
            self.register_buffer("smooth_exclude", torch.from_numpy(exclude.copy()), persistent=False)

        if "nonnegativity" in self.lambdas:
            self.power = float(cfg["nonnegativity"].get("power", 2))
            if not self.power >= 1:
                raise ValueError(f"losses.symbolic.nonnegativity.power must be >= 1, got {self.power}")

        if "molecular_coherence" in self.lambdas:
            node = cfg["molecular_coherence"]
            windows = [rng for name in grid.molecules for rng in grid.molecule_windows[name]]
            basis = coherence_basis(windows, bool(node.get("use_templates", True)))
            self.coherence_nonneg = basis.nonneg_amplitude
            self.coherence_normalize = bool(node.get("normalize_within_window", True))
            self.coherence_floor = float(node.get("floor", 1e-6))
            self.register_buffer("coh_index", basis.index, persistent=False)
            self.register_buffer("coh_valid", basis.valid, persistent=False)
            self.register_buffer("coh_basis", basis.basis, persistent=False)

        if "seam_continuity" in self.lambdas:
            self.seam_index = int(grid.seam_index)
            self.seam_context = int(cfg["seam_continuity"].get("context", 3))
            if not 2 <= self.seam_index <= N_BINS - 1:
                raise ValueError(f"grid.seam_index must be an AIRS bin in [2, {N_BINS - 1}], got {self.seam_index}")

        if "ratio_envelopes" in self.lambdas:
            node = cfg["ratio_envelopes"]
            continuum = ~windows_mask
            continuum[0] = False  # FGS1 is another instrument at another wavelength: not AIRS continuum
            if not continuum.any():
                raise ValueError("losses.symbolic.ratio_envelopes: no AIRS bin lies outside the molecule windows")
            self.register_buffer("ratio_continuum", torch.from_numpy(continuum), persistent=False)
            self.ratio_pairs: list[tuple[str, str]] = []
            self.ratio_bounds: list[tuple[float, float]] = []
            masks = []
            for pair in node.get("pairs", []) or []:
                if len(pair) != 2:
                    raise ValueError(f"losses.symbolic.ratio_envelopes.pairs: {list(pair)} is not a pair [A, B]")
                a, b = str(pair[0]), str(pair[1])
                for mol in (a, b):
                    if mol not in grid.molecule_windows:
                        raise ValueError(
                            f"losses.symbolic.ratio_envelopes.pairs: unknown molecule {mol!r}; "
                            f"known: {', '.join(grid.molecules)}"
                        )
                key = f"{a}_{b}"
                if key not in grid.ratio_bounds:
                    raise ValueError(
                        f"losses.symbolic.ratio_envelopes.pairs: no ratio_bounds.{key} in the symbolic profile"
                    )
                lo, hi = grid.ratio_bounds[key]
                if not lo <= hi:
                    raise ValueError(f"ratio_bounds.{key} must satisfy lo <= hi, got ({lo}, {hi})")
                self.ratio_pairs.append((a, b))
                self.ratio_bounds.append((lo, hi))
                masks.append(np.stack([grid.molecule_mask(a), grid.molecule_mask(b)]))
            stacked = np.stack(masks) if masks else np.zeros((0, 2, N_BINS), dtype=bool)
            self.register_buffer("ratio_masks", torch.from_numpy(stacked), persistent=False)

        if "quantile_monotonicity" in self.lambdas:
            qcfg = quantile_cfg if quantile_cfg is not None else {}
            self.monotonic_penalty = float(qcfg.get("monotonic_penalty", 1.0))
            q_list = qcfg.get("q_list")
            self.q_list = [float(t) for t in q_list] if q_list is not None else None
            if self.q_list is not None and any(b <= a for a, b in zip(self.q_list, self.q_list[1:])):
                raise ValueError(f"decoders.sigma_head.quantile.q_list must be strictly ascending, got {self.q_list}")

    def _value(self, term: str, mu: Tensor, quantiles: Tensor | None) -> Tensor:
        """The unweighted term (without lambda)."""
        if term == "smoothness":
            return smoothness_loss(mu, self.window, self.smooth_exclude)
        if term == "nonnegativity":
            return nonnegativity_loss(mu, self.power)
        if term == "molecular_coherence":
            basis = CoherenceBasis(self.coh_index, self.coh_valid, self.coh_basis, self.coherence_nonneg)
            return molecular_coherence_loss(mu, basis, self.coherence_normalize, self.coherence_floor)
        if term == "seam_continuity":
            return seam_continuity_loss(mu, self.seam_index, self.seam_context)
        if term == "ratio_envelopes":
            total = _promote(mu).new_zeros(())
            for k, bounds in enumerate(self.ratio_bounds):
                mask_a, mask_b = self.ratio_masks[k]
                total = total + ratio_envelope_loss(mu, mask_a, mask_b, self.ratio_continuum, bounds)
            return total
        if term == "quantile_monotonicity":
            assert quantiles is not None
            return self.monotonic_penalty * quantile_monotonicity_loss(quantiles)
        raise KeyError(term)

    def forward(self, mu: Tensor, quantiles: Tensor | None = None) -> dict[str, Tensor]:
        _check_spectrum("mu", mu)
        if quantiles is not None:
            _check_quantiles(quantiles)
            if quantiles.shape[0] != mu.shape[0]:
                raise ValueError(f"quantiles has {quantiles.shape[0]} rows for {mu.shape[0]} rows of mu")
            q_list = getattr(self, "q_list", None)
            if q_list is not None and len(q_list) != quantiles.shape[-1]:
                raise ValueError(f"quantiles has {quantiles.shape[-1]} levels, q_list {q_list} has {len(q_list)}")
        terms: dict[str, Tensor] = {}
        for term, lam in self.lambdas.items():
            if term == "quantile_monotonicity" and quantiles is None:
                continue
            # lambda 0 is skipped rather than multiplied: 0 * inf would poison the total with NaN.
            terms[term] = lam * self._value(term, mu, quantiles) if lam != 0 else _promote(mu).new_zeros(())
        return terms

    def total(self, terms: Mapping[str, Tensor]) -> Tensor:
        """Sum of the (already weighted) terms; 0 for none.

        Shapes: each term (); returns ().
        """
        return _sum_terms(terms.values(), self.anchor)


# ---------------------------------------------------------------- the supervised objective


class V50Loss(nn.Module):
    """The supervised objective: weighted GLL, pinball on quantiles, and the symbolic pack.

    .. math::
        total = g \\cdot GLL_w(\\mu, \\sigma, y) + p \\cdot pinball(q, y)
              + s \\sum_t \\lambda_t L_t

    g = ``losses.gll_weight``; GLL_w is :func:`gaussian_nll` ("mean") weighted per bin by
    :func:`bin_weights` with ``losses.fgs1_weight`` (default 57.846, the ADC2025 weighting);
    the pinball term (weight ``losses.pinball_weight``, default 1) is present only when
    quantiles are passed, because a quantile head has no other signal to fit its levels;
    s = ``symbolic_weight_scale`` (the curriculum's ramp); the symbolic terms come from
    :class:`SymbolicLoss` and are present only when ``losses.symbolic.enable``.

    ``forward`` returns ``(total, terms)`` where ``terms`` maps "gll", "pinball" (when
    quantiles) and each symbolic term to the value exactly as it enters the total, so
    ``total == sum(terms.values())``.

    Shapes:
        mu, sigma, y: (B, 283). quantiles: (B, 283, Q) or None. returns: (), dict of ().
    """

    def __init__(
        self, cfg_losses: Mapping[str, Any], grid: BinGrid, quantile_cfg: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__()
        self.gll_weight = float(cfg_losses.get("gll_weight", 1.0))
        self.pinball_weight = float(cfg_losses.get("pinball_weight", 1.0))
        self.register_buffer("gll_bin_weight", bin_weights(float(cfg_losses.get("fgs1_weight", FGS1_WEIGHT))))
        symbolic_cfg = cfg_losses.get("symbolic")
        if symbolic_cfg is None:
            symbolic_cfg = {"enable": False}
        self.symbolic = SymbolicLoss(symbolic_cfg, grid, quantile_cfg)
        q_list = quantile_cfg.get("q_list") if quantile_cfg is not None else None
        self.q_list = [float(t) for t in q_list] if q_list is not None else None
        self.symbolic_unit = float(cfg_losses.get("symbolic_unit", 1.0))
        if not self.symbolic_unit > 0:
            raise ValueError(f"losses.symbolic_unit must be > 0, got {self.symbolic_unit}")

    def forward(
        self,
        mu: Tensor,
        sigma: Tensor,
        y: Tensor,
        quantiles: Tensor | None = None,
        symbolic_weight_scale: float = 1.0,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        terms = {"gll": self.gll_weight * gaussian_nll(mu, sigma, y, weights=self.gll_bin_weight)}
        if quantiles is not None:
            if self.q_list is None:
                raise ValueError(
                    "quantiles given without q_list: pass quantile_cfg (model.decoders.sigma_head.quantile)"
                )
            terms["pinball"] = self.pinball_weight * pinball_loss(quantiles, y, self.q_list)
        if self.symbolic.enabled:
            unit = self.symbolic_unit
            scaled_q = quantiles / unit if quantiles is not None else None
            for name, value in self.symbolic(mu / unit, scaled_q).items():
                terms[name] = symbolic_weight_scale * value
        return _sum_terms(terms.values(), terms["gll"]), terms


def total_loss(
    mu: Tensor,
    sigma: Tensor,
    y: Tensor,
    cfg_losses: Mapping[str, Any],
    grid: BinGrid,
    quantiles: Tensor | None = None,
    symbolic_weight_scale: float = 1.0,
    quantile_cfg: Mapping[str, Any] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One-shot :class:`V50Loss` (a training loop should build the module once and reuse it).

    Shapes:
        mu, sigma, y: (B, 283). quantiles: (B, 283, Q) or None. returns: (), dict of ().
    """
    loss = V50Loss(cfg_losses, grid, quantile_cfg).to(mu.device)
    return loss(mu, sigma, y, quantiles=quantiles, symbolic_weight_scale=symbolic_weight_scale)
