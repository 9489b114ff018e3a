"""Graph attention layer over a fixed graph, batched, running through ``spectramind::gat_attention``.

The math is PyTorch Geometric's ``GATConv`` with edge features and ``fill_value='mean'``
self loops; only the data layout differs: the B graphs of a batch share one topology, so the
node features stay (B, N, ...) and the graph tensors are given once.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spectramind.model.capture import capturing
from spectramind.ops import gat_attention

__all__ = ["GATLayer", "GATOutput", "add_self_loops_mean"]


class GATOutput(NamedTuple):
    """What :class:`GATLayer` returns.

    Attributes:
        out: (B, N, heads * out_channels) if ``concat`` else (B, N, out_channels).
        attention: (B, E_total, heads) softmax weights *before* attention dropout; row e belongs
            to edge ``edge_index[:, e]`` and sums to 1 over each node's incoming edges.
        edge_index: (2, E_total) the graph the attention is over: the input edges without
            self loops, in their order, followed by one self loop per node (node 0..N-1) when
            ``add_self_loops`` is set.
    """

    out: Tensor
    attention: Tensor
    edge_index: Tensor


def add_self_loops_mean(edge_index: Tensor, edge_attr: Tensor | None, num_nodes: int) -> tuple[Tensor, Tensor | None]:
    r"""Drop existing self loops, then append one loop per node, as PyG's ``add_self_loops(fill_value='mean')``.

    .. math::
        \mathbf{e}_{i,i} = \frac{1}{|\mathcal{N}(i)|} \sum_{j \in \mathcal{N}(i)} \mathbf{e}_{j,i}

    (zero for a node without incoming edges). Existing loops are dropped first so a loop is never
    counted twice in the softmax, exactly as ``GATConv`` does with ``remove_self_loops``.

    Shapes:
        - **input:** edge_index (2, E) int64, row 0 source, row 1 target; edge_attr (E, D) or None.
        - **output:** edge_index (2, E' + N) with E' the non-loop edges kept in order and the N loops
          last; edge_attr (E' + N, D) or None.
    """
    keep = edge_index[0] != edge_index[1]
    edge_index = edge_index[:, keep]
    # Not arange(..., device=edge_index.device): tracing would bake that device into the graph, so a
    # CPU-exported TorchScript could not run on a GPU; a cumsum inherits the device of its input.
    loops = edge_index.new_ones(num_nodes).cumsum(0) - 1
    new_index = torch.cat([edge_index, torch.stack([loops, loops])], dim=1)
    if edge_attr is None:
        return new_index, None
    edge_attr = edge_attr[keep]
    dst = edge_index[1]
    total = edge_attr.new_zeros(num_nodes, edge_attr.shape[1]).index_add(0, dst, edge_attr)
    count = edge_attr.new_zeros(num_nodes).index_add(0, dst, edge_attr.new_ones(dst.shape[0]))
    loop_attr = total / count.clamp(min=1.0)[:, None]
    return new_index, torch.cat([edge_attr, loop_attr], dim=0)


class GATLayer(nn.Module):
    r"""The graph attentional operator of `"Graph Attention Networks" <https://arxiv.org/abs/1710.10903>`_
    with edge features (PyG ``GATConv`` semantics), batched over graphs of one topology.

    .. math::
        \alpha_{i,j} = \operatorname{softmax}_{j \in \mathcal{N}(i) \cup \{i\}}\Big(
            \mathrm{LeakyReLU}\big(\mathbf{a}_s^{\top}\Theta\mathbf{x}_j + \mathbf{a}_t^{\top}\Theta\mathbf{x}_i
            + \mathbf{a}_e^{\top}\Theta_e\mathbf{e}_{j,i}\big)\Big)

        \mathbf{x}'_i = \big\Vert_{h=1}^{H}
            \sum_{j \in \mathcal{N}(i) \cup \{i\}} \alpha^{h}_{i,j}\,\Theta^{h}\mathbf{x}_j
            + \mathbf{b}
        \quad (\text{mean over } h \text{ instead of } \Vert \text{ if not concat})

    per head h, with :math:`\Theta` = ``lin``, :math:`\Theta_e` = ``lin_edge``, and self loops whose
    edge feature is the mean of the node's incoming edge features. The attention and the
    aggregation run in ``spectramind::gat_attention`` (a Triton kernel on CUDA); the edge term
    :math:`\mathbf{a}_e^{\top}\Theta_e\mathbf{e}_{j,i}` is one (E, H) tensor computed once per call,
    shared by the batch. Without ``edge_dim`` the edge term is zero and ``edge_attr`` is ignored.

    Attention dropout (training only) is applied to the op's returned attention, which is
    pre-dropout; the aggregation is then redone with the dropped weights in plain PyTorch. So
    ``dropout=0`` keeps the fused op's output on every path, and the returned attention is always
    the undropped softmax (what explanations want).

    Args:
        in_channels: node feature size F_in.
        out_channels: channels per head C.
        heads: number of heads H.
        edge_dim: edge feature size D, or None for no edge term.
        concat: concatenate heads (H * C) rather than average them (C).
        negative_slope: LeakyReLU slope.
        dropout: attention dropout probability (training only).
        add_self_loops: append one loop per node (after dropping any given loop).
        bias: learn an additive output bias.

    Shapes:
        - **input:** x (B, N, F_in); edge_index (2, E) int64, row 0 source j, row 1 target i;
          edge_attr (E, D) or None.
        - **output:** :class:`GATOutput` with out (B, N, H * C) or (B, N, C), attention
          (B, E_total, H), edge_index (2, E_total); E_total = E' + N with self loops, else E.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        heads: int = 1,
        edge_dim: int | None = None,
        concat: bool = True,
        negative_slope: float = 0.2,
        dropout: float = 0.0,
        add_self_loops: bool = True,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if in_channels <= 0 or out_channels <= 0 or heads <= 0:
            raise ValueError(
                "GATLayer needs positive sizes, got "
                f"in_channels={in_channels}, out_channels={out_channels}, heads={heads}"
            )
        if edge_dim is not None and edge_dim <= 0:
            raise ValueError(f"GATLayer.edge_dim must be positive or None, got {edge_dim}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"GATLayer.dropout must be in [0, 1), got {dropout}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.heads = heads
        self.edge_dim = edge_dim
        self.concat = concat
        self.negative_slope = float(negative_slope)
        self.dropout = float(dropout)
        self.add_self_loops = add_self_loops

        self.lin = nn.Linear(in_channels, heads * out_channels, bias=False)
        self.att_src = nn.Parameter(torch.empty(heads, out_channels))
        self.att_dst = nn.Parameter(torch.empty(heads, out_channels))
        self.lin_edge: nn.Linear | None = None
        self.att_edge: nn.Parameter | None = None
        if edge_dim is not None:
            self.lin_edge = nn.Linear(edge_dim, heads * out_channels, bias=False)
            self.att_edge = nn.Parameter(torch.empty(heads, out_channels))
        self.bias: nn.Parameter | None = None
        if bias:
            self.bias = nn.Parameter(torch.empty(heads * out_channels if concat else out_channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Glorot everywhere, zero bias: GATConv's initialisation, so a fresh layer trains like one.
        nn.init.xavier_uniform_(self.lin.weight)
        nn.init.xavier_uniform_(self.att_src)
        nn.init.xavier_uniform_(self.att_dst)
        if self.lin_edge is not None and self.att_edge is not None:
            nn.init.xavier_uniform_(self.lin_edge.weight)
            nn.init.xavier_uniform_(self.att_edge)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def edge_bias(self, edge_attr: Tensor | None, num_edges: int) -> Tensor:
        """The edge term <lin_edge(e), att_edge> per edge and head, zeros without ``edge_dim``. Shape: (E, H)."""
        if self.lin_edge is None or self.att_edge is None or edge_attr is None:
            return self.att_src.new_zeros(num_edges, self.heads)
        e = self.lin_edge(edge_attr).view(-1, self.heads, self.out_channels)
        return (e * self.att_edge).sum(-1)

    def _check(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor | None) -> None:
        if x.dim() != 3 or x.shape[-1] != self.in_channels:
            raise ValueError(f"GATLayer: x must be (B, N, {self.in_channels}), got {tuple(x.shape)}")
        if edge_index.dim() != 2 or edge_index.shape[0] != 2 or edge_index.dtype != torch.long:
            raise ValueError(
                f"GATLayer: edge_index must be int64 (2, E), got {edge_index.dtype} {tuple(edge_index.shape)}"
            )
        if self.edge_dim is not None:
            if edge_attr is None:
                raise ValueError(f"GATLayer: edge_attr (E, {self.edge_dim}) is required when edge_dim is set")
            if edge_attr.shape != (edge_index.shape[1], self.edge_dim):
                raise ValueError(
                    f"GATLayer: edge_attr must be ({edge_index.shape[1]}, {self.edge_dim}), "
                    f"got {tuple(edge_attr.shape)}"
                )

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor | None = None) -> GATOutput:
        # A trace records one input's shapes anyway; checking there only adds TracerWarnings.
        if not capturing():
            self._check(x, edge_index, edge_attr)
        if self.edge_dim is None:
            edge_attr = None
        batch, n, _ = x.shape
        heads, ch = self.heads, self.out_channels

        if self.add_self_loops:
            edge_index, edge_attr = add_self_loops_mean(edge_index, edge_attr, n)
        h = self.lin(x).view(batch, n, heads, ch)
        bias_e = self.edge_bias(edge_attr, edge_index.shape[1]).to(h.dtype)
        out, attn = gat_attention(h, self.att_src, self.att_dst, bias_e, edge_index, self.negative_slope)

        if self.training and self.dropout > 0.0:
            dropped = F.dropout(attn, p=self.dropout, training=True)
            msg = dropped[..., None] * h[:, edge_index[0]]  # (B, E, H, C)
            out = torch.zeros_like(h).index_add(1, edge_index[1], msg)

        out = out.reshape(batch, n, heads * ch) if self.concat else out.mean(dim=2)
        if self.bias is not None:
            out = out + self.bias
        return GATOutput(out, attn, edge_index)

    @classmethod
    def from_pyg(cls, conv: nn.Module) -> GATLayer:
        """A :class:`GATLayer` computing what ``conv`` (a ``torch_geometric.nn.GATConv``) computes.

        Copies ``lin`` (or ``lin_src`` where older PyG kept it there), ``att_src``, ``att_dst``,
        ``lin_edge``, ``att_edge`` and ``bias``. Raises ``ValueError`` for the GATConv features this
        layer does not have: bipartite weights (distinct ``lin_src``/``lin_dst``), ``residual=True``,
        and self loops filled other than by ``'mean'`` when edge features are used.
        """
        lin = conv.lin if getattr(conv, "lin", None) is not None else conv.lin_src
        lin_dst = getattr(conv, "lin_dst", None)
        # Older PyG kept the shared weight as lin_src and lin_dst, one module under two names.
        if lin is None or (lin_dst is not None and lin_dst is not lin):
            raise ValueError("from_pyg: bipartite GATConv (separate lin_src/lin_dst) is not supported")
        in_channels = conv.in_channels
        if not isinstance(in_channels, int) or in_channels <= 0:
            raise ValueError(f"from_pyg: GATConv.in_channels must be a positive int, got {in_channels!r}")
        if getattr(conv, "res", None) is not None:
            raise ValueError("from_pyg: GATConv(residual=True) is not supported; add the skip outside the layer")
        if conv.edge_dim is not None and conv.add_self_loops and conv.fill_value != "mean":
            raise ValueError(f"from_pyg: GATConv.fill_value must be 'mean', got {conv.fill_value!r}")
        if getattr(lin, "bias", None) is not None:
            raise ValueError("from_pyg: GATConv.lin with a bias is not supported")

        layer = cls(
            in_channels,
            conv.out_channels,
            heads=conv.heads,
            edge_dim=conv.edge_dim,
            concat=conv.concat,
            negative_slope=conv.negative_slope,
            dropout=conv.dropout,
            add_self_loops=conv.add_self_loops,
            bias=conv.bias is not None,
        )
        heads, ch = conv.heads, conv.out_channels
        with torch.no_grad():
            layer.lin.weight.copy_(lin.weight)
            layer.att_src.copy_(conv.att_src.reshape(heads, ch))
            layer.att_dst.copy_(conv.att_dst.reshape(heads, ch))
            if layer.lin_edge is not None and layer.att_edge is not None:
                layer.lin_edge.weight.copy_(conv.lin_edge.weight)
                layer.att_edge.copy_(conv.att_edge.reshape(heads, ch))
            if layer.bias is not None:
                layer.bias.copy_(conv.bias)
        return layer.to(device=conv.att_src.device, dtype=conv.att_src.dtype)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, heads={self.heads}, edge_dim={self.edge_dim}, "
            f"concat={self.concat}, dropout={self.dropout}, add_self_loops={self.add_self_loops}"
        )
