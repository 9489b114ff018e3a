"""The ADC2025 score (NeurIPS 2025 Ariel Data Challenge), plus submission files.

Per element (planet i, bin j), with ``GLL(y; m, s) = log N(y | m, s)``::

    score_ij = (GLL(y; mu, sigma) - GLL(y; naive_mean, naive_sigma))
             / (GLL(y; y, sigma_ideal_j) - GLL(y; naive_mean, naive_sigma))

``sigma`` is clipped below at 1e-15 (as the official metric does), ``sigma_ideal`` is
1e-6 for FGS1 (bin 0, ``wl_1``) and 1e-5 for every AIRS bin. The score is the weighted
average of ``score_ij`` with weight 57.846 for FGS1 elements and 1 for AIRS elements,
clipped to [0, 1]. ``naive_mean`` / ``naive_sigma`` default to the mean / standard
deviation (ddof=0) of all label values of the truth table, as the official metric computes
them from the training labels.

A submission is ``planet_id, wl_1..wl_283, sigma_1..sigma_283``; a negative value anywhere
is an error, because the official metric refuses such a submission.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm

from spectramind.bins import N_BINS
from spectramind.data.adc import SIGMA_COLUMNS, WL_COLUMNS

FGS1_WEIGHT = 57.846
SIGMA_IDEAL_FGS1 = 1e-6
SIGMA_IDEAL_AIRS = 1e-5
SIGMA_MIN = 1e-15
# Half-widths (in sigma) of the two-sided Gaussian intervals holding 68.27% and 90% of the mass.
Z68 = float(norm.ppf(0.5 + 0.6826894921370859 / 2))
Z90 = float(norm.ppf(0.95))
SUBMISSION_COLUMNS = ("planet_id",) + WL_COLUMNS + SIGMA_COLUMNS


@dataclass
class ScoreReport:
    """The ADC2025 score and diagnostics of one submission.

    ``score`` is the official number (weighted, clipped to [0, 1]); ``fgs1`` and ``airs``
    are the unclipped average element scores of the FGS1 column and of the AIRS columns;
    ``rmse_ppm`` is over all elements; ``coverage_68`` / ``coverage_90`` are the fractions
    of elements whose truth lies inside mu +- z sigma for the 68.27% / 90% Gaussian intervals.
    """

    score: float
    fgs1: float
    airs: float
    rmse_ppm: float
    coverage_68: float
    coverage_90: float
    n_planets: int
    naive_mean: float
    naive_sigma: float

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)


# ---------------------------------------------------------------- checks


def _planet_names(n: int, planet_ids: Sequence | None) -> list[str]:
    if planet_ids is None:
        return [f"row {i}" for i in range(n)]
    return [f"planet {p}" for p in planet_ids]


def _check_values(name: str, values: np.ndarray, columns: Sequence[str], planets: list[str], nonneg: bool) -> None:
    """Raise ValueError naming the first bad (column, planet) of a (n_planets, n_cols) array."""
    bad = ~np.isfinite(values)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(
            f"{name}: {int(bad.sum())} non-finite values, first {values[i, j]} in column {columns[j]} of {planets[i]}"
        )
    if nonneg:
        neg = values < 0
        if neg.any():
            i, j = np.argwhere(neg)[0]
            raise ValueError(
                f"{name}: {int(neg.sum())} negative values (the ADC2025 metric refuses them), "
                f"first {values[i, j]} in column {columns[j]} of {planets[i]}"
            )


def _as_2d(name: str, values: np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != N_BINS:
        raise ValueError(f"{name} must have shape (n_planets, {N_BINS}), got {arr.shape}")
    return arr


# ---------------------------------------------------------------- the score


def score_arrays(
    y_true: np.ndarray,
    mu: np.ndarray,
    sigma: np.ndarray,
    naive_mean: float | None = None,
    naive_sigma: float | None = None,
    planet_ids: Sequence | None = None,
) -> ScoreReport:
    """Score predictions against truth.

    Shapes: y_true, mu, sigma (n_planets, 283), rows in the same planet order.
    ``planet_ids`` (n_planets,) only serves error messages. Raises ValueError naming the
    column and planet of a non-finite or negative value.
    """
    y = _as_2d("y_true", y_true)
    m = _as_2d("mu", mu)
    s = _as_2d("sigma", sigma)
    if not (y.shape == m.shape == s.shape):
        raise ValueError(f"y_true, mu and sigma must have the same shape, got {y.shape}, {m.shape}, {s.shape}")
    if y.shape[0] == 0:
        raise ValueError("nothing to score: 0 planets")
    if planet_ids is not None and len(planet_ids) != y.shape[0]:
        raise ValueError(f"planet_ids has {len(planet_ids)} entries for {y.shape[0]} rows")
    planets = _planet_names(y.shape[0], planet_ids)
    _check_values("truth", y, WL_COLUMNS, planets, nonneg=False)
    _check_values("submission", m, WL_COLUMNS, planets, nonneg=True)
    _check_values("submission", s, SIGMA_COLUMNS, planets, nonneg=True)

    nm = float(np.mean(y)) if naive_mean is None else float(naive_mean)
    ns = float(np.std(y)) if naive_sigma is None else float(naive_sigma)
    if not np.isfinite(nm):
        raise ValueError(f"naive_mean must be finite, got {nm}")
    if not (np.isfinite(ns) and ns > 0):
        raise ValueError(f"naive_sigma must be positive and finite, got {ns}")

    s_clip = np.clip(s, SIGMA_MIN, None)
    sigma_ideal = np.full(N_BINS, SIGMA_IDEAL_AIRS)
    sigma_ideal[0] = SIGMA_IDEAL_FGS1
    gll_pred = norm.logpdf(y, loc=m, scale=s_clip)
    gll_ideal = norm.logpdf(y, loc=y, scale=sigma_ideal[None, :])
    gll_naive = norm.logpdf(y, loc=nm, scale=ns)
    elem = (gll_pred - gll_naive) / (gll_ideal - gll_naive)

    weights = np.ones(N_BINS)
    weights[0] = FGS1_WEIGHT
    total = float(np.average(elem, weights=np.broadcast_to(weights, elem.shape)))
    dev = np.abs(y - m)
    return ScoreReport(
        score=float(np.clip(total, 0.0, 1.0)),
        fgs1=float(np.mean(elem[:, 0])),
        airs=float(np.mean(elem[:, 1:])),
        rmse_ppm=float(np.sqrt(np.mean((y - m) ** 2)) * 1e6),
        coverage_68=float(np.mean(dev <= Z68 * s_clip)),
        coverage_90=float(np.mean(dev <= Z90 * s_clip)),
        n_planets=int(y.shape[0]),
        naive_mean=nm,
        naive_sigma=ns,
    )


def _indexed(df: pd.DataFrame, name: str, columns: Sequence[str]) -> pd.DataFrame:
    """``df`` indexed by integer planet_id (from a column or the index), checked for the given columns."""
    if "planet_id" in df.columns:
        df = df.set_index("planet_id")
    elif df.index.name != "planet_id":
        raise ValueError(f"{name}: column planet_id is missing")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"{name}: column {missing[0]} is missing{more}")
    try:
        ids = df.index.to_numpy().astype(np.int64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: planet_id must be integers: {exc}") from exc
    df = df.copy()
    df.index = pd.Index(ids, name="planet_id")
    dup = df.index[df.index.duplicated()]
    if len(dup):
        more = f" (and {len(dup) - 1} more)" if len(dup) > 1 else ""
        raise ValueError(f"{name}: duplicate planet_id {int(dup[0])}{more}")
    for c in columns:
        if not pd.api.types.is_numeric_dtype(df[c]):
            raise ValueError(f"{name}: column {c} must be numeric, got {df[c].dtype}")
    return df


def score_frames(
    truth: pd.DataFrame,
    submission: pd.DataFrame,
    naive_mean: float | None = None,
    naive_sigma: float | None = None,
) -> ScoreReport:
    """Score a submission table against a truth table, aligned by planet_id.

    ``truth`` holds planet_id (column or index) and wl_1..wl_283; ``submission`` holds
    planet_id, wl_1..wl_283, sigma_1..sigma_283. Every truth planet must be in the
    submission and no other.
    """
    t = _indexed(truth, "truth", WL_COLUMNS)
    s = _indexed(submission, "submission", WL_COLUMNS + SIGMA_COLUMNS)
    unknown = s.index.difference(t.index)
    if len(unknown):
        raise ValueError(
            f"submission: planet {int(unknown[0])} is not in the truth table"
            + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
        )
    absent = t.index.difference(s.index)
    if len(absent):
        raise ValueError(
            f"submission: planet {int(absent[0])} of the truth table is missing"
            + (f" (and {len(absent) - 1} more)" if len(absent) > 1 else "")
        )
    ids = t.index.to_numpy()
    s = s.loc[ids]
    return score_arrays(
        t[list(WL_COLUMNS)].to_numpy(np.float64),
        s[list(WL_COLUMNS)].to_numpy(np.float64),
        s[list(SIGMA_COLUMNS)].to_numpy(np.float64),
        naive_mean=naive_mean,
        naive_sigma=naive_sigma,
        planet_ids=list(ids),
    )


def _read_csv(path: Path, name: str) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{name} file {path} is missing")
    return pd.read_csv(path)


def score_files(
    truth_csv: Path,
    submission_csv: Path,
    naive_mean: float | None = None,
    naive_sigma: float | None = None,
) -> ScoreReport:
    """Score a submission CSV against a labels CSV (planet_id, wl_1..wl_283)."""
    truth = _read_csv(truth_csv, "truth")
    submission = _read_csv(submission_csv, "submission")
    try:
        return score_frames(truth, submission, naive_mean=naive_mean, naive_sigma=naive_sigma)
    except ValueError as exc:
        raise ValueError(f"{exc} [truth {truth_csv}, submission {submission_csv}]") from exc


# ---------------------------------------------------------------- submission files


def submission_frame(planet_ids: Sequence[int], mu: np.ndarray, sigma: np.ndarray) -> pd.DataFrame:
    """A validated submission table. Shapes: planet_ids (n,), mu and sigma (n, 283)."""
    ids = np.asarray(planet_ids).reshape(-1) if len(planet_ids) else np.zeros(0, dtype=np.int64)
    m = np.asarray(mu, dtype=np.float64) if len(ids) else np.zeros((0, N_BINS))
    s = np.asarray(sigma, dtype=np.float64) if len(ids) else np.zeros((0, N_BINS))
    if m.shape != (len(ids), N_BINS) or s.shape != (len(ids), N_BINS):
        raise ValueError(
            f"mu and sigma must have shape (n_planets, {N_BINS}) = ({len(ids)}, {N_BINS}), "
            f"got {m.shape} and {s.shape}"
        )
    df = pd.DataFrame(np.concatenate([m, s], axis=1), columns=list(WL_COLUMNS + SIGMA_COLUMNS))
    df.insert(0, "planet_id", ids.astype(np.int64))
    return _validated_submission(df, "submission")


def _validated_submission(df: pd.DataFrame, name: str) -> pd.DataFrame:
    idx = _indexed(df, name, WL_COLUMNS + SIGMA_COLUMNS)
    planets = _planet_names(len(idx), list(idx.index))
    _check_values(name, idx[list(WL_COLUMNS)].to_numpy(np.float64), WL_COLUMNS, planets, nonneg=True)
    _check_values(name, idx[list(SIGMA_COLUMNS)].to_numpy(np.float64), SIGMA_COLUMNS, planets, nonneg=True)
    return idx.reset_index()[list(SUBMISSION_COLUMNS)]


def write_submission(path: Path, planet_ids: Sequence[int], mu: np.ndarray, sigma: np.ndarray) -> pd.DataFrame:
    """Write ``planet_id, wl_1..wl_283, sigma_1..sigma_283`` to ``path`` after validation.

    Shapes: planet_ids (n,), mu and sigma (n, 283). Returns the table written.
    """
    df = submission_frame(planet_ids, mu, sigma)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Full float precision: sigma of a few ppm must survive the round trip.
    df.to_csv(path, index=False, float_format="%.10g")
    return df


def read_submission(path: Path) -> pd.DataFrame:
    """Read and validate a submission CSV. Returns columns planet_id, wl_1..wl_283, sigma_1..sigma_283."""
    try:
        return _validated_submission(_read_csv(path, "submission"), "submission")
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
