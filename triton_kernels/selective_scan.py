"""Triton selective scan (Mamba-1): forward and backward kernels for ``spectramind::selective_scan``.

Math (mamba_ssm ``selective_scan_fn`` semantics, exactly as ``spectramind.ops`` defines them)::

    dt_t  = softplus(delta_t + delta_bias)              (softplus only if delta_softplus)
    h_t   = exp(dt_t A) h_{t-1} + dt_t B_t u_t          (per channel d and state n)
    y_t   = <C_t, h_t> + D u_t,   y_t <- y_t * silu(z_t)   (if z is given)

``reverse`` scans from t = L-1 down to 0 (the state entering t = L-1 is 0). The kernels walk
"scan positions" s = 0..L-1 and map them to time t = s (forward) or t = L-1-s (reverse) when
they compute addresses, so no flipped copy of any input is made.

Backward (the adjoint of the state is the same recurrence run backwards in scan order)::

    lam_s  = C_s g_s + exp(dt_{s+1} A) lam_{s+1}        g = dy * silu(z)   (g = dy without z)
    dB_s   = sum_d lam_s x_s        x = dt u
    dx_s   = sum_n lam_s B_s        du = dx dt + D g
    q_s    = lam_s exp(dt_s A) h_{s-1}                  dA = sum_{b,s} q_s dt_s
    dC_s   = sum_d h_s g_s
    d(dt)  = dx u + sum_n q_s A     d(delta) = d(dt) sigmoid(delta + delta_bias)  (if softplus)
    dz     = dy y_pre sig (1 + z (1 - sig)),  sig = sigmoid(z),  y_pre = <C, h> + D u
    dD     = sum_{b,t} g u,   d(delta_bias) = sum_{b,t} d(delta)

Shapes:
    u, delta, z: (batch, d_inner, L); A: (d_inner, d_state); B, C: (batch, d_state, L);
    D, delta_bias: (d_inner,). y: (batch, d_inner, L) in u's dtype.
    Chunk-boundary states (forward, ``STORE_STATES``): (batch, d_inner, d_state, n_chunks + 1)
    fp32, index k = the state entering chunk k in scan order (k = n_chunks: the final state).
    Backward scratch: (batch, n_dblocks, CHUNK, BLOCK_D, BLOCK_N) fp32, one private slab per
    program holding the recomputed states of the chunk it is working on.

Design: one program per (batch element, block of BLOCK_D channels). The program's state h is a
(BLOCK_D, BLOCK_N) fp32 tile in registers (BLOCK_N = d_state rounded up to a power of two,
masked). Time is walked sequentially in chunks of CHUNK steps; the state crosses chunk boundaries
in registers. Inputs are loaded in their own dtype and converted to fp32 after the load; outputs
are stored in the dtype of the corresponding input.

The backward follows mamba's CUDA kernel: the forward kernel saves the state at every chunk
boundary; the backward kernel walks the chunks in reverse scan order, recomputes the chunk's
states from its saved entry state into its scratch slab (a forward replay: the decay is never
inverted, which would divide by exp(dt A) ~ 0 for strongly decaying states), then sweeps the
chunk's steps backwards carrying lam in registers. dB and dC sum over channels, which are
spread over programs, so they are accumulated with fp32 atomics; dA is a per-program sum over
time stored per batch element and summed in torch (deterministic); dD and d(delta_bias) are
reduced in torch from the per-(b, d, t) gradients.

The wrappers take CUDA tensors, or CPU tensors when TRITON_INTERPRET=1 was set before triton was
imported (the interpreter runs fp32 only; fp16/bf16 are for the GPU).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from spectramind.ops import _check_scan_inputs

__all__ = ["selective_scan_forward", "selective_scan_backward"]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _blocks(batch: int, d_inner: int, d_state: int, L: int) -> tuple[int, int, int, int]:
    """(BLOCK_D, BLOCK_N, CHUNK, num_warps) for a scan of this shape.

    - BLOCK_N: d_state padded to a power of two (tl.arange needs one); padded lanes are masked
      (A = 0, B = C = 0 there, so they stay 0 and add nothing). The padding still costs exps:
      d_state 96 (the large preset) runs as 128 lanes.
    - BLOCK_D: the state tile is BLOCK_D * BLOCK_N fp32 values held in registers for the whole
      sequence, and the backward keeps ~5 such tiles live (h, lam, the dA sum, A, a decay). At
      <= 2048 elements per tile and 4 warps (128 threads) that is <= 16 registers per tile per
      thread, ~80 for the backward: far from the 255-register limit, so nothing spills. BLOCK_D
      is then halved (down to 4) while the grid would have fewer than ~4 programs per SM of a
      large GPU (132 SMs): the scan is sequential in time, so parallelism comes only from
      batch x channel blocks, and occupancy is what hides the per-step load latency.
    - CHUNK: 64 steps (fewer for a shorter sequence: the next power of two >= L, one chunk).
      It sets the backward scratch slab (CHUNK * BLOCK_D * BLOCK_N * 4 bytes, <= 512 KiB per
      program, written and read back within one chunk, so mostly L2 hits) and the number of
      chunk-boundary states saved (L / CHUNK + 1 per channel and state).
    - num_warps: 4 for tiles of >= 1024 elements, 2 for >= 256, else 1: smaller tiles would
      leave most threads of a bigger program masked out or replicated.
    """
    block_n = triton.next_power_of_2(max(1, d_state))
    block_d = max(4, min(64, 2048 // block_n, triton.next_power_of_2(d_inner)))
    while block_d > 4 and batch * triton.cdiv(d_inner, block_d) < 4 * 132:
        block_d //= 2
    chunk = min(64, triton.next_power_of_2(max(1, L)))
    tile = block_d * block_n
    num_warps = 4 if tile >= 1024 else 2 if tile >= 256 else 1
    return block_d, block_n, chunk, num_warps


# ------------------------------------------------------------------------------- kernels


@triton.jit
def _softplus(x):
    # torch's softplus: x itself above 20 (exp would only add rounding), log1p(exp(x)) below.
    # tl has no log1p; log(w) * e / (w - 1) with w = 1 + e is the classic exact-rounding form
    # (the rounding error of w cancels), and w == 1 means e is below fp32's epsilon, so log1p(e) = e.
    # The clamp and the guarded divisor keep the unselected branches finite (no inf/NaN lanes).
    e = tl.exp(tl.minimum(x, 20.0))
    w = 1.0 + e
    lp = tl.where(w == 1.0, e, tl.log(w) * (e / tl.where(w == 1.0, 1.0, w - 1.0)))
    return tl.where(x > 20.0, x, lp)


@triton.jit
def _scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, states_ptr,
    d_inner, d_state, L, n_chunks,
    s_ub, s_ud, s_ul,
    s_db, s_dd, s_dl,
    s_ad, s_an,
    s_bb, s_bn, s_bl,
    s_cb, s_cn, s_cl,
    s_zb, s_zd, s_zl,
    s_yb, s_yd, s_yl,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    REVERSE: tl.constexpr, STORE_Y: tl.constexpr, STORE_STATES: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < d_inner
    mask_n = offs_n < d_state
    mask_dn = mask_d[:, None] & mask_n[None, :]

    A = tl.load(A_ptr + offs_d[:, None] * s_ad + offs_n[None, :] * s_an, mask=mask_dn, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)

    u_base = u_ptr + pid_b * s_ub + offs_d * s_ud
    dl_base = delta_ptr + pid_b * s_db + offs_d * s_dd
    B_base = B_ptr + pid_b * s_bb + offs_n * s_bn
    C_base = C_ptr + pid_b * s_cb + offs_n * s_cn
    z_base = z_ptr + pid_b * s_zb + offs_d * s_zd
    y_base = y_ptr + pid_b * s_yb + offs_d * s_yd
    # states is contiguous (batch, d_inner, d_state, n_chunks + 1).
    st_base = states_ptr + ((pid_b * d_inner + offs_d[:, None]) * d_state + offs_n[None, :]) * (n_chunks + 1)

    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    for k in range(n_chunks):
        if STORE_STATES:
            tl.store(st_base + k, h, mask=mask_dn)
        for i in range(CHUNK):
            s = k * CHUNK + i
            # Steps past L (the last chunk) are masked. The limits are scalars compared with
            # the offsets (not bool & bool, which the interpreter turns into ints).
            lim_d = tl.where(s < L, d_inner, 0)
            lim_n = tl.where(s < L, d_state, 0)
            if REVERSE:
                t = L - 1 - s
            else:
                t = s
            m = offs_d < lim_d
            u = tl.load(u_base + t * s_ul, mask=m, other=0.0).to(tl.float32)
            dt = tl.load(dl_base + t * s_dl, mask=m, other=0.0).to(tl.float32)
            if HAS_BIAS:
                dt += bias
            if SOFTPLUS:
                dt = _softplus(dt)
            # A step past the end (or a masked channel) must leave h untouched: dt = 0 gives
            # decay 1 and input 0, whatever softplus(bias) would have made of it.
            dt = tl.where(m, dt, 0.0)
            mn = offs_n < lim_n
            Bt = tl.load(B_base + t * s_bl, mask=mn, other=0.0).to(tl.float32)
            Ct = tl.load(C_base + t * s_cl, mask=mn, other=0.0).to(tl.float32)
            h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt[None, :]
            if STORE_Y:
                y = tl.sum(h * Ct[None, :], axis=1)
                if HAS_D:
                    y += Dv * u
                if HAS_Z:
                    zt = tl.load(z_base + t * s_zl, mask=m, other=0.0).to(tl.float32)
                    y = y * zt / (1.0 + tl.exp(-zt))
                tl.store(y_base + t * s_yl, y.to(y_ptr.dtype.element_ty), mask=m)
    if STORE_STATES:
        tl.store(st_base + n_chunks, h, mask=mask_dn)


@triton.jit
def _scan_bwd_kernel(
    dy_ptr, u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
    states_ptr, scratch_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr,
    d_inner, d_state, L, n_chunks,
    s_gb, s_gd, s_gl,
    s_ub, s_ud, s_ul,
    s_db, s_dd, s_dl,
    s_ad, s_an,
    s_bb, s_bn, s_bl,
    s_cb, s_cn, s_cl,
    s_zb, s_zd, s_zl,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    REVERSE: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    # Outputs du, ddelta, dz are contiguous fp32 (batch, d_inner, L); dB, dC contiguous fp32
    # (batch, d_state, L), zero-initialised, accumulated atomically; dA contiguous fp32
    # (batch, d_inner, d_state), one store per program.
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < d_inner
    mask_n = offs_n < d_state
    mask_dn = mask_d[:, None] & mask_n[None, :]

    A = tl.load(A_ptr + offs_d[:, None] * s_ad + offs_n[None, :] * s_an, mask=mask_dn, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)

    g_base = dy_ptr + pid_b * s_gb + offs_d * s_gd
    u_base = u_ptr + pid_b * s_ub + offs_d * s_ud
    dl_base = delta_ptr + pid_b * s_db + offs_d * s_dd
    B_base = B_ptr + pid_b * s_bb + offs_n * s_bn
    C_base = C_ptr + pid_b * s_cb + offs_n * s_cn
    z_base = z_ptr + pid_b * s_zb + offs_d * s_zd
    out_base = pid_b * d_inner * L + offs_d * L  # du, ddelta, dz
    bc_base = pid_b * d_state * L + offs_n * L  # dB, dC
    st_base = states_ptr + ((pid_b * d_inner + offs_d[:, None]) * d_state + offs_n[None, :]) * (n_chunks + 1)
    # This program's private slab (CHUNK, BLOCK_D, BLOCK_N): step i's tile is contiguous.
    tile = tl.arange(0, BLOCK_D)[:, None] * BLOCK_N + offs_n[None, :]
    scr_base = scratch_ptr + (pid_b * tl.num_programs(1) + pid_d) * (CHUNK * BLOCK_D * BLOCK_N) + tile

    lam = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)  # exp(dt_{s+1} A) lam_{s+1}, carried
    dA_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    for kk in range(n_chunks):
        k = n_chunks - 1 - kk
        h_entry = tl.load(st_base + k, mask=mask_dn, other=0.0)
        # Replay the chunk forward from its saved entry state; scratch[i] = h after step i.
        h = h_entry
        for i in range(CHUNK):
            s = k * CHUNK + i
            # Steps past L (the last chunk) are masked. The limits are scalars compared with
            # the offsets (not bool & bool, which the interpreter turns into ints).
            lim_d = tl.where(s < L, d_inner, 0)
            lim_n = tl.where(s < L, d_state, 0)
            if REVERSE:
                t = L - 1 - s
            else:
                t = s
            m = offs_d < lim_d
            u = tl.load(u_base + t * s_ul, mask=m, other=0.0).to(tl.float32)
            dt = tl.load(dl_base + t * s_dl, mask=m, other=0.0).to(tl.float32)
            if HAS_BIAS:
                dt += bias
            if SOFTPLUS:
                dt = _softplus(dt)
            dt = tl.where(m, dt, 0.0)
            Bt = tl.load(B_base + t * s_bl, mask=offs_n < lim_n, other=0.0).to(tl.float32)
            h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt[None, :]
            tl.store(scr_base + i * (BLOCK_D * BLOCK_N), h)
        # The sweep reads tiles other threads of this program may have written.
        tl.debug_barrier()
        for ii in range(CHUNK):
            i = CHUNK - 1 - ii
            s = k * CHUNK + i
            # Steps past L (the last chunk) are masked. The limits are scalars compared with
            # the offsets (not bool & bool, which the interpreter turns into ints).
            lim_d = tl.where(s < L, d_inner, 0)
            lim_n = tl.where(s < L, d_state, 0)
            if REVERSE:
                t = L - 1 - s
            else:
                t = s
            m = offs_d < lim_d
            mn = offs_n < lim_n
            u = tl.load(u_base + t * s_ul, mask=m, other=0.0).to(tl.float32)
            pre = tl.load(dl_base + t * s_dl, mask=m, other=0.0).to(tl.float32)
            if HAS_BIAS:
                pre += bias
            if SOFTPLUS:
                dt = _softplus(pre)
            else:
                dt = pre
            dt = tl.where(m, dt, 0.0)
            Bt = tl.load(B_base + t * s_bl, mask=mn, other=0.0).to(tl.float32)
            Ct = tl.load(C_base + t * s_cl, mask=mn, other=0.0).to(tl.float32)
            g = tl.load(g_base + t * s_gl, mask=m, other=0.0).to(tl.float32)
            h_t = tl.load(scr_base + i * (BLOCK_D * BLOCK_N))
            # h_{s-1}: the previous step's replayed state, or the chunk's entry state at i = 0.
            first = tl.where(i > 0, BLOCK_D * BLOCK_N, 0)  # masks the whole tile at i = 0
            h_prev = tl.load(scr_base + (i - 1) * (BLOCK_D * BLOCK_N), mask=tile < first, other=0.0)
            h_prev = tl.where(i > 0, h_prev, h_entry)
            if HAS_Z:
                zt = tl.load(z_base + t * s_zl, mask=m, other=0.0).to(tl.float32)
                sig = 1.0 / (1.0 + tl.exp(-zt))
                y_pre = tl.sum(h_t * Ct[None, :], axis=1)
                if HAS_D:
                    y_pre += Dv * u
                tl.store(dz_ptr + out_base + t, g * y_pre * sig * (1.0 + zt * (1.0 - sig)), mask=m)
                g = g * zt * sig
            decay = tl.exp(dt[:, None] * A)
            lam += g[:, None] * Ct[None, :]
            x = dt * u
            dx = tl.sum(lam * Bt[None, :], axis=1)
            q = lam * decay * h_prev
            dA_acc += q * dt[:, None]
            ddt = dx * u + tl.sum(q * A, axis=1)
            if SOFTPLUS:
                ddt = ddt / (1.0 + tl.exp(-pre))
            du = dx * dt
            if HAS_D:
                du += Dv * g
            tl.store(du_ptr + out_base + t, du, mask=m)
            tl.store(ddelta_ptr + out_base + t, ddt, mask=m)
            tl.atomic_add(dB_ptr + bc_base + t, tl.sum(lam * x[:, None], axis=0), mask=mn)
            tl.atomic_add(dC_ptr + bc_base + t, tl.sum(h_t * g[:, None], axis=0), mask=mn)
            lam = lam * decay
        # The next chunk's replay overwrites the slab this sweep has just read.
        tl.debug_barrier()
    dA_off = (pid_b * d_inner + offs_d[:, None]) * d_state + offs_n[None, :]
    tl.store(dA_ptr + dA_off, dA_acc, mask=mask_dn)


# ------------------------------------------------------------------------------- wrappers


def _validate(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None, bias: Tensor | None
) -> None:
    _check_scan_inputs(u, delta, A, B, C, D, z, bias)
    named = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": bias}
    for name, t in named.items():
        if t is None:
            continue
        if t.dtype not in _DTYPES:
            raise TypeError(f"selective_scan (triton): {name} must be fp32, fp16 or bf16, got {t.dtype}")
        if t.device != u.device:
            raise ValueError(f"selective_scan (triton): {name} is on {t.device}, u on {u.device}")
    if u.device.type != "cuda" and not _interpreting():
        raise ValueError(
            f"selective_scan (triton): tensors must be on CUDA (got {u.device}); "
            "CPU tensors run only under TRITON_INTERPRET=1"
        )


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _plan(
    batch: int, d_inner: int, d_state: int, L: int, chunk: int | None, block_d: int | None
) -> tuple[int, int, int, int]:
    bd, bn, ch, nw = _blocks(batch, d_inner, d_state, L)
    for name, v in (("chunk", chunk), ("block_d", block_d)):
        if v is not None and (v < 1 or v & (v - 1)):
            raise ValueError(f"selective_scan (triton): {name} must be a power of two >= 1, got {v}")
    return block_d or bd, bn, chunk or ch, nw


def _stride3(t: Tensor | None) -> tuple[int, int, int]:
    return tuple(t.stride()) if t is not None else (0, 0, 0)


def _launch_forward(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
    bias: Tensor | None, softplus: bool, reverse: bool, *, store_y: bool, store_states: bool,
    plan: tuple[int, int, int, int],
) -> tuple[Tensor | None, Tensor | None]:  # fmt: skip
    batch, d_inner, L = u.shape
    d_state = A.shape[1]
    block_d, block_n, chunk, num_warps = plan
    n_chunks = triton.cdiv(L, chunk)
    y = torch.empty(batch, d_inner, L, dtype=u.dtype, device=u.device) if store_y else None
    states = (
        torch.empty(batch, d_inner, d_state, n_chunks + 1, dtype=torch.float32, device=u.device)
        if store_states
        else None
    )
    # Absent optional tensors are never read (their constexpr flag is off); any tensor fills the slot.
    grid = (batch, triton.cdiv(d_inner, block_d))
    _scan_fwd_kernel[grid](
        u, delta, A, B, C,
        D if D is not None else u, z if z is not None else u, bias if bias is not None else u,
        y if y is not None else u, states if states is not None else u,
        d_inner, d_state, L, n_chunks,
        *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *_stride3(z), *_stride3(y),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=bias is not None, SOFTPLUS=softplus,
        REVERSE=reverse, STORE_Y=store_y, STORE_STATES=store_states,
        BLOCK_D=block_d, BLOCK_N=block_n, CHUNK=chunk, num_warps=num_warps,
    )  # fmt: skip
    return y, states


def selective_scan_forward(
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
    chunk: int | None = None,
    block_d: int | None = None,
) -> Tensor:
    """Selective scan y (batch, d_inner, L) in u's dtype; same semantics as ``spectramind.ops.selective_scan``.

    ``chunk`` and ``block_d`` (powers of two) override the ``_blocks`` table, for tests. Inputs
    may be non-contiguous (strides go to the kernel); D and delta_bias are (d_inner,) vectors
    and are made contiguous here.
    """
    _validate(u, delta, A, B, C, D, z, delta_bias)
    batch, d_inner, L = u.shape
    if u.numel() == 0:
        return torch.empty(batch, d_inner, L, dtype=u.dtype, device=u.device)
    D, delta_bias = (t.contiguous() if t is not None else None for t in (D, delta_bias))
    plan = _plan(batch, d_inner, A.shape[1], L, chunk, block_d)
    y, _ = _launch_forward(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, store_y=True, store_states=False, plan=plan
    )
    return y


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
    *,
    chunk: int | None = None,
    block_d: int | None = None,
) -> tuple[Tensor | None, ...]:
    """Gradients (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias) of the scan given ``grad`` = dL/dy.

    Same signature and result as ``spectramind.ops.selective_scan_backward``: None for an absent
    optional input, each gradient in its input's dtype. Runs the forward kernel once to save
    the chunk-boundary states (y itself is not stored), then the backward kernel.
    """
    _validate(u, delta, A, B, C, D, z, delta_bias)
    if tuple(grad.shape) != tuple(u.shape):
        raise ValueError(f"selective_scan_backward: grad must have shape {tuple(u.shape)}, got {tuple(grad.shape)}")
    if grad.device != u.device or grad.dtype not in _DTYPES:
        raise ValueError(
            f"selective_scan_backward: grad must be a float tensor on {u.device}, got {grad.dtype} on {grad.device}"
        )
    batch, d_inner, L = u.shape
    d_state = A.shape[1]
    dev = u.device
    D, delta_bias = (t.contiguous() if t is not None else None for t in (D, delta_bias))
    f32 = dict(dtype=torch.float32, device=dev)
    du = torch.empty(batch, d_inner, L, **f32)
    ddelta = torch.empty(batch, d_inner, L, **f32)
    dz = torch.empty(batch, d_inner, L, **f32) if z is not None else None
    dB = torch.zeros(batch, d_state, L, **f32)
    dC = torch.zeros(batch, d_state, L, **f32)
    dA_b = torch.zeros(batch, d_inner, d_state, **f32)
    if u.numel():
        plan = _plan(batch, d_inner, d_state, L, chunk, block_d)
        block_d_, block_n, chunk_, num_warps = plan
        _, states = _launch_forward(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, store_y=False, store_states=True, plan=plan
        )
        n_chunks = triton.cdiv(L, chunk_)
        n_dblocks = triton.cdiv(d_inner, block_d_)
        scratch = torch.empty(batch, n_dblocks, chunk_, block_d_, block_n, **f32)
        _scan_bwd_kernel[(batch, n_dblocks)](
            grad, u, delta, A, B, C,
            D if D is not None else u, z if z is not None else u, delta_bias if delta_bias is not None else u,
            states, scratch,
            du, ddelta, dz if dz is not None else du, dA_b, dB, dC,
            d_inner, d_state, L, n_chunks,
            *grad.stride(), *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *_stride3(z),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
            REVERSE=reverse, BLOCK_D=block_d_, BLOCK_N=block_n, CHUNK=chunk_, num_warps=num_warps,
        )  # fmt: skip
    dA = dA_b.sum(0)
    dD = None
    if D is not None:
        g = grad.float()
        if z is not None:
            g = g * torch.nn.functional.silu(z.float())
        dD = (g * u.float()).sum((0, 2))
    d_bias = ddelta.sum((0, 2)) if delta_bias is not None else None
    outs = (du, ddelta, dA, dB, dC, dD, dz, d_bias)
    likes = (u, delta, A, B, C, D, z, delta_bias)
    return tuple(o.to(t.dtype) if o is not None and t is not None else None for o, t in zip(outs, likes))
