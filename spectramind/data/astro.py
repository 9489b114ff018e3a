"""The astrophysics of the simulator: planet systems, transmission spectra, limb darkening,
transit light curves and the stellar spectrum the instruments see.

Priors follow the real ADC2025 training set (``train_star_info.csv``, 1,100 planets): stellar
radius 0.65-2.9 Rsun with the mass on the observed log Ms - log Rs relation, effective
temperature 4200-7000 K correlated with the radius, circular orbits with P 2.8-7.6 d and a
Kepler-consistent a/Rs (``sma``) in 4-21, inclination 85.5-90 deg. Draws are rejected until
the planet transits (impact parameter b = a cos i below 1 + Rp/Rs - ``IMPACT_MARGIN``) and the
transit, centred 2.5-5 h into the 7.5 h visit, leaves ``BASELINE_H`` of out-of-transit
baseline on both sides (so T14 <= ``MAX_T14_H``; the real set holds a few longer transits).

Spectrum: the white depth (Rp/Rs)^2 follows a gamma law with the ADC2025 label mean 0.0147
and std 0.0107 (truncated to 5e-4..0.06). The structure uses the isothermal transmission
approximation depth(lambda) = const + 2 H Rp / Rs^2 ln kappa(lambda), where kappa adds a
Rayleigh slope, a grey cloud deck and molecular bands (Gaussian in wavelength, at their real
positions) weighted by random abundances; the AIRS peak-to-trough is then set to a drawn
30-250 ppm (larger for planets with a larger scale height). The FGS1 bin sits a random
20-150 ppm off the AIRS continuum. Labels are bin averages of that spectrum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import batman
import numpy as np
from scipy.special import ndtr

from spectramind.bins import (
    AIRS_COEFFS_UM,
    AIRS_LAST_COLUMN,
    FGS1_BAND_UM,
    N_AIRS,
    N_BINS,
    airs_bin_edges,
    wavelengths,
)
from spectramind.data.adc import AIRS, FRAME_SHAPE

G_SI = 6.674e-11
M_SUN = 1.989e30
R_SUN = 6.957e8
M_JUP = 1.898e27
DAY_S = 86400.0
HC_OVER_K_UM = 14387.77  # h c / k_B in um K

RS_RANGE = (0.65, 2.9)
MS_RANGE = (0.45, 2.0)
TS_RANGE = (4200.0, 7000.0)
P_RANGE = (2.8, 7.6)
SMA_RANGE = (4.0, 21.0)
INC_RANGE = (85.5, 90.0)
MP_RANGE = (0.04, 25.0)
MID_TRANSIT_H = (2.5, 5.0)
MAX_T14_H = 5.0
BASELINE_H = 0.75
IMPACT_MARGIN = 0.1
DEPTH_MEAN = 0.0147
DEPTH_STD = 0.0107
DEPTH_RANGE = (5e-4, 0.06)
AMPLITUDE_PPM = (30.0, 250.0)
FGS1_OFFSET_PPM = (20.0, 150.0)
BRIGHTNESS_RANGE = (0.3, 1.6)
MAX_ATTEMPTS = 10_000

# Moments of ln(T_eq / g) over this prior (measured from 20,000 draws): they standardise the
# scale height so the spectral amplitude can follow it while staying in AMPLITUDE_PPM.
_LN_H_MEAN = 4.28
_LN_H_STD = 1.39

# Molecular bands: (centre um, Gaussian sigma um, relative peak cross-section). The real band
# heads within and near the FGS1/AIRS range; bands outside 1.9-3.9 um only shape the wings.
MOLECULE_BANDS: dict[str, tuple[tuple[float, float, float], ...]] = {
    "H2O": ((1.38, 0.05, 0.6), (1.87, 0.07, 1.0), (2.69, 0.10, 2.5), (2.85, 0.30, 0.6), (3.20, 0.50, 0.15)),
    "CO2": ((2.01, 0.03, 0.5), (2.06, 0.02, 0.3), (2.72, 0.05, 2.0), (4.27, 0.10, 10.0)),
    "CH4": ((1.67, 0.04, 0.5), (2.20, 0.04, 0.4), (2.32, 0.06, 1.0), (3.31, 0.08, 3.0)),
    "CO": ((2.35, 0.04, 0.5), (4.67, 0.10, 10.0)),
    "NH3": ((2.00, 0.04, 0.6), (2.25, 0.05, 0.5), (3.00, 0.08, 2.0)),
}
# log10 abundance ranges relative to the continuum opacity at 2 um; water is the usual one.
ABUNDANCE_LOG10 = {"H2O": (-2.0, 1.5), "CO2": (-3.0, 1.0), "CH4": (-3.0, 1.0), "CO": (-3.0, 1.0), "NH3": (-3.5, 0.5)}

# Stellar flux scale: the real sample planet 342072318 (Ts 4798 K) gives AIRS CDS frames of
# 1.76e7 units per 4.5 s and FGS1 frames of 2.2e5 units per 0.1 s; a brightness of 1 is that star.
REFERENCE_TS = 4798.0
AIRS_REFERENCE_RATE = 1.76e7 / 4.5
FGS1_REFERENCE_RATE = 2.2e5 / 0.1

_FINE_STEP_UM = 5e-4


@dataclass(frozen=True)
class System:
    """Star, orbit and white depth of one planet.

    Units: Rs, Ms solar; Ts K; Mp Jupiter masses; P days; sma in stellar radii; inc degrees;
    depth the white (Rp/Rs)^2 (mean of the AIRS labels); brightness a flux factor (1 = the
    real sample star).
    """

    Rs: float
    Ms: float
    Ts: float
    Mp: float
    P: float
    sma: float
    inc: float
    depth: float
    brightness: float

    @property
    def rp_rs(self) -> float:
        return math.sqrt(self.depth)

    @property
    def impact(self) -> float:
        return self.sma * math.cos(math.radians(self.inc))

    @property
    def duration_h(self) -> float:
        """First-to-fourth-contact duration T14 of the circular orbit, hours."""
        return transit_duration_h(self.P, self.sma, self.inc, self.rp_rs)

    def star_info(self) -> dict[str, float]:
        """The ``star_info.csv`` row without planet_id (column names of adc.STAR_COLUMNS)."""
        return {
            "Rs": self.Rs,
            "Ms": self.Ms,
            "Ts": self.Ts,
            "Mp": self.Mp,
            "e": 0.0,
            "P": self.P,
            "sma": self.sma,
            "i": self.inc,
        }


def transit_duration_h(period_d: float, sma: float, inc_deg: float, rp_rs: float) -> float:
    """T14 in hours for a circular orbit; 0 when the planet does not transit."""
    b = sma * math.cos(math.radians(inc_deg))
    chord = (1.0 + rp_rs) ** 2 - b * b
    if chord <= 0:
        return 0.0
    arg = min(1.0, math.sqrt(chord) / (sma * math.sin(math.radians(inc_deg))))
    return period_d * 24.0 / math.pi * math.asin(arg)


def draw_white_depth(rng: np.random.Generator) -> float:
    """(Rp/Rs)^2 from a gamma law with the ADC2025 label mean and std, truncated to DEPTH_RANGE."""
    shape = (DEPTH_MEAN / DEPTH_STD) ** 2
    scale = DEPTH_STD**2 / DEPTH_MEAN
    while True:
        depth = float(rng.gamma(shape, scale))
        if DEPTH_RANGE[0] <= depth <= DEPTH_RANGE[1]:
            return depth


def draw_system(rng: np.random.Generator) -> System:
    """A transiting planet system from the ADC2025-like priors (see the module docstring)."""
    depth = draw_white_depth(rng)
    k = math.sqrt(depth)
    for _ in range(MAX_ATTEMPTS):
        z_r = rng.standard_normal()
        rs = math.exp(math.log(1.25) + 0.32 * z_r)
        # Real set: ln Ms = 0.626 ln Rs - 0.053 with 0.10 scatter; Ts correlates 0.67 with Rs.
        ms = min(max(math.exp(0.626 * math.log(rs) - 0.053 + 0.10 * rng.standard_normal()), MS_RANGE[0]), MS_RANGE[1])
        ts = 5840.0 + 480.0 * (0.67 * z_r + 0.74 * rng.standard_normal())
        period = rng.uniform(*P_RANGE)
        a_kepler = (G_SI * ms * M_SUN * (period * DAY_S) ** 2 / (4 * math.pi**2)) ** (1 / 3) / (rs * R_SUN)
        sma = a_kepler * math.exp(0.05 * rng.standard_normal())
        # Density rising toward 90 deg, as in the real set (edge-on orbits transit more often).
        inc = INC_RANGE[0] + (INC_RANGE[1] - INC_RANGE[0]) * rng.uniform() ** 0.6
        if not (
            RS_RANGE[0] <= rs <= RS_RANGE[1]
            and TS_RANGE[0] <= ts <= TS_RANGE[1]
            and SMA_RANGE[0] <= sma <= SMA_RANGE[1]
        ):
            continue
        if sma * math.cos(math.radians(inc)) >= 1.0 + k - IMPACT_MARGIN:
            continue
        if transit_duration_h(period, sma, inc, k) > MAX_T14_H:
            continue
        break
    else:
        raise RuntimeError(f"no transiting system found in {MAX_ATTEMPTS} draws")
    mp = min(max(math.exp(math.log(0.95) + 1.0 * rng.standard_normal()), MP_RANGE[0]), MP_RANGE[1])
    brightness = min(
        max(math.exp(math.log(0.8) + 0.45 * rng.standard_normal()), BRIGHTNESS_RANGE[0]), BRIGHTNESS_RANGE[1]
    )
    return System(Rs=rs, Ms=ms, Ts=ts, Mp=mp, P=period, sma=sma, inc=inc, depth=depth, brightness=brightness)


def draw_mid_transit_h(rng: np.random.Generator, system: System, visit_h: float) -> float:
    """Mid-transit time (hours from the visit start) in MID_TRANSIT_H, leaving BASELINE_H each side."""
    half = 0.5 * system.duration_h
    lo = max(MID_TRANSIT_H[0], BASELINE_H + half)
    hi = min(MID_TRANSIT_H[1], visit_h - BASELINE_H - half)
    if lo > hi:
        raise ValueError(
            f"a {system.duration_h:.2f} h transit leaves no {BASELINE_H} h baseline in a {visit_h} h visit"
        )
    return float(rng.uniform(lo, hi))


# ---------------------------------------------------------------- spectrum


@dataclass(frozen=True)
class Atmosphere:
    """What shapes the transmission spectrum.

    abundances: molecule -> peak opacity relative to the continuum at 2 um; rayleigh, cloud:
    continuum opacities (Rayleigh at 2 um, grey); amplitude: AIRS peak-to-trough of the labels;
    fgs1_offset: FGS1 depth minus the AIRS continuum (10th percentile of the AIRS labels).
    """

    abundances: dict[str, float]
    rayleigh: float
    cloud: float
    amplitude: float
    fgs1_offset: float


def scale_height_score(system: System) -> float:
    """Standardised ln(T_eq / g): positive for puffy planets with large spectral features."""
    t_eq = system.Ts * math.sqrt(0.5 / system.sma)
    rp_m = system.rp_rs * system.Rs * R_SUN
    g = G_SI * system.Mp * M_JUP / rp_m**2
    return (math.log(t_eq / g) - _LN_H_MEAN) / _LN_H_STD


def draw_atmosphere(rng: np.random.Generator, system: System) -> Atmosphere:
    """Random abundances, continuum, amplitude and FGS1 offset for one planet."""
    abundances = {m: float(10.0 ** rng.uniform(*ABUNDANCE_LOG10[m])) for m in MOLECULE_BANDS}
    rayleigh = float(10.0 ** rng.uniform(-1.5, 0.5))
    cloud = float(10.0 ** rng.uniform(-2.0, 1.0))
    # Amplitude log-uniform over its range, ranked partly by the scale height.
    z = 0.6 * scale_height_score(system) + 0.8 * rng.standard_normal()
    lo, hi = (math.log(a * 1e-6) for a in AMPLITUDE_PPM)
    amplitude = math.exp(lo + (hi - lo) * float(ndtr(z)))
    # Scattering usually makes the optical deeper than the infrared continuum.
    sign = 1.0 if rng.uniform() < 0.75 else -1.0
    fgs1_offset = sign * rng.uniform(*FGS1_OFFSET_PPM) * 1e-6
    return Atmosphere(
        abundances=abundances, rayleigh=rayleigh, cloud=cloud, amplitude=amplitude, fgs1_offset=fgs1_offset
    )


def log_opacity(wl_um: np.ndarray, atmosphere: Atmosphere) -> np.ndarray:
    """ln kappa(lambda): Rayleigh + cloud + molecular bands. Shapes: wl_um (n,) -> (n,)."""
    wl = np.asarray(wl_um, dtype=np.float64)
    kappa = atmosphere.rayleigh * (wl / 2.0) ** -4 + atmosphere.cloud
    for molecule, bands in MOLECULE_BANDS.items():
        x = atmosphere.abundances.get(molecule, 0.0)
        for centre, sigma, strength in bands:
            kappa = kappa + x * strength * np.exp(-0.5 * ((wl - centre) / sigma) ** 2)
    return np.log(kappa)


def bin_average(wl_um: np.ndarray, values: np.ndarray, edges_um: np.ndarray) -> np.ndarray:
    """Average of a piecewise-linear function between consecutive edges.

    Shapes: wl_um, values (n,) ascending; edges_um (m + 1,) inside [wl_um[0], wl_um[-1]] -> (m,).
    """
    area = np.concatenate([[0.0], np.cumsum(0.5 * (values[1:] + values[:-1]) * np.diff(wl_um))])
    at = np.interp(edges_um, wl_um, area)
    return np.diff(at) / np.diff(edges_um)


def spectrum_labels(system: System, atmosphere: Atmosphere) -> np.ndarray:
    """Per-bin (Rp/Rs)^2 labels, FGS1 first: AIRS bins average the spectrum over their edges.

    Shapes: -> (283,).
    """
    edges = airs_bin_edges()
    wl = np.arange(edges[0] - _FINE_STEP_UM, edges[-1] + 2 * _FINE_STEP_UM, _FINE_STEP_UM)
    structure = bin_average(wl, log_opacity(wl, atmosphere), edges)
    span = float(np.ptp(structure))
    airs = system.depth + atmosphere.amplitude * (structure - structure.mean()) / span
    fgs1 = float(np.percentile(airs, 10)) + atmosphere.fgs1_offset
    return np.concatenate([[fgs1], airs])


# ---------------------------------------------------------------- limb darkening and transits


def limb_darkening(wl_um: np.ndarray, ts: float) -> tuple[np.ndarray, np.ndarray]:
    """Quadratic limb-darkening coefficients (u1, u2), smooth in wavelength, weaker toward the
    infrared and for hotter stars (a fit to the trend of Claret-style tables).

    Shapes: wl_um (n,) -> u1, u2 (n,).
    """
    wl = np.asarray(wl_um, dtype=np.float64)
    total = np.minimum(0.62 * (wl / 0.7) ** -0.45 * (5800.0 / ts) ** 0.6, 0.95)
    share = 0.65 * (wl / 0.7) ** -0.3
    return total * share, total * (1.0 - share)


def transit_light_curves(
    system: System,
    labels: np.ndarray,
    t_mid_h: float,
    time_h: np.ndarray,
    exp_time_s: float,
    bins: np.ndarray | None = None,
) -> np.ndarray:
    """Relative flux of the chosen bins (default all) at the given times, averaged over the exposure.

    One batman model is built on the time grid; each bin only changes rp and u, which batman
    recomputes without redoing the orbit. Exposures longer than a minute are supersampled.
    Shapes: labels (283,) (Rp/Rs)^2, FGS1 first; time_h (T,); bins (n,) label indices -> (n, T).
    """
    labels = np.asarray(labels, dtype=np.float64)
    if labels.shape != (N_BINS,):
        raise ValueError(f"labels must have shape ({N_BINS},), got {labels.shape}")
    bins = np.arange(N_BINS) if bins is None else np.asarray(bins)
    u1, u2 = limb_darkening(wavelengths(), system.Ts)
    params = batman.TransitParams()
    params.t0 = t_mid_h / 24.0
    params.per = system.P
    params.rp = system.rp_rs
    params.a = system.sma
    params.inc = system.inc
    params.ecc = 0.0
    params.w = 90.0
    params.limb_dark = "quadratic"
    params.u = [float(u1[0]), float(u2[0])]
    supersample = max(1, math.ceil(exp_time_s / 60.0))
    model = batman.TransitModel(
        params, np.asarray(time_h, dtype=np.float64) / 24.0, supersample_factor=supersample, exp_time=exp_time_s / DAY_S
    )
    out = np.empty((len(bins), len(time_h)))
    for row, j in enumerate(bins.tolist()):
        params.rp = math.sqrt(labels[j])
        params.u = [float(u1[j]), float(u2[j])]
        out[row] = model.light_curve(params)
    return out


# ---------------------------------------------------------------- stellar spectrum


def airs_column_wavelengths() -> np.ndarray:
    """Wavelength of every AIRS-CH0 detector column (column c is AIRS index 320 - c, the bin
    formula extrapolated beyond columns 39..320), as in axis_info. Shapes: -> (356,)."""
    j = AIRS_LAST_COLUMN - np.arange(FRAME_SHAPE[AIRS][1], dtype=np.float64)
    c0, c1, c2 = AIRS_COEFFS_UM
    return c0 + c1 * j + c2 * j * j


def airs_column_bins() -> np.ndarray:
    """Label index (1..282) whose light curve each detector column follows; columns beyond the
    labelled range follow the nearest edge bin. Shapes: -> (356,) int."""
    j = AIRS_LAST_COLUMN - np.arange(FRAME_SHAPE[AIRS][1])
    return 1 + np.clip(j, 0, N_AIRS - 1)


def photon_radiance(wl_um: np.ndarray, ts: float) -> np.ndarray:
    """Blackbody photon radiance per unit wavelength, arbitrary units. Shapes: (n,) -> (n,)."""
    wl = np.asarray(wl_um, dtype=np.float64)
    return wl**-4 / np.expm1(HC_OVER_K_UM / (wl * ts))


def airs_throughput(wl_um: np.ndarray) -> np.ndarray:
    """Smooth AIRS-CH0 throughput: sharp cut-offs near 1.95 and 3.89 um, a shelf below 1.9 um and
    a mild rise to the blue, fitted to the real sample frames. Shapes: (n,) -> (n,)."""
    wl = np.asarray(wl_um, dtype=np.float64)
    sig = lambda x: 0.5 * (1.0 + np.tanh(0.5 * x))  # noqa: E731
    red = sig((3.89 - wl) / 0.04)
    blue = 0.8 * sig((wl - 1.945) / 0.012) + 0.2 * sig((wl - 1.70) / 0.025)
    return (1.0 + 0.15 * np.maximum(0.0, 3.2 - wl)) * red * blue


def _airs_shape(ts: float) -> np.ndarray:
    wl = airs_column_wavelengths()
    j = AIRS_LAST_COLUMN - np.arange(len(wl), dtype=np.float64)
    dispersion = np.abs(AIRS_COEFFS_UM[1] + 2 * AIRS_COEFFS_UM[2] * j)
    return photon_radiance(wl, ts) * dispersion * airs_throughput(wl)


def _fgs1_band(ts: float) -> float:
    wl = np.linspace(FGS1_BAND_UM[0], FGS1_BAND_UM[1], 201)
    return float(photon_radiance(wl, ts).mean() * (FGS1_BAND_UM[1] - FGS1_BAND_UM[0]))


def airs_column_rates(system: System) -> np.ndarray:
    """Stellar photon rate per AIRS column (units/s, summed over the spatial profile), scaled so
    that the frame total is brightness x the real sample's. Shapes: -> (356,)."""
    shape = _airs_shape(system.Ts)
    return system.brightness * AIRS_REFERENCE_RATE * shape / shape.sum()


def fgs1_rate(system: System) -> float:
    """Stellar photon rate on FGS1 (units/s): the sample's, times brightness, times the change of
    the FGS1-to-AIRS colour of a blackbody at Ts relative to the sample star."""
    colour = _fgs1_band(system.Ts) / _airs_shape(system.Ts).sum()
    reference = _fgs1_band(REFERENCE_TS) / _airs_shape(REFERENCE_TS).sum()
    return system.brightness * FGS1_REFERENCE_RATE * colour / reference
