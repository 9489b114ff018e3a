"""The simulator: deterministic, complete ADC2025 and light-curve layouts, sane truth."""

from __future__ import annotations

import math
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from spectramind.bins import airs_wavelengths, wavelengths
from spectramind.data import adc, astro, instrument
from spectramind.data.lightcurves import Binning, LightCurves, list_lightcurves, visit_path
from spectramind.data.simulate import SimulateOptions, simulate_dataset

REPO = Path(__file__).resolve().parents[1]
# Seed 3 gives a training planet observed twice and a test planet observed once.
RAW = SimulateOptions(n_planets=1, seed=3, reads_scale=0.002, level="raw", n_test=1, two_visit_fraction=0.5)
LC = SimulateOptions(n_planets=3, seed=5, reads_scale=0.01, level="lightcurves", n_test=1)
LC_BINNING = Binning(fgs1_seconds=120.0, airs_seconds=900.0)


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    out = tmp_path_factory.mktemp("sim") / "raw"
    summary = simulate_dataset(out, RAW, workers=1, progress=False)
    assert summary.ok, summary.failures
    return out, summary.results


@pytest.fixture(scope="module")
def lc(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    out = tmp_path_factory.mktemp("sim") / "lc"
    summary = simulate_dataset(out, LC, binning=LC_BINNING, workers=1, progress=False)
    assert summary.ok, summary.failures
    return out, summary.results


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- options and determinism


def test_options_match_the_yaml_and_reject_bad_values(tmp_path: Path) -> None:
    keys = yaml.safe_load((REPO / "configs" / "data" / "simulate.yaml").read_text())
    assert set(keys) == {f.name for f in fields(SimulateOptions)}
    SimulateOptions(**keys)
    with pytest.raises(ValueError, match="level"):
        SimulateOptions(level="frames")
    with pytest.raises(ValueError, match="reads_scale"):
        SimulateOptions(reads_scale=0.0)
    (tmp_path / "stale").mkdir()
    with pytest.raises(FileExistsError, match="empty"):
        simulate_dataset(tmp_path, RAW, progress=False)


def test_same_seed_gives_identical_files_whatever_the_workers(raw: tuple[Path, list], tmp_path: Path) -> None:
    root, _ = raw
    again = tmp_path / "again"
    simulate_dataset(again, RAW, workers=2, progress=False)
    first, second = _tree(root), _tree(again)
    assert first.keys() == second.keys()
    assert [name for name in first if first[name] != second[name]] == []


def test_another_seed_gives_other_planets(raw: tuple[Path, list], tmp_path: Path) -> None:
    root, truths = raw
    other = simulate_dataset(tmp_path / "other", replace(RAW, seed=4, n_planets=1, n_test=0), workers=1, progress=False)
    (mine,) = other.results
    assert mine.planet_id != truths[0].planet_id
    assert not np.allclose(mine.labels, truths[0].labels)
    theirs = (tmp_path / "other" / "train" / str(mine.planet_id) / "FGS1_signal_0.parquet").read_bytes()
    assert theirs != (root / "train" / str(truths[0].planet_id) / "FGS1_signal_0.parquet").read_bytes()


# ---------------------------------------------------------------- raw layout


def test_raw_layout_is_complete_with_right_shapes(raw: tuple[Path, list]) -> None:
    root, truths = raw
    axis = adc.read_axis_info(root)
    info = adc.read_adc_info(root)
    assert [(t.split, len(t.transit_mid_h)) for t in truths] == [("train", 2), ("test", 1)]
    for inst in adc.INSTRUMENTS:
        pattern = instrument.read_pattern(inst, RAW.reads_scale)
        assert info.gain[inst] == pytest.approx(instrument.REAL_ADC_GAIN * pattern.scale)
    assert len(axis.airs_column_um) == 356
    np.testing.assert_allclose(axis.airs_column_um[320 - np.arange(282)], airs_wavelengths())
    np.testing.assert_allclose(axis.airs_integration_s[0::2], 0.1)
    airs = instrument.read_pattern(adc.AIRS, RAW.reads_scale)
    fgs1 = instrument.read_pattern(adc.FGS1, RAW.reads_scale)
    np.testing.assert_allclose(axis.airs_integration_s[1::2], 4.5 / airs.scale)
    pair_gap_s = np.diff(axis.fgs1_time_h.reshape(-1, 2), axis=1) * 3600.0
    np.testing.assert_allclose(pair_gap_s, 0.1 / fgs1.scale)
    assert axis.fgs1_time_h[-1] < adc.VISIT_HOURS and axis.airs_time_h[-1] < adc.VISIT_HOURS

    for truth in truths:
        for visit in range(len(truth.transit_mid_h)):
            for inst, n_reads in ((adc.AIRS, len(axis.airs_time_h)), (adc.FGS1, len(axis.fgs1_time_h))):
                meta = pq.read_metadata(adc.signal_path(root, truth.split, truth.planet_id, visit, inst))
                h, w = adc.FRAME_SHAPE[inst]
                assert (meta.num_rows, meta.num_columns) == (n_reads, h * w)
                assert {meta.schema.column(k).physical_type for k in (0, h * w - 1)} == {"INT32"}
                assert str(meta.schema.to_arrow_schema().types[0]) == "uint16"
                cal_dir = adc.calibration_dir(root, truth.split, truth.planet_id, visit, inst)
                assert sorted(p.stem for p in cal_dir.iterdir()) == sorted(adc.CALIBRATION_FILES)
        assert not (root / truth.split / str(truth.planet_id) / "FGS1_signal_2.parquet").exists()
    assert len(axis.airs_time_h) % 2 == 0 and len(axis.fgs1_time_h) % 2 == 0 and len(axis.airs_time_h) >= 4

    # The second visit of the first planet, in detail.
    for inst in adc.INSTRUMENTS:
        h, w = adc.FRAME_SHAPE[inst]
        reads = adc.read_signal(adc.signal_path(root, "train", truths[0].planet_id, 1, inst), inst)
        assert reads.dtype == np.uint16 and reads.shape[1:] == (h, w)
        cal_dir = adc.calibration_dir(root, "train", truths[0].planet_id, 1, inst)
        cal = adc.read_calibration(cal_dir, inst)
        assert pq.read_metadata(cal_dir / "linear_corr.parquet").num_rows == 192
        assert 0 < cal.dead.sum() < 0.01 * h * w
        assert 11 < np.median(cal.read) * math.sqrt(instrument.read_pattern(inst, RAW.reads_scale).scale) < 15
        assert 0.004 < np.median(cal.dark) < 0.01 and abs(np.median(cal.flat) - 1) < 0.01

    star = adc.read_star_info(root, "train")
    assert list(pd.read_csv(root / "train_star_info.csv").columns) == list(adc.STAR_COLUMNS)
    assert sorted(star.index) == sorted(t.planet_id for t in truths if t.split == "train")
    assert sorted(adc.read_star_info(root, "test").index) == [truths[1].planet_id]
    assert list(adc.read_labels(root / "test_truth.csv").index) == [truths[1].planet_id]
    np.testing.assert_allclose(pd.read_csv(root / "wavelengths.csv").to_numpy()[0], wavelengths())
    labels = adc.read_labels(root / "train.csv")
    np.testing.assert_allclose(labels.loc[truths[0].planet_id].to_numpy(), truths[0].labels)


def test_raw_frames_hold_the_star_at_real_levels(raw: tuple[Path, list]) -> None:
    root, truths = raw
    info, axis = adc.read_adc_info(root), adc.read_axis_info(root)
    truth = truths[1]
    raw_reads = adc.read_signal(adc.signal_path(root, "test", truth.planet_id, 0, adc.AIRS), adc.AIRS)
    cal = adc.read_calibration(adc.calibration_dir(root, "test", truth.planet_id, 0, adc.AIRS), adc.AIRS)
    value = np.polynomial.polynomial.polyval(info.decode(raw_reads, adc.AIRS), cal.linear_corr, tensor=False)
    t_long = axis.airs_integration_s[1]
    cds = (value[1::2] - value[0::2] - cal.dark * t_long) / cal.flat
    frame = np.median(cds, axis=0) * 4.5 / t_long
    assert int(np.argmax(frame.sum(axis=1))) in (15, 16)
    totals = frame[:, 39:321].sum(axis=0) / truth.system.brightness
    assert 5e3 < np.median(totals) < 2e5
    assert raw_reads.max() < 65535 and raw_reads.min() > 0


# ---------------------------------------------------------------- truth


def test_labels_are_sane(raw: tuple[Path, list], lc: tuple[Path, list]) -> None:
    for truth in raw[1] + lc[1]:
        labels = truth.labels
        assert labels.shape == (283,)
        assert np.all((labels > 1e-4) & (labels < 0.07))
        airs = labels[1:]
        assert 29e-6 < np.ptp(airs) < 251e-6
        assert 19e-6 < abs(labels[0] - np.percentile(airs, 10)) < 151e-6
        assert airs.mean() == pytest.approx(truth.system.depth)


def test_priors_follow_the_real_ranges() -> None:
    rng = np.random.default_rng(0)
    depths = np.array([astro.draw_white_depth(rng) for _ in range(4000)])
    assert depths.mean() == pytest.approx(astro.DEPTH_MEAN, abs=0.0008)
    assert depths.std() == pytest.approx(astro.DEPTH_STD, abs=0.0012)
    for _ in range(200):
        s = astro.draw_system(rng)
        assert 0.65 <= s.Rs <= 2.9 and 4200 <= s.Ts <= 7000 and 2.8 <= s.P <= 7.6
        assert 4 <= s.sma <= 21 and 85.5 <= s.inc <= 90
        assert s.impact < 1 + s.rp_rs - astro.IMPACT_MARGIN
        t_mid = astro.draw_mid_transit_h(rng, s, adc.VISIT_HOURS)
        assert 2.5 <= t_mid <= 5.0
        assert t_mid - s.duration_h / 2 >= astro.BASELINE_H - 1e-9
        assert t_mid + s.duration_h / 2 <= adc.VISIT_HOURS - astro.BASELINE_H + 1e-9


@pytest.mark.parametrize(
    ("molecule", "band_um"), [("H2O", 2.69), ("CO2", 2.72), ("CH4", 3.31), ("NH3", 3.0), ("CO", 2.35)]
)
def test_molecules_leave_bands_at_their_real_wavelengths(molecule: str, band_um: float) -> None:
    abundances = {m: 1e-6 for m in astro.MOLECULE_BANDS} | {molecule: 30.0}
    atm = astro.Atmosphere(abundances=abundances, rayleigh=0.05, cloud=0.02, amplitude=200e-6, fgs1_offset=50e-6)
    system = astro.System(Rs=1.0, Ms=1.0, Ts=5800.0, Mp=1.0, P=4.0, sma=10.0, inc=89.0, depth=0.01, brightness=1.0)
    airs = astro.spectrum_labels(system, atm)[1:]
    wl = airs_wavelengths()
    in_band = np.abs(wl - band_um) < 0.03
    assert airs[in_band].mean() - np.median(airs) > 0.3 * atm.amplitude
    # The deepest point is in one of the molecule's own bands.
    centres = np.array([c for c, _, _ in astro.MOLECULE_BANDS[molecule]])
    assert np.min(np.abs(centres - wl[np.argmax(airs)])) < 0.1


def test_linear_corr_inverts_the_nonlinearity() -> None:
    pattern = instrument.read_pattern(adc.FGS1, 0.02)
    info = instrument.adc_info(0.02)
    det = instrument.draw_detector(np.random.default_rng(1), pattern, info)
    v = np.linspace(0.0, 0.4 * 65535 / info.gain[adc.FGS1], 7)[:, None, None]
    recorded = v - det.nonlinearity * v * v
    back = np.polynomial.polynomial.polyval(recorded, det.calibration().linear_corr, tensor=False)
    np.testing.assert_allclose(back, np.broadcast_to(v, back.shape), rtol=1e-5)
    assert np.all(recorded[-1] < 0.99 * v[-1])


# ---------------------------------------------------------------- light-curve level


def test_lightcurves_load_at_the_binning_cadence(lc: tuple[Path, list]) -> None:
    root, truths = lc
    assert {split: sorted(found) for split, found in ((s, list_lightcurves(root, s)) for s in adc.SPLITS)} == {
        "train": sorted(t.planet_id for t in truths if t.split == "train"),
        "test": sorted(t.planet_id for t in truths if t.split == "test"),
    }
    assert (root / "lightcurves.json").is_file() and (root / "test_truth.csv").is_file()
    for inst, seconds in ((adc.FGS1, LC_BINNING.fgs1_seconds), (adc.AIRS, LC_BINNING.airs_seconds)):
        pattern = instrument.read_pattern(inst, LC.reads_scale)
        factor = LC_BINNING.factor(pattern.pair_s, pattern.n_pairs, seconds)
        for truth in truths:
            curves = LightCurves.load(visit_path(root, truth.split, truth.planet_id, 0))
            time_h = curves.fgs1_time_h if inst == adc.FGS1 else curves.airs_time_h
            assert len(time_h) == pattern.n_pairs // factor
            assert np.median(np.diff(time_h)) * 3600 == pytest.approx(factor * pattern.pair_s)
            assert curves.meta["pairs_per_bin"][inst] == factor
            assert curves.airs_flux.shape == (282, len(curves.airs_time_h))
            assert np.all(curves.airs_err > 0) and np.all(curves.fgs1_err > 0)


def test_white_light_depth_is_visible(lc: tuple[Path, list]) -> None:
    root, truths = lc
    for truth in truths:
        curves = LightCurves.load(visit_path(root, truth.split, truth.planet_id, 0))
        t, flux, err = curves.fgs1_time_h, curves.fgs1_flux.astype(np.float64), curves.fgs1_err.astype(np.float64)
        t_mid, half = truth.transit_mid_h[0], truth.system.duration_h / 2
        inside, outside = np.abs(t - t_mid) < 0.5 * half, np.abs(t - t_mid) > half + 0.1
        # A line through the out-of-transit flux takes out the linear part of the gain drift.
        baseline = np.polyval(np.polyfit(t[outside], flux[outside], 1), t)
        depth = 1 - np.median(flux[inside] / baseline[inside])
        sigma = 1.2533 * math.hypot(
            np.median(err[inside]) / math.sqrt(inside.sum()), np.median(err[outside]) / math.sqrt(outside.sum())
        )
        sigma /= np.median(flux[outside])
        model = astro.transit_light_curves(
            truth.system, truth.labels, t_mid, t, LC_BINNING.fgs1_seconds, np.array([0])
        )[0]
        expected = 1 - np.median(model[inside])
        # Statistical error plus what the curvature of the drift and the jitter may leave.
        assert abs(depth - expected) < 5 * sigma + 300e-6, (truth.planet_id, depth, expected, sigma)
        assert 0.7 < depth / truth.labels[0] < 1.35
