"""Physics baseline: a transit fit per wavelength bin, with honest error bars.

Per visit (one :class:`LightCurves`):

a. Transit window. The white-light curve (sum of the AIRS rows, plus FGS1 brought onto the
   AIRS time grid) is scanned with a trapezoid template whose total duration T14 comes from
   the star info (P, a/Rs, i) and a rough Rp/Rs from the depth of the dip; mid-transit is
   the least-squares best t0. Without usable star info, ingress and egress are the steepest
   drop and rise of the smoothed white light.
b. White-light shape. A batman quadratic-limb-darkened transit times a polynomial in time
   is fitted to the AIRS white light and to FGS1 together (shared t0, impact parameter and
   a/Rs, star info as start values; own Rp/Rs and linear limb-darkening coefficient per
   instrument). The polynomials are solved linearly inside the residual (variable
   projection), so the optimiser only sees the transit parameters.
   ``s(t) = (1 - model(t)) / rp**2`` is the unit-(Rp/Rs)^2 shape.
c. Per-bin depths. Every bin solves ``flux = P(t) * (1 - depth * s(t)) + regressors`` by
   weighted linear least squares, all 282 AIRS bins in one batched solve; the product
   ``P * s`` is linearised around the previous pass's polynomial, which converges in a few
   passes because the trend is small. Regressors: pointing (FGS1 centroids, AIRS trace) and,
   for AIRS, the white-light residual (common-mode systematics). Limb darkening changes
   with wavelength, so the AIRS shape carries a per-bin offset in u1, smooth in wavelength,
   fitted across all bins.
d. Sigma. The standard error of the depth scaled by the empirical residual chi^2 (not only
   the tabulated errors), times a correlated-noise factor (a Bartlett-weighted sandwich
   estimate from the residual autocovariance). Smoothing across AIRS neighbours
   (``smooth_bins``) turns the independent part into the noise of the weighted mean plus the
   estimated smoothing bias; the error all AIRS bins share through the white-light depth, and
   a floor, are added in quadrature afterwards; the total is scaled by ``sigma_inflation``.
e. Visits of a planet combine by inverse variance; depths are clipped at 0 (sigma kept),
   because the ADC2025 metric refuses negative values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import batman
import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from spectramind.bins import N_AIRS, N_BINS
from spectramind.data.adc import read_star_info
from spectramind.data.errors import PlanetDataError
from spectramind.data.lightcurves import LightCurves, list_lightcurves, running_mean
from spectramind.data.runner import RunSummary, run_planets
from spectramind.metric import write_submission
from spectramind.options import check_rules, coerce_fields, options_from

_MAD_TO_SIGMA = 1.4826
_B_MAX = 1.3  # impact parameters beyond 1 + Rp/Rs do not transit; 1.3 covers Rp/Rs <= 0.3


@dataclass
class BaselineOptions:
    """Options of the physics baseline; the fields are exactly the keys of ``configs/data/baseline.yaml``."""

    poly_degree: int = 2
    sigma_inflation: float = 0.8
    limb_darkening_airs: tuple[float, float] = (0.15, 0.18)
    limb_darkening_fgs1: tuple[float, float] = (0.40, 0.22)
    fit_limb_darkening: int = 2
    limb_darkening_prior: float = 0.2
    fit_inclination: bool = False
    fit_sma: bool = False
    geometry_prior: float = 0.05
    supersample: int = 5
    decorrelate_degree: int = 2
    common_mode: bool = True
    clip_sigma: float = 5.0
    red_noise_minutes: float = 60.0
    sigma_floor_ppm_airs: float = 10.0
    sigma_floor_ppm_fgs1: float = 5.0
    ld_trend_degree: int = 2
    smooth_bins: int = 4
    default_period_days: float = 3.0

    def __post_init__(self) -> None:
        # YAML and the command line hand over lists and loosely typed numbers.
        self.limb_darkening_airs = tuple(float(u) for u in self.limb_darkening_airs)  # type: ignore[assignment]
        self.limb_darkening_fgs1 = tuple(float(u) for u in self.limb_darkening_fgs1)  # type: ignore[assignment]
        coerce_fields(self, "baseline")
        check_rules(
            "baseline",
            self,
            (
                ("poly_degree", 0 <= self.poly_degree <= 5, "in [0, 5]"),
                ("sigma_inflation", self.sigma_inflation > 0, "> 0"),
                ("limb_darkening_airs", len(self.limb_darkening_airs) == 2, "[u1, u2]"),
                ("limb_darkening_fgs1", len(self.limb_darkening_fgs1) == 2, "[u1, u2]"),
                ("fit_limb_darkening", self.fit_limb_darkening in (0, 1, 2), "0, 1 or 2"),
                ("limb_darkening_prior", self.limb_darkening_prior >= 0, ">= 0"),
                ("geometry_prior", self.geometry_prior >= 0, ">= 0"),
                ("supersample", self.supersample >= 1, ">= 1"),
                ("decorrelate_degree", 0 <= self.decorrelate_degree <= 2, "0, 1 or 2"),
                ("clip_sigma", self.clip_sigma > 0, "> 0"),
                ("red_noise_minutes", self.red_noise_minutes >= 0, ">= 0"),
                ("sigma_floor_ppm_airs", self.sigma_floor_ppm_airs >= 0, ">= 0"),
                ("sigma_floor_ppm_fgs1", self.sigma_floor_ppm_fgs1 >= 0, ">= 0"),
                ("ld_trend_degree", -1 <= self.ld_trend_degree <= 5, "in [-1, 5]"),
                ("smooth_bins", self.smooth_bins >= 0, ">= 0"),
                ("default_period_days", self.default_period_days > 0, "> 0"),
            ),
        )

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> "BaselineOptions":
        """Build from ``cfg.data.baseline`` (any mapping); an unknown key is an error naming it."""
        return options_from(cls, cfg, "baseline")


@dataclass(frozen=True)
class WhiteLightFit:
    """The white-light transit of one visit (times in hours since the visit start).

    ``depth_airs`` / ``depth_fgs1`` are rp**2 of the AIRS white light and of FGS1, with
    1-sigma errors from the fit's Jacobian (all parameters free), scaled by the residual
    chi^2 and the correlated-noise factor.
    """

    t0: float
    period_h: float
    sma: float
    inc: float
    rp_airs: float
    rp_fgs1: float
    u_airs: tuple[float, float]
    u_fgs1: tuple[float, float]
    depth_airs: float
    depth_airs_sigma: float
    depth_fgs1: float
    depth_fgs1_sigma: float
    t14: float
    used_star: bool


# ---------------------------------------------------------------- small tools


def _robust_std(x: np.ndarray, axis: int = -1) -> np.ndarray:
    med = np.median(x, axis=axis, keepdims=True)
    return _MAD_TO_SIGMA * np.median(np.abs(x - med), axis=axis)


def _p2p_std(x: np.ndarray) -> np.ndarray:
    """White-noise level from point-to-point differences along the last axis: immune to
    transits and slow trends. Shape: x (..., T) -> (...)."""
    x = np.asarray(x, dtype=np.float64)
    if x.shape[-1] < 3:
        return np.maximum(np.std(x, axis=-1), 1e-6)
    d = np.diff(x, axis=-1)
    s = _robust_std(d) / math.sqrt(2.0)
    # A mostly constant series has MAD 0; its plain scatter (or a tiny level) keeps weights finite.
    return np.where(s > 0, s, np.maximum(np.std(d, axis=-1) / math.sqrt(2.0), 1e-6))


def _poly_basis(t: np.ndarray, degree: int) -> np.ndarray:
    """Powers of time scaled to [-1, 1] (well conditioned). Shape: (T, degree + 1)."""
    span = t[-1] - t[0]
    tau = (2 * (t - t[0]) / span - 1) if span > 0 else np.zeros_like(t)
    return np.vander(tau, degree + 1, increasing=True)


def _regressors(x: np.ndarray | None) -> np.ndarray | None:
    """Standardised extra regressors, dropping constant ones. Shape: (T, E) or None."""
    if x is None or x.shape[1] == 0:
        return None
    x = np.asarray(x, dtype=np.float64)
    sd = x.std(axis=0)
    keep = sd > 1e-12 * (np.abs(x).max(axis=0) + 1e-30)
    if not keep.any():
        return None
    x = x[:, keep]
    return (x - x.mean(axis=0)) / sd[keep]


def _pointing_terms(xy: np.ndarray, degree: int) -> np.ndarray:
    """Pointing regressors: offsets, and for degree 2 their squares and product, because an
    intrapixel response couples a centred PSF's flux to its offset quadratically.
    Shapes: xy (T, 2) -> (T, 0 | 2 | 5)."""
    x, y = np.asarray(xy, dtype=np.float64).T
    x, y = x - x.mean(), y - y.mean()
    terms = [] if degree < 1 else [x, y]
    if degree >= 2:
        terms += [x * x, y * y, x * y]
    return np.stack(terms, axis=1) if terms else np.zeros((len(x), 0))


def _clean_err(err: np.ndarray, flux_scale: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Tabulated errors in normalised units; non-positive or non-finite ones take the row median.

    Shapes: err (B, T), flux_scale (B,), fallback (B,) used for rows without any valid error.
    """
    e = err / flux_scale[:, None]
    ok = np.isfinite(e) & (e > 0)
    med = np.array([np.median(row[m]) if m.any() else f for row, m, f in zip(e, ok, fallback)])
    return np.where(ok, e, med[:, None])


def _trapezoid(t: np.ndarray, t0: np.ndarray, t14: float, t23: float) -> np.ndarray:
    """Unit-depth trapezoid. Shapes: t (T,), t0 (N,) -> (N, T)."""
    dt = np.abs(t[None, :] - t0[:, None])
    ramp = max((t14 - t23) / 2, 1e-6)
    return np.clip((t14 / 2 - dt) / ramp, 0.0, 1.0)


def _duration(period_h: float, sma: float, b: float, k: float, inner: bool = False) -> float:
    """Total (T14) or full (T23, ``inner``) duration of a circular-orbit transit, hours; 0 if none."""
    x = (1 - k) ** 2 - b * b if inner else (1 + k) ** 2 - b * b
    if x <= 0 or sma <= 1:
        return 0.0
    inc = math.acos(min(1.0, b / sma))
    arg = math.sqrt(x) / (sma * math.sin(inc))
    return period_h / math.pi * math.asin(min(1.0, arg))


def _star_geometry(star: pd.Series | Mapping | None) -> tuple[float, float, float] | None:
    """(period in hours, a/Rs, inclination in degrees) from star info, or None when unusable."""
    if star is None:
        return None
    try:
        p, a, i = float(star["P"]), float(star["sma"]), float(star["i"])
    except (KeyError, TypeError, ValueError):
        return None
    if not (np.isfinite(p) and np.isfinite(a) and np.isfinite(i)) or p <= 0 or a <= 1 or not 0 < i <= 90:
        return None
    # The eccentricity comes without its argument of periastron, so orbits are taken as
    # circular; fitting the impact parameter absorbs the resulting duration change.
    return p * 24.0, a, i


# ---------------------------------------------------------------- (a) transit window


def _white_light(lc: LightCurves) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AIRS white light (flux-weighted sum of the rows, normalised) and FGS1 normalised.

    Returns (airs_white (T_a,), fgs1 (T_f,), combined white on the AIRS grid (T_a,)).
    """
    flux = lc.airs_flux.astype(np.float64)
    good = np.median(flux, axis=1) > 0
    if not good.any():
        raise PlanetDataError(lc.planet_id, None, "airs_flux has no row with positive median flux", lc.visit)
    wa = flux[good].sum(axis=0)
    wa = wa / np.median(wa)
    ff = lc.fgs1[:, 0].astype(np.float64)
    if not np.median(ff) > 0:
        raise PlanetDataError(lc.planet_id, None, "fgs1 flux has non-positive median", lc.visit)
    ff = ff / np.median(ff)
    # FGS1 is sampled faster than AIRS: average over one AIRS cadence before interpolating.
    ta, tf = lc.airs_time_h, lc.fgs1_time_h
    ratio = max(1, int(round(np.median(np.diff(ta)) / np.median(np.diff(tf))))) if len(ta) > 1 and len(tf) > 1 else 1
    fi = np.interp(ta, tf, running_mean(ff, ratio))
    sa, sf = float(_p2p_std(wa)), float(_p2p_std(fi)) * math.sqrt(ratio)
    wc = (wa / sa**2 + fi / sf**2) / (1 / sa**2 + 1 / sf**2)
    return wa, ff, wc


def _scan_t0(t: np.ndarray, w: np.ndarray, t14: float, t23: float, degree: int) -> tuple[float, float]:
    """Least-squares scan of a trapezoid over mid-transit times. Returns (t0, depth)."""
    step = max(np.median(np.diff(t)) / 4, 1e-4) if len(t) > 1 else 1e-3
    grid = np.arange(t[0], t[-1] + step / 2, step)
    tmpl = _trapezoid(t, grid, t14, t23)  # (N, T)
    v = _poly_basis(t, degree)
    design = np.concatenate([np.broadcast_to(v, (len(grid),) + v.shape), -tmpl[..., None]], axis=2)
    coef, chi2 = _solve_batched(design, np.broadcast_to(w, tmpl.shape), np.ones_like(tmpl))
    chi2 = np.where(coef[:, -1] > 0, chi2, np.inf)
    best = int(np.argmin(chi2))
    if not np.isfinite(chi2[best]):
        return float(t[len(t) // 2]), 0.0
    return float(grid[best]), float(coef[best, -1])


def _gradient_window(t: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """(t0, T14) from the steepest drop (ingress) and steepest rise after it (egress)."""
    n = len(t)
    sm = running_mean(w, max(3, n // 30))
    g = np.gradient(sm, t)
    edge = max(1, n // 20)  # running-mean edges produce spurious slopes
    core = slice(edge, n - edge)
    i_in = edge + int(np.argmin(g[core]))
    after = g[i_in + 1 : n - edge]
    i_eg = i_in + 1 + int(np.argmax(after)) if len(after) else n - 1
    t_in, t_eg = t[i_in], t[i_eg]
    if t_eg <= t_in:
        return float(t[n // 2]), float((t[-1] - t[0]) / 3)
    return float((t_in + t_eg) / 2), float(t_eg - t_in)


def _transit_window(
    lc: LightCurves, geom: tuple[float, float, float] | None, degree: int, default_period_h: float
) -> tuple[float, float, float, float, float, bool]:
    """Returns (t0, T14, rough depth, period_h, a/Rs, star_used)."""
    _, _, wc = _white_light(lc)
    t = lc.airs_time_h
    rough = float(np.median(wc) - np.min(running_mean(wc, max(3, len(wc) // 25))))
    k = math.sqrt(max(rough, 1e-5))
    if geom is not None:
        period_h, sma, inc = geom
        b = sma * math.cos(math.radians(inc))
        t14 = _duration(period_h, sma, b, k)
        if 0 < t14 < 2 * (t[-1] - t[0]):
            t23 = _duration(period_h, sma, b, k, inner=True)
            t0, depth = _scan_t0(t, wc, t14, t23, degree)
            if depth > 0:
                return t0, t14, depth, period_h, sma, True
    t0, t14 = _gradient_window(t, wc)
    period_h = default_period_h
    # a circular, central transit of this duration and period
    sma = (1 + k) / math.sin(min(math.pi / 2, math.pi * t14 / period_h))
    return t0, t14, max(rough, 1e-5), period_h, max(sma, 1.5), False


# ---------------------------------------------------------------- (b) white-light shape


def _varpro_resid(
    y: np.ndarray, model: np.ndarray, v: np.ndarray, x: np.ndarray | None, sig: np.ndarray, keep: np.ndarray
) -> np.ndarray:
    """Residual of ``y = P(t) * model + X e`` at every point, P and e solved linearly on the kept points.

    Shapes: y, model, sig, keep (T,); v (T, K+1); x (T, E) or None -> (T,).
    """
    d = np.concatenate([model[:, None] * v] + ([x] if x is not None else []), axis=1)
    coef, *_ = np.linalg.lstsq(d[keep] / sig[keep, None], y[keep] / sig[keep], rcond=None)
    return y - d @ coef


class _Transit:
    """A batman model on one time grid, evaluated at varying parameters."""

    def __init__(self, t: np.ndarray, period_h: float, sma: float, u: tuple[float, float], supersample: int):
        self.params = batman.TransitParams()
        p = self.params
        p.t0, p.per, p.rp, p.a, p.inc, p.ecc, p.w = float(t.mean()), period_h, 0.1, sma, 90.0, 0.0, 90.0
        p.limb_dark, p.u = "quadratic", list(u)
        exp = float(np.median(np.diff(t))) if len(t) > 1 and supersample > 1 else 0.0
        kw = {"supersample_factor": supersample, "exp_time": exp} if exp > 0 else {}
        self.model = batman.TransitModel(p, np.asarray(t, dtype=np.float64), **kw)

    def __call__(self, t0: float, rp: float, sma: float, b: float, u1: float, u2: float) -> np.ndarray:
        p = self.params
        p.t0, p.rp, p.a = t0, rp, sma
        p.inc = math.degrees(math.acos(min(1.0, b / sma)))
        p.u = [u1, u2]
        return self.model.light_curve(p)


def fit_white_light(lc: LightCurves, star: pd.Series | Mapping | None, options: BaselineOptions) -> WhiteLightFit:
    """Fit the AIRS white light and FGS1 with batman transits (see the module docstring)."""
    return _fit_white(lc, star, options)[0]


def _fit_white(
    lc: LightCurves, star: pd.Series | Mapping | None, opt: BaselineOptions
) -> tuple[WhiteLightFit, np.ndarray]:
    """The white-light fit and the AIRS white-light residual (T_a,), the common-mode systematics."""
    geom = _star_geometry(star)
    t0_0, t14, rough, period_h, sma0, used_star = _transit_window(
        lc, geom, opt.poly_degree, 24.0 * opt.default_period_days
    )
    wa, ff, _ = _white_light(lc)
    ta, tf = lc.airs_time_h.astype(np.float64), lc.fgs1_time_h.astype(np.float64)
    va, vf = _poly_basis(ta, opt.poly_degree), _poly_basis(tf, opt.poly_degree)
    xa = _regressors(_pointing_terms(lc.airs_trace, opt.decorrelate_degree))
    xf = _regressors(_pointing_terms(lc.fgs1[:, 2:4], opt.decorrelate_degree))
    sa = np.full(len(ta), float(_p2p_std(wa)))
    sf = np.full(len(tf), float(_p2p_std(ff)))
    ma = _Transit(ta, period_h, sma0, opt.limb_darkening_airs, opt.supersample)
    mf = _Transit(tf, period_h, sma0, opt.limb_darkening_fgs1, max(1, opt.supersample // 2))

    fit_b = opt.fit_inclination or not used_star
    fit_a = opt.fit_sma or not used_star
    b0 = sma0 * math.cos(math.radians(geom[2])) if used_star and geom is not None else 0.3
    b0 = min(max(b0, 0.0), _B_MAX)
    k0 = math.sqrt(max(rough, 1e-5))
    n_ld = int(opt.fit_limb_darkening)
    # Parameter vector: t0, rp_airs, rp_fgs1, [b], [a/Rs], [u_airs[:n_ld]], [u_fgs1[:n_ld]].
    x0 = [t0_0, k0, k0]
    lo = [t0_0 - t14 / 2, 1e-3, 1e-3]
    hi = [t0_0 + t14 / 2, 0.5, 0.5]
    if fit_b:
        x0.append(b0)
        lo.append(0.0)
        hi.append(_B_MAX)
    if fit_a:
        x0.append(sma0)
        lo.append(1.5)
        hi.append(max(200.0, 2 * sma0))
    for u in (opt.limb_darkening_airs, opt.limb_darkening_fgs1):
        x0 += list(u[:n_ld])
        lo += [-0.5] * n_ld
        hi += [1.5] * n_ld
    x0 = np.clip(np.asarray(x0), np.asarray(lo) + 1e-9, np.asarray(hi) - 1e-9)

    def unpack(x: np.ndarray) -> tuple[float, float, float, float, float, tuple[float, float], tuple[float, float]]:
        i = 3
        b = b0
        a = sma0
        if fit_b:
            b, i = x[i], i + 1
        if fit_a:
            a, i = x[i], i + 1
        ua = tuple(x[i : i + n_ld]) + opt.limb_darkening_airs[n_ld:]
        uf = tuple(x[i + n_ld : i + 2 * n_ld]) + opt.limb_darkening_fgs1[n_ld:]
        return x[0], x[1], x[2], b, a, ua, uf

    keep_a = np.ones(len(ta), bool)
    keep_f = np.ones(len(tf), bool)

    # A Gaussian prior keeps limb darkening physical where the light curve cannot tell it from
    # Rp/Rs (grazing or shallow transits); well-measured transits override it.
    u_start = np.asarray(list(opt.limb_darkening_airs[:n_ld]) + list(opt.limb_darkening_fgs1[:n_ld]))
    n_u = len(u_start) if opt.limb_darkening_prior > 0 else 0
    # Star info's geometry as a Gaussian prior: without it a grazing transit trades impact
    # parameter against Rp/Rs freely and the depth can run off by a factor of several.
    geo = opt.geometry_prior if used_star else 0.0
    n_geo = (int(fit_b) + int(fit_a)) if geo > 0 else 0

    def resid(x: np.ndarray) -> np.ndarray:
        t0, ra, rf, b, a, ua, uf = unpack(x)
        m_a = ma(t0, ra, a, b, *ua)
        m_f = mf(t0, rf, a, b, *uf)
        r_a = _varpro_resid(wa, m_a, va, xa, sa, keep_a)
        r_f = _varpro_resid(ff, m_f, vf, xf, sf, keep_f)
        prior = (x[len(x) - 2 * n_ld :] - u_start) / opt.limb_darkening_prior if n_u else np.zeros(0)
        geo_prior = []
        if n_geo:
            geo_prior = ([(b - b0) / geo] if fit_b else []) + ([(a - sma0) / (geo * sma0)] if fit_a else [])
        return np.concatenate([(r_a / sa)[keep_a], (r_f / sf)[keep_f], prior, geo_prior])

    sol = least_squares(resid, x0, bounds=(lo, hi), diff_step=1e-6, x_scale="jac", max_nfev=200)
    # One pass of outlier rejection (cosmic rays, glitches), then a refit from the solution.
    r = resid(sol.x)
    na, nf = int(keep_a.sum()), int(keep_f.sum())
    keep_a[keep_a] = np.abs(r[:na]) <= opt.clip_sigma * max(float(_robust_std(r[:na])), 1e-12)
    keep_f[keep_f] = np.abs(r[na : na + nf]) <= opt.clip_sigma * max(float(_robust_std(r[na : na + nf])), 1e-12)
    sol = least_squares(resid, sol.x, bounds=(lo, hi), diff_step=1e-6, x_scale="jac", max_nfev=200)

    t0, ra, rf, b, a, ua, uf = unpack(sol.x)
    data = sol.fun[: len(sol.fun) - n_u - n_geo]
    dof = max(1, len(data) - len(sol.x))
    chi2 = float(data @ data) / dof
    cov = np.linalg.pinv(sol.jac.T @ sol.jac) * max(chi2, 1e-12)
    m_a = ma(t0, ra, a, b, *ua)
    m_f = mf(t0, rf, a, b, *uf)
    res_a = _varpro_resid(wa, m_a, va, xa, sa, keep_a)
    # Correlated noise in the white light (stellar, pointing) leaks into its depth more than
    # the Jacobian says: scale by the correlated-noise factor of a fixed-shape refit.
    red_a = _red_factor(wa, sa, keep_a, (1 - m_a) / ra**2, va, xa, _lags(ta, opt.red_noise_minutes))
    red_f = _red_factor(ff, sf, keep_f, (1 - m_f) / rf**2, vf, xf, _lags(tf, opt.red_noise_minutes))
    sig_da = 2 * ra * math.sqrt(max(cov[1, 1], 0)) * red_a
    sig_df = 2 * rf * math.sqrt(max(cov[2, 2], 0)) * red_f
    inc = math.degrees(math.acos(min(1.0, b / a)))
    fit = WhiteLightFit(
        t0=float(t0),
        period_h=float(period_h),
        sma=float(a),
        inc=float(inc),
        rp_airs=float(ra),
        rp_fgs1=float(rf),
        u_airs=(float(ua[0]), float(ua[1])),
        u_fgs1=(float(uf[0]), float(uf[1])),
        depth_airs=float(ra * ra),
        depth_airs_sigma=float(sig_da),
        depth_fgs1=float(rf * rf),
        depth_fgs1_sigma=float(sig_df),
        t14=float(t14),
        used_star=used_star,
    )
    return fit, np.where(keep_a, res_a, 0.0)


def _red_factor(
    y: np.ndarray, err: np.ndarray, keep: np.ndarray, shape: np.ndarray, v: np.ndarray, x: np.ndarray | None, lags: int
) -> float:
    """Correlated-noise factor (>= 1) of one series' depth error. Shapes: y, err, keep, shape (T,)."""
    if lags <= 0:
        return 1.0
    fit = _fit_depths(y[None], err[None], shape[:, None], v, x, clip_sigma=np.inf, keep=keep[None], lags=lags)
    return max(1.0, float(fit.red[0]))


def _unit_shape(
    t: np.ndarray, fit: WhiteLightFit, rp: float, u: tuple[float, float], supersample: int
) -> tuple[np.ndarray, np.ndarray]:
    """Transit shape normalised to unit (Rp/Rs)^2, ``(1 - model) / rp**2``, and its derivative
    with respect to the linear limb-darkening coefficient u1. Shapes: (T,), (T,)."""
    m = _Transit(t, fit.period_h, fit.sma, u, supersample)
    b = fit.sma * math.cos(math.radians(fit.inc))
    h = 0.02
    shape = (1.0 - m(fit.t0, rp, fit.sma, b, u[0], u[1])) / (rp * rp)
    up = (1.0 - m(fit.t0, rp, fit.sma, b, u[0] + h, u[1])) / (rp * rp)
    down = (1.0 - m(fit.t0, rp, fit.sma, b, u[0] - h, u[1])) / (rp * rp)
    return shape, (up - down) / (2 * h)


# ---------------------------------------------------------------- (c) per-bin depths


def _solve_batched(design: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least squares for a batch of problems.

    Shapes: design (B, T, p), y (B, T), w (B, T) -> coefficients (B, p), weighted chi^2 (B,).
    """
    a = _normal_matrix(design, w)
    rhs = np.matmul((design * w[..., None]).transpose(0, 2, 1), y[..., None])[..., 0]
    coef = np.linalg.solve(a, rhs[..., None])[..., 0]
    r = y - _predict(design, coef)
    return coef, np.sum(w * r * r, axis=1)


def _normal_matrix(design: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Batched ``D^T W D`` (batched matmul: much faster than einsum). Shapes (B, T, p), (B, T) -> (B, p, p)."""
    a = np.matmul((design * w[..., None]).transpose(0, 2, 1), design)
    # A tiny ridge keeps a degenerate problem (e.g. a masked-out bin) solvable.
    return a + np.eye(a.shape[-1]) * (1e-12 * np.trace(a, axis1=1, axis2=2)[:, None, None] + 1e-300)


def _predict(design: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """Shapes (B, T, p), (B, p) -> (B, T)."""
    return np.matmul(design, coef[..., None])[..., 0]


@dataclass
class _DepthFit:
    depth: np.ndarray  # (B,) coefficient of the first shape column
    sigma_white: np.ndarray  # (B,) its standard error, scaled by the empirical chi^2
    shape_coef: np.ndarray  # (B, S) coefficients of all shape columns
    shape_sigma: np.ndarray  # (B, S) their standard errors
    resid: np.ndarray  # (B, T)
    keep: np.ndarray  # (B, T) bool, False for rejected outliers
    red: np.ndarray  # (B,) correlated-noise factor of the depth error (1 = white)


def _fit_depths(
    y: np.ndarray,
    err: np.ndarray,
    shapes: np.ndarray,
    v: np.ndarray,
    x: np.ndarray | None,
    clip_sigma: float,
    keep: np.ndarray | None = None,
    lags: int = 0,
) -> _DepthFit:
    """Per-bin ``y = P(t) * (1 - sum_k c_k * shape_k(t)) + X e`` for a batch of bins.

    The first shape is the unit-depth transit, so c_0 is the depth. ``P * shape`` is
    linearised around the previous pass's P, which converges because the trend is small.
    Outliers are rejected once (unless ``keep`` is given). ``red`` is the factor by which
    residual autocorrelation up to ``lags`` time bins inflates the depth error (a Bartlett-
    weighted, Newey-West style sandwich estimate; 1 for white noise). Shapes: y, err (B, T)
    normalised; shapes (T, S) or (B, T, S); v (T, K+1); x (T, E) or None; keep (B, T).
    """
    nb, nt = y.shape
    shapes = np.broadcast_to(shapes if shapes.ndim == 3 else shapes[None], (nb, nt, shapes.shape[-1]))
    ns = shapes.shape[2]
    w = 1.0 / err**2
    base_cols = [np.broadcast_to(v, (nb,) + v.shape)]
    if x is not None:
        base_cols.append(np.broadcast_to(x, (nb,) + x.shape))
    base = np.concatenate(base_cols, axis=2)
    nk = v.shape[1]
    clip = keep is None
    keep = np.ones((nb, nt), bool) if keep is None else keep
    poly = np.ones((nb, nt))
    for it in range(5):
        design = np.concatenate([base, -poly[..., None] * shapes], axis=2)
        coef, chi2 = _solve_batched(design, y, w * keep)
        poly = coef[:, :nk] @ v.T
        if clip and it == 2:
            # Reject outliers once the model has settled; the later passes refit without them.
            r = y - _predict(design, coef)
            s = np.maximum(_robust_std(r, axis=1), 1e-12)
            keep = np.abs(r) <= clip_sigma * s[:, None]
    design = np.concatenate([base, -poly[..., None] * shapes], axis=2)
    wk = w * keep
    coef, chi2 = _solve_batched(design, y, wk)
    p = design.shape[2]
    inv = np.linalg.inv(_normal_matrix(design, wk))
    cov = np.diagonal(inv, axis1=1, axis2=2)[:, -ns:]
    dof = np.maximum(keep.sum(axis=1) - p, 1)
    sig = np.sqrt(np.maximum(cov, 0) * (chi2 / dof)[:, None])
    resid = y - _predict(design, coef)
    red = np.ones(nb)
    if lags > 0:
        # The depth is a linear estimator d = sum_t h_t y_t; its variance under noise with
        # autocovariance g_k is sum_k g_k sum_t h_t h_{t+k}. The ratio to the white-noise value
        # (k = 0 only) scales the white-noise error.
        h = np.matmul(design * wk[..., None], inv[:, -ns, :, None])[..., 0]
        r = np.where(keep, resid, 0.0)
        n = np.maximum(keep.sum(axis=1), 1)
        g0 = np.sum(r * r, axis=1) / n
        var = g0 * np.sum(h * h, axis=1)
        white = var.copy()
        for k in range(1, min(lags, nt - 1) + 1):
            gk = np.sum(r[:, k:] * r[:, :-k], axis=1) / n
            var += 2 * (1 - k / (lags + 1)) * gk * np.sum(h[:, k:] * h[:, :-k], axis=1)
        red = np.sqrt(np.maximum(var, 0) / np.maximum(white, 1e-300))
    return _DepthFit(
        depth=coef[:, -ns],
        sigma_white=sig[:, 0],
        shape_coef=coef[:, -ns:],
        shape_sigma=sig,
        resid=resid,
        keep=keep,
        red=red,
    )


def _ld_trend(fit: _DepthFit, degree: int, clip_sigma: float, prior: float) -> np.ndarray:
    """Smooth per-bin limb-darkening offset du1 from a fit with shapes [s, ds/du1].

    Each bin's c_1 over the mean depth is a noisy du1; a weighted polynomial in bin index pools
    all bins, so the trend costs almost no depth precision. A Gaussian prior of width ``prior``
    on the coefficients (ridge) pulls the trend to 0 where the light curves cannot tell limb
    darkening from depth (grazing or shallow transits). Shape: (B,).
    """
    nb = len(fit.depth)
    d = fit.shape_coef[:, 0]
    # One reference depth for all bins: dividing by each bin's own noisy depth would bias the
    # ratio and favour bins whose noise deepened them.
    iv = 1.0 / np.maximum(fit.sigma_white, 1e-30) ** 2
    ref = float(np.sum(iv * d) / np.sum(iv))
    if degree < 0 or nb < 3 * (degree + 1) or not ref > 3 / math.sqrt(float(np.sum(iv))):
        return np.zeros(nb)
    du = fit.shape_coef[:, 1] / ref
    w = (ref / np.maximum(fit.shape_sigma[:, 1], 1e-30)) ** 2
    vb = np.vander(np.linspace(-1, 1, nb), degree + 1, increasing=True)
    ridge = np.eye(degree + 1) / prior**2 if prior > 0 else np.zeros((degree + 1, degree + 1))
    coef = np.zeros(degree + 1)
    for _ in range(3):
        coef = np.linalg.solve(vb.T @ (w[:, None] * vb) + ridge + 1e-12 * np.eye(degree + 1), vb.T @ (w * du))
        z = (du - vb @ coef) * np.sqrt(w)
        live = w > 0
        if live.sum() <= degree + 1:
            break
        w = np.where(np.abs(z) > clip_sigma * max(float(_robust_std(z[live])), 1e-12), 0.0, w)
    return np.clip(vb @ coef, -0.5, 0.5)


def _lags(t: np.ndarray, minutes: float) -> int:
    """Number of time bins spanning ``minutes`` (the autocorrelation bandwidth)."""
    cad = float(np.median(np.diff(t))) if len(t) > 1 else 0.0
    if minutes <= 0 or cad <= 0:
        return 0
    return int(min(len(t) // 3, round(minutes / 60.0 / cad)))


def _smooth(depth: np.ndarray, sigma: np.ndarray, half: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse-variance running mean over +-``half`` neighbours, with a consistent sigma.

    The smoothed sigma is the noise of the weighted mean plus, in quadrature, the bias the
    smoothing introduces, estimated locally from how far raw depths sit from the smooth curve
    beyond what their noise explains. Shapes: (B,) -> (B,), (B,).
    """
    if half <= 0 or len(depth) < 2 * half + 1:
        return depth, sigma
    nb = len(depth)
    iv = 1.0 / sigma**2
    kern = np.ones(2 * half + 1)
    num = np.convolve(depth * iv, kern, mode="same")
    den = np.convolve(iv, kern, mode="same")
    smooth = num / den
    noise_var = 1.0 / den
    # Var(raw_j - smooth_j) for pure noise is sigma_j^2 (1 - 2 a_jj) + noise_var, a_jj = iv_j / den_j.
    expect = sigma**2 * (1 - 2 * iv / den) + noise_var
    excess = (depth - smooth) ** 2 - expect
    # Averaged over a wider window than the smoothing (a single bin's excess is mostly noise);
    # divided by the count so the spectrum's ends are not diluted.
    box = np.ones(min(nb, 10 * half + 1))
    local = np.convolve(excess, box, mode="same") / np.convolve(np.ones(nb), box, mode="same")
    bias2 = np.maximum(local, 0.0)
    return smooth, np.sqrt(noise_var + bias2)


# ---------------------------------------------------------------- per visit / planet


@dataclass
class _VisitDepths:
    """Raw depths of one visit, FGS1 first, each (283,).

    ``sigma_stat`` is each bin's own error (independent between bins, so smoothing may
    average it down); ``sigma_common`` is the error all AIRS bins share through the
    white-light shape and correlated noise (smoothing leaves it as it is).
    """

    mu: np.ndarray
    sigma_stat: np.ndarray
    sigma_common: np.ndarray


def _visit_depths(lc: LightCurves, star: pd.Series | Mapping | None, opt: BaselineOptions) -> _VisitDepths:
    """Per-bin depths of one visit before smoothing and floors (see :class:`_VisitDepths`)."""
    lc.validate()
    white, common = _fit_white(lc, star, opt)
    ta, tf = lc.airs_time_h.astype(np.float64), lc.fgs1_time_h.astype(np.float64)

    # AIRS: every row normalised by its median; rows without flux are filled later.
    flux = lc.airs_flux.astype(np.float64)
    scale = np.median(flux, axis=1)
    good = scale > 0
    scale_safe = np.where(good, scale, 1.0)
    ya = flux / scale_safe[:, None]
    ea = _clean_err(lc.airs_err.astype(np.float64), scale_safe, _p2p_std(ya))
    shape_a, dshape_a = _unit_shape(ta, white, white.rp_airs, white.u_airs, opt.supersample)
    va = _poly_basis(ta, opt.poly_degree)
    lags_a = _lags(ta, opt.red_noise_minutes)
    extra = [_pointing_terms(lc.airs_trace, opt.decorrelate_degree)]
    if opt.common_mode:
        # The white-light residual holds the systematics every bin shares (pointing, stellar
        # noise); regressing on it removes them from each bin without touching the transit,
        # to which the residual is orthogonal.
        extra.append(common[:, None])
    xa = _regressors(np.concatenate(extra, axis=1))
    if opt.ld_trend_degree >= 0:
        # Limb darkening weakens with wavelength: one white-light shape would bias the depths
        # of the blue and red ends in opposite directions.
        first = _fit_depths(ya[good], ea[good], np.stack([shape_a, dshape_a], axis=1), va, xa, opt.clip_sigma)
        du = _ld_trend(first, int(opt.ld_trend_degree), opt.clip_sigma, opt.limb_darkening_prior)
        shapes = (shape_a[None, :] + du[:, None] * dshape_a[None, :])[..., None]
        fa = _fit_depths(ya[good], ea[good], shapes, va, xa, opt.clip_sigma, keep=first.keep, lags=lags_a)
    else:
        fa = _fit_depths(ya[good], ea[good], shape_a[:, None], va, xa, opt.clip_sigma, lags=lags_a)
    # Per-bin autocorrelation estimates are noisy; their median over bins is a stable factor.
    beta_a = max(1.0, float(np.median(fa.red)))

    # FGS1: one bin, its own shape (stronger limb darkening in the visible).
    ff = lc.fgs1[:, 0].astype(np.float64)
    fscale = np.array([np.median(ff)])
    yf = (ff / fscale[0])[None, :]
    ef = _clean_err(lc.fgs1_err.astype(np.float64)[None, :], fscale, _p2p_std(yf))
    shape_f, _ = _unit_shape(tf, white, white.rp_fgs1, white.u_fgs1, max(1, opt.supersample // 2))
    vf = _poly_basis(tf, opt.poly_degree)
    xf = _regressors(_pointing_terms(lc.fgs1[:, 2:4], opt.decorrelate_degree))
    fgs = _fit_depths(yf, ef, shape_f[:, None], vf, xf, opt.clip_sigma, lags=_lags(tf, opt.red_noise_minutes))
    # The fixed-shape error misses the depth-limb-darkening-geometry degeneracy; the white-light
    # fit of FGS1 (all parameters free) has it.
    sigma_f = max(float(fgs.sigma_white[0]) * max(1.0, float(fgs.red[0])), white.depth_fgs1_sigma)

    d_airs = np.full(N_AIRS, np.nan)
    s_airs = np.full(N_AIRS, np.nan)
    d_airs[good] = fa.depth
    s_airs[good] = fa.sigma_white * beta_a
    if not good.all():
        # A row without flux says nothing: the white-light depth with the spread of the others.
        d_airs[~good] = np.median(fa.depth)
        s_airs[~good] = math.hypot(float(_robust_std(fa.depth)), float(np.median(s_airs[good])))

    mu = np.concatenate([fgs.depth, d_airs])
    sigma = np.concatenate([[sigma_f], s_airs])
    # A white-light depth error (shape parameters, transit-aligned correlated noise) moves
    # every AIRS bin in proportion to its depth. FGS1 has its own shape fit, already in its sigma.
    common_sigma = np.zeros(N_BINS)
    if white.depth_airs > 0:
        common_sigma[1:] = np.abs(d_airs) / white.depth_airs * white.depth_airs_sigma
    finite = np.isfinite(mu).all() and np.isfinite(sigma).all() and np.isfinite(common_sigma).all()
    if not (finite and (sigma > 0).all()):
        raise PlanetDataError(lc.planet_id, None, "baseline fit produced non-finite depths or sigma", lc.visit)
    return _VisitDepths(mu=mu, sigma_stat=sigma, sigma_common=common_sigma)


def _combine(visits: list[_VisitDepths]) -> _VisitDepths:
    """Inverse-variance mean of independent visits, both error parts propagated linearly."""
    if len(visits) == 1:
        return visits[0]
    total = np.stack([v.sigma_stat**2 + v.sigma_common**2 for v in visits])
    w = (1.0 / total) / np.sum(1.0 / total, axis=0)
    return _VisitDepths(
        mu=np.sum(w * np.stack([v.mu for v in visits]), axis=0),
        sigma_stat=np.sqrt(np.sum(w**2 * np.stack([v.sigma_stat**2 for v in visits]), axis=0)),
        sigma_common=np.sqrt(np.sum(w**2 * np.stack([v.sigma_common**2 for v in visits]), axis=0)),
    )


def _finish(v: _VisitDepths, opt: BaselineOptions) -> tuple[np.ndarray, np.ndarray]:
    """Spectral smoothing of the AIRS bins, then the shared errors and floors. Returns mu, sigma (283,).

    The common error and the floors come after smoothing: they are shared by neighbouring
    bins, so averaging neighbours must not shrink them.
    """
    d_airs, s_airs = _smooth(v.mu[1:], v.sigma_stat[1:], int(opt.smooth_bins))
    mu = np.concatenate([v.mu[:1], d_airs])
    floor = np.full(N_BINS, opt.sigma_floor_ppm_airs * 1e-6)
    floor[0] = opt.sigma_floor_ppm_fgs1 * 1e-6
    stat = np.concatenate([v.sigma_stat[:1], s_airs])
    # The inflation comes last so it is a pure scale: the smoothing's bias estimate depends on sigma.
    return mu, opt.sigma_inflation * np.sqrt(stat**2 + v.sigma_common**2 + floor**2)


def fit_visit(
    lc: LightCurves, star: pd.Series | Mapping | None, options: BaselineOptions
) -> tuple[np.ndarray, np.ndarray]:
    """Transit depths of one visit. Returns mu, sigma, each (283,) in (Rp/Rs)^2, FGS1 first.

    ``mu`` may be negative here (a noisy shallow bin); :func:`predict_planet` clips.
    """
    return _finish(_visit_depths(lc, star, options), options)


def predict_planet(
    visits: list[LightCurves], star: pd.Series | Mapping | None, options: BaselineOptions
) -> tuple[np.ndarray, np.ndarray]:
    """Depths of one planet from all its visits. Returns mu >= 0 and sigma > 0, each (283,).

    Raw visit depths combine by inverse variance before smoothing and floors, which describe
    the planet rather than a visit. The clip at 0 keeps sigma, since the truth of a noisy
    shallow bin can still lie above.
    """
    if not visits:
        raise ValueError("predict_planet needs at least one visit")
    mu, sigma = _finish(_combine([_visit_depths(lc, star, options) for lc in visits]), options)
    return np.clip(mu, 0.0, None), sigma


# ---------------------------------------------------------------- dataset


@dataclass(frozen=True)
class _PlanetJob:
    """One planet's work item; small and picklable, and its str names it in a run summary."""

    split: str
    planet_id: int
    folder: str
    paths: tuple[str, ...]
    star: dict | None
    options: BaselineOptions = field(compare=False)

    def __str__(self) -> str:
        return f"{self.split} planet {self.planet_id}"


def _baseline_worker(job: _PlanetJob) -> tuple[int, np.ndarray, np.ndarray]:
    if not job.paths:
        raise PlanetDataError(job.planet_id, job.folder, "no visit_*.npz light-curve file")
    visits = [LightCurves.load(Path(p)) for p in job.paths]
    try:
        mu, sigma = predict_planet(visits, job.star, job.options)
    except PlanetDataError:
        raise
    except Exception as exc:  # numerical failures get the planet and file named, like data errors
        raise PlanetDataError(job.planet_id, job.paths[0], f"baseline fit failed: {type(exc).__name__}: {exc}") from exc
    return job.planet_id, mu, sigma


def baseline_dataset(
    lcdir: Path,
    out_csv: Path,
    options: BaselineOptions,
    splits: tuple[str, ...] = ("train", "test"),
    workers: int | None = None,
    strict: bool = False,
    progress: bool = True,
) -> RunSummary:
    """Run the baseline over every planet of ``splits`` found in an LCDIR and write a submission.

    Star info comes from ``LCDIR/{split}_star_info.csv`` when present (a planet missing from it
    falls back to the gradient window). A failing planet is recorded in the summary and left
    out of the CSV; ``strict`` raises on the first one.
    """
    lcdir = Path(lcdir)
    jobs: list[_PlanetJob] = []
    seen: dict[int, str] = {}
    for split in splits:
        planets = list_lightcurves(lcdir, split)
        if not planets:
            continue
        stars = read_star_info(lcdir, split) if (lcdir / f"{split}_star_info.csv").is_file() else None
        if stars is not None and stars.index.has_duplicates:
            dup = int(stars.index[stars.index.duplicated()][0])
            raise ValueError(f"{lcdir / f'{split}_star_info.csv'}: planet {dup} has more than one row")
        for pid, paths in planets.items():
            if pid in seen:
                raise ValueError(f"planet {pid} is in both the {seen[pid]} and the {split} split of {lcdir}")
            seen[pid] = split
            star = stars.loc[pid].to_dict() if stars is not None and pid in stars.index else None
            folder = str(lcdir / split / str(pid))
            jobs.append(_PlanetJob(split, pid, folder, tuple(str(p) for p in paths), star, options))
    summary = run_planets(_baseline_worker, jobs, task="baseline", workers=workers, strict=strict, progress=progress)
    ids = [r[0] for r in summary.results]
    mu = np.stack([r[1] for r in summary.results]) if ids else np.zeros((0, N_BINS))
    sigma = np.stack([r[2] for r in summary.results]) if ids else np.zeros((0, N_BINS))
    write_submission(out_csv, ids, mu, sigma)
    return summary
