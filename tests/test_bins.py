import numpy as np
import pandas as pd
import pytest

from spectramind import bins
from tests.conftest import adc_sample_dir


def test_grid_formula_and_ends():
    wl = bins.wavelengths()
    assert wl.shape == (283,)
    assert wl[0] == 0.7
    assert wl[1] == pytest.approx(1.95176069)
    assert wl[-1] == pytest.approx(1.95176069 + 8.85825624e-3 * 281 - 6.91347214e-6 * 281**2)
    assert np.all(np.diff(wl[1:]) > 0)


def test_grid_matches_competition_wavelengths_csv():
    path = adc_sample_dir() / "wavelengths.csv"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    real = pd.read_csv(path).to_numpy()[0]
    np.testing.assert_allclose(bins.wavelengths(), real, atol=1e-7)


def test_detector_columns_reverse():
    cols = bins.airs_detector_columns()
    assert cols[0] == 320 and cols[-1] == 39 and len(cols) == 282


def test_seed_profile_windows():
    grid = bins.load_grid()
    assert grid.seam_index == 178
    assert grid.molecules == ("H2O", "CO2", "CH4")
    h2o = grid.molecule_mask("H2O")
    assert h2o[40] and h2o[85] and not h2o[86] and h2o[210] and h2o[240] and not h2o[241]
    tags = grid.molecule_tags()
    assert tags[0] == 0 and tags[100] == 2 and tags[282] == 3
    assert grid.ratio_bounds["CH4_H2O"] == (0.2, 3.0)


def test_bad_profile_names_the_field():
    with pytest.raises(ValueError, match="molecule_windows.H2O"):
        bins.grid_from_profile({"seam_index": 178, "molecule_windows": {"H2O": {"ranges": [[10, 400]]}}})
    with pytest.raises(ValueError, match="seam_index"):
        bins.grid_from_profile({"seam_index": 0})
    with pytest.raises(KeyError, match="NH3"):
        bins.load_grid().molecule_mask("NH3")
