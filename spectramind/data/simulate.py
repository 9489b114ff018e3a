"""``spectramind simulate``: planets with known truth, as raw ADC2025 frames or as light curves.

Level ``raw`` writes a data root in the ADC2025 layout (see :mod:`spectramind.data.adc`):
``{train,test}/<id>/{AIRS-CH0,FGS1}_signal_<k>.parquet`` and ``*_calibration_<k>/``,
``train.csv``, ``{train,test}_star_info.csv``, ``wavelengths.csv``, ``adc_info.csv``,
``axis_info.parquet``. Level ``lightcurves`` writes a light-curve directory (see
:mod:`spectramind.data.lightcurves`) without rendering frames: the same planets, pointing,
detector maps and drifts (same seed, same truth), extracted from noise-free frames with the
calibrator's apertures, binned to the :class:`Binning` cadence, plus Gaussian noise of the
variance that photon, dark, background, read and ADC noise leave after calibration. Cosmic
rays and the non-linearity, which the calibrator removes, are left out there.

Both levels also write ``test_truth.csv`` (planet_id, wl_1..wl_283) when ``n_test > 0``: the
labels of the test planets, which the ADC2025 layout does not have, for scoring.

Reads scale: see :mod:`spectramind.data.instrument` (the visit keeps 7.5 h; F x the real reads,
each 1/F times longer; read noise x sqrt(1/F); ``adc_info.csv`` gain x F and offset / F).

Determinism: every planet draws from its own ``SeedSequence(seed, spawn_key=(split, index, ...))``,
so the files depend on the seed and the options only, never on the number of workers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from spectramind.bins import wavelengths
from spectramind.data import adc, astro, instrument
from spectramind.data.lightcurves import Binning, LightCurves, bin_mean, fgs1_feature_matrix, visit_path, write_index
from spectramind.data.runner import RunSummary, run_planets
from spectramind.options import check_rules, coerce_fields

LEVELS = ("raw", "lightcurves")
_SPLIT_KEY = {"train": 0, "test": 1}
_IDS_KEY = 2
_VISITS_KEY = 3
_PLANET_ID_RANGE = (100_000, 2**32 - 1)


@dataclass
class SimulateOptions:
    """Settings of the simulator; the fields are exactly the keys of ``configs/data/simulate.yaml``."""

    n_planets: int = 8
    seed: int = 1
    reads_scale: float = 0.02
    level: str = "raw"
    n_test: int = 0
    two_visit_fraction: float = 0.0

    def __post_init__(self) -> None:
        coerce_fields(self, "simulate")
        rules = (
            ("n_planets", self.n_planets >= 0, ">= 0"),
            ("seed", self.seed >= 0, ">= 0"),
            ("reads_scale", 0 < self.reads_scale <= 1, "in (0, 1]"),
            ("level", self.level in LEVELS, f"one of {LEVELS}"),
            ("n_test", self.n_test >= 0, ">= 0"),
            ("two_visit_fraction", 0 <= self.two_visit_fraction <= 1, "in [0, 1]"),
        )
        check_rules("simulate", self, rules)
        if self.n_planets + self.n_test < 1:
            raise ValueError("simulate: n_planets + n_test must be at least 1")


@dataclass(frozen=True)
class PlanetJob:
    """One planet for a worker: where it goes and the stream it draws from."""

    out: str
    split: str
    index: int
    planet_id: int
    n_visits: int
    seed: int
    reads_scale: float
    level: str
    binning: Binning


@dataclass(frozen=True)
class PlanetTruth:
    """What a worker returns: the planet's truth and its transit times.

    Shapes: labels (283,) (Rp/Rs)^2; transit_mid_h (n_visits,) hours from each visit's start.
    """

    planet_id: int
    split: str
    system: astro.System
    labels: np.ndarray
    transit_mid_h: tuple[float, ...]


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def planet_ids(seed: int, n: int) -> list[int]:
    """``n`` distinct planet ids drawn from the seed, in draw order."""
    rng = _rng(seed, _IDS_KEY)
    ids: list[int] = []
    seen: set[int] = set()
    while len(ids) < n:
        for pid in rng.integers(*_PLANET_ID_RANGE, size=n - len(ids)).tolist():
            if pid not in seen:
                seen.add(pid)
                ids.append(pid)
    return ids


@dataclass(frozen=True)
class _Visit:
    """Everything one visit draws apart from the noise (photons, reads, cosmic rays)."""

    t_mid_h: float
    patterns: dict[str, instrument.ReadPattern]
    scenes: dict[str, instrument.Scene]
    detectors: dict[str, instrument.Detector]


def _draw_visit(rng: np.random.Generator, system: astro.System, labels: np.ndarray, reads_scale: float) -> _Visit:
    t_mid = astro.draw_mid_transit_h(rng, system, adc.VISIT_HOURS)
    info = instrument.adc_info(reads_scale)
    patterns = {inst: instrument.read_pattern(inst, reads_scale) for inst in adc.INSTRUMENTS}
    pointing = instrument.draw_pointing(rng, patterns[adc.FGS1], patterns[adc.AIRS])
    scenes, detectors = {}, {}
    for inst in adc.INSTRUMENTS:
        pattern = patterns[inst]
        time_h = pattern.pair_time_h()
        drift = instrument.draw_gain_drift(rng, time_h)
        if inst == adc.AIRS:
            # Columns beyond the labelled range follow the nearest edge bin.
            columns = astro.airs_column_bins()
            transit = astro.transit_light_curves(system, labels, t_mid, time_h, pattern.long_s, np.unique(columns))
            source = astro.airs_column_rates(system)
            modulation = transit[columns - 1].T * drift[:, None]
            offsets = pointing.airs
        else:
            transit = astro.transit_light_curves(system, labels, t_mid, time_h, pattern.long_s, np.array([0]))
            source = np.asarray(astro.fgs1_rate(system))
            modulation = transit[0] * drift
            offsets = pointing.fgs1
        scenes[inst] = instrument.Scene(instrument.draw_optics(rng, inst), source, modulation, offsets)
        detectors[inst] = instrument.draw_detector(rng, pattern, info)
    return _Visit(t_mid_h=t_mid, patterns=patterns, scenes=scenes, detectors=detectors)


def _write_raw_visit(rng: np.random.Generator, job: PlanetJob, visit: int, v: _Visit) -> None:
    info = instrument.adc_info(job.reads_scale)
    root = Path(job.out)
    for inst in adc.INSTRUMENTS:
        pattern = v.patterns[inst]
        cosmic = instrument.draw_cosmic_rays(rng, pattern)
        reads = instrument.render_reads(rng, v.scenes[inst], v.detectors[inst], pattern, info, cosmic)
        adc.write_signal(adc.signal_path(root, job.split, job.planet_id, visit, inst), reads)
        adc.write_calibration(
            adc.calibration_dir(root, job.split, job.planet_id, visit, inst), v.detectors[inst].calibration()
        )


def _binned(
    rng: np.random.Generator, ex: instrument.Extracted, factor: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bin per-pair extractions and add the noise of the binned values (as the calibrator's
    error model: sqrt(mean var / factor)). Shapes: -> flux, err (T, k), position (T, 2)."""
    err = np.sqrt(bin_mean(ex.var, factor) / factor)
    flux = bin_mean(ex.flux, factor) + err * rng.standard_normal(err.shape)
    pos_err = np.sqrt(bin_mean(ex.position_var, factor) / factor)
    position = bin_mean(ex.position, factor) + pos_err * rng.standard_normal(pos_err.shape)
    return flux, err, position


def _write_lightcurve_visit(rng: np.random.Generator, job: PlanetJob, visit: int, v: _Visit) -> None:
    info = instrument.adc_info(job.reads_scale)
    binning = job.binning
    fgs1, airs = v.patterns[adc.FGS1], v.patterns[adc.AIRS]
    f_factor = binning.factor(fgs1.pair_s, fgs1.n_pairs, binning.fgs1_seconds)
    a_factor = binning.factor(airs.pair_s, airs.n_pairs, binning.airs_seconds)
    f_ex = instrument.extract_fgs1(v.scenes[adc.FGS1], v.detectors[adc.FGS1], fgs1, info)
    a_ex = instrument.extract_airs(v.scenes[adc.AIRS], v.detectors[adc.AIRS], airs, info)
    f_flux, f_err, f_pos = _binned(rng, f_ex, f_factor)
    a_flux, a_err, a_pos = _binned(rng, a_ex, a_factor)
    f_time = bin_mean(fgs1.pair_time_h(), f_factor)
    lc = LightCurves(
        planet_id=job.planet_id,
        visit=visit,
        fgs1=fgs1_feature_matrix(f_flux[:, 0], f_time, f_pos[:, 0], f_pos[:, 1]),
        fgs1_err=f_err[:, 0],
        fgs1_time_h=f_time,
        airs_flux=a_flux.T,
        airs_err=a_err.T,
        airs_time_h=bin_mean(airs.pair_time_h(), a_factor),
        airs_trace=a_pos,
        meta={
            "split": job.split,
            "source": "simulate",
            "reads": {adc.AIRS: airs.n_reads, adc.FGS1: fgs1.n_reads},
            "pairs_per_bin": {adc.AIRS: a_factor, adc.FGS1: f_factor},
            "reads_scale": job.reads_scale,
            "seed": job.seed,
        },
    )
    lc.save(visit_path(Path(job.out), job.split, job.planet_id, visit))


def simulate_planet(job: PlanetJob) -> PlanetTruth:
    """Draw one planet and write all its visits; the worker of :func:`simulate_dataset`."""
    split_key = _SPLIT_KEY[job.split]
    rng = _rng(job.seed, split_key, job.index, 0)
    system = astro.draw_system(rng)
    labels = astro.spectrum_labels(system, astro.draw_atmosphere(rng, system))
    mids = []
    for visit in range(job.n_visits):
        # The scene stream is shared by both levels (same truth, pointing and detector for a
        # seed); the noise stream is the level's own.
        v = _draw_visit(_rng(job.seed, split_key, job.index, 1 + visit, 0), system, labels, job.reads_scale)
        noise = _rng(job.seed, split_key, job.index, 1 + visit, 1)
        if job.level == "raw":
            _write_raw_visit(noise, job, visit, v)
        else:
            _write_lightcurve_visit(noise, job, visit, v)
        mids.append(v.t_mid_h)
    return PlanetTruth(job.planet_id, job.split, system, labels, tuple(mids))


def _jobs(out: Path, options: SimulateOptions, binning: Binning) -> list[PlanetJob]:
    n = options.n_planets + options.n_test
    ids = planet_ids(options.seed, n)
    two = _rng(options.seed, _VISITS_KEY).uniform(size=n) < options.two_visit_fraction
    splits = ["train"] * options.n_planets + ["test"] * options.n_test
    index = list(range(options.n_planets)) + list(range(options.n_test))
    return [
        PlanetJob(
            str(out), split, i, pid, 2 if second else 1, options.seed, options.reads_scale, options.level, binning
        )
        for split, i, pid, second in zip(splits, index, ids, two.tolist(), strict=True)
    ]


def _labels_table(truths: list[PlanetTruth]) -> pd.DataFrame:
    rows = np.stack([t.labels for t in truths]) if truths else np.empty((0, len(adc.WL_COLUMNS)))
    table = pd.DataFrame(rows, columns=list(adc.WL_COLUMNS))
    table.insert(0, "planet_id", [t.planet_id for t in truths])
    return table


def _star_table(truths: list[PlanetTruth]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"planet_id": t.planet_id, **t.system.star_info()} for t in truths], columns=list(adc.STAR_COLUMNS)
    )


def simulate_dataset(
    out: Path,
    options: SimulateOptions,
    binning: Binning = Binning(),
    workers: int | None = None,
    progress: bool = True,
) -> RunSummary:
    """Simulate ``options.n_planets`` training and ``options.n_test`` test planets into ``out``.

    ``out`` must be absent or empty (stale planets would join the data set). Planets whose
    simulation fails are listed in the summary and left out of the tables. The summary's
    results are the :class:`PlanetTruth` of the planets written, train first, in draw order.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"simulate output {out} must be absent or an empty directory")
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([wavelengths()], columns=list(adc.WL_COLUMNS)).to_csv(out / "wavelengths.csv", index=False)
    if options.level == "raw":
        adc.write_adc_info(out, instrument.adc_info(options.reads_scale))
        adc.write_axis_info(out, instrument.axis_info(options.reads_scale))
    jobs = _jobs(out, options, binning)
    summary = run_planets(simulate_planet, jobs, task=f"simulate ({options.level})", workers=workers, progress=progress)
    truths: list[PlanetTruth] = summary.results
    by_split = {split: [t for t in truths if t.split == split] for split in adc.SPLITS}

    _star_table(by_split["train"]).to_csv(out / "train_star_info.csv", index=False)
    _labels_table(by_split["train"]).to_csv(out / "train.csv", index=False)
    if options.n_test:
        _star_table(by_split["test"]).to_csv(out / "test_star_info.csv", index=False)
        _labels_table(by_split["test"]).to_csv(out / "test_truth.csv", index=False)
    if options.level == "lightcurves":
        source = f"simulate {asdict(options)}"
        write_index(out, binning, source, {split: [t.planet_id for t in by_split[split]] for split in adc.SPLITS})
    return summary
