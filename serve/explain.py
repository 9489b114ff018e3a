"""Explanations of a served prediction: GAT attention edges and Shapley values of the eager model.

The traced graphs of the artifact return only mu and sigma, so explanations come from the eager
:class:`spectramind.model.calibration.CalibratedV50` rebuilt from the checkpoint the artifact
carries (``ART/checkpoint.pt``, hashed with the rest), through :mod:`spectramind.model.explain`:

- attention: :func:`spectramind.model.explain.attention_top_edges`, the ``top_k`` strongest edges
  of every layer and head (``[{"layer", "head", "edges": [{"src", "dst", "weight",
  "src_wavelength_um", "dst_wavelength_um"}, ...]}, ...]``); one forward;
- SHAP: :func:`spectramind.model.explain.shap_groups` (captum ShapleyValueSampling over the 283
  bin rows and the FGS1 time segments; target the mean mu over the AIRS bins, zero baseline),
  the ``top_k`` bins by |value| (``[{"group", "kind", "bin", "wavelength_um", "steps",
  "value"}, ...]``); (283 + S + 1) forwards per permutation.

Both run on the service's low-priority explanation threads, never on the batcher's worker. SHAP
is cooperative: before every chunk of perturbed forwards it stops at its deadline
(TaskTimeoutError) and waits while predictions are queued or computing (``yield_to``), so
a running explanation takes the device only when predictions leave it idle. On a GPU it runs on
a low-priority CUDA stream.

Shapes: inputs fgs1 (T, 6), airs_nodes (283, 8) of one planet.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from serve.batcher import TaskTimeoutError
from spectramind.model.calibration import CalibratedV50
from spectramind.model.explain import DEFAULT_SHAP_SAMPLES, attention_top_edges, shap_groups

__all__ = ["Explainer", "NoAttention"]

log = logging.getLogger("spectramind.serve")

N_FGS1_SEGMENTS = 8
SHAP_CHUNK = 32  # perturbed planets per forward: the grain of deadline checks and yielding
_YIELD_SLEEP_S = 0.001


class NoAttention(ValueError):
    """The model's AIRS GNN backend has no attention to explain."""


class _Cooperative(nn.Module):
    """The calibrated model, checking a deadline and yielding to predictions before each forward."""

    def __init__(self, model: CalibratedV50) -> None:
        super().__init__()
        self.model = model
        self.deadline = float("inf")
        self.yield_to: Callable[[], bool] = lambda: False
        self.abandoned: Callable[[], bool] = lambda: False

    def forward(self, fgs1: Tensor, airs_nodes: Tensor):  # -> V50Output
        if self.abandoned():
            raise TaskTimeoutError("explanation abandoned: its request is already answered")
        while self.yield_to():
            if time.monotonic() > self.deadline:
                break
            time.sleep(_YIELD_SLEEP_S)
        if time.monotonic() > self.deadline:
            raise TaskTimeoutError("explanation stopped at its deadline")
        return self.model(fgs1, airs_nodes)


class Explainer:
    """Attention and SHAP of single planets from ``checkpoint`` on ``device``.

    Only the explanation threads call it (one per kind, so an attention answer never waits
    behind a running SHAP; both share the read-only model).
    """

    def __init__(self, checkpoint: Path, device: str, top_k: int = 10, shap_samples: int = 0) -> None:
        self.device = device
        self.top_k = int(top_k)
        self.shap_samples = int(shap_samples) or DEFAULT_SHAP_SAMPLES["sampling"]
        model = CalibratedV50.from_checkpoint(checkpoint, map_location=device).to(device).eval()
        self.model = model
        self.edges = model.model.edge_index_with_loops.to(device)
        self.stream = torch.cuda.Stream(device=device, priority=0) if device.startswith("cuda") else None

    def _stream(self):
        return torch.cuda.stream(self.stream) if self.stream is not None else nullcontext()

    def attention(self, fgs1: np.ndarray, airs_nodes: np.ndarray) -> list[dict[str, Any]]:
        """Top-k attention edges of every layer and head (module docstring). Raises NoAttention."""
        f = torch.as_tensor(fgs1, dtype=torch.float32, device=self.device)[None]
        n = torch.as_tensor(airs_nodes, dtype=torch.float32, device=self.device)[None]
        with torch.inference_mode(), self._stream():
            out = self.model(f, n)
        if out.gat_attention.numel() == 0:
            raise NoAttention("this model's AIRS GNN backend has no attention (only 'gat' has)")
        return attention_top_edges(out, self.edges, self.top_k)

    def shap(
        self,
        fgs1: np.ndarray,
        airs_nodes: np.ndarray,
        deadline: float = float("inf"),
        yield_to: Callable[[], bool] = lambda: False,
        abandoned: Callable[[], bool] = lambda: False,
    ) -> list[dict[str, Any]]:
        """Top-k bins by |Shapley value| of the mean AIRS mu (module docstring).

        Between forwards it waits while ``yield_to()`` (predictions are busy) and stops with
        TaskTimeoutError once ``deadline`` (``time.monotonic()``) passes or ``abandoned()``.
        """
        coop = _Cooperative(self.model)
        coop.deadline, coop.yield_to, coop.abandoned = deadline, yield_to, abandoned
        steps = int(np.asarray(fgs1).shape[0])
        with self._stream():
            result = shap_groups(
                coop,  # type: ignore[arg-type]  (a module with the same forward)
                torch.as_tensor(fgs1, dtype=torch.float32),
                torch.as_tensor(airs_nodes, dtype=torch.float32),
                n_fgs1_segments=min(N_FGS1_SEGMENTS, steps),
                n_samples=self.shap_samples,
                batch_size=SHAP_CHUNK,
            )
        return [g.to_json() for g in result.top_bins(self.top_k)]
