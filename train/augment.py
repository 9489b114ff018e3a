"""Batch augmentations of model inputs (``train.data_augmentation``; also the contrastive views).

Each acts on the feature units of :mod:`spectramind.data.features` and returns new tensors:

- **jitter coupling** (``fgs1.jitter_augment``, ``fgs1.jitter_std`` px): a synthetic pointing
  offset (dx, dy)_t per row, a stationary AR(1) with e-folding time 5 steps and marginal std
  ``jitter_std``, is added to the centroid columns (2, 3); its fast part (minus a 9-step
  running mean) to the jitter columns (4, 5); and a coupled flux error
  ``flux_t += c_x dx_t + c_y dy_t``, c ~ N(0, 0.05) per row and axis, to column 0. Column 0 is in
  units of 1e-2 relative flux, so 0.05 per px is 5e-4 relative flux per px, a typical intrapixel
  response. This coupling is what "jitter_augment ... used to generate synthetic centroid/jitter
  coupling" means: the encoder sees flux excursions that the pointing columns explain, and must
  learn to take them out rather than read them as transit signal.
- **time dropout** (``fgs1.time_dropout_prob``): each step of a row is dropped with that
  probability; all its columns but time_norm become the linear interpolation between the nearest
  kept steps (held at the ends). A row with every step dropped is left as it is.
- **spectral smooth noise** (``airs.spectral_smooth_noise``, column-0 units): a smooth random
  curve over AIRS bins 1..282, white noise through a unit-energy Gaussian filter of sigma 5 bins
  (correlation exp(-k^2 / 100): 1/e at 10 bins) scaled to marginal std ``spectral_smooth_noise``,
  is added to depth_fit (col 0, units 1e-2) and, as the same physical depth, to depth_rel
  (col 2, units 1e-4: x100); bin 0 (FGS1) is untouched. Both columns are then clipped as the
  feature definition clips them (depth_fit >= 0, |depth_rel| <= 50).

With everything off the outputs equal the inputs. Random numbers come from ``generator`` on its
device (CPU when None: the global RNG), in a fixed order, so a seeded generator repeats a batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from spectramind.bins import N_BINS
from spectramind.data.features import REL_CLIP

__all__ = ["AugmentOptions", "augment"]

_SECTION = "train.data_augmentation"
_PATHS = {
    "jitter_augment": ("fgs1", "jitter_augment"),
    "jitter_std": ("fgs1", "jitter_std"),
    "time_dropout_prob": ("fgs1", "time_dropout_prob"),
    "spectral_smooth_noise": ("airs", "spectral_smooth_noise"),
}
JITTER_TAU = 5.0
JITTER_WINDOW = 9
COUPLING_STD = 0.05
SMOOTH_SIGMA = 5.0
DEPTH_TO_REL = 100.0  # depth_fit units (1e-2) -> depth_rel units (1e-4)


@dataclass
class AugmentOptions:
    """Fields are the leaves of ``train.data_augmentation`` (see :data:`_PATHS`); defaults are off."""

    jitter_augment: bool = False
    jitter_std: float = 0.25
    time_dropout_prob: float = 0.0
    spectral_smooth_noise: float = 0.0

    def __post_init__(self) -> None:
        def name(key: str) -> str:
            return f"{_SECTION}." + ".".join(_PATHS[key])

        if not isinstance(self.jitter_augment, bool):
            raise ValueError(f"{name('jitter_augment')} must be true or false, got {self.jitter_augment!r}")
        for f in fields(self)[1:]:
            try:
                value = float(getattr(self, f.name))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{name(f.name)} must be a number, got {getattr(self, f.name)!r}") from exc
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name(f.name)} must be finite and >= 0, got {value!r}")
            setattr(self, f.name, value)
        if self.time_dropout_prob >= 1.0:
            raise ValueError(f"{name('time_dropout_prob')} must be in [0, 1), got {self.time_dropout_prob!r}")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> "AugmentOptions":
        """From ``cfg.train.data_augmentation`` ({fgs1: {...}, airs: {...}}); unknown keys are errors."""
        cfg = cfg or {}
        groups = {group for group, _ in _PATHS.values()}
        values: dict[str, Any] = {}
        for group in cfg:
            if group not in groups:
                raise ValueError(f"{_SECTION}: unknown group {group!r}; known: {', '.join(sorted(groups))}")
            known = {leaf: key for key, (g, leaf) in _PATHS.items() if g == group}
            for leaf, value in dict(cfg[group] or {}).items():
                if leaf not in known:
                    raise ValueError(f"{_SECTION}.{group}: unknown option {leaf!r}; known: {', '.join(sorted(known))}")
                values[known[leaf]] = value
        return cls(**values)


def _ar1(rows: int, steps: int, std: float, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Stationary AR(1) series, phi = exp(-1/tau), as a truncated causal filter of white noise
    (8 tau taps, normalised to unit energy so the marginal std is ``std``). Shapes: -> (rows, steps)."""
    taps = int(8 * JITTER_TAU)
    kernel = torch.exp(-torch.arange(taps, dtype=torch.float64, device=device) / JITTER_TAU)
    kernel = kernel / kernel.norm()
    noise = torch.randn(rows, 1, steps + taps - 1, generator=generator, device=device, dtype=torch.float64)
    return std * F.conv1d(noise, kernel.flip(0)[None, None]).squeeze(1)


def _running_mean(x: Tensor, window: int) -> Tensor:
    """Centred running mean over the last axis, averaging only inside the series at the ends."""
    pooled = F.avg_pool1d(x[:, None], window, stride=1, padding=window // 2, count_include_pad=False)
    return pooled[:, 0, : x.shape[-1]]


def _jitter(fgs1: Tensor, std: float, generator: torch.Generator | None, device: torch.device) -> Tensor:
    batch, steps, _ = fgs1.shape
    d = _ar1(2 * batch, steps, std, generator, device).reshape(batch, 2, steps).transpose(1, 2)  # (B, T, 2)
    coupling = COUPLING_STD * torch.randn(batch, 1, 2, generator=generator, device=device, dtype=torch.float64)
    fast = d - _running_mean(d.transpose(1, 2).reshape(2 * batch, steps), JITTER_WINDOW).reshape(
        batch, 2, steps
    ).transpose(1, 2)
    delta = torch.cat([(coupling * d).sum(-1, keepdim=True), torch.zeros_like(d[..., :1]), d, fast], dim=-1)
    return fgs1 + delta.to(fgs1)


def _time_dropout(fgs1: Tensor, prob: float, generator: torch.Generator | None, device: torch.device) -> Tensor:
    batch, steps, _ = fgs1.shape
    kept = (torch.rand(batch, steps, generator=generator, device=device) >= prob).to(fgs1.device)
    kept |= ~kept.any(dim=1, keepdim=True)
    t = torch.arange(steps, device=fgs1.device).expand(batch, steps)
    prev = torch.where(kept, t, -1).cummax(dim=1).values
    nxt = torch.where(kept, t, steps).flip(1).cummin(dim=1).values.flip(1)
    prev, nxt = torch.where(prev < 0, nxt, prev), torch.where(nxt >= steps, prev, nxt)
    w = ((t - prev) / (nxt - prev).clamp_min(1)).to(fgs1.dtype)[..., None]
    before = torch.gather(fgs1, 1, prev[..., None].expand_as(fgs1))
    after = torch.gather(fgs1, 1, nxt[..., None].expand_as(fgs1))
    interp = before * (1 - w) + after * w
    interp[..., 1] = fgs1[..., 1]
    return torch.where(kept[..., None], fgs1, interp)


def _smooth_curve(
    rows: int, length: int, std: float, generator: torch.Generator | None, device: torch.device
) -> Tensor:
    half = int(math.ceil(4 * SMOOTH_SIGMA))
    k = torch.arange(-half, half + 1, dtype=torch.float64, device=device)
    kernel = torch.exp(-0.5 * (k / SMOOTH_SIGMA) ** 2)
    kernel = kernel / kernel.norm()
    noise = torch.randn(rows, 1, length + 2 * half, generator=generator, device=device, dtype=torch.float64)
    return std * F.conv1d(noise, kernel[None, None]).squeeze(1)


def _spectral_noise(nodes: Tensor, std: float, generator: torch.Generator | None, device: torch.device) -> Tensor:
    curve = _smooth_curve(nodes.shape[0], N_BINS - 1, std, generator, device).to(nodes)
    out = nodes.clone()
    out[:, 1:, 0] = (nodes[:, 1:, 0] + curve).clamp_min(0.0)
    out[:, 1:, 2] = (nodes[:, 1:, 2] + DEPTH_TO_REL * curve).clamp(-REL_CLIP, REL_CLIP)
    return out


def augment(fgs1: Tensor, airs_nodes: Tensor, options: AugmentOptions,
            generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Apply the enabled augmentations (jitter coupling, then time dropout; spectral noise).

    Shapes: fgs1 (B, T, 6), airs_nodes (B, 283, 8) -> the same shapes, new tensors.
    """
    if fgs1.dim() != 3 or fgs1.shape[2] != 6:
        raise ValueError(f"fgs1 must have shape (batch, time, 6), got {tuple(fgs1.shape)}")
    if airs_nodes.dim() != 3 or airs_nodes.shape[:2] != (fgs1.shape[0], N_BINS) or airs_nodes.shape[2] < 3:
        raise ValueError(f"airs_nodes must have shape ({fgs1.shape[0]}, {N_BINS}, 8), got {tuple(airs_nodes.shape)}")
    rng = generator.device if generator is not None else torch.device("cpu")
    fgs1, airs_nodes = fgs1.clone(), airs_nodes.clone()
    if options.jitter_augment and options.jitter_std > 0:
        fgs1 = _jitter(fgs1, options.jitter_std, generator, rng)
    if options.time_dropout_prob > 0:
        fgs1 = _time_dropout(fgs1, options.time_dropout_prob, generator, rng)
    if options.spectral_smooth_noise > 0:
        airs_nodes = _spectral_noise(airs_nodes, options.spectral_smooth_noise, generator, rng)
    return fgs1, airs_nodes
