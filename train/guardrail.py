"""Runtime guardrail: stop a run cleanly before it overruns its wall-clock budget.

The budget is ``target_total_hours``; with ``fast_kaggle_mode`` it is ``0.9 * target_total_hours``,
keeping a 10 % margin for what follows training inside a hard Kaggle session limit (calibration,
prediction, writing the submission).

Contract with the training loop: when :meth:`RuntimeGuardrail.check` turns True the loop saves its
checkpoint and stops; then :meth:`RuntimeGuardrail.raise_if_overrun` raises :class:`RuntimeOverrun`
(only when ``assert_on_overrun``) so the process exits non-zero *after* the checkpoint is on disk,
with :meth:`overrun_message` saying how long it ran and where the checkpoint is.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["FAST_KAGGLE_FACTOR", "RuntimeGuardrail", "RuntimeOverrun"]

FAST_KAGGLE_FACTOR = 0.9


class RuntimeOverrun(RuntimeError):
    """The run went past its time budget (raised after its checkpoint was saved)."""


class RuntimeGuardrail:
    """Wall-clock budget of one run, measured from construction with ``clock`` (seconds)."""

    def __init__(
        self,
        target_total_hours: float,
        assert_on_overrun: bool,
        telemetry_interval_s: float,
        fast_kaggle_mode: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not target_total_hours > 0:
            raise ValueError(f"train.runtime_guardrails.target_total_hours must be > 0, got {target_total_hours}")
        if telemetry_interval_s < 0:
            raise ValueError(f"train.runtime_guardrails.telemetry_interval_s must be >= 0, got {telemetry_interval_s}")
        self.target_total_hours = float(target_total_hours)
        self.assert_on_overrun = assert_on_overrun
        self.telemetry_interval_s = float(telemetry_interval_s)
        self.fast_kaggle_mode = fast_kaggle_mode
        self.budget_hours = self.target_total_hours * (FAST_KAGGLE_FACTOR if fast_kaggle_mode else 1.0)
        self._clock = clock
        self._t0 = clock()
        self._last_report = self._t0
        self.overrun = False

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], clock: Callable[[], float] = time.monotonic) -> RuntimeGuardrail:
        """Build from ``cfg.train.runtime_guardrails``."""
        return cls(
            float(cfg["target_total_hours"]), bool(cfg["assert_on_overrun"]), float(cfg["telemetry_interval_s"]),
            bool(cfg["fast_kaggle_mode"]), clock=clock,
        )

    @property
    def elapsed_h(self) -> float:
        return (self._clock() - self._t0) / 3600.0

    def check(self) -> bool:
        """True (and stays True) once the elapsed time exceeds the budget."""
        self.overrun = self.overrun or self.elapsed_h > self.budget_hours
        return self.overrun

    def should_report(self) -> bool:
        """True at most once every ``telemetry_interval_s`` seconds."""
        now = self._clock()
        if now - self._last_report >= self.telemetry_interval_s:
            self._last_report = now
            return True
        return False

    def telemetry(self) -> dict[str, float]:
        """Elapsed and remaining hours against the budget, for the run log."""
        elapsed = self.elapsed_h
        return {
            "elapsed_h": elapsed,
            "budget_h": self.budget_hours,
            "remaining_h": self.budget_hours - elapsed,
            "budget_fraction": elapsed / self.budget_hours,
        }

    def overrun_message(self, ckpt_path: Path | str | None) -> str:
        budget = f"target_total_hours {self.target_total_hours:g}"
        if self.fast_kaggle_mode:
            budget += f" (fast_kaggle_mode budget {self.budget_hours:g} h)"
        saved = f"checkpoint saved at {ckpt_path}" if ckpt_path is not None else "no checkpoint saved"
        return f"runtime guardrail: {self.elapsed_h:.4f} h elapsed > {budget}; {saved}"

    def raise_if_overrun(self, ckpt_path: Path | str | None) -> None:
        """Raise :class:`RuntimeOverrun` when the budget was exceeded and ``assert_on_overrun`` is set."""
        if self.check() and self.assert_on_overrun:
            raise RuntimeOverrun(self.overrun_message(ckpt_path))
