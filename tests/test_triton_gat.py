"""Triton GAT attention kernels against spectramind.ops.gat_attention_ref and its autograd.

CPU runs use the Triton interpreter (TRITON_INTERPRET=1, set by tests/conftest.py or on the
command line before triton is imported) in fp32; the oracle runs in float64, so the tolerances
measure the kernel's fp32 error only. GPU tests (``gpu`` marker) check fp16/bf16 at batch 32.
"""

from __future__ import annotations

import pytest
import torch

from spectramind.ops import gat_attention, gat_attention_ref
from triton_kernels.gat import _blocks, gat_attention_backward, gat_attention_forward, gat_plan

ATOL = 1e-5

# Node 1 is a hub (in-degree 9: a self loop and the edge 0 -> 1 twice), node 3 gets 1 -> 3
# twice, node 5 has one neighbour, nodes 0 and 6 have no incoming edges.
SRC = [0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 5, 1, 1, 2, 3]
DST = [1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 4, 4, 3, 3, 3, 5]
N_NODES = 7
CHANNELS = 5


def small_graph() -> torch.Tensor:
    return torch.tensor([SRC, DST], dtype=torch.int64)


def inputs(batch: int, n: int, heads: int, ch: int, n_edges: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(batch, n, heads, ch), (heads, ch), (heads, ch), (n_edges, heads)]
    return [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]


def reference(tensors, edge_index, grad_out, grad_attn):
    """Forward outputs and autograd VJP of gat_attention_ref in float64."""
    leaves = [t.detach().to(torch.float64).requires_grad_(True) for t in tensors]
    out, attn = gat_attention_ref(*leaves, edge_index.cpu())
    loss = (out * grad_out.double()).sum()
    if grad_attn is not None:
        loss = loss + (attn * grad_attn.double()).sum()
    return (out.detach(), attn.detach()), torch.autograd.grad(loss, leaves)


def check(tensors, edge_index, block_e=None, with_grad_attn=True, seed=1):
    batch, n, heads, _ = tensors[0].shape
    gen = torch.Generator().manual_seed(seed)
    grad_out = torch.randn(tensors[0].shape, generator=gen, dtype=torch.float64)
    grad_attn = torch.randn(batch, edge_index.shape[1], heads, generator=gen, dtype=torch.float64)
    grad_attn = grad_attn if with_grad_attn else None
    (ref_out, ref_attn), ref_grads = reference(tensors, edge_index, grad_out, grad_attn)

    f32 = [t.float() for t in tensors]
    out, attn = gat_attention_forward(*f32, edge_index, block_e=block_e)
    assert out.dtype == attn.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref_out, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(attn.double(), ref_attn, atol=ATOL, rtol=ATOL)

    grads = gat_attention_backward(
        grad_out.float(), None if grad_attn is None else grad_attn.float(), *f32, edge_index, block_e=block_e
    )
    for name, got, want in zip(("dx", "d_att_src", "d_att_dst", "d_edge_bias"), grads, ref_grads, strict=True):
        assert got.dtype == torch.float32, name
        torch.testing.assert_close(got.double(), want, atol=ATOL, rtol=ATOL, msg=lambda m, name=name: f"{name}: {m}")
    return out, attn


@pytest.mark.parametrize(
    ("batch", "heads", "block_e", "with_grad_attn"),
    [
        (1, 1, None, True),  # the hub fits one tile: single-pass kernels
        (2, 3, None, False),  # grad_attn None (no gradient through the attention output)
        (2, 3, 4, True),  # a 4-edge tile: the hub spans three tiles (online softmax path)
    ],
)
def test_small_graph_forward_and_backward(batch: int, heads: int, block_e: int | None, with_grad_attn: bool) -> None:
    edge_index = small_graph()
    tensors = inputs(batch, N_NODES, heads, CHANNELS, edge_index.shape[1])
    out, attn = check(tensors, edge_index, block_e=block_e, with_grad_attn=with_grad_attn)
    assert torch.count_nonzero(out[:, [0, 6]]) == 0  # no incoming edges
    sums = torch.zeros(batch, N_NODES, heads).index_add_(1, edge_index[1], attn)
    torch.testing.assert_close(sums[:, [1, 2, 3, 4, 5]], torch.ones(batch, 5, heads))
    # The two copies of 0 -> 1 see the same logit up to their own edge bias: each gets its own weight.
    first, second = 0, 7
    assert not torch.allclose(attn[:, first], attn[:, second])


def test_plan_sorts_edges_and_maps_back() -> None:
    edge_index = small_graph()
    plan = gat_plan(edge_index, N_NODES)
    assert (plan.max_in_degree, plan.max_out_degree) == (9, 4)
    assert plan.rowptr_dst.tolist() == [0, 0, 9, 11, 14, 16, 17, 17]
    nodes = torch.arange(N_NODES)
    eid = plan.eid_by_dst.long()
    assert sorted(eid.tolist()) == list(range(len(SRC)))
    assert torch.equal(edge_index[1, eid], torch.repeat_interleave(nodes, plan.rowptr_dst.diff().long()))
    assert torch.equal(edge_index[0, eid], plan.src_by_dst.long())
    eid_s = plan.eid_by_src.long()
    assert torch.equal(edge_index[0, eid_s], torch.repeat_interleave(nodes, plan.rowptr_src.diff().long()))
    assert torch.equal(edge_index[1, eid_s], plan.dst_by_src.long())


def test_blocks_cover_degree_within_register_budget() -> None:
    assert _blocks(9, 2, 4) == (16, 2, 4, 1)  # the physics graph with self loops
    assert _blocks(1, 3, 5)[:3] == (2, 4, 8)
    for degree, heads, ch in [(9, 4, 64), (300, 8, 64), (3, 1, 1)]:
        block_e, block_h, block_c, warps = _blocks(degree, heads, ch)
        assert block_h >= heads and block_c >= ch and block_e >= 2
        assert block_e * block_h * block_c <= 8192 or block_e == 2
        assert warps in (1, 2, 4, 8)
    assert _blocks(300, 8, 64)[0] < 300  # a big hub is walked in tiles, not held whole


def test_physics_graph() -> None:
    from spectramind.bins import load_grid
    from spectramind.config import compose
    from spectramind.model.gat import add_self_loops_mean
    from spectramind.model.graph import build_graph

    graph = build_graph(compose(["model=small"]).model.encoders.airs_gnn, load_grid())
    edge_index, _ = add_self_loops_mean(graph.edge_index, None, 283)
    assert edge_index.shape[1] > 1000  # the real graph, not a stub
    tensors = inputs(1, 283, 2, 4, edge_index.shape[1], seed=3)
    out, attn = check(tensors, edge_index)
    # The op's CPU implementation (the dense aggregation) agrees with the kernel too.
    op_out, op_attn = gat_attention(*[t.float() for t in tensors], edge_index)
    torch.testing.assert_close(out, op_out, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(attn, op_attn, atol=ATOL, rtol=ATOL)


def test_errors_name_the_culprit() -> None:
    edge_index = small_graph()
    x, a_s, a_d, eb = (t.float() for t in inputs(1, N_NODES, 2, 3, edge_index.shape[1]))
    with pytest.raises(ValueError, match="x must be float32"):
        gat_attention_forward(x.double(), a_s, a_d, eb, edge_index)
    with pytest.raises(ValueError, match="att_dst must have shape"):
        gat_attention_forward(x, a_s, a_d[:1], eb, edge_index)
    with pytest.raises(ValueError, match="grad_attn must have shape"):
        gat_attention_backward(torch.zeros_like(x), torch.zeros(1, 3, 2), x, a_s, a_d, eb, edge_index)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_gpu_half_precision_batch_32(dtype: torch.dtype, tol: float) -> None:
    from spectramind.bins import load_grid
    from spectramind.config import compose
    from spectramind.model.gat import add_self_loops_mean
    from spectramind.model.graph import build_graph

    graph = build_graph(compose(["model=small"]).model.encoders.airs_gnn, load_grid())
    edge_index, _ = add_self_loops_mean(graph.edge_index, None, 283)
    edge_index = edge_index.cuda()
    heads, ch = 4, 16
    tensors = inputs(32, 283, heads, ch, edge_index.shape[1], seed=5)
    low = [t.to("cuda", dtype) for t in tensors]
    gen = torch.Generator().manual_seed(6)
    grad_out = torch.randn(tensors[0].shape, generator=gen, dtype=torch.float64)
    grad_attn = torch.randn(32, edge_index.shape[1], heads, generator=gen, dtype=torch.float64)
    # The oracle sees the same rounded inputs, so the difference is the kernel's own error.
    (ref_out, ref_attn), ref_grads = reference(
        [t.cpu() for t in low], edge_index, grad_out.to(dtype), grad_attn.to(dtype)
    )

    out, attn = gat_attention_forward(*low, edge_index)
    assert out.dtype == attn.dtype == dtype
    torch.testing.assert_close(out.cpu().double(), ref_out, atol=tol, rtol=tol)
    torch.testing.assert_close(attn.cpu().double(), ref_attn, atol=tol, rtol=tol)
    grads = gat_attention_backward(grad_out.to("cuda", dtype), grad_attn.to("cuda", dtype), *low, edge_index)
    for got, want, t in zip(grads, ref_grads, low, strict=True):
        assert got.dtype == t.dtype
        # Parameter gradients sum over 32 * 283 nodes: scale the tolerance with their size.
        scale = max(1.0, want.abs().max().item())
        torch.testing.assert_close(got.cpu().double(), want, atol=tol * scale, rtol=tol)
