"""Triton kernels for ``spectramind::gat_attention``: PyG ``GATConv`` attention over a fixed graph.

The math (per batch element b and head h, edge j -> i)::

    z_ij   = <x_j, att_src_h> + <x_i, att_dst_h> + edge_bias_(j->i),h
    e_ij   = LeakyReLU(z_ij)
    a_ij   = softmax_j(e_ij)  over the incoming edges j -> i of target i
    out_i  = sum_j a_ij x_j            (zeros for a target without incoming edges)

Repeated (source, target) pairs are separate edges, each with its own weight. The backward
(VJP for x, att_src, att_dst, edge_bias given dout and dattention)::

    dA_ij  = <dout_i, x_j> + dattention_ij
    ds_ij  = a_ij (dA_ij - sum_k a_ik dA_ik)                      softmax backward
    de_ij  = ds_ij if z_ij > 0 else negative_slope * ds_ij        LeakyReLU backward (torch's rule at 0)
    dedge_bias_ij   = sum_b de_ij
    dalpha_dst_i    = sum_j de_ij          (over incoming edges of i)
    dalpha_src_j    = sum_i de_ij          (over outgoing edges of j)
    dx_j   = sum_i a_ij dout_i + dalpha_src_j att_src + dalpha_dst_j att_dst
    datt_src = sum_(b, j) dalpha_src_j x_j,   datt_dst = sum_(b, i) dalpha_dst_i x_i

Kernels (all heads of a node in one program; one launch per kernel for all heads):

- ``_gat_fwd_kernel``, grid (batch, N): one program per target node. It walks the target's
  incoming edges in the CSR-by-target order, a (BLOCK_E, BLOCK_H, BLOCK_C) tile of source
  features at a time, forms the logits in-kernel from x (source and destination terms) plus
  the edge bias, takes a masked softmax in fp32 and aggregates. When the largest in-degree fits
  one tile (the 283-node physics graph: 9 with self loops) it is a single pass; otherwise an
  online softmax runs over the tiles and a second pass writes the normalised weights.
  The attention weights are stored at their original edge positions.
- ``_gat_bwd_target_kernel``, grid (batch, N): per target, recomputes the softmax, forms
  dA, ds, de, writes a and de per edge (fp32, original edge order) and dalpha_dst per node.
- ``_gat_bwd_source_kernel``, grid (batch, N): per source node, walks its outgoing edges in a
  CSR-by-source order and gathers sum_i a_ij dout_i and dalpha_src_j = sum_i de_ij, then
  writes dx_j and dalpha_src_j. This is the scatter to sources written as a gather, so the
  backward uses no atomics and is deterministic run to run (a training run on a GPU is
  reproducible), at the cost of one extra launch and (batch, E, heads) fp32 of a and de.
- The parameter gradients are three small reductions in torch afterwards.

The graph plan (edges sorted by target and by source, row pointers, the permutations back to
the original edge order, the largest degrees) is recomputed on every call with a handful of
torch ops on the edge_index's device. It is cheap for E ~ 1.4k, and a cache keyed on the
tensor's address would go stale silently: GATLayer builds a fresh edge_index (self loops
appended) on every forward, and a freed tensor's address is reused by the allocator.

Shapes:
    - x (batch, N, heads, C); att_src, att_dst (heads, C); edge_bias (E, heads);
      edge_index (2, E) int64, row 0 the source j, row 1 the target i.
    - forward returns out (batch, N, heads, C) and attention (batch, E, heads), dtype of x.
    - backward takes grad_out (batch, N, heads, C) and grad_attn (batch, E, heads) or None and
      returns dx, d_att_src, d_att_dst, d_edge_bias in the dtypes of x, att_src, att_dst, edge_bias.

fp32, fp16 and bf16 inputs are loaded and cast to fp32; all arithmetic is fp32.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from spectramind.ops import _check_gat_inputs

__all__ = ["GATPlan", "gat_attention_backward", "gat_attention_forward", "gat_plan"]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class GATPlan(NamedTuple):
    """The fixed graph in CSR form, by target (forward, backward) and by source (backward).

    Attributes:
        rowptr_dst: (N + 1,) int32; incoming edges of target i sit at sorted positions
            rowptr_dst[i] .. rowptr_dst[i + 1] - 1.
        src_by_dst: (E,) int32 source of each edge in target-sorted order.
        eid_by_dst: (E,) int32 original edge id of each target-sorted position.
        rowptr_src, dst_by_src, eid_by_src: the same sorted by source (outgoing edges).
        max_in_degree, max_out_degree: the largest degrees (host ints, they pick the tiles).
    """

    rowptr_dst: Tensor
    src_by_dst: Tensor
    eid_by_dst: Tensor
    rowptr_src: Tensor
    dst_by_src: Tensor
    eid_by_src: Tensor
    max_in_degree: int
    max_out_degree: int


def gat_plan(edge_index: Tensor, num_nodes: int) -> GATPlan:
    """Build the CSR plan of ``edge_index`` (2, E) int64 for ``num_nodes`` nodes (no checks)."""
    src, dst = edge_index[0], edge_index[1]

    def by(key: Tensor, other: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        # A stable sort keeps repeated edges in their original order, so runs are reproducible.
        order = torch.argsort(key, stable=True)
        counts = torch.bincount(key, minlength=num_nodes)
        rowptr = torch.zeros(num_nodes + 1, dtype=torch.int32, device=key.device)
        rowptr[1:] = torch.cumsum(counts, 0)
        return rowptr, other[order].to(torch.int32), order.to(torch.int32), counts

    rowptr_dst, src_by_dst, eid_by_dst, count_in = by(dst, src)
    rowptr_src, dst_by_src, eid_by_src, count_out = by(src, dst)
    if edge_index.shape[1]:
        # One host sync for both degrees: they are compile-time tile sizes.
        max_in, max_out = torch.stack([count_in.max(), count_out.max()]).tolist()
    else:
        max_in, max_out = 0, 0
    return GATPlan(rowptr_dst, src_by_dst, eid_by_dst, rowptr_src, dst_by_src, eid_by_src, int(max_in), int(max_out))


def _blocks(max_degree: int, heads: int, channels: int) -> tuple[int, int, int, int]:
    """(BLOCK_E, BLOCK_H, BLOCK_C, num_warps) for one node's edge tile.

    Heads and channels are padded to powers of two and held whole (a node's features are one
    row of heads * C). The edge block covers the largest degree when the tile stays within
    8192 fp32 elements (~64 registers per thread at 4 warps for the feature tile, which then
    lives in registers without spills); a larger hub is walked in several tiles. The physics
    graph has degree <= 9 with self loops, so BLOCK_E = 16 and every node is one tile. Warps
    scale with the tile: programs are many (batch * 283) and small, so small tiles take
    one or two warps and more programs fit on each SM.
    """
    block_h = triton.next_power_of_2(max(heads, 1))
    block_c = triton.next_power_of_2(max(channels, 1))
    block_e = triton.next_power_of_2(max(max_degree, 2))
    while block_e > 2 and block_e * block_h * block_c > 8192:
        block_e //= 2
    tile = block_e * block_h * block_c
    num_warps = 1 if tile <= 512 else 2 if tile <= 2048 else 4 if tile <= 8192 else 8
    return block_e, block_h, block_c, num_warps


# ---------------------------------------------------------------- device helpers


@triton.jit
def _edge_tile(
    x_b,  # x + b * N * H * C
    src_ptr,
    eid_ptr,
    eb_ptr,
    w_src,  # (BLOCK_H, BLOCK_C) fp32 att_src
    a_dst,  # (BLOCK_H,) fp32 <x_i, att_dst>
    pos,
    end,
    H,
    C,
    slope,
    BLOCK_E: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """The logits of one tile of a node's edges: e (masked to -inf), z, x_j, edge ids, mask."""
    offs_e = pos + tl.arange(0, BLOCK_E)
    offs_h = tl.arange(0, BLOCK_H)
    offs_c = tl.arange(0, BLOCK_C)
    emask = offs_e < end
    src = tl.load(src_ptr + offs_e, mask=emask, other=0).to(tl.int64)
    eid = tl.load(eid_ptr + offs_e, mask=emask, other=0).to(tl.int64)
    valid = emask[:, None] & (offs_h < H)[None, :]  # (BLOCK_E, BLOCK_H)
    fmask = valid[:, :, None] & (offs_c < C)[None, None, :]
    x_j = tl.load(
        x_b + src[:, None, None] * (H * C) + offs_h[None, :, None] * C + offs_c[None, None, :], mask=fmask, other=0.0
    ).to(tl.float32)
    a_src = tl.sum(x_j * w_src[None, :, :], axis=2)
    bias = tl.load(eb_ptr + eid[:, None] * H + offs_h[None, :], mask=valid, other=0.0).to(tl.float32)
    z = a_src + a_dst[None, :] + bias
    e = tl.where(z > 0, z, z * slope)
    e = tl.where(valid, e, float("-inf"))
    return e, z, x_j, eid, valid


@triton.jit
def _node_row(ptr, H, C, BLOCK_H: tl.constexpr, BLOCK_C: tl.constexpr):
    """A (BLOCK_H, BLOCK_C) fp32 row of a (heads, C) block at ``ptr``, zeros outside."""
    offs_h = tl.arange(0, BLOCK_H)
    offs_c = tl.arange(0, BLOCK_C)
    mask = (offs_h < H)[:, None] & (offs_c < C)[None, :]
    return tl.load(ptr + offs_h[:, None] * C + offs_c[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _store_row(ptr, val, H, C, BLOCK_H: tl.constexpr, BLOCK_C: tl.constexpr):
    offs_h = tl.arange(0, BLOCK_H)
    offs_c = tl.arange(0, BLOCK_C)
    mask = (offs_h < H)[:, None] & (offs_c < C)[None, :]
    tl.store(ptr + offs_h[:, None] * C + offs_c[None, :], val.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _safe_peak(m):
    # A head or node without edges keeps -inf; shifting by 0 instead keeps exp(-inf - 0) = 0, not NaN.
    return tl.where(m == float("-inf"), 0.0, m)


# ---------------------------------------------------------------- forward


@triton.jit
def _gat_fwd_kernel(
    x_ptr,
    w_src_ptr,
    w_dst_ptr,
    eb_ptr,
    rowptr_ptr,
    src_ptr,
    eid_ptr,
    out_ptr,
    attn_ptr,
    N,
    E,
    H,
    C,
    slope,
    BLOCK_E: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ONE_TILE: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    i = tl.program_id(1).to(tl.int64)
    start = tl.load(rowptr_ptr + i)
    end = tl.load(rowptr_ptr + i + 1)
    x_b = x_ptr + b * N * H * C
    w_src = _node_row(w_src_ptr, H, C, BLOCK_H, BLOCK_C)
    w_dst = _node_row(w_dst_ptr, H, C, BLOCK_H, BLOCK_C)
    a_dst = tl.sum(_node_row(x_b + i * H * C, H, C, BLOCK_H, BLOCK_C) * w_dst, axis=1)
    attn_b = attn_ptr + b * E * H
    offs_h = tl.arange(0, BLOCK_H)
    if ONE_TILE:
        e, z, x_j, eid, valid = _edge_tile(
            x_b, src_ptr, eid_ptr, eb_ptr, w_src, a_dst, start, end, H, C, slope, BLOCK_E, BLOCK_H, BLOCK_C
        )
        p = tl.exp(e - _safe_peak(tl.max(e, axis=0))[None, :])
        total = tl.sum(p, axis=0)
        a = p / tl.where(total > 0, total, 1.0)[None, :]
        out = tl.sum(a[:, :, None] * x_j, axis=0)
        tl.store(attn_b + eid[:, None] * H + offs_h[None, :], a.to(attn_ptr.dtype.element_ty), mask=valid)
    else:
        # Online softmax over the tiles: rescale the running total and sum to each new peak.
        peak = tl.full((BLOCK_H,), float("-inf"), tl.float32)
        total = tl.zeros((BLOCK_H,), tl.float32)
        out = tl.zeros((BLOCK_H, BLOCK_C), tl.float32)
        for pos in range(start, end, BLOCK_E):
            e, z, x_j, eid, valid = _edge_tile(
                x_b, src_ptr, eid_ptr, eb_ptr, w_src, a_dst, pos, end, H, C, slope, BLOCK_E, BLOCK_H, BLOCK_C
            )
            new_peak = tl.maximum(peak, tl.max(e, axis=0))
            shift = _safe_peak(new_peak)
            scale = tl.exp(peak - shift)
            p = tl.exp(e - shift[None, :])
            total = total * scale + tl.sum(p, axis=0)
            out = out * scale[:, None] + tl.sum(p[:, :, None] * x_j, axis=0)
            peak = new_peak
        shift = _safe_peak(peak)
        total = tl.where(total > 0, total, 1.0)
        out = out / total[:, None]
        for pos in range(start, end, BLOCK_E):
            e, z, x_j, eid, valid = _edge_tile(
                x_b, src_ptr, eid_ptr, eb_ptr, w_src, a_dst, pos, end, H, C, slope, BLOCK_E, BLOCK_H, BLOCK_C
            )
            a = tl.exp(e - shift[None, :]) / total[None, :]
            tl.store(attn_b + eid[:, None] * H + offs_h[None, :], a.to(attn_ptr.dtype.element_ty), mask=valid)
    _store_row(out_ptr + (b * N + i) * H * C, out, H, C, BLOCK_H, BLOCK_C)


# ---------------------------------------------------------------- backward


@triton.jit
def _edge_grad(x_j, g_i, ga_b, eid, valid, H, HAS_GA: tl.constexpr, BLOCK_H: tl.constexpr):
    """dA_ij = <dout_i, x_j> + dattention_ij for one tile of edges."""
    d_a = tl.sum(x_j * g_i[None, :, :], axis=2)
    if HAS_GA:
        offs_h = tl.arange(0, BLOCK_H)
        d_a += tl.load(ga_b + eid[:, None] * H + offs_h[None, :], mask=valid, other=0.0).to(tl.float32)
    return d_a


@triton.jit
def _gat_bwd_target_kernel(
    x_ptr,
    w_src_ptr,
    w_dst_ptr,
    eb_ptr,
    g_ptr,
    ga_ptr,
    rowptr_ptr,
    src_ptr,
    eid_ptr,
    a_ptr,  # out: (batch, E, H) fp32 attention
    de_ptr,  # out: (batch, E, H) fp32 dlogit
    dadst_ptr,  # out: (batch, N, H) fp32 dalpha_dst
    N,
    E,
    H,
    C,
    slope,
    HAS_GA: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ONE_TILE: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    i = tl.program_id(1).to(tl.int64)
    start = tl.load(rowptr_ptr + i)
    end = tl.load(rowptr_ptr + i + 1)
    x_b = x_ptr + b * N * H * C
    w_src = _node_row(w_src_ptr, H, C, BLOCK_H, BLOCK_C)
    w_dst = _node_row(w_dst_ptr, H, C, BLOCK_H, BLOCK_C)
    a_dst = tl.sum(_node_row(x_b + i * H * C, H, C, BLOCK_H, BLOCK_C) * w_dst, axis=1)
    g_i = _node_row(g_ptr + (b * N + i) * H * C, H, C, BLOCK_H, BLOCK_C)
    ga_b = ga_ptr + b * E * H
    a_b = a_ptr + b * E * H
    de_b = de_ptr + b * E * H
    offs_h = tl.arange(0, BLOCK_H)
    if ONE_TILE:
        e, z, x_j, eid, valid = _edge_tile(
            x_b, src_ptr, eid_ptr, eb_ptr, w_src, a_dst, start, end, H, C, slope, BLOCK_E, BLOCK_H, BLOCK_C
        )
        p = tl.exp(e - _safe_peak(tl.max(e, axis=0))[None, :])
        total = tl.sum(p, axis=0)
        a = p / tl.where(total > 0, total, 1.0)[None, :]
        d_a = _edge_grad(x_j, g_i, ga_b, eid, valid, H, HAS_GA, BLOCK_H)
        ds = a * (d_a - tl.sum(a * d_a, axis=0)[None, :])
        de = tl.where(valid, tl.where(z > 0, ds, ds * slope), 0.0)
        tl.store(a_b + eid[:, None] * H + offs_h[None, :], a, mask=valid)
        tl.store(de_b + eid[:, None] * H + offs_h[None, :], de, mask=valid)
        d_alpha_dst = tl.sum(de, axis=0)
    else:
        # Pass 1: the peak, the total and sum_k p_ik dA_ik, all rescaled online to the running peak.
        peak = tl.full((BLOCK_H,), float("-inf"), tl.float32)
        total = tl.zeros((BLOCK_H,), tl.float32)
        dot = tl.zeros((BLOCK_H,), tl.float32)
        for pos in range(start, end, BLOCK_E):
            e, z, x_j, eid, valid = _edge_tile(
                x_b, src_ptr, eid_ptr, eb_ptr, w_src, a_dst, pos, end, H, C, slope, BLOCK_E, BLOCK_H, BLOCK_C
            )
            d_a = _edge_grad(x_j, g_i, ga_b, eid, valid, H, HAS_GA, BLOCK_H)
            new_peak = tl.maximum(peak, tl.max(e, axis=0))
            shift = _safe_peak(new_peak)
            scale = tl.exp(peak - shift)
            p = tl.exp(e - shift[None, :])
            total = total * scale + tl.sum(p, axis=0)
            dot = dot * scale + tl.sum(p * d_a, axis=0)
            peak = new_peak
        shift = _safe_peak(peak)
        total = tl.where(total > 0, total, 1.0)
        mean_da = dot / total
        # Pass 2: the normalised weights, ds and de per edge.
        d_alpha_dst = tl.zeros((BLOCK_H,), tl.float32)
        for pos in range(start, end, BLOCK_E):
            e, z, x_j, eid, valid = _edge_tile(
                x_b, src_ptr, eid_ptr, eb_ptr, w_src, a_dst, pos, end, H, C, slope, BLOCK_E, BLOCK_H, BLOCK_C
            )
            d_a = _edge_grad(x_j, g_i, ga_b, eid, valid, H, HAS_GA, BLOCK_H)
            a = tl.exp(e - shift[None, :]) / total[None, :]
            ds = a * (d_a - mean_da[None, :])
            de = tl.where(valid, tl.where(z > 0, ds, ds * slope), 0.0)
            tl.store(a_b + eid[:, None] * H + offs_h[None, :], a, mask=valid)
            tl.store(de_b + eid[:, None] * H + offs_h[None, :], de, mask=valid)
            d_alpha_dst += tl.sum(de, axis=0)
    tl.store(dadst_ptr + (b * N + i) * H + offs_h, d_alpha_dst, mask=offs_h < H)


@triton.jit
def _gat_bwd_source_kernel(
    g_ptr,
    w_src_ptr,
    w_dst_ptr,
    rowptr_ptr,
    dst_ptr,
    eid_ptr,
    a_ptr,
    de_ptr,
    dadst_ptr,
    dx_ptr,  # out: (batch, N, H, C) dtype of x
    dasrc_ptr,  # out: (batch, N, H) fp32 dalpha_src
    N,
    E,
    H,
    C,
    BLOCK_E: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1).to(tl.int64)
    start = tl.load(rowptr_ptr + j)
    end = tl.load(rowptr_ptr + j + 1)
    offs_h = tl.arange(0, BLOCK_H)
    offs_c = tl.arange(0, BLOCK_C)
    hmask = offs_h < H
    g_b = g_ptr + b * N * H * C
    a_b = a_ptr + b * E * H
    de_b = de_ptr + b * E * H
    acc = tl.zeros((BLOCK_H, BLOCK_C), tl.float32)
    d_alpha_src = tl.zeros((BLOCK_H,), tl.float32)
    for pos in range(start, end, BLOCK_E):
        offs_e = pos + tl.arange(0, BLOCK_E)
        emask = offs_e < end
        dst = tl.load(dst_ptr + offs_e, mask=emask, other=0).to(tl.int64)
        eid = tl.load(eid_ptr + offs_e, mask=emask, other=0).to(tl.int64)
        valid = emask[:, None] & hmask[None, :]
        a = tl.load(a_b + eid[:, None] * H + offs_h[None, :], mask=valid, other=0.0)
        de = tl.load(de_b + eid[:, None] * H + offs_h[None, :], mask=valid, other=0.0)
        fmask = valid[:, :, None] & (offs_c < C)[None, None, :]
        g_offs = dst[:, None, None] * (H * C) + offs_h[None, :, None] * C + offs_c[None, None, :]
        g_t = tl.load(g_b + g_offs, mask=fmask, other=0.0).to(tl.float32)
        acc += tl.sum(a[:, :, None] * g_t, axis=0)
        d_alpha_src += tl.sum(de, axis=0)
    d_alpha_dst = tl.load(dadst_ptr + (b * N + j) * H + offs_h, mask=hmask, other=0.0)
    w_src = _node_row(w_src_ptr, H, C, BLOCK_H, BLOCK_C)
    w_dst = _node_row(w_dst_ptr, H, C, BLOCK_H, BLOCK_C)
    dx = acc + d_alpha_src[:, None] * w_src + d_alpha_dst[:, None] * w_dst
    _store_row(dx_ptr + (b * N + j) * H * C, dx, H, C, BLOCK_H, BLOCK_C)
    tl.store(dasrc_ptr + (b * N + j) * H + offs_h, d_alpha_src, mask=hmask)


# ---------------------------------------------------------------- wrappers


def _check_kernel_inputs(x: Tensor, att_src: Tensor, att_dst: Tensor, edge_bias: Tensor, edge_index: Tensor) -> None:
    _check_gat_inputs(x, att_src, att_dst, edge_bias, edge_index)
    for name, t in (("x", x), ("att_src", att_src), ("att_dst", att_dst), ("edge_bias", edge_bias)):
        if t.dtype not in _DTYPES:
            raise ValueError(f"gat_attention: {name} must be float32, float16 or bfloat16, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"gat_attention: {name} is on {t.device} but x is on {x.device}")
    if edge_index.device != x.device:
        raise ValueError(f"gat_attention: edge_index is on {edge_index.device} but x is on {x.device}")


def gat_attention_forward(
    x: Tensor,
    att_src: Tensor,
    att_dst: Tensor,
    edge_bias: Tensor,
    edge_index: Tensor,
    negative_slope: float = 0.2,
    *,
    block_e: int | None = None,
) -> tuple[Tensor, Tensor]:
    """``spectramind::gat_attention`` forward as one Triton launch. Shapes as in the module docstring.

    Returns (out, attention) in the dtype of x. ``block_e`` (a power of two) overrides the edge
    tile of ``_blocks``; tests use it to drive the multi-tile path on small graphs.
    """
    _check_kernel_inputs(x, att_src, att_dst, edge_bias, edge_index)
    batch, n, heads, ch = x.shape
    n_edges = edge_index.shape[1]
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    attn = x.new_empty(batch, n_edges, heads)
    if out.numel() == 0:
        return out, attn
    plan = gat_plan(edge_index, n)
    tile_e, tile_h, tile_c, num_warps = _blocks(plan.max_in_degree, heads, ch)
    tile_e = block_e or tile_e
    _gat_fwd_kernel[(batch, n)](
        x.contiguous(),
        att_src.contiguous(),
        att_dst.contiguous(),
        edge_bias.contiguous(),
        plan.rowptr_dst,
        plan.src_by_dst,
        plan.eid_by_dst,
        out,
        attn,
        n,
        n_edges,
        heads,
        ch,
        float(negative_slope),
        BLOCK_E=tile_e,
        BLOCK_H=tile_h,
        BLOCK_C=tile_c,
        ONE_TILE=plan.max_in_degree <= tile_e,
        num_warps=num_warps,
    )
    return out, attn


def gat_attention_backward(
    grad_out: Tensor | None,
    grad_attn: Tensor | None,
    x: Tensor,
    att_src: Tensor,
    att_dst: Tensor,
    edge_bias: Tensor,
    edge_index: Tensor,
    negative_slope: float = 0.2,
    *,
    block_e: int | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """VJP of ``gat_attention_forward`` for (x, att_src, att_dst, edge_bias).

    ``grad_out`` (batch, N, heads, C) and ``grad_attn`` (batch, E, heads) are the gradients of
    the two outputs; either may be None (no gradient through it). Returns (dx, d_att_src,
    d_att_dst, d_edge_bias) in the dtypes of the matching inputs. ``block_e`` as in the forward.
    """
    _check_kernel_inputs(x, att_src, att_dst, edge_bias, edge_index)
    batch, n, heads, ch = x.shape
    n_edges = edge_index.shape[1]
    if grad_out is None:
        grad_out = torch.zeros_like(x)
    if tuple(grad_out.shape) != tuple(x.shape):
        raise ValueError(
            f"gat_attention backward: grad_out must have shape {tuple(x.shape)}, got {tuple(grad_out.shape)}"
        )
    if grad_attn is not None and tuple(grad_attn.shape) != (batch, n_edges, heads):
        raise ValueError(
            f"gat_attention backward: grad_attn must have shape {(batch, n_edges, heads)}, got {tuple(grad_attn.shape)}"
        )
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return dx, torch.zeros_like(att_src), torch.zeros_like(att_dst), torch.zeros_like(edge_bias)
    plan = gat_plan(edge_index, n)
    f32 = dict(dtype=torch.float32, device=x.device)
    attn = torch.empty(batch, n_edges, heads, **f32)
    d_logit = torch.empty(batch, n_edges, heads, **f32)
    d_alpha_dst = torch.empty(batch, n, heads, **f32)
    d_alpha_src = torch.empty(batch, n, heads, **f32)
    x_c, w_src, w_dst, g = x.contiguous(), att_src.contiguous(), att_dst.contiguous(), grad_out.contiguous()
    has_ga = grad_attn is not None
    # Without grad_attn the kernel never reads its pointer; d_logit stands in for a valid address.
    ga = grad_attn.contiguous() if has_ga else d_logit

    tile_e, tile_h, tile_c, num_warps = _blocks(plan.max_in_degree, heads, ch)
    tile_e = block_e or tile_e
    _gat_bwd_target_kernel[(batch, n)](
        x_c,
        w_src,
        w_dst,
        edge_bias.contiguous(),
        g,
        ga,
        plan.rowptr_dst,
        plan.src_by_dst,
        plan.eid_by_dst,
        attn,
        d_logit,
        d_alpha_dst,
        n,
        n_edges,
        heads,
        ch,
        float(negative_slope),
        HAS_GA=has_ga,
        BLOCK_E=tile_e,
        BLOCK_H=tile_h,
        BLOCK_C=tile_c,
        ONE_TILE=plan.max_in_degree <= tile_e,
        num_warps=num_warps,
    )
    tile_e, tile_h, tile_c, num_warps = _blocks(plan.max_out_degree, heads, ch)
    tile_e = block_e or tile_e
    _gat_bwd_source_kernel[(batch, n)](
        g,
        w_src,
        w_dst,
        plan.rowptr_src,
        plan.dst_by_src,
        plan.eid_by_src,
        attn,
        d_logit,
        d_alpha_dst,
        dx,
        d_alpha_src,
        n,
        n_edges,
        heads,
        ch,
        BLOCK_E=tile_e,
        BLOCK_H=tile_h,
        BLOCK_C=tile_c,
        num_warps=num_warps,
    )
    x32 = x_c.float()
    d_att_src = torch.einsum("bnh,bnhc->hc", d_alpha_src, x32).to(att_src.dtype)
    d_att_dst = torch.einsum("bnh,bnhc->hc", d_alpha_dst, x32).to(att_dst.dtype)
    d_edge_bias = d_logit.sum(0).to(edge_bias.dtype)
    return dx, d_att_src, d_att_dst, d_edge_bias
