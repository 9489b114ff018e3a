"""ONNX export of a calibrated SpectraMind V50 with its custom operators translated to standard ONNX.

The model calls two custom operators (:mod:`spectramind.ops`). ``torch.onnx.export(dynamo=True)``
captures the model with ``torch.export`` (the operators stay opaque, by name) and this module
gives the exporter an ONNX translation of each (``custom_translation_table``):

``spectramind::selective_scan`` -> one ONNX ``Scan`` over time (never unrolled)::

    outside:  delta <- softplus(delta + delta_bias);  x = delta * u
    body:     h_t = exp(max(delta_t A, floor)) * h_{t-1} + x_t B_t     state h (B, d_inner, d_state)
              y_t = h_t @ C_t
    outside:  y <- (y + D u) * silu(z)

    The Scan slices the channel-first (B, ., L) tensors along their time axis directly
    (``scan_input_axes``); ``reverse=True`` is ``scan_input_directions = scan_output_directions
    = 1``, so no flipped copy is formed. The log-decay floor (-60) is the CPU operator's
    (:data:`spectramind.ops._LOG_DECAY_FLOOR`). The body has 9 nodes whatever L is.

``spectramind::gat_attention`` -> dense masked attention over the fixed graph::

    slot_e       = dst_e * N + src_e                                  (E,)
    mask         = scatter(zeros(N*N), slot, 1)                        (N_target, N_source)
    logits[i, j] = LeakyReLU(<x_j, att_src> + <x_i, att_dst> + edge_bias(j->i))   (B, H, N, N)
    attn         = where(mask, softmax_j(where(mask, logits, lowest)), 0)
    out          = attn @ x;   attention = attn.flat[..., slot]        (B, N, H, C), (B, E, H)

    A target without incoming edges gets zeros, as in the operator. The translation assumes
    unique (source, target) pairs (a repeated pair would share one matrix slot), which
    :func:`export_onnx` checks on the real edge lists before exporting.

API: :func:`export_onnx` (one self-contained ``.onnx`` file, inputs ``fgs1``/``airs_nodes``,
outputs ``mu``/``sigma``, dynamic axis ``batch``), :func:`onnx_node_count` (nodes including
those of subgraphs and functions), :func:`ORT_PROVIDERS`.

Shapes: fgs1 (batch, T, 6) float32, airs_nodes (batch, 283, 8) float32 -> mu, sigma (batch, 283).
T is fixed at the example's length; the batch axis is dynamic.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import torch
from onnx_ir import tape as ir_tape
import onnxscript.evaluator
from onnxscript import opset18 as op
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

import spectramind.ops  # noqa: F401  (registers torch.ops.spectramind.*)

__all__ = [
    "ORT_PROVIDERS",
    "check_unique_edges",
    "export_model",
    "export_onnx",
    "gat_attention_onnx",
    "onnx_node_count",
    "selective_scan_onnx",
]

INPUT_NAMES = ("fgs1", "airs_nodes")
OUTPUT_NAMES = ("mu", "sigma")
BATCH_AXIS = "batch"
MIN_OPSET = 18
# exp(delta * A) is clamped below here, as the CPU operator does for fp32 (see spectramind.ops).
LOG_DECAY_FLOOR = -60.0

_FLOAT = ir.DataType.FLOAT
_scan_ids = itertools.count()


# ---------------------------------------------------------------- selective scan


def _scan_body(uid: int) -> ir.Graph:
    """The Scan body: states (h, A), scan inputs (delta_t, x_t, B_t, C_t) -> states (h', A), scan output y_t.

    Shapes: h (B, d_inner, d_state); A (d_inner, d_state); delta_t, x_t (B, d_inner, 1);
    B_t (B, 1, d_state); C_t (B, d_state, 1); y_t (B, d_inner, 1).
    """

    def value(name: str) -> ir.Value:
        return ir.Value(name=f"ss{uid}_{name}", type=ir.TensorType(_FLOAT))

    h, a, d_t, x_t, b_t, c_t = (value(n) for n in ("h_in", "A_in", "delta_t", "x_t", "B_t", "C_t"))
    t = ir_tape.Tape()
    floor = t.op("Constant", [], {"value": ir.tensor(np.array(LOG_DECAY_FLOOR, dtype=np.float32))})
    decay = t.op("Exp", [t.op("Max", [t.op("Mul", [d_t, a]), floor])])  # (B, d_inner, d_state)
    h_new = t.op("Add", [t.op("Mul", [decay, h]), t.op("Mul", [x_t, b_t])])
    y_t = t.op("MatMul", [h_new, c_t])  # (B, d_inner, 1)
    a_out = t.op("Identity", [a])
    for v, name in ((floor, "floor"), (decay, "decay"), (h_new, "h_out"), (y_t, "y_t"), (a_out, "A_out")):
        v.name = f"ss{uid}_{name}"
    for node in t.nodes:
        for out in node.outputs:
            if out.name is None:
                out.name = f"ss{uid}_v{next(_scan_ids)}"
    return ir.Graph([h, a, d_t, x_t, b_t, c_t], [h_new, a_out, y_t], nodes=t.nodes, name=f"selective_scan_body_{uid}")


def _multi_output_op(op_type: str, inputs: list, attributes: dict, num_outputs: int) -> list:
    """Record one standard ONNX node with ``num_outputs`` outputs in the exporter's graph.

    The torch exporter's recorder gives a node with a variadic output (Scan, Loop) a single
    output; the scan needs its final states and its scan output, so the node is recorded here
    through the same recorder with an explicit output count.
    """
    recorder = onnxscript.evaluator.default()
    call = getattr(recorder, "_call_op", None)
    if call is None:
        raise RuntimeError(
            f"{op_type}: the ONNX translation must run inside torch.onnx.export(dynamo=True) "
            f"(current onnxscript evaluator: {type(recorder).__name__})"
        )
    signature = ir.schemas.OpSignature.from_op_schema(onnx.defs.get_schema(op_type, MIN_OPSET))
    (name,) = (p.name for p in signature.params if isinstance(p, ir.schemas.Parameter))
    return list(call(signature, {name: inputs}, attributes, num_outputs))


def selective_scan_onnx(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus: bool = False,
    reverse: bool = False,
):
    """ONNX translation of ``spectramind::selective_scan`` (registered in ``custom_translation_table``).

    Called by the exporter with ONNX values (None for an absent optional input) and Python
    constants for the flags. Computes in fp32 and returns u's dtype, as the CPU operator does.

    Shapes: u, delta, z (B, d_inner, L); A (d_inner, d_state); B, C (B, d_state, L);
    D, delta_bias (d_inner,) -> y (B, d_inner, L).
    """
    out_type = u.dtype
    u, delta, A, B, C = (op.Cast(v, to=_FLOAT) for v in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = op.Add(delta, op.Unsqueeze(op.Cast(delta_bias, to=_FLOAT), [-1]))
    if delta_softplus:
        delta = op.Softplus(delta)
    x = op.Mul(delta, u)
    batch_shape = op.Shape(u, start=0, end=1)
    state_shape = op.Concat(batch_shape, op.Shape(A), axis=0)  # (B, d_inner, d_state)
    h0 = op.Expand(op.Constant(value=ir.tensor(np.zeros((1, 1, 1), dtype=np.float32))), state_shape)
    uid = next(_scan_ids)
    direction = 1 if reverse else 0
    _, _, y = _multi_output_op(
        "Scan",
        [
            h0,
            A,
            op.Unsqueeze(delta, [2]),  # (B, d_inner, 1, L)
            op.Unsqueeze(x, [2]),  # (B, d_inner, 1, L)
            op.Unsqueeze(B, [1]),  # (B, 1, d_state, L)
            op.Unsqueeze(C, [2]),  # (B, d_state, 1, L)
        ],
        {
            "body": _scan_body(uid),
            "num_scan_inputs": 4,
            "scan_input_axes": [3, 3, 3, 3],
            "scan_input_directions": [direction] * 4,
            "scan_output_axes": [3],
            "scan_output_directions": [direction],
        },
        num_outputs=3,
    )
    y = op.Squeeze(y, [2])  # (B, d_inner, L)
    if D is not None:
        y = op.Add(y, op.Mul(u, op.Unsqueeze(op.Cast(D, to=_FLOAT), [-1])))
    if z is not None:
        zf = op.Cast(z, to=_FLOAT)
        y = op.Mul(y, op.Mul(zf, op.Sigmoid(zf)))
    return op.Cast(y, to=out_type)


# ---------------------------------------------------------------- GAT attention


def gat_attention_onnx(x, att_src, att_dst, edge_bias, edge_index, negative_slope: float = 0.2):
    """ONNX translation of ``spectramind::gat_attention``: dense masked softmax over the fixed graph.

    Requires unique (source, target) pairs in ``edge_index`` (checked by :func:`export_onnx`).

    Shapes: x (B, N, H, C); att_src, att_dst (H, C); edge_bias (E, H); edge_index (2, E) int64
    -> out (B, N, H, C), attention (B, E, H).
    """
    n = x.shape[1]
    if not isinstance(n, int):
        raise ValueError(f"gat_attention_onnx: the node count of x must be static, got shape {x.shape}")
    xh = op.Transpose(x, perm=[0, 2, 1, 3])  # (B, H, N, C)
    src = op.Gather(edge_index, op.Constant(value_int=0), axis=0)  # (E,)
    dst = op.Gather(edge_index, op.Constant(value_int=1), axis=0)
    slot = op.Add(op.Mul(dst, op.Constant(value_int=n)), src)  # (E,) into a row-major (N_target, N_source)
    flat_nn = op.Constant(value_ints=[n * n])
    ones = op.Expand(op.CastLike(op.Constant(value_float=1.0), x), op.Shape(slot))
    zeros_nn = op.Expand(op.CastLike(op.Constant(value_float=0.0), x), flat_nn)
    mask = op.ScatterElements(zeros_nn, slot, ones, axis=0)  # (N*N,): 1 at every edge's slot
    mask = op.Cast(op.Reshape(mask, op.Constant(value_ints=[n, n])), to=ir.DataType.BOOL)
    # Edge bias as a (H, N, N) matrix: scatter the (H, E) rows into (H, N*N) at the slots.
    bias_he = op.Transpose(edge_bias, perm=[1, 0])  # (H, E)
    slot_he = op.Expand(op.Unsqueeze(slot, [0]), op.Shape(bias_he))
    hnn = op.Concat(op.Shape(bias_he, start=0, end=1), flat_nn, axis=0)
    zeros_hnn = op.Expand(op.CastLike(op.Constant(value_float=0.0), x), hnn)
    bias_dense = op.Reshape(op.ScatterElements(zeros_hnn, slot_he, bias_he, axis=1), op.Constant(value_ints=[0, n, n]))
    a_src = op.MatMul(xh, op.Unsqueeze(att_src, [-1]))  # (B, H, N, 1): <x_j, att_src_h>
    a_dst = op.MatMul(xh, op.Unsqueeze(att_dst, [-1]))  # (B, H, N, 1): <x_i, att_dst_h>
    logits = op.Add(op.Add(a_dst, op.Transpose(a_src, perm=[0, 1, 3, 2])), bias_dense)  # (B, H, N_tgt, N_src)
    logits = op.LeakyRelu(logits, alpha=float(negative_slope))
    lowest = op.CastLike(op.Constant(value_float=float(np.finfo(np.float32).min)), x)
    attn = op.Softmax(op.Where(mask, logits, lowest), axis=-1)
    attn = op.Where(mask, attn, op.CastLike(op.Constant(value_float=0.0), x))  # targets without edges: 0
    out = op.Transpose(op.MatMul(attn, xh), perm=[0, 2, 1, 3])  # (B, N, H, C)
    flat = op.Reshape(attn, op.Constant(value_ints=[0, 0, n * n]))  # (B, H, N*N)
    attention = op.Transpose(op.Gather(flat, slot, axis=2), perm=[0, 2, 1])  # (B, E, H)
    return out, attention


TRANSLATIONS = {
    torch.ops.spectramind.selective_scan.default: selective_scan_onnx,
    torch.ops.spectramind.gat_attention.default: gat_attention_onnx,
}


# ---------------------------------------------------------------- export


class _GatEdgeRecorder(TorchDispatchMode):
    """Records the edge_index of every ``spectramind::gat_attention`` call of an eager forward."""

    def __init__(self) -> None:
        super().__init__()
        self.edge_indices: list[Tensor] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.spectramind.gat_attention.default:
            self.edge_indices.append(args[4].detach().cpu().clone())
        return func(*args, **(kwargs or {}))


def check_unique_edges(module: torch.nn.Module, example: tuple[Tensor, Tensor]) -> int:
    """Run ``module`` once and raise ValueError if a gat_attention call has a repeated (source, target) pair.

    The dense translation puts each edge in one matrix slot, so a repeated pair would merge.
    Returns the number of gat_attention calls checked.
    """
    recorder = _GatEdgeRecorder()
    with torch.no_grad(), recorder:
        module(*(t[:1] for t in example))
    for k, edge_index in enumerate(recorder.edge_indices):
        pairs = edge_index.t()
        unique = torch.unique(pairs, dim=0)
        if unique.shape[0] != pairs.shape[0]:
            _, counts = torch.unique(pairs, dim=0, return_counts=True)
            first = unique[counts > 1][0].tolist()
            raise ValueError(
                f"gat_attention call {k}: edge_index has {pairs.shape[0] - unique.shape[0]} repeated "
                f"(source, target) pairs (e.g. {tuple(first)}); the ONNX translation needs unique edges"
            )
    return len(recorder.edge_indices)


def export_onnx(module: torch.nn.Module, example: tuple[Tensor, Tensor], path: Path, opset: int = 18) -> None:
    """Export ``module`` (forward(fgs1, airs_nodes) -> (mu, sigma)) to one self-contained ONNX file.

    Inputs "fgs1", "airs_nodes", outputs "mu", "sigma", dynamic axis "batch" on all four; the
    custom operators are translated as in the module docstring; ``opset`` >= 18. The file is
    written to ``path`` (its directory must exist) with no external data.

    Shapes: example = (fgs1 (B, T, 6), airs_nodes (B, 283, 8)); T is fixed in the export.
    """
    path = Path(path)
    if opset < MIN_OPSET:
        raise ValueError(f"export_onnx: opset must be >= {MIN_OPSET}, got {opset}")
    if len(example) != len(INPUT_NAMES) or not all(isinstance(t, Tensor) for t in example):
        raise ValueError(f"export_onnx: example must be a tuple of {len(INPUT_NAMES)} tensors {INPUT_NAMES}")
    if example[0].shape[0] != example[1].shape[0]:
        raise ValueError(f"export_onnx: example batch sizes differ: {example[0].shape[0]} vs {example[1].shape[0]}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"export_onnx: directory {path.parent} does not exist")
    if module.training:
        raise ValueError("export_onnx: module is in training mode; call .eval() first")
    check_unique_edges(module, example)
    model = export_model(module, example, INPUT_NAMES, OUTPUT_NAMES, opset)
    tmp = path.with_name(path.name + ".tmp")
    try:
        onnx.save_model(model, tmp, save_as_external_data=False)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def export_model(
    module: torch.nn.Module,
    example: tuple[Tensor, ...],
    input_names: tuple[str, ...],
    output_names: tuple[str, ...],
    opset: int = MIN_OPSET,
) -> onnx.ModelProto:
    """The in-memory ONNX model of ``module`` with the custom operators translated; axis 0 of
    every input and output is the dynamic "batch" axis. No file is written and the edges are not
    checked (see :func:`export_onnx`).
    """
    if opset < MIN_OPSET:
        raise ValueError(f"export_model: opset must be >= {MIN_OPSET}, got {opset}")
    # torch.export specialises a dimension whose example size is 1: export from at least 2 rows.
    example = tuple(t.repeat(2, *([1] * (t.dim() - 1))) if t.shape[0] < 2 else t for t in example)
    batch = torch.export.Dim(BATCH_AXIS, min=1)
    # The model skips its data-reading input checks under capture (spectramind.model.capture);
    # check_unique_edges ran it eagerly on the example first, so the checks still applied.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*axis name: batch will not be used", category=UserWarning)
        program = torch.onnx.export(
            module,
            example,
            dynamo=True,
            custom_translation_table=TRANSLATIONS,
            opset_version=opset,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_shapes=tuple({0: batch} for _ in input_names),
            external_data=False,
            optimize=True,
            verbose=False,
        )
    if program is None:
        raise RuntimeError("export_model: torch.onnx.export returned no program")
    model = program.model_proto
    _name_batch_axis(model, (*input_names, *output_names))
    onnx.checker.check_model(model, full_check=False)
    _check_self_contained(model)
    return model


def _name_batch_axis(model: onnx.ModelProto, expected: tuple[str, ...]) -> None:
    """Give axis 0 of every graph input and output the name "batch" (the exporter names it after its symbol)."""
    ios = list(model.graph.input) + list(model.graph.output)
    names = tuple(v.name for v in ios)
    if names != expected:
        raise RuntimeError(f"export_onnx: the exported graph has inputs/outputs {names}, expected {expected}")
    for v in ios:
        dim = v.type.tensor_type.shape.dim[0]
        if dim.HasField("dim_value"):
            raise RuntimeError(f"export_onnx: {v.name} has a static batch axis ({dim.dim_value}); expected dynamic")
        dim.dim_param = BATCH_AXIS


def _check_self_contained(model: onnx.ModelProto) -> None:
    external = [t.name for t in _all_initializers(model) if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise RuntimeError(f"export_onnx: {len(external)} tensors would be external data (e.g. {external[0]})")
    if model.ByteSize() >= 2**31:
        size = model.ByteSize()
        raise RuntimeError(f"export_onnx: the model is {size} bytes, over the 2 GiB limit of a single ONNX file")


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _graph_nodes(nodes) -> Iterator[onnx.NodeProto]:
    for node in nodes:
        yield node
        for g in _subgraphs(node):
            yield from _graph_nodes(g.node)


def _all_initializers(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    yield from model.graph.initializer
    for node in _graph_nodes(model.graph.node):
        for g in _subgraphs(node):
            yield from g.initializer


def onnx_node_count(path: Path | str) -> int:
    """All nodes of an ONNX file: the main graph, Loop/Scan/If subgraphs (recursively) and local functions."""
    model = onnx.load(str(path), load_external_data=False)
    count = sum(1 for _ in _graph_nodes(model.graph.node))
    count += sum(sum(1 for _ in _graph_nodes(f.node)) for f in model.functions)
    return count


def ORT_PROVIDERS(device: str) -> list[str]:  # noqa: N802 (name fixed by the export interface)
    """onnxruntime execution providers for ``device`` ("cpu", "cuda", "cuda:N").

    On cuda, "CUDAExecutionProvider" comes first when this onnxruntime build has it; the CPU
    provider is always last (the fallback for nodes the CUDA provider lacks, or the only one).
    """
    import onnxruntime as ort

    kind = str(device).split(":", 1)[0]
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"ORT_PROVIDERS: device must be 'cpu' or 'cuda[:N]', got {device!r}")
    if kind == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]
