"""AIRSGNN: every backend builds from the composed config, runs forward and backward, keeps graphs apart."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from spectramind.bins import N_BINS, load_grid
from spectramind.config import compose
from spectramind.model.encodings import FourierEncoding, SinusoidalEncoding, build_positional_encoding
from spectramind.model.gnn import BACKENDS, AIRSGNN

torch.set_num_threads(1)

HIDDEN, OUT, LAYERS, HEADS = 16, 16, 2, 2


@pytest.fixture(scope="module")
def composed() -> DictConfig:
    key = "model.encoders.airs_gnn"
    sizes = {"hidden_dim": HIDDEN, "out_dim": OUT, "n_layers": LAYERS, "heads": HEADS}
    return compose(["model=small", *(f"{key}.{name}={value}" for name, value in sizes.items())]).model.encoders.airs_gnn


@pytest.fixture(scope="module")
def base_cfg(composed: DictConfig) -> dict[str, Any]:
    """Plain dicts, so that each test can vary a copy."""
    return OmegaConf.to_container(composed, resolve=True)


def variant(cfg: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A deep copy of ``cfg`` with dotted keys (``a__b`` for ``a.b``) replaced."""
    out = copy.deepcopy(cfg)
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        node = out
        for key in path:
            node = node[key]
        node[last] = value
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, Any]:
    """A synthetic physics graph over the real grid: the wavelength chain (type 0), random links between
    bins of the same molecule (type 1), the two bins astride the seam (type 2); both directions."""
    grid = load_grid()
    wl = torch.tensor(grid.wavelength_um, dtype=torch.float32)
    tags = torch.from_numpy(grid.molecule_tags())
    gen = torch.Generator().manual_seed(0)
    pairs: dict[tuple[int, int], int] = {}
    for i in range(N_BINS - 1):
        pairs[(i, i + 1)] = pairs[(i + 1, i)] = 0
    for k in range(1, len(grid.molecules) + 1):
        members = torch.nonzero(tags == k).flatten()
        for _ in range(20):
            a, b = members[torch.randint(0, len(members), (2,), generator=gen)].tolist()
            if abs(a - b) > 1:
                pairs[(a, b)] = pairs[(b, a)] = 1
    s = grid.seam_index
    pairs[(s - 1, s)] = pairs[(s, s - 1)] = 2
    edge_index = torch.tensor(list(pairs)).T.contiguous()
    edge_type = torch.tensor(list(pairs.values()))
    src, dst = edge_index
    edge_attr = torch.stack(
        [
            (wl[dst] - wl[src]),
            tags[src].float(),
            tags[dst].float(),
            ((src < s) != (dst < s)).float(),
        ],
        dim=1,
    )
    return {
        "wavelengths": wl,
        "mol_tags": tags,
        "seam_index": s,
        "n_molecules": len(grid.molecules),
        "edge_index": edge_index,
        "edge_attr": edge_attr,
        "edge_type": edge_type,
    }


def build(cfg: Mapping[str, Any], graph: dict[str, Any], seed: int = 0) -> AIRSGNN:
    torch.manual_seed(seed)
    return AIRSGNN(cfg, graph["wavelengths"], graph["mol_tags"], graph["seam_index"], graph["n_molecules"])


def run(model: AIRSGNN, graph: dict[str, Any], nodes: torch.Tensor):
    return model(nodes, graph["edge_index"], graph["edge_attr"], graph["edge_type"])


def nodes(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, N_BINS, 8, generator=torch.Generator().manual_seed(seed))


def test_builds_from_the_composed_node(composed: DictConfig, graph: dict[str, Any]) -> None:
    assert composed.backend == "gat" and composed.node_features == 8 and composed.edge_features.dims == 4
    model = build(composed, graph)
    assert model.n_layers == LAYERS and model.heads == HEADS and model.out_proj.out_features == OUT
    assert run(model, graph, nodes()).nodes.shape == (2, N_BINS, OUT)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_forward_backward(base_cfg: dict[str, Any], graph: dict[str, Any], backend: str) -> None:
    model = build(variant(base_cfg, backend=backend), graph).train()
    x = nodes().requires_grad_(True)
    enc = run(model, graph, x)
    assert enc.nodes.shape == (2, N_BINS, OUT)
    assert torch.isfinite(enc.nodes).all()
    e_total = graph["edge_index"].shape[1] + N_BINS
    if backend == "gat":
        assert enc.attention.shape == (2, LAYERS, e_total, HEADS)
    else:
        assert enc.attention.numel() == 0 and enc.attention.shape[0] == 2
    enc.nodes.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_gat_attention_is_normalised_per_bin(base_cfg: dict[str, Any], graph: dict[str, Any]) -> None:
    model = build(base_cfg, graph).eval()
    attn = run(model, graph, nodes()).attention
    dst = torch.cat([graph["edge_index"][1], torch.arange(N_BINS)])  # the documented edge order: input, then loops
    totals = torch.zeros(2, LAYERS, N_BINS, HEADS).index_add(2, dst, attn)
    torch.testing.assert_close(totals, torch.ones_like(totals))


@pytest.mark.parametrize("backend", BACKENDS)
def test_graphs_of_a_batch_stay_apart(base_cfg: dict[str, Any], graph: dict[str, Any], backend: str) -> None:
    # A wrong node offset in the flattened batch would leak messages between graphs.
    model = build(variant(base_cfg, backend=backend), graph).eval()
    x = nodes(batch=3)
    together = run(model, graph, x)
    for b in range(3):
        alone = run(model, graph, x[b : b + 1])
        torch.testing.assert_close(together.nodes[b : b + 1], alone.nodes, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(together.attention[b : b + 1], alone.attention, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", ["fourier", "sinusoidal"])
@pytest.mark.parametrize("backend", ["gat", "mpnn"])
def test_positional_encoding_kinds(base_cfg: dict[str, Any], graph: dict[str, Any], kind: str, backend: str) -> None:
    cfg = variant(base_cfg, backend=backend, positional_encoding__kind=kind)
    model = build(cfg, graph).train()
    enc = run(model, graph, nodes())
    assert enc.nodes.shape == (2, N_BINS, OUT)
    enc.nodes.sum().backward()
    assert model.in_proj.weight.shape == (HIDDEN, 8 + 16)
    # The encoding's columns of the input projection learn only if the encoding reaches the model.
    assert model.in_proj.weight.grad[:, 8:].abs().sum() > 0


def test_positional_encoding_off_and_embeddings_off(base_cfg: dict[str, Any], graph: dict[str, Any]) -> None:
    cfg = variant(base_cfg, positional_encoding__use=False, embed__mol_tags=False, embed__seam_flag=False)
    model = build(cfg, graph)
    assert model.pos_enc is None and model.mol_embed is None and model.seam_embed is None
    assert model.in_proj.weight.shape == (HIDDEN, 8)
    assert run(model, graph, nodes()).nodes.shape == (2, N_BINS, OUT)


def test_encodings_tables() -> None:
    wl = torch.tensor(load_grid().wavelength_um, dtype=torch.float32)
    four = FourierEncoding(wl, 16)()
    assert four.shape == (N_BINS, 16)
    torch.testing.assert_close(four[:, :8].square() + four[:, 8:].square(), torch.ones(N_BINS, 8))
    assert torch.unique(four, dim=0).shape[0] == N_BINS  # every bin gets its own code
    rand = FourierEncoding(wl, 16, frequencies="random", seed=3)
    torch.testing.assert_close(rand.freqs, FourierEncoding(wl, 16, frequencies="random", seed=3).freqs)
    sin = SinusoidalEncoding(wl, 16)()
    assert sin.shape == (N_BINS, 16)
    torch.testing.assert_close(sin[0], torch.tensor([0.0, 1.0] * 8))  # position 0: sin 0, cos 1
    assert not torch.allclose(SinusoidalEncoding(wl, 16, over="wavelength")(), sin)
    with pytest.raises(ValueError, match="even"):
        build_positional_encoding("fourier", wl, 15)
    with pytest.raises(ValueError, match="kind"):
        build_positional_encoding("rope", wl, 16)


@pytest.mark.parametrize("backend", ["gat", "nnconv", "mpnn"])
def test_edge_features_off(base_cfg: dict[str, Any], graph: dict[str, Any], backend: str) -> None:
    model = build(variant(base_cfg, backend=backend, edge_features__use=False), graph).eval()
    x = nodes()
    with_attr = run(model, graph, x)
    without = model(x, graph["edge_index"], None, graph["edge_type"])
    torch.testing.assert_close(with_attr.nodes, without.nodes)  # edge_attr is not read at all
    if backend == "gat":
        assert all(conv.conv.lin_edge is None for conv in model.convs)
        assert without.attention.shape == (2, LAYERS, graph["edge_index"].shape[1] + N_BINS, HEADS)
    without.nodes.sum().backward()


def test_residual_on_and_off(base_cfg: dict[str, Any], graph: dict[str, Any]) -> None:
    x = nodes()
    on = build(variant(base_cfg, residual=True), graph, seed=7).eval()
    off = build(variant(base_cfg, residual=False), graph, seed=7).eval()
    assert all(torch.equal(a, b) for a, b in zip(on.state_dict().values(), off.state_dict().values()))
    y_on, y_off = run(on, graph, x).nodes, run(off, graph, x).nodes
    assert y_on.shape == y_off.shape == (2, N_BINS, OUT)
    assert not torch.allclose(y_on, y_off)
    # Without the skip, what reaches the output projection is GELU's output, never below its floor
    # (about -0.17); with it, the embedding rides along and goes well below.
    seen: dict[str, torch.Tensor] = {}
    for name, model in (("on", on), ("off", off)):
        model.out_proj.register_forward_hook(lambda m, inp, out, name=name: seen.__setitem__(name, inp[0]))
        run(model, graph, x)
    assert seen["off"].min() >= -0.1701
    assert seen["on"].min() < -0.5


def test_bad_inputs_name_the_culprit(base_cfg: dict[str, Any], graph: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="backend"):
        build(variant(base_cfg, backend="gcn"), graph)
    model = build(base_cfg, graph)
    with pytest.raises(ValueError, match="nodes"):
        model(torch.zeros(2, N_BINS, 7), graph["edge_index"], graph["edge_attr"], graph["edge_type"])
    with pytest.raises(ValueError, match="edge_attr"):
        model(nodes(), graph["edge_index"], graph["edge_attr"][:, :3], graph["edge_type"])
    with pytest.raises(ValueError, match="edge_type"):
        model(nodes(), graph["edge_index"], graph["edge_attr"], graph["edge_type"] + 3)


def test_trace_of_gat_encoder_keeps_the_custom_op(base_cfg: dict[str, Any], graph: dict[str, Any]) -> None:
    model = build(base_cfg, graph).eval()
    args = (nodes(), graph["edge_index"], graph["edge_attr"], graph["edge_type"])
    traced = torch.jit.trace(model, args)
    assert str(traced.inlined_graph).count("spectramind::gat_attention") == LAYERS
    torch.testing.assert_close(traced(*args)[0], model(*args).nodes)
