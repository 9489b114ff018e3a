"""Masks of the masked-autoencoder (MAE) phase: which FGS1 time steps and bins the encoder never sees.

A mask is True where a position is hidden from the encoder (its inputs zeroed by
:func:`apply_masks`, positional columns kept) and reconstructed by the MAE head. Time steps
(length T) and nodes (length 283, FGS1 node 0 included) are masked independently, per row.
``n(L) = floor(ratio * L + 1/2)`` (round half up) is the target count of a row of length L.

=================  ==============================================================================
kind               what is masked in each row
=================  ==============================================================================
random             exactly n(L) positions, uniformly without replacement
block              contiguous blocks of ``max(1, T // 16)`` steps / 8 bins at uniform starts in
                   [0, L - len], overlaps allowed, until exactly n(L) are masked (the last block
                   is trimmed), so a row has at most ceil(n / len) runs
fixed              every k-th position from offset k // 2, k = round(1 / ratio): the same for every
                   row and call; the achieved fraction is ~1 / k (ratio 0.35 -> k = 3 -> 1/3;
                   ratio >= 2/3 -> k = 1 -> everything)
snr_aware          positions whose SNR is below ``snr_floor_db`` are never masked (no signal to
                   reconstruct); n(n_eligible) eligible positions drawn without replacement with
                   probability proportional to the linear SNR; a row with none masks nothing
molecule_masked    nodes: whole molecule windows (each (lo, hi) range of ``grid.molecule_windows``)
                   in random order until n(283) bins are masked (last window trimmed; fewer if
                   the windows hold fewer bins: 188 with the default profile); time: as random
=================  ==============================================================================

SNR of snr_aware, in dB (20 log10 of an amplitude ratio):

- node j: ``20 log10(|depth_j| / sigma_j)`` with ``depth = airs_nodes[..., 0] * 1e-2`` and
  ``sigma = 10 ** airs_nodes[..., 1] * 1e-4`` (the feature units of :mod:`spectramind.data.features`).
- time step t: ``20 log10(|flux_t| / noise)``, flux = fgs1 column 0 (the deviation from the
  out-of-transit level, so in-transit steps are the reconstructable signal) and noise the row's
  robust point-to-point noise ``median|diff flux| / (0.6745 sqrt 2)``, floored at 1e-6 (column
  units) so a constant row gives a finite ratio.

Sampling without replacement uses the Gumbel top-k trick: the top n of ``log w + Gumbel`` is a
draw of n items without replacement with probabilities proportional to w, for every row at once.
All random numbers come from ``generator`` on its device (CPU when None is given: the global RNG).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from spectramind.bins import N_BINS, BinGrid, load_grid

__all__ = ["MASK_KINDS", "MaskSpec", "Masks", "apply_masks", "make_masks"]

MASK_KINDS = ("random", "block", "fixed", "snr_aware", "molecule_masked")
NODE_BLOCK = 8
TIME_POSITIONAL = 1  # fgs1 column time_norm
NODE_POSITIONAL = 7  # airs_nodes column wavelength
NOISE_FLOOR = 1e-6
_P2P_TO_SIGMA = 0.6745 * math.sqrt(2.0)
_SECTION = "train.curriculum.mae"


@dataclass
class MaskSpec:
    """One mask kind with its ratio (``train.curriculum.mae.mask_kind / mask_ratio / snr_floor_db``)."""

    kind: str = "random"
    ratio: float = 0.35
    snr_floor_db: float = 10.0

    def __post_init__(self) -> None:
        if self.kind not in MASK_KINDS:
            raise ValueError(f"{_SECTION}.mask_kind must be one of {', '.join(MASK_KINDS)}, got {self.kind!r}")
        try:
            self.ratio, self.snr_floor_db = float(self.ratio), float(self.snr_floor_db)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{_SECTION}.mask_ratio and snr_floor_db must be numbers: {exc}") from exc
        if not 0.0 < self.ratio < 1.0:
            raise ValueError(f"{_SECTION}.mask_ratio must be in (0, 1), got {self.ratio!r}")
        if not math.isfinite(self.snr_floor_db):
            raise ValueError(f"{_SECTION}.snr_floor_db must be finite, got {self.snr_floor_db!r}")

    @classmethod
    def from_mapping(cls, mae: Mapping[str, Any]) -> "MaskSpec":
        """From ``cfg.train.curriculum.mae`` (other keys of that node are the loop's business)."""
        return cls(kind=mae.get("mask_kind", "random"), ratio=mae.get("mask_ratio", 0.35),
                   snr_floor_db=mae.get("snr_floor_db", 10.0))


class Masks(NamedTuple):
    """True = masked. time (B, T) bool, nodes (B, 283) bool."""

    time: Tensor
    nodes: Tensor


def _count(ratio: float, length: Tensor | int) -> Any:
    if isinstance(length, Tensor):
        return torch.floor(ratio * length.double() + 0.5).long()
    return int(math.floor(ratio * length + 0.5))


def _top_weighted(weights: Tensor, counts: Tensor, generator: torch.Generator | None) -> Tensor:
    """Per row, ``counts[b]`` positions without replacement, P proportional to ``weights`` (0 = never).

    Shapes: weights (B, L) >= 0, counts (B,) -> (B, L) bool.
    """
    u = torch.rand(weights.shape, generator=generator, device=weights.device, dtype=torch.float64)
    gumbel = -torch.log(-torch.log(u.clamp(1e-300, 1.0 - 1e-16)))
    keys = torch.where(weights > 0, torch.log(weights.double().clamp_min(1e-300)) + gumbel, -math.inf)
    rank = torch.empty_like(keys, dtype=torch.long)
    order = keys.argsort(dim=1, descending=True)
    rank.scatter_(1, order, torch.arange(keys.shape[1], device=keys.device).expand_as(order).contiguous())
    return (rank < counts[:, None]) & (weights > 0)


def _random(batch: int, length: int, ratio: float, generator: torch.Generator | None, device: torch.device) -> Tensor:
    counts = torch.full((batch,), _count(ratio, length), dtype=torch.long, device=device)
    return _top_weighted(torch.ones(batch, length, device=device), counts, generator)


def _block(batch: int, length: int, ratio: float, block: int, generator: torch.Generator | None,
           device: torch.device) -> Tensor:
    target = _count(ratio, length)
    mask = torch.zeros(batch, length, dtype=torch.bool)
    for row in mask:
        while (need := target - int(row.sum())) > 0:
            start = int(torch.randint(0, length - block + 1, (1,), generator=generator, device=device))
            new = (~row[start : start + block]).nonzero().flatten()[:need] + start
            row[new] = True
    return mask.to(device)


def _fixed(batch: int, length: int, ratio: float) -> Tensor:
    k = max(1, round(1.0 / ratio))
    return (torch.arange(length) % k == k // 2).expand(batch, length)


def _snr_draw(snr_db: Tensor, spec: MaskSpec, generator: torch.Generator | None) -> Tensor:
    eligible = snr_db >= spec.snr_floor_db
    linear = torch.where(eligible, 10.0 ** (snr_db.double() / 20.0), 0.0)
    return _top_weighted(linear, _count(spec.ratio, eligible.sum(dim=1)), generator)


def time_snr_db(fgs1: Tensor) -> Tensor:
    """Per-step SNR of the FGS1 flux column in dB (see the module docstring). Shapes: (B, T, 6) -> (B, T)."""
    flux = fgs1[..., 0].double()
    noise = (flux.diff(dim=1).abs().median(dim=1).values / _P2P_TO_SIGMA).clamp_min(NOISE_FLOOR)
    return 20.0 * torch.log10(flux.abs().clamp_min(1e-300) / noise[:, None])


def node_snr_db(airs_nodes: Tensor) -> Tensor:
    """Per-bin SNR of the baseline depth in dB (see the module docstring). Shapes: (B, 283, 8) -> (B, 283)."""
    depth = airs_nodes[..., 0].double() * 1e-2
    sigma = 10.0 ** airs_nodes[..., 1].double() * 1e-4
    return 20.0 * torch.log10(depth.abs().clamp_min(1e-300) / sigma.clamp_min(1e-300))


def _molecule(batch: int, ratio: float, grid: BinGrid, generator: torch.Generator | None,
              device: torch.device) -> Tensor:
    windows = [w for name in grid.molecules for w in grid.molecule_windows[name]]
    target = _count(ratio, N_BINS)
    mask = torch.zeros(batch, N_BINS, dtype=torch.bool)
    for row in mask:
        for w in torch.randperm(len(windows), generator=generator, device=device).tolist():
            need = target - int(row.sum())
            if need <= 0:
                break
            lo, hi = windows[w]
            new = (~row[lo : hi + 1]).nonzero().flatten()[:need] + lo
            row[new] = True
    return mask


def make_masks(spec: MaskSpec, fgs1: Tensor, airs_nodes: Tensor, generator: torch.Generator | None = None,
               grid: BinGrid | None = None) -> Masks:
    """Masks of one batch for ``spec.kind`` (see the module docstring for each kind).

    Shapes:
        fgs1 (B, T, 6), airs_nodes (B, 283, 8) -> Masks(time (B, T), nodes (B, 283)), bool, on fgs1's device.
    """
    if fgs1.dim() != 3 or fgs1.shape[2] != 6 or fgs1.shape[1] < 2:
        raise ValueError(f"fgs1 must have shape (batch, time >= 2, 6), got {tuple(fgs1.shape)}")
    if airs_nodes.dim() != 3 or airs_nodes.shape[0] != fgs1.shape[0] or airs_nodes.shape[1] != N_BINS:
        raise ValueError(
            f"airs_nodes must have shape ({fgs1.shape[0]}, {N_BINS}, features), got {tuple(airs_nodes.shape)}"
        )
    batch, steps = fgs1.shape[:2]
    rng = generator.device if generator is not None else torch.device("cpu")
    if spec.kind == "random":
        time = _random(batch, steps, spec.ratio, generator, rng)
        nodes = _random(batch, N_BINS, spec.ratio, generator, rng)
    elif spec.kind == "block":
        time = _block(batch, steps, spec.ratio, max(1, steps // 16), generator, rng)
        nodes = _block(batch, N_BINS, spec.ratio, NODE_BLOCK, generator, rng)
    elif spec.kind == "fixed":
        time, nodes = _fixed(batch, steps, spec.ratio), _fixed(batch, N_BINS, spec.ratio)
    elif spec.kind == "snr_aware":
        time = _snr_draw(time_snr_db(fgs1.detach()).to(rng), spec, generator)
        nodes = _snr_draw(node_snr_db(airs_nodes.detach()).to(rng), spec, generator)
    else:
        time = _random(batch, steps, spec.ratio, generator, rng)
        nodes = _molecule(batch, spec.ratio, grid if grid is not None else load_grid(), generator, rng)
    return Masks(time=time.to(fgs1.device), nodes=nodes.to(fgs1.device))


def apply_masks(fgs1: Tensor, airs_nodes: Tensor, masks: Masks) -> tuple[Tensor, Tensor]:
    """Zero the masked positions, all channels but the positional ones (time_norm, wavelength).

    Shapes: fgs1 (B, T, 6), airs_nodes (B, 283, 8), masks as :class:`Masks` -> same shapes (new tensors).
    """
    if masks.time.shape != fgs1.shape[:2] or masks.nodes.shape != airs_nodes.shape[:2]:
        raise ValueError(
            f"masks {tuple(masks.time.shape)}, {tuple(masks.nodes.shape)} do not fit inputs "
            f"{tuple(fgs1.shape)}, {tuple(airs_nodes.shape)}"
        )
    time_cols = torch.arange(fgs1.shape[2], device=fgs1.device) != TIME_POSITIONAL
    node_cols = torch.arange(airs_nodes.shape[2], device=airs_nodes.device) != NODE_POSITIONAL
    hide_t = masks.time[..., None] & time_cols
    hide_n = masks.nodes[..., None] & node_cols
    return fgs1.masked_fill(hide_t, 0.0), airs_nodes.masked_fill(hide_n, 0.0)
