"""Self-supervised pieces of the curriculum: the MAE reconstruction head and loss, the contrastive
projector and its multi-view NT-Xent loss.

MAE: the encoders see inputs masked by :mod:`train.masks`; :class:`MAEHead` maps FGS1 per-step
latents back to the six FGS1 columns and fused node embeddings back to the eight node features,
and :func:`mae_loss` scores them on the masked positions only.

Contrastive: V augmented views of each planet (:mod:`train.augment`) give representations
``r = concat(FGS1 pooled (B, P_f), mean over bins of node_embeddings (B, D))`` built by the caller;
:class:`Projector` maps them onto the unit sphere and :func:`nt_xent` pulls the views of one
planet together against all other samples of the batch.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from train.masks import NODE_POSITIONAL, TIME_POSITIONAL, Masks

__all__ = ["MAEHead", "Projector", "Recon", "mae_loss", "nt_xent"]

FGS1_COLUMNS = 6
NODE_COLUMNS = 8


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))


class Recon(NamedTuple):
    """Reconstructed inputs: fgs1 (B, T, 6), nodes (B, 283, 8), in input feature units."""

    fgs1: Tensor
    nodes: Tensor


class MAEHead(nn.Module):
    """Two small decoders: :math:`\\hat x^{fgs1}_t = W_2\\,\\mathrm{GELU}(W_1 s_t)`, likewise per node.

    Args:
        d_model: width of the FGS1 per-step latents (``fgs1_mamba.d_model``).
        node_dim: width of the fused node embeddings.

    Shapes:
        step_latents (B, T, d_model), node_embeddings (B, 283, node_dim) -> Recon((B, T, 6), (B, 283, 8)).
    """

    def __init__(self, d_model: int, node_dim: int) -> None:
        super().__init__()
        if d_model < 1 or node_dim < 1:
            raise ValueError(f"MAEHead widths must be >= 1, got d_model={d_model}, node_dim={node_dim}")
        self.fgs1 = _mlp(d_model, d_model, FGS1_COLUMNS)
        self.nodes = _mlp(node_dim, node_dim, NODE_COLUMNS)

    def forward(self, step_latents: Tensor, node_embeddings: Tensor) -> Recon:
        return Recon(fgs1=self.fgs1(step_latents), nodes=self.nodes(node_embeddings))


def _masked_mse(pred: Tensor, target: Tensor, mask: Tensor, positional: int) -> Tensor:
    cols = torch.arange(target.shape[-1], device=target.device) != positional
    weight = (mask[..., None] & cols).to(pred.dtype)
    # sum / count with count clamped: an empty mask gives an exact 0 that keeps the head in the
    # graph (zero gradients rather than unused parameters under DDP).
    return ((pred - target) ** 2 * weight).sum() / weight.sum().clamp_min(1.0)


def mae_loss(recon: Recon, fgs1: Tensor, airs_nodes: Tensor, masks: Masks) -> tuple[Tensor, dict[str, Tensor]]:
    """Masked reconstruction error, time and node parts with equal weight.

    .. math::
        L = \\tfrac12 \\left( \\overline{(\\hat x^{fgs1} - x^{fgs1})^2}_{M_t, c \\ne 1}
          + \\overline{(\\hat x^{n} - x^{n})^2}_{M_n, c \\ne 7} \\right)

    the means running over masked positions and non-positional channels (time_norm and
    wavelength are never hidden, so there is nothing to reconstruct); a part without masked
    positions is 0. ``fgs1`` and ``airs_nodes`` are the unmasked inputs.

    Returns:
        (loss, {"mae_time": ..., "mae_nodes": ...}); the terms are detached 0-dim tensors.
    """
    if recon.fgs1.shape != fgs1.shape or recon.nodes.shape != airs_nodes.shape:
        raise ValueError(
            f"reconstruction {tuple(recon.fgs1.shape)}, {tuple(recon.nodes.shape)} does not match inputs "
            f"{tuple(fgs1.shape)}, {tuple(airs_nodes.shape)}"
        )
    time = _masked_mse(recon.fgs1, fgs1, masks.time, TIME_POSITIONAL)
    nodes = _masked_mse(recon.nodes, airs_nodes, masks.nodes, NODE_POSITIONAL)
    return 0.5 * (time + nodes), {"mae_time": time.detach(), "mae_nodes": nodes.detach()}


class Projector(nn.Module):
    """:math:`z = g(r) / \\lVert g(r) \\rVert_2`, g = Linear-GELU-Linear.

    Shapes: (..., in_dim) -> (..., projector_dim), unit norm.
    """

    def __init__(self, in_dim: int, projector_dim: int) -> None:
        super().__init__()
        if in_dim < 1 or projector_dim < 1:
            raise ValueError(
                f"train.curriculum.contrastive.projector_dim must be >= 1 (and in_dim >= 1), "
                f"got {projector_dim}, {in_dim}"
            )
        self.mlp = _mlp(in_dim, in_dim, projector_dim)

    def forward(self, r: Tensor) -> Tensor:
        return F.normalize(self.mlp(r), dim=-1)


def nt_xent(z: Tensor, temperature: float) -> Tensor:
    """Multi-view NT-Xent (SupCon with the other views of a planet as its positives).

    With N = V B samples ``z_i`` (L2-normalised here), ``s_ij = z_i . z_j / tau`` and P(i) the
    V - 1 other views of i's planet:

    .. math::
        L = -\\frac{1}{N} \\sum_i \\frac{1}{V-1} \\sum_{p \\in P(i)}
            \\log \\frac{e^{s_{ip}}}{\\sum_{k \\ne i} e^{s_{ik}}}

    Bounds: identical views of orthogonal planets give
    ``log((V-1) + (N-V) e^{-1/tau})`` (-> log(V-1) as tau -> 0); unrelated views ~ log(N-1).

    Shapes: z (V, B, P) -> scalar.
    """
    if z.dim() != 3:
        raise ValueError(f"contrastive embeddings must have shape (views, batch, dim), got {tuple(z.shape)}")
    views, batch = z.shape[:2]
    if views < 2:
        raise ValueError(f"train.curriculum.contrastive.views must be >= 2, got {views}")
    if batch < 2:
        raise ValueError(f"contrastive batch (train.batch.train) must hold >= 2 planets, got {batch}")
    if not temperature > 0:
        raise ValueError(f"train.curriculum.contrastive.temperature must be > 0, got {temperature}")
    flat = F.normalize(z.reshape(views * batch, -1).float(), dim=-1)
    n = flat.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = (flat @ flat.T / temperature).masked_fill(eye, -torch.inf)
    log_prob = logits.log_softmax(dim=1)
    planet = torch.arange(n, device=z.device) % batch
    positive = (planet[:, None] == planet[None, :]) & ~eye
    # masked_fill before the product: log_prob is -inf on the diagonal and 0 * -inf is NaN.
    per_anchor = log_prob.masked_fill(~positive, 0.0).sum(dim=1) / (views - 1)
    return -per_anchor.mean()
