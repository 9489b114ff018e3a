"""Triton selective scan against the reference: outputs and gradients on tiny, awkward shapes.

On the CPU these run under the Triton interpreter (TRITON_INTERPRET=1 must be set before triton
is imported: tests/conftest.py or the command line) in fp32. Where the interpreter is off and
CUDA is present, the same cases run compiled on the GPU; ``gpu``-marked tests add fp16/bf16
tolerances and a long sequence. The oracle is ``selective_scan_ref`` evaluated in fp64 (and
autograd through it for gradients), so the comparison measures the kernel's fp32 error alone.
"""

from __future__ import annotations

import os

import pytest
import torch

from spectramind.ops import selective_scan_backward as scan_backward_cpu
from spectramind.ops import selective_scan_ref
from triton_kernels.selective_scan import _blocks, selective_scan_backward, selective_scan_forward

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
HAS_CUDA = torch.cuda.is_available()
# The interpreter runs kernels on CPU tensors; compiled kernels need CUDA ones.
DEVICE = "cpu" if INTERPRET else "cuda"
needs_backend = pytest.mark.skipif(
    not INTERPRET and not HAS_CUDA, reason="needs TRITON_INTERPRET=1 (set before triton is imported) or CUDA"
)
gpu_only = pytest.mark.skipif(not HAS_CUDA or INTERPRET, reason="needs CUDA with compiled (non-interpreted) Triton")

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _inputs(batch, d_inner, d_state, L, *, D, z, bias, softplus, dtype=torch.float64, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(device=device, dtype=dtype)

    # softplus mode: raw deltas around 0, with a few past the linear threshold (20) and far below
    # it to reach both branches; otherwise positive steps of a typical size.
    if softplus:
        delta = rnd(batch, d_inner, L, scale=1.5)
        flat = delta.view(-1)
        flat[::5] = 21.0
        flat[1::7] = -25.0
    else:
        delta = (torch.rand(batch, d_inner, L, generator=gen, dtype=torch.float64) * 0.5 + 0.05).to(device, dtype)
    # Mamba's S4D-real init: A_dn = -(n + 1), so decays differ per state, spread by a random factor.
    spread = 0.5 + torch.rand(d_inner, 1, generator=gen, dtype=torch.float64)
    A = (-torch.arange(1, d_state + 1, dtype=torch.float64)[None, :] * spread).to(device, dtype)
    return {
        "u": rnd(batch, d_inner, L),
        "delta": delta,
        "A": A,
        "B": rnd(batch, d_state, L),
        "C": rnd(batch, d_state, L),
        "D": rnd(d_inner) if D else None,
        "z": rnd(batch, d_inner, L) if z else None,
        "delta_bias": rnd(d_inner, scale=0.5) if bias else None,
    }


def _args(t):
    return [t[k] for k in NAMES]


def _ref_grads(t64, grad64, softplus, reverse):
    leaves = {k: (v.clone().requires_grad_(True) if v is not None else None) for k, v in t64.items()}
    y = selective_scan_ref(*_args(leaves), delta_softplus=softplus, reverse=reverse)
    wrt = [leaves[k] for k in NAMES if leaves[k] is not None]
    got = iter(torch.autograd.grad(y, wrt, grad64))
    return y.detach(), [next(got) if leaves[k] is not None else None for k in NAMES]


def _to(t, dtype, device):
    return {k: (v.to(device=device, dtype=dtype) if v is not None else None) for k, v in t.items()}


# (batch, d_inner, d_state, L, block_d, chunk, reverse, D, z, delta_bias, softplus)
CASES = [
    pytest.param(1, 3, 4, 1, 2, 1, False, False, False, False, False, id="L1-bare"),
    pytest.param(2, 5, 4, 7, 4, 2, True, True, True, True, True, id="L7-rev-all-softplus"),
    pytest.param(2, 3, 4, 7, 2, 4, False, True, False, True, True, id="L7-D-bias-softplus"),
    pytest.param(2, 5, 16, 33, 4, 8, False, True, True, False, True, id="L33-n16-D-z"),
    pytest.param(1, 6, 16, 33, 4, 16, True, False, False, True, False, id="L33-n16-rev-bias"),
    pytest.param(1, 5, 3, 33, 4, 8, True, True, True, True, True, id="L33-n3-rev-all"),
    pytest.param(2, 5, 4, 7, None, None, False, True, True, True, False, id="L7-default-blocks"),
]


@needs_backend
@pytest.mark.parametrize("batch,d_inner,d_state,L,block_d,chunk,reverse,D,z,bias,softplus", CASES)
def test_forward_and_backward_match_reference(
    batch, d_inner, d_state, L, block_d, chunk, reverse, D, z, bias, softplus
):
    t64 = _inputs(batch, d_inner, d_state, L, D=D, z=z, bias=bias, softplus=softplus)
    grad64 = torch.randn(batch, d_inner, L, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y_ref, g_ref = _ref_grads(t64, grad64, softplus, reverse)
    t32 = _to(t64, torch.float32, DEVICE)
    blocks = dict(chunk=chunk, block_d=block_d)

    y = selective_scan_forward(*_args(t32), softplus, reverse, **blocks)
    assert y.dtype == torch.float32 and y.shape == (batch, d_inner, L)
    torch.testing.assert_close(y.cpu().double(), y_ref, rtol=1e-4, atol=1e-5)

    grads = selective_scan_backward(grad64.to(DEVICE, torch.float32), *_args(t32), softplus, reverse, **blocks)
    assert len(grads) == 8
    for name, got, want in zip(NAMES, grads, g_ref):
        if want is None:
            assert got is None, f"{name}: expected None for an absent input"
            continue
        assert got.dtype == torch.float32 and got.shape == want.shape, name
        torch.testing.assert_close(got.cpu().double(), want, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"d{n}: {m}")


@needs_backend
def test_strided_inputs_and_cpu_backward_agree():
    """Non-contiguous u/delta/z/B/C (views of (batch, L, channels) tensors) go to the kernels by
    stride; the result is the same as the op's analytic CPU backward on contiguous copies."""
    batch, d_inner, d_state, L = 2, 5, 4, 9
    t = _to(_inputs(batch, d_inner, d_state, L, D=True, z=True, bias=True, softplus=True), torch.float32, "cpu")
    strided = {
        k: (v.transpose(1, 2).contiguous().transpose(1, 2) if v is not None and v.dim() == 3 else v)
        for k, v in t.items()
    }
    strided["A"] = t["A"].t().contiguous().t()
    assert not strided["u"].is_contiguous() and not strided["A"].is_contiguous()
    dev = {k: (v.to(DEVICE) if v is not None else None) for k, v in strided.items()}
    grad = torch.randn(batch, L, d_inner, generator=torch.Generator().manual_seed(2)).transpose(1, 2)

    y = selective_scan_forward(*_args(dev), True, True, chunk=4, block_d=2)
    y_ref = selective_scan_ref(*_args(t), delta_softplus=True, reverse=True)
    torch.testing.assert_close(y.cpu(), y_ref, rtol=1e-4, atol=1e-5)
    got = selective_scan_backward(grad.to(DEVICE), *_args(dev), True, True, chunk=4, block_d=2)
    want = scan_backward_cpu(grad.contiguous(), *_args(t), True, True)
    for name, a, b in zip(NAMES, got, want):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"d{n}: {m}")


@needs_backend
def test_inputs_are_checked_by_name():
    t = _to(_inputs(1, 3, 4, 5, D=True, z=False, bias=False, softplus=False), torch.float32, DEVICE)
    bad = dict(t, C=t["C"][:, :, :4])
    with pytest.raises(ValueError, match="C must have shape"):
        selective_scan_forward(*_args(bad))
    with pytest.raises(TypeError, match="D must be fp32, fp16 or bf16"):
        selective_scan_forward(*_args(dict(t, D=t["D"].to(torch.int32))))
    with pytest.raises(ValueError, match="chunk must be a power of two"):
        selective_scan_forward(*_args(t), chunk=3)
    with pytest.raises(ValueError, match="grad must have shape"):
        selective_scan_backward(t["u"][:, :, :2], *_args(t))


def test_blocks_table():
    shapes = [(1, 3, 4, 1), (8, 512, 16, 2048), (32, 1536, 16, 8192), (2, 5, 3, 33), (4, 64, 64, 100)]
    for batch, d_inner, d_state, L in [*shapes, (8, 640, 96, 512)]:
        block_d, block_n, chunk, num_warps = _blocks(batch, d_inner, d_state, L)
        assert block_n >= d_state and block_n & (block_n - 1) == 0
        assert block_d >= 4 and block_d & (block_d - 1) == 0
        assert block_d * block_n <= 4096, "state tile would spill registers"
        assert 1 <= chunk <= 64 and chunk & (chunk - 1) == 0 and chunk <= max(1, 2 * L)
        assert num_warps in (1, 2, 4)


# ------------------------------------------------------------------ GPU only


@pytest.mark.gpu
@gpu_only
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reverse", [False, True])
def test_low_precision_on_gpu(dtype, reverse):
    batch, d_inner, d_state, L = 2, 96, 16, 300
    t64 = _inputs(batch, d_inner, d_state, L, D=True, z=True, bias=True, softplus=True)
    # Inputs are rounded to the low precision first; the fp64 oracle sees the same rounded values,
    # so the tolerance measures the kernel's arithmetic and its output rounding only.
    low = _to(t64, dtype, "cuda")
    low["A"] = t64["A"].float().cuda()  # mamba keeps A (and D) in fp32 next to low-precision activations
    t_round = {k: (v.double().cpu() if v is not None else None) for k, v in low.items()}
    grad = torch.randn(batch, d_inner, L, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y_ref, g_ref = _ref_grads(t_round, grad, True, reverse)
    y = selective_scan_forward(*_args(low), True, reverse)
    assert y.dtype == dtype
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=5e-3, atol=5e-3)
    torch.testing.assert_close(y.double().cpu(), y_ref, **tol)
    grads = selective_scan_backward(grad.to("cuda", dtype), *_args(low), True, reverse)
    for name, got, want, like in zip(NAMES, grads, g_ref, _args(low)):
        assert got.dtype == like.dtype, name
        # Reductions (dA, dD, ddelta_bias, dB, dC) sum hundreds of terms: compare relative to their scale.
        scale = want.abs().max().item() + 1e-6
        err = (got.double().cpu() - want).abs().max().item() / scale
        assert err < (5e-2 if dtype == torch.bfloat16 else 1e-2), f"d{name}: relative error {err:.3g}"


@pytest.mark.gpu
@gpu_only
@pytest.mark.parametrize("reverse", [False, True])
def test_long_sequence_on_gpu(reverse):
    batch, d_inner, d_state, L = 2, 64, 16, 4096
    t = _to(_inputs(batch, d_inner, d_state, L, D=True, z=True, bias=True, softplus=True), torch.float32, "cuda")
    grad = torch.randn(batch, d_inner, L, device="cuda")
    y = selective_scan_forward(*_args(t), True, reverse)
    y_ref = selective_scan_ref(*_args(t), delta_softplus=True, reverse=reverse)
    torch.testing.assert_close(y, y_ref, rtol=1e-3, atol=1e-4)
    got = selective_scan_backward(grad, *_args(t), True, reverse)
    want = scan_backward_cpu(grad, *_args(t), True, reverse)
    for name, a, b in zip(NAMES, got, want):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3, msg=lambda m, n=name: f"d{n}: {m}")
