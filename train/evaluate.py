"""Batched inference over a feature set and the validation metrics of ``train.validation.metrics``.

=============  ====================================================================================
metric         definition (over all planets and bins of the set)
=============  ====================================================================================
gll            the training GLL: Gaussian NLL averaged with the ADC2025 bin weights (FGS1 57.846)
rmse           root mean squared error of mu, in ppm
mae            mean absolute error of mu, in ppm
coverage_90    share of |y - mu| <= 1.645 sigma
score          the ADC2025 score (:func:`spectramind.metric.score_arrays`; naive mean/std from the
               training labels when given, else from the set's own labels)
=============  ====================================================================================

``score`` is always computed; the others follow the configured list (unknown names are an error).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from spectramind.metric import Z90, score_arrays
from spectramind.model.losses import bin_weights, gaussian_nll
from spectramind.model.v50 import SpectraMindV50

__all__ = ["METRICS", "predict_arrays", "validation_metrics"]

METRICS = ("gll", "rmse", "mae", "coverage_90", "score")


@torch.no_grad()
def predict_arrays(
    model: torch.nn.Module,
    fgs1: np.ndarray,
    airs_nodes: np.ndarray,
    batch_size: int,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """mu, sigma (N, 283) float64 of ``model`` (a SpectraMindV50 or a calibrated wrapper), eval mode.

    Shapes: fgs1 (N, T, 6), airs_nodes (N, 283, 8).
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval()
    mus, sigmas = [], []
    for i in range(0, len(fgs1), batch_size):
        f = torch.as_tensor(fgs1[i : i + batch_size], device=device)
        n = torch.as_tensor(airs_nodes[i : i + batch_size], device=device)
        out = model(f, n)
        mus.append(out.mu.double().cpu().numpy())
        sigmas.append(out.sigma.double().cpu().numpy())
    model.train(was_training)
    return np.concatenate(mus), np.concatenate(sigmas)


def validation_metrics(
    y: np.ndarray,
    mu: np.ndarray,
    sigma: np.ndarray,
    metrics: Sequence[str] = METRICS,
    naive: tuple[float, float] | None = None,
    prefix: str = "val/",
) -> dict[str, float]:
    """The metrics named in ``metrics`` plus the score, keyed ``prefix + name``.

    Shapes: y, mu, sigma (N, 283) in (Rp/Rs)^2.
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"train.validation.metrics: unknown {unknown}; known: {', '.join(METRICS)}")
    out: dict[str, float] = {}
    err = y - mu
    if "gll" in metrics:
        t = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
        out["gll"] = float(gaussian_nll(t(mu), t(sigma), t(y), weights=bin_weights().double()))
    if "rmse" in metrics:
        out["rmse"] = float(np.sqrt(np.mean(err**2)) * 1e6)
    if "mae" in metrics:
        out["mae"] = float(np.mean(np.abs(err)) * 1e6)
    if "coverage_90" in metrics:
        out["coverage_90"] = float(np.mean(np.abs(err) <= Z90 * sigma))
    nm, ns = naive if naive is not None else (None, None)
    out["score"] = score_arrays(y, np.clip(mu, 0.0, None), sigma, naive_mean=nm, naive_sigma=ns).score
    return {prefix + k: v for k, v in out.items()}


def naive_from_labels(y: np.ndarray) -> tuple[float, float]:
    """The metric's naive prediction (mean, std of the training labels)."""
    return float(np.mean(y)), float(np.std(y))


def model_device(model: SpectraMindV50) -> torch.device:
    return next(model.parameters()).device
