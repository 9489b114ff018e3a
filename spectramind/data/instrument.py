"""Detector model of AIRS-CH0 and FGS1: read pattern, PSF and trace with intrapixel response,
pointing jitter, gain drift, detector maps, noise, non-linearity and the ADC; plus the
extraction of noise-free frames used by the light-curve level of the simulator.

Reads and CDS pairs. Read 2k ends the short integration (0.1 s after the reset), read 2k+1
the long one that follows, so its charge includes read 2k's; CDS (read 2k+1 - read 2k) keeps
the long integration and removes the bias and the per-pair reset (kTC) offsets. Real visits:
AIRS 5,625 pairs of 0.1 s + 4.5 s every 4.8 s, FGS1 67,500 pairs of 0.1 s + 0.1 s every 0.4 s,
7.5 h in all. Read times are the ends of the integrations, so the CDS integration equals the
time between the two reads of a pair (the calibrator relies on it for FGS1).

Reads scale F (``--reads-scale``). The visit keeps its 7.5 h but holds n = F x the real
number of reads (rounded to an even count, at least 2 pairs; the effective F is n / real).
Long integrations and pair periods are 1/F times the real ones, so the photons per unit time
are those of the real instrument; the per-read noise map (``read.parquet``) is the real one
times sqrt(1/F), so the read-noise variance per unit time is real too; dark rates stay per
second. ``adc_info.csv`` holds the real gain (0.4369) times F, so a read 1/F times fuller
still fits uint16, and the real offset (-1000) over F, so an empty pixel still sits ~440 raw
counts above 0 as in the real files and the read noise never clips; decoding (raw / gain +
offset) is unchanged. The non-linearity scales with the ADC range, so the fractional
non-linearity of a read is the real one at any F.

Detector units are electrons (photon noise is Poisson in them), as the calibrator assumes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

from spectramind.bins import airs_detector_columns
from spectramind.data.adc import (
    AIRS,
    FGS1,
    FRAME_SHAPE,
    INSTRUMENTS,
    REAL_READS,
    VISIT_HOURS,
    AdcInfo,
    AxisInfo,
    CalibrationFrames,
)
from spectramind.data.astro import airs_column_wavelengths

VISIT_S = VISIT_HOURS * 3600.0
REAL_SHORT_S = 0.1
REAL_LONG_S = {AIRS: 4.5, FGS1: 0.1}
REAL_ADC_GAIN = 0.4369
ADC_OFFSET = -1000.0
ADC_MAX = 65535

# Extraction geometry shared with the calibrator (configs/data/calibrate.yaml).
AIRS_HALFWIDTH = 6
AIRS_BKG_GAP = 10
FGS1_RADIUS = 8.0
FGS1_BKG_RADIUS = 12.0

# Sub-pixel samples per pixel and axis on which PSFs meet the intrapixel response.
SUPERSAMPLE = 8
# AIRS spatial profile: (flux fraction, row offset, sigma at 1.95 um in rows): core, shoulder,
# the secondary bump 4-5 rows below and the far wings seen in the real sample frames. The
# widths grow as lambda^AIRS_WIDTH_POWER (diffraction, softened by the optics' own blur).
AIRS_PROFILE = ((0.72, 0.0, 0.65), (0.15, 0.3, 1.6), (0.04, 4.6, 0.9), (0.09, 0.0, 9.0))
AIRS_WIDTH_POWER = 0.7
AIRS_PROFILE_NODES = 12
AIRS_LSF_SIGMA = 0.5
# FGS1 PSF: (flux fraction, x offset, y offset, sigma x, sigma y) in px: a sharp core, an
# elongated lobe and tail below it, a bar above it and a halo, like the real PSF (~8 px).
FGS1_PSF = (
    (0.24, 0.0, 0.0, 0.5, 0.5),
    (0.36, 0.6, 0.6, 1.0, 1.1),
    (0.16, 0.0, 2.8, 0.9, 1.8),
    (0.12, -0.5, -2.3, 2.8, 0.6),
    (0.12, 0.0, 0.3, 3.0, 3.0),
)
# Pointing seen by AIRS (spectral x, spatial y) from FGS1 (x, y): larger pixels, slight rotation.
AIRS_FROM_FGS1 = np.array([[0.5, 0.03], [-0.03, 0.5]])
# Standard deviation of the per-pair, per-row reset (kTC) offset, units.
RESET_SIGMA = 8.0
# Mean counts from which photon noise is drawn as a normal rather than a Poisson variate.
POISSON_EXACT_BELOW = 100.0
# Pixels per chunk of rendered pairs: bounds memory at full scale.
CHUNK_PIXELS = 1 << 21


# ---------------------------------------------------------------- reads, ADC, axis


@dataclass(frozen=True)
class ReadPattern:
    """Timing of one instrument's reads in a visit (see the module docstring)."""

    instrument: str
    n_reads: int

    @property
    def n_pairs(self) -> int:
        return self.n_reads // 2

    @property
    def scale(self) -> float:
        """Effective reads scale F = n_reads / real reads."""
        return self.n_reads / REAL_READS[self.instrument]

    @property
    def short_s(self) -> float:
        return REAL_SHORT_S

    @property
    def long_s(self) -> float:
        return REAL_LONG_S[self.instrument] / self.scale

    @property
    def pair_s(self) -> float:
        return VISIT_S / self.n_pairs

    def read_time_h(self) -> np.ndarray:
        """Time of every read (end of its integration), hours. Shapes: -> (n_reads,)."""
        start = np.arange(self.n_pairs) * self.pair_s + self.short_s
        return np.stack([start, start + self.long_s], axis=1).ravel() / 3600.0

    def pair_time_h(self) -> np.ndarray:
        """Mid-time of every long integration (mean of the pair's read times), hours. Shapes: -> (n_pairs,)."""
        return self.read_time_h().reshape(-1, 2).mean(axis=1)

    def integration_s(self) -> np.ndarray:
        """Integration time of every read, alternating short and long, s. Shapes: -> (n_reads,)."""
        return np.tile([self.short_s, self.long_s], self.n_pairs)


def read_pattern(instrument: str, reads_scale: float) -> ReadPattern:
    """The read pattern for a reads scale F in (0, 1]."""
    if instrument not in INSTRUMENTS:
        raise ValueError(f"instrument must be one of {INSTRUMENTS}, got {instrument!r}")
    if not 0 < reads_scale <= 1:
        raise ValueError(f"reads_scale must be in (0, 1], got {reads_scale}")
    n_reads = max(4, 2 * round(reads_scale * REAL_READS[instrument] / 2))
    return ReadPattern(instrument, n_reads)


def adc_info(reads_scale: float) -> AdcInfo:
    """ADC constants for a reads scale: the real gain times, and the real offset over, the
    effective F of each instrument, so raw counts span the real range."""
    scale = {inst: read_pattern(inst, reads_scale).scale for inst in INSTRUMENTS}
    return AdcInfo(
        gain={inst: REAL_ADC_GAIN * scale[inst] for inst in INSTRUMENTS},
        offset={inst: ADC_OFFSET / scale[inst] for inst in INSTRUMENTS},
    )


def axis_info(reads_scale: float) -> AxisInfo:
    """axis_info describing exactly the reads written at this scale."""
    airs, fgs1 = read_pattern(AIRS, reads_scale), read_pattern(FGS1, reads_scale)
    return AxisInfo(
        airs_time_h=airs.read_time_h(),
        airs_integration_s=airs.integration_s(),
        fgs1_time_h=fgs1.read_time_h(),
        airs_column_um=airs_column_wavelengths(),
    )


# ---------------------------------------------------------------- detector maps


@dataclass(frozen=True)
class Detector:
    """Per-pixel properties of one instrument in one visit.

    Shapes (32, W): flat, dark (units/s), read (per-read noise at this scale, units),
    nonlinearity (b of recorded = v - b v^2), background (units/s before the flat), bias
    (units); dead (32, W) bool.
    """

    flat: np.ndarray
    dead: np.ndarray
    dark: np.ndarray
    read: np.ndarray
    nonlinearity: np.ndarray
    background: np.ndarray
    bias: np.ndarray

    def calibration(self) -> CalibrationFrames:
        """The calibration files. linear_corr inverts y = v - b v^2 by its series
        v = y + b y^2 + 2 b^2 y^3 + 5 b^3 y^4 + 14 b^4 y^5 (Catalan numbers): exact at low
        signal, 42 (b y)^5 relative at high signal (~1e-6 at 40 % of the ADC range)."""
        b = self.nonlinearity
        linear = np.stack(
            [np.zeros_like(b)] + [c * b ** (k - 1) for k, c in enumerate((1.0, 1.0, 2.0, 5.0, 14.0), start=1)]
        )
        return CalibrationFrames(dark=self.dark, dead=self.dead, flat=self.flat, linear_corr=linear, read=self.read)


def draw_detector(rng: np.random.Generator, pattern: ReadPattern, adc: AdcInfo) -> Detector:
    """Detector maps at the levels of the real calibration files (flat ~1 +- 1-2 %, dark median
    0.006/s with ~0.1 % hot pixels of 0.5-20/s, ~0.1 % dead pixels, read noise ~13 with a tail)."""
    h, w = FRAME_SHAPE[pattern.instrument]
    n = h * w
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    gradient = 0.01 * rng.uniform(-1, 1) * (xx - 0.5) + 0.01 * rng.uniform(-1, 1) * (yy - 0.5)
    flat = 1.0 + gradient + rng.uniform(0.008, 0.02) * rng.standard_normal((h, w))
    dead = np.zeros(n, dtype=bool)
    dead[rng.choice(n, size=min(n, rng.poisson(1e-3 * n + 1.0)), replace=False)] = True
    dark = 0.0063 * np.exp(0.2 * rng.standard_normal(n))
    hot = rng.choice(n, size=min(n, rng.poisson(1e-3 * n + 0.5)), replace=False)
    dark[hot] = 10.0 ** rng.uniform(math.log10(0.5), math.log10(20.0), size=len(hot))
    read = 12.2 + rng.gamma(2.0, 0.5, size=n)
    noisy = rng.uniform(size=n) < 0.02
    read[noisy] = np.minimum(25.0 * np.exp(0.6 * rng.standard_normal(int(noisy.sum()))), 150.0)
    read /= math.sqrt(pattern.scale)
    # ~3 % loss of response at 40 % of the ADC range, like the real linear_corr.
    full_range = ADC_MAX / adc.gain[pattern.instrument]
    nonlinearity = rng.normal(0.075, 0.008, size=(h, w)) / full_range
    if pattern.instrument == AIRS:
        # Zodiacal light and thermal emission rise toward the red end (low columns).
        wl = airs_column_wavelengths()
        background = np.broadcast_to(rng.uniform(0.5, 2.0) * (wl / 2.0) ** 2, (h, w)).copy()
    else:
        background = np.full((h, w), rng.uniform(0.1, 0.5))
    bias = 15.0 * rng.standard_normal((h, w))
    return Detector(
        flat=flat,
        dead=dead.reshape(h, w),
        dark=dark.reshape(h, w),
        read=read.reshape(h, w),
        nonlinearity=nonlinearity,
        background=background,
        bias=bias,
    )


# ---------------------------------------------------------------- pointing and gain


@dataclass(frozen=True)
class Pointing:
    """Pointing offsets per CDS pair, each the mean over the pair's long integration.

    Shapes: fgs1 (n_fgs1_pairs, 2) [dx, dy] FGS1 px; airs (n_airs_pairs, 2) [dx along columns,
    dy along rows] AIRS px.
    """

    fgs1: np.ndarray
    airs: np.ndarray


def draw_pointing(rng: np.random.Generator, fgs1: ReadPattern, airs: ReadPattern) -> Pointing:
    """Slow drift + Ornstein-Uhlenbeck wander + high-frequency jitter, seen by both instruments.

    The slow part (a quadratic drift of up to ~0.4 px and an AR(1) process of 0.02-0.12 px with
    a 1-15 min correlation time) is sampled at the FGS1 pairs and averaged over each AIRS long
    integration. The high-frequency jitter (0.05-0.3 px rms at the real 0.1 s integration) is
    white, so its mean over an integration of t seconds has rms sigma sqrt(0.1 s / t).
    """
    t = fgs1.pair_time_h() * 3600.0
    tau = t / VISIT_S - 0.5
    dt = fgs1.pair_s
    slow = np.empty((len(t), 2))
    for axis in range(2):
        drift = rng.normal(0.0, 0.2) * tau + rng.normal(0.0, 0.3) * (tau**2 - 1.0 / 12.0)
        sigma = rng.uniform(0.02, 0.12)
        phi = math.exp(-dt / rng.uniform(60.0, 900.0))
        kicks = sigma * math.sqrt(1.0 - phi * phi) * rng.standard_normal(len(t))
        kicks[0] = sigma * rng.standard_normal()
        slow[:, axis] = drift + lfilter([1.0], [1.0, -phi], kicks)
    hf = rng.uniform(0.05, 0.3)
    fgs1_offsets = slow + hf * math.sqrt(REAL_SHORT_S / fgs1.long_s) * rng.standard_normal((len(t), 2))

    # Mean of the slow part over each AIRS long integration, from its running integral (held
    # constant beyond the first and last FGS1 pairs so every window lies inside).
    t_ext = np.concatenate([[0.0], t, [VISIT_S]])
    s_ext = np.concatenate([slow[:1], slow, slow[-1:]])
    integral = np.concatenate(
        [np.zeros((1, 2)), np.cumsum(0.5 * (s_ext[1:] + s_ext[:-1]) * np.diff(t_ext)[:, None], axis=0)]
    )
    windows = airs.read_time_h().reshape(-1, 2) * 3600.0
    at = np.stack([[np.interp(windows[:, k], t_ext, integral[:, a]) for a in range(2)] for k in range(2)])
    mean = ((at[1] - at[0]) / (windows[:, 1] - windows[:, 0])).T
    hf_airs = hf * math.sqrt(REAL_SHORT_S / airs.long_s) * rng.standard_normal(mean.shape)
    airs_offsets = (mean + hf_airs) @ AIRS_FROM_FGS1.T
    return Pointing(fgs1=fgs1_offsets, airs=airs_offsets)


def draw_gain_drift(rng: np.random.Generator, time_h: np.ndarray) -> np.ndarray:
    """Slow multiplicative gain drift, 100-500 ppm over the visit: a mix of an exponential
    settling ramp and a linear trend. Shapes: time_h (T,) -> (T,)."""
    amplitude = rng.choice([-1.0, 1.0]) * rng.uniform(100e-6, 500e-6)
    settle = rng.uniform(0.3, 3.0)
    mix = rng.uniform()
    t = np.asarray(time_h, dtype=np.float64)
    ramp = -np.expm1(-t / settle) / -math.expm1(-VISIT_HOURS / settle)
    return 1.0 + amplitude * (mix * ramp + (1.0 - mix) * t / VISIT_HOURS)


# ---------------------------------------------------------------- optics


@dataclass(frozen=True)
class Optics:
    """Where the light falls and how pixels respond inside.

    centre: FGS1 PSF centre (x, y) px, or for AIRS (0, trace row at the middle column);
    tilt: AIRS trace row change from column 0 to 355 (0 for FGS1); ipr: amplitude a of the
    intrapixel response 1 + a cos(2 pi u) (u from the pixel centre, in px; separable in x, y).
    """

    instrument: str
    centre: tuple[float, float]
    tilt: float
    ipr: float


def draw_optics(rng: np.random.Generator, instrument: str) -> Optics:
    """Trace row or PSF centre near the real ones, a small AIRS trace tilt, and the intrapixel
    amplitude (4-12 %) of one visit."""
    if instrument == AIRS:
        return Optics(AIRS, (0.0, 15.6 + rng.normal(0.0, 0.15)), rng.uniform(-0.2, 0.2), rng.uniform(0.04, 0.12))
    # The lobes pull the centroid ~0.8 px down: the real centroid sits near (15.3, 15.4).
    centre = (15.1 + rng.normal(0.0, 0.3), 15.0 + rng.normal(0.0, 0.3))
    return Optics(FGS1, centre, 0.0, rng.uniform(0.04, 0.12))


def _subpixels(ipr: float) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel offsets from the pixel centre and their response weights (mean 1)."""
    u = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE - 0.5
    return u.astype(np.float32), (1.0 + ipr * np.cos(2.0 * np.pi * u)).astype(np.float32)


def _gaussian_pixels(centre: np.ndarray, sigma: np.ndarray, n_pix: int, ipr: float) -> np.ndarray:
    """Response of ``n_pix`` pixels to unit-flux 1-D Gaussians, integrated on the sub-pixel
    grid with the intrapixel weights. Shapes: centre, sigma broadcastable (..., ) -> (..., n_pix)."""
    u, weight = _subpixels(ipr)
    x = np.arange(n_pix, dtype=np.float32)[:, None] + u
    c = np.asarray(centre, dtype=np.float32)[..., None, None]
    s = np.asarray(sigma, dtype=np.float32)[..., None, None]
    g = np.exp(-0.5 * np.square((x - c) / s)) / (math.sqrt(2.0 * math.pi) * s)
    return g @ weight / SUPERSAMPLE


@dataclass(frozen=True)
class Scene:
    """The light reaching one instrument during one visit.

    source: FGS1 stellar rate (units/s, shape ()) or AIRS stellar rate per column (356,);
    modulation: transit x gain drift per pair, (n_pairs,) for FGS1 or (n_pairs, 356) for AIRS;
    offsets: pointing per pair (n_pairs, 2).
    """

    optics: Optics
    source: np.ndarray
    modulation: np.ndarray
    offsets: np.ndarray

    def star_rate(self, lo: int, hi: int) -> np.ndarray:
        """Stellar rate per pixel (units/s, before the flat) for pairs lo..hi-1. Shapes: -> (hi - lo, 32, W) float32."""
        if self.optics.instrument == AIRS:
            return self._airs(lo, hi)
        return self._fgs1(lo, hi)

    def _fgs1(self, lo: int, hi: int) -> np.ndarray:
        psf = np.array(FGS1_PSF, dtype=np.float32)
        h, w = FRAME_SHAPE[FGS1]
        off = self.offsets[lo:hi].astype(np.float32)
        cx = self.optics.centre[0] + psf[:, 1] + off[:, :1]
        cy = self.optics.centre[1] + psf[:, 2] + off[:, 1:]
        rx = _gaussian_pixels(cx, np.broadcast_to(psf[:, 3], cx.shape), w, self.optics.ipr)
        ry = _gaussian_pixels(cy, np.broadcast_to(psf[:, 4], cy.shape), h, self.optics.ipr)
        scale = (float(self.source) * self.modulation[lo:hi]).astype(np.float32)
        # Sum over components of outer products: a batched (y, c) @ (c, x) product.
        image = np.matmul((ry * psf[None, :, 0, None]).transpose(0, 2, 1), rx)
        return image * scale[:, None, None]

    def _airs(self, lo: int, hi: int) -> np.ndarray:
        h, w = FRAME_SHAPE[AIRS]
        off = self.offsets[lo:hi].astype(np.float32)
        # Spatial profile at a few columns, linearly interpolated across the others.
        nodes = np.linspace(0.0, w - 1.0, AIRS_PROFILE_NODES)
        wl = np.interp(nodes, np.arange(w), airs_column_wavelengths())
        prof = np.array(AIRS_PROFILE, dtype=np.float32)
        rows = self.optics.centre[1] + self.optics.tilt * (nodes / (w - 1.0) - 0.5)
        centre = rows[None, :, None] + prof[None, None, :, 1] + off[:, 1, None, None]
        sigma = np.broadcast_to(prof[None, None, :, 2] * ((wl / 1.95) ** AIRS_WIDTH_POWER)[None, :, None], centre.shape)
        spatial = np.einsum("knpr,p->knr", _gaussian_pixels(centre, sigma, h, self.optics.ipr), prof[:, 0])
        weights = np.clip(1.0 - np.abs(np.arange(w)[None, :] - nodes[:, None]) / (nodes[1] - nodes[0]), 0.0, None)
        spatial = np.matmul(spatial.transpose(0, 2, 1), weights.astype(np.float32))
        # Spectral direction: the LSF-blurred spectrum, shifted and sampled with the intrapixel response.
        u, weight = _subpixels(self.optics.ipr)
        fine_x, fine_s = _airs_fine_spectrum(self.source)
        pos = np.arange(w, dtype=np.float32)[None, :, None] + u - off[:, 0, None, None]
        spectral = np.interp(pos, fine_x, fine_s).astype(np.float32) @ weight / SUPERSAMPLE
        return spatial * (spectral * self.modulation[lo:hi]).astype(np.float32)[:, None, :]


def _airs_fine_spectrum(column_rate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The column rates as a continuous density on the sub-pixel grid, blurred by the LSF.
    Shapes: column_rate (356,) -> x, rate (n_fine,)."""
    w = len(column_rate)
    pad = 8
    x = np.arange(-pad * SUPERSAMPLE, (w + pad) * SUPERSAMPLE) / SUPERSAMPLE
    s = np.interp(x, np.arange(w), column_rate)
    k = np.arange(-4 * SUPERSAMPLE, 4 * SUPERSAMPLE + 1) / SUPERSAMPLE
    kernel = np.exp(-0.5 * (k / AIRS_LSF_SIGMA) ** 2)
    return x, np.convolve(s, kernel / kernel.sum(), mode="same")


# ---------------------------------------------------------------- raw reads


@dataclass(frozen=True)
class CosmicRays:
    """Cosmic-ray hits of one visit. Shapes (m,): pair, pixel (flat index), charge (units),
    short (True when the hit lands in the short integration, so both reads of the pair carry it)."""

    pair: np.ndarray
    pixel: np.ndarray
    charge: np.ndarray
    short: np.ndarray


def draw_cosmic_rays(rng: np.random.Generator, pattern: ReadPattern, mean_hits: float = 3.0) -> CosmicRays:
    """A few hits per visit, 500-30,000 units each, on a pixel and sometimes a neighbour."""
    h, w = FRAME_SHAPE[pattern.instrument]
    m = int(rng.poisson(mean_hits))
    pair = rng.integers(0, pattern.n_pairs, size=m)
    y, x = rng.integers(0, h, size=m), rng.integers(0, w, size=m)
    charge = 10.0 ** rng.uniform(math.log10(500.0), math.log10(3e4), size=m)
    short = rng.uniform(size=m) < pattern.short_s / (pattern.short_s + pattern.long_s)
    # A grazing track leaves part of its charge in one 4-neighbour.
    spill = rng.uniform(size=m) < 0.5
    step = np.array([(0, 1), (0, -1), (1, 0), (-1, 0)])[rng.integers(0, 4, size=m)]
    y2, x2 = np.clip(y + step[:, 0], 0, h - 1), np.clip(x + step[:, 1], 0, w - 1)
    share = rng.uniform(0.1, 0.5, size=m) * spill
    return CosmicRays(
        pair=np.concatenate([pair, pair[spill]]),
        pixel=np.concatenate([y * w + x, (y2 * w + x2)[spill]]),
        charge=np.concatenate([charge * (1.0 - share), (charge * share)[spill]]),
        short=np.concatenate([short, short[spill]]),
    )


def photon_counts(rng: np.random.Generator, mean: np.ndarray, exact_below: float = POISSON_EXACT_BELOW) -> np.ndarray:
    """Photon counts of the given means: exact Poisson below ``exact_below``, the normal
    approximation of the same variance above (skewness < 0.1 at 100 counts; far cheaper to draw).
    Shapes: mean (...) float32 -> (...) float32."""
    counts = mean + np.sqrt(mean) * rng.standard_normal(mean.shape, dtype=np.float32)
    small = mean < exact_below
    if small.any():
        counts[small] = rng.poisson(mean[small])
    return counts


def chunk_pairs(instrument: str) -> int:
    """CDS pairs rendered at once: about CHUNK_PIXELS pixels, so memory stays bounded at any scale."""
    h, w = FRAME_SHAPE[instrument]
    return max(1, CHUNK_PIXELS // (h * w))


def render_reads(
    rng: np.random.Generator,
    scene: Scene,
    detector: Detector,
    pattern: ReadPattern,
    adc: AdcInfo,
    cosmic: CosmicRays,
) -> np.ndarray:
    """Raw uint16 reads of one instrument for one visit.

    Per pair: charge rates (star + background) x flat + dark; photon counts of the short and
    the long integration (dead pixels collect none) plus cosmic rays; read 2k = bias + reset +
    short, read 2k+1 = read 2k + long; the non-linearity v - b v^2; Gaussian read noise per read;
    ADC encoding. Vectorised over chunks of pairs.
    Shapes: -> (n_reads, 32, W) uint16.
    """
    inst = pattern.instrument
    h, w = FRAME_SHAPE[inst]
    out = np.empty((pattern.n_reads, h * w), dtype=np.uint16)
    live = (~detector.dead).ravel().astype(np.float32)
    flat = (detector.flat.ravel() * live).astype(np.float32)
    background = (detector.background.ravel() * flat).astype(np.float32)
    dark = (detector.dark.ravel() * live).astype(np.float32)
    read = detector.read.ravel().astype(np.float32)
    b = detector.nonlinearity.ravel().astype(np.float32)
    bias = detector.bias.ravel().astype(np.float32)
    step = chunk_pairs(inst)
    for lo in range(0, pattern.n_pairs, step):
        hi = min(lo + step, pattern.n_pairs)
        rate = scene.star_rate(lo, hi).reshape(hi - lo, -1)
        rate *= flat
        rate += background
        rate += dark
        # The short charge cancels in CDS and its noise hides under the read noise (>= 12 units
        # per read), so its shape needs no exact Poisson draw.
        short = photon_counts(rng, rate * np.float32(pattern.short_s), exact_below=0.0)
        long = photon_counts(rng, rate * np.float32(pattern.long_s))
        hits = (cosmic.pair >= lo) & (cosmic.pair < hi)
        for k, pix, q, in_short in zip(
            cosmic.pair[hits] - lo, cosmic.pixel[hits], cosmic.charge[hits], cosmic.short[hits], strict=True
        ):
            # A dead pixel collects no charge, from a cosmic ray either.
            (short if in_short else long)[k, pix] += q * live[pix]
        reset = np.repeat(RESET_SIGMA * rng.standard_normal((hi - lo, h), dtype=np.float32), w, axis=1)
        first = short + reset + bias
        second = first + long
        for parity, value in ((0, first), (1, second)):
            value -= b * value * value
            value += read * rng.standard_normal(value.shape, dtype=np.float32)
            out[2 * lo + parity : 2 * hi : 2] = adc.encode(value, inst)
    return out.reshape(pattern.n_reads, h, w)


# ---------------------------------------------------------------- noise-free extraction


@dataclass(frozen=True)
class Extracted:
    """Per-pair photometry of noise-free frames as the calibrator measures it, with the noise
    the real frames would add.

    Shapes: flux, var (n_pairs, k) in units/s and (units/s)^2, k = 282 (AIRS, ascending
    wavelength) or 1 (FGS1); position, position_var (n_pairs, 2) px and px^2.
    """

    flux: np.ndarray
    var: np.ndarray
    position: np.ndarray
    position_var: np.ndarray


def _cds_variance(
    rate: np.ndarray, flat: np.ndarray, dark: np.ndarray, read: np.ndarray, t: float, gain: float
) -> np.ndarray:
    """Variance of a dark-subtracted, flat-fielded CDS pixel, per pair: Poisson charge of star,
    background and dark, two reads of read noise and of ADC rounding, over flat^2.
    Shapes: rate (n, ...) units/s before the flat; flat, dark, read broadcastable -> (n, ...)."""
    charge = (rate * flat + dark) * t
    return (charge + 2.0 * read**2 + 2.0 / (12.0 * gain**2)) / flat**2


def extract_airs(scene: Scene, detector: Detector, pattern: ReadPattern, adc: AdcInfo) -> Extracted:
    """Box extraction of noise-free AIRS frames, as the calibrator does it: trace row = brightest
    row of a mid-visit frame; flux = sum over the rows within AIRS_HALFWIDTH minus as many times
    the mean of the rows beyond AIRS_BKG_GAP; columns 39..320 reversed (ascending wavelength).
    position = [true spectral shift toward longer wavelength in bins (what the calibrator's
    cross-correlation estimates), row centroid of the net trace], both from their medians.
    """
    t, gain = pattern.long_s, adc.gain[AIRS]
    cols = airs_detector_columns()
    flat, dark, read = detector.flat[:, cols], detector.dark[:, cols], detector.read[:, cols]
    background = detector.background[:, cols]
    mid = pattern.n_pairs // 2
    ref = scene.star_rate(mid, mid + 1)[0][:, cols] + background
    rows = np.arange(ref.shape[0])
    centre = int(np.argmax(ref.sum(axis=1)))
    ap, bkg = np.abs(rows - centre) <= AIRS_HALFWIDTH, np.abs(rows - centre) > AIRS_BKG_GAP
    ratio = ap.sum() / bkg.sum()
    y = rows[ap].astype(np.float64)
    flux = np.empty((pattern.n_pairs, len(cols)))
    var = np.empty_like(flux)
    dy, dy_var = np.empty(pattern.n_pairs), np.empty(pattern.n_pairs)
    step = chunk_pairs(AIRS)
    for lo in range(0, pattern.n_pairs, step):
        hi = min(lo + step, pattern.n_pairs)
        rate = scene.star_rate(lo, hi)[:, :, cols].astype(np.float64) + background
        net = rate[:, ap] - rate[:, bkg].mean(axis=1, keepdims=True)
        pix_var = _cds_variance(rate, flat, dark, read, t, gain) / t**2
        flux[lo:hi] = net.sum(axis=1)
        var[lo:hi] = pix_var[:, ap].sum(axis=1) + ratio**2 * pix_var[:, bkg].sum(axis=1)
        profile = net.sum(axis=2)
        total = profile.sum(axis=1)
        dy[lo:hi] = profile @ y / total
        dy_var[lo:hi] = (pix_var[:, ap].sum(axis=2) * (y - dy[lo:hi, None]) ** 2).sum(axis=1) / total**2
    shift = -(scene.offsets[:, 0] - np.median(scene.offsets[:, 0]))
    position = np.stack([shift, dy - np.median(dy)], axis=1)
    return Extracted(
        flux=flux, var=var, position=position, position_var=np.stack([np.zeros_like(dy_var), dy_var], axis=1)
    )


def _fgs1_geometry(ref: np.ndarray, dead: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Aperture and background pixels around the refined centroid of a frame, as the calibrator
    finds them. Shapes: ref, dead (32, 32) -> aperture, background (32, 32) bool."""
    y, x = np.indices(ref.shape)
    cy, cx = (float(v) for v in np.unravel_index(np.argmax(ref), ref.shape))
    # The aperture moves by well under a pixel after the first refinement.
    for _ in range(3):
        r = np.hypot(x - cx, y - cy)
        level = ref[(r > FGS1_BKG_RADIUS) & ~dead].mean()
        ap = r <= FGS1_RADIUS
        weight = ref[ap] - level
        cx, cy = float(x[ap] @ weight / weight.sum()), float(y[ap] @ weight / weight.sum())
    r = np.hypot(x - cx, y - cy)
    return r <= FGS1_RADIUS, (r > FGS1_BKG_RADIUS) & ~dead


def extract_fgs1(scene: Scene, detector: Detector, pattern: ReadPattern, adc: AdcInfo) -> Extracted:
    """Aperture photometry of noise-free FGS1 frames, as the calibrator does it: a fixed circle of
    FGS1_RADIUS around the centroid of a mid-visit frame, background the mean beyond
    FGS1_BKG_RADIUS; position = flux-weighted centroid (x, y) over the aperture, px.
    """
    t, gain = pattern.long_s, adc.gain[FGS1]
    mid = pattern.n_pairs // 2
    ap, sky = _fgs1_geometry(scene.star_rate(mid, mid + 1)[0] + detector.background, detector.dead)
    ratio = ap.sum() / sky.sum()
    y, x = np.indices(ap.shape)
    xy = np.stack([x[ap], y[ap]], axis=1).astype(np.float64)
    flux = np.empty((pattern.n_pairs, 1))
    var = np.empty_like(flux)
    position, position_var = np.empty((pattern.n_pairs, 2)), np.empty((pattern.n_pairs, 2))
    step = chunk_pairs(FGS1)
    for lo in range(0, pattern.n_pairs, step):
        hi = min(lo + step, pattern.n_pairs)
        rate = scene.star_rate(lo, hi).astype(np.float64) + detector.background
        net = rate[:, ap] - rate[:, sky].mean(axis=1, keepdims=True)
        pix_var = _cds_variance(rate, detector.flat, detector.dark, detector.read, t, gain) / t**2
        total = net.sum(axis=1)
        flux[lo:hi, 0] = total
        var[lo:hi, 0] = pix_var[:, ap].sum(axis=1) + ratio**2 * pix_var[:, sky].sum(axis=1)
        centroid = net @ xy / total[:, None]
        position[lo:hi] = centroid
        for axis in range(2):
            lever = (xy[None, :, axis] - centroid[:, axis, None]) ** 2
            position_var[lo:hi, axis] = (pix_var[:, ap] * lever).sum(axis=1) / total**2
    return Extracted(flux=flux, var=var, position=position, position_var=position_var)
