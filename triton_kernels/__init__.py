"""Triton kernels as the CUDA implementations of the spectramind operators.

Importing this package registers, for CUDA tensors:

- ``spectramind::selective_scan``: forward :func:`triton_kernels.selective_scan.selective_scan_forward`,
  backward :func:`triton_kernels.selective_scan.selective_scan_backward`;
- ``spectramind::gat_attention``: forward :func:`triton_kernels.gat.gat_attention_forward`,
  backward :func:`triton_kernels.gat.gat_attention_backward`.

The forwards are the ops' ``register_kernel("cuda")`` implementations, so a traced or exported
graph that names the ops runs the kernels on a GPU; the backwards are registered with
:func:`spectramind.ops.register_backward`, so training on a GPU runs them too. CPU tensors keep
the PyTorch implementations of :mod:`spectramind.ops` (the references of the kernels' tests).

The registration needs only the ``triton`` package, not a GPU: the kernel modules are imported
on the first CUDA call, so ``import triton_kernels`` is cheap and works on a CPU machine. Without
``triton`` installed nothing is registered and CUDA tensors use the PyTorch implementations;
either way one log line says which implementation each device gets.

On a CPU, ``TRITON_INTERPRET=1`` (set before triton is imported) runs the same kernels on CPU
tensors through the wrappers below: that is how CI proves them against the references.
"""

from __future__ import annotations

import importlib.util
import logging

import torch
from torch import Tensor

from spectramind import ops

__all__ = ["BACKEND", "REGISTERED"]

log = logging.getLogger("spectramind.kernels")


def _scan_cuda(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
    delta_bias: Tensor | None, delta_softplus: bool, reverse: bool,
) -> Tensor:
    from triton_kernels.selective_scan import selective_scan_forward

    return selective_scan_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)


def _scan_backward_cuda(grad: Tensor, *args) -> tuple[Tensor | None, ...]:
    from triton_kernels.selective_scan import selective_scan_backward

    return selective_scan_backward(grad, *args)


def _gat_cuda(
    x: Tensor, att_src: Tensor, att_dst: Tensor, edge_bias: Tensor, edge_index: Tensor, negative_slope: float
) -> tuple[Tensor, Tensor]:
    from triton_kernels.gat import gat_attention_forward

    return gat_attention_forward(x, att_src, att_dst, edge_bias, edge_index, negative_slope)


def _gat_backward_cuda(
    grad_out: Tensor | None, grad_attn: Tensor | None, x: Tensor, att_src: Tensor, att_dst: Tensor,
    edge_bias: Tensor, edge_index: Tensor, negative_slope: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from triton_kernels.gat import gat_attention_backward

    # Autograd passes None for an output nothing used; the kernel reads both.
    if grad_out is None:
        grad_out = torch.zeros_like(x)
    if grad_attn is None:
        grad_attn = x.new_zeros(x.shape[0], edge_index.shape[1], x.shape[2])
    return gat_attention_backward(grad_out, grad_attn, x, att_src, att_dst, edge_bias, edge_index, negative_slope)


def _register() -> tuple[str, dict[str, object]]:
    if importlib.util.find_spec("triton") is None:
        return "pytorch", {}
    ops._selective_scan_op.register_kernel("cuda")(_scan_cuda)
    ops._gat_attention_op.register_kernel("cuda")(_gat_cuda)
    ops.register_backward("selective_scan", "cuda", _scan_backward_cuda)
    ops.register_backward("gat_attention", "cuda", _gat_backward_cuda)
    return "triton", {
        "spectramind::selective_scan": _scan_cuda,
        "spectramind::gat_attention": _gat_cuda,
        "selective_scan.backward": _scan_backward_cuda,
        "gat_attention.backward": _gat_backward_cuda,
    }


BACKEND, REGISTERED = _register()
if BACKEND == "triton":
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device here"
    log.info("spectramind ops: CUDA -> Triton kernels (forward and backward; %s); CPU -> PyTorch", gpu)
else:
    log.info("spectramind ops: triton is not installed: CUDA and CPU -> PyTorch implementations")
