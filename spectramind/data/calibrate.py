"""Raw ADC2025 frames -> light curves: the library behind ``spectramind calibrate``.

For each instrument of a visit the reads are processed in chunks of ``chunk_pairs`` CDS pairs,
so a full-size visit (AIRS 11,250 reads of 32x356, FGS1 135,000 reads of 32x32) is held as
uint16 once and never as float64 at once. Each chunk goes through, vectorised over reads and
pixels:

1. ADC decode: ``value = raw / gain + offset`` with gain and offset from ``adc_info.csv``
   (the ADC2025 convention, :meth:`spectramind.data.adc.AdcInfo.decode`; the real files have
   gain 0.4369 and offset -1000).
2. Linearity (``linearity``): ``value <- sum_k c_k value^k`` with the 6 coefficients of
   ``linear_corr`` per pixel, lowest power first, evaluated by Horner's rule.
3. CDS: ``read[2k+1] - read[2k]``.
4. Dark: minus ``dark x t_int``, where t_int is the CDS integration time: for AIRS the long
   read's ``AIRS-CH0-integration_time``, for FGS1 the time between the two reads of the pair
   (``FGS1-axis0-h``, in seconds).
5. Flat: divided by the flat. Dead pixels, hot pixels (dark sigma-clipped at
   ``hot_pixel_sigma``) and pixels with flat <= 0 are masked.
6. Outliers in time (cosmic rays hit one CDS pair): a pixel's value that departs from the median
   of itself and its two time neighbours by more than ``cosmic_sigma`` robust standard deviations
   of that pixel's pair-to-pair differences is replaced by that median.
7. Masked pixels are filled so that aperture sums stay unbiased: AIRS by linear interpolation
   between the nearest unmasked columns of the same row (the spectrum is smooth along a row,
   the spatial profile is not); FGS1 by the median PSF scaled to the frame's flux.
8. Extraction. AIRS: columns 39..320, reversed so that row 0 of ``airs_flux`` is column 320
   (ascending wavelength); the trace centre row is the brightest row of the median frame;
   background per column is the mean of the rows farther than ``airs_bkg_gap`` from it; box
   extraction over the rows within ``airs_halfwidth`` (robust to the spatial jitter that would
   couple into an optimal extraction with a fixed profile). FGS1: background is the mean of the
   pixels beyond ``fgs1_bkg_radius`` from the median centroid; flux is the sum within
   ``fgs1_radius``; centroids are flux-weighted over that aperture.
9. Rates: fluxes and their noise are divided by t_int (units per second).
10. Time binning to the cadence of :class:`Binning` (``Binning.factor`` pairs per bin), times
    being the mean of the two read times of each pair, from the first n reads of axis_info.

Noise model, per CDS pair and pixel (detector units are taken as electrons, so the photon
variance equals the signal): ``max(F, 0) / flat + 2 read^2 / flat^2`` with F the
flat-fielded CDS value and ``read`` the per-read noise map; summed over the aperture, plus
``n_ap^2`` times the variance of the background mean. Binning propagates it
(``sqrt(sum var) / n``). The model misses what the data hold but the files do not describe: the
electrons-per-unit gain, pointing jitter, excess noise. So when a series (each AIRS row, FGS1)
has at least ``noise_min_bins`` time bins, its binned error is rescaled by the robust scatter of
its second differences in units of their modelled error, ``1.4826 median |f[i-1] - 2 f[i] +
f[i+1]| / sqrt(e[i-1]^2 + 4 e[i]^2 + e[i+1]^2)``: the model gives the shape in time (photon
noise follows the transit), the data give the level at the cadence of the bins. Second
differences cancel slopes (ingress, egress, drifts), the median ignores the few bins at the
contact points. Shorter series keep the model alone.
"""

from __future__ import annotations

import functools
import logging
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from spectramind.bins import airs_detector_columns
from spectramind.data import adc
from spectramind.data.errors import PlanetDataError
from spectramind.data.lightcurves import Binning, LightCurves, bin_mean, fgs1_feature_matrix, visit_path, write_index
from spectramind.data.runner import RunSummary, run_planets
from spectramind.options import check_rules, coerce_fields

logger = logging.getLogger("spectramind.calibrate")

# Median absolute deviation x this = standard deviation, for Gaussian noise.
_MAD_TO_SIGMA = 1.4826
# Rounds of the FGS1 centroid -> background -> centroid refinement; the aperture moves by well
# under a pixel after the first round.
_CENTROID_ROUNDS = 3

Fail = Callable[[str], PlanetDataError]


@dataclass
class CalibrateOptions:
    """Settings of the reduction; the fields are exactly the keys of ``configs/data/calibrate.yaml``."""

    linearity: bool = True
    hot_pixel_sigma: float = 5.0
    hot_pixel_iters: int = 5
    cosmic_sigma: float = 5.0
    airs_halfwidth: int = 6
    airs_bkg_gap: int = 10
    fgs1_radius: float = 8.0
    fgs1_bkg_radius: float = 12.0
    reference_pairs: int = 256
    noise_min_bins: int = 32
    chunk_pairs: int = 256

    def __post_init__(self) -> None:
        coerce_fields(self, "calibrate")
        # 32 detector rows: a gap of at most 14 leaves background rows wherever the trace lies,
        # and a background radius of at most 16 leaves FGS1 corner pixels wherever the star lies.
        rules = (
            ("hot_pixel_sigma", self.hot_pixel_sigma > 0, "> 0"),
            ("hot_pixel_iters", self.hot_pixel_iters >= 1, ">= 1"),
            ("cosmic_sigma", self.cosmic_sigma > 0, "> 0"),
            ("airs_halfwidth", 0 <= self.airs_halfwidth <= self.airs_bkg_gap, "in [0, airs_bkg_gap]"),
            ("airs_bkg_gap", self.airs_bkg_gap <= 14, "<= 14"),
            ("fgs1_radius", 0 < self.fgs1_radius < self.fgs1_bkg_radius, "in (0, fgs1_bkg_radius)"),
            ("fgs1_bkg_radius", self.fgs1_bkg_radius <= 16, "<= 16"),
            ("reference_pairs", self.reference_pairs >= 1, ">= 1"),
            ("noise_min_bins", self.noise_min_bins >= 3, ">= 3"),
            ("chunk_pairs", self.chunk_pairs >= 1, ">= 1"),
        )
        check_rules("calibrate", self, rules)


# ---------------------------------------------------------------- per-pixel constants


@dataclass(frozen=True)
class _Detector:
    """One instrument's per-pixel constants for one visit, restricted to the columns used.

    Shapes: dark, inv_flat, read_var, mask (32, W); linear (6, 32, W) or None; columns (W,)
    detector columns to keep, or None for all.
    """

    gain: float
    offset: float
    columns: np.ndarray | None
    linear: np.ndarray | None
    dark: np.ndarray
    inv_flat: np.ndarray
    read_var: np.ndarray
    mask: np.ndarray


def _hot_pixels(dark: np.ndarray, dead: np.ndarray, sigma: float, iters: int) -> np.ndarray:
    """Pixels whose dark departs from the median by more than ``sigma`` std of the kept pixels,
    clipped iteratively so that the hot pixels themselves do not inflate the std.

    Shapes: dark, dead (32, W) -> (32, W) bool, dead pixels excluded.
    """
    keep = ~dead
    for _ in range(iters):
        kept = dark[keep]
        if kept.size == 0:
            break
        new = ~dead & (np.abs(dark - np.median(kept)) <= sigma * kept.std())
        if np.array_equal(new, keep):
            break
        keep = new
    return ~keep & ~dead


def _load_detector(
    root: Path,
    split: str,
    planet_id: int,
    visit: int,
    instrument: str,
    adc_info: adc.AdcInfo,
    options: CalibrateOptions,
) -> _Detector:
    cal_dir = adc.calibration_dir(root, split, planet_id, visit, instrument)
    cal = adc.read_calibration(cal_dir, instrument, planet_id, visit)
    columns = airs_detector_columns() if instrument == adc.AIRS else None
    mask = (
        cal.dead | _hot_pixels(cal.dark, cal.dead, options.hot_pixel_sigma, options.hot_pixel_iters) | (cal.flat <= 0)
    )
    dark, flat, read, linear = cal.dark, cal.flat, cal.read, cal.linear_corr
    if columns is not None:
        mask, dark, flat, read, linear = (
            mask[:, columns],
            dark[:, columns],
            flat[:, columns],
            read[:, columns],
            linear[:, :, columns],
        )
    if instrument == adc.AIRS:
        # AIRS fills masked pixels along their row, which needs one good pixel in the row.
        lost = np.nonzero(mask.all(axis=1))[0]
        if len(lost):
            raise PlanetDataError(
                planet_id,
                cal_dir,
                f"every used pixel of AIRS row {int(lost[0])} is masked (dead, hot or flat <= 0)",
                visit,
            )
    # Masked pixels are overwritten after the flat; 1 keeps their arithmetic finite until then.
    inv_flat = np.where(mask, 1.0, 1.0 / np.where(mask, 1.0, flat))
    return _Detector(
        gain=adc_info.gain[instrument],
        offset=adc_info.offset[instrument],
        columns=columns,
        linear=np.ascontiguousarray(linear) if options.linearity else None,
        dark=dark,
        inv_flat=inv_flat,
        read_var=2.0 * read**2 * inv_flat**2,
        mask=mask,
    )


# ---------------------------------------------------------------- timing


def _pair_times(
    time_h: np.ndarray, n_reads: int, path: Path, planet_id: int, visit: int, instrument: str
) -> np.ndarray:
    """Read times of the CDS pairs from the first ``n_reads`` entries of axis_info.

    Shapes: time_h (n_axis,) -> (n_reads // 2, 2) hours.
    """
    n_axis = len(time_h)
    if n_reads > n_axis:
        raise PlanetDataError(
            planet_id, path, f"{n_reads} {instrument} reads, but axis_info.parquet describes only {n_axis}", visit
        )
    if n_reads < n_axis:
        logger.info(
            "planet %s visit %s: %s holds %d %s reads, axis_info.parquet describes %d; using the first %d read times",
            planet_id, visit, path, n_reads, instrument, n_axis, n_reads,
        )  # fmt: skip
    return time_h[:n_reads].reshape(-1, 2)


# ---------------------------------------------------------------- frames


def _polyval(coeffs: np.ndarray, x: np.ndarray) -> np.ndarray:
    """sum_k coeffs[k] x^k per pixel by Horner's rule, in place on a new array.

    Shapes: coeffs (K, 32, W), lowest power first; x (n, 32, W) -> (n, 32, W).
    """
    y = coeffs[-1] * x
    for c in coeffs[-2:0:-1]:
        y += c
        y *= x
    y += coeffs[0]
    return y


def _cds_frames(raw: np.ndarray, det: _Detector, t_int: np.ndarray, fail: Fail) -> np.ndarray:
    """Decode, linearise, CDS, dark and flat for consecutive read pairs; masked pixels are 0.

    Shapes: raw (2m, 32, W_file) uint16, t_int (m,) s -> (m, 32, W) float64 (per pair, not per s).
    """
    if det.columns is not None:
        raw = raw[:, :, det.columns]
    # Overflow or NaN from bad constants is reported by the check below, naming the file.
    with np.errstate(over="ignore", invalid="ignore"):
        x = raw.astype(np.float64)
        x /= det.gain
        x += det.offset
        if det.linear is not None:
            x = _polyval(det.linear, x)
        cds = x[1::2] - x[0::2]
        del x
        cds -= det.dark * t_int[:, None, None]
        cds *= det.inv_flat
    cds[:, det.mask] = 0.0
    if not np.isfinite(cds).all():
        raise fail(
            f"{int((~np.isfinite(cds)).sum())} non-finite values after ADC decode, linearity, dark and flat "
            "(check adc_info.csv and the calibration files)"
        )
    return cds


def _reject_outliers(frames: np.ndarray, sigma: float) -> np.ndarray:
    """Replace, in place, values that stand out from both time neighbours (one-pair cosmic rays).

    The test statistic is ``value - median(prev, value, next)``, compared with ``sigma`` robust
    standard deviations of the pixel's pair-to-pair differences (insensitive to slow trends such
    as the transit). Returns the number of replaced values per pair.
    Shapes: frames (m, 32, W) -> (m,) int.
    """
    hits = np.zeros(len(frames), dtype=np.int64)
    if len(frames) < 3:
        return hits
    prev, cur, nxt = frames[:-2], frames[1:-1], frames[2:]
    med3 = np.maximum(np.minimum(prev, cur), np.minimum(np.maximum(prev, cur), nxt))
    # Differences of consecutive pairs have a median of ~0: trends (transit, drift) move a pixel
    # by far less than its noise from one pair to the next, so no centring is needed.
    diff = np.abs(np.diff(frames, axis=0))
    scale = _MAD_TO_SIGMA * np.median(diff, axis=0)
    del diff
    hit = np.abs(cur - med3) > sigma * scale
    cur[hit] = med3[hit]
    hits[1:-1] = hit.sum(axis=(1, 2))
    return hits


def _clean_chunks(
    raw: np.ndarray, det: _Detector, t_int: np.ndarray, options: CalibrateOptions, fail: Fail
) -> Iterator[tuple[int, int, np.ndarray, int]]:
    """Yield ``(lo, hi, frames, n_outliers)`` for consecutive chunks of pairs [lo, hi).

    Shapes: raw (2m, 32, W_file) uint16, t_int (m,) -> frames (hi - lo, 32, W), masked pixels 0.
    """
    m = len(t_int)
    n_chunks = -(-m // options.chunk_pairs)
    # Even chunk sizes: no tiny last chunk whose outlier statistics would rest on a few pairs.
    edges = np.linspace(0, m, n_chunks + 1).round().astype(np.int64)
    for lo, hi in zip(edges[:-1].tolist(), edges[1:].tolist()):
        # One pair of context on each side so that the outlier test sees both time neighbours.
        a, b = max(lo - 1, 0), min(hi + 1, m)
        frames = _cds_frames(raw[2 * a : 2 * b], det, t_int[a:b], fail)
        hits = _reject_outliers(frames, options.cosmic_sigma)
        keep = slice(lo - a, lo - a + hi - lo)
        yield lo, hi, frames[keep], int(hits[keep].sum())


def _reference_frame(raw: np.ndarray, det: _Detector, t_int: np.ndarray, n_ref: int, fail: Fail) -> np.ndarray:
    """Median rate frame over up to ``n_ref`` pairs spread evenly over the visit; masked pixels 0.

    Shapes: raw (2m, 32, W_file) uint16, t_int (m,) -> (32, W) units/s.
    """
    m = len(t_int)
    pairs = np.unique(np.linspace(0, m - 1, min(m, n_ref)).round().astype(np.int64))
    reads = np.stack([2 * pairs, 2 * pairs + 1], axis=1).ravel()
    frames = _cds_frames(raw[reads], det, t_int[pairs], fail)
    return np.median(frames / t_int[pairs, None, None], axis=0)


# ---------------------------------------------------------------- masked-pixel fills


def _column_filler(mask: np.ndarray) -> Callable[[np.ndarray], None]:
    """In-place filler: each masked pixel becomes the linear interpolation between the nearest
    unmasked columns of its row (the nearest one alone at a frame edge). Every row must hold
    an unmasked pixel (checked when the calibration is loaded).

    Shapes: mask (32, W); the filler takes frames (n, 32, W).
    """
    w = mask.shape[1]
    rows, cols = np.nonzero(mask)
    index = np.broadcast_to(np.arange(w), mask.shape)
    left = np.maximum.accumulate(np.where(mask, -1, index), axis=1)[rows, cols]
    right = np.minimum.accumulate(np.where(mask, w, index)[:, ::-1], axis=1)[:, ::-1][rows, cols]
    left = np.where(left < 0, right, left)
    right = np.where(right >= w, left, right)
    w_right = np.where(right > left, (cols - left) / np.maximum(right - left, 1), 0.0)

    def fill(frames: np.ndarray) -> None:
        frames[:, rows, cols] = (1.0 - w_right) * frames[:, rows, left] + w_right * frames[:, rows, right]

    return fill


def _fill_from_neighbours(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``img`` with each masked pixel replaced by the mean of its unmasked 8-neighbours (0 if none).

    Shapes: img, mask (H, W) -> (H, W).
    """
    h, w = img.shape
    values = np.pad(np.where(mask, 0.0, img), 1)
    good = np.pad((~mask).astype(np.float64), 1)
    shifts = [(dy, dx) for dy in range(3) for dx in range(3) if (dy, dx) != (1, 1)]
    total = sum(values[dy : dy + h, dx : dx + w] for dy, dx in shifts)
    count = sum(good[dy : dy + h, dx : dx + w] for dy, dx in shifts)
    return np.where(mask, total / np.maximum(count, 1.0), img)


# ---------------------------------------------------------------- extraction


@dataclass
class _Reduced:
    """Per-pair output of one instrument, in rates.

    Shapes: flux, var (m, k) units/s and (units/s)^2 (k = 282 for AIRS, 1 for FGS1);
    position (m, 2) px; time_h (m,) hours; pair_s: pair period in s.
    """

    flux: np.ndarray
    var: np.ndarray
    position: np.ndarray
    time_h: np.ndarray
    pair_s: float
    info: dict


Extraction = tuple[np.ndarray, np.ndarray, np.ndarray, dict]


def _spectral_shift(flux: np.ndarray) -> np.ndarray:
    """Shift of each spectrum from the median spectrum, in bins (positive toward longer
    wavelength): the least-squares solution of ``s/a - ref = -dx ref'``, i.e. the small-shift
    limit of the cross-correlation peak, with ``a`` the spectrum's flux relative to ``ref``.

    Shapes: flux (m, k) -> (m,).
    """
    ref = np.median(flux, axis=0)
    grad = np.gradient(ref)
    power = grad @ grad
    if not power > 0:
        # A featureless spectrum carries no information on its position.
        return np.zeros(len(flux))
    scale = flux.sum(axis=1, keepdims=True) / ref.sum()
    return -((flux / scale - ref) @ grad) / power


def _reduce_airs(
    raw: np.ndarray, det: _Detector, t_int: np.ndarray, options: CalibrateOptions, fail: Fail
) -> Extraction:
    """Box extraction of the AIRS spectrum per pair, in rates.

    Shapes: raw (2m, 32, 356) uint16, t_int (m,) -> flux, var (m, 282), position (m, 2) [dx, dy], info.
    """
    fill = _column_filler(det.mask)
    ref = _reference_frame(raw, det, t_int, options.reference_pairs, fail)[None]
    fill(ref)
    row_index = np.arange(ref.shape[1])
    centre = int(np.argmax(ref[0].sum(axis=1)))
    ap = np.abs(row_index - centre) <= options.airs_halfwidth
    bkg = np.abs(row_index - centre) > options.airs_bkg_gap
    n_ap, n_bkg = int(ap.sum()), int(bkg.sum())
    m, width = len(t_int), ref.shape[2]
    flux, var, dy = np.empty((m, width)), np.empty((m, width)), np.empty(m)
    outliers = 0
    for lo, hi, frames, hits in _clean_chunks(raw, det, t_int, options, fail):
        fill(frames)
        sky = frames[:, bkg, :].mean(axis=1)
        net = frames[:, ap, :] - sky[:, None, :]
        flux[lo:hi] = net.sum(axis=1)
        profile = net.sum(axis=2)
        dy[lo:hi] = (profile @ row_index[ap]) / profile.sum(axis=1)
        pix_var = np.maximum(frames, 0.0) * det.inv_flat + det.read_var
        var[lo:hi] = pix_var[:, ap, :].sum(axis=1) + (n_ap / n_bkg) ** 2 * pix_var[:, bkg, :].sum(axis=1)
        outliers += hits
    flux /= t_int[:, None]
    var /= t_int[:, None] ** 2
    position = np.stack([_spectral_shift(flux), dy - np.median(dy)], axis=1)
    return (
        flux,
        var,
        position,
        {"trace_row": centre, "aperture_rows": n_ap, "background_rows": n_bkg, "outliers_replaced": outliers},
    )


def _fgs1_geometry(
    ref: np.ndarray, mask: np.ndarray, options: CalibrateOptions, fail: Fail
) -> tuple[float, float, np.ndarray, np.ndarray, float]:
    """Median centroid, aperture and background pixels of the FGS1 median frame.

    Shapes: ref, mask (32, 32) -> cx, cy (px), aperture (32, 32) bool, background (32, 32) bool,
    background level of ref.
    """
    y, x = np.indices(ref.shape)
    cy, cx = (float(v) for v in np.unravel_index(np.argmax(ref), ref.shape))
    for _ in range(_CENTROID_ROUNDS):
        r = np.hypot(x - cx, y - cy)
        sky = (r > options.fgs1_bkg_radius) & ~mask
        level = float(ref[sky].mean())
        ap = r <= options.fgs1_radius
        weight = ref[ap] - level
        total = weight.sum()
        if not total > 0:
            raise fail("no positive flux from the star in the FGS1 median frame")
        cx, cy = float(x[ap] @ weight / total), float(y[ap] @ weight / total)
    r = np.hypot(x - cx, y - cy)
    sky = (r > options.fgs1_bkg_radius) & ~mask
    return cx, cy, r <= options.fgs1_radius, sky, float(ref[sky].mean())


def _reduce_fgs1(
    raw: np.ndarray, det: _Detector, t_int: np.ndarray, options: CalibrateOptions, fail: Fail
) -> Extraction:
    """Aperture photometry and centroids of FGS1 per pair, in rates.

    Shapes: raw (2m, 32, 32) uint16, t_int (m,) -> flux, var (m, 1), position (m, 2) [cx, cy] px, info.
    """
    ref = _fill_from_neighbours(_reference_frame(raw, det, t_int, options.reference_pairs, fail), det.mask)
    cx0, cy0, ap, sky, ref_level = _fgs1_geometry(ref, det.mask, options, fail)
    psf = ref - ref_level
    ap_good = ap & ~det.mask
    psf_good = psf[ap_good].sum()
    if not psf_good > 0:
        raise fail("no unmasked pixel with flux from the star in the FGS1 aperture")
    y, x = np.indices(ref.shape)
    n_ap, n_sky = int(ap.sum()), int(sky.sum())
    m = len(t_int)
    flux, var, position = np.empty((m, 1)), np.empty((m, 1)), np.empty((m, 2))
    outliers = 0
    for lo, hi, frames, hits in _clean_chunks(raw, det, t_int, options, fail):
        level = frames[:, sky].mean(axis=1)
        net = frames - level[:, None, None]
        scale = net[:, ap_good].sum(axis=1) / psf_good
        net[:, det.mask] = scale[:, None] * psf[det.mask]
        total = net[:, ap].sum(axis=1)
        flux[lo:hi, 0] = total
        position[lo:hi, 0] = net[:, ap] @ x[ap] / total
        position[lo:hi, 1] = net[:, ap] @ y[ap] / total
        pix_var = np.maximum(net + level[:, None, None], 0.0) * det.inv_flat + det.read_var
        var[lo:hi, 0] = pix_var[:, ap].sum(axis=1) + (n_ap / n_sky) ** 2 * pix_var[:, sky].sum(axis=1)
        outliers += hits
    flux /= t_int[:, None]
    var /= t_int[:, None] ** 2
    return (
        flux,
        var,
        position,
        {"centre_px": [cx0, cy0], "aperture_pixels": n_ap, "background_pixels": n_sky, "outliers_replaced": outliers},
    )


def _bin_series(values: np.ndarray, var: np.ndarray, factor: int, min_bins: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Bin per-pair values and their modelled variance; rescale each column's error to the
    scatter of its second differences when there are at least ``min_bins`` bins (see the
    module docstring).

    Shapes: values, var (m, k) -> mean, err (m // factor, k); plus whether the error was rescaled.
    """
    mean = bin_mean(values, factor)
    err = np.sqrt(bin_mean(var, factor) / factor)
    if len(mean) < min_bins:
        return mean, err, False
    second = mean[:-2] - 2.0 * mean[1:-1] + mean[2:]
    modelled = np.sqrt(err[:-2] ** 2 + 4.0 * err[1:-1] ** 2 + err[2:] ** 2)
    return mean, err * (_MAD_TO_SIGMA * np.median(np.abs(second / modelled), axis=0)), True


# ---------------------------------------------------------------- one visit


def _reduce_instrument(
    root: Path,
    split: str,
    planet_id: int,
    visit: int,
    instrument: str,
    det: _Detector,
    axis: adc.AxisInfo,
    options: CalibrateOptions,
) -> _Reduced:
    path = adc.signal_path(root, split, planet_id, visit, instrument)

    def fail(message: str) -> PlanetDataError:
        return PlanetDataError(planet_id, path, message, visit)

    raw = adc.read_signal(path, instrument, planet_id, visit)
    # pyarrow's allocator keeps the pages of the decoded table; hand them back so that the
    # next instrument's read does not stack on top of them (~0.2 GB at full size).
    pa.default_memory_pool().release_unused()
    axis_path = Path(root) / "axis_info.parquet"
    if instrument == adc.AIRS:
        # The two AIRS columns are read together; a shorter one bounds what the file may hold.
        n_axis = min(len(axis.airs_time_h), len(axis.airs_integration_s))
        times = _pair_times(axis.airs_time_h[:n_axis], len(raw), path, planet_id, visit, instrument)
        t_int = axis.airs_integration_s[1 : len(raw) : 2]
    else:
        times = _pair_times(axis.fgs1_time_h, len(raw), path, planet_id, visit, instrument)
        t_int = (times[:, 1] - times[:, 0]) * 3600.0
    if not (np.isfinite(t_int).all() and (t_int > 0).all()):
        raise PlanetDataError(
            planet_id, axis_path, f"{instrument} CDS integration times must be positive and finite", visit
        )
    extract = _reduce_airs if instrument == adc.AIRS else _reduce_fgs1
    flux, var, position, info = extract(raw, det, t_int, options, fail)
    pair_time = times.mean(axis=1)
    # A single pair has no period; any positive value then bins to one pair per bin.
    pair_s = float(np.median(np.diff(pair_time)) * 3600.0) if len(pair_time) > 1 else float(t_int[0])
    info.update(reads=len(raw), masked_pixels=int(det.mask.sum()))
    return _Reduced(flux, var, position, pair_time, pair_s, info)


def calibrate_visit(
    root: Path, split: str, planet_id: int, visit: int, options: CalibrateOptions, binning: Binning
) -> LightCurves:
    """Reduce one planet visit's raw frames under ``root`` to binned light curves.

    Raises PlanetDataError naming planet, visit and file for missing or malformed input:
    signal or calibration files, frame shapes, odd read counts, more reads than axis_info
    describes, non-finite ADC constants or frames.
    Shapes: see :class:`LightCurves` (T_f = FGS1 pairs // FGS1 factor, T_a likewise).
    """
    root = Path(root)
    try:
        adc_info = adc.read_adc_info(root)
        axis = adc.read_axis_info(root)
    except PlanetDataError as exc:
        raise PlanetDataError(planet_id, exc.file, exc.message, visit) from exc

    # The small calibration files first, so that their faults surface before the long reductions.
    dets = {inst: _load_detector(root, split, planet_id, visit, inst, adc_info, options) for inst in adc.INSTRUMENTS}
    fgs1 = _reduce_instrument(root, split, planet_id, visit, adc.FGS1, dets[adc.FGS1], axis, options)
    f_factor = binning.factor(fgs1.pair_s, len(fgs1.time_h), binning.fgs1_seconds)
    f_flux, f_err, f_scaled = _bin_series(fgs1.flux, fgs1.var, f_factor, options.noise_min_bins)
    f_time = bin_mean(fgs1.time_h, f_factor)
    f_pos = bin_mean(fgs1.position, f_factor)

    airs = _reduce_instrument(root, split, planet_id, visit, adc.AIRS, dets[adc.AIRS], axis, options)
    a_factor = binning.factor(airs.pair_s, len(airs.time_h), binning.airs_seconds)
    a_flux, a_err, a_scaled = _bin_series(airs.flux, airs.var, a_factor, options.noise_min_bins)

    noise = {True: "model scaled to the scatter of second differences", False: "model"}
    lc = LightCurves(
        planet_id=int(planet_id),
        visit=int(visit),
        fgs1=fgs1_feature_matrix(f_flux[:, 0], f_time, f_pos[:, 0], f_pos[:, 1]),
        fgs1_err=f_err[:, 0],
        fgs1_time_h=f_time,
        airs_flux=a_flux.T,
        airs_err=a_err.T,
        airs_time_h=bin_mean(airs.time_h, a_factor),
        airs_trace=bin_mean(airs.position, a_factor),
        meta={
            "split": split,
            "source": str(root / split / str(planet_id)),
            "reads": {adc.AIRS: airs.info["reads"], adc.FGS1: fgs1.info["reads"]},
            "pairs_per_bin": {adc.AIRS: a_factor, adc.FGS1: f_factor},
            "noise": {adc.AIRS: noise[a_scaled], adc.FGS1: noise[f_scaled]},
            adc.AIRS: airs.info,
            adc.FGS1: fgs1.info,
            "options": asdict(options),
        },
    )
    lc.validate(root / split / str(planet_id))
    return lc


# ---------------------------------------------------------------- a data set


def _calibrate_item(
    data: Path, out: Path, options: CalibrateOptions, binning: Binning, item: tuple[str, int, int]
) -> tuple[str, int, int]:
    """Worker of :func:`calibrate_dataset` (top level, so a process pool can pickle it)."""
    split, planet_id, visit = item
    calibrate_visit(data, split, planet_id, visit, options, binning).save(visit_path(out, split, planet_id, visit))
    return item


def calibrate_dataset(
    data: Path,
    out: Path,
    options: CalibrateOptions,
    binning: Binning = Binning(),  # noqa: B008 -- frozen, so one shared default is safe
    splits: Sequence[str] = ("train", "test"),
    workers: int | None = None,
    strict: bool = False,
    progress: bool = True,
) -> RunSummary:
    """Calibrate every (split, planet, visit) under ``data`` into the light-curve directory ``out``.

    Copies ``{split}_star_info.csv`` and ``wavelengths.csv`` (required), ``train.csv`` and
    ``test_truth.csv`` (when present), and writes ``lightcurves.json`` listing, per split, the
    planets with at least one visit written. A bad visit is skipped and listed in the summary
    (``strict`` raises instead); the planet's other visits are kept. Raises PlanetDataError naming the folder when it holds no
    planet, or the file when a required top-level file is missing.
    """
    data, out = Path(data), Path(out)
    for split in splits:
        if split not in adc.SPLITS:
            raise ValueError(f"splits must be among {adc.SPLITS}, got {split!r}")
    items = [(split, pid, visit) for split in splits for pid, visit in adc.list_visits(data, split)]
    if not items:
        raise PlanetDataError(None, data, f"no planets found under {', '.join(f'{s}/' for s in splits)}")
    # What every planet needs is checked once, before any work.
    adc.read_adc_info(data)
    adc.read_axis_info(data)
    with_planets = {split for split, _, _ in items}
    required = ["wavelengths.csv"] + [f"{split}_star_info.csv" for split in splits if split in with_planets]
    optional = ["train.csv", "test_truth.csv"] + [f"{s}_star_info.csv" for s in splits if s not in with_planets]
    for name in required:
        if not (data / name).is_file():
            raise PlanetDataError(None, data / name, "file is missing")
    out.mkdir(parents=True, exist_ok=True)
    for name in required + [n for n in optional if (data / n).is_file()]:
        shutil.copyfile(data / name, out / name)

    worker = functools.partial(_calibrate_item, data, out, options, binning)
    summary = run_planets(worker, items, task="calibrate", workers=workers, strict=strict, progress=progress)
    # A planet's good visits are kept when another of its visits is bad: nothing else is lost.
    written = set(summary.results)
    planets = {split: sorted({pid for s, pid, _ in written if s == split}) for split in splits}
    write_index(out, binning, str(data), planets)
    return summary
