"""The physics graph over the 283 bins: edge families, attributes, symmetry and the config checks."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pandas as pd
import pytest
import torch

from spectramind.bins import N_BINS, load_grid, wavelengths
from spectramind.config import compose, to_container
from spectramind.model.graph import EDGE_FAMILIES, SEAM_REACH, BinGraph, build_graph, graph_summary


@pytest.fixture(scope="module")
def gnn_cfg() -> dict:
    """The composed ``model.encoders.airs_gnn`` block as plain dicts (tests edit copies of it)."""
    return to_container(compose())["model"]["encoders"]["airs_gnn"]


@pytest.fixture(scope="module")
def graph(gnn_cfg) -> BinGraph:
    return build_graph(gnn_cfg)


def _graph_cfg(gnn_cfg: dict, **edges: bool) -> dict:
    cfg = {**gnn_cfg["graph"], "edges": {**gnn_cfg["graph"]["edges"], **edges}}
    cfg["checks"] = dict(gnn_cfg["graph"]["checks"])
    return cfg


def _pairs(g: BinGraph, etype: int | None = None) -> set[tuple[int, int]]:
    ei = g.edge_index.numpy()
    keep = np.ones(g.num_edges, bool) if etype is None else g.edge_type.numpy() == etype
    return {(int(s), int(d)) for s, d in ei[:, keep].T}


def test_default_graph_shapes_and_counts(graph):
    e = graph.num_edges
    assert graph.num_nodes == N_BINS
    assert graph.edge_index.dtype == torch.int64 and tuple(graph.edge_index.shape) == (2, e)
    assert graph.edge_attr.dtype == torch.float32 and tuple(graph.edge_attr.shape) == (e, 4)
    assert graph.edge_type.dtype == torch.int64 and tuple(graph.edge_type.shape) == (e,)
    assert 500 < e < 3000
    assert len(_pairs(graph)) == e, "one edge per ordered pair"
    assert not (graph.edge_index[0] == graph.edge_index[1]).any()
    summary = graph_summary(graph)
    assert summary["num_edges"] == e and summary["self_loops"] == 0
    assert sum(summary["by_type"].values()) == e
    assert all(summary["by_type"][name] > 0 for name in EDGE_FAMILIES)
    assert summary["by_type"] == {"wavelength_adjacency": 562, "molecular_links": 574, "detector_seams": 18}


def test_graph_is_symmetric_with_mirrored_attributes(graph):
    pairs = _pairs(graph)
    assert pairs == {(d, s) for s, d in pairs}
    index = {p: k for k, p in enumerate(zip(*graph.edge_index.tolist()))}
    attr, etype = graph.edge_attr.numpy(), graph.edge_type.numpy()
    for (s, d), k in index.items():
        r = index[(d, s)]
        assert etype[k] == etype[r]
        assert attr[k, 0] == pytest.approx(-attr[r, 0])
        assert (attr[k, 1], attr[k, 2], attr[k, 3]) == (attr[r, 2], attr[r, 1], attr[r, 3])


def test_attributes_are_wavelength_gaps_and_molecule_tags(graph):
    wl = wavelengths()
    tags = load_grid().molecule_tags()
    src, dst = graph.edge_index.numpy()
    attr = graph.edge_attr.numpy()
    np.testing.assert_allclose(attr[:, 0], wl[dst] - wl[src], atol=1e-6)
    np.testing.assert_array_equal(attr[:, 1], tags[src])
    np.testing.assert_array_equal(attr[:, 2], tags[dst])
    # FGS1 talks to the bluest AIRS bin only, through a wavelength-adjacency edge.
    fgs1 = {(s, d) for s, d in _pairs(graph) if 0 in (s, d)}
    assert fgs1 == {(0, 1), (1, 0)}
    assert (0, 1) in _pairs(graph, 0)


@pytest.mark.parametrize("family", EDGE_FAMILIES)
def test_each_edge_family_switches_off(gnn_cfg, graph, family):
    etype = EDGE_FAMILIES.index(family)
    g = build_graph(_graph_cfg(gnn_cfg, **{family: False}))
    assert not (g.edge_type == etype).any()
    for other, name in enumerate(EDGE_FAMILIES):
        if name != family:
            assert (g.edge_type == other).any(), name
    assert g.num_edges < graph.num_edges


def test_seam_edges_cross_the_seam_and_carry_the_flag(gnn_cfg, graph):
    seam = gnn_cfg["graph"]["seam_index"]
    src, dst = graph.edge_index.numpy()
    flag = graph.edge_attr.numpy()[:, 3]
    seam_edges = graph.edge_type.numpy() == 2
    assert seam_edges.sum() == 2 * SEAM_REACH * SEAM_REACH
    lo, hi = np.minimum(src, dst)[seam_edges], np.maximum(src, dst)[seam_edges]
    assert ((lo < seam) & (hi >= seam)).all()
    assert (flag[seam_edges] == 1).all()
    # An adjacency edge touching a seam bin is flagged; one far from the seam is not.
    (k_touch,) = np.flatnonzero((src == seam - 2) & (dst == seam - 1))
    (k_far,) = np.flatnonzero((src == 10) & (dst == 11))
    assert flag[k_touch] == 1.0 and flag[k_far] == 0.0


def test_seam_index_comes_from_the_config(gnn_cfg):
    g = build_graph({**gnn_cfg["graph"], "seam_index": 120})
    src, dst = g.edge_index[:, g.edge_type == 2].numpy()
    assert set(np.minimum(src, dst)) == {117, 118, 119} and set(np.maximum(src, dst)) == {120, 121, 122}
    with pytest.raises(ValueError, match=r"seam_index.*0"):
        build_graph({**gnn_cfg["graph"], "seam_index": 0})


def test_molecular_edges_stay_inside_one_molecule(graph):
    grid = load_grid()
    masks = [grid.molecule_mask(m) for m in grid.molecules]
    src, dst = graph.edge_index[:, graph.edge_type == 1].numpy()
    assert len(src) > 0
    for s, d in zip(src, dst):
        assert any(m[s] and m[d] for m in masks), (s, d)
    # The links reach across each molecule's windows, not only along them.
    for name, windows in grid.molecule_windows.items():
        (lo_a, hi_a), (lo_b, hi_b) = windows[:2]
        assert any(lo_a <= s <= hi_a and lo_b <= d <= hi_b for s, d in zip(src, dst)), name


def test_self_loop_is_an_error_naming_the_bin(gnn_cfg):
    grid = load_grid()
    doubled = dataclasses.replace(grid, molecule_windows={**grid.molecule_windows, "H2O": ((40, 85), (40, 85))})
    with pytest.raises(ValueError, match=r"bin 40 would get a self loop"):
        build_graph(gnn_cfg["graph"], grid=doubled)
    cfg = _graph_cfg(gnn_cfg)
    cfg["checks"]["allow_self_loops"] = True
    g = build_graph(cfg, grid=doubled)
    loops = g.edge_index[0] == g.edge_index[1]
    assert sorted(g.edge_index[0, loops].tolist()) == list(range(N_BINS)), "exactly one self loop per node"
    assert (g.edge_attr[loops, 0] == 0).all()


def test_edge_attr_width_must_match_the_config(gnn_cfg):
    with pytest.raises(ValueError, match=r"4 columns but edge_features.dims is 5"):
        build_graph(gnn_cfg["graph"], edge_dims=5)
    block = {**gnn_cfg, "edge_features": {**gnn_cfg["edge_features"], "dims": 3}}
    with pytest.raises(ValueError, match=r"4 columns but edge_features.dims is 3"):
        build_graph(block)
    cfg = _graph_cfg(gnn_cfg)
    cfg["checks"]["validate_edge_attr_sizes"] = False
    assert build_graph(cfg, edge_dims=5).edge_attr.shape[1] == 4


def test_dims_override_through_compose_is_checked():
    cfg = compose(["model.encoders.airs_gnn.edge_features.dims=6"]).model.encoders.airs_gnn
    with pytest.raises(ValueError, match=r"dims is 6"):
        build_graph(cfg)


def test_unknown_edge_family_is_named(gnn_cfg):
    cfg = _graph_cfg(gnn_cfg)
    cfg["edges"]["molecule_links"] = True
    with pytest.raises(ValueError, match="molecule_links"):
        build_graph(cfg)


def test_wavelength_csv_is_checked_when_present(gnn_cfg, tmp_path, caplog):
    cols = [f"wl_{k}" for k in range(1, N_BINS + 1)]
    good = tmp_path / "wavelengths.csv"
    pd.DataFrame([wavelengths()], columns=cols).to_csv(good, index=False)
    assert build_graph({**gnn_cfg["graph"], "wavelength_csv": str(good)}).num_edges > 0

    wl = wavelengths()
    wl[7] += 1e-3
    bad = tmp_path / "shifted.csv"
    pd.DataFrame([wl], columns=cols).to_csv(bad, index=False)
    with pytest.raises(ValueError, match=r"shifted.csv: bin 7"):
        build_graph({**gnn_cfg["graph"], "wavelength_csv": str(bad)})

    missing = tmp_path / "nowhere.csv"
    with caplog.at_level(logging.DEBUG, logger="spectramind.model.graph"):
        g = build_graph({**gnn_cfg["graph"], "wavelength_csv": str(missing)})
    assert g.num_edges > 0
    assert "nowhere.csv" in caplog.text
