import numpy as np
import pandas as pd
import pytest

from spectramind.data import adc
from spectramind.data.errors import PlanetDataError


def _frames(n, inst, seed=0):
    h, w = adc.FRAME_SHAPE[inst]
    return np.random.default_rng(seed).integers(0, 65535, size=(n, h, w), dtype=np.uint16)


@pytest.mark.parametrize("inst", adc.INSTRUMENTS)
def test_signal_roundtrip(tmp_path, inst):
    frames = _frames(6, inst)
    path = tmp_path / f"{inst}_signal_0.parquet"
    adc.write_signal(path, frames)
    back = adc.read_signal(path, inst, planet_id=7)
    assert back.dtype == np.uint16 and back.shape == frames.shape
    np.testing.assert_array_equal(back, frames)


def test_signal_errors_name_planet_and_file(tmp_path):
    path = tmp_path / "AIRS-CH0_signal_0.parquet"
    with pytest.raises(PlanetDataError, match=r"planet 7 \(visit 0\).*AIRS-CH0_signal_0.parquet.*missing"):
        adc.read_signal(path, adc.AIRS, 7, 0)
    adc.write_signal(path, _frames(4, adc.FGS1))
    with pytest.raises(PlanetDataError, match="11392 columns"):
        adc.read_signal(path, adc.AIRS, 7, 0)
    adc.write_signal(path, _frames(3, adc.AIRS))
    with pytest.raises(PlanetDataError, match="even number of reads"):
        adc.read_signal(path, adc.AIRS, 7, 0)
    path.write_bytes(b"not parquet")
    with pytest.raises(PlanetDataError, match="cannot read parquet"):
        adc.read_signal(path, adc.AIRS, 7, 0)


def test_calibration_roundtrip_and_missing(tmp_path):
    h, w = adc.FRAME_SHAPE[adc.FGS1]
    rng = np.random.default_rng(1)
    cal = adc.CalibrationFrames(
        dark=rng.random((h, w)),
        dead=rng.random((h, w)) > 0.9,
        flat=1 + 0.01 * rng.standard_normal((h, w)),
        linear_corr=rng.random((6, h, w)),
        read=10 + rng.random((h, w)),
    )
    adc.write_calibration(tmp_path / "cal", cal)
    back = adc.read_calibration(tmp_path / "cal", adc.FGS1, 3, 1)
    for name in ("dark", "dead", "flat", "linear_corr", "read"):
        np.testing.assert_array_equal(getattr(back, name), getattr(cal, name))
    (tmp_path / "cal" / "flat.parquet").unlink()
    with pytest.raises(PlanetDataError, match=r"planet 3 \(visit 1\).*flat.parquet.*missing"):
        adc.read_calibration(tmp_path / "cal", adc.FGS1, 3, 1)


def test_adc_encode_decode_inverse():
    info = adc.AdcInfo(gain={adc.AIRS: 0.4369, adc.FGS1: 0.4369}, offset={adc.AIRS: -1000.0, adc.FGS1: -1000.0})
    values = np.array([-1000.0, 0.0, 1234.5, 140000.0])
    raw = info.encode(values, adc.AIRS)
    assert raw.dtype == np.uint16
    np.testing.assert_allclose(info.decode(raw, adc.AIRS), values, atol=0.5 / 0.4369 + 1e-9)


def test_real_sample_tables(adc_sample):
    info = adc.read_adc_info(adc_sample)
    assert info.gain[adc.AIRS] == pytest.approx(0.4369) and info.offset[adc.FGS1] == -1000.0
    axis = adc.read_axis_info(adc_sample)
    assert len(axis.airs_time_h) == adc.REAL_READS[adc.AIRS]
    assert len(axis.fgs1_time_h) == adc.REAL_READS[adc.FGS1]
    assert len(axis.airs_column_um) == 356
    stars = adc.read_star_info(adc_sample, "train")
    assert 342072318 in stars.index and list(stars.columns) == list(adc.STAR_COLUMNS[1:])
    assert adc.list_visits(adc_sample, "train") == [(342072318, 0)]
    frames = adc.read_signal(adc.signal_path(adc_sample, "train", 342072318, 0, adc.AIRS), adc.AIRS, 342072318, 0)
    assert frames.shape == (50, 32, 356)


def test_list_visits_reports_empty_planet_folder(tmp_path):
    (tmp_path / "train" / "5").mkdir(parents=True)
    adc.write_signal(tmp_path / "train" / "9" / "FGS1_signal_1.parquet", _frames(2, adc.FGS1))
    assert adc.list_visits(tmp_path, "train") == [(5, 0), (9, 1)]
    assert adc.list_visits(tmp_path, "test") == []


def test_labels_missing_column_named(tmp_path):
    df = pd.DataFrame({"planet_id": [1], **{c: [0.01] for c in adc.WL_COLUMNS[:-1]}})
    df.to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(PlanetDataError, match="wl_283"):
        adc.read_labels(tmp_path / "train.csv")


def test_axis_info_rejects_inner_gaps(tmp_path):
    axis = adc.AxisInfo(
        airs_time_h=np.arange(4.0),
        airs_integration_s=np.array([0.1, 4.5, 0.1, 4.5]),
        fgs1_time_h=np.arange(8.0),
        airs_column_um=np.linspace(4, 1.6, 356),
    )
    adc.write_axis_info(tmp_path, axis)
    back = adc.read_axis_info(tmp_path)
    assert len(back.airs_time_h) == 4 and len(back.fgs1_time_h) == 8 and len(back.airs_column_um) == 356
    df = pd.read_parquet(tmp_path / "axis_info.parquet")
    df.loc[1, "FGS1-axis0-h"] = np.nan
    df.to_parquet(tmp_path / "axis_info.parquet", index=False)
    with pytest.raises(PlanetDataError, match="FGS1-axis0-h has NaN before its last value"):
        adc.read_axis_info(tmp_path)


def test_adc_info_rejects_bad_gain(tmp_path):
    pd.DataFrame([{"FGS1_adc_offset": -1000, "FGS1_adc_gain": 0.0, "AIRS-CH0_adc_offset": -1000, "AIRS-CH0_adc_gain": 0.4}]).to_csv(
        tmp_path / "adc_info.csv", index=False
    )
    with pytest.raises(PlanetDataError, match="adc_info.csv: FGS1_adc_gain must be a positive number"):
        adc.read_adc_info(tmp_path)
