"""Fusion of the FGS1 temporal encoding into the AIRS spectral nodes: ``concat``, ``cross_attend`` or ``gated``.

:class:`Fusion` is built from the ``model.fusion`` config node (``kind``, ``dim``, ``hidden``,
``dropout``, and ``cross_attend.{n_heads, n_layers}`` for that kind; every preset of
``configs/model/fusion_presets.yaml`` is such a node) and returns one type, :class:`Fused`,
whatever the kind. Every kind ends in a LayerNorm of width ``dim``, so the heads see the same
scale of input whichever fusion was chosen, and every kind uses the pooled FGS1 vector, so no
encoder parameter is left without a gradient (which DistributedDataParallel would reject).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from spectramind.bins import N_BINS
from spectramind.model.capture import capturing

__all__ = ["FUSION_KINDS", "Fused", "Fusion"]

FUSION_KINDS = ("concat", "cross_attend", "gated")


class Fused(NamedTuple):
    """Output of :class:`Fusion`.

    nodes: (B, N, dim) fused node features.
    attention: (B, N, T) cross-attention of each node over the FGS1 steps, averaged over heads and
        layers (each row sums to 1 over the real steps) for ``cross_attend``; (B, N, 0) for the
        kinds that have no attention, so that an empty tensor, not zeros, says "none".
    """

    nodes: Tensor
    attention: Tensor


def _mlp(d_in: int, hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d_out))


class _ConcatFusion(nn.Module):
    r"""Broadcast the pooled FGS1 vector to every node, concatenate, MLP.

    .. math::
        \mathbf{x}'_i = \mathrm{LN}\big(W_2\,\mathrm{Dropout}(\mathrm{GELU}(W_1[\mathbf{x}_i; \mathbf{f}]
        + \mathbf{b}_1)) + \mathbf{b}_2\big)

    Shapes: f (B, D_f), x (B, N, D_a) -> (B, N, dim); the MLP is D_f + D_a -> hidden -> dim.
    """

    def __init__(self, fgs1_dim: int, airs_dim: int, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.mlp = _mlp(airs_dim + fgs1_dim, hidden, dim, dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, pooled: Tensor, nodes: Tensor) -> Tensor:
        f = pooled[:, None, :].expand(-1, nodes.shape[1], -1)
        return self.norm(self.mlp(torch.cat([nodes, f], dim=-1)))


class _GatedFusion(nn.Module):
    r"""A sigmoid gate per node and channel chooses between the node features and the FGS1 vector.

    .. math::
        \mathbf{n}_i = W_a\mathbf{x}_i, \quad \mathbf{f} = W_f\mathbf{p}, \quad
        \mathbf{g}_i = \sigma(W_g[\mathbf{n}_i; \mathbf{f}] + \mathbf{b}_g) \\
        \mathbf{m}_i = \mathbf{g}_i \odot \mathbf{n}_i + (1 - \mathbf{g}_i) \odot \mathbf{f}, \quad
        \mathbf{x}'_i = \mathrm{LN}(\mathbf{m}_i + \mathrm{Dropout}(\mathrm{MLP}(\mathbf{m}_i)))

    The gate bias starts at 0 (an even mix); the MLP is dim -> hidden -> dim.

    Shapes: p (B, D_f), x (B, N, D_a) -> (B, N, dim).
    """

    def __init__(self, fgs1_dim: int, airs_dim: int, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.node_proj = nn.Linear(airs_dim, dim)
        self.fgs1_proj = nn.Linear(fgs1_dim, dim)
        self.gate = nn.Linear(2 * dim, dim)
        nn.init.zeros_(self.gate.bias)
        self.mlp = _mlp(dim, hidden, dim, dropout)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, pooled: Tensor, nodes: Tensor) -> Tensor:
        n = self.node_proj(nodes)
        f = self.fgs1_proj(pooled)[:, None, :].expand_as(n)
        g = torch.sigmoid(self.gate(torch.cat([n, f], dim=-1)))
        m = g * n + (1.0 - g) * f
        return self.norm(m + self.dropout(self.mlp(m)))


class _CrossAttentionLayer(nn.Module):
    r"""Pre-norm cross-attention of the node queries over the FGS1 steps, then a feed-forward block.

    .. math::
        \mathbf{q}_i &\leftarrow \mathbf{q}_i + \mathrm{Dropout}(\mathrm{MHA}(\mathrm{LN}(\mathbf{q}_i),
        \mathbf{k}, \mathbf{k})) \\
        \mathbf{q}_i &\leftarrow \mathbf{q}_i + \mathrm{Dropout}(\mathrm{MLP}(\mathrm{LN}(\mathbf{q}_i)))

    The attention weights themselves are not dropped out, so the returned weights are a
    distribution over the steps in training too.

    Shapes: q (B, N, dim), k (B, T, dim), key_padding_mask (B, T) bool (True = padded) or None
    -> q (B, N, dim), attention (B, N, T) averaged over heads.
    """

    def __init__(self, dim: int, hidden: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, n_heads, batch_first=True)
        self.norm_ff = nn.LayerNorm(dim)
        self.mlp = _mlp(dim, hidden, dim, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, q: Tensor, k: Tensor, key_padding_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        a, w = self.attn(
            self.norm_q(q), k, k, key_padding_mask=key_padding_mask, need_weights=True, average_attn_weights=True
        )
        q = q + self.dropout(a)
        q = q + self.dropout(self.mlp(self.norm_ff(q)))
        return q, w


class _CrossAttendFusion(nn.Module):
    r"""The AIRS nodes attend over the FGS1 time steps.

    .. math::
        \mathbf{q}^{(0)}_i = W_a\mathbf{x}_i + W_f\mathbf{p}, \quad \mathbf{k}_t = \mathrm{LN}(W_s\mathbf{s}_t),
        \quad \mathbf{q}^{(\ell)} = \mathrm{CrossAttn}_\ell(\mathbf{q}^{(\ell-1)}, \mathbf{k}), \quad
        \mathbf{x}'_i = \mathrm{LN}(\mathbf{q}^{(L)}_i)

    The pooled vector :math:`\mathbf{p}` enters the queries as a global context (what the whole
    light curve says) so that each node asks its question of the steps knowing it.

    Shapes: p (B, D_f), s (B, T, D_s), x (B, N, D_a) -> (B, N, dim) and attention (B, N, T),
    the mean over the n_layers layers of the head-averaged weights.
    """

    def __init__(
        self, fgs1_dim: int, step_dim: int, airs_dim: int, dim: int, hidden: int, dropout: float, cfg: Mapping[str, Any]
    ) -> None:
        super().__init__()
        n_heads, n_layers = int(cfg["n_heads"]), int(cfg["n_layers"])
        if n_layers < 1:
            raise ValueError(f"fusion.cross_attend.n_layers must be >= 1, got {n_layers}")
        if n_heads < 1 or dim % n_heads:
            raise ValueError(f"fusion.dim ({dim}) must be a multiple of fusion.cross_attend.n_heads ({n_heads})")
        self.node_proj = nn.Linear(airs_dim, dim)
        self.fgs1_proj = nn.Linear(fgs1_dim, dim)
        self.step_proj = nn.Linear(step_dim, dim)
        self.step_norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(_CrossAttentionLayer(dim, hidden, n_heads, dropout) for _ in range(n_layers))
        self.norm = nn.LayerNorm(dim)

    def forward(
        self, pooled: Tensor, steps: Tensor, nodes: Tensor, step_mask: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        q = self.node_proj(nodes) + self.fgs1_proj(pooled)[:, None, :]
        k = self.step_norm(self.step_proj(steps))
        padding = None if step_mask is None else ~step_mask
        weights = []
        for layer in self.layers:
            q, w = layer(q, k, padding)
            weights.append(w)
        return self.norm(q), torch.stack(weights, dim=0).mean(0)


class Fusion(nn.Module):
    r"""Fuse the FGS1 encoding into the AIRS node features: one of ``concat``, ``cross_attend``, ``gated``.

    - ``concat``: :math:`\mathbf{x}'_i = \mathrm{LN}(\mathrm{MLP}([\mathbf{x}_i; \mathbf{p}]))`, MLP
      :math:`D_a + D_f \to` hidden :math:`\to` dim.
    - ``cross_attend``: node queries :math:`W_a\mathbf{x}_i + W_f\mathbf{p}` attend over the
      projected steps :math:`W_s\mathbf{s}_t` through ``cross_attend.n_layers`` pre-norm layers of
      ``nn.MultiheadAttention`` (``cross_attend.n_heads`` heads) and a dim -> hidden -> dim MLP.
    - ``gated``: :math:`\mathbf{m}_i = \mathbf{g}_i\odot W_a\mathbf{x}_i + (1-\mathbf{g}_i)\odot W_f\mathbf{p}`
      with :math:`\mathbf{g}_i = \sigma(W_g[W_a\mathbf{x}_i; W_f\mathbf{p}])` per node and channel,
      then :math:`\mathrm{LN}(\mathbf{m}_i + \mathrm{MLP}(\mathbf{m}_i))`.

    The output width is always ``dim``; ``hidden`` is the width of the MLPs inside.

    Args:
        cfg: the ``model.fusion`` node (or a ``presets.fusion.*`` node).
        fgs1_dim: :math:`D_f`, width of the pooled FGS1 vector (``encoders.fgs1_mamba.proj_out``).
        fgs1_step_dim: :math:`D_s`, width of the FGS1 per-step latents (``encoders.fgs1_mamba.d_model``).
        airs_dim: :math:`D_a`, width of the AIRS node features (``encoders.airs_gnn.out_dim``).
        n_bins: number of nodes :math:`N` the inputs must have.

    Shapes:
        - **input:** fgs1_pooled :math:`(B, D_f)`, fgs1_steps :math:`(B, T, D_s)`, nodes
          :math:`(B, N, D_a)`, step_mask :math:`(B, T)` bool or None (True = real step; only
          ``cross_attend`` reads it, and each row needs a real step)
        - **output:** :class:`Fused` with nodes :math:`(B, N, \text{dim})` and attention
          :math:`(B, N, T)` for ``cross_attend``, :math:`(B, N, 0)` otherwise
    """

    def __init__(
        self, cfg: Mapping[str, Any], fgs1_dim: int, fgs1_step_dim: int, airs_dim: int, n_bins: int = N_BINS
    ) -> None:
        super().__init__()
        kind = str(cfg["kind"])
        if kind not in FUSION_KINDS:
            raise ValueError(f"fusion.kind must be one of {', '.join(FUSION_KINDS)}, got {kind!r}")
        self.kind = kind
        self.dim = int(cfg["dim"])
        self.n_bins = n_bins
        self.fgs1_dim, self.fgs1_step_dim, self.airs_dim = fgs1_dim, fgs1_step_dim, airs_dim
        hidden, dropout = int(cfg["hidden"]), float(cfg["dropout"])
        self.impl: nn.Module
        if kind == "concat":
            self.impl = _ConcatFusion(fgs1_dim, airs_dim, self.dim, hidden, dropout)
        elif kind == "gated":
            self.impl = _GatedFusion(fgs1_dim, airs_dim, self.dim, hidden, dropout)
        else:
            self.impl = _CrossAttendFusion(
                fgs1_dim, fgs1_step_dim, airs_dim, self.dim, hidden, dropout, cfg["cross_attend"]
            )

    def _check(self, pooled: Tensor, steps: Tensor, nodes: Tensor, step_mask: Tensor | None) -> None:
        batch = nodes.shape[0]
        if nodes.dim() != 3 or tuple(nodes.shape[1:]) != (self.n_bins, self.airs_dim):
            raise ValueError(f"nodes must have shape (batch, {self.n_bins}, {self.airs_dim}), got {tuple(nodes.shape)}")
        if tuple(pooled.shape) != (batch, self.fgs1_dim):
            raise ValueError(f"fgs1_pooled must have shape ({batch}, {self.fgs1_dim}), got {tuple(pooled.shape)}")
        if steps.dim() != 3 or steps.shape[0] != batch or steps.shape[2] != self.fgs1_step_dim:
            raise ValueError(
                f"fgs1_steps must have shape ({batch}, time, {self.fgs1_step_dim}), got {tuple(steps.shape)}"
            )
        if step_mask is not None and (step_mask.dtype != torch.bool or step_mask.shape != steps.shape[:2]):
            got = f"{step_mask.dtype} {tuple(step_mask.shape)}"
            raise ValueError(f"step_mask must be bool of shape {tuple(steps.shape[:2])}, got {got}")

    def forward(
        self, fgs1_pooled: Tensor, fgs1_steps: Tensor, nodes: Tensor, step_mask: Tensor | None = None
    ) -> Fused:
        # Under tracing shapes are traced values; checking them would freeze the example's shapes.
        if not capturing():
            self._check(fgs1_pooled, fgs1_steps, nodes, step_mask)
        if isinstance(self.impl, _CrossAttendFusion):
            fused, attention = self.impl(fgs1_pooled, fgs1_steps, nodes, step_mask)
            return Fused(nodes=fused, attention=attention)
        fused = self.impl(fgs1_pooled, nodes)
        return Fused(nodes=fused, attention=fused.new_zeros(fused.shape[0], fused.shape[1], 0))
