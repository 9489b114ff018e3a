"""The AIRS spectral GNN encoder: message passing over the fixed physics graph of the 283 bins.

Four interchangeable backends share one encoder body, chosen once by ``encoders.airs_gnn.backend``:

- ``gat``: :class:`~spectramind.model.gat.GATLayer` (the ``spectramind::gat_attention`` op) on the
  batched (B, N, ...) layout; the only backend with attention to return.
- ``rgcn``: ``torch_geometric.nn.RGCNConv`` with one relation per edge type (adjacency,
  molecular, seam).
- ``nnconv``: ``torch_geometric.nn.NNConv``, weights generated per edge from its features.
- ``mpnn``: ``torch_geometric.nn.GINEConv``, GIN with the edge features added to each message.

The PyG backends run on the batch flattened into one disjoint graph (graph b's nodes offset by
b * N); every graph of a batch has the same topology, so the offsets are the only difference.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GINEConv, NNConv, RGCNConv

from spectramind.model.capture import capturing
from spectramind.model.encodings import build_positional_encoding
from spectramind.model.gat import GATLayer

__all__ = ["AIRSEncoding", "AIRSGNN", "BACKENDS", "N_EDGE_TYPES"]

log = logging.getLogger(__name__)

BACKENDS = ("gat", "rgcn", "nnconv", "mpnn")
N_EDGE_TYPES = 3  # 0 wavelength adjacency, 1 molecular link, 2 detector seam
# NNConv generates a (width_in x width_out) matrix for every edge of the flattened batch; at
# hidden_dim 256 that is 65,536 floats an edge, gigabytes a batch. It therefore runs in a
# bottleneck of this width, between a down and an up projection.
NNCONV_WIDTH = 32
EDGE_NET_HIDDEN = 32


class AIRSEncoding(NamedTuple):
    """What :class:`AIRSGNN` returns.

    Attributes:
        nodes: (B, N, out_dim) per-bin embeddings.
        attention: gat backend: (B, n_layers, E + N, heads), layer l's attention over the input
            edges in their order followed by one self loop per bin (bin 0..N-1), i.e. over
            ``GATOutput.edge_index``; pre-dropout, summing to 1 over each bin's incoming edges.
            Other backends: an empty (B, 0, 0, 0) tensor.
    """

    nodes: Tensor
    attention: Tensor


def _get(cfg: Mapping[str, Any], path: str) -> Any:
    node: Any = cfg
    for key in path.split("."):
        if not isinstance(node, Mapping) or key not in node:
            raise ValueError(f"encoders.airs_gnn.{path} is missing from the config")
        node = node[key]
    return node


class _GATBlock(nn.Module):
    """GATLayer with concatenated heads, projected back to the hidden width. Shapes: (B, N, D) -> (B, N, D)."""

    def __init__(self, hidden: int, heads: int, edge_dim: int | None) -> None:
        super().__init__()
        # ceil so any (hidden, heads) pair works; the projection absorbs heads * per_head != hidden.
        per_head = -(-hidden // heads)
        self.conv = GATLayer(hidden, per_head, heads=heads, edge_dim=edge_dim, concat=True)
        self.proj = nn.Linear(heads * per_head, hidden)

    def forward(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor | None) -> tuple[Tensor, Tensor]:
        res = self.conv(h, edge_index, edge_attr)
        return self.proj(res.out), res.attention


class _NNConvBlock(nn.Module):
    """NNConv in a ``NNCONV_WIDTH`` bottleneck with an MLP edge network. Shapes: (M, D) -> (M, D) on the flat graph."""

    def __init__(self, hidden: int, edge_dim: int) -> None:
        super().__init__()
        width = min(hidden, NNCONV_WIDTH)
        self.down = nn.Linear(hidden, width)
        edge_net = nn.Sequential(
            nn.Linear(edge_dim, EDGE_NET_HIDDEN), nn.ReLU(), nn.Linear(EDGE_NET_HIDDEN, width * width)
        )
        # mean, not sum: bins have from one neighbour to a molecular hub's many, and the generated
        # weights are not scaled for degree.
        self.conv = NNConv(width, width, edge_net, aggr="mean")
        self.up = nn.Linear(width, hidden)

    def forward(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        return self.up(self.conv(self.down(h), edge_index, edge_attr))


class AIRSGNN(nn.Module):
    r"""Encoder of the AIRS/FGS1 bins: embed each bin, pass messages over the physics graph, project.

    .. math::
        \mathbf{h}^{(0)}_i = W_{in}[\mathbf{x}_i \,\Vert\, PE(\lambda_i)] + E_{mol}[m_i] + E_{seam}[s_i]

        \mathbf{h}^{(l+1)} = \mathbf{h}^{(l)} + \mathrm{Dropout}(\mathrm{GELU}(\mathrm{LayerNorm}(
            \mathrm{Conv}^{(l)}(\mathbf{h}^{(l)}, \mathcal{G}))))
        \quad (\text{without the first term if not residual})

        \mathbf{y}_i = W_{out}\mathbf{h}^{(L)}_i

    with :math:`m_i` the molecule tag (0 none, k the k-th molecule) and :math:`s_i = [i \ge` seam_index]
    the side of the detector seam; each embedding is a learned (hidden_dim,) vector added after the
    projection, which is the projection of a concatenated one-hot. PE and each embedding are
    present only when enabled in the config. Conv is the chosen backend:

    - ``gat``: GATLayer(hidden, ceil(hidden / heads), heads, edge_dim) with heads concatenated, then
      Linear(heads * ceil(hidden / heads), hidden). Attention dropout is 0 so training runs the
      fused op's aggregation too; ``dropout`` regularises the features instead.
    - ``rgcn``: RGCNConv(hidden, hidden, num_relations=3, aggr='mean') on ``edge_type``; it never
      reads ``edge_attr``.
    - ``nnconv``: Linear(hidden, w) -> NNConv(w, w, MLP(edge input -> 32 -> w*w), aggr='mean') ->
      Linear(w, hidden), w = min(hidden, 32).
    - ``mpnn``: GINEConv(MLP(hidden -> hidden -> hidden), train_eps=True, edge_dim=edge input).

    ``edge_features.use: false``: gat drops the edge term (zero edge bias). NNConv and GINEConv
    cannot run without an edge input, so they fall back to the one-hot edge type (3 features),
    which is graph structure the model always has, not a feature; rgcn is unchanged.

    Args:
        cfg: the ``encoders.airs_gnn`` node (node_features, hidden_dim, out_dim, n_layers, backend,
            heads, residual, dropout, edge_features, embed, positional_encoding; graph.n_bins is
            checked against ``wavelengths`` if present).
        wavelengths: (N,) bin centres in um.
        mol_tags: (N,) int64 molecule tag per bin in [0, n_molecules].
        seam_index: first bin on the far side of the detector seam, in [1, N-1].
        n_molecules: number of molecules (tags 1..n_molecules).

    Shapes:
        - **input:** nodes (B, N, node_features); edge_index (2, E) int64, row 0 source, row 1
          target, no self loops; edge_attr (E, edge_features.dims); edge_type (E,) int64 in {0, 1, 2}.
        - **output:** :class:`AIRSEncoding` with nodes (B, N, out_dim) and attention
          (B, n_layers, E + N, heads) for gat, (B, 0, 0, 0) otherwise.
    """

    def __init__(
        self, cfg: Mapping[str, Any], wavelengths: Tensor, mol_tags: Tensor, seam_index: int, n_molecules: int
    ) -> None:
        super().__init__()
        self.node_features = int(_get(cfg, "node_features"))
        hidden = int(_get(cfg, "hidden_dim"))
        self.out_dim = int(_get(cfg, "out_dim"))
        self.n_layers = int(_get(cfg, "n_layers"))
        self.backend = str(_get(cfg, "backend"))
        self.heads = int(_get(cfg, "heads"))
        self.residual = bool(_get(cfg, "residual"))
        dropout = float(_get(cfg, "dropout"))
        self.use_edge_features = bool(_get(cfg, "edge_features.use"))
        self.edge_dims = int(_get(cfg, "edge_features.dims"))
        use_mol = bool(_get(cfg, "embed.mol_tags"))
        use_seam = bool(_get(cfg, "embed.seam_flag"))
        use_pe = bool(_get(cfg, "positional_encoding.use"))

        if self.backend not in BACKENDS:
            raise ValueError(f"encoders.airs_gnn.backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        for name, value in (
            ("node_features", self.node_features),
            ("hidden_dim", hidden),
            ("out_dim", self.out_dim),
            ("n_layers", self.n_layers),
            ("heads", self.heads),
            ("edge_features.dims", self.edge_dims),
        ):
            if value <= 0:
                raise ValueError(f"encoders.airs_gnn.{name} must be positive, got {value}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"encoders.airs_gnn.dropout must be in [0, 1), got {dropout}")
        if wavelengths.dim() != 1:
            raise ValueError(f"wavelengths must be (N,), got {tuple(wavelengths.shape)}")
        n = wavelengths.shape[0]
        graph = cfg.get("graph")
        n_bins = graph.get("n_bins") if isinstance(graph, Mapping) else None
        if n_bins is not None and int(n_bins) != n:
            raise ValueError(f"wavelengths has {n} bins but encoders.airs_gnn.graph.n_bins is {n_bins}")
        if mol_tags.shape != (n,) or mol_tags.dtype != torch.long:
            raise ValueError(f"mol_tags must be int64 of shape ({n},), got {mol_tags.dtype} {tuple(mol_tags.shape)}")
        if n_molecules < 0 or int(mol_tags.min()) < 0 or int(mol_tags.max()) > n_molecules:
            raise ValueError(
                f"mol_tags must lie in [0, n_molecules={n_molecules}], "
                f"got [{int(mol_tags.min())}, {int(mol_tags.max())}]"
            )
        if not 1 <= seam_index < n:
            raise ValueError(f"seam_index must be in [1, {n - 1}], got {seam_index}")
        self.n_bins = n

        self.pos_enc: nn.Module | None = None
        pe_dim = 0
        if use_pe:
            pe_dim = int(_get(cfg, "positional_encoding.dim"))
            self.pos_enc = build_positional_encoding(str(_get(cfg, "positional_encoding.kind")), wavelengths, pe_dim)
        self.in_proj = nn.Linear(self.node_features + pe_dim, hidden)
        self.mol_embed = nn.Embedding(n_molecules + 1, hidden) if use_mol else None
        self.seam_embed = nn.Embedding(2, hidden) if use_seam else None
        # Derived from the grid and rebuilt with the model, so kept out of the state dict.
        self.register_buffer("mol_tags", mol_tags.detach().clone(), persistent=False)
        self.register_buffer("seam_side", (torch.arange(n) >= seam_index).long(), persistent=False)

        edge_in = self.edge_dims if self.use_edge_features else N_EDGE_TYPES
        self.convs = nn.ModuleList()
        for _ in range(self.n_layers):
            if self.backend == "gat":
                conv: nn.Module = _GATBlock(hidden, self.heads, self.edge_dims if self.use_edge_features else None)
            elif self.backend == "rgcn":
                conv = RGCNConv(hidden, hidden, num_relations=N_EDGE_TYPES, aggr="mean")
            elif self.backend == "nnconv":
                conv = _NNConvBlock(hidden, edge_in)
            else:
                mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden))
                conv = GINEConv(mlp, train_eps=True, edge_dim=edge_in)
            self.convs.append(conv)
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(self.n_layers))
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden, self.out_dim)

        fallback = ""
        if not self.use_edge_features and self.backend in ("nnconv", "mpnn"):
            fallback = " (edge features off: edge network reads the one-hot edge type)"
        log.info(
            "AIRS GNN backend %s: %d layers, hidden %d, heads %d, residual %s%s",
            self.backend, self.n_layers, hidden, self.heads, self.residual, fallback,
        )

    def _check_graph(self, nodes: Tensor, edge_index: Tensor, edge_attr: Tensor | None, edge_type: Tensor) -> None:
        if nodes.dim() != 3 or nodes.shape[1] != self.n_bins or nodes.shape[2] != self.node_features:
            raise ValueError(f"nodes must be (B, {self.n_bins}, {self.node_features}), got {tuple(nodes.shape)}")
        if edge_index.dim() != 2 or edge_index.shape[0] != 2 or edge_index.dtype != torch.long:
            raise ValueError(f"edge_index must be int64 (2, E), got {edge_index.dtype} {tuple(edge_index.shape)}")
        e = edge_index.shape[1]
        if edge_type.shape != (e,) or edge_type.dtype != torch.long:
            raise ValueError(f"edge_type must be int64 ({e},), got {edge_type.dtype} {tuple(edge_type.shape)}")
        if self.use_edge_features and (edge_attr is None or edge_attr.shape != (e, self.edge_dims)):
            got = None if edge_attr is None else tuple(edge_attr.shape)
            raise ValueError(f"edge_attr must be ({e}, {self.edge_dims}) (edge_features.dims), got {got}")
        if e:
            if int(edge_index.min()) < 0 or int(edge_index.max()) >= self.n_bins:
                raise ValueError(f"edge_index must index bins 0..{self.n_bins - 1}")
            if int(edge_type.min()) < 0 or int(edge_type.max()) >= N_EDGE_TYPES:
                raise ValueError(f"edge_type must lie in [0, {N_EDGE_TYPES - 1}]")

    def forward(
        self, nodes: Tensor, edge_index: Tensor, edge_attr: Tensor | None, edge_type: Tensor
    ) -> AIRSEncoding:
        # A trace would freeze these checks (they read shapes and values) into constants: eager only.
        if not capturing():
            self._check_graph(nodes, edge_index, edge_attr, edge_type)
        batch, n, _ = nodes.shape
        x = nodes
        if self.pos_enc is not None:
            pe = self.pos_enc().to(nodes.dtype)
            x = torch.cat([x, pe[None].expand(batch, -1, -1)], dim=-1)
        h = self.in_proj(x)
        if self.mol_embed is not None:
            h = h + self.mol_embed(self.mol_tags)
        if self.seam_embed is not None:
            h = h + self.seam_embed(self.seam_side)

        if self.backend == "gat":
            h, attention = self._gat_layers(h, edge_index, edge_attr if self.use_edge_features else None)
        else:
            h = self._pyg_layers(h, edge_index, edge_attr, edge_type)
            attention = h.new_zeros(batch, 0, 0, 0)
        return AIRSEncoding(self.out_proj(h), attention)

    def _block(self, layer: int, h: Tensor, update: Tensor) -> Tensor:
        update = self.dropout(F.gelu(self.norms[layer](update)))
        return h + update if self.residual else update

    def _gat_layers(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor | None) -> tuple[Tensor, Tensor]:
        maps = []
        for layer, conv in enumerate(self.convs):
            update, attn = conv(h, edge_index, edge_attr)
            h = self._block(layer, h, update)
            maps.append(attn)
        return h, torch.stack(maps, dim=1)

    def _pyg_layers(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor | None, edge_type: Tensor) -> Tensor:
        batch, n, hidden = h.shape
        offsets = torch.arange(batch, device=edge_index.device) * n
        flat_index = (edge_index[:, None, :] + offsets[None, :, None]).reshape(2, -1)  # graph b's edges at b * E
        flat_type = edge_type.repeat(batch)
        if self.use_edge_features and edge_attr is not None:
            edge_in = edge_attr.to(h.dtype)
        else:
            edge_in = F.one_hot(edge_type, N_EDGE_TYPES).to(h.dtype)
        flat_attr = edge_in.repeat(batch, 1)

        flat = h.reshape(batch * n, hidden)
        for layer, conv in enumerate(self.convs):
            if self.backend == "rgcn":
                update = conv(flat, flat_index, flat_type)
            else:
                update = conv(flat, flat_index, flat_attr)
            flat = self._block(layer, flat, update)
        return flat.reshape(batch, n, hidden)
