"""The data path end to end through the ``spectramind`` command: simulate -> calibrate -> baseline -> score."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from spectramind.cli import main
from spectramind.data import astro
from spectramind.data.lightcurves import Binning, LightCurves, visit_path
from spectramind.data.simulate import SimulateOptions, simulate_dataset

# Few reads keep it fast; the noise per unit time stays that of the real instrument. Seed 13
# gives a training planet observed twice and a test planet, so both splits and visits run.
SIM = SimulateOptions(n_planets=3, seed=13, reads_scale=0.005, level="raw", n_test=1, two_visit_fraction=0.3)
BINNING = Binning()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("pipeline")
    raw, lcdir, sub, sub_test = base / "raw", base / "lc", base / "sub.csv", base / "sub_test.csv"
    truths = simulate_dataset(raw, SIM, binning=BINNING, workers=1, progress=False).results
    assert sorted({(t.split, len(t.transit_mid_h)) for t in truths}) == [("test", 1), ("train", 1), ("train", 2)]
    assert main(["calibrate", "--data", str(raw), "--out", str(lcdir), "--workers", "1"]) == 0
    assert main(["baseline", "--data", str(lcdir), "--out", str(sub), "--splits", "train", "--workers", "1"]) == 0
    assert main(["baseline", "--data", str(lcdir), "--out", str(sub_test), "--splits", "test", "--workers", "1"]) == 0
    return {"base": base, "raw": raw, "lcdir": lcdir, "sub": sub, "sub_test": sub_test, "truths": truths}


def _white_depth(t, flux, err, t_mid, half):
    """In-transit over out-of-transit flux with a linear baseline, and its 1-sigma error."""
    inside, outside = np.abs(t - t_mid) < 0.5 * half, np.abs(t - t_mid) > half + 0.1
    base = np.polyval(np.polyfit(t[outside], flux[outside], 1), t)
    depth = 1 - np.mean(flux[inside] / base[inside])
    sigma = math.hypot(np.sqrt(np.sum(err[inside] ** 2)) / inside.sum(), np.sqrt(np.sum(err[outside] ** 2)) / outside.sum())
    return depth, sigma / np.median(flux[outside]), inside


def test_calibrate_recovers_the_injected_white_light_depth(pipeline):
    visits = [(truth, k) for truth in pipeline["truths"] for k in range(len(truth.transit_mid_h))]
    for truth, k in visits:
        lc = LightCurves.load(visit_path(pipeline["lcdir"], truth.split, truth.planet_id, k))
        t_mid, half = truth.transit_mid_h[k], truth.system.duration_h / 2
        # FGS1, and the AIRS white light (sum of the 282 bins).
        for t, flux, err, bins, exp_s in (
            (lc.fgs1_time_h, lc.fgs1_flux.astype(float), lc.fgs1_err.astype(float), np.array([0]), BINNING.fgs1_seconds),
            (
                lc.airs_time_h,
                lc.airs_flux.sum(0).astype(float),
                np.sqrt((lc.airs_err.astype(float) ** 2).sum(0)),
                np.arange(1, 283),
                BINNING.airs_seconds,
            ),
        ):
            depth, sigma, inside = _white_depth(t, flux, err, t_mid, half)
            model = astro.transit_light_curves(truth.system, truth.labels, t_mid, t, exp_s, bins)
            weights = lc.airs_flux.mean(1) if len(bins) > 1 else np.ones(1)
            expected = 1 - np.mean((weights @ model / weights.sum())[inside])
            # Noise, plus what gain-drift curvature and jitter coupling may leave on a crude ratio.
            assert abs(depth - expected) < 4 * sigma + 300e-6, (truth.planet_id, len(bins), depth, expected, sigma)


def test_baseline_beats_the_naive_prediction(pipeline, capsys):
    capsys.readouterr()
    assert main(["score", "--truth", str(pipeline["raw"] / "train.csv"), "--submission", str(pipeline["sub"])]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, "score prints one JSON line"
    report = json.loads(out[0])
    assert report["n_planets"] == SIM.n_planets
    assert report["score"] > 0.2, report
    assert 0.5 < report["coverage_90"] <= 1.0


def test_the_test_split_is_predicted_and_scored(pipeline, capsys):
    capsys.readouterr()
    truth = pipeline["raw"] / "test_truth.csv"
    assert main(["score", "--truth", str(truth), "--submission", str(pipeline["sub_test"])]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_planets"] == SIM.n_test
    # One planet: the naive std is that planet's own spread, so only a sane value is asserted.
    assert 0.0 <= report["score"] <= 1.0 and report["rmse_ppm"] < 1000


def test_score_reports_a_negative_submission_value(pipeline, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    text = pipeline["sub"].read_text().splitlines()
    cells = text[1].split(",")
    cells[5] = "-0.001"
    bad.write_text("\n".join([text[0], ",".join(cells), *text[2:]]) + "\n")
    assert main(["score", "--truth", str(pipeline["raw"] / "train.csv"), "--submission", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "wl_5" in err and cells[0] in err


def test_a_bad_planet_is_skipped_and_named_unless_strict(pipeline, tmp_path, capsys):
    raw = tmp_path / "raw"
    shutil.copytree(pipeline["raw"], raw)
    victim = next(t.planet_id for t in pipeline["truths"] if len(t.transit_mid_h) == 2)
    (raw / "train" / str(victim) / "AIRS-CH0_calibration_0" / "dark.parquet").unlink()
    capsys.readouterr()
    assert main(["calibrate", "--data", str(raw), "--out", str(tmp_path / "lc"), "--workers", "1"]) == 0
    err = capsys.readouterr().err
    assert f"planet {victim}" in err and "dark.parquet" in err and "1 skipped" in err
    summary = json.loads((tmp_path / "lc" / "calibrate_summary.json").read_text())
    n_visits = sum(len(t.transit_mid_h) for t in pipeline["truths"])
    assert len(summary["skipped"]) == 1 and summary["ok"] == n_visits - 1
    # Only the bad visit is lost: this planet's second visit is still calibrated and listed.
    assert not visit_path(tmp_path / "lc", "train", victim, 0).exists()
    assert visit_path(tmp_path / "lc", "train", victim, 1).exists()
    assert victim in json.loads((tmp_path / "lc" / "lightcurves.json").read_text())["planets"]["train"]

    status = main(["calibrate", "--data", str(raw), "--out", str(tmp_path / "lc2"), "--workers", "1", "--strict"])
    assert status == 2
    assert "dark.parquet" in capsys.readouterr().err


def test_simulate_through_the_cli_is_deterministic(tmp_path):
    args = ["--n-planets", "1", "--seed", "4", "--reads-scale", "0.002", "--level", "lightcurves", "--workers", "1"]
    assert main(["simulate", "--out", str(tmp_path / "a"), *args]) == 0
    assert main(["simulate", "--out", str(tmp_path / "b"), *args]) == 0
    a = (tmp_path / "a" / "train.csv").read_bytes()
    assert a == (tmp_path / "b" / "train.csv").read_bytes()


def test_overrides_reach_the_stage(tmp_path):
    out = tmp_path / "lc"
    # 0.02 of the real reads: an AIRS pair every 240 s, so 3,600 s bins hold 15 pairs.
    args = ["--n-planets", "1", "--seed", "4", "--reads-scale", "0.02", "--level", "lightcurves", "--workers", "1"]
    assert main(["simulate", "--out", str(out), *args, "data.binning.airs_seconds=3600"]) == 0
    lc_file = next((out / "train").rglob("visit_0.npz"))
    lc = LightCurves.load(lc_file)
    assert np.median(np.diff(lc.airs_time_h)) == pytest.approx(1.0, rel=0.05)
    assert main(["config", "data.binning.nonexistent_key=1"]) == 2


def test_options_are_typed_and_unknown_keys_named(tmp_path, capsys):
    base = ["calibrate", "--data", str(tmp_path), "--out", str(tmp_path / "lc")]
    assert main([*base, "data.calibrate.airs_halfwidth=6.5"]) == 2
    assert "calibrate.airs_halfwidth must be an integer, got 6.5" in capsys.readouterr().err
    assert main([*base, "+data.calibrate.airs_halfwidht=6"]) == 2
    assert "calibrate: unknown option 'airs_halfwidht'" in capsys.readouterr().err
