"""GATLayer: parity with PyG's GATConv, attention normalisation, gradients, tracing through the custom op."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.nn import GATConv

from spectramind.model.gat import GATLayer, add_self_loops_mean

torch.set_num_threads(1)

N_NODES = 24
IN, OUT, EDGE_DIM = 7, 5, 4
HUB = 0
LEAF = N_NODES - 1  # its only neighbour is N_NODES - 2


def random_graph(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A chain 0..N-2 (both directions), a leaf of one neighbour, a hub fed by every third node,
    and a few random long-range edges; no self loops, no duplicates."""
    gen = torch.Generator().manual_seed(seed)
    pairs: set[tuple[int, int]] = set()
    for i in range(N_NODES - 2):
        pairs |= {(i, i + 1), (i + 1, i)}
    pairs |= {(N_NODES - 2, LEAF), (LEAF, N_NODES - 2)}
    pairs |= {(j, HUB) for j in range(3, N_NODES - 1, 3)}
    for _ in range(12):
        a, b = torch.randint(0, N_NODES - 1, (2,), generator=gen).tolist()
        if a != b:
            pairs |= {(a, b), (b, a)}
    edge_index = torch.tensor(sorted(pairs)).T.contiguous()
    edge_attr = torch.randn(edge_index.shape[1], EDGE_DIM, generator=gen)
    return edge_index, edge_attr


@pytest.mark.parametrize("heads", [1, 4])
@pytest.mark.parametrize("concat", [True, False])
def test_from_pyg_matches_gatconv(heads: int, concat: bool) -> None:
    torch.manual_seed(heads + 10 * concat)
    edge_index, edge_attr = random_graph()
    conv = GATConv(IN, OUT, heads, concat=concat, edge_dim=EDGE_DIM).eval()
    with torch.no_grad():
        conv.bias.normal_()  # PyG initialises it to zero; a copied zero would test nothing
    layer = GATLayer.from_pyg(conv).eval()

    batch = 3
    x = torch.randn(batch, N_NODES, IN)
    got = layer(x, edge_index, edge_attr)

    # PyG takes the batch as one disjoint graph: graph b's nodes shifted by b * N.
    e = edge_index.shape[1]
    union_index = torch.cat([edge_index + b * N_NODES for b in range(batch)], dim=1)
    ref, (ref_index, ref_attn) = conv(
        x.reshape(-1, IN), union_index, edge_attr.repeat(batch, 1), return_attention_weights=True
    )
    ref = ref.view(batch, N_NODES, -1)
    assert got.out.shape == ref.shape == (batch, N_NODES, heads * OUT if concat else OUT)
    assert (got.out - ref).abs().max().item() <= 1e-5

    # PyG puts all real edges first, then the N * batch loops; regroup per graph to compare.
    real, loops = ref_attn[: batch * e].view(batch, e, heads), ref_attn[batch * e :].view(batch, N_NODES, heads)
    assert torch.equal(got.edge_index, torch.cat([edge_index, torch.arange(N_NODES).repeat(2, 1)], dim=1))
    assert torch.equal(ref_index[:, : batch * e], union_index)
    assert (got.attention - torch.cat([real, loops], dim=1)).abs().max().item() <= 1e-5


def test_from_pyg_rejects_what_it_cannot_copy() -> None:
    with pytest.raises(ValueError, match="residual"):
        GATLayer.from_pyg(GATConv(IN, OUT, 2, edge_dim=EDGE_DIM, residual=True))
    with pytest.raises(ValueError, match="fill_value"):
        GATLayer.from_pyg(GATConv(IN, OUT, 2, edge_dim=EDGE_DIM, fill_value="add"))
    with pytest.raises(ValueError, match="bipartite"):
        GATLayer.from_pyg(GATConv((IN, IN + 1), OUT, 2))


def test_attention_sums_to_one_per_target_including_self_loop() -> None:
    torch.manual_seed(1)
    edge_index, edge_attr = random_graph(seed=3)
    layer = GATLayer(IN, OUT, heads=3, edge_dim=EDGE_DIM)
    got = layer(torch.randn(2, N_NODES, IN), edge_index, edge_attr)
    dst = got.edge_index[1]
    totals = torch.zeros(2, N_NODES, 3).index_add(1, dst, got.attention)
    torch.testing.assert_close(totals, torch.ones_like(totals))
    assert (got.attention > 0).all()
    # The leaf sees its one neighbour and itself: two weights, both strictly inside (0, 1).
    leaf = got.attention[:, dst == LEAF]
    assert leaf.shape[1] == 2 and (leaf < 1).all()


def test_self_loop_edge_attr_is_mean_of_incoming() -> None:
    edge_index = torch.tensor([[1, 2, 0, 1], [0, 0, 1, 1]])  # the last edge is a loop: dropped, not averaged
    edge_attr = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0], [100.0, 100.0]])
    new_index, new_attr = add_self_loops_mean(edge_index, edge_attr, num_nodes=3)
    assert new_index.tolist() == [[1, 2, 0, 0, 1, 2], [0, 0, 1, 0, 1, 2]]
    assert new_attr[3:].tolist() == [[2.0, 1.0], [5.0, 5.0], [0.0, 0.0]]


def test_without_edge_dim_edge_attr_is_ignored() -> None:
    torch.manual_seed(2)
    edge_index, edge_attr = random_graph()
    conv = GATConv(IN, OUT, 2).eval()
    layer = GATLayer.from_pyg(conv).eval()
    x = torch.randn(1, N_NODES, IN)
    assert torch.equal(layer(x, edge_index, edge_attr).out, layer(x, edge_index, None).out)
    assert (layer(x, edge_index).out[0] - conv(x[0], edge_index)).abs().max().item() <= 1e-5


def test_backward_reaches_every_parameter() -> None:
    torch.manual_seed(3)
    edge_index, edge_attr = random_graph()
    layer = GATLayer(IN, OUT, heads=2, edge_dim=EDGE_DIM, dropout=0.3).train()
    x = torch.randn(2, N_NODES, IN, requires_grad=True)
    got = layer(x, edge_index, edge_attr)
    (got.out.square().sum() + got.attention.square().sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_attention_dropout_only_in_training() -> None:
    torch.manual_seed(4)
    edge_index, edge_attr = random_graph()
    layer = GATLayer(IN, OUT, heads=2, edge_dim=EDGE_DIM, dropout=0.5)
    x = torch.randn(2, N_NODES, IN)
    layer.eval()
    a, b = layer(x, edge_index, edge_attr), layer(x, edge_index, edge_attr)
    assert torch.equal(a.out, b.out)
    layer.train()
    c = layer(x, edge_index, edge_attr)
    assert not torch.allclose(c.out, a.out)
    torch.testing.assert_close(c.attention, a.attention)  # the returned attention is pre-dropout


def test_trace_keeps_the_custom_op() -> None:
    torch.manual_seed(5)
    edge_index, edge_attr = random_graph()
    layer = GATLayer(IN, OUT, heads=2, edge_dim=EDGE_DIM).eval()
    x = torch.randn(2, N_NODES, IN)
    traced = torch.jit.trace(layer, (x, edge_index, edge_attr))
    assert "spectramind::gat_attention" in str(traced.inlined_graph)
    x2 = torch.randn(3, N_NODES, IN)
    want = layer(x2, edge_index, edge_attr)
    got = traced(x2, edge_index, edge_attr)
    torch.testing.assert_close(got[0], want.out)
    torch.testing.assert_close(got[1], want.attention)
