"""CheckpointManager (best/last/interval/keep, atomic, resume), RNG state round trip, loading, early stopping."""

import logging
import math
import random

import numpy as np
import pytest
import torch

from train.checkpoints import CheckpointManager, EarlyStopping, load_checkpoint, rng_state, set_rng_state


def state(epoch: int) -> dict:
    return {
        "model": {"w": torch.full((3,), float(epoch))},
        "model_config": {"d_model": 3},
        "calibration": {},
        "meta": {"note": "unit"},
        "train_state": {"epoch": epoch, "step": 10 * epoch, "phase": "supervised", "rng": rng_state()},
    }


def test_best_last_interval_keep(tmp_path, caplog):
    mgr = CheckpointManager(tmp_path, "val/gll", "min", save_last=True, interval_epochs=2, keep=2)
    gll = {1: 3.0, 2: 2.0, 3: 2.5, 4: 1.0, 5: math.nan, 6: 1.5}
    written = {e: [p.name for p in mgr.save(state(e), e, {"val/gll": v})] for e, v in gll.items()}
    assert written == {
        1: ["last.pt", "best.pt"], 2: ["last.pt", "best.pt", "epoch_0002.pt"], 3: ["last.pt"],
        4: ["last.pt", "best.pt", "epoch_0004.pt"], 5: ["last.pt"], 6: ["last.pt", "epoch_0006.pt"],
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "epoch_0004.pt", "epoch_0006.pt", "last.pt"]
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["meta"] == {"note": "unit", "best_metric": "val/gll", "best_value": 1.0, "epoch": 4}
    assert torch.equal(best["model"]["w"], torch.full((3,), 4.0))
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["meta"] == {"note": "unit"} and last["train_state"]["epoch"] == 6
    assert last["train_state"]["checkpoint_manager"]["best_value"] == 1.0
    with caplog.at_level(logging.WARNING, logger="spectramind.train"):
        assert [p.name for p in mgr.save(state(7), 7, {"val/score": 0.1})] == ["last.pt"]
    assert "metric 'val/gll' missing" in caplog.text
    with pytest.raises(ValueError, match="lacks calibration, meta"):
        mgr.save({"model": {}, "model_config": {}}, 8, {"val/gll": 0.0})


def test_resume_keeps_best_and_prunes_across_managers(tmp_path):
    first = CheckpointManager(tmp_path, "val/score", "max", save_last=False, interval_epochs=1, keep=2)
    for epoch, score in [(1, 0.5), (2, 0.7)]:
        first.save(state(epoch), epoch, {"val/score": score})
    saved = load_checkpoint(tmp_path / "epoch_0002.pt")["train_state"]["checkpoint_manager"]
    second = CheckpointManager(tmp_path, "val/score", "max", save_last=False, interval_epochs=1, keep=2)
    second.load_state_dict(saved)
    assert (second.best_value, second.best_epoch) == (0.7, 2)
    assert [p.name for p in second.save(state(3), 3, {"val/score": 0.6})] == ["epoch_0003.pt"]
    assert [p.name for p in second.save(state(4), 4, {"val/score": 0.8})] == ["best.pt", "epoch_0004.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "epoch_0003.pt", "epoch_0004.pt"]
    other = CheckpointManager(tmp_path, "val/gll", "min", save_last=True, interval_epochs=0, keep=1)
    other.load_state_dict(saved)
    assert other.best_value is None
    with pytest.raises(ValueError, match="keep must be >= 1"):
        CheckpointManager(tmp_path, "val/gll", "min", True, 1, 0)


def draws():
    return random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3)


def test_rng_state_round_trip_through_weights_only(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.gauss(0, 1), np.random.randn()  # leave cached Gaussians behind: they are part of the state
    torch.save({"rng": rng_state()}, tmp_path / "rng.pt")
    expected = draws()
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    got = draws()
    assert got[:4] == expected[:4] and torch.equal(got[4], expected[4])


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be loaded with weights_only=True"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"model": {}, "meta": np.arange(3)}, tmp_path / "numpy.pt")
    with pytest.raises(ValueError, match="cannot be loaded with weights_only=True"):
        load_checkpoint(tmp_path / "numpy.pt")
    torch.save({"model": {}, "meta": {}}, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="lacks model_config, calibration"):
        load_checkpoint(tmp_path / "partial.pt")


def test_early_stopping():
    es = EarlyStopping("val/gll", "min", patience=2)
    assert [es.step(v) for v in [5.0, 4.0, 4.5, 4.2]] == [False, False, False, True]
    assert es.best == 4.0 and es.stopped
    resumed = EarlyStopping("val/gll", "min", patience=2)
    es2 = EarlyStopping("val/gll", "min", patience=2)
    es2.step(5.0), es2.step(5.5)
    resumed.load_state_dict(es2.state_dict())
    assert resumed.step(math.nan) is True  # second non-improvement after the resume: NaN never improves
    up = EarlyStopping("val/score", "max", patience=1, min_delta=0.1)
    assert [up.step(v) for v in [0.5, 0.55]] == [False, True]
    off = EarlyStopping("val/gll", "min", patience=0, enable=False)
    assert not any(off.step(v) for v in [1.0, 2.0, 3.0]) and off.best == 1.0
    with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
        EarlyStopping("val/gll", "lowest", 1)
