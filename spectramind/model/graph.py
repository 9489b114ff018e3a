"""The physics graph over the 283 spectral bins that the AIRS GNN passes messages on.

Built once from ``cfg.model.encoders.airs_gnn.graph`` and stored by the model as buffers:
the graph is the same for every planet, so it is part of the model, not of the data.

Nodes are the bins (0 = FGS1, 1..282 = AIRS ascending in wavelength). Edges are directed,
PyG convention: ``edge_index[0]`` is the source j, ``edge_index[1]`` the target i of a message
j -> i. Every family is built from undirected pairs and emitted in both directions, so the
graph is symmetric: each (s, d) has its (d, s) with the same type and the same attributes
except the sign of Δλ.

Edge families (each switched by ``graph.edges.<name>``):

====  ======================  ==============================================================
type  config key              rule
====  ======================  ==============================================================
0     wavelength_adjacency    consecutive bins b <-> b+1 for b = 0..281. This includes FGS1
                              <-> the bluest AIRS bin (0 <-> 1): FGS1 sits 1.25 µm away, but
                              without the link the FGS1 node would be an island and its depth
                              (the metric's heaviest element) could not inform AIRS; the
                              large Δλ on that one edge tells the GNN it is not a neighbour
                              like the others. 282 pairs, 564 edges.
1     molecular_links         for each molecule of the bin grid, within each of its windows a
                              dilated chain b <-> b + MOLECULAR_STRIDE (both ends in the
                              window), which crosses a 30-45-bin band in a few hops; and
                              between every two windows A, B of the same molecule, each bin
                              of A <-> the bin of B at the same relative position in its
                              window (and each bin of B <-> its counterpart in A), which
                              ties a molecule's bands together. With the default profile:
                              164 chain pairs + 123 distinct cross-window pairs, 574 edges.
2     detector_seams          every bin of seam_index-SEAM_REACH .. seam_index-1 <-> every
                              bin of seam_index .. seam_index+SEAM_REACH-1 (AIRS bins only):
                              3 x 3 = 9 pairs, 18 edges, so the GNN can learn the offset a
                              detector seam puts between its two sides.
====  ======================  ==============================================================

Deduplication: one edge per ordered pair (s, d), whatever the number of families that
produce it. The ONNX export runs attention densely over a 283 x 283 mask, which can hold
one edge per pair, so a multigraph would not survive export. A pair produced by several
families takes the highest type id (seam > molecular > adjacency: the most specific
relation); its attributes do not depend on the type. With the default config the seam
pair (177, 178) is also an adjacency pair, so the default graph has 562 type-0, 574 type-1
and 18 type-2 edges, E = 1154, at most 8 incoming edges per bin.

Edge attributes (``edge_attr``, (E, 4) float32, the ``edge_features.dims`` of the config):

====  ============  =====================================================================
col   name          value
====  ============  =====================================================================
0     delta_lambda  λ_target - λ_source in µm, signed and not normalised (|Δλ| <= 3.2 µm,
                    already O(1); adjacent AIRS bins are ~0.009 µm apart)
1     mol_tag_src   molecule tag of the source (BinGrid.molecule_tags: index + 1, 0 none)
2     mol_tag_dst   molecule tag of the target, same coding; stored as floats, the model
                    casts them back to integers to embed them
3     seam_flag     1 when the edge crosses the seam (its ends lie on opposite sides:
                    min < seam_index <= max) or touches it (an end is seam_index - 1 or
                    seam_index, the two bins bordering the seam); else 0. With the
                    default profile every molecule's two windows lie on opposite sides,
                    so all cross-window molecular edges carry the flag (268 edges in all)
====  ============  =====================================================================

Self loops: no family produces one with a valid profile; a malformed profile can (a
molecule listing the same window twice links each bin of it to itself). With
``checks.allow_self_loops: false`` any self loop is a ValueError naming the bin; with
``true`` produced self loops are dropped and exactly one per node is added, type 0, Δλ 0,
the node's own molecule tags, seam_flag by the rule above.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from spectramind.bins import N_BINS, BinGrid, load_grid

__all__ = [
    "EDGE_FAMILIES",
    "EDGE_FEATURES",
    "MOLECULAR_STRIDE",
    "SEAM_REACH",
    "BinGraph",
    "build_graph",
    "graph_summary",
]

log = logging.getLogger(__name__)

# Type id -> config key of the family, in priority order (a higher id wins a shared pair).
EDGE_FAMILIES: tuple[str, ...] = ("wavelength_adjacency", "molecular_links", "detector_seams")
EDGE_FEATURES: tuple[str, ...] = ("delta_lambda", "mol_tag_src", "mol_tag_dst", "seam_flag")
# Hop length of the in-window molecular chain: 4 bins (~0.035 µm) is beyond the reach of the
# adjacency edges yet lets a message cross a 46-bin window in about 11 hops.
MOLECULAR_STRIDE = 4
# Bins on each side of the seam linked across it: a seam offset shows over a few bins, and
# 3 x 3 pairs keep the family small next to the 282 adjacency pairs.
SEAM_REACH = 3
# The wavelength CSV must reproduce the grid to this many µm.
WAVELENGTH_TOLERANCE_UM = 1e-6


@dataclass
class BinGraph:
    """The spectral graph, ready to be registered as model buffers.

    Shapes:
        edge_index: (2, E) int64, row 0 source j, row 1 target i (PyG convention).
        edge_attr: (E, 4) float32, [delta_lambda, mol_tag_src, mol_tag_dst, seam_flag].
        edge_type: (E,) int64 in {0 wavelength adjacency, 1 molecular link, 2 seam}.
        num_nodes: 283.
    """

    edge_index: torch.Tensor
    edge_attr: torch.Tensor
    edge_type: torch.Tensor
    num_nodes: int

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])


def build_graph(graph_cfg: Mapping[str, Any], grid: BinGrid | None = None, edge_dims: int | None = None) -> BinGraph:
    """Build the bin graph from the ``encoders.airs_gnn.graph`` config node.

    ``graph_cfg`` may also be the whole ``encoders.airs_gnn`` block, whose ``graph`` child is
    then used and whose ``edge_features.dims`` is the expected attribute width. Otherwise
    ``edge_dims`` gives that width (default 4). ``grid`` supplies molecule windows and tags
    (default: ``configs/model/symbolic_profiles.yaml``); the config's ``seam_index`` wins over
    the grid's, since a Hydra override of ``symbolic.seam_index`` reaches the config only.

    Shapes: see :class:`BinGraph`; E = 1154 with the default config.

    Raises ValueError naming the key, file or bin at fault: wrong ``n_bins`` or
    ``seam_index``, an unknown ``edges`` key, a wavelength CSV that disagrees with the grid,
    a self loop when ``checks.allow_self_loops`` is false, and, when
    ``checks.validate_edge_attr_sizes`` is true, edge attributes whose rows differ from E or
    whose columns differ from ``edge_features.dims``.
    """
    cfg = dict(graph_cfg)
    if "graph" in cfg:
        if edge_dims is None:
            edge_dims = int(dict(cfg.get("edge_features") or {}).get("dims", len(EDGE_FEATURES)))
        cfg = dict(cfg["graph"])
    if edge_dims is None:
        edge_dims = len(EDGE_FEATURES)
    grid = grid if grid is not None else load_grid()

    n = int(cfg.get("n_bins", N_BINS))
    if n != N_BINS or len(grid.wavelength_um) != N_BINS:
        raise ValueError(f"graph.n_bins must be {N_BINS} (the bin grid), got {n}")
    seam = int(cfg["seam_index"]) if cfg.get("seam_index") is not None else grid.seam_index
    if not 1 <= seam < n:
        raise ValueError(f"graph.seam_index must be in [1, {n - 1}], got {seam}")
    edges_cfg = dict(cfg.get("edges") or {})
    unknown = sorted(set(edges_cfg) - set(EDGE_FAMILIES))
    if unknown:
        raise ValueError(f"graph.edges: unknown edge family {unknown[0]!r}; known: {', '.join(EDGE_FAMILIES)}")
    checks = dict(cfg.get("checks") or {})
    allow_self_loops = bool(checks.get("allow_self_loops", False))
    validate_sizes = bool(checks.get("validate_edge_attr_sizes", True))

    wl = _wavelengths(cfg.get("wavelength_csv"), grid)

    # (pair list per type); pairs are undirected here and mirrored below.
    families: list[list[tuple[int, int]]] = [[], [], []]
    if edges_cfg.get("wavelength_adjacency", True):
        families[0] = [(b, b + 1) for b in range(n - 1)]
    if edges_cfg.get("molecular_links", True):
        families[1] = _molecular_pairs(grid)
    if edges_cfg.get("detector_seams", True):
        lo, hi = max(1, seam - SEAM_REACH), min(n, seam + SEAM_REACH)
        families[2] = [(a, b) for a in range(lo, seam) for b in range(seam, hi)]

    merged: dict[tuple[int, int], int] = {}
    for etype, pairs in enumerate(families):
        for a, b in pairs:
            for pair in ((a, b), (b, a)):
                merged[pair] = max(etype, merged.get(pair, etype))

    loops = sorted(s for s, d in merged if s == d)
    if loops and not allow_self_loops:
        raise ValueError(
            f"graph: bin {loops[0]} would get a self loop ({len(loops)} bins in all; "
            "checks.allow_self_loops is false); check the molecule windows for a window listed twice"
        )
    if allow_self_loops:
        for b in loops:
            del merged[(b, b)]
        for b in range(n):
            merged[(b, b)] = 0

    ordered = sorted(merged)
    src = np.array([s for s, _ in ordered], dtype=np.int64)
    dst = np.array([d for _, d in ordered], dtype=np.int64)
    etype_arr = np.array([merged[p] for p in ordered], dtype=np.int64)
    tags = grid.molecule_tags().astype(np.float32)
    lo_end, hi_end = np.minimum(src, dst), np.maximum(src, dst)
    crosses = (lo_end < seam) & (hi_end >= seam)
    touches = np.isin(src, (seam - 1, seam)) | np.isin(dst, (seam - 1, seam))
    attr = np.stack(
        [
            (wl[dst] - wl[src]).astype(np.float32),
            tags[src],
            tags[dst],
            (crosses | touches).astype(np.float32),
        ],
        axis=1,
    )
    graph = BinGraph(
        edge_index=torch.from_numpy(np.stack([src, dst])),
        edge_attr=torch.from_numpy(attr.astype(np.float32)),
        edge_type=torch.from_numpy(etype_arr),
        num_nodes=n,
    )
    if validate_sizes:
        _check_sizes(graph, edge_dims)
    return graph


def graph_summary(g: BinGraph) -> dict[str, Any]:
    """Counts for logs and manifests: edges in all and by family, self loops, seam-flagged edges."""
    types = g.edge_type.tolist()
    src, dst = g.edge_index[0], g.edge_index[1]
    return {
        "num_nodes": g.num_nodes,
        "num_edges": g.num_edges,
        "by_type": {name: types.count(k) for k, name in enumerate(EDGE_FAMILIES)},
        "self_loops": int((src == dst).sum()),
        "seam_flagged": int((g.edge_attr[:, 3] > 0).sum()) if g.edge_attr.shape[1] > 3 else 0,
        "max_in_degree": int(torch.bincount(dst, minlength=g.num_nodes).max()) if g.num_edges else 0,
    }


def _molecular_pairs(grid: BinGrid) -> list[tuple[int, int]]:
    """Undirected molecular pairs (see the module docstring). A pair may come out twice."""
    pairs: list[tuple[int, int]] = []
    for windows in grid.molecule_windows.values():
        for lo, hi in windows:
            pairs += [(b, b + MOLECULAR_STRIDE) for b in range(lo, hi - MOLECULAR_STRIDE + 1)]
        for ia, (lo_a, hi_a) in enumerate(windows):
            for lo_b, hi_b in windows[ia + 1 :]:
                pairs += [(a, _counterpart(a, lo_a, hi_a, lo_b, hi_b)) for a in range(lo_a, hi_a + 1)]
                pairs += [(_counterpart(b, lo_b, hi_b, lo_a, hi_a), b) for b in range(lo_b, hi_b + 1)]
    return pairs


def _counterpart(b: int, lo: int, hi: int, lo_other: int, hi_other: int) -> int:
    """The bin of window [lo_other, hi_other] at the relative position of b in [lo, hi]."""
    frac = (b - lo) / (hi - lo) if hi > lo else 0.5
    return int(lo_other + round(frac * (hi_other - lo_other)))


def _wavelengths(csv: Any, grid: BinGrid) -> np.ndarray:
    """Bin centres in µm: the grid's, checked against ``wavelength_csv`` when that file exists.

    A missing file is normal (the data root is not there when a model is built for export
    or serving), so the grid is used and the fallback logged at debug level only.
    """
    wl = np.asarray(grid.wavelength_um, dtype=np.float64)
    if csv is None or str(csv) == "":
        return wl
    path = Path(str(csv))
    if not path.is_file():
        log.debug("graph: wavelength_csv %s not found; using the built-in bin grid", path)
        return wl
    try:
        frame = pd.read_csv(path)
    except Exception as exc:
        raise ValueError(f"graph.wavelength_csv {path}: cannot read: {exc}") from exc
    cols = [c for c in frame.columns if str(c).startswith("wl_")] or list(frame.columns)
    if len(frame) < 1 or len(cols) != len(wl):
        raise ValueError(
            f"graph.wavelength_csv {path}: expected one row of {len(wl)} wavelengths, "
            f"got {len(frame)} rows x {len(cols)} columns"
        )
    values = pd.to_numeric(frame[cols].iloc[0], errors="coerce").to_numpy(dtype=np.float64)
    diff = np.abs(values - wl)
    if not np.isfinite(diff).all() or diff.max() > WAVELENGTH_TOLERANCE_UM:
        worst = int(np.argmax(np.where(np.isfinite(diff), diff, np.inf)))
        raise ValueError(
            f"graph.wavelength_csv {path}: bin {worst} is {values[worst]} µm, the grid has "
            f"{wl[worst]:.8f} µm (tolerance {WAVELENGTH_TOLERANCE_UM} µm)"
        )
    return wl


def _check_sizes(g: BinGraph, edge_dims: int) -> None:
    """``checks.validate_edge_attr_sizes``: attributes, types and indices agree with E and dims."""
    e = g.num_edges
    rows, cols = (int(s) for s in g.edge_attr.shape)
    if rows != e:
        raise ValueError(f"graph: edge_attr has {rows} rows but there are {e} edges")
    if cols != edge_dims:
        raise ValueError(f"graph: edge_attr has {cols} columns but edge_features.dims is {edge_dims}")
    if tuple(g.edge_type.shape) != (e,):
        raise ValueError(f"graph: edge_type has shape {tuple(g.edge_type.shape)}, expected ({e},)")
    if e and (int(g.edge_index.min()) < 0 or int(g.edge_index.max()) >= g.num_nodes):
        raise ValueError(f"graph: edge_index refers to a bin outside [0, {g.num_nodes - 1}]")
