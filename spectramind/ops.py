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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

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
    return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)


@_selective_scan_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
    return torch.empty_like(u)


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


@torch.library.custom_op("spectramind::gat_attention", mutates_args=())
def _gat_attention_op(
    x: Tensor, att_src: Tensor, att_dst: Tensor, edge_bias: Tensor, edge_index: Tensor, negative_slope: float
) -> tuple[Tensor, Tensor]:
    out, attn = gat_attention_ref(x, att_src, att_dst, edge_bias, edge_index, negative_slope)
    return out, attn


@_gat_attention_op.register_fake
def _(x, att_src, att_dst, edge_bias, edge_index, negative_slope):
    batch, _, heads, _ = x.shape
    return torch.empty_like(x), x.new_empty(batch, edge_index.shape[1], heads)


def gat_attention(
    x: Tensor, att_src: Tensor, att_dst: Tensor, edge_bias: Tensor, edge_index: Tensor, negative_slope: float = 0.2
) -> tuple[Tensor, Tensor]:
    """``torch.ops.spectramind.gat_attention``. Shapes as in the module docstring."""
    return torch.ops.spectramind.gat_attention(x, att_src, att_dst, edge_bias, edge_index, negative_slope)


# ---------------------------------------------------------------- autograd
# Backward recomputes the forward in plain PyTorch under autograd and differentiates it: the
# CPU path has no saved scan states to reuse, and recomputation keeps memory at the inputs'.


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


def _scan_backward(ctx, grad: Tensor):
    saved = list(ctx.saved_tensors)
    core, rest = saved[:5], iter(saved[5:])
    optional = [next(rest) if p else None for p in ctx.present]
    softplus, reverse = ctx.flags

    def fn(u, delta, A, B, C, D, z, delta_bias):
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, softplus, reverse)

    grads = _recompute_vjp(fn, core + optional, (grad,))
    return (*grads, None, None)


_selective_scan_op.register_autograd(_scan_backward, setup_context=_scan_setup)


def _gat_setup(ctx, inputs, output) -> None:
    x, att_src, att_dst, edge_bias, edge_index, negative_slope = inputs
    ctx.negative_slope = negative_slope
    ctx.save_for_backward(x, att_src, att_dst, edge_bias, edge_index)


def _gat_backward(ctx, grad_out: Tensor, grad_attn: Tensor):
    x, att_src, att_dst, edge_bias, edge_index = ctx.saved_tensors

    def fn(x, att_src, att_dst, edge_bias):
        return gat_attention_ref(x, att_src, att_dst, edge_bias, edge_index, ctx.negative_slope)

    grads = _recompute_vjp(fn, [x, att_src, att_dst, edge_bias], (grad_out, grad_attn))
    return (*grads, None, None)


_gat_attention_op.register_autograd(_gat_backward, setup_context=_gat_setup)
