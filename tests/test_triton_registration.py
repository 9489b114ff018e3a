"""triton_kernels registers the Triton kernels as the CUDA implementations of both operators
(checked without a GPU), and the registered functions run the kernels (interpreter on a CPU)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import triton_kernels
from spectramind import ops

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="the kernels run on a CPU only in triton's interpreter (TRITON_INTERPRET=1, set by conftest)",
)


def _calls(fn, target, depth: int = 0) -> bool:
    """Whether the kernel torch.library registered is ``target`` or wraps it (register_kernel
    nests ``target`` in closures of its own wrappers)."""
    if fn is target:
        return True
    cells = getattr(fn, "__closure__", None) or ()
    return depth < 6 and any(_calls(c.cell_contents, target, depth + 1) for c in cells if callable(c.cell_contents))


def test_cuda_dispatch_entries_are_the_triton_kernels():
    assert triton_kernels.BACKEND == "triton"
    assert _calls(ops._selective_scan_op._backend_fns["cuda"], triton_kernels._scan_cuda)
    assert _calls(ops._gat_attention_op._backend_fns["cuda"], triton_kernels._gat_cuda)
    assert not _calls(ops._selective_scan_op._backend_fns[None], triton_kernels._scan_cuda)
    assert ops.backward_impl("selective_scan", "cuda") is triton_kernels._scan_backward_cuda
    assert ops.backward_impl("gat_attention", "cuda") is triton_kernels._gat_backward_cuda
    # CPU tensors keep the PyTorch implementations.
    assert ops.backward_impl("selective_scan", "cpu") is None
    assert None in ops._selective_scan_op._backend_fns and "cpu" not in ops._selective_scan_op._backend_fns


def test_import_without_a_gpu_logs_the_choice_and_cpu_runs_the_reference():
    code = "import logging; logging.basicConfig(level=logging.INFO); import triton_kernels"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert "spectramind ops: CUDA -> Triton kernels" in done.stderr
    g = torch.Generator().manual_seed(0)
    u, delta = torch.randn(2, 3, 9, generator=g), torch.randn(2, 3, 9, generator=g)
    A, B, C = -torch.rand(3, 4, generator=g), torch.randn(2, 4, 9, generator=g), torch.randn(2, 4, 9, generator=g)
    torch.testing.assert_close(ops.selective_scan(u, delta, A, B, C, delta_softplus=True),
                               ops.selective_scan_ref(u, delta, A, B, C, delta_softplus=True))


def _scan_inputs(g: torch.Generator):
    b, d, n, L = 2, 3, 4, 7
    return [torch.randn(b, d, L, generator=g), torch.randn(b, d, L, generator=g), -torch.rand(d, n, generator=g) - 0.2,
            torch.randn(b, n, L, generator=g), torch.randn(b, n, L, generator=g), torch.randn(d, generator=g),
            torch.randn(b, d, L, generator=g), torch.randn(d, generator=g)]


@pytest.mark.parametrize("reverse", [False, True])
def test_registered_scan_functions_run_the_kernels(reverse):
    ins = _scan_inputs(torch.Generator().manual_seed(1))
    want = ops.selective_scan_ref(*ins, True, reverse)
    torch.testing.assert_close(triton_kernels._scan_cuda(*ins, True, reverse), want, rtol=1e-4, atol=1e-5)
    grad = torch.randn_like(want)
    got = triton_kernels._scan_backward_cuda(grad, *ins, True, reverse)
    for w, h in zip(ops.selective_scan_backward(grad, *ins, True, reverse), got):
        torch.testing.assert_close(h, w, rtol=1e-4, atol=1e-5)


def test_registered_gat_functions_run_the_kernels():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 5, 2, 3, generator=g)
    att_src, att_dst = torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g)
    edge_index = torch.tensor([[0, 1, 2, 3, 4, 1, 0, 0], [1, 2, 3, 4, 0, 0, 2, 4]])
    edge_bias = torch.randn(edge_index.shape[1], 2, generator=g)
    args = (x, att_src, att_dst, edge_bias, edge_index, 0.2)
    out, attn = triton_kernels._gat_cuda(*args)
    ref_out, ref_attn = ops.gat_attention_ref(*args)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(attn, ref_attn, rtol=1e-5, atol=1e-6)
    leaves = [t.clone().requires_grad_(True) for t in args[:4]]
    go = torch.randn_like(ref_out)
    want = torch.autograd.grad(ops.gat_attention_ref(*leaves, edge_index, 0.2)[0], leaves, go)
    # Autograd hands None for the unused attention output: the wrapper fills zeros.
    got = triton_kernels._gat_backward_cuda(go, None, *args)
    for w, h in zip(want, got):
        torch.testing.assert_close(h, w, rtol=1e-4, atol=1e-5)
