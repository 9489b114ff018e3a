import pytest

from spectramind.data.errors import PlanetDataError
from spectramind.data.runner import StrictFailure, run_planets


def square_or_fail(x: int) -> int:
    if x == 3:
        raise PlanetDataError(x, "FGS1_signal_0.parquet", "file is missing", 0)
    if x == 4:
        raise ZeroDivisionError("boom")
    return x * x


@pytest.mark.parametrize("workers", [1, 2])
def test_bad_items_are_skipped_and_named(workers):
    summary = run_planets(square_or_fail, [1, 2, 3, 4, 5], task="t", workers=workers, progress=False)
    assert summary.results == [1, 4, 25]
    assert sorted(f.item for f in summary.failures) == ["3", "4"]
    msgs = {f.item: f.error for f in summary.failures}
    assert msgs["3"] == "planet 3 (visit 0): FGS1_signal_0.parquet: file is missing"
    assert msgs["4"] == "ZeroDivisionError: boom"
    assert not summary.ok


@pytest.mark.parametrize("workers", [1, 2])
def test_strict_raises(workers):
    with pytest.raises(StrictFailure, match="planet 3"):
        run_planets(square_or_fail, [1, 3], task="t", workers=workers, strict=True, progress=False)
