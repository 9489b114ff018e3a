"""The light-curve format: what ``spectramind calibrate`` writes and every later stage reads.

A light-curve directory (LCDIR)::

    LCDIR/lightcurves.json                 format, version, binning, planets written
    LCDIR/{train,test}_star_info.csv       copied from the raw data root
    LCDIR/train.csv                        labels, copied when present
    LCDIR/wavelengths.csv                  copied
    LCDIR/{train,test}/<planet_id>/visit_<k>.npz

Each ``visit_<k>.npz`` holds (float32 unless noted; T_f FGS1 and T_a AIRS time bins):

    fgs1          (T_f, 6)   [flux, time_norm, centroid_x, centroid_y, jitter_x, jitter_y]
    fgs1_err      (T_f,)     1-sigma noise of fgs1 flux
    fgs1_time_h   (T_f,)     float64, hours since the start of the visit
    airs_flux     (282, T_a) one row per AIRS bin, ascending wavelength (bins 1..282)
    airs_err      (282, T_a) 1-sigma noise of airs_flux
    airs_time_h   (T_a,)     float64, hours
    airs_trace    (T_a, 2)   AIRS trace position [dx (spectral, px), dy (spatial, px)]
    meta          JSON string: planet_id, visit, split, reads, bin factors, source

Fluxes are detector units per second (flat-fielded, dark-subtracted CDS), not normalised:
a transit depth is a ratio, so the scale cancels. ``time_norm`` is 0 at the first and 1 at
the last bin. ``centroid_*`` are the FGS1 PSF centroid offsets from their median (px);
``jitter_*`` are the fast part of the centroid motion (centroid minus its running mean over
``JITTER_WINDOW`` bins), the pointing jitter that couples into flux through the
intrapixel response.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spectramind.bins import N_AIRS
from spectramind.data.errors import PlanetDataError

FORMAT_NAME = "spectramind-lightcurves"
FORMAT_VERSION = 1
FGS1_FEATURES = ("flux", "time_norm", "centroid_x", "centroid_y", "jitter_x", "jitter_y")
JITTER_WINDOW = 9


@dataclass(frozen=True)
class Binning:
    """Target cadence of the light curves, in seconds; independent of the number of reads."""

    fgs1_seconds: float = 60.0
    airs_seconds: float = 240.0

    def factor(self, pair_period_s: float, n_pairs: int, instrument_seconds: float) -> int:
        """CDS pairs per time bin: cadence / pair period, at least 1 and at most n_pairs."""
        if pair_period_s <= 0:
            raise ValueError(f"pair period must be positive, got {pair_period_s}")
        return int(min(max(1, round(instrument_seconds / pair_period_s)), max(1, n_pairs)))


def bin_mean(x: np.ndarray, factor: int, axis: int = 0) -> np.ndarray:
    """Mean over consecutive groups of ``factor`` samples along ``axis``; a short tail is dropped."""
    x = np.asarray(x)
    if factor == 1:
        return x
    n = (x.shape[axis] // factor) * factor
    x = np.take(x, np.arange(n), axis=axis)
    shape = x.shape[:axis] + (n // factor, factor) + x.shape[axis + 1 :]
    return x.reshape(shape).mean(axis=axis + 1)


def running_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Centred running mean with edge-shrunk windows. Shape of x, 1-D."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) == 0:
        return x
    w = max(1, min(window, len(x)))
    c = np.concatenate([[0.0], np.cumsum(x)])
    half = w // 2
    idx = np.arange(len(x))
    lo = np.clip(idx - half, 0, len(x))
    hi = np.clip(idx + half + 1, 0, len(x))
    return (c[hi] - c[lo]) / (hi - lo)


def fgs1_feature_matrix(flux: np.ndarray, time_h: np.ndarray, cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
    """The six FGS1 features from binned flux, time and centroids. Shape: (T, 6) float32."""
    t = np.asarray(time_h, dtype=np.float64)
    span = t[-1] - t[0] if len(t) > 1 else 0.0
    time_norm = (t - t[0]) / span if span > 0 else np.zeros_like(t)
    cx = np.asarray(cx, dtype=np.float64) - np.median(cx)
    cy = np.asarray(cy, dtype=np.float64) - np.median(cy)
    jx = cx - running_mean(cx, JITTER_WINDOW)
    jy = cy - running_mean(cy, JITTER_WINDOW)
    return np.stack([flux, time_norm, cx, cy, jx, jy], axis=1).astype(np.float32)


@dataclass
class LightCurves:
    """Reduced light curves of one planet visit (see the module docstring for shapes)."""

    planet_id: int
    visit: int
    fgs1: np.ndarray
    fgs1_err: np.ndarray
    fgs1_time_h: np.ndarray
    airs_flux: np.ndarray
    airs_err: np.ndarray
    airs_time_h: np.ndarray
    airs_trace: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def fgs1_flux(self) -> np.ndarray:
        return self.fgs1[:, 0]

    def validate(self, source: str | Path | None = None) -> None:
        """Raise PlanetDataError naming the field when a shape or value is wrong."""

        def bad(msg: str) -> PlanetDataError:
            return PlanetDataError(self.planet_id, source, msg, self.visit)

        tf, ta = len(self.fgs1_time_h), len(self.airs_time_h)
        if tf < 1 or ta < 1:
            raise bad(f"empty light curve (fgs1 {tf} bins, airs {ta} bins)")
        expect = {
            "fgs1": (tf, len(FGS1_FEATURES)),
            "fgs1_err": (tf,),
            "airs_flux": (N_AIRS, ta),
            "airs_err": (N_AIRS, ta),
            "airs_trace": (ta, 2),
        }
        for name, shape in expect.items():
            got = getattr(self, name).shape
            if got != shape:
                raise bad(f"{name} must have shape {shape}, got {got}")
        for name in ("fgs1", "fgs1_err", "airs_flux", "airs_err", "fgs1_time_h", "airs_time_h", "airs_trace"):
            arr = getattr(self, name)
            if not np.isfinite(arr).all():
                raise bad(f"{name} has {int((~np.isfinite(arr)).sum())} non-finite values")
        for name in ("fgs1_time_h", "airs_time_h"):
            if np.any(np.diff(getattr(self, name)) <= 0):
                raise bad(f"{name} must increase strictly")

    def save(self, path: Path) -> None:
        self.validate(path)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(
            tmp,
            fgs1=self.fgs1.astype(np.float32),
            fgs1_err=self.fgs1_err.astype(np.float32),
            fgs1_time_h=self.fgs1_time_h.astype(np.float64),
            airs_flux=self.airs_flux.astype(np.float32),
            airs_err=self.airs_err.astype(np.float32),
            airs_time_h=self.airs_time_h.astype(np.float64),
            airs_trace=self.airs_trace.astype(np.float32),
            meta=np.array(json.dumps({**self.meta, "planet_id": self.planet_id, "visit": self.visit})),
        )
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "LightCurves":
        path = Path(path)
        planet = path.parent.name
        visit = int(path.stem.split("_")[-1]) if path.stem.startswith("visit_") else None
        if not path.is_file():
            raise PlanetDataError(planet, path, "light-curve file is missing", visit)
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as exc:
            raise PlanetDataError(planet, path, f"cannot read light curves: {exc}", visit) from exc
        required = ("fgs1", "fgs1_err", "fgs1_time_h", "airs_flux", "airs_err", "airs_time_h", "airs_trace", "meta")
        missing = [k for k in required if k not in arrays]
        if missing:
            raise PlanetDataError(planet, path, f"missing arrays: {', '.join(missing)}", visit)
        meta = json.loads(str(arrays.pop("meta")))
        lc = cls(planet_id=int(meta["planet_id"]), visit=int(meta["visit"]), meta=meta, **arrays)
        lc.validate(path)
        return lc


def visit_path(lcdir: Path, split: str, planet_id: int, visit: int) -> Path:
    return Path(lcdir) / split / str(planet_id) / f"visit_{visit}.npz"


def list_lightcurves(lcdir: Path, split: str) -> dict[int, list[Path]]:
    """planet_id -> its visit files, for one split of an LCDIR."""
    base = Path(lcdir) / split
    out: dict[int, list[Path]] = {}
    if base.is_dir():
        for pdir in sorted(base.iterdir(), key=lambda p: p.name):
            if pdir.is_dir() and pdir.name.isdigit():
                out[int(pdir.name)] = sorted(pdir.glob("visit_*.npz"))
    return out


def write_index(lcdir: Path, binning: Binning, source: str, planets: dict[str, list[int]]) -> None:
    """Write ``lightcurves.json`` describing how the directory was made."""
    info = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "binning": {"fgs1_seconds": binning.fgs1_seconds, "airs_seconds": binning.airs_seconds},
        "source": source,
        "planets": planets,
        "fgs1_features": list(FGS1_FEATURES),
    }
    Path(lcdir).mkdir(parents=True, exist_ok=True)
    (Path(lcdir) / "lightcurves.json").write_text(json.dumps(info, indent=2))
