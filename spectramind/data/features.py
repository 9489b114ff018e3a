"""Light curves -> model inputs: the one feature definition that train, export and serve share.

A planet (one or more visits of :class:`LightCurves`) becomes a :class:`ModelInputs`:

``fgs1`` (T, 6) float32, T = ``fgs1_steps``: the six FGS1 columns of the light-curve format,
    averaged into T equal time bins. Columns:

    ===  ==========  ===========================================================================
    0    flux        (flux / out-of-transit median - 1) / 1e-2: a 1 % transit reads -1
    1    time_norm   as given (0 at the first, 1 at the last bin of the visit), bin-averaged
    2-3  centroid    as given (px offsets from the median)
    4-5  jitter      as given (px, fast part of the centroid motion)
    ===  ==========  ===========================================================================

    Visits are aligned on their fitted mid-transit times before averaging (time bins span the
    range of t - t0 that all visits cover), so two transits add up instead of smearing; the
    average weights each visit by the inverse square of its relative FGS1 point-to-point noise.
    When the visits share less than half of their shortest span, each keeps its own range.

``airs_nodes`` (283, 8) float32, one row per bin (0 = FGS1, 1..282 = AIRS). Depths are in
    units of 1e-2 (Rp/Rs)^2 (labels: mean 1.47, std 1.07 in these units), absolute rather than
    relative to the white light, so the model sees the quantity it predicts:

    ===  ===========  ========================================================================
    col  name         definition
    ===  ===========  ========================================================================
    0    depth_fit    physics-baseline depth (``baseline.predict_planet``: batman fit, visits
                      combined by inverse variance, smoothed, clipped >= 0) / 1e-2
    1    log_sigma    log10(baseline sigma / 1e-4): 100 ppm reads 0
    2    depth_rel    (depth_fit - inverse-variance mean of the AIRS depths) / 1e-4, clipped to
                      +-50: the spectral feature itself (50-200 ppm reads 0.5-2)
    3    depth_box    model-free depth 1 - mean(flux_in / trend) / 1e-2, flux_in over the
                      central ``in_transit_fraction`` of T14 and the trend a line fitted out of
                      transit; visits combined by inverse variance; no usable window -> the
                      baseline depth. Deeper than depth_fit by the limb-darkening contrast
    4    log_noise    log10(point-to-point noise of the median-normalised flux per time bin
                      / 1e-3); mean over visits
    5    log_flux     ln(median flux of the bin / median over AIRS bins of their median flux),
                      clipped to +-10: the stellar spectrum seen by the instrument, an SNR
                      proxy (FGS1's value is its level against AIRS); mean over visits
    6    pointing_r2  R^2 of the high-passed out-of-transit flux regressed on the high-passed
                      pointing (AIRS trace dx, dy; FGS1 centroid x, y): how much of the bin's
                      noise the pointing explains, in [0, 1]; mean over visits
    7    wavelength   2 (lambda - lambda_min) / (lambda_max - lambda_min) - 1 over the grid
                      (FGS1 -1, reddest AIRS bin +1)
    ===  ===========  ========================================================================

The baseline fit dominates the cost (~0.3 s a planet: a white-light fit per visit for the
transit window, and ``predict_planet``). :func:`fit_baseline` returns a :class:`PlanetBaseline`
that a dataset may cache (``to_arrays`` / ``from_arrays``) and hand back to
:func:`planet_inputs`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from spectramind.baseline import BaselineOptions, fit_white_light, predict_planet
from spectramind.bins import N_AIRS, N_BINS, wavelengths
from spectramind.data.errors import PlanetDataError
from spectramind.data.lightcurves import FGS1_FEATURES, LightCurves
from spectramind.options import check_rules, coerce_fields, options_from

__all__ = [
    "FEATURES_VERSION",
    "FGS1_CHANNELS",
    "NODE_FEATURES",
    "FeatureOptions",
    "ModelInputs",
    "PlanetBaseline",
    "fit_baseline",
    "options_from_meta",
    "planet_inputs",
    "stack_inputs",
]

# Bumped whenever a definition below changes: a model trained on one version must not be
# served inputs of another (export writes it into the manifest).
FEATURES_VERSION = 1
FGS1_CHANNELS = len(FGS1_FEATURES)
NODE_FEATURES: tuple[str, ...] = (
    "depth_fit",
    "log_sigma",
    "depth_rel",
    "depth_box",
    "log_noise",
    "log_flux",
    "pointing_r2",
    "wavelength",
)
# Units and clips that bring every node feature to O(1) for any planet (see the table above);
# the clips only bite on broken fits, which must not hand the network values of 1e3.
DEPTH_UNIT = 1e-2
SIGMA_UNIT = 1e-4
REL_UNIT = 1e-4
NOISE_UNIT = 1e-3
REL_CLIP = 50.0
BOX_CLIP = 10.0
LOG_FLUX_CLIP = 10.0
_MAD_TO_SIGMA = 1.4826


@dataclass
class FeatureOptions:
    """Feature options; every field but ``baseline`` is a key of ``configs/data/features.yaml``
    (mounted at ``cfg.data.features``); ``baseline`` comes from ``cfg.data.baseline``."""

    fgs1_steps: int = 512
    in_transit_fraction: float = 0.5
    oot_margin: float = 0.1
    pointing_window: int = 15
    baseline: BaselineOptions = field(default_factory=BaselineOptions)

    def __post_init__(self) -> None:
        if isinstance(self.baseline, Mapping):
            self.baseline = BaselineOptions.from_mapping(self.baseline)
        coerce_fields(self, "features")
        rules = (
            ("fgs1_steps", self.fgs1_steps >= 2, ">= 2"),
            ("in_transit_fraction", 0 < self.in_transit_fraction <= 1, "in (0, 1]"),
            ("oot_margin", self.oot_margin >= 0, ">= 0"),
            ("pointing_window", self.pointing_window >= 3, ">= 3"),
        )
        check_rules("features", self, rules)

    @classmethod
    def from_mapping(
        cls, cfg: Mapping[str, Any] | None, baseline: Mapping[str, Any] | BaselineOptions | None = None
    ) -> "FeatureOptions":
        """From ``cfg.data.features`` (and ``cfg.data.baseline``); an unknown key is an error naming it."""
        if cfg and "baseline" in cfg:
            raise ValueError("features: 'baseline' comes from cfg.data.baseline, not cfg.data.features")
        base = baseline if isinstance(baseline, BaselineOptions) else BaselineOptions.from_mapping(baseline)
        return options_from(cls, cfg, "features", baseline=base)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "FeatureOptions":
        """From a composed root config (``cfg.data.features`` and ``cfg.data.baseline``)."""
        data = cfg["data"]
        return cls.from_mapping(data.get("features"), data.get("baseline"))


def options_from_meta(meta: Mapping[str, Any] | None, source: object) -> FeatureOptions:
    """The FeatureOptions a checkpoint was trained with (its ``meta["features"]``, written by
    ``spectramind train``), so inference builds the inputs the model learned from.

    Raises ValueError naming ``source`` (the checkpoint) when they are absent or were built by
    another ``FEATURES_VERSION``.
    """
    meta = meta or {}
    version = meta.get("features_version")
    if version != FEATURES_VERSION:
        raise ValueError(f"{source}: trained on features version {version}, this code builds version {FEATURES_VERSION}")
    stored = dict(meta.get("features") or {})
    if not stored:
        raise ValueError(f"{source}: meta has no feature options")
    baseline = stored.pop("baseline", None)
    return FeatureOptions.from_mapping(stored, baseline)


@dataclass
class ModelInputs:
    """What the model reads for one planet.

    Shapes:
        fgs1: (fgs1_steps, 6) float32, columns as in the module docstring.
        airs_nodes: (283, 8) float32, columns ``NODE_FEATURES``.
    """

    planet_id: int
    fgs1: np.ndarray
    airs_nodes: np.ndarray

    def __post_init__(self) -> None:
        # Serve may build these from a request: a wrong shape must name the array here, not
        # surface as a broadcasting error inside the model.
        if self.fgs1.ndim != 2 or self.fgs1.shape[1] != FGS1_CHANNELS:
            raise ValueError(f"fgs1 must have shape (T, {FGS1_CHANNELS}), got {self.fgs1.shape}")
        if self.airs_nodes.shape != (N_BINS, len(NODE_FEATURES)):
            expect = (N_BINS, len(NODE_FEATURES))
            raise ValueError(f"airs_nodes must have shape {expect}, got {self.airs_nodes.shape}")


@dataclass
class PlanetBaseline:
    """The physics-baseline results the features need; cacheable per planet.

    Shapes: mu, sigma (283,) in (Rp/Rs)^2 (``predict_planet``); t0_h, t14_h (V,) mid-transit
    time and total duration of each visit's white-light fit, hours since the visit start.
    """

    mu: np.ndarray
    sigma: np.ndarray
    t0_h: np.ndarray
    t14_h: np.ndarray

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"mu": self.mu, "sigma": self.sigma, "t0_h": self.t0_h, "t14_h": self.t14_h}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> "PlanetBaseline":
        return cls(**{k: np.asarray(arrays[k], dtype=np.float64) for k in ("mu", "sigma", "t0_h", "t14_h")})


def fit_baseline(
    visits: Sequence[LightCurves], star: Mapping[str, Any] | None, options: FeatureOptions
) -> PlanetBaseline:
    """Run the physics baseline on a planet's visits. Failures become PlanetDataError naming the planet.

    Shapes: visits of one planet -> mu, sigma (283,); t0_h, t14_h (len(visits),).
    """
    pid = _check_visits(visits)
    try:
        wl = [fit_white_light(lc, star, options.baseline) for lc in visits]
        mu, sigma = predict_planet(list(visits), star, options.baseline)
    except PlanetDataError:
        raise
    except Exception as exc:  # a numerical failure is still this planet's problem: name it
        raise PlanetDataError(pid, None, f"baseline: fit failed: {type(exc).__name__}: {exc}") from exc
    return PlanetBaseline(
        mu=np.asarray(mu, dtype=np.float64),
        sigma=np.asarray(sigma, dtype=np.float64),
        t0_h=np.array([w.t0 for w in wl], dtype=np.float64),
        t14_h=np.array([w.t14 for w in wl], dtype=np.float64),
    )


def planet_inputs(
    visits: Sequence[LightCurves],
    star: Mapping[str, Any] | None,
    options: FeatureOptions,
    baseline: PlanetBaseline | None = None,
) -> ModelInputs:
    """Model inputs of one planet from all its visits.

    ``baseline`` is :func:`fit_baseline` of the same visits and options, when cached; it is
    computed here otherwise.

    Shapes: returns fgs1 (options.fgs1_steps, 6) and airs_nodes (283, 8), float32, finite.

    Raises PlanetDataError naming the planet and the field: no visits, visits of different
    planets, a light curve that fails :meth:`LightCurves.validate` (shape, NaN, time order),
    non-positive flux levels, a baseline of the wrong shape, a failed baseline fit.
    """
    pid = _check_visits(visits)
    base = baseline if baseline is not None else fit_baseline(visits, star, options)
    _check_baseline(base, pid, len(visits))

    # Time bins span t - t0 over the range every visit covers, so the transits line up.
    spans = [(lc.fgs1_time_h[0] - t0, lc.fgs1_time_h[-1] - t0) for lc, t0 in zip(visits, base.t0_h)]
    lo, hi = max(s[0] for s in spans), min(s[1] for s in spans)
    aligned = hi > lo and hi - lo >= 0.5 * min(s[1] - s[0] for s in spans)
    seqs, seq_iv, per_visit = [], [], []
    for k, lc in enumerate(visits):
        t0, t14 = float(base.t0_h[k]), float(base.t14_h[k])
        seq, noise = _fgs1_sequence(lc, t0, t14, (lo, hi) if aligned else spans[k], options)
        seqs.append(seq)
        seq_iv.append(1.0 / max(noise, 1e-12) ** 2)
        per_visit.append(_visit_nodes(lc, t0, t14, options))
    fgs1 = np.tensordot(np.array(seq_iv) / np.sum(seq_iv), np.stack(seqs), axes=1)

    box_err = np.stack([v["box_err"] for v in per_visit])
    box = _inverse_variance(np.stack([v["box"] for v in per_visit]), box_err, base.mu)

    mu, sigma = base.mu, base.sigma
    iv_airs = 1.0 / sigma[1:] ** 2
    mu_ref = float(np.sum(iv_airs * mu[1:]) / np.sum(iv_airs))
    wl = wavelengths()
    nodes = np.stack(
        [
            mu / DEPTH_UNIT,
            np.log10(sigma / SIGMA_UNIT),
            np.clip((mu - mu_ref) / REL_UNIT, -REL_CLIP, REL_CLIP),
            np.clip(box / DEPTH_UNIT, -BOX_CLIP, BOX_CLIP),
            np.mean([np.log10(v["noise"] / NOISE_UNIT) for v in per_visit], axis=0),
            np.mean([v["log_flux"] for v in per_visit], axis=0),
            np.mean([v["r2"] for v in per_visit], axis=0),
            2 * (wl - wl.min()) / (wl.max() - wl.min()) - 1,
        ],
        axis=1,
    )
    out = ModelInputs(planet_id=pid, fgs1=fgs1.astype(np.float32), airs_nodes=nodes.astype(np.float32))
    for name, arr, cols in (("fgs1", out.fgs1, FGS1_FEATURES), ("airs_nodes", out.airs_nodes, NODE_FEATURES)):
        bad = ~np.isfinite(arr).all(axis=0)
        if bad.any():
            raise PlanetDataError(pid, None, f"features: {name} column {cols[int(np.argmax(bad))]!r} is not finite")
    return out


def stack_inputs(items: Sequence[ModelInputs]) -> dict[str, torch.Tensor]:
    """Batch planets for the model.

    Shapes: returns fgs1 (B, T, 6) and airs_nodes (B, 283, 8), float32.
    """
    if not items:
        raise ValueError("stack_inputs needs at least one ModelInputs")
    out: dict[str, torch.Tensor] = {}
    for name in ("fgs1", "airs_nodes"):
        first = getattr(items[0], name).shape
        for i, item in enumerate(items):
            shape = getattr(item, name).shape
            if shape != first:
                raise ValueError(
                    f"stack_inputs: item {i} (planet {item.planet_id}) {name} has shape {shape}, item 0 has {first}"
                )
        out[name] = torch.from_numpy(np.stack([getattr(it, name) for it in items]).astype(np.float32))
    return out


# ---------------------------------------------------------------- helpers


def _check_visits(visits: Sequence[LightCurves]) -> int:
    """Validate the visits of one planet; returns its id."""
    if not visits:
        raise PlanetDataError(None, None, "features: no visits given")
    pid = visits[0].planet_id
    for lc in visits:
        if lc.planet_id != pid:
            raise PlanetDataError(pid, None, f"planet_id: visit {lc.visit} belongs to planet {lc.planet_id}", lc.visit)
        lc.validate()
        if not np.median(lc.fgs1[:, 0]) > 0:
            raise PlanetDataError(pid, None, "fgs1 flux has a non-positive median", lc.visit)
        if not (np.median(lc.airs_flux, axis=1) > 0).any():
            raise PlanetDataError(pid, None, "airs_flux has no row with positive median flux", lc.visit)
    return int(pid)


def _check_baseline(base: PlanetBaseline, pid: int, n_visits: int) -> None:
    expect = {"mu": (N_BINS,), "sigma": (N_BINS,), "t0_h": (n_visits,), "t14_h": (n_visits,)}
    for name, shape in expect.items():
        arr = np.asarray(getattr(base, name))
        if arr.shape != shape:
            raise PlanetDataError(pid, None, f"baseline.{name} must have shape {shape}, got {arr.shape}")
        if not np.isfinite(arr).all():
            raise PlanetDataError(pid, None, f"baseline.{name} has non-finite values")
    if not (np.asarray(base.sigma) > 0).all():
        raise PlanetDataError(pid, None, "baseline.sigma must be positive")


def _inverse_variance(values: np.ndarray, errors: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Inverse-variance mean over visits of the finite values; ``fallback`` where none is.

    Shapes: values, errors (V, B); fallback (B,) -> (B,).
    """
    usable = np.isfinite(values) & np.isfinite(errors) & (errors > 0)
    iv = np.where(usable, 1.0 / np.where(usable, errors, 1.0) ** 2, 0.0)
    total = iv.sum(axis=0)
    mean = (iv * np.where(usable, values, 0.0)).sum(axis=0) / np.maximum(total, 1e-300)
    return np.where(total > 0, mean, fallback)


def _masks(t: np.ndarray, t0: float, t14: float, opt: FeatureOptions) -> tuple[np.ndarray, np.ndarray]:
    """(in-transit, out-of-transit) boolean masks; Shapes: t (T,) -> (T,), (T,)."""
    dt = np.abs(t - t0)
    inside = dt < 0.5 * opt.in_transit_fraction * t14
    # The margin keeps a slightly wrong T14 from putting ingress or egress in the reference.
    outside = dt > (0.5 + opt.oot_margin) * t14
    return inside, outside


def _p2p(y: np.ndarray) -> np.ndarray:
    """White noise from point-to-point differences (immune to the transit and trends). (B, T) -> (B,)."""
    if y.shape[-1] < 3:
        return np.maximum(np.std(y, axis=-1), 1e-9)
    d = np.diff(y, axis=-1)
    s = _MAD_TO_SIGMA * np.median(np.abs(d - np.median(d, axis=-1, keepdims=True)), axis=-1) / math.sqrt(2)
    return np.maximum(np.where(s > 0, s, np.std(d, axis=-1) / math.sqrt(2)), 1e-9)


def _high_pass(x: np.ndarray, window: int) -> np.ndarray:
    """x minus its centred running mean along the last axis (edge-shrunk windows)."""
    n = x.shape[-1]
    w = max(1, min(window, n))
    c = np.concatenate([np.zeros(x.shape[:-1] + (1,)), np.cumsum(x, axis=-1)], axis=-1)
    idx = np.arange(n)
    lo = np.clip(idx - w // 2, 0, n)
    hi = np.clip(idx + w // 2 + 1, 0, n)
    return x - (c[..., hi] - c[..., lo]) / (hi - lo)


def _fgs1_sequence(
    lc: LightCurves, t0: float, t14: float, span: tuple[float, float], opt: FeatureOptions
) -> tuple[np.ndarray, float]:
    """One visit's FGS1 features averaged into ``fgs1_steps`` time bins over ``span`` (hours
    from mid-transit). Returns ((steps, 6), relative point-to-point flux noise)."""
    t = lc.fgs1_time_h.astype(np.float64)
    x = lc.fgs1.astype(np.float64).copy()
    _, outside = _masks(t, t0, t14, opt)
    ref = np.median(x[outside, 0]) if outside.sum() >= 3 else np.median(x[:, 0])
    if not ref > 0:
        raise PlanetDataError(lc.planet_id, None, "fgs1 flux has a non-positive out-of-transit median", lc.visit)
    x[:, 0] = (x[:, 0] / ref - 1.0) / DEPTH_UNIT
    noise = float(_p2p(x[None, :, 0])[0]) * DEPTH_UNIT

    steps = opt.fgs1_steps
    lo, hi = span
    tau = t - t0
    edges = np.linspace(lo, hi, steps + 1)
    idx = np.clip(np.searchsorted(edges, tau, side="right") - 1, 0, steps - 1)
    keep = (tau >= lo - 1e-9) & (tau <= hi + 1e-9)
    counts = np.bincount(idx[keep], minlength=steps).astype(np.float64)
    sums = np.stack([np.bincount(idx[keep], weights=x[keep, c], minlength=steps) for c in range(x.shape[1])], axis=1)
    filled = counts > 0
    centres = 0.5 * (edges[1:] + edges[:-1])
    out = np.empty((steps, x.shape[1]))
    # Fewer samples than steps leaves empty bins: interpolation fills them from their neighbours.
    for c in range(x.shape[1]):
        out[:, c] = np.interp(centres, centres[filled], sums[filled, c] / counts[filled])
    return out, noise


def _visit_nodes(lc: LightCurves, t0: float, t14: float, opt: FeatureOptions) -> dict[str, np.ndarray]:
    """Per-bin statistics of one visit, each (283,): box depth and its error, noise, log flux, R^2."""
    airs = lc.airs_flux.astype(np.float64)
    fgs = lc.fgs1[:, 0].astype(np.float64)
    level = np.concatenate([[np.median(fgs)], np.median(airs, axis=1)])
    positive = level > 0
    ref = float(np.median(level[1:][positive[1:]]))
    log_flux = np.clip(np.log(np.maximum(level / ref, 1e-30)), -LOG_FLUX_CLIP, LOG_FLUX_CLIP)

    out = {
        "box": np.full(N_BINS, np.nan),
        "box_err": np.full(N_BINS, np.nan),
        "noise": np.ones(N_BINS),
        "r2": np.zeros(N_BINS),
    }
    rows = (
        (slice(1, N_AIRS + 1), airs, lc.airs_time_h, lc.airs_trace, np.median(airs, axis=1)),
        (slice(0, 1), fgs[None, :], lc.fgs1_time_h, lc.fgs1[:, 2:4], level[:1]),
    )
    for where, flux, t, pointing, scale in rows:
        # A row without flux says nothing: it keeps NaN box (baseline depth later) and unit noise.
        ok = scale > 0
        y = flux / np.where(ok, scale, 1.0)[:, None]
        box, err, noise, r2 = _row_stats(y, t.astype(np.float64), pointing.astype(np.float64), t0, t14, opt)
        out["box"][where] = np.where(ok, box, np.nan)
        out["box_err"][where] = np.where(ok, err, np.nan)
        out["noise"][where] = np.where(ok, noise, NOISE_UNIT)
        out["r2"][where] = np.where(ok, r2, 0.0)
    out["log_flux"] = np.where(positive, log_flux, -LOG_FLUX_CLIP)
    return out


def _row_stats(
    y: np.ndarray, t: np.ndarray, pointing: np.ndarray, t0: float, t14: float, opt: FeatureOptions
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Box depth, its error, point-to-point noise and pointing R^2 of normalised rows.

    Shapes: y (B, T), t (T,), pointing (T, 2) -> four (B,) arrays; box and error are NaN
    when the visit does not hold both an in-transit and an out-of-transit stretch.
    """
    nb = y.shape[0]
    noise = _p2p(y)
    inside, outside = _masks(t, t0, t14, opt)
    box = np.full(nb, np.nan)
    err = np.full(nb, np.nan)
    if inside.sum() >= 1 and outside.sum() >= 3:
        design = np.stack([np.ones(outside.sum()), t[outside] - t0], axis=1)
        coef, *_ = np.linalg.lstsq(design, y[:, outside].T, rcond=None)  # (2, B)
        trend_in = coef[0][:, None] + coef[1][:, None] * (t[inside] - t0)[None, :]
        box = 1.0 - np.mean(y[:, inside] / trend_in, axis=1)
        err = noise * math.sqrt(1.0 / inside.sum() + 1.0 / outside.sum())

    # Out of transit only (when there is enough of it): the transit's edges would otherwise
    # correlate with any slow pointing drift the high pass leaves.
    sel = outside if outside.sum() >= 8 else np.ones_like(outside)
    yh = _high_pass(y, opt.pointing_window)[:, sel]
    xh = _high_pass(pointing.T, opt.pointing_window)[:, sel].T
    yh = yh - yh.mean(axis=1, keepdims=True)
    xh = xh - xh.mean(axis=0, keepdims=True)
    total = np.sum(yh * yh, axis=1)
    if np.abs(xh).max() > 0:
        coef, *_ = np.linalg.lstsq(xh, yh.T, rcond=None)
        resid = yh - (xh @ coef).T
        r2 = 1.0 - np.sum(resid * resid, axis=1) / np.maximum(total, 1e-300)
    else:
        r2 = np.zeros(nb)
    return box, err, noise, np.clip(np.where(total > 0, r2, 0.0), 0.0, 1.0)
