"""ONNX export (export/onnx_export.py): operator translations vs the CPU operators, a COREL-calibrated
small model round trip through onnxruntime at two batch sizes from one file, the single-file and
dynamic-batch contract, and the base preset's node bound (the time loop is a Scan, never unrolled).

The exports take most of the time (~20 s small, ~30 s base on one core); each model is exported once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from torch import Tensor, nn

from export.onnx_export import ORT_PROVIDERS, export_model, export_onnx, onnx_node_count
from spectramind.config import compose
from spectramind.model.calibration import COREL, CalibratedV50, Calibrator, TemperatureScaling, graph_for
from spectramind.model.v50 import SpectraMindV50, model_config_from
from spectramind.ops import gat_attention, selective_scan

T_STEPS = 16
RTOL = 1e-5


class MuSigma(nn.Module):
    """forward(fgs1, airs_nodes) -> (mu, sigma) of a CalibratedV50, the module the export stage hands over."""

    def __init__(self, model: CalibratedV50) -> None:
        super().__init__()
        self.model = model

    def forward(self, fgs1: Tensor, airs_nodes: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model(fgs1, airs_nodes)
        return out.mu, out.sigma


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=ORT_PROVIDERS("cpu"))


def _inputs(batch: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    fgs1 = torch.randn(batch, T_STEPS, 6, generator=g)
    airs = torch.randn(batch, 283, 8, generator=g)
    airs[..., 1] = -2.0 + 0.3 * airs[..., 1]  # log10(sigma / 100 ppm): sigmas near 1 ppm, as real bins
    return fgs1, airs


def _assert_close(got: np.ndarray, want: Tensor, name: str) -> float:
    want = want.detach().numpy()
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    scale = float(np.abs(want).max())
    err = float(np.abs(got - want).max()) / scale
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * scale, err_msg=name)
    return err


def _small_corel_model() -> MuSigma:
    torch.manual_seed(0)
    cfg = model_config_from(compose(["model=small"]))
    temperature = TemperatureScaling()
    corel = COREL({"hidden_dim": 16, "n_layers": 2, "heads": 2, "edge_features": True}, graph_for(cfg))
    with torch.no_grad():
        temperature.log_t_global.fill_(0.3)
        temperature.log_t_bin.normal_(0.0, 0.1)
        for p in corel.parameters():  # COREL starts as the identity (zero output layer): move it
            p.add_(0.3 * torch.randn_like(p))
    return MuSigma(CalibratedV50(SpectraMindV50(cfg), Calibrator(temperature, corel))).eval()


@pytest.fixture(scope="module")
def small_export(tmp_path_factory) -> tuple[MuSigma, Path]:
    module = _small_corel_model()
    path = tmp_path_factory.mktemp("onnx_small") / "model.onnx"
    export_onnx(module, _inputs(1), path)  # batch 1 example: the batch axis must still come out dynamic
    return module, path


def test_small_corel_round_trip(small_export) -> None:
    module, path = small_export
    session = _session(path)
    assert [i.name for i in session.get_inputs()] == ["fgs1", "airs_nodes"]
    assert [o.name for o in session.get_outputs()] == ["mu", "sigma"]
    for batch in (1, 3):
        fgs1, airs = _inputs(batch, seed=batch)
        mu, sigma = session.run(None, {"fgs1": fgs1.numpy(), "airs_nodes": airs.numpy()})
        with torch.no_grad():
            want_mu, want_sigma = module(fgs1, airs)
            raw_sigma = module.model.model(fgs1, airs).sigma
        _assert_close(mu, want_mu, f"mu at batch {batch}")
        _assert_close(sigma, want_sigma, f"sigma at batch {batch}")
        # The calibration is in the graph: COREL and temperature moved sigma well beyond the tolerance.
        assert np.abs(sigma / raw_sigma.numpy() - 1).max() > 0.1


def test_small_file_contract(small_export) -> None:
    module, path = small_export
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"], "external data or leftovers written"
    model = onnx.load(str(path), load_external_data=False)
    assert all(t.data_location != TensorProto.EXTERNAL for t in model.graph.initializer)
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 18
    for v in list(model.graph.input) + list(model.graph.output):
        assert v.type.tensor_type.shape.dim[0].dim_param == "batch", v.name
    ops = [n for n in model.graph.node]
    assert not [n for n in ops if n.domain not in ("", "ai.onnx")], "a custom operator was left untranslated"
    n_scans = sum(1 for m in module.modules() if type(m).__name__ == "_SelectiveSSM")
    assert sum(n.op_type == "Scan" for n in ops) == n_scans > 0
    assert sum(n.op_type == "Softmax" for n in ops) >= 2  # AIRS GNN and COREL GAT layers
    assert onnx_node_count(path) < 2000


def test_base_preset_node_bound(tmp_path) -> None:
    torch.manual_seed(0)
    module = MuSigma(CalibratedV50(SpectraMindV50(model_config_from(compose(["model=base"]))))).eval()
    path = tmp_path / "base.onnx"
    export_onnx(module, _inputs(2), path)
    count = onnx_node_count(path)
    assert 0 < count < 2000, f"base preset exports to {count} nodes"
    fgs1, airs = _inputs(1, seed=5)
    mu, sigma = _session(path).run(None, {"fgs1": fgs1.numpy(), "airs_nodes": airs.numpy()})
    with torch.no_grad():
        want_mu, want_sigma = module(fgs1, airs)
    _assert_close(mu, want_mu, "base mu")
    _assert_close(sigma, want_sigma, "base sigma")


# ---------------------------------------------------------------- operator translations

D_INNER, D_STATE, N_NODES, HEADS, CH = 5, 3, 7, 3, 2
# Node 6 has no incoming edge (its output must be 0); 0 -> 0 is a self loop; 5 -> 6's reverse is absent.
EDGES = [(1, 0), (2, 0), (0, 0), (0, 1), (3, 1), (1, 2), (4, 3), (2, 3), (6, 4), (5, 5), (6, 5), (4, 5)]


class OpsModule(nn.Module):
    """Both custom operators with awkward sizes; every scan flavour (direction x optional inputs).

    Shapes: seq (B, 3 * D_INNER + 2 * D_STATE, L) = [u, delta, z, B, C]; x (B, N_NODES, HEADS, CH).
    """

    def __init__(self, edges: list[tuple[int, int]] = EDGES) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.A = nn.Parameter(-torch.exp(torch.randn(D_INNER, D_STATE, generator=g)))
        self.D = nn.Parameter(torch.randn(D_INNER, generator=g))
        self.delta_bias = nn.Parameter(torch.randn(D_INNER, generator=g))
        self.att_src = nn.Parameter(torch.randn(HEADS, CH, generator=g))
        self.att_dst = nn.Parameter(torch.randn(HEADS, CH, generator=g))
        self.edge_bias = nn.Parameter(torch.randn(len(edges), HEADS, generator=g))
        self.register_buffer("edge_index", torch.tensor(edges, dtype=torch.long).t().contiguous())

    def forward(self, seq: Tensor, x: Tensor) -> tuple[Tensor, ...]:
        u, delta, z, b, c = seq.split([D_INNER, D_INNER, D_INNER, D_STATE, D_STATE], dim=1)
        pos = F.softplus(delta)  # without the op's softplus the step sizes must already be positive
        full = dict(D=self.D, z=z, delta_bias=self.delta_bias, delta_softplus=True)
        ys = [
            selective_scan(u, delta, self.A, b, c, **full, reverse=False),
            selective_scan(u, delta, self.A, b, c, **full, reverse=True),
            selective_scan(u, pos, self.A, b, c, reverse=False),
            selective_scan(u, pos, self.A, b, c, reverse=True),
        ]
        out, attn = gat_attention(x, self.att_src, self.att_dst, self.edge_bias, self.edge_index, 0.15)
        return (*ys, out, attn)


OPS_OUTPUTS = ("y_fwd", "y_rev", "y_fwd_plain", "y_rev_plain", "gat_out", "gat_attention")


def _ops_inputs(batch: int, length: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    seq = torch.randn(batch, 3 * D_INNER + 2 * D_STATE, length, generator=g)
    return seq, torch.randn(batch, N_NODES, HEADS, CH, generator=g)


def test_op_translations_match_cpu_ops(tmp_path) -> None:
    module = OpsModule().eval()
    counts = {}
    for length in (7, 23):
        path = tmp_path / f"ops_{length}.onnx"
        onnx.save_model(export_model(module, _ops_inputs(2, length, 0), ("seq", "x"), OPS_OUTPUTS), path)
        counts[length] = onnx_node_count(path)
        seq, x = _ops_inputs(3, length, seed=length)  # another batch size than the export's
        got = _session(path).run(None, {"seq": seq.numpy(), "x": x.numpy()})
        with torch.no_grad():
            want = module(seq, x)
        for name, g, w in zip(OPS_OUTPUTS, got, want):
            _assert_close(g, w, f"{name} at L={length}")
        assert np.all(got[4][:, 6] == 0), "a node without incoming edges must get zeros"
        model = onnx.load(str(path))
        scans = [n for n in model.graph.node if n.op_type == "Scan"]
        assert len(scans) == 4
        directions = sorted(tuple(a.ints) for n in scans for a in n.attribute if a.name == "scan_input_directions")
        assert directions == [(0,) * 4, (0,) * 4, (1,) * 4, (1,) * 4]
    assert counts[7] == counts[23], f"node count depends on the sequence length: {counts}"


def test_repeated_edges_are_refused(tmp_path) -> None:
    module = OpsModule(EDGES + [(2, 0)]).eval()
    path = tmp_path / "dup.onnx"
    with pytest.raises(ValueError, match=r"repeated \(source, target\) pairs \(e\.g\. \(2, 0\)\)"):
        export_onnx(module, _ops_inputs(1, 5, 0), path)
    assert not path.exists()


def test_export_onnx_argument_errors(tmp_path) -> None:
    module = OpsModule()
    with pytest.raises(ValueError, match="training mode"):
        export_onnx(module.train(), _ops_inputs(1, 5, 0), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="opset must be >= 18"):
        export_onnx(module.eval(), _ops_inputs(1, 5, 0), tmp_path / "m.onnx", opset=17)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_onnx(module.eval(), _ops_inputs(1, 5, 0), tmp_path / "missing" / "m.onnx")


# ---------------------------------------------------------------- helpers


def test_onnx_node_count_includes_subgraphs_and_functions(tmp_path) -> None:
    f = TensorProto.FLOAT
    body = helper.make_graph(
        [helper.make_node("Add", ["s", "x"], ["s2"]), helper.make_node("Identity", ["s2"], ["y"])],
        "body",
        [helper.make_tensor_value_info(n, f, [2]) for n in ("s", "x")],
        [helper.make_tensor_value_info(n, f, [2]) for n in ("s2", "y")],
    )
    scan = helper.make_node("Scan", ["s0", "xs"], ["s_end", "ys"], body=body, num_scan_inputs=1)
    call = helper.make_node("Twice", ["s_end"], ["out"], domain="local")
    fn = helper.make_function(
        "local", "Twice", ["a"], ["b"],
        [helper.make_node("Add", ["a", "a"], ["t"]), helper.make_node("Neg", ["t"], ["b"])],
        [helper.make_opsetid("", 18)],
    )  # fmt: skip
    graph = helper.make_graph(
        [scan, call],
        "g",
        [helper.make_tensor_value_info("s0", f, [2]), helper.make_tensor_value_info("xs", f, [4, 2])],
        [helper.make_tensor_value_info("out", f, [2]), helper.make_tensor_value_info("ys", f, [4, 2])],
    )
    model = helper.make_model(
        graph, functions=[fn], opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("local", 1)]
    )
    path = tmp_path / "count.onnx"
    onnx.save_model(model, path)
    assert onnx_node_count(path) == 2 + 2 + 2  # main graph, Scan body, function body


def test_ort_providers() -> None:
    assert ORT_PROVIDERS("cpu") == ["CPUExecutionProvider"]
    cuda = ORT_PROVIDERS("cuda:0")
    assert cuda[-1] == "CPUExecutionProvider"
    assert (cuda[0] == "CUDAExecutionProvider") == ("CUDAExecutionProvider" in ort.get_available_providers())
    with pytest.raises(ValueError, match="'tpu'"):
        ORT_PROVIDERS("tpu")
