"""The 283-bin spectral grid: FGS1 plus 282 AIRS-CH0 bins, molecule windows, detector seam.

Bin 0 is FGS1 (0.60-0.80 um, centre 0.7 um). Bins 1..282 are AIRS-CH0 in ascending
wavelength, lambda_j = 1.95176069 + 8.85825624e-3 j - 6.91347214e-6 j^2 um for j = 0..281,
which are raw detector columns 320, 319, ..., 39 (the detector reads red to blue).
Molecule windows and the seam index come from ``configs/model/symbolic_profiles.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import yaml

N_BINS = 283
N_AIRS = 282
FGS1_WAVELENGTH_UM = 0.7
FGS1_BAND_UM = (0.60, 0.80)
AIRS_FIRST_COLUMN = 39
AIRS_LAST_COLUMN = 320
AIRS_COEFFS_UM = (1.95176069, 8.85825624e-3, -6.91347214e-6)

PROFILES_PATH = Path(__file__).resolve().parents[1] / "configs" / "model" / "symbolic_profiles.yaml"


def airs_wavelengths() -> np.ndarray:
    """AIRS bin centres in um, ascending. Shape: (282,)."""
    j = np.arange(N_AIRS, dtype=np.float64)
    c0, c1, c2 = AIRS_COEFFS_UM
    return c0 + c1 * j + c2 * j * j


def wavelengths() -> np.ndarray:
    """Centre wavelength of every bin in um, FGS1 first. Shape: (283,)."""
    return np.concatenate([[FGS1_WAVELENGTH_UM], airs_wavelengths()])


def airs_detector_columns() -> np.ndarray:
    """Raw AIRS-CH0 detector column of each AIRS bin (bin 1 -> column 320). Shape: (282,)."""
    return AIRS_LAST_COLUMN - np.arange(N_AIRS)


def airs_bin_edges() -> np.ndarray:
    """Edges between neighbouring AIRS bin centres (midpoints, extrapolated at the ends). Shape: (283,)."""
    c = airs_wavelengths()
    mid = 0.5 * (c[1:] + c[:-1])
    return np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])


@dataclass(frozen=True)
class BinGrid:
    """The bin grid with its symbolic annotations.

    Attributes:
        wavelength_um: (283,) bin centres.
        seam_index: first bin index on the far side of the detector seam.
        molecule_windows: molecule -> inclusive (lo, hi) bin-index ranges.
        ratio_bounds: "A_B" -> (lo, hi) allowed ratio of molecule band strengths.
    """

    wavelength_um: np.ndarray
    seam_index: int
    molecule_windows: dict[str, tuple[tuple[int, int], ...]]
    ratio_bounds: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def molecules(self) -> tuple[str, ...]:
        return tuple(self.molecule_windows)

    def molecule_mask(self, name: str) -> np.ndarray:
        """Boolean mask of the bins inside ``name``'s windows. Shape: (283,)."""
        if name not in self.molecule_windows:
            raise KeyError(f"unknown molecule {name!r}; known: {', '.join(self.molecules)}")
        mask = np.zeros(N_BINS, dtype=bool)
        for lo, hi in self.molecule_windows[name]:
            mask[lo : hi + 1] = True
        return mask

    def molecule_tags(self) -> np.ndarray:
        """Per-bin molecule tag: 0 for none, k+1 for the k-th molecule. Shape: (283,), int64."""
        tags = np.zeros(N_BINS, dtype=np.int64)
        for k, name in enumerate(self.molecules):
            tags[self.molecule_mask(name) & (tags == 0)] = k + 1
        return tags


def grid_from_profile(profile: dict) -> BinGrid:
    """Build a :class:`BinGrid` from a ``symbolic_profiles`` mapping, checking every range."""
    seam = int(profile["seam_index"])
    if not 1 <= seam < N_BINS:
        raise ValueError(f"symbolic_profiles.seam_index must be in [1, {N_BINS - 1}], got {seam}")
    windows: dict[str, tuple[tuple[int, int], ...]] = {}
    for name, spec in dict(profile.get("molecule_windows", {})).items():
        ranges = []
        for lo, hi in spec["ranges"]:
            lo, hi = int(lo), int(hi)
            if not 0 <= lo <= hi < N_BINS:
                raise ValueError(
                    f"symbolic_profiles.molecule_windows.{name}: range [{lo}, {hi}] must satisfy 0 <= lo <= hi < {N_BINS}"
                )
            ranges.append((lo, hi))
        windows[str(name)] = tuple(ranges)
    bounds = {str(k): (float(v[0]), float(v[1])) for k, v in dict(profile.get("ratio_bounds", {})).items()}
    return BinGrid(wavelength_um=wavelengths(), seam_index=seam, molecule_windows=windows, ratio_bounds=bounds)


@lru_cache(maxsize=4)
def load_grid(profile_path: str | None = None) -> BinGrid:
    """The grid annotated from a symbolic_profiles YAML (default: the one in ``configs/model``)."""
    path = Path(profile_path) if profile_path else PROFILES_PATH
    with open(path) as fh:
        return grid_from_profile(yaml.safe_load(fh))
