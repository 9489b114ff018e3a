"""The physics baseline on synthetic batman transits with known per-bin depths."""

from __future__ import annotations

import math
from pathlib import Path

import batman
import numpy as np
import pandas as pd
import pytest
import yaml

from spectramind.baseline import BaselineOptions, baseline_dataset, fit_white_light, predict_planet
from spectramind.bins import N_AIRS, N_BINS
from spectramind.data.adc import STAR_COLUMNS, WL_COLUMNS
from spectramind.data.lightcurves import LightCurves, fgs1_feature_matrix, visit_path
from spectramind.data.runner import StrictFailure
from spectramind.metric import read_submission, score_frames

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "data" / "baseline.yaml"
VISIT_H = 7.5
T_AIRS = 150
T_FGS1 = 450
AIRS_NOISE = 300e-6
FGS1_NOISE = 100e-6


def _transit(t: np.ndarray, t0: float, per_h: float, rp: float, sma: float, inc: float, u, exp_h: float):
    p = batman.TransitParams()
    p.t0, p.per, p.rp, p.a, p.inc, p.ecc, p.w = t0, per_h, rp, sma, inc, 0.0, 90.0
    p.limb_dark, p.u = "quadratic", list(u)
    return batman.TransitModel(p, t, supersample_factor=7, exp_time=exp_h).light_curve(p)


def make_planet(pid: int, rng: np.random.Generator, base: float | None = None):
    """One synthetic visit, its star-info row and its true depths: (LightCurves, dict, (283,)).

    A flat spectrum plus a 200 ppm Gaussian bump, limb darkening that weakens with
    wavelength (stronger in FGS1), a slow trend, white noise of 300 ppm per AIRS point and
    100 ppm per FGS1 point, a stellar spectrum that varies across bins.
    """
    period_d = rng.uniform(1.5, 5.0)
    sma = 4.2 * period_d ** (2 / 3)  # a Sun-like star
    b = rng.uniform(0.0, 0.6)
    inc = math.degrees(math.acos(b / sma))
    base = rng.uniform(0.006, 0.025) if base is None else base
    j = np.arange(N_AIRS)
    depth_airs = base + 200e-6 * np.exp(-0.5 * ((j - rng.uniform(60, 220)) / 8.0) ** 2)
    depth_fgs1 = base + rng.uniform(-100e-6, 100e-6)
    t0 = VISIT_H / 2 + rng.uniform(-0.5, 0.5)

    ta = np.linspace(0, VISIT_H, T_AIRS, endpoint=False) + VISIT_H / T_AIRS / 2
    tf = np.linspace(0, VISIT_H, T_FGS1, endpoint=False) + VISIT_H / T_FGS1 / 2
    tau_a, tau_f = ta / VISIT_H - 0.5, tf / VISIT_H - 0.5
    trend = lambda tau: 1 + 6e-4 * tau - 3e-4 * tau**2  # noqa: E731
    u1 = np.linspace(0.20, 0.10, N_AIRS)
    star_flux = 1000 * (1.2 - 0.6 * j / N_AIRS)
    airs = np.empty((N_AIRS, T_AIRS))
    noise = AIRS_NOISE * rng.uniform(0.7, 1.3, N_AIRS)
    for k in range(N_AIRS):
        lc = _transit(ta, t0, period_d * 24, math.sqrt(depth_airs[k]), sma, inc, (u1[k], 0.08), VISIT_H / T_AIRS)
        airs[k] = star_flux[k] * trend(tau_a) * lc * (1 + noise[k] * rng.standard_normal(T_AIRS))
    airs_err = star_flux[:, None] * noise[:, None] * np.ones((1, T_AIRS))
    fl = _transit(tf, t0, period_d * 24, math.sqrt(depth_fgs1), sma, inc, (0.42, 0.2), VISIT_H / T_FGS1)
    fgs1_flux = 5e4 * trend(tau_f) * fl * (1 + FGS1_NOISE * rng.standard_normal(T_FGS1))
    cx, cy = 0.01 * rng.standard_normal((2, T_FGS1))
    lcs = LightCurves(
        planet_id=pid,
        visit=0,
        fgs1=fgs1_feature_matrix(fgs1_flux, tf, cx, cy),
        fgs1_err=np.full(T_FGS1, 5e4 * FGS1_NOISE),
        fgs1_time_h=tf,
        airs_flux=airs,
        airs_err=airs_err,
        airs_time_h=ta,
        airs_trace=0.01 * rng.standard_normal((T_AIRS, 2)),
        meta={"split": "train", "source": "test_baseline"},
    )
    star = dict(planet_id=pid, Rs=1.0, Ms=1.0, Ts=5700.0, Mp=1.0, e=0.0, P=period_d, sma=sma, i=inc)
    return lcs, star, np.concatenate([[depth_fgs1], depth_airs])


def write_lcdir(root: Path, n: int, seed: int = 0) -> tuple[pd.DataFrame, dict[int, LightCurves]]:
    """An LCDIR of n training planets with star info and labels. Returns (labels, light curves)."""
    rng = np.random.default_rng(seed)
    stars, truth, lcs = [], [], {}
    for pid in range(100, 100 + n):
        lc, star, depth = make_planet(pid, rng)
        lc.save(visit_path(root, "train", pid, 0))
        stars.append(star)
        truth.append([pid, *depth])
        lcs[pid] = lc
    pd.DataFrame(stars, columns=list(STAR_COLUMNS)).to_csv(root / "train_star_info.csv", index=False)
    labels = pd.DataFrame(truth, columns=["planet_id", *WL_COLUMNS])
    labels.to_csv(root / "train.csv", index=False)
    return labels, lcs


@pytest.fixture(scope="module")
def lcdir(tmp_path_factory) -> tuple[Path, pd.DataFrame, dict[int, LightCurves]]:
    root = tmp_path_factory.mktemp("lcdir")
    labels, lcs = write_lcdir(root, 4)
    return root, labels, lcs


def test_options_match_the_yaml():
    cfg = yaml.safe_load(CONFIG.read_text())
    opts = BaselineOptions.from_mapping(cfg)
    assert set(cfg) == {f for f in BaselineOptions.__dataclass_fields__}
    assert opts.poly_degree == 2
    with pytest.raises(ValueError, match="polydegree"):
        BaselineOptions.from_mapping({"polydegree": 2})
    with pytest.raises(ValueError, match="sigma_inflation"):
        BaselineOptions(sigma_inflation=0.0)
    with pytest.raises(ValueError, match="common_mode"):
        BaselineOptions(common_mode="yes")


def test_baseline_beats_naive_on_synthetic_transits(lcdir, tmp_path):
    root, labels, _ = lcdir
    out = tmp_path / "baseline.csv"
    summary = baseline_dataset(root, out, BaselineOptions(), splits=("train",), workers=1, progress=False)
    assert summary.ok and len(summary.results) == 4
    sub = read_submission(out)
    assert sorted(sub["planet_id"]) == sorted(labels["planet_id"])
    sigma = sub[[c for c in sub.columns if c.startswith("sigma_")]].to_numpy()
    assert (sigma > 0).all()
    rep = score_frames(labels, sub)
    print("synthetic baseline:", rep.to_json(indent=None))
    assert rep.score > 0.2
    assert rep.fgs1 > 0.2 and rep.airs > 0.2
    assert 0.6 <= rep.coverage_90 <= 1.0
    assert 0.4 <= rep.coverage_68 <= 0.95
    assert rep.rmse_ppm < 200


def test_white_light_depth_within_three_sigma(lcdir):
    root, labels, lcs = lcdir
    stars = pd.read_csv(root / "train_star_info.csv").set_index("planet_id")
    truth = labels.set_index("planet_id")
    for pid, lc in lcs.items():
        fit = fit_white_light(lc, stars.loc[pid], BaselineOptions())
        # The AIRS white light is the flux-weighted mean of the bin depths.
        weights = np.median(lc.airs_flux, axis=1)
        true_white = float(np.sum(weights * truth.loc[pid].to_numpy()[1:]) / weights.sum())
        assert fit.depth_airs_sigma > 0
        assert abs(fit.depth_airs - true_white) < 3 * fit.depth_airs_sigma, (pid, fit, true_white)
        true_fgs1 = float(truth.loc[pid, "wl_1"])
        assert abs(fit.depth_fgs1 - true_fgs1) < 3 * fit.depth_fgs1_sigma, (pid, fit, true_fgs1)
        assert abs(fit.inc - stars.loc[pid, "i"]) < 2.0


def test_geometry_knobs_take_or_fit_the_star_info(lcdir):
    root, _, lcs = lcdir
    stars = pd.read_csv(root / "train_star_info.csv").set_index("planet_id")
    pid, lc = next(iter(lcs.items()))
    star = stars.loc[pid].copy()
    star["i"] = math.degrees(math.acos(min(1.0, (star["sma"] * math.cos(math.radians(star["i"])) + 0.3) / star["sma"])))
    # Taken from star info (the default): the fit keeps the given, here wrong, inclination.
    taken = fit_white_light(lc, star, BaselineOptions())
    assert taken.inc == pytest.approx(star["i"], abs=1e-6)
    # Fitted with a loose prior: the light curve pulls the impact parameter back toward the truth.
    free = fit_white_light(lc, star, BaselineOptions(fit_inclination=True, geometry_prior=1.0))
    assert abs(free.inc - stars.loc[pid, "i"]) < abs(taken.inc - stars.loc[pid, "i"])
    # A tight prior holds it at star info even when fitted.
    tight = fit_white_light(lc, star, BaselineOptions(fit_inclination=True, geometry_prior=1e-4))
    assert tight.inc == pytest.approx(star["i"], abs=0.05)


def test_gradient_fallback_without_star_info(lcdir):
    _, labels, lcs = lcdir
    pid, lc = next(iter(lcs.items()))
    mu, sigma = predict_planet([lc], None, BaselineOptions())
    truth = labels.set_index("planet_id").loc[pid].to_numpy()
    assert mu.shape == sigma.shape == (N_BINS,)
    assert (mu >= 0).all() and (sigma > 0).all()
    z = (mu - truth) / sigma
    assert np.mean(np.abs(z) < 3) > 0.8


def test_two_visits_combine_by_inverse_variance(lcdir):
    _, _, lcs = lcdir
    lc = next(iter(lcs.values()))
    # without smoothing and floors, two copies of a visit are worth exactly sqrt(2) in sigma
    opts = BaselineOptions(smooth_bins=0, sigma_floor_ppm_airs=0.0, sigma_floor_ppm_fgs1=0.0)
    one_mu, one_sigma = predict_planet([lc], None, opts)
    two_mu, two_sigma = predict_planet([lc, lc], None, opts)
    assert np.allclose(two_mu, one_mu)
    assert np.allclose(two_sigma, one_sigma / math.sqrt(2))


def test_corrupt_planet_is_skipped_and_strict_raises(lcdir, tmp_path):
    root, labels, _ = lcdir
    bad = tmp_path / "lcdir"
    # a copy of two planets, one of them with a truncated file
    for pid in (100, 101):
        src = visit_path(root, "train", pid, 0)
        dst = visit_path(bad, "train", pid, 0)
        dst.parent.mkdir(parents=True)
        dst.write_bytes(src.read_bytes() if pid == 100 else src.read_bytes()[:500])
    (bad / "train_star_info.csv").write_bytes((root / "train_star_info.csv").read_bytes())
    out = tmp_path / "sub.csv"
    summary = baseline_dataset(bad, out, BaselineOptions(), splits=("train",), workers=1, progress=False)
    assert len(summary.results) == 1 and len(summary.failures) == 1
    assert "planet 101" in summary.failures[0].item
    assert "visit_0.npz" in summary.failures[0].error
    assert list(read_submission(out)["planet_id"]) == [100]
    with pytest.raises(StrictFailure, match="planet 101"):
        baseline_dataset(
            bad, tmp_path / "strict.csv", BaselineOptions(), splits=("train",), workers=1, strict=True, progress=False
        )
