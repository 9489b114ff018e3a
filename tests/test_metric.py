"""The ADC2025 score against hand-computed numbers, and the submission checks."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from spectramind.bins import N_BINS
from spectramind.data.adc import SIGMA_COLUMNS, WL_COLUMNS
from spectramind.metric import (
    FGS1_WEIGHT,
    read_submission,
    score_arrays,
    score_files,
    score_frames,
    write_submission,
)


def logpdf(y: float, m: float, s: float) -> float:
    return -0.5 * math.log(2 * math.pi) - math.log(s) - (y - m) ** 2 / (2 * s * s)


def truth_table(ids=(7, 11), values=(0.01, 0.02)) -> pd.DataFrame:
    df = pd.DataFrame(np.repeat(np.asarray(values, float)[:, None], N_BINS, axis=1), columns=list(WL_COLUMNS))
    df.insert(0, "planet_id", list(ids))
    return df


def submission(ids, mu: np.ndarray, sigma: np.ndarray) -> pd.DataFrame:
    df = pd.DataFrame(np.concatenate([mu, sigma], axis=1), columns=list(WL_COLUMNS + SIGMA_COLUMNS))
    df.insert(0, "planet_id", list(ids))
    return df


def y2() -> np.ndarray:
    return truth_table()[list(WL_COLUMNS)].to_numpy()


def test_perfect_prediction_with_ideal_sigma_scores_one():
    y = y2()
    sigma = np.full_like(y, 1e-5)
    sigma[:, 0] = 1e-6
    rep = score_arrays(y, y, sigma)
    assert rep.score == pytest.approx(1.0, abs=1e-12)
    assert rep.fgs1 == pytest.approx(1.0, abs=1e-12)
    assert rep.airs == pytest.approx(1.0, abs=1e-12)
    assert rep.rmse_ppm == 0.0
    assert rep.coverage_68 == 1.0


def test_naive_prediction_scores_zero():
    y = y2()
    mean, std = y.mean(), y.std()
    assert (mean, std) == pytest.approx((0.015, 0.005))
    rep = score_arrays(y, np.full_like(y, mean), np.full_like(y, std))
    assert rep.score == 0.0
    assert rep.fgs1 == pytest.approx(0.0, abs=1e-12)
    assert rep.airs == pytest.approx(0.0, abs=1e-12)
    assert (rep.naive_mean, rep.naive_sigma) == pytest.approx((0.015, 0.005))


def test_worse_than_naive_clips_to_zero():
    y = y2()
    rep = score_arrays(y, y + 0.003, np.full_like(y, 1e-5))
    assert rep.score == 0.0
    assert rep.airs < -100  # far below zero before the clip
    assert rep.rmse_ppm == pytest.approx(3000.0)


def test_small_case_matches_hand_computation():
    y = y2()
    mu = y.copy()
    sigma = np.empty_like(y)
    # planet 7: AIRS 10 ppm off with sigma 20 ppm; FGS1 2 ppm off with sigma 5 ppm
    mu[0, 1:] += 1e-5
    sigma[0, 1:] = 2e-5
    mu[0, 0] += 2e-6
    sigma[0, 0] = 5e-6
    # planet 11: AIRS 30 ppm low with sigma 25 ppm; FGS1 exact with sigma 3 ppm
    mu[1, 1:] -= 3e-5
    sigma[1, 1:] = 2.5e-5
    sigma[1, 0] = 3e-6

    nm, ns = 0.015, 0.005

    def elem(yv, m, s, s_ideal):
        naive = logpdf(yv, nm, ns)
        return (logpdf(yv, m, s) - naive) / (logpdf(yv, yv, s_ideal) - naive)

    f7 = elem(0.01, 0.01 + 2e-6, 5e-6, 1e-6)
    a7 = elem(0.01, 0.01 + 1e-5, 2e-5, 1e-5)
    f11 = elem(0.02, 0.02, 3e-6, 1e-6)
    a11 = elem(0.02, 0.02 - 3e-5, 2.5e-5, 1e-5)
    expected = (FGS1_WEIGHT * (f7 + f11) + 282 * (a7 + a11)) / (2 * (FGS1_WEIGHT + 282))
    assert 0.0 < expected < 1.0

    rep = score_frames(truth_table(), submission([7, 11], mu, sigma))
    assert rep.score == pytest.approx(expected, abs=1e-9)
    assert rep.fgs1 == pytest.approx((f7 + f11) / 2, abs=1e-9)
    assert rep.airs == pytest.approx((a7 + a11) / 2, abs=1e-9)
    assert rep.n_planets == 2
    rmse = math.sqrt((282 * (1e-5**2 + 3e-5**2) + (2e-6) ** 2) / (2 * N_BINS)) * 1e6
    assert rep.rmse_ppm == pytest.approx(rmse, rel=1e-9)
    # planet 7 rows are all inside 1 sigma; planet 11 AIRS 1.2 sigma off (outside 68%, inside 90%)
    assert rep.coverage_68 == pytest.approx((N_BINS + 1) / (2 * N_BINS))
    assert rep.coverage_90 == 1.0
    assert json.loads(rep.to_json())["score"] == pytest.approx(expected)


def test_fgs1_weight_moves_the_score_by_the_expected_amount():
    y = y2()
    mu = y + 1e-5
    sigma = np.full_like(y, 2e-5)
    base = score_arrays(y, mu, sigma, naive_mean=0.015, naive_sigma=0.005)
    mu2 = mu.copy()
    mu2[0, 0] = y[0, 0] + 4e-5  # worse FGS1 on planet 7 only
    worse = score_arrays(y, mu2, sigma, naive_mean=0.015, naive_sigma=0.005)

    naive = logpdf(0.01, 0.015, 0.005)
    denom = logpdf(0.01, 0.01, 1e-6) - naive
    e_old = (logpdf(0.01, 0.01 + 1e-5, 2e-5) - naive) / denom
    e_new = (logpdf(0.01, 0.01 + 4e-5, 2e-5) - naive) / denom
    expected_delta = FGS1_WEIGHT * (e_new - e_old) / (2 * (FGS1_WEIGHT + 282))
    assert 0.0 < worse.score < base.score < 1.0
    assert worse.score - base.score == pytest.approx(expected_delta, abs=1e-12)
    # the same change in one AIRS element weighs 57.846 times less
    mu3 = mu.copy()
    mu3[0, 5] = y[0, 5] + 4e-5
    e_old_a = (logpdf(0.01, 0.01 + 1e-5, 2e-5) - naive) / (logpdf(0.01, 0.01, 1e-5) - naive)
    e_new_a = (logpdf(0.01, 0.01 + 4e-5, 2e-5) - naive) / (logpdf(0.01, 0.01, 1e-5) - naive)
    airs = score_arrays(y, mu3, sigma, naive_mean=0.015, naive_sigma=0.005)
    assert airs.score - base.score == pytest.approx((e_new_a - e_old_a) / (2 * (FGS1_WEIGHT + 282)), abs=1e-12)


def test_coverage_on_constructed_case():
    y = np.repeat([[0.01], [0.012], [0.014], [0.016]], N_BINS, axis=1)
    sigma = np.full_like(y, 1e-4)
    k = np.zeros_like(y)
    k[0] = 0.5  # inside both intervals
    k[1] = -1.2  # outside 68%, inside 90%
    k[2] = 1.7  # outside both
    k[3, : N_BINS // 2] = 0.9
    k[3, N_BINS // 2 :] = -2.0
    rep = score_arrays(y, y + k * sigma, sigma)
    n68 = N_BINS + N_BINS // 2
    n90 = 2 * N_BINS + N_BINS // 2
    assert rep.coverage_68 == pytest.approx(n68 / y.size)
    assert rep.coverage_90 == pytest.approx(n90 / y.size)


def test_negative_mu_raises_naming_column_and_planet():
    y = y2()
    mu = y.copy()
    mu[1, 4] = -1e-4
    with pytest.raises(ValueError, match=r"wl_5.*planet 11"):
        score_frames(truth_table(), submission([7, 11], mu, np.full_like(y, 1e-5)))


def test_negative_sigma_raises_naming_column_and_planet():
    y = y2()
    sigma = np.full_like(y, 1e-5)
    sigma[0, 282] = -1e-5
    with pytest.raises(ValueError, match=r"sigma_283.*planet 7"):
        score_frames(truth_table(), submission([7, 11], y, sigma))


def test_nan_raises_naming_column_and_planet():
    y = y2()
    sigma = np.full_like(y, 1e-5)
    sigma[1, 0] = np.nan
    with pytest.raises(ValueError, match=r"non-finite.*sigma_1 of planet 11"):
        score_frames(truth_table(), submission([7, 11], y, sigma))
    with pytest.raises(ValueError, match="non-finite"):
        score_arrays(y, np.where(y > 0.015, np.inf, y), np.full_like(y, 1e-5))


def test_missing_column_raises_naming_it():
    y = y2()
    sub = submission([7, 11], y, np.full_like(y, 1e-5)).drop(columns=["sigma_17"])
    with pytest.raises(ValueError, match="sigma_17"):
        score_frames(truth_table(), sub)


def test_planet_mismatches_raise_naming_the_planet():
    y = y2()
    sigma = np.full_like(y, 1e-5)
    with pytest.raises(ValueError, match="planet 99 is not in the truth"):
        score_frames(truth_table(), submission([7, 99], y, sigma))
    with pytest.raises(ValueError, match="planet 11 of the truth table is missing"):
        score_frames(truth_table(), submission([7], y[:1], sigma[:1]))
    with pytest.raises(ValueError, match="duplicate planet_id 7"):
        score_frames(truth_table(), submission([7, 7], y, sigma))


def test_submission_round_trip_and_score_files(tmp_path):
    y = y2()
    sigma = np.full_like(y, 1.234567e-5)
    path = tmp_path / "sub.csv"
    # rows in another order than the truth: alignment is by planet_id
    write_submission(path, [11, 7], y[::-1], sigma)
    back = read_submission(path)
    assert list(back.columns) == ["planet_id", *WL_COLUMNS, *SIGMA_COLUMNS]
    assert np.allclose(back[list(SIGMA_COLUMNS)].to_numpy(), 1.234567e-5, rtol=1e-9, atol=0)
    truth = tmp_path / "truth.csv"
    truth_table().to_csv(truth, index=False)
    rep = score_files(truth, path)
    assert rep.rmse_ppm == pytest.approx(0.0, abs=1e-6)
    assert rep.airs > 0.9


def test_write_submission_refuses_bad_input(tmp_path):
    y = y2()
    with pytest.raises(ValueError, match=r"wl_3.*planet 7"):
        bad = y.copy()
        bad[0, 2] = -0.5
        write_submission(tmp_path / "s.csv", [7, 11], bad, np.full_like(y, 1e-5))
    with pytest.raises(ValueError, match="shape"):
        write_submission(tmp_path / "s.csv", [7, 11], y[:, :282], np.full_like(y, 1e-5))
    assert not (tmp_path / "s.csv").exists()
