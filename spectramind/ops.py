"""Custom operators of SpectraMind V50: the selective scan of the Mamba encoder and GAT attention.

Both are declared with ``torch.library.custom_op`` so that tracing records them by name
(``spectramind::selective_scan``, ``spectramind::gat_attention``): the CPU implementations
here are plain PyTorch and are the reference numerics; ``triton_kernels`` registers CUDA
implementations for the same names. The ``*_ref`` functions are slow, obvious oracles for tests.

selective_scan (mamba_ssm ``selective_scan_fn`` semantics)::

    delta_t = softplus(delta_t + delta_bias)           (if delta_softplus)
    h_t     = exp(delta_t A) h_{t-1} + delta_t B_t u_t
    y_t     = <C_t, h_t> + D u_t,   y_t <- y_t * silu(z_t)   (if z is given)

    Shapes: u, delta, z (batch, d_inner, L); A (d_inner, d_state); B, C (batch, d_state, L);
    D, delta_bias (d_inner,). Returns y (batch, d_inner, L). ``reverse`` scans from t = L-1
    down to 0 (h_{L} = 0), without materialising a flipped copy of the inputs.

gat_attention (GATConv of PyTorch Geometric, attention part, fixed graph)::

    e_ij   = LeakyReLU(<x_j, att_src_h> + <x_i, att_dst_h> + edge_bias_(j->i),h)
    a_ij   = softmax_j(e_ij)  over the incoming edges j -> i of node i
    out_i  = sum_j a_ij x_j

    Shapes: x (batch, N, heads, C); att_src, att_dst (heads, C); edge_bias (E, heads);
    edge_index (2, E) int64 with row 0 the source j and row 1 the target i. Returns
    out (batch, N, heads, C) and attention (batch, E, heads). A node without incoming edges
    gets zeros.

CPU implementations (the op bodies, and what their backward differentiates):

- ``selective_scan_chunked``: a chunk-parallel scan (the forward; the backward is the analytic
  ``selective_scan_backward``: an adjoint scan backwards in time). The sequence is cut into chunks that all
  advance together, one in-chunk position per step, from a zero state (pass 1); a loop over
  the chunks carries the true state across chunk boundaries with the chunk's total decay
  exp(A * sum(delta)) (a segment sum in log space); pass 2 replays every chunk from its true
  entry state and contracts with C. The Python loops run over in-chunk positions and over
  chunks, never over the L time steps one by one. The recurrence stays in linear space on
  purpose: Mamba-1 decays differ per (channel, state), so the log-space factorisation
  exp(L_t) * exp(-L_s) used for scalar-decay SSMs overflows fp32 once a chunk decays by more
  than ~88 nats (|A| ~ d_state with delta ~ 1 is enough), and the masked-segment-sum form
  needs (batch, d_inner, d_state, T, T) exponentials per chunk, T times the recurrence's own
  work. Products of per-step decays <= 1 cannot overflow, so the strongest decay is just 0.
- ``gat_attention_dense``: softmax over the E edges (per-target max and total by scatter),
  then the weights scattered into a (heads, N, N) matrix of the fixed graph (N = 283), zero
  where there is no edge, and out = attention @ x as one batched matmul.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

# ---------------------------------------------------------------- selective scan


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    reverse: bool = False,
) -> Tensor:
    """Per-step selective scan in fp32 (fp64 for fp64 inputs): the test oracle. Shapes as in the module docstring."""
    dtype = u.dtype
    work = torch.promote_types(dtype, torch.float32)
    u, delta, A, B, C = (t.to(work) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(work)[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, d_inner, L = u.shape
    h = u.new_zeros(batch, d_inner, A.shape[1])
    ys = [None] * L
    steps = range(L - 1, -1, -1) if reverse else range(L)
    for t in steps:
        dA = torch.exp(delta[:, :, t, None] * A)
        h = dA * h + (delta[:, :, t] * u[:, :, t])[:, :, None] * B[:, None, :, t]
        ys[t] = (h * C[:, None, :, t]).sum(-1)
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u * D.to(work)[None, :, None]
    if z is not None:
        y = y * F.silu(z.to(work))
    return y.to(dtype)


# Sizing of the chunked scan. One op touches (batch, chunks, d_state, channels) state elements;
# 2**17 fp32 values (512 KiB) keep an op's operands in a core's L2 while still being large
# enough that the ~4 us of Python/dispatcher overhead per op stays small next to its work.
# Beyond that size every extra pass over the state is bound by memory bandwidth, which was
# measured to cost more than the recurrence's arithmetic.
_OP_ELEMENTS = 1 << 17
_MIN_CHUNKS = 4
_MAX_CHUNKS = 64
_MAX_CHUNK_LEN = 16
# Log-decays are clamped here before exp. Below about -87 an fp32 exp returns subnormals, which
# x86 processes ~20x slower (a few per vector are enough), and products with them stay slow. The
# clamp changes a decay that is already below exp(-60) ~ 1e-26 (fp64: exp(-600)), i.e. below
# the resolution of any state it multiplies, and its gradient, which is as small.
_LOG_DECAY_FLOOR = {torch.float32: -60.0, torch.float64: -600.0}
# Under autograd, scans with more states than this are checkpointed block by block: autograd
# would keep a few tensors the size of all states (GBs at batch 8, d_inner 512, d_state 32,
# L 1024), and recomputing each block in the backward costs one more forward.
_CHECKPOINT_ELEMENTS = 1 << 25


def _check_scan_inputs(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
) -> None:
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, d_inner, L), got shape {tuple(u.shape)}")
    if A.dim() != 2 or A.shape[0] != u.shape[1]:
        raise ValueError(f"selective_scan: A must be (d_inner={u.shape[1]}, d_state), got shape {tuple(A.shape)}")
    batch, d_inner, length = u.shape
    d_state = A.shape[1]
    expected = {
        "delta": (delta, (batch, d_inner, length)),
        "B": (B, (batch, d_state, length)),
        "C": (C, (batch, d_state, length)),
        "D": (D, (d_inner,)),
        "z": (z, (batch, d_inner, length)),
        "delta_bias": (delta_bias, (d_inner,)),
    }
    for name, (t, shape) in expected.items():
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"selective_scan: {name} must have shape {shape}, got {tuple(t.shape)}")


def _scan_plan(batch: int, d_inner: int, d_state: int, length: int) -> tuple[int, int, int]:
    """(channels per group, chunks advanced together, chunk length) for the chunked scan."""
    per_channel = batch * d_state
    width = max(1, min(d_inner, _OP_ELEMENTS // (_MIN_CHUNKS * per_channel)))
    max_chunks = max(_MIN_CHUNKS, min(_MAX_CHUNKS, _OP_ELEMENTS // (per_channel * width)))
    # A block of T * K steps costs 2T position steps (two passes) plus K chunk steps:
    # T ~ sqrt(L / 2) balances the two for short sequences.
    chunk_len = max(1, min(_MAX_CHUNK_LEN, math.isqrt(length // 2)))
    chunks = max(1, min(max_chunks, -(-length // chunk_len)))
    return width, chunks, chunk_len


def _scan_block(
    dl: Tensor, xl: Tensor, Bl: Tensor, Cl: Tensor, At: Tensor, h_in: Tensor, reverse: bool, inplace: bool
) -> tuple[Tensor, Tensor]:
    """Scan one time block of one channel group, its K chunks of T steps advancing together.

    Shapes: dl, xl (T, batch, K, g): delta and x = delta * u, position-major so that one
    position of all chunks is a contiguous slab; Bl, Cl (T, batch, K, n); At (n, g); h_in
    (batch, n, g), the state entering the block in scan order. Returns y (T, batch, K, g)
    (before D and z) and the state leaving the block.
    """
    T, batch, K, g = dl.shape
    n = At.shape[0]
    across = dl.sum(0).unsqueeze(-2)  # (batch, K, 1, g): summed deltas of each chunk
    # unbind, not dl[j]: autograd turns each indexing into a zero-filled copy of the whole block
    # in the backward, T of them per input; unbind's backward is one stack.
    dl, xl = dl.unsqueeze(-2).unbind(0), xl.unsqueeze(-2).unbind(0)  # T x (batch, K, 1, g)
    Bl, Cl = Bl.unsqueeze(-1).unbind(0), Cl.unsqueeze(-2).unbind(0)  # T x (batch, K, n, 1), (batch, K, 1, n)
    order = range(T - 1, -1, -1) if reverse else range(T)
    chunk_order = range(K - 1, -1, -1) if reverse else range(K)
    # Decays are recomputed in each pass instead of stored: a stored (T, batch, K, n, g) block
    # falls out of cache, and re-reading it from memory was measured slower than exp again.
    scratch = At.new_empty(batch, K, n, g) if inplace else None
    floor = _LOG_DECAY_FLOOR[At.dtype]

    def advance(h: Tensor, j: int) -> Tensor:
        if inplace:
            decay = torch.mul(dl[j], At, out=scratch).clamp_(min=floor).exp_()
            return h.mul_(decay).addcmul_(Bl[j], xl[j])
        return torch.addcmul(h * torch.exp((dl[j] * At).clamp(min=floor)), Bl[j], xl[j])

    # Pass 1: each chunk from a zero state; only its exit state is used.
    first, *rest = order
    h = Bl[first] * xl[first]
    for j in rest:
        h = advance(h, j)
    # Chunk carries: the decay across a whole chunk is exp(A * sum of its deltas); its exponent
    # is a segment sum in log space, so no product of T factors is formed.
    across = torch.exp((across * At).clamp(min=floor)).unbind(1)  # K x (batch, n, g)
    exits = h.unbind(1)
    entries: list[Tensor] = [h_in] * K
    state = h_in
    for k in chunk_order:
        entries[k] = state
        state = torch.addcmul(exits[k], across[k], state)
    # Pass 2: replay every chunk from its true entry state and read out y.
    h = torch.stack(entries, dim=1)
    ys: list[Tensor] = [h_in] * T
    for j in order:
        h = advance(h, j)
        ys[j] = torch.matmul(Cl[j], h).squeeze(-2)  # (batch, K, g)
    return torch.stack(ys), state


def selective_scan_chunked(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    reverse: bool = False,
    *,
    chunking: tuple[int, int, int] | None = None,
) -> Tensor:
    """Chunk-parallel selective scan in fp32 (fp64 for fp64 inputs): the CPU implementation of the op.

    Same semantics and shapes as ``selective_scan_ref`` (see the module docstring);
    differentiable with ordinary autograd. ``chunking`` = (channels per group, chunks advanced
    together, chunk length) overrides the cache-sized default, for tests and benchmarks.
    Working memory is one block of (batch, chunks, d_state, channels) states plus re-laid copies
    of the inputs, whatever L is; under autograd, long scans are checkpointed block by block so
    the backward keeps that bound instead of holding every state of the sequence.
    """
    _check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    dtype = u.dtype
    work = torch.promote_types(dtype, torch.float32)
    u, delta, A, B, C = (t.to(work) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(work)[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, d_inner, length = u.shape
    d_state = A.shape[1]
    width, chunks, chunk_len = chunking or _scan_plan(batch, d_inner, d_state, length)
    if min(width, chunks, chunk_len) < 1:
        raise ValueError(f"selective_scan_chunked: chunking sizes must be >= 1, got {chunking}")
    width = min(width, d_inner)
    n_groups, n_blocks = -(-d_inner // width), -(-length // (chunks * chunk_len))
    pad_ch, pad_t = n_groups * width - d_inner, n_blocks * chunks * chunk_len - length

    # Inputs are re-laid once, (group, block, position, batch, chunk, ...), so every block reads
    # contiguous slabs. Zero padding is neutral in both directions: delta = 0 (and A = 0 for
    # padded channels) decays by exp(0) = 1 and x = 0 adds nothing, so a padded tail neither
    # moves a forward state nor seeds a reverse one, and padded channels stay 0.
    def by_channel(v: Tensor) -> Tensor:
        v = F.pad(v, (0, pad_t, 0, pad_ch)).view(batch, n_groups, width, n_blocks, chunks, chunk_len)
        return v.permute(1, 3, 5, 0, 4, 2).contiguous()

    def by_state(v: Tensor) -> Tensor:
        v = F.pad(v, (0, pad_t)).view(batch, d_state, n_blocks, chunks, chunk_len)
        return v.permute(2, 4, 0, 3, 1).contiguous()

    dl, xl = by_channel(delta), by_channel(delta * u)
    Bl, Cl = by_state(B), by_state(C)
    At = F.pad(A, (0, 0, 0, pad_ch)).view(n_groups, width, d_state).transpose(1, 2).contiguous()
    blocks = range(n_blocks - 1, -1, -1) if reverse else range(n_blocks)
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (u, delta, A, B, C))
    split = grad and n_groups * n_blocks > 1 and batch * d_inner * d_state * length > _CHECKPOINT_ELEMENTS

    # unbind rather than indexing, for the same reason as in _scan_block.
    Bl, Cl = Bl.unbind(0), Cl.unbind(0)
    groups = []
    for dl_g, xl_g, At_g in zip(dl.unbind(0), xl.unbind(0), At.unbind(0)):
        dl_g, xl_g = dl_g.unbind(0), xl_g.unbind(0)
        state = u.new_zeros(batch, d_state, width)
        pieces: list[Tensor] = [state] * n_blocks
        for bi in blocks:
            args = (dl_g[bi], xl_g[bi], Bl[bi], Cl[bi], At_g, state, reverse)
            if split:
                pieces[bi], state = checkpoint(_scan_block, *args, False, use_reentrant=False)
            else:
                pieces[bi], state = _scan_block(*args, not grad)
        groups.append(torch.stack(pieces))
    y = torch.stack(groups)  # (group, block, position, batch, chunk, channel)
    y = y.permute(3, 0, 5, 1, 4, 2).reshape(batch, n_groups * width, -1)[:, :d_inner, :length]
    if D is not None:
        y = y + u * D.to(work)[None, :, None]
    if z is not None:
        y = y * F.silu(z.to(work))
    return y.to(dtype).contiguous()


@torch.library.custom_op("spectramind::selective_scan", mutates_args=())
def _selective_scan_op(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
    reverse: bool,
) -> Tensor:
    return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)


@_selective_scan_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
    # Contiguous whatever u's strides: the CPU implementation always returns a fresh contiguous y.
    return u.new_empty(u.shape)


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    reverse: bool = False,
) -> Tensor:
    """``torch.ops.spectramind.selective_scan`` with keyword defaults. Shapes as in the module docstring."""
    return torch.ops.spectramind.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)


# ---------------------------------------------------------------- GAT attention


def gat_attention_ref(
    x: Tensor, att_src: Tensor, att_dst: Tensor, edge_bias: Tensor, edge_index: Tensor, negative_slope: float = 0.2
) -> tuple[Tensor, Tensor]:
    """Edge-list GAT attention with scatter ops: the test oracle. Shapes as in the module docstring."""
    batch, n, heads, ch = x.shape
    src, dst = edge_index[0], edge_index[1]
    a_src = (x * att_src).sum(-1)  # (batch, N, heads)
    a_dst = (x * att_dst).sum(-1)
    logits = F.leaky_relu(a_src[:, src] + a_dst[:, dst] + edge_bias[None], negative_slope)  # (batch, E, heads)
    idx = dst[None, :, None].expand(batch, -1, heads)
    peak = torch.full((batch, n, heads), float("-inf"), dtype=x.dtype, device=x.device)
    peak = peak.scatter_reduce(1, idx, logits, reduce="amax", include_self=True)
    w = torch.exp(logits - peak.gather(1, idx))
    total = torch.zeros(batch, n, heads, dtype=x.dtype, device=x.device).scatter_add(1, idx, w)
    attn = w / total.gather(1, idx)
    msg = attn[..., None] * x[:, src]  # (batch, E, heads, C)
    out = torch.zeros_like(x).index_add(1, dst, msg)
    return out, attn


# Entries of one dense (graphs, heads, N, N) attention block: 4 graphs of the 283-node graph
# with 4 heads, ~5 MB, small enough for the allocator to reuse instead of mapping fresh pages.
_GAT_DENSE_ELEMENTS = 1 << 20


def _check_gat_inputs(x: Tensor, att_src: Tensor, att_dst: Tensor, edge_bias: Tensor, edge_index: Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"gat_attention: x must be (batch, N, heads, C), got shape {tuple(x.shape)}")
    _, n, heads, ch = x.shape
    for name, t in (("att_src", att_src), ("att_dst", att_dst)):
        if tuple(t.shape) != (heads, ch):
            raise ValueError(f"gat_attention: {name} must have shape {(heads, ch)}, got {tuple(t.shape)}")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2 or edge_index.dtype != torch.int64:
        raise ValueError(
            f"gat_attention: edge_index must be (2, E) int64, got shape {tuple(edge_index.shape)} {edge_index.dtype}"
        )
    n_edges = edge_index.shape[1]
    if tuple(edge_bias.shape) != (n_edges, heads):
        raise ValueError(f"gat_attention: edge_bias must have shape {(n_edges, heads)}, got {tuple(edge_bias.shape)}")
    if n_edges and (int(edge_index.min()) < 0 or int(edge_index.max()) >= n):
        raise ValueError(f"gat_attention: edge_index has node ids outside [0, {n})")


def gat_attention_dense(
    x: Tensor, att_src: Tensor, att_dst: Tensor, edge_bias: Tensor, edge_index: Tensor, negative_slope: float = 0.2
) -> tuple[Tensor, Tensor]:
    """GAT attention with a dense aggregation over the fixed graph: the CPU implementation of the op.

    Same semantics and shapes as ``gat_attention_ref`` (see the module docstring). The softmax
    runs over the E edges (max and total per target by scatter, E << N^2); the normalised
    weights are then scattered into a (batch, heads, N_target, N_source) matrix, zero where
    there is no edge, and out = attention @ x is one batched matmul per head.

    The softmax is not taken over the dense -inf-masked (N, N) logits: on the 283-node graph
    ~97% of that matrix is masked, and torch's CPU exp leaves its vector path for inputs that
    underflow (-inf included: 7-50 ns per element measured against 0.4), which made the fully
    dense version 2x slower than the edge-list reference. Repeated (source, target) pairs are
    summed into their matrix slot, which is the same sum the edge list forms.
    """
    _check_gat_inputs(x, att_src, att_dst, edge_bias, edge_index)
    return _gat_dense(x, att_src, att_dst, edge_bias, edge_index, negative_slope)


def _gat_dense(
    x: Tensor, att_src: Tensor, att_dst: Tensor, edge_bias: Tensor, edge_index: Tensor, negative_slope: float
) -> tuple[Tensor, Tensor]:
    # Unchecked body of gat_attention_dense. The backward calls it directly: its inputs were
    # checked by the forward, and the node-id range check reads data, which tracing the
    # backward with fake tensors (torch.compile, opcheck) cannot do.
    batch, n, heads, _ = x.shape
    src, dst = edge_index[0], edge_index[1]
    xh = x.transpose(1, 2)  # (batch, heads, N, C)
    a_src = (xh * att_src[None, :, None, :]).sum(-1)  # (batch, heads, N)
    a_dst = (xh * att_dst[None, :, None, :]).sum(-1)
    logits = F.leaky_relu(a_src[..., src] + a_dst[..., dst] + edge_bias.t(), negative_slope)  # (batch, heads, E)
    target = dst.expand(batch, heads, -1)
    # The shift only has to stop exp from overflowing; it is taken out of the graph because the
    # softmax does not depend on it. A target without incoming edges keeps -inf but is never read.
    peak = logits.new_full((batch, heads, n), float("-inf"))
    peak = peak.scatter_reduce(-1, target, logits.detach(), reduce="amax")
    w = torch.exp(logits - peak.gather(-1, target))
    total = logits.new_zeros(batch, heads, n).scatter_add(-1, target, w)
    attn = w / total.gather(-1, target)  # (batch, heads, E)
    # The matrix is built a few graphs at a time: a (batch, heads, N, N) block for batch 32 is
    # 41 MB, and allocating it afresh each call costs more in page faults than the matmul.
    step = max(1, _GAT_DENSE_ELEMENTS // (heads * n * n))
    slot = (dst * n + src).expand(min(step, batch), heads, -1)  # edge j -> i in a row-major (N, N) matrix
    outs = []
    for b0 in range(0, batch, step):
        part = attn[b0 : b0 + step]
        dense = x.new_zeros(part.shape[0], heads, n * n).scatter_add_(-1, slot[: part.shape[0]], part)
        outs.append(torch.matmul(dense.view(-1, heads, n, n), xh[b0 : b0 + step]))
    out = torch.cat(outs).transpose(1, 2)  # (batch, N, heads, C); a target without edges gets 0
    return out.contiguous(), attn.transpose(1, 2).contiguous()


@torch.library.custom_op("spectramind::gat_attention", mutates_args=())
def _gat_attention_op(
    x: Tensor, att_src: Tensor, att_dst: Tensor, edge_bias: Tensor, edge_index: Tensor, negative_slope: float
) -> tuple[Tensor, Tensor]:
    out, attn = gat_attention_dense(x, att_src, att_dst, edge_bias, edge_index, negative_slope)
    return out, attn


@_gat_attention_op.register_fake
def _(x, att_src, att_dst, edge_bias, edge_index, negative_slope):
    batch, _, heads, _ = x.shape
    return x.new_empty(x.shape), x.new_empty(batch, edge_index.shape[1], heads)


def gat_attention(
    x: Tensor, att_src: Tensor, att_dst: Tensor, edge_bias: Tensor, edge_index: Tensor, negative_slope: float = 0.2
) -> tuple[Tensor, Tensor]:
    """``torch.ops.spectramind.gat_attention``. Shapes as in the module docstring."""
    return torch.ops.spectramind.gat_attention(x, att_src, att_dst, edge_bias, edge_index, negative_slope)


# ---------------------------------------------------------------- autograd
# GAT's backward recomputes the forward in plain PyTorch under autograd and differentiates it;
# the scan's backward is analytic (selective_scan_backward). Neither calls the ops themselves,
# which would recurse into these backwards.


def _recompute_vjp(fn, tensors: list[Tensor | None], grads: tuple[Tensor, ...]) -> list[Tensor | None]:
    leaves = [t.detach().requires_grad_(True) if t is not None and t.is_floating_point() else t for t in tensors]
    with torch.enable_grad():
        outs = fn(*leaves)
        outs = outs if isinstance(outs, tuple) else (outs,)
        wrt = [t for t in leaves if t is not None and t.requires_grad]
        pairs = [(o, g) for o, g in zip(outs, grads) if g is not None]
        got = torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True)
    it = iter(got)
    return [next(it) if t is not None and t.requires_grad else None for t in leaves]


def _scan_setup(ctx, inputs, output) -> None:
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse = inputs
    ctx.flags = (delta_softplus, reverse)
    ctx.present = [t is not None for t in (D, z, delta_bias)]
    ctx.save_for_backward(u, delta, A, B, C, *(t for t in (D, z, delta_bias) if t is not None))


# States per slice of the analytic backward: three (L, slice, d_inner, d_state) fp32 tensors are
# live at once, so 2**23 elements keep it near 128 MiB whatever the batch.
_BACKWARD_ELEMENTS = 1 << 23


def _scan_grad_slice(
    u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, dy: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of y_t = <C_t, h_t>, h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t (forward in time).

    The adjoint of the state is the same recurrence run backwards in time,
    lam_t = C_t dy_t + exp(dt_{t+1} A) lam_{t+1}, and every input gradient is a contraction of
    lam_t with a forward quantity:

        dB_t  = sum_d lam_t x_t                    (x = dt u)
        dx_t  = sum_n lam_t B_t                    -> du = dx dt, d(dt) = dx u + sum_n q_t A
        q_t   = lam_t exp(dt_t A) h_{t-1}          -> dA = sum_{b,t} q_t dt_t
        dC_t  = sum_d h_t dy_t

    Shapes: u, dt, dy (b, d, L); A (d, n); B, C (b, n, L). Returns du, d(dt) (b, d, L),
    dA (d, n), dB, dC (b, n, L).
    """
    L = u.shape[-1]
    floor = _LOG_DECAY_FLOOR[u.dtype]
    # Time-major (L, b, d, n) so that every step of the two sweeps reads and writes one
    # contiguous slab; strided per-step slices were measured 3x slower.
    dt_t, u_t, dy_t = (v.permute(2, 0, 1).contiguous() for v in (dt, u, dy))  # (L, b, d)
    B_t, C_t = B.permute(2, 0, 1).contiguous(), C.permute(2, 0, 1).contiguous()  # (L, b, n)
    decay = torch.exp((dt_t[..., None] * A).clamp_(min=floor))  # (L, b, d, n)
    x_t = dt_t * u_t
    bx = x_t[..., None] * B_t[:, :, None, :]  # (L, b, d, n): the input of each step
    h_all = torch.empty_like(decay)
    h = torch.zeros_like(decay[0])
    for t in range(L):
        h = torch.addcmul(bx[t], h, decay[t], out=h_all[t])
    # Contractions as batched matmuls over the flattened (L * b) slabs: no permuted copies of the
    # (L, b, d, n) tensors (einsum made two per call, most of the backward's time).
    Lb = L * u.shape[0]
    flat = lambda v: v.view(Lb, *v.shape[2:])  # noqa: E731
    back = lambda v: v.view(L, u.shape[0], -1).permute(1, 2, 0)  # noqa: E731  (Lb, ...) -> (b, k, L)
    dC = back(torch.bmm(flat(dy_t)[:, None, :], flat(h_all)))
    lam_all = bx  # reused: bx is no longer needed
    lam = torch.zeros_like(h)
    for t in range(L - 1, -1, -1):
        inject = dy_t[t][..., None] * C_t[t][:, None, :]
        lam = torch.addcmul(inject, lam, decay[t + 1], out=lam_all[t]) if t + 1 < L else lam_all[t].copy_(inject)
    dB = back(torch.bmm(flat(x_t)[:, None, :], flat(lam_all)))
    dx = back(torch.bmm(flat(lam_all), flat(B_t)[:, :, None]))
    # q_t = lam_t * decay_t * h_{t-1}, with h_{-1} = 0.
    q = lam_all.mul_(decay)
    q[0].zero_()
    q[1:].mul_(h_all[:-1])
    d_dt = dx * u + back((q * A).sum(-1))
    dA = q.mul_(dt_t[..., None]).sum((0, 1))
    return dx * dt, d_dt, dA, dB, dC


def selective_scan_backward(
    grad: Tensor,
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    reverse: bool = False,
) -> tuple[Tensor | None, ...]:
    """Analytic vector-Jacobian product of the selective scan: gradients of (u, delta, A, B, C,
    D, z, delta_bias) given ``grad`` = dL/dy (None for an absent optional input).

    The CPU backward of the op. A reverse scan is the forward scan of the time-flipped
    sequences, so it flips, differentiates forward and flips back. The batch is processed in
    slices of at most ``_BACKWARD_ELEMENTS`` states. Two sequential sweeps over L (states,
    then adjoints) of (slice, d, n) ops and a few contractions: a few times the forward's work,
    instead of differentiating the chunked forward op by op.

    Shapes as in the module docstring.
    """
    dtype = u.dtype
    work = torch.promote_types(dtype, torch.float32)
    g, u_w, dl, A_w, B_w, C_w = (t.to(work) for t in (grad, u, delta, A, B, C))
    pre = dl + delta_bias.to(work)[None, :, None] if delta_bias is not None else dl
    dt = F.softplus(pre) if delta_softplus else pre
    if reverse:
        g, u_w, dt, B_w, C_w = (t.flip(-1) for t in (g, u_w, dt, B_w, C_w))
        z_w = z.to(work).flip(-1) if z is not None else None
    else:
        z_w = z.to(work) if z is not None else None
    batch, d_inner, L = u_w.shape
    d_state = A_w.shape[1]
    step = max(1, _BACKWARD_ELEMENTS // max(1, d_inner * d_state * L))
    du_s, ddt_s, dB_s, dC_s, dz_s = [], [], [], [], []
    dA = torch.zeros_like(A_w)
    dD = torch.zeros(d_inner, dtype=work, device=u.device) if D is not None else None
    for i in range(0, batch, step):
        sl = slice(i, i + step)
        gi, ui = g[sl], u_w[sl]
        if z_w is not None:
            # y_out = y_pre * silu(z), y_pre = <C, h> + D u: the core y is recomputed for dz.
            zi = z_w[sl]
            core = selective_scan_chunked(ui, dt[sl], A_w, B_w[sl], C_w[sl])
            y_pre = core + ui * D.to(work)[None, :, None] if D is not None else core
            sig = torch.sigmoid(zi)
            dz_s.append(gi * y_pre * sig * (1 + zi * (1 - sig)))
            gi = gi * zi * sig
        du, ddt, dAi, dB, dC = _scan_grad_slice(ui, dt[sl], A_w, B_w[sl], C_w[sl], gi)
        if D is not None:
            du = du + gi * D.to(work)[None, :, None]
            dD += (gi * ui).sum((0, 2))
        dA += dAi
        du_s.append(du)
        ddt_s.append(ddt)
        dB_s.append(dB)
        dC_s.append(dC)
    du, ddt, dB, dC = (torch.cat(v) for v in (du_s, ddt_s, dB_s, dC_s))
    dz = torch.cat(dz_s) if z_w is not None else None
    if reverse:
        du, ddt, dB, dC = (t.flip(-1) for t in (du, ddt, dB, dC))
        dz = dz.flip(-1) if dz is not None else None
    d_pre = ddt * torch.sigmoid(pre) if delta_softplus else ddt
    d_bias = d_pre.sum((0, 2)) if delta_bias is not None else None
    outs = (du, d_pre, dA, dB, dC, dD, dz, d_bias)
    likes = (u, delta, A, B, C, D, z, delta_bias)
    return tuple(o.to(t.dtype) if o is not None and t is not None else None for o, t in zip(outs, likes))


# Backward implementations by device type. The ops' autograd formulas are registered once, for
# every device; a backend that has its own backward kernels (triton_kernels, "cuda") adds them
# here, so training on that device runs them too. Absent: the PyTorch backward below.
_BACKWARDS: dict[str, dict[str, Callable[..., tuple[Tensor | None, ...]]]] = {"selective_scan": {}, "gat_attention": {}}


def register_backward(op: str, device_type: str, fn: Callable[..., tuple[Tensor | None, ...]]) -> None:
    """Use ``fn`` as the backward of ``op`` ("selective_scan" | "gat_attention") for tensors on
    ``device_type``. ``fn`` has the signature of :func:`selective_scan_backward` (scan) or
    ``(grad_out, grad_attn, x, att_src, att_dst, edge_bias, edge_index, negative_slope) ->
    (dx, d_att_src, d_att_dst, d_edge_bias)`` (GAT)."""
    if op not in _BACKWARDS:
        raise ValueError(f"register_backward: unknown op {op!r}; ops are {', '.join(_BACKWARDS)}")
    _BACKWARDS[op][device_type] = fn


def backward_impl(op: str, device_type: str) -> Callable[..., tuple[Tensor | None, ...]] | None:
    """The registered backward of ``op`` on ``device_type`` (None: the PyTorch one)."""
    return _BACKWARDS[op].get(device_type)


def _scan_backward(ctx, grad: Tensor):
    saved = list(ctx.saved_tensors)
    core, rest = saved[:5], iter(saved[5:])
    optional = [next(rest) if p else None for p in ctx.present]
    softplus, reverse = ctx.flags
    impl = backward_impl("selective_scan", grad.device.type) or selective_scan_backward
    grads = impl(grad.contiguous(), *core, *optional, softplus, reverse)
    return (*grads, None, None)


_selective_scan_op.register_autograd(_scan_backward, setup_context=_scan_setup)


def _gat_setup(ctx, inputs, output) -> None:
    x, att_src, att_dst, edge_bias, edge_index, negative_slope = inputs
    ctx.negative_slope = negative_slope
    ctx.save_for_backward(x, att_src, att_dst, edge_bias, edge_index)


def _gat_backward(ctx, grad_out: Tensor, grad_attn: Tensor):
    x, att_src, att_dst, edge_bias, edge_index = ctx.saved_tensors
    impl = backward_impl("gat_attention", x.device.type)
    if impl is not None:
        grads = impl(grad_out, grad_attn, x, att_src, att_dst, edge_bias, edge_index, ctx.negative_slope)
        return (*grads, None, None)

    def fn(x, att_src, att_dst, edge_bias):
        return _gat_dense(x, att_src, att_dst, edge_bias, edge_index, ctx.negative_slope)

    grads = _recompute_vjp(fn, [x, att_src, att_dst, edge_bias], (grad_out, grad_attn))
    return (*grads, None, None)


_gat_attention_op.register_autograd(_gat_backward, setup_context=_gat_setup)
