"""RuntimeGuardrail with a fake clock: overrun, fast_kaggle_mode margin, telemetry cadence, message."""

import pytest
from omegaconf import OmegaConf

from spectramind.config import CONFIG_DIR
from train.guardrail import RuntimeGuardrail, RuntimeOverrun


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_overrun_then_raise_after_save():
    clock = Clock()
    guard = RuntimeGuardrail(0.001, assert_on_overrun=True, telemetry_interval_s=30, fast_kaggle_mode=False,
                             clock=clock)
    clock.t += 3.5  # 0.00097 h
    assert not guard.check()
    guard.raise_if_overrun("/ckpt/last.pt")
    clock.t += 0.82  # 0.0012 h
    assert guard.check() and guard.elapsed_h == pytest.approx(0.0012)
    message = "runtime guardrail: 0.0012 h elapsed > target_total_hours 0.001; checkpoint saved at /ckpt/last.pt"
    assert guard.overrun_message("/ckpt/last.pt") == message
    with pytest.raises(RuntimeOverrun, match="0.0012 h elapsed > target_total_hours 0.001"):
        guard.raise_if_overrun("/ckpt/last.pt")
    lenient = RuntimeGuardrail(0.001, assert_on_overrun=False, telemetry_interval_s=30, fast_kaggle_mode=False,
                               clock=clock)
    clock.t += 10
    assert lenient.check()
    lenient.raise_if_overrun(None)


def test_fast_kaggle_mode_keeps_ten_percent_margin():
    clock = Clock()
    plain = RuntimeGuardrail(1.0, True, 30, fast_kaggle_mode=False, clock=clock)
    fast = RuntimeGuardrail(1.0, True, 30, fast_kaggle_mode=True, clock=clock)
    clock.t += 0.85 * 3600
    assert not plain.check() and not fast.check()
    clock.t += 0.10 * 3600
    assert not plain.check() and fast.check()
    assert fast.telemetry()["budget_h"] == pytest.approx(0.9)
    assert "(fast_kaggle_mode budget 0.9 h)" in fast.overrun_message("x.pt")


def test_should_report_every_interval_and_config():
    clock = Clock()
    cfg = OmegaConf.load(CONFIG_DIR / "train" / "base.yaml").runtime_guardrails
    guard = RuntimeGuardrail.from_config(cfg, clock=clock)
    assert guard.target_total_hours == 9.0 and guard.telemetry_interval_s == 30
    seen = []
    for t in [10, 29.9, 30, 45, 60.5, 61, 200]:
        clock.t = 100 + t
        seen.append(guard.should_report())
    assert seen == [False, False, True, False, True, False, True]
    assert guard.telemetry()["remaining_h"] == pytest.approx(9.0 - 200 / 3600)
    with pytest.raises(ValueError, match="target_total_hours must be > 0"):
        RuntimeGuardrail(0, True, 30, False)
