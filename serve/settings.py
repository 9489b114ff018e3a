"""Server settings, read once from the environment (never from a request).

=================================  ==========================  ==========================================
variable                           default                     meaning
=================================  ==========================  ==========================================
``SPECTRAMIND_ARTIFACT``           ``outputs/artifacts/default``  artifact directory (``spectramind-export``)
``SPECTRAMIND_DEVICE``             ``auto``                    ``auto`` (cuda if available, else cpu),
                                                               ``cpu``, ``cuda`` or ``cuda:N``
``SPECTRAMIND_RUNTIME``            ``torchscript``             ``torchscript`` or ``onnx`` (ONNX Runtime)
``SPECTRAMIND_BATCHING``           ``on``                      ``on``/``off`` (off: batches of one)
``SPECTRAMIND_MAX_BATCH``          ``32``                      most planets in one forward
``SPECTRAMIND_MAX_QUEUE_DELAY_US`` ``2000``                    longest wait for a batch to fill (µs)
``SPECTRAMIND_MAX_QUEUE``          ``256``                     bounded queue length (then 429)
``SPECTRAMIND_DEADLINE_S``         ``30``                      default per-request deadline (then 504)
``SPECTRAMIND_MAX_BODY_BYTES``     ``67108864`` (64 MiB)       request body limit (413, the HTTP layer)
``SPECTRAMIND_SHAP_TIMEOUT_S``     ``60``                      explanation timeout (then 504)
``SPECTRAMIND_SHAP_SAMPLES``       ``2``                       Shapley permutations (0: the library's 8);
                                                               each costs 283 + 8 + 1 forwards
``SPECTRAMIND_EXPLAIN_TOP_K``      ``10``                      top edges / bins returned per explanation
``SPECTRAMIND_EXPLAIN_QUEUE``      ``16``                      bounded explanation queue (then 429)
``SPECTRAMIND_DRAIN_TIMEOUT_S``    ``30``                      graceful-shutdown drain limit
``SPECTRAMIND_THREADS``            ``1``                       torch / ONNX Runtime intra-op threads
``SPECTRAMIND_FEATURE_WORKERS``    ``2``                       feature thread pool (baseline fits)
``SPECTRAMIND_WARMUP_RTOL``        ``1e-4``                    golden comparison tolerance at start-up
=================================  ==========================  ==========================================

A malformed value raises ValueError naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

__all__ = ["Settings"]

_DEVICES = ("auto", "cpu", "cuda")
_RUNTIMES = ("torchscript", "onnx")
_TRUE = {"1", "on", "true", "yes"}
_FALSE = {"0", "off", "false", "no"}


@dataclass(frozen=True)
class Settings:
    """What the server runs and its limits (module docstring: the variables)."""

    artifact: Path = Path("outputs/artifacts/default")
    device: str = "auto"
    runtime: str = "torchscript"
    batching: bool = True
    max_batch: int = 32
    max_queue_delay_us: int = 2000
    max_queue: int = 256
    deadline_s: float = 30.0
    max_body_bytes: int = 64 * 1024 * 1024
    shap_timeout_s: float = 60.0
    shap_samples: int = 2
    explain_top_k: int = 10
    explain_queue: int = 16
    drain_timeout_s: float = 30.0
    threads: int = 1
    feature_workers: int = 2
    warmup_rtol: float = 1e-4

    def __post_init__(self) -> None:
        object.__setattr__(self, "artifact", Path(self.artifact))
        dev = self.device
        if not (dev in _DEVICES or (dev.startswith("cuda:") and dev[5:].isdigit())):
            raise ValueError(f"SPECTRAMIND_DEVICE must be one of {', '.join(_DEVICES)} or cuda:N, got {dev!r}")
        if self.runtime not in _RUNTIMES:
            raise ValueError(f"SPECTRAMIND_RUNTIME must be one of {', '.join(_RUNTIMES)}, got {self.runtime!r}")
        positive = {"max_batch": "SPECTRAMIND_MAX_BATCH", "max_queue": "SPECTRAMIND_MAX_QUEUE",
                    "max_body_bytes": "SPECTRAMIND_MAX_BODY_BYTES", "threads": "SPECTRAMIND_THREADS",
                    "feature_workers": "SPECTRAMIND_FEATURE_WORKERS", "explain_top_k": "SPECTRAMIND_EXPLAIN_TOP_K",
                    "explain_queue": "SPECTRAMIND_EXPLAIN_QUEUE", "deadline_s": "SPECTRAMIND_DEADLINE_S",
                    "shap_timeout_s": "SPECTRAMIND_SHAP_TIMEOUT_S", "warmup_rtol": "SPECTRAMIND_WARMUP_RTOL"}
        for name, var in positive.items():
            if not getattr(self, name) > 0:
                raise ValueError(f"{var} must be > 0, got {getattr(self, name)!r}")
        for name, var in (("max_queue_delay_us", "SPECTRAMIND_MAX_QUEUE_DELAY_US"),
                          ("drain_timeout_s", "SPECTRAMIND_DRAIN_TIMEOUT_S"),
                          ("shap_samples", "SPECTRAMIND_SHAP_SAMPLES")):
            if getattr(self, name) < 0:
                raise ValueError(f"{var} must be >= 0, got {getattr(self, name)!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Settings from ``env`` (default ``os.environ``); ``overrides`` win (tests, the CLI)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            var = "SPECTRAMIND_" + _VAR.get(f.name, f.name.upper())
            raw = env.get(var)
            if raw is None or raw.strip() == "":
                continue
            values[f.name] = _parse(var, raw.strip(), f.name)
        values.update(overrides)
        return cls(**values)

    def with_(self, **changes: Any) -> "Settings":
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: (str(v) if isinstance(v := getattr(self, f.name), Path) else v) for f in fields(self)}


_VAR = {"artifact": "ARTIFACT"}
_INTS = {"max_batch", "max_queue_delay_us", "max_queue", "max_body_bytes", "shap_samples", "explain_top_k",
         "explain_queue", "threads", "feature_workers"}
_FLOATS = {"deadline_s", "shap_timeout_s", "drain_timeout_s", "warmup_rtol"}


def _parse(var: str, raw: str, name: str) -> Any:
    if name == "batching":
        low = raw.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f"{var} must be on or off, got {raw!r}")
    if name in _INTS:
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{var} must be an integer, got {raw!r}") from None
    if name in _FLOATS:
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{var} must be a number, got {raw!r}") from None
    if name in ("device", "runtime"):
        return raw.lower()
    return raw
