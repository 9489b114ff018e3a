"""Calibration: real ADC2025 files reduce to sane light curves; synthetic frames with a known
transit, defects and a cosmic ray reduce to the truth within the reported noise; bad input is
named."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from spectramind.bins import N_AIRS, airs_detector_columns
from spectramind.data import adc
from spectramind.data.calibrate import CalibrateOptions, _bin_series, calibrate_dataset, calibrate_visit
from spectramind.data.errors import PlanetDataError
from spectramind.data.lightcurves import Binning, LightCurves, visit_path
from spectramind.data.runner import StrictFailure

REPO = Path(__file__).resolve().parents[1]
SAMPLE_PLANET = 342072318

# ---------------------------------------------------------------- synthetic planet

N_AIRS_READS, N_FGS1_READS = 64, 256
# axis_info describes more reads than the files hold, as in the real sample.
AXIS_AIRS_READS, AXIS_FGS1_READS = 80, 300
AIRS_PAIR_S, FGS1_PAIR_S = 4.8, 1.2
AIRS_T_INT, FGS1_T_INT = 4.5, 0.1
# Transit: AIRS pairs [12, 20) and FGS1 pairs [48, 80) cover the same time; with 2 pairs a bin
# the box covers whole bins.
AIRS_TRANSIT, FGS1_TRANSIT = (12, 20), (48, 80)
BINNING = Binning(fgs1_seconds=2 * FGS1_PAIR_S, airs_seconds=2 * AIRS_PAIR_S)
DEPTH = 0.01
BIAS = 2000.0
NONLIN = 1e-5  # linear_corr maps a read u to u + NONLIN u^2; the generator applies the inverse
ADC_INFO = adc.AdcInfo(gain={adc.AIRS: 0.4369, adc.FGS1: 0.4369}, offset={adc.AIRS: -1000.0, adc.FGS1: -1000.0})
FGS1_STAR = 2.0e6  # units/s
FGS1_CENTRE = (15.6, 16.2)  # (x, y) px
AIRS_TRACE_ROW = 15.3
# Defects (row, detector column) and cosmic rays (pair, row, column, units added to the long read).
AIRS_DEAD, AIRS_HOT, AIRS_COSMIC = (15, 150), (16, 250), (5, 15, 200, 3000.0)
FGS1_DEAD, FGS1_HOT, FGS1_COSMIC = (17, 14), (15, 17), (30, 16, 16, 20000.0)
# Unstable hot pixels: the true dark is twice the dark map (units/s), ~5% of an AIRS column and
# ~2% of the FGS1 star, so an unmasked one would show.
AIRS_HOT_DARK, FGS1_HOT_DARK = 200.0, 4.0e4


def airs_star_rate() -> np.ndarray:
    """Star rate per detector column, units/s, summed over rows. Shape: (356,)."""
    return 4000.0 * (1.0 + 0.3 * np.sin(2 * np.pi * np.arange(356) / 97.0))


def _write_top(root: Path, planets: list[int]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    adc.write_adc_info(root, ADC_INFO)
    airs_k, fgs1_k = np.arange(AXIS_AIRS_READS // 2), np.arange(AXIS_FGS1_READS // 2)
    airs_s = (airs_k[:, None] * AIRS_PAIR_S + np.array([0.1, 0.2])).ravel()
    fgs1_s = (fgs1_k[:, None] * FGS1_PAIR_S + np.array([0.1, 0.1 + FGS1_T_INT])).ravel()
    adc.write_axis_info(
        root,
        adc.AxisInfo(
            airs_time_h=airs_s / 3600.0,
            airs_integration_s=np.tile([0.1, AIRS_T_INT], AXIS_AIRS_READS // 2),
            fgs1_time_h=fgs1_s / 3600.0,
            airs_column_um=np.linspace(4.1, 1.6, 356),
        ),
    )
    star = pd.DataFrame(
        {
            "planet_id": planets,
            "Rs": 1.0,
            "Ms": 1.0,
            "Ts": 5700.0,
            "Mp": 1.0,
            "e": 0.0,
            "P": 3.0,
            "sma": 10.0,
            "i": 89.0,
        }
    )
    star.to_csv(root / "train_star_info.csv", index=False)
    pd.DataFrame([dict.fromkeys(adc.WL_COLUMNS, 1.0)]).to_csv(root / "wavelengths.csv", index=False)
    labels = pd.DataFrame({"planet_id": planets, **dict.fromkeys(adc.WL_COLUMNS, DEPTH)})
    labels.to_csv(root / "train.csv", index=False)


def _raw_reads(
    star: np.ndarray,
    sky: float,
    flat: np.ndarray,
    dark: np.ndarray,
    read: np.ndarray,
    t_int: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Reads in units before the non-linearity: bias + Poisson charge + read noise.

    Shapes: star (m, 32, W) units/s in flat-fielded units -> (2m, 32, W).
    """
    rate = (star + sky) * flat + dark
    first = rng.poisson(rate * 0.1).astype(np.float64)
    second = first + rng.poisson(rate * t_int)
    reads = np.empty((2 * len(star),) + star.shape[1:])
    reads[0::2], reads[1::2] = first, second
    return BIAS + reads + rng.normal(0.0, 1.0, reads.shape) * read


def _encode(reads: np.ndarray, instrument: str) -> np.ndarray:
    # Exact inverse of u -> u + NONLIN u^2, so that the linearity correction restores the reads.
    u = (np.sqrt(1.0 + 4.0 * NONLIN * reads) - 1.0) / (2.0 * NONLIN)
    return ADC_INFO.encode(u, instrument)


def _calibration(
    shape: tuple[int, int],
    rng: np.random.Generator,
    hot: tuple[int, int],
    hot_dark: float,
    dead: tuple[int, int],
    defects: bool,
) -> adc.CalibrationFrames:
    dark = 0.01 + 0.001 * rng.standard_normal(shape)
    flat = 1.0 + 0.02 * rng.standard_normal(shape)
    read = 10.0 + rng.random(shape)
    dead_map = np.zeros(shape, dtype=bool)
    if defects:
        dark[hot] = hot_dark
        dead_map[dead] = True
    linear = np.zeros((adc.LINEAR_CORR_ORDER,) + shape)
    linear[1], linear[2] = 1.0, NONLIN
    return adc.CalibrationFrames(dark=dark, dead=dead_map, flat=flat, linear_corr=linear, read=read)


def _transit(n_pairs: int, window: tuple[int, int]) -> np.ndarray:
    out = np.ones(n_pairs)
    out[window[0] : window[1]] = 1.0 - DEPTH
    return out


def write_planet(
    root: Path,
    planet_id: int,
    *,
    defects: bool = True,
    n_airs: int = N_AIRS_READS,
    n_fgs1: int = N_FGS1_READS,
    seed: int = 0,
) -> None:
    """One synthetic visit 0. ``defects`` adds dead and hot pixels and cosmic rays; the noise
    draws are the same either way, so a clean twin isolates their effect."""
    rng = np.random.default_rng(seed)
    pdir = root / "train" / str(planet_id)

    # AIRS: a Gaussian trace across all columns, uniform sky.
    shape = adc.FRAME_SHAPE[adc.AIRS]
    cal = _calibration(shape, rng, AIRS_HOT, AIRS_HOT_DARK, AIRS_DEAD, defects)
    rows = np.arange(shape[0])
    profile = np.exp(-0.5 * ((rows - AIRS_TRACE_ROW) / 1.5) ** 2)
    star = np.outer(profile / profile.sum(), airs_star_rate())
    m = n_airs // 2
    transit = _transit(m, AIRS_TRANSIT) if m >= AIRS_TRANSIT[1] else np.ones(m)
    dark_true = cal.dark.copy()
    if defects:
        dark_true[AIRS_HOT] = 2 * AIRS_HOT_DARK
    reads = _raw_reads(star[None] * transit[:, None, None], 5.0, cal.flat, dark_true, cal.read, AIRS_T_INT, rng)
    if defects:
        pair, r, c, amount = AIRS_COSMIC
        reads[2 * pair + 1, r, c] += amount
    raw = _encode(reads, adc.AIRS)
    if defects:
        raw[:, AIRS_DEAD[0], AIRS_DEAD[1]] = 0
    adc.write_signal(pdir / "AIRS-CH0_signal_0.parquet", raw)
    adc.write_calibration(pdir / "AIRS-CH0_calibration_0", cal)

    # FGS1: a Gaussian PSF with a little pointing jitter.
    shape = adc.FRAME_SHAPE[adc.FGS1]
    cal = _calibration(shape, rng, FGS1_HOT, FGS1_HOT_DARK, FGS1_DEAD, defects)
    m = n_fgs1 // 2
    transit = _transit(m, FGS1_TRANSIT) if m >= FGS1_TRANSIT[1] else np.ones(m)
    y, x = np.indices(shape)
    jitter = 0.05 * rng.standard_normal((m, 2))
    cx, cy = FGS1_CENTRE[0] + jitter[:, 0, None, None], FGS1_CENTRE[1] + jitter[:, 1, None, None]
    psf = np.exp(-0.5 * ((x - cx) ** 2 + (y - cy) ** 2) / 1.5**2)
    psf /= psf.sum(axis=(1, 2), keepdims=True)
    dark_true = cal.dark.copy()
    if defects:
        dark_true[FGS1_HOT] = 2 * FGS1_HOT_DARK
    reads = _raw_reads(FGS1_STAR * psf * transit[:, None, None], 20.0, cal.flat, dark_true, cal.read, FGS1_T_INT, rng)
    if defects:
        pair, r, c, amount = FGS1_COSMIC
        reads[2 * pair + 1, r, c] += amount
    raw = _encode(reads, adc.FGS1)
    if defects:
        raw[:, FGS1_DEAD[0], FGS1_DEAD[1]] = 0
    adc.write_signal(pdir / "FGS1_signal_0.parquet", raw)
    adc.write_calibration(pdir / "FGS1_calibration_0", cal)


GOOD, CLEAN = 101, 102


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    _write_top(root, [GOOD, CLEAN])
    write_planet(root, GOOD, defects=True)
    write_planet(root, CLEAN, defects=False)
    return root


@pytest.fixture(scope="module")
def good_lc(synth: Path) -> LightCurves:
    return calibrate_visit(synth, "train", GOOD, 0, CalibrateOptions(), BINNING)


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def clean_run(synth: Path) -> tuple[LightCurves, list[str]]:
    """The clean twin and what it logged (caplog is per test; this fixture is per module)."""
    logger, handler = logging.getLogger("spectramind.calibrate"), _Messages()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        lc = calibrate_visit(synth, "train", CLEAN, 0, CalibrateOptions(), BINNING)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return lc, handler.messages


@pytest.fixture(scope="module")
def clean_lc(clean_run: tuple[LightCurves, list[str]]) -> LightCurves:
    return clean_run[0]


def _in_out(n_bins: int, window: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Bins inside the transit and bins clear of it (pairs per bin = 2)."""
    lo, hi = window[0] // 2, window[1] // 2
    idx = np.arange(n_bins)
    return (idx >= lo) & (idx < hi), (idx < lo - 1) | (idx >= hi + 1)


def _depth(flux: np.ndarray, err: np.ndarray, inside: np.ndarray, outside: np.ndarray) -> tuple[float, float]:
    """1 - mean(in) / mean(out) and its 1-sigma from the reported errors. Shapes: (T,)."""
    f_in, f_out = flux[inside].mean(), flux[outside].mean()
    s_in = np.sqrt((err[inside] ** 2).sum()) / inside.sum()
    s_out = np.sqrt((err[outside] ** 2).sum()) / outside.sum()
    ratio = f_in / f_out
    return 1.0 - ratio, ratio * np.hypot(s_in / f_in, s_out / f_out)


# ---------------------------------------------------------------- options


def test_options_match_the_yaml() -> None:
    cfg = yaml.safe_load((REPO / "configs" / "data" / "calibrate.yaml").read_text())
    assert list(cfg) == [f.name for f in fields(CalibrateOptions)]
    assert CalibrateOptions(**cfg) == CalibrateOptions()
    with pytest.raises(ValueError, match="airs_halfwidth"):
        CalibrateOptions(airs_halfwidth=11)
    with pytest.raises(ValueError, match="fgs1_radius"):
        CalibrateOptions(fgs1_radius=12.0)


# ---------------------------------------------------------------- real sample


def test_real_sample(adc_sample: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "lc"
    with caplog.at_level(logging.INFO, logger="spectramind.calibrate"):
        summary = calibrate_dataset(adc_sample, out, CalibrateOptions(), workers=1, progress=False)
    assert summary.ok and summary.results == [("train", SAMPLE_PLANET, 0)]
    assert "axis_info.parquet describes 11250" in caplog.text and "describes 135000" in caplog.text
    index = json.loads((out / "lightcurves.json").read_text())
    assert index["planets"] == {"train": [SAMPLE_PLANET], "test": []}
    for name in ("train_star_info.csv", "test_star_info.csv", "wavelengths.csv"):
        assert (out / name).read_bytes() == (adc_sample / name).read_bytes()
    assert not (out / "train.csv").exists()

    lc = LightCurves.load(visit_path(out, "train", SAMPLE_PLANET, 0))
    assert lc.meta["reads"] == {adc.AIRS: 50, adc.FGS1: 50}
    assert lc.airs_flux.shape == (N_AIRS, 1) and lc.fgs1.shape == (1, 6)
    f = lc.airs_flux[:, 0]
    assert (f > 0).all() and (lc.airs_err > 0).all() and (lc.airs_err < 0.01 * lc.airs_flux).all()
    # The real trace peaks inside the band and fades toward both ends, most at the blue end (column 39).
    peak = int(np.argmax(f))
    assert 0 < peak < N_AIRS - 1 and f[peak] > 1.3 * f[0] and f[peak] > 10 * f[-1]
    # FGS1: close to the decoded CDS total of the frames per second (background subtracted).
    raw = adc.read_signal(adc.signal_path(adc_sample, "train", SAMPLE_PLANET, 0, adc.FGS1), adc.FGS1)
    decoded = adc.read_adc_info(adc_sample).decode(raw, adc.FGS1)
    cds_rate = np.median((decoded[1::2] - decoded[0::2]).sum(axis=(1, 2))) / 0.1
    assert cds_rate == pytest.approx(2.2e6, rel=0.05)
    assert lc.fgs1_flux[0] == pytest.approx(cds_rate, rel=0.1)
    assert 0 < lc.fgs1_err[0] < 1e-3 * lc.fgs1_flux[0]


# ---------------------------------------------------------------- synthetic planet


def test_recovers_transit_depth(good_lc: LightCurves, clean_lc: LightCurves) -> None:
    assert good_lc.fgs1.shape == (N_FGS1_READS // 4, 6) and good_lc.airs_flux.shape == (N_AIRS, N_AIRS_READS // 4)
    inside, outside = _in_out(len(good_lc.fgs1_time_h), FGS1_TRANSIT)
    depth, sigma = _depth(good_lc.fgs1_flux, good_lc.fgs1_err, inside, outside)
    clean_depth, _ = _depth(clean_lc.fgs1_flux, clean_lc.fgs1_err, inside, outside)
    assert sigma < 1e-3 and abs(depth - DEPTH) < 4 * sigma
    # The masked pixels hold ~7% of the PSF: their own photon noise (~0.3 sigma) is all that differs.
    assert abs(depth - clean_depth) < sigma

    inside, outside = _in_out(len(good_lc.airs_time_h), AIRS_TRANSIT)
    white = good_lc.airs_flux.sum(axis=0)
    white_err = np.sqrt((good_lc.airs_err**2).sum(axis=0))
    depth, sigma = _depth(white, white_err, inside, outside)
    assert sigma < 1e-3 and abs(depth - DEPTH) < 4 * sigma
    clean_white = clean_lc.airs_flux.sum(axis=0)
    assert abs(depth - _depth(clean_white, white_err, inside, outside)[0]) < 0.25 * sigma


def test_absolute_flux_and_defects_unbiased(good_lc: LightCurves) -> None:
    # Every AIRS bin, the dead-, hot- and cosmic-ray columns included, matches the star's rate.
    _, outside = _in_out(len(good_lc.airs_time_h), AIRS_TRANSIT)
    truth = airs_star_rate()[airs_detector_columns()]
    mean = good_lc.airs_flux[:, outside].mean(axis=1)
    sigma = np.sqrt((good_lc.airs_err[:, outside] ** 2).sum(axis=1)) / outside.sum()
    pull = (mean - truth) / sigma
    assert np.abs(pull).max() < 5, np.argsort(-np.abs(pull))[:5]
    # The cosmic ray's own bin (pair 5 -> bin 2) in its column (bin index 320 - column).
    pair, _, column, _ = AIRS_COSMIC
    row = 320 - column
    assert abs(good_lc.airs_flux[row, pair // 2] - truth[row]) < 5 * good_lc.airs_err[row, pair // 2]

    _, outside = _in_out(len(good_lc.fgs1_time_h), FGS1_TRANSIT)
    # The PSF at the dead pixel is interpolated from its neighbours: a constant bias of ~0.4%.
    assert good_lc.fgs1_flux[outside].mean() == pytest.approx(FGS1_STAR, rel=1e-2)
    pair = FGS1_COSMIC[0]
    assert abs(good_lc.fgs1_flux[pair // 2] - FGS1_STAR) < 5 * good_lc.fgs1_err[pair // 2]
    assert good_lc.meta[adc.AIRS]["outliers_replaced"] >= 1 and good_lc.meta[adc.FGS1]["outliers_replaced"] >= 1
    assert good_lc.meta[adc.AIRS]["masked_pixels"] == 2 and good_lc.meta[adc.AIRS]["trace_row"] == 15


def test_noise_matches_scatter(good_lc: LightCurves) -> None:
    # 16 AIRS bins (< noise_min_bins): the noise model alone, which must match the scatter.
    # 64 FGS1 bins: the model rescaled to the scatter of its second differences.
    assert good_lc.meta["noise"] == {adc.AIRS: "model", adc.FGS1: "model scaled to the scatter of second differences"}
    _, outside = _in_out(len(good_lc.airs_time_h), AIRS_TRANSIT)
    flux, err = good_lc.airs_flux[:, outside], good_lc.airs_err[:, outside]
    ratio = np.mean(flux.var(axis=1, ddof=1) / (err**2).mean(axis=1))
    assert 0.85 < ratio < 1.15
    _, outside = _in_out(len(good_lc.fgs1_time_h), FGS1_TRANSIT)
    ratio = good_lc.fgs1_flux[outside].var(ddof=1) / (good_lc.fgs1_err[outside] ** 2).mean()
    assert 0.6 < ratio < 1.6


def test_bin_error_rescaled_to_scatter_of_long_series() -> None:
    rng = np.random.default_rng(3)
    pairs = np.arange(4000)
    # Noise 3x the model's, on a drift and a box transit of 5 bin sigmas that must not inflate it.
    values = (
        3.0 * rng.standard_normal((4000, 2)) + 1e-3 * pairs[:, None] - 5.0 * ((pairs > 1500) & (pairs < 2500))[:, None]
    )
    mean, err, scaled = _bin_series(values, np.ones((4000, 2)), factor=10, min_bins=32)
    assert scaled and mean.shape == err.shape == (400, 2)
    np.testing.assert_allclose(err, 3.0 / np.sqrt(10), rtol=0.1)
    _, err, scaled = _bin_series(values, np.ones((4000, 2)), factor=10, min_bins=401)
    assert not scaled
    np.testing.assert_allclose(err, 1.0 / np.sqrt(10))


def test_reads_fewer_than_axis_are_logged(clean_run: tuple[LightCurves, list[str]]) -> None:
    text = "\n".join(clean_run[1])
    assert f"holds {N_AIRS_READS} AIRS-CH0 reads, axis_info.parquet describes {AXIS_AIRS_READS}" in text
    assert f"holds {N_FGS1_READS} FGS1 reads, axis_info.parquet describes {AXIS_FGS1_READS}" in text


# ---------------------------------------------------------------- bad input


def _copy_planet(src_root: Path, dst_root: Path, src: int, dst: int) -> Path:
    pdir = dst_root / "train" / str(dst)
    shutil.copytree(src_root / "train" / str(src), pdir)
    return pdir


@pytest.fixture(scope="module")
def bad_root(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad")
    _write_top(root, [1, 2, 3, 4, 5])
    (_copy_planet(synth, root, CLEAN, 1) / "AIRS-CH0_calibration_0" / "flat.parquet").unlink()
    # FGS1 files for the signal faults: they are found without reading an 11,392-column AIRS file.
    pdir = _copy_planet(synth, root, CLEAN, 2)
    adc.write_signal(pdir / "FGS1_signal_0.parquet", np.zeros((N_FGS1_READS, 32, 30), dtype=np.uint16))
    pdir = _copy_planet(synth, root, CLEAN, 3)
    adc.write_signal(pdir / "FGS1_signal_0.parquet", np.zeros((N_FGS1_READS - 1, 32, 32), dtype=np.uint16))
    pdir = _copy_planet(synth, root, CLEAN, 4)
    adc.write_signal(pdir / "FGS1_signal_0.parquet", np.full((AXIS_FGS1_READS + 2, 32, 32), 5000, dtype=np.uint16))
    pdir = _copy_planet(synth, root, CLEAN, 5)
    cal_dir = pdir / "FGS1_calibration_0"
    cal = adc.read_calibration(cal_dir, adc.FGS1)
    cal.linear_corr[5, 3, 3] = 1e300  # finite on disk, overflows on a decoded read
    adc.write_calibration(cal_dir, cal)
    return root


@pytest.mark.parametrize(
    ("planet", "file", "message"),
    [
        (1, "AIRS-CH0_calibration_0/flat.parquet", "missing"),
        (2, "FGS1_signal_0.parquet", "1024 columns"),
        (3, "FGS1_signal_0.parquet", "even number of reads"),
        (4, "FGS1_signal_0.parquet", f"{AXIS_FGS1_READS + 2} FGS1 reads, but axis_info.parquet describes only"),
        (5, "FGS1_signal_0.parquet", "non-finite values"),
    ],
)
def test_bad_input_names_planet_and_file(bad_root: Path, planet: int, file: str, message: str) -> None:
    with pytest.raises(PlanetDataError) as info:
        calibrate_visit(bad_root, "train", planet, 0, CalibrateOptions(), BINNING)
    text = str(info.value)
    assert text.startswith(f"planet {planet} (visit 0): ") and file in text and message in text


def test_non_finite_adc_constants_name_adc_info(synth: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    _write_top(root, [CLEAN])
    _copy_planet(synth, root, CLEAN, CLEAN)
    adc.write_adc_info(root, adc.AdcInfo(gain=ADC_INFO.gain, offset={**ADC_INFO.offset, adc.AIRS: float("nan")}))
    with pytest.raises(PlanetDataError, match=rf"planet {CLEAN} \(visit 0\): .*adc_info.csv: AIRS-CH0_adc_offset must be finite"):
        calibrate_visit(root, "train", CLEAN, 0, CalibrateOptions(), BINNING)


def test_dataset_skips_bad_planet_and_strict_raises(synth: Path, tmp_path: Path) -> None:
    root = tmp_path / "raw"
    _write_top(root, [CLEAN, 7])
    _copy_planet(synth, root, CLEAN, CLEAN)
    (_copy_planet(synth, root, CLEAN, 7) / "FGS1_calibration_0" / "dark.parquet").unlink()
    out = tmp_path / "lc"
    summary = calibrate_dataset(root, out, CalibrateOptions(), BINNING, workers=2, progress=False)
    assert summary.results == [("train", CLEAN, 0)]
    assert [f.item for f in summary.failures] == ["train 7 0"]
    assert "planet 7 (visit 0)" in summary.failures[0].error and "dark.parquet" in summary.failures[0].error
    assert json.loads((out / "lightcurves.json").read_text())["planets"] == {"train": [CLEAN], "test": []}
    assert (out / "train.csv").is_file() and (out / "wavelengths.csv").is_file()
    assert not visit_path(out, "train", 7, 0).exists()
    lc = LightCurves.load(visit_path(out, "train", CLEAN, 0))
    assert lc.meta["split"] == "train" and lc.meta["options"] == asdict(CalibrateOptions())

    with pytest.raises(StrictFailure, match="planet 7"):
        calibrate_dataset(
            root, tmp_path / "strict", CalibrateOptions(), BINNING, workers=1, strict=True, progress=False
        )


def test_dataset_without_planets_names_the_folder(tmp_path: Path) -> None:
    _write_top(tmp_path, [])
    with pytest.raises(PlanetDataError, match=rf"{tmp_path}: no planets found under train/, test/"):
        calibrate_dataset(tmp_path, tmp_path / "lc", CalibrateOptions(), progress=False)
