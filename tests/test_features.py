"""Light curves -> model inputs on tiny synthetic batman transits of known depth."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import batman
import numpy as np
import pytest
import yaml

from spectramind.bins import N_AIRS, N_BINS
from spectramind.config import compose
from spectramind.data.errors import PlanetDataError
from spectramind.data.features import (
    NODE_FEATURES,
    FeatureOptions,
    ModelInputs,
    PlanetBaseline,
    fit_baseline,
    planet_inputs,
    stack_inputs,
)
from spectramind.data.lightcurves import LightCurves, fgs1_feature_matrix

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "data" / "features.yaml"
DEPTH = 0.01  # (Rp/Rs)^2 injected in every bin: depth_fit reads 1.0 in units of 1e-2
VISIT_H = 6.0
T_AIRS, T_FGS1 = 90, 270
PERIOD_D, SMA, INC = 3.0, 8.8, 88.0
STAR = {"Rs": 1.0, "Ms": 1.0, "Ts": 5700.0, "Mp": 1.0, "e": 0.0, "P": PERIOD_D, "sma": SMA, "i": INC}


def _transit(t: np.ndarray, t0: float, u: tuple[float, float]) -> np.ndarray:
    p = batman.TransitParams()
    p.t0, p.per, p.rp, p.a, p.inc, p.ecc, p.w = t0, PERIOD_D * 24, math.sqrt(DEPTH), SMA, INC, 0.0, 90.0
    p.limb_dark, p.u = "quadratic", list(u)
    return batman.TransitModel(p, t).light_curve(p)


def make_visit(visit: int, t0: float, seed: int) -> LightCurves:
    """One visit with the same transit in every bin, 300 ppm AIRS and 100 ppm FGS1 white noise."""
    rng = np.random.default_rng(seed)
    ta = (np.arange(T_AIRS) + 0.5) * VISIT_H / T_AIRS
    tf = (np.arange(T_FGS1) + 0.5) * VISIT_H / T_FGS1
    star_flux = np.linspace(1200.0, 600.0, N_AIRS)[:, None]
    airs = star_flux * _transit(ta, t0, (0.15, 0.18))[None, :] * (1 + 300e-6 * rng.standard_normal((N_AIRS, T_AIRS)))
    fgs1 = 5e4 * _transit(tf, t0, (0.40, 0.22)) * (1 + 100e-6 * rng.standard_normal(T_FGS1))
    cx, cy = 0.01 * rng.standard_normal((2, T_FGS1))
    return LightCurves(
        planet_id=7,
        visit=visit,
        fgs1=fgs1_feature_matrix(fgs1, tf, cx, cy),
        fgs1_err=np.full(T_FGS1, 5e4 * 100e-6),
        fgs1_time_h=tf,
        airs_flux=airs,
        airs_err=star_flux * 300e-6 * np.ones((1, T_AIRS)),
        airs_time_h=ta,
        airs_trace=0.01 * rng.standard_normal((T_AIRS, 2)),
        meta={"split": "train", "source": "test_features"},
    )


@pytest.fixture(scope="module")
def visits() -> list[LightCurves]:
    return [make_visit(0, 3.0, seed=1), make_visit(1, 2.6, seed=2)]


@pytest.fixture(scope="module")
def options() -> FeatureOptions:
    return FeatureOptions(fgs1_steps=64)


@pytest.fixture(scope="module")
def one_visit(visits, options) -> tuple[PlanetBaseline, ModelInputs]:
    base = fit_baseline(visits[:1], STAR, options)
    return base, planet_inputs(visits[:1], STAR, options, baseline=base)


def test_options_match_the_yaml():
    cfg = yaml.safe_load(CONFIG.read_text())
    assert set(cfg) == {f.name for f in dataclasses.fields(FeatureOptions)} - {"baseline"}
    assert FeatureOptions.from_mapping(cfg) == FeatureOptions()
    # Whether or not configs/config.yaml mounts data/features yet, the composed config agrees.
    assert FeatureOptions.from_config(compose()) == FeatureOptions()
    with pytest.raises(ValueError, match="fgs1_step"):
        FeatureOptions.from_mapping({"fgs1_step": 64})
    with pytest.raises(ValueError, match="fgs1_steps"):
        FeatureOptions(fgs1_steps=1)


def test_one_visit_shapes_and_depths(one_visit, options):
    base, inputs = one_visit
    assert inputs.planet_id == 7
    assert inputs.fgs1.shape == (options.fgs1_steps, 6) and inputs.fgs1.dtype == np.float32
    assert inputs.airs_nodes.shape == (N_BINS, len(NODE_FEATURES)) and inputs.airs_nodes.dtype == np.float32
    assert np.isfinite(inputs.fgs1).all() and np.isfinite(inputs.airs_nodes).all()

    nodes = inputs.airs_nodes
    depth = nodes[:, NODE_FEATURES.index("depth_fit")]
    sigma = 10 ** nodes[:, NODE_FEATURES.index("log_sigma")] * 1e-4
    # depth_fit is the baseline depth in units of 1e-2: the injected 0.01 reads 1.
    assert abs(depth[0] - 1.0) < max(0.03, 4 * sigma[0] / 1e-2)
    assert abs(np.median(depth[1:]) - 1.0) < 0.01
    # Every AIRS bin within 2 % (200 ppm): the baseline's shared white-light error moves all
    # bins together, so a per-bin sigma test would be too strict.
    assert (np.abs(depth[1:] - 1.0) < 0.02).all()
    assert (sigma > 0).all() and np.median(sigma[1:]) < 2e-4
    np.testing.assert_allclose(depth, base.mu / 1e-2, rtol=1e-5)
    # The model-free box depth is deeper by the limb-darkening contrast, never far off.
    box = nodes[:, NODE_FEATURES.index("depth_box")]
    assert 0.9 < np.median(box[1:]) < 1.3 and 0.9 < box[0] < 1.4
    # A flat spectrum has no spectral feature: depth_rel (units of 100 ppm) stays near 0.
    assert np.abs(np.median(nodes[1:, NODE_FEATURES.index("depth_rel")])) < 0.5
    r2 = nodes[:, NODE_FEATURES.index("pointing_r2")]
    assert ((r2 >= 0) & (r2 <= 1)).all() and np.median(r2) < 0.2  # the noise is not pointing-driven
    wl = nodes[:, NODE_FEATURES.index("wavelength")]
    assert wl[0] == -1 and wl[-1] == 1 and (np.diff(wl) > 0).all()
    # The FGS1 series: 0 out of transit, about -1 (a 1 % dip) at mid-transit, time_norm rising.
    flux = inputs.fgs1[:, 0]
    assert abs(np.median(flux[:5])) < 0.05 and -1.4 < flux.min() < -0.9
    assert (np.diff(inputs.fgs1[:, 1]) > 0).all()


def test_precomputed_baseline_gives_the_same_inputs(visits, one_visit, options):
    base, inputs = one_visit
    fresh = planet_inputs(visits[:1], STAR, options)
    np.testing.assert_allclose(fresh.airs_nodes, inputs.airs_nodes, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fresh.fgs1, inputs.fgs1, rtol=1e-5, atol=1e-6)
    cached = PlanetBaseline.from_arrays(base.to_arrays())
    again = planet_inputs(visits[:1], STAR, options, baseline=cached)
    np.testing.assert_array_equal(again.airs_nodes, inputs.airs_nodes)
    with pytest.raises(PlanetDataError, match=r"planet 7.*baseline.mu must have shape"):
        planet_inputs(visits[:1], STAR, options, baseline=dataclasses.replace(base, mu=base.mu[:-1]))


def test_two_visits_combine(visits, one_visit, options):
    _, single = one_visit
    both = planet_inputs(visits, STAR, options)
    assert both.fgs1.shape == single.fgs1.shape and both.airs_nodes.shape == single.airs_nodes.shape
    log_sigma = NODE_FEATURES.index("log_sigma")
    # Two visits of equal quality shrink the baseline sigma (inverse-variance combination).
    assert np.median(both.airs_nodes[1:, log_sigma]) < np.median(single.airs_nodes[1:, log_sigma]) - 0.05
    assert abs(np.median(both.airs_nodes[1:, 0]) - 1.0) < 0.02
    # Transits 0.4 h apart are aligned before averaging: the averaged dip keeps its full depth.
    assert -1.4 < both.fgs1[:, 0].min() < -0.9


def test_fgs1_resampling_up_and_down(visits, one_visit):
    base, _ = one_visit
    for steps in (16, 512):  # fewer and more steps than the 270 FGS1 bins
        out = planet_inputs(visits[:1], STAR, FeatureOptions(fgs1_steps=steps), baseline=base)
        assert out.fgs1.shape == (steps, 6) and np.isfinite(out.fgs1).all()
        assert -1.4 < out.fgs1[:, 0].min() < -0.8


def test_stack_inputs(one_visit):
    _, inputs = one_visit
    batch = stack_inputs([inputs, inputs, inputs])
    assert tuple(batch["fgs1"].shape) == (3, inputs.fgs1.shape[0], 6)
    assert tuple(batch["airs_nodes"].shape) == (3, N_BINS, 8)
    assert str(batch["fgs1"].dtype) == "torch.float32"
    short = dataclasses.replace(inputs, fgs1=inputs.fgs1[:-1])
    with pytest.raises(ValueError, match=r"item 1 .*fgs1"):
        stack_inputs([inputs, short])
    with pytest.raises(ValueError, match=r"airs_nodes must have shape \(283, 8\)"):
        dataclasses.replace(inputs, airs_nodes=inputs.airs_nodes[:, :7])


def test_nan_light_curve_is_rejected_naming_the_field(visits, options):
    bad = dataclasses.replace(visits[0], airs_flux=visits[0].airs_flux.copy())
    bad.airs_flux[5, 3] = np.nan
    with pytest.raises(PlanetDataError, match=r"planet 7 \(visit 0\).*airs_flux has 1 non-finite"):
        planet_inputs([bad], STAR, options)


def test_visits_of_different_planets_are_rejected(visits, options):
    other = dataclasses.replace(visits[1], planet_id=8)
    with pytest.raises(PlanetDataError, match=r"planet 7.*planet_id.*planet 8"):
        planet_inputs([visits[0], other], STAR, options)
    with pytest.raises(PlanetDataError, match="no visits"):
        planet_inputs([], STAR, options)


def test_options_from_checkpoint_meta_round_trip_and_errors():
    import dataclasses
    import json

    from spectramind.data.features import FEATURES_VERSION, FeatureOptions, options_from_meta

    opts = FeatureOptions(fgs1_steps=32, pointing_window=9)
    meta = {"features_version": FEATURES_VERSION, "features": json.loads(json.dumps(dataclasses.asdict(opts)))}
    assert options_from_meta(meta, "best.pt") == opts
    with pytest.raises(ValueError, match="best.pt: trained on features version 0"):
        options_from_meta({**meta, "features_version": 0}, "best.pt")
    with pytest.raises(ValueError, match="best.pt: meta has no feature options"):
        options_from_meta({"features_version": FEATURES_VERSION}, "best.pt")
