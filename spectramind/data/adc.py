"""The ADC2025 (NeurIPS 2025 Ariel Data Challenge) file layout: read and write, with checks.

Layout of a data root::

    ROOT/adc_info.csv                     FGS1_adc_offset, FGS1_adc_gain, AIRS-CH0_adc_offset, AIRS-CH0_adc_gain
    ROOT/axis_info.parquet                read times (h), AIRS integration times (s), AIRS column wavelengths
    ROOT/wavelengths.csv                  wl_1..wl_283 (one row, um)
    ROOT/{train,test}_star_info.csv       planet_id, Rs, Ms, Ts, Mp, e, P, sma, i
    ROOT/train.csv                        planet_id, wl_1..wl_283 ((Rp/Rs)^2 labels; train split only)
    ROOT/{train,test}/<planet_id>/{AIRS-CH0,FGS1}_signal_<k>.parquet          uint16, one read a row
    ROOT/{train,test}/<planet_id>/{AIRS-CH0,FGS1}_calibration_<k>/{dark,dead,flat,linear_corr,read}.parquet

ADC convention: a raw uint16 value ``r`` decodes to detector units as ``r / gain + offset``
(gain and offset from adc_info.csv). Reads come in correlated double sampling (CDS) pairs:
the science frame is ``read[2k+1] - read[2k]``. ``linear_corr`` holds 6 polynomial
coefficients per pixel, lowest power first, stacked as 6 blocks of 32 rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from spectramind.bins import N_BINS
from spectramind.data.errors import PlanetDataError

AIRS = "AIRS-CH0"
FGS1 = "FGS1"
INSTRUMENTS = (AIRS, FGS1)
FRAME_SHAPE = {AIRS: (32, 356), FGS1: (32, 32)}
REAL_READS = {AIRS: 11250, FGS1: 135000}
VISIT_HOURS = 7.5
CALIBRATION_FILES = ("dark", "dead", "flat", "linear_corr", "read")
LINEAR_CORR_ORDER = 6
SPLITS = ("train", "test")
STAR_COLUMNS = ("planet_id", "Rs", "Ms", "Ts", "Mp", "e", "P", "sma", "i")
AXIS_COLUMNS = ("AIRS-CH0-axis0-h", "AIRS-CH0-axis2-um", "AIRS-CH0-integration_time", "FGS1-axis0-h")
WL_COLUMNS = tuple(f"wl_{k}" for k in range(1, N_BINS + 1))
SIGMA_COLUMNS = tuple(f"sigma_{k}" for k in range(1, N_BINS + 1))

_SIGNAL_RE = re.compile(r"^(AIRS-CH0|FGS1)_signal_(\d+)\.parquet$")


def signal_path(root: Path, split: str, planet_id: int, visit: int, instrument: str) -> Path:
    return Path(root) / split / str(planet_id) / f"{instrument}_signal_{visit}.parquet"


def calibration_dir(root: Path, split: str, planet_id: int, visit: int, instrument: str) -> Path:
    return Path(root) / split / str(planet_id) / f"{instrument}_calibration_{visit}"


# ---------------------------------------------------------------- discovery


def list_visits(root: Path, split: str) -> list[tuple[int, int]]:
    """All (planet_id, visit) pairs present under ``ROOT/split``, sorted.

    A visit counts when either instrument's signal file exists; a missing partner file is
    reported later by the reader, against that planet.
    """
    base = Path(root) / split
    if not base.is_dir():
        return []
    found: set[tuple[int, int]] = set()
    for pdir in base.iterdir():
        if not pdir.is_dir() or not pdir.name.isdigit():
            continue
        visits = {int(m.group(2)) for f in pdir.iterdir() if (m := _SIGNAL_RE.match(f.name))}
        # A planet folder without any signal file still counts, so its reader reports the loss.
        found.update((int(pdir.name), v) for v in visits or {0})
    return sorted(found)


# ---------------------------------------------------------------- frames


def read_signal(path: Path, instrument: str, planet_id: int | None = None, visit: int | None = None) -> np.ndarray:
    """Raw reads of one signal file. Returns uint16 of shape (n_reads, 32, W).

    Raises PlanetDataError naming the file when it is missing, unreadable, of the wrong
    width or dtype, or holds an odd number of reads (CDS needs pairs).
    """
    path = Path(path)
    if not path.is_file():
        raise PlanetDataError(planet_id, path, "file is missing", visit)
    try:
        pfile = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise PlanetDataError(planet_id, path, f"cannot read parquet: {exc}", visit) from exc
    h, w = FRAME_SHAPE[instrument]
    n_cols, n_rows = pfile.metadata.num_columns, pfile.metadata.num_rows
    if n_cols != h * w:
        raise PlanetDataError(planet_id, path, f"{instrument} frames must have {h * w} columns ({h}x{w}), got {n_cols}", visit)
    if n_rows == 0 or n_rows % 2:
        raise PlanetDataError(planet_id, path, f"need a positive even number of reads (CDS pairs), got {n_rows}", visit)
    frames = np.empty((n_rows, h * w), dtype=np.uint16)
    row = 0
    try:
        # Row batches bound the transient memory of a full-size visit to one batch beside the output.
        for batch in pfile.iter_batches(batch_size=1024):
            for k, col in enumerate(batch.columns):
                arr = col.to_numpy(zero_copy_only=False)
                if arr.dtype != np.uint16 and (
                    not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() > 65535
                ):
                    raise PlanetDataError(
                        planet_id, path, f"column {batch.schema.names[k]} is {arr.dtype}, expected uint16", visit
                    )
                frames[row : row + batch.num_rows, k] = arr
            row += batch.num_rows
    except PlanetDataError:
        raise
    except Exception as exc:
        raise PlanetDataError(planet_id, path, f"cannot read parquet: {exc}", visit) from exc
    return frames.reshape(-1, h, w)


def write_signal(path: Path, frames: np.ndarray) -> None:
    """Write uint16 reads (n_reads, 32, W) as one read a row, columns ``column_0..``."""
    frames = np.asarray(frames, dtype=np.uint16)
    # One contiguous row per pixel column: building 11,392 arrow columns from strided views is 8x slower.
    by_column = np.ascontiguousarray(frames.reshape(frames.shape[0], -1).T)
    cols = [pa.array(by_column[k]) for k in range(by_column.shape[0])]
    table = pa.Table.from_arrays(cols, names=[f"column_{k}" for k in range(by_column.shape[0])])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="snappy", use_dictionary=False, write_statistics=False)


# ---------------------------------------------------------------- calibration files


@dataclass
class CalibrationFrames:
    """One instrument's calibration files for one visit.

    Shapes: dark, flat, read (32, W) float64; dead (32, W) bool; linear_corr (6, 32, W),
    lowest power first.
    """

    dark: np.ndarray
    dead: np.ndarray
    flat: np.ndarray
    linear_corr: np.ndarray
    read: np.ndarray


def _read_table(path: Path, planet_id, visit, shape: tuple[int, int], dtype_kind: str) -> np.ndarray:
    if not path.is_file():
        raise PlanetDataError(planet_id, path, "calibration file is missing", visit)
    try:
        values = pq.read_table(path).to_pandas().to_numpy()
    except Exception as exc:
        raise PlanetDataError(planet_id, path, f"cannot read parquet: {exc}", visit) from exc
    if values.shape != shape:
        raise PlanetDataError(planet_id, path, f"expected shape {shape}, got {values.shape}", visit)
    if dtype_kind == "b":
        return values.astype(bool)
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise PlanetDataError(planet_id, path, f"{int((~np.isfinite(values)).sum())} non-finite values", visit)
    return values


def read_calibration(cal_dir: Path, instrument: str, planet_id: int | None = None, visit: int | None = None) -> CalibrationFrames:
    cal_dir = Path(cal_dir)
    if not cal_dir.is_dir():
        raise PlanetDataError(planet_id, cal_dir, "calibration folder is missing", visit)
    h, w = FRAME_SHAPE[instrument]
    return CalibrationFrames(
        dark=_read_table(cal_dir / "dark.parquet", planet_id, visit, (h, w), "f"),
        dead=_read_table(cal_dir / "dead.parquet", planet_id, visit, (h, w), "b"),
        flat=_read_table(cal_dir / "flat.parquet", planet_id, visit, (h, w), "f"),
        linear_corr=_read_table(
            cal_dir / "linear_corr.parquet", planet_id, visit, (LINEAR_CORR_ORDER * h, w), "f"
        ).reshape(LINEAR_CORR_ORDER, h, w),
        read=_read_table(cal_dir / "read.parquet", planet_id, visit, (h, w), "f"),
    )


def _write_frame_table(path: Path, values: np.ndarray) -> None:
    by_column = np.ascontiguousarray(values.T)
    table = pa.Table.from_arrays(
        [pa.array(by_column[k]) for k in range(by_column.shape[0])],
        names=[f"column_{k}" for k in range(by_column.shape[0])],
    )
    pq.write_table(table, path, compression="zstd")


def write_calibration(cal_dir: Path, cal: CalibrationFrames) -> None:
    cal_dir = Path(cal_dir)
    cal_dir.mkdir(parents=True, exist_ok=True)
    _write_frame_table(cal_dir / "dark.parquet", np.asarray(cal.dark, dtype=np.float64))
    _write_frame_table(cal_dir / "dead.parquet", np.asarray(cal.dead, dtype=bool))
    _write_frame_table(cal_dir / "flat.parquet", np.asarray(cal.flat, dtype=np.float64))
    lc = np.asarray(cal.linear_corr, dtype=np.float64)
    _write_frame_table(cal_dir / "linear_corr.parquet", lc.reshape(-1, lc.shape[-1]))
    _write_frame_table(cal_dir / "read.parquet", np.asarray(cal.read, dtype=np.float64))


# ---------------------------------------------------------------- top-level tables


@dataclass(frozen=True)
class AdcInfo:
    """Per-instrument ADC decode constants: detector units = raw / gain + offset."""

    gain: dict[str, float]
    offset: dict[str, float]

    def decode(self, raw: np.ndarray, instrument: str) -> np.ndarray:
        return raw.astype(np.float64) / self.gain[instrument] + self.offset[instrument]

    def encode(self, value: np.ndarray, instrument: str) -> np.ndarray:
        """Inverse of :meth:`decode`, rounded and clipped into uint16."""
        raw = np.rint((np.asarray(value, dtype=np.float64) - self.offset[instrument]) * self.gain[instrument])
        return np.clip(raw, 0, 65535).astype(np.uint16)


def read_adc_info(root: Path) -> AdcInfo:
    path = Path(root) / "adc_info.csv"
    if not path.is_file():
        raise PlanetDataError(None, path, "file is missing")
    df = pd.read_csv(path)
    gain, offset = {}, {}
    for inst in INSTRUMENTS:
        for key, store in (("gain", gain), ("offset", offset)):
            col = f"{inst}_adc_{key}"
            if col not in df.columns:
                raise PlanetDataError(None, path, f"column {col} is missing")
            store[inst] = float(df[col].iloc[0])
        if not (np.isfinite(gain[inst]) and gain[inst] > 0):
            raise PlanetDataError(None, path, f"{inst}_adc_gain must be a positive number, got {gain[inst]}")
        if not np.isfinite(offset[inst]):
            raise PlanetDataError(None, path, f"{inst}_adc_offset must be finite, got {offset[inst]}")
    return AdcInfo(gain=gain, offset=offset)


def write_adc_info(root: Path, info: AdcInfo) -> None:
    row = {}
    for inst in (FGS1, AIRS):
        row[f"{inst}_adc_offset"] = info.offset[inst]
        row[f"{inst}_adc_gain"] = info.gain[inst]
    pd.DataFrame([row]).to_csv(Path(root) / "adc_info.csv", index=False)


@dataclass(frozen=True)
class AxisInfo:
    """Read timing. All arrays hold every read described by axis_info.parquet (NaN padding dropped).

    Shapes: airs_time_h (n_airs_reads,), airs_integration_s (n_airs_reads,),
    fgs1_time_h (n_fgs1_reads,), airs_column_um (356,).
    """

    airs_time_h: np.ndarray
    airs_integration_s: np.ndarray
    fgs1_time_h: np.ndarray
    airs_column_um: np.ndarray


def read_axis_info(root: Path) -> AxisInfo:
    path = Path(root) / "axis_info.parquet"
    if not path.is_file():
        raise PlanetDataError(None, path, "file is missing")
    df = pd.read_parquet(path)
    for col in AXIS_COLUMNS:
        if col not in df.columns:
            raise PlanetDataError(None, path, f"column {col} is missing")
    def col(name: str) -> np.ndarray:
        values = df[name].to_numpy(dtype=np.float64)
        n = int(np.isfinite(values).sum())
        # NaN may only pad the end of a shorter column; a gap inside would shift every later read.
        if not np.isfinite(values[:n]).all():
            raise PlanetDataError(None, path, f"column {name} has NaN before its last value")
        return values[:n]

    return AxisInfo(
        airs_time_h=col("AIRS-CH0-axis0-h"),
        airs_integration_s=col("AIRS-CH0-integration_time"),
        fgs1_time_h=col("FGS1-axis0-h"),
        airs_column_um=col("AIRS-CH0-axis2-um"),
    )


def write_axis_info(root: Path, axis: AxisInfo) -> None:
    n = max(len(axis.fgs1_time_h), len(axis.airs_time_h), len(axis.airs_column_um))

    def pad(a: np.ndarray) -> np.ndarray:
        out = np.full(n, np.nan)
        out[: len(a)] = a
        return out

    df = pd.DataFrame(
        {
            "AIRS-CH0-axis0-h": pad(axis.airs_time_h),
            "AIRS-CH0-axis2-um": pad(axis.airs_column_um),
            "AIRS-CH0-integration_time": pad(axis.airs_integration_s),
            "FGS1-axis0-h": pad(axis.fgs1_time_h),
        }
    )
    df.to_parquet(Path(root) / "axis_info.parquet", index=False)


def read_star_info(root: Path, split: str) -> pd.DataFrame:
    """``{split}_star_info.csv`` indexed by integer planet_id."""
    path = Path(root) / f"{split}_star_info.csv"
    if not path.is_file():
        raise PlanetDataError(None, path, "file is missing")
    df = pd.read_csv(path)
    missing = [c for c in STAR_COLUMNS if c not in df.columns]
    if missing:
        raise PlanetDataError(None, path, f"missing columns: {', '.join(missing)}")
    df["planet_id"] = df["planet_id"].astype(np.int64)
    return df.set_index("planet_id")


def read_labels(path: Path) -> pd.DataFrame:
    """A labels table (planet_id, wl_1..wl_283) indexed by integer planet_id."""
    path = Path(path)
    if not path.is_file():
        raise PlanetDataError(None, path, "file is missing")
    df = pd.read_csv(path)
    missing = [c for c in ("planet_id",) + WL_COLUMNS if c not in df.columns]
    if missing:
        raise PlanetDataError(None, path, f"missing columns: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    df["planet_id"] = df["planet_id"].astype(np.int64)
    return df.set_index("planet_id")[list(WL_COLUMNS)]
