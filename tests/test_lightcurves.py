import numpy as np
import pytest

from spectramind.data.errors import PlanetDataError
from spectramind.data.lightcurves import Binning, LightCurves, bin_mean, fgs1_feature_matrix, running_mean, visit_path


def make_lc(tf=40, ta=12, planet=11, visit=0) -> LightCurves:
    rng = np.random.default_rng(0)
    tfh = np.linspace(0, 7.5, tf)
    tah = np.linspace(0, 7.5, ta)
    return LightCurves(
        planet_id=planet,
        visit=visit,
        fgs1=fgs1_feature_matrix(1e6 + rng.standard_normal(tf), tfh, rng.standard_normal(tf), rng.standard_normal(tf)),
        fgs1_err=np.full(tf, 10.0),
        fgs1_time_h=tfh,
        airs_flux=np.ones((282, ta)),
        airs_err=np.full((282, ta), 0.01),
        airs_time_h=tah,
        airs_trace=np.zeros((ta, 2)),
        meta={"source": "test"},
    )


def test_roundtrip(tmp_path):
    lc = make_lc()
    path = visit_path(tmp_path, "train", 11, 0)
    lc.save(path)
    back = LightCurves.load(path)
    assert back.planet_id == 11 and back.visit == 0 and back.meta["source"] == "test"
    np.testing.assert_allclose(back.fgs1, lc.fgs1)
    np.testing.assert_allclose(back.airs_time_h, lc.airs_time_h)


def test_validate_names_the_field(tmp_path):
    lc = make_lc()
    lc.airs_flux = np.ones((281, 12))
    with pytest.raises(PlanetDataError, match=r"planet 11.*airs_flux must have shape \(282, 12\)"):
        lc.validate()
    lc = make_lc()
    lc.fgs1[3, 0] = np.nan
    with pytest.raises(PlanetDataError, match="fgs1 has 1 non-finite"):
        lc.save(tmp_path / "x.npz")
    lc = make_lc()
    lc.airs_time_h[5] = lc.airs_time_h[4]
    with pytest.raises(PlanetDataError, match="airs_time_h must increase"):
        lc.validate()


def test_load_corrupt_names_file(tmp_path):
    path = visit_path(tmp_path, "train", 4, 1)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"garbage")
    with pytest.raises(PlanetDataError, match=r"planet 4 \(visit 1\).*visit_1.npz.*cannot read"):
        LightCurves.load(path)


def test_binning_factor_and_mean():
    b = Binning(fgs1_seconds=60, airs_seconds=240)
    assert b.factor(0.4, 67500, b.fgs1_seconds) == 150
    assert b.factor(0.4, 25, b.fgs1_seconds) == 25  # never more than the pairs available
    assert b.factor(480.0, 10, b.airs_seconds) == 1
    x = np.arange(10.0)
    np.testing.assert_allclose(bin_mean(x, 3), [1.0, 4.0, 7.0])
    y = np.arange(20.0).reshape(2, 10)
    np.testing.assert_allclose(bin_mean(y, 5, axis=1), [[2.0, 7.0], [12.0, 17.0]])


def test_jitter_is_high_pass():
    t = np.linspace(0, 7.5, 200)
    drift = 0.5 * t  # slow centroid drift, no jitter
    feats = fgs1_feature_matrix(np.ones(200), t, drift, np.zeros(200))
    assert feats.shape == (200, 6)
    assert feats[0, 1] == 0 and feats[-1, 1] == 1
    # Away from the edges a linear drift has no fast component.
    assert np.abs(feats[10:-10, 4]).max() < 1e-6
    np.testing.assert_allclose(running_mean(np.ones(5), 3), np.ones(5))
