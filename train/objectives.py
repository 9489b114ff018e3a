"""The loss of each curriculum phase, as one module: what the optimiser steps and DDP wraps.

======================  ========================================================================
phase                   loss
======================  ========================================================================
``mae``                 masked reconstruction (:func:`train.pretrain.mae_loss`) of the inputs the
                        masks hid (``curriculum.mae``: mask_kind, mask_ratio, snr_floor_db), plus
                        ``decoder_loss_weight`` x the weighted GLL of the decoders (mu and sigma
                        heads) over the bins the masks left visible, so the heads keep learning
                        while the encoders pretrain
``contrastive``         NT-Xent (:func:`train.pretrain.nt_xent`) between ``views`` augmented views
                        of each planet (``data_augmentation``, with time dropout and spectral
                        noise raised to at least :data:`VIEW_MIN_DROPOUT` / :data:`VIEW_MIN_NOISE`
                        so two views differ even when the supervised augmentation is off); the
                        representation is the mean fused node embedding through a ``projector_dim``
                        projector, at ``temperature``
``supervised``          :class:`spectramind.model.losses.V50Loss`: weighted GLL + pinball (quantile
                        head) + ``symbolic_weight_scale`` x the symbolic pack, on augmented inputs
======================  ========================================================================

Every phase returns ``(loss, terms)`` with detached float terms for logging. The MAE head and
the projector live here, not in the model: they are training scaffolding and are not saved in
the model checkpoint's ``model`` state (they are in the training state, for resume).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from spectramind.bins import BinGrid
from spectramind.metric import FGS1_WEIGHT
from spectramind.model.losses import V50Loss, bin_weights, gaussian_nll
from spectramind.model.v50 import SpectraMindV50
from train.augment import AugmentOptions, augment
from train.masks import MaskSpec, apply_masks, make_masks
from train.pretrain import MAEHead, Projector, mae_loss, nt_xent

__all__ = ["PHASES", "PhaseObjective"]

PHASES = ("mae", "contrastive", "supervised")
VIEW_MIN_DROPOUT = 0.1
VIEW_MIN_NOISE = 0.02


class PhaseObjective(nn.Module):
    """Model + training-only heads; ``forward(phase, fgs1, airs_nodes, y)`` returns the phase loss.

    Shapes: fgs1 (B, T, 6), airs_nodes (B, 283, 8), y (B, 283) in (Rp/Rs)^2.
    """

    def __init__(self, model: SpectraMindV50, train_cfg: Mapping[str, Any], grid: BinGrid) -> None:
        super().__init__()
        self.model = model
        self.grid = grid
        m = model.config["model"]
        cur = train_cfg["curriculum"]
        self.mask_spec = MaskSpec.from_mapping(cur["mae"])
        self.decoder_loss_weight = float(cur["mae"]["decoder_loss_weight"])
        self.mae_head = MAEHead(model.d_model, model.fusion.dim)
        con = cur["contrastive"]
        self.views = int(con["views"])
        self.temperature = float(con["temperature"])
        self.projector = Projector(model.fusion.dim, int(con["projector_dim"]))
        self.symbolic_weight_scale = float(cur["supervised"]["symbolic_weight_scale"])
        self.augment = AugmentOptions.from_mapping(train_cfg["data_augmentation"])
        self.view_augment = AugmentOptions(
            jitter_augment=True,
            jitter_std=self.augment.jitter_std,
            time_dropout_prob=max(self.augment.time_dropout_prob, VIEW_MIN_DROPOUT),
            spectral_smooth_noise=max(self.augment.spectral_smooth_noise, VIEW_MIN_NOISE),
        )
        quantile_cfg = m["decoders"]["sigma_head"].get("quantile")
        self.uses_quantiles = m["decoders"]["sigma_head"]["type"] == "quantile"
        self.loss = V50Loss(m["losses"], grid, quantile_cfg if self.uses_quantiles else None)
        self.register_buffer("gll_weights", bin_weights(float(m["losses"].get("fgs1_weight", FGS1_WEIGHT))))
        self.generator: torch.Generator | None = None

    def forward(self, phase: str, fgs1: Tensor, airs_nodes: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        if phase == "mae":
            return self._mae(fgs1, airs_nodes, y)
        if phase == "contrastive":
            return self._contrastive(fgs1, airs_nodes)
        if phase == "supervised":
            return self._supervised(fgs1, airs_nodes, y)
        raise ValueError(f"unknown phase {phase!r}; phases are {', '.join(PHASES)}")

    def _mae(self, fgs1: Tensor, airs_nodes: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        masks = make_masks(self.mask_spec, fgs1, airs_nodes, self.generator, self.grid)
        fm, nm = apply_masks(fgs1, airs_nodes, masks)
        out = self.model(fm, nm, step_latents=True)
        recon = self.mae_head(out.fgs1_latents, out.node_embeddings)
        loss, terms = mae_loss(recon, fgs1, airs_nodes, masks)
        visible = (~masks.nodes).to(out.mu.dtype) * self.gll_weights
        nll = gaussian_nll(out.mu, out.sigma, y, reduction="none")
        decoder = (nll * visible).sum() / visible.sum().clamp_min(1.0)
        total = loss + self.decoder_loss_weight * decoder
        logged = {k: float(v) for k, v in terms.items()}
        logged["decoder_gll"] = float(decoder.detach())
        return total, logged

    def _contrastive(self, fgs1: Tensor, airs_nodes: Tensor) -> tuple[Tensor, dict[str, float]]:
        batch = fgs1.shape[0]
        views = [augment(fgs1, airs_nodes, self.view_augment, self.generator) for _ in range(self.views)]
        out = self.model(torch.cat([v[0] for v in views]), torch.cat([v[1] for v in views]))
        z = self.projector(out.node_embeddings.mean(1)).view(self.views, batch, -1)
        loss = nt_xent(z, self.temperature)
        return loss, {"nt_xent": float(loss.detach())}

    def _supervised(self, fgs1: Tensor, airs_nodes: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        if self.training:
            fgs1, airs_nodes = augment(fgs1, airs_nodes, self.augment, self.generator)
        out = self.model(fgs1, airs_nodes)
        quantiles = out.quantiles if self.uses_quantiles else None
        loss, terms = self.loss(out.mu, out.sigma, y, quantiles, self.symbolic_weight_scale)
        return loss, {k: float(v.detach()) for k, v in terms.items()}
