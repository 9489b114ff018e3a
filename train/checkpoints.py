"""Checkpoints of a training run: best/last/interval files written atomically, RNG state, early stopping.

A checkpoint is the dict of DESIGN.md, ``{"model", "model_config", "calibration", "meta"}``, plus an
optional ``"train_state"`` for resuming (optimizer/scheduler state dicts, step, epoch, phase,
:func:`rng_state`, early-stopping and checkpoint-manager state). Everything in it loads with
``torch.load(weights_only=True)``: tensors, python scalars, strings, lists and dicts only.

Files in the checkpoint directory:

- ``last.pt``            every save when ``save_last``;
- ``best.pt``            when ``metrics[save_best_on]`` improves on the best so far (strictly);
  its ``meta`` gains ``best_metric``, ``best_value`` and ``epoch``;
- ``epoch_{epoch:04d}.pt`` when ``interval_epochs > 0`` and ``epoch % interval_epochs == 0``; only the
  newest ``keep`` of them stay.

Each file is written to a temporary name in the same directory, fsynced, then ``os.replace``d, so a
crash mid-write never leaves a truncated checkpoint under a real name.
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spectramind.model.v50 import CHECKPOINT_KEYS, load_checkpoint_dict

__all__ = ["CheckpointManager", "EarlyStopping", "load_checkpoint", "rng_state", "set_rng_state"]

_LOG = logging.getLogger("spectramind.train")
_MODES = ("min", "max")
_EPOCH_FILE = re.compile(r"epoch_(\d{4,})\.pt")


def _improves(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """``value`` beats ``best`` by more than ``min_delta`` in direction ``mode``; NaN never improves."""
    if math.isnan(value):
        return False
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def _check_mode(mode: str, owner: str) -> None:
    if mode not in _MODES:
        raise ValueError(f"{owner} mode must be 'min' or 'max', got {mode!r}")


def _atomic_save(obj: Mapping[str, Any], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(dict(obj), tmp)
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class CheckpointManager:
    """Writes best/last/interval checkpoints of one run and remembers the best value for resume."""

    def __init__(
        self, dir: Path, save_best_on: str, mode: str, save_last: bool, interval_epochs: int, keep: int
    ) -> None:
        _check_mode(mode, "train.checkpoints")
        if interval_epochs < 0:
            raise ValueError(f"train.checkpoints.interval_epochs must be >= 0, got {interval_epochs}")
        if keep < 1:
            raise ValueError(f"train.checkpoints.keep must be >= 1, got {keep}")
        self.dir = Path(dir)
        self.save_best_on, self.mode = save_best_on, mode
        self.save_last, self.interval_epochs, self.keep = save_last, interval_epochs, keep
        self.best_value: float | None = None
        self.best_epoch: int | None = None

    @property
    def best_path(self) -> Path:
        return self.dir / "best.pt"

    @property
    def last_path(self) -> Path:
        return self.dir / "last.pt"

    def save(self, state: Mapping[str, Any], epoch: int, metrics: Mapping[str, float]) -> list[Path]:
        """Write the files this epoch calls for; returns their paths (possibly empty)."""
        missing = [k for k in CHECKPOINT_KEYS if k not in state]
        if missing:
            raise ValueError(f"checkpoint state lacks {', '.join(missing)} (epoch {epoch})")
        self.dir.mkdir(parents=True, exist_ok=True)
        value = metrics.get(self.save_best_on)
        improved = value is not None and _improves(float(value), self.best_value, self.mode)
        if value is None:
            _LOG.warning("epoch %d: metric %r missing from %s; best.pt not updated", epoch, self.save_best_on,
                         sorted(metrics))
        elif improved:
            self.best_value, self.best_epoch = float(value), epoch
        payload = dict(state)
        if "train_state" in payload:
            # The manager's own record travels inside the checkpoint so a resume knows the best so far.
            payload["train_state"] = {**payload["train_state"], "checkpoint_manager": self.state_dict()}
        written: list[Path] = []
        if self.save_last:
            _atomic_save(payload, self.last_path)
            written.append(self.last_path)
        if improved:
            meta = {**payload["meta"], "best_metric": self.save_best_on, "best_value": self.best_value, "epoch": epoch}
            _atomic_save({**payload, "meta": meta}, self.best_path)
            written.append(self.best_path)
            _LOG.info("epoch %d: new best %s = %.6g -> %s", epoch, self.save_best_on, self.best_value, self.best_path)
        if self.interval_epochs > 0 and epoch % self.interval_epochs == 0:
            path = self.dir / f"epoch_{epoch:04d}.pt"
            _atomic_save(payload, path)
            written.append(path)
            self._prune()
        return written

    def _prune(self) -> None:
        """Delete interval checkpoints beyond the newest ``keep`` (by epoch number, surviving resumes)."""
        found = sorted(
            (int(m.group(1)), p) for p in self.dir.iterdir() if (m := _EPOCH_FILE.fullmatch(p.name))
        )
        for _, path in found[: max(0, len(found) - self.keep)]:
            path.unlink()

    def state_dict(self) -> dict[str, Any]:
        return {
            "save_best_on": self.save_best_on, "mode": self.mode,
            "best_value": self.best_value, "best_epoch": self.best_epoch,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the best so far; a resume that monitors another metric or direction starts afresh."""
        if state.get("save_best_on") != self.save_best_on or state.get("mode") != self.mode:
            _LOG.warning(
                "checkpoint manager state monitors %s (%s), this run %s (%s); best value reset",
                state.get("save_best_on"), state.get("mode"), self.save_best_on, self.mode,
            )
            self.best_value = self.best_epoch = None
            return
        self.best_value, self.best_epoch = state.get("best_value"), state.get("best_epoch")


def rng_state() -> dict[str, Any]:
    """Python ``random``, numpy global and torch CPU (+ CUDA) RNG states as weights_only-loadable values."""
    version, internal, gauss = random.getstate()
    name, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss},
        "numpy": {
            "bit_generator": str(name), "key": [int(k) for k in key], "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured; CUDA state only when it matches this machine's devices."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state(
        (npy["bit_generator"], np.asarray(npy["key"], dtype=np.uint32), npy["pos"], npy["has_gauss"],
         npy["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
        else:
            _LOG.warning("CUDA RNG state of %d devices not restored on %d devices", len(cuda),
                         torch.cuda.device_count())


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` and check it has the DESIGN.md keys
    (:func:`spectramind.model.v50.load_checkpoint_dict`)."""
    return load_checkpoint_dict(path, map_location)


class EarlyStopping:
    """Stop after ``patience`` consecutive steps (at least one) in which ``monitor`` did not improve.

    Improvement is strict, by more than ``min_delta``.

    ``step(value)`` returns True once the run should stop; with ``enable`` False it tracks the best
    value but never asks to stop. NaN counts as no improvement.
    """

    def __init__(self, monitor: str, mode: str, patience: int, enable: bool = True, min_delta: float = 0.0) -> None:
        _check_mode(mode, "train.early_stopping")
        if patience < 0:
            raise ValueError(f"train.early_stopping.patience must be >= 0, got {patience}")
        self.monitor, self.mode, self.patience, self.enable, self.min_delta = monitor, mode, patience, enable, min_delta
        self.best: float | None = None
        self.bad_steps = 0
        self.stopped = False

    def step(self, value: float) -> bool:
        value = float(value)
        if _improves(value, self.best, self.mode, self.min_delta):
            self.best, self.bad_steps = value, 0
        else:
            self.bad_steps += 1
        self.stopped = self.enable and self.bad_steps >= max(self.patience, 1)
        return self.stopped

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "best": self.best, "bad_steps": self.bad_steps, "stopped": self.stopped}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("monitor") != self.monitor:
            _LOG.warning("early stopping state monitors %r, this run %r; state reset", state.get("monitor"),
                         self.monitor)
            return
        self.best, self.bad_steps, self.stopped = state["best"], int(state["bad_steps"]), bool(state["stopped"])
