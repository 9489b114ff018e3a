"""A request's light curves -> :class:`LightCurves` -> model inputs, with physics-aware validation.

The step from light curves to model inputs is :func:`spectramind.data.features.planet_inputs`
with the artifact's feature options: the one definition train, export and serve share. This
module only checks what a client sent and fills what it may leave out, so the light curves it
builds are exactly what ``spectramind calibrate`` would have written:

=====================  =========================================================================
field (path)           rule / default
=====================  =========================================================================
``fgs1.flux``          (T_f,), FGS1_MIN_STEPS <= T_f <= FGS1_MAX_STEPS, finite, >= 0, <= 1e9,
                       not all zero
``fgs1.time``          (T_f,) hours, finite, strictly increasing; absent: uniform over 7.5 h
``fgs1.centroid``      (T_f, 2) px, finite; absent: zeros
``fgs1.jitter``        (T_f, 2) px, finite; absent: centroid minus its running mean (zeros
                       without a centroid), as ``spectramind calibrate`` derives it
``fgs1.err``           (T_f,), finite, > 0; absent: the point-to-point scatter of the flux
``airs.flux``          (282, T_a), AIRS_MIN_STEPS <= T_a <= AIRS_MAX_STEPS, finite, >= 0,
                       <= 1e9, no row all zero
``airs.time``          (T_a,) hours, finite, strictly increasing; absent: uniform over 7.5 h
``airs.err``           (282, T_a), finite, > 0; absent: each row's point-to-point scatter
``airs.trace``         (T_a, 2) px, finite; absent: zeros
``star.<key>``         keys of ``{train,test}_star_info.csv`` (Rs, Ms, Ts, Mp, e, P, sma, i),
                       finite numbers; absent: the baseline finds the transit window from the data
=====================  =========================================================================

"Absurd" flux: a value above ``FLUX_ABSURD`` (1e9 counts/s; real and simulated bins are
1e2-1e7) or a series that is all zero (a dead or unfilled channel). A violation raises
:class:`InvalidField` whose ``field`` is the path (``prefix`` + the names above, with an index
where one element is at fault: ``fgs1.flux[17]``) and whose message reads like
``airs.flux: must have 282 rows, got 281``.

Shapes: see the table; returns :class:`spectramind.data.features.ModelInputs` with fgs1
(fgs1_steps, 6) and airs_nodes (283, 8) float32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from spectramind.bins import N_AIRS
from spectramind.data.adc import STAR_COLUMNS
from spectramind.data.errors import PlanetDataError
from spectramind.data.features import FeatureOptions, ModelInputs, planet_inputs
from spectramind.data.lightcurves import JITTER_WINDOW, LightCurves, running_mean

if TYPE_CHECKING:
    from serve.service import PlanetRequest

__all__ = [
    "AIRS_MAX_STEPS",
    "AIRS_MIN_STEPS",
    "FGS1_MAX_STEPS",
    "FGS1_MIN_STEPS",
    "FLUX_ABSURD",
    "STAR_KEYS",
    "VISIT_HOURS",
    "InvalidField",
    "p2p_scatter",
    "request_inputs",
    "to_lightcurves",
]

VISIT_HOURS = 7.5
# A transit fit needs in- and out-of-transit stretches: fewer samples than this cannot hold both.
FGS1_MIN_STEPS = 32
AIRS_MIN_STEPS = 16
# Unbinned real visits: FGS1 135,000 reads and AIRS 11,250 reads, read in CDS pairs; allow
# headroom, but no more (a 64 MiB body could otherwise ask for minutes of baseline fitting).
FGS1_MAX_STEPS = 150_000
AIRS_MAX_STEPS = 12_000
FLUX_ABSURD = 1e9
STAR_KEYS: tuple[str, ...] = tuple(c for c in STAR_COLUMNS if c != "planet_id")
_MAD_TO_SIGMA = 1.4826


class InvalidField(ValueError):
    """A request value that breaks a rule; ``field`` is its path, ``message`` what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = f"{field}: {message}"
        super().__init__(self.message)


def p2p_scatter(y: np.ndarray) -> np.ndarray:
    """1-sigma white noise per series from point-to-point differences (robust to the transit).

    Shapes: y (..., T) -> (...,), positive.
    """
    y = np.asarray(y, dtype=np.float64)
    d = np.diff(y, axis=-1)
    s = _MAD_TO_SIGMA * np.median(np.abs(d - np.median(d, axis=-1, keepdims=True)), axis=-1) / math.sqrt(2)
    s = np.where(s > 0, s, np.std(d, axis=-1) / math.sqrt(2))
    # A constant series has no scatter; a tiny positive floor keeps inverse-variance weights finite.
    floor = 1e-9 * np.maximum(np.abs(y).max(axis=-1), 1.0)
    return np.maximum(s, floor)


def to_lightcurves(req: "PlanetRequest", prefix: str = "") -> LightCurves:
    """Validate one request and build its visit's :class:`LightCurves` (module docstring)."""
    p = f"{prefix}." if prefix else ""
    try:
        pid = int(req.planet_id)
    except (TypeError, ValueError):
        raise InvalidField(f"{p}planet_id", f"must be an integer, got {req.planet_id!r}") from None

    flux_f = _array(req.fgs1_flux, f"{p}fgs1.flux", 1)
    tf = _length(flux_f.shape[0], f"{p}fgs1.flux", FGS1_MIN_STEPS, FGS1_MAX_STEPS, "samples")
    _flux(flux_f[None, :], f"{p}fgs1.flux", row_index=False)

    flux_a = _array(req.airs_flux, f"{p}airs.flux", 2)
    if flux_a.shape[0] != N_AIRS:
        raise InvalidField(f"{p}airs.flux", f"must have {N_AIRS} rows, got {flux_a.shape[0]}")
    ta = _length(flux_a.shape[1], f"{p}airs.flux", AIRS_MIN_STEPS, AIRS_MAX_STEPS, "samples per row")
    _flux(flux_a, f"{p}airs.flux", row_index=True)

    time_f = _time(req.fgs1_time_h, f"{p}fgs1.time", tf)
    time_a = _time(req.airs_time_h, f"{p}airs.time", ta)

    centroid = _optional(req.fgs1_centroid, f"{p}fgs1.centroid", (tf, 2))
    jitter = _optional(req.fgs1_jitter, f"{p}fgs1.jitter", (tf, 2))
    if centroid is None:
        centroid = np.zeros((tf, 2))
    if jitter is None:
        # The calibrate stage's definition: the fast part of the centroid motion.
        jitter = np.stack([centroid[:, c] - running_mean(centroid[:, c], JITTER_WINDOW) for c in range(2)], axis=1)
    err_f = _errors(getattr(req, "fgs1_err", None), f"{p}fgs1.err", (tf,))
    err_a = _errors(getattr(req, "airs_err", None), f"{p}airs.err", (N_AIRS, ta))
    trace = _optional(getattr(req, "airs_trace", None), f"{p}airs.trace", (ta, 2))

    span = time_f[-1] - time_f[0]
    time_norm = (time_f - time_f[0]) / span
    fgs1 = np.column_stack([flux_f, time_norm, centroid, jitter])
    # Cast like LightCurves.save: the server sees what a file written by calibrate would hold.
    return LightCurves(
        planet_id=pid,
        visit=0,
        fgs1=fgs1.astype(np.float32),
        fgs1_err=(err_f if err_f is not None else np.full(tf, p2p_scatter(flux_f))).astype(np.float32),
        fgs1_time_h=time_f,
        airs_flux=flux_a.astype(np.float32),
        airs_err=(err_a if err_a is not None else np.repeat(p2p_scatter(flux_a)[:, None], ta, axis=1)).astype(
            np.float32
        ),
        airs_time_h=time_a,
        airs_trace=(trace if trace is not None else np.zeros((ta, 2))).astype(np.float32),
        meta={"source": "request", "split": "request"},
    )


def check_star(star: Mapping[str, Any] | None, prefix: str = "") -> dict[str, float] | None:
    """The star info as floats; unknown keys and non-finite values name ``star.<key>``."""
    if star is None:
        return None
    p = f"{prefix}." if prefix else ""
    if not isinstance(star, Mapping):
        raise InvalidField(f"{p}star", f"must be an object with keys among {', '.join(STAR_KEYS)}")
    out: dict[str, float] = {}
    for key, value in star.items():
        if key not in STAR_KEYS:
            raise InvalidField(f"{p}star.{key}", f"unknown key (expected one of {', '.join(STAR_KEYS)})")
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise InvalidField(f"{p}star.{key}", f"must be a number, got {value!r}") from None
        if not math.isfinite(v):
            raise InvalidField(f"{p}star.{key}", "not finite")
        out[key] = v
    return out or None


def request_inputs(req: "PlanetRequest", options: FeatureOptions, prefix: str = "") -> ModelInputs:
    """Validated model inputs of one request: :func:`to_lightcurves` then ``planet_inputs``.

    A failure inside the feature definition (a non-positive median, a failed baseline fit) is
    this planet's data problem too: InvalidField naming the part (``fgs1``, ``airs`` or the
    planet) rather than a server fault.
    """
    lc = to_lightcurves(req, prefix)
    star = check_star(req.star, prefix)
    try:
        return planet_inputs([lc], star, options)
    except PlanetDataError as exc:
        raise InvalidField(_field_of(exc.message, prefix), exc.message) from exc


# ---------------------------------------------------------------- helpers


def _field_of(message: str, prefix: str) -> str:
    p = f"{prefix}." if prefix else ""
    head = message.split(":", 1)[0].split(" ", 1)[0]
    if head.startswith("fgs1"):
        return f"{p}fgs1.flux"
    if head.startswith("airs"):
        return f"{p}airs.flux"
    return prefix or "planet"


def _array(value: Any, field: str, ndim: int) -> np.ndarray:
    if value is None:
        raise InvalidField(field, "is required")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidField(field, "must be an array of numbers") from None
    if arr.ndim != ndim:
        want = "a list of numbers" if ndim == 1 else f"{ndim}-D (rows of numbers)"
        raise InvalidField(field, f"must be {want}, got {arr.ndim}-D shape {arr.shape}")
    return arr


def _length(n: int, field: str, lo: int, hi: int, what: str) -> int:
    if n < lo:
        raise InvalidField(field, f"too short: {n} {what}, need at least {lo}")
    if n > hi:
        raise InvalidField(field, f"too long: {n} {what}, at most {hi}")
    return n


def _first_bad(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(mask)[0])


def _index(field: str, idx: tuple[int, ...]) -> str:
    return field + "".join(f"[{i}]" for i in idx)


def _finite(arr: np.ndarray, field: str) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        raise InvalidField(_index(field, _first_bad(bad)), "not finite")


def _flux(flux: np.ndarray, field: str, row_index: bool) -> None:
    """Rows of flux: finite, non-negative, not absurd. Shapes: (R, T)."""

    def name(idx: tuple[int, ...]) -> str:
        return _index(field, idx if row_index else idx[1:])

    bad = ~np.isfinite(flux)
    if bad.any():
        raise InvalidField(name(_first_bad(bad)), "not finite")
    neg = flux < 0
    if neg.any():
        idx = _first_bad(neg)
        raise InvalidField(name(idx), f"negative flux {flux[idx]:.6g}; flux is in detector counts per second, >= 0")
    big = flux > FLUX_ABSURD
    if big.any():
        idx = _first_bad(big)
        raise InvalidField(name(idx), f"absurd flux {flux[idx]:.6g} (more than {FLUX_ABSURD:.0e} counts per second)")
    zero = ~flux.any(axis=1)
    if zero.any():
        row = int(np.argmax(zero))
        raise InvalidField(_index(field, (row,)) if row_index else field, "all zero (a dead or unfilled series)")


def _time(value: Any, field: str, n: int) -> np.ndarray:
    if value is None:
        return np.linspace(0.0, VISIT_HOURS, n)
    t = _array(value, field, 1)
    if t.shape[0] != n:
        raise InvalidField(field, f"must have {n} values (one per flux sample), got {t.shape[0]}")
    _finite(t, field)
    step = np.diff(t)
    if (step <= 0).any():
        raise InvalidField(field, f"not increasing at index {int(np.argmax(step <= 0)) + 1}")
    return t


def _optional(value: Any, field: str, shape: tuple[int, ...]) -> np.ndarray | None:
    if value is None:
        return None
    arr = _array(value, field, len(shape))
    if arr.shape != shape:
        raise InvalidField(field, f"must have shape {shape}, got {arr.shape}")
    _finite(arr, field)
    return arr


def _errors(value: Any, field: str, shape: tuple[int, ...]) -> np.ndarray | None:
    arr = _optional(value, field, shape)
    if arr is not None and not (arr > 0).all():
        raise InvalidField(_index(field, _first_bad(~(arr > 0))), "must be positive (a 1-sigma noise)")
    return arr
