"""spectramind.ops: the CPU implementations of the custom ops against their per-step / edge-list oracles."""

from __future__ import annotations

import itertools

import pytest
import torch

from spectramind import ops

# Two shared cores: one thread keeps these tests from fighting the rest of the suite.
torch.set_num_threads(1)

SCAN_TENSORS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def scan_inputs(
    batch: int, d_inner: int, d_state: int, length: int, *, dtype: torch.dtype = torch.float32, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random inputs with Mamba-like ranges: A = -exp(.) spread over a decade, delta of either sign before softplus."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=dtype)

    return {
        "u": randn(batch, d_inner, length),
        "delta": 0.5 * randn(batch, d_inner, length),
        "A": -torch.exp(randn(d_inner, d_state)),
        "B": randn(batch, d_state, length),
        "C": randn(batch, d_state, length),
        "D": randn(d_inner),
        "z": randn(batch, d_inner, length),
        "delta_bias": 0.5 * randn(d_inner),
    }


def scan_args(t: dict[str, torch.Tensor], optional: bool) -> dict[str, torch.Tensor | bool]:
    """Keyword arguments for a scan; without the optional inputs delta must already be positive."""
    if optional:
        return {**t, "delta_softplus": True}
    return {"u": t["u"], "delta": t["delta"].abs(), "A": t["A"], "B": t["B"], "C": t["C"]}


def grads_of(fn, kwargs: dict, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    leaves = {
        k: v.detach().clone().requires_grad_(True) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()
    }
    y = fn(**leaves)
    tensors = [k for k, v in leaves.items() if isinstance(v, torch.Tensor)]
    got = torch.autograd.grad(y, [leaves[k] for k in tensors], weight)
    return dict(zip(tensors, got))


# Shapes that are awkward on purpose: L = 1, shorter than a chunk, not a multiple of one, and
# longer than the default chunk length; d_inner prime; d_state 4 and 16; batch 1 and 3.
SHAPES = [(1, 5, 4, 1), (3, 7, 16, 7), (1, 13, 4, 33), (3, 5, 16, 300)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}-d{}-n{}-L{}".format(*s))
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("optional", [False, True], ids=["plain", "D-z-bias-softplus"])
def test_scan_op_matches_reference(shape, reverse, optional):
    kwargs = scan_args(scan_inputs(*shape), optional)
    want = ops.selective_scan_ref(**kwargs, reverse=reverse)
    got = ops.selective_scan(**kwargs, reverse=reverse)
    assert got.shape == want.shape and got.dtype == want.dtype and got.is_contiguous()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# (channels per group, chunks advanced together, chunk length): several channel groups with a
# padded last one, several time blocks with a padded last one, chunk length 1, one long chunk.
CHUNKINGS = [(2, 3, 5), (3, 2, 7), (13, 1, 1), (1, 64, 16), (4, 4, 300)]


@pytest.mark.parametrize("chunking", CHUNKINGS, ids=str)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_scan_chunking_does_not_change_the_result(chunking, reverse):
    kwargs = scan_args(scan_inputs(2, 13, 4, 67, seed=1), optional=True)
    want = ops.selective_scan_ref(**kwargs, reverse=reverse)
    got = ops.selective_scan_chunked(**kwargs, reverse=reverse, chunking=chunking)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "shape", [(1, 5, 4, 1), (3, 7, 16, 33), (1, 5, 4, 300)], ids=lambda s: "b{}-d{}-n{}-L{}".format(*s)
)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("optional", [False, True], ids=["plain", "D-z-bias-softplus"])
def test_scan_op_gradients_match_reference(shape, reverse, optional):
    kwargs = {**scan_args(scan_inputs(*shape, seed=2), optional), "reverse": reverse}
    weight = torch.randn(shape[0], shape[1], shape[3], generator=torch.Generator().manual_seed(3))
    want = grads_of(ops.selective_scan_ref, kwargs, weight)
    got = grads_of(ops.selective_scan, kwargs, weight)
    assert set(got) == set(want) == {k for k in SCAN_TENSORS if k in kwargs}
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-4, rtol=1e-4, msg=lambda m, n=name: f"d/d{n}: {m}")


@pytest.fixture
def checkpointed_blocks(monkeypatch) -> list[int]:
    """Checkpoint every block whatever the scan's size; the list counts checkpointed blocks."""
    calls: list[int] = []
    real = ops.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ops, "_CHECKPOINT_ELEMENTS", 0)
    monkeypatch.setattr(ops, "checkpoint", counting)
    return calls


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_scan_gradients_through_checkpointed_blocks(reverse, checkpointed_blocks):
    # 3 channel groups x 6 time blocks, padded in both.
    kwargs = {**scan_args(scan_inputs(2, 7, 4, 41, seed=4), optional=True), "reverse": reverse}
    weight = torch.randn(2, 7, 41, generator=torch.Generator().manual_seed(5))
    want = grads_of(ops.selective_scan_ref, kwargs, weight)
    got = grads_of(lambda **kw: ops.selective_scan_chunked(**kw, chunking=(3, 2, 4)), kwargs, weight)
    assert len(checkpointed_blocks) == 3 * 6
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-4, rtol=1e-4, msg=lambda m, n=name: f"d/d{n}: {m}")


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_scan_gradcheck_double(reverse):
    t = scan_inputs(2, 3, 2, 5, dtype=torch.float64, seed=6)
    inputs = tuple(t[k].requires_grad_(True) for k in SCAN_TENSORS)
    assert torch.autograd.gradcheck(lambda *x: ops.selective_scan(*x, True, reverse), inputs)


def test_scan_gradcheck_double_checkpointed_blocks(checkpointed_blocks):
    t = scan_inputs(1, 3, 2, 5, dtype=torch.float64, seed=7)
    inputs = tuple(t[k].requires_grad_(True) for k in SCAN_TENSORS)
    assert torch.autograd.gradcheck(lambda *x: ops.selective_scan_chunked(*x, True, True, chunking=(2, 1, 2)), inputs)
    assert checkpointed_blocks


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_scan_strong_decay_stays_finite_and_exact(reverse):
    # delta * A from -1e4 per step: every decay underflows to 0 in the reference, so each state is
    # just its own step's input; chunk carries reach exp(-1e5) and must come out 0, never inf*0.
    t = scan_inputs(2, 5, 8, 70, seed=8)
    t["delta"] = 1e2 + 1e2 * torch.rand(2, 5, 70, generator=torch.Generator().manual_seed(9))
    t["A"] = -100.0 * torch.ones(5, 8)
    kwargs = {**scan_args(t, optional=False), "reverse": reverse}
    want = ops.selective_scan_ref(**kwargs)
    got = ops.selective_scan(**kwargs)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    memoryless = (t["C"] * t["B"]).sum(1, keepdim=True) * kwargs["delta"] * t["u"]
    torch.testing.assert_close(got, memoryless, atol=1e-3, rtol=1e-5)
    grads = grads_of(ops.selective_scan, kwargs, torch.ones_like(got))
    assert all(torch.isfinite(g).all() for g in grads.values())


def test_scan_mixed_strong_and_weak_decay_matches_reference():
    # Per (channel, state) decays from exp(-0.001) to exp(-500) in one call: the case that breaks a
    # log-space factorisation exp(L_t) * exp(-L_s) of a whole chunk.
    t = scan_inputs(2, 6, 16, 150, seed=10)
    t["A"] = -torch.logspace(-3, 2.7, 16).repeat(6, 1)
    kwargs = {**scan_args(t, optional=True), "reverse": False}
    torch.testing.assert_close(ops.selective_scan(**kwargs), ops.selective_scan_ref(**kwargs), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_scan_keeps_input_dtype_and_computes_in_fp32_or_wider(dtype):
    kwargs = scan_args(scan_inputs(2, 5, 4, 33, dtype=dtype, seed=11), optional=True)
    got = ops.selective_scan(**kwargs)
    want = ops.selective_scan_ref(**kwargs)
    assert got.dtype == dtype
    tol = {"atol": 1e-12, "rtol": 1e-12} if dtype == torch.float64 else {"atol": 1e-2, "rtol": 1e-2}
    torch.testing.assert_close(got, want, **tol)


def test_scan_accepts_non_contiguous_inputs():
    t = scan_inputs(2, 5, 4, 33, seed=12)
    # u and delta as Mamba builds them: channel-last projections viewed as (batch, d_inner, L).
    u_cl = t["u"].transpose(1, 2).contiguous().transpose(1, 2)
    kwargs = {**scan_args(t, optional=True), "u": u_cl}
    got = ops.selective_scan(**kwargs)
    assert got.is_contiguous()
    torch.testing.assert_close(got, ops.selective_scan_ref(**kwargs), atol=1e-5, rtol=1e-5)


def test_scan_rejects_mismatched_shapes_by_name():
    kwargs = scan_args(scan_inputs(2, 5, 4, 9), optional=True)
    kwargs["B"] = kwargs["B"][..., :8]
    with pytest.raises(ValueError, match="B must have shape"):
        ops.selective_scan(**kwargs)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:DeprecationWarning")
def test_scan_jit_trace_records_the_op():
    t = scan_inputs(1, 3, 4, 6, seed=13)

    def f(u, delta, A, B, C, D, z, delta_bias):
        return ops.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True, reverse=True)

    args = tuple(t[k] for k in SCAN_TENSORS)
    traced = torch.jit.trace(f, args)
    assert "spectramind::selective_scan" in str(traced.graph)
    # Different L than at trace time: the op is opaque, nothing was unrolled over time.
    other = tuple(scan_inputs(1, 3, 4, 11, seed=14)[k] for k in SCAN_TENSORS)
    torch.testing.assert_close(traced(*other), f(*other))


def test_scan_opcheck():
    t = scan_inputs(1, 2, 2, 5, seed=15)
    args = (*(t[k].requires_grad_(True) for k in SCAN_TENSORS), True, True)
    result = torch.library.opcheck(ops._selective_scan_op, args)
    assert set(result.values()) == {"SUCCESS"}


# ---------------------------------------------------------------- GAT attention

N_NODES, HEADS, CHANNELS = 12, 2, 3
ISOLATED, LEAF, HUB = 3, 5, 0


def gat_graph() -> torch.Tensor:
    """A chain plus random edges where node 3 has no incoming edge, node 5 exactly one, node 0 from everyone."""
    g = torch.Generator().manual_seed(20)
    pairs = {(j, j + 1) for j in range(N_NODES - 1)} | {(j + 1, j) for j in range(N_NODES - 1)}
    pairs |= {tuple(p) for p in torch.randint(0, N_NODES, (25, 2), generator=g).tolist()}
    pairs |= {(j, HUB) for j in range(N_NODES)}  # self-loop included
    pairs = {(j, i) for j, i in pairs if i not in (ISOLATED, LEAF)} | {(4, LEAF)}
    return torch.tensor(sorted(pairs), dtype=torch.int64).t().contiguous()


def gat_inputs(edge_index: torch.Tensor, batch: int = 3, seed: int = 21) -> dict[str, torch.Tensor | float]:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(batch, N_NODES, HEADS, CHANNELS, generator=g),
        "att_src": torch.randn(HEADS, CHANNELS, generator=g),
        "att_dst": torch.randn(HEADS, CHANNELS, generator=g),
        "edge_bias": torch.randn(edge_index.shape[1], HEADS, generator=g),
        "edge_index": edge_index,
        "negative_slope": 0.2,
    }


def test_gat_graph_has_the_awkward_nodes():
    src, dst = gat_graph()
    counts = torch.bincount(dst, minlength=N_NODES)
    assert counts[ISOLATED] == 0 and counts[LEAF] == 1 and counts[HUB] == N_NODES


def test_gat_op_matches_reference():
    kwargs = gat_inputs(gat_graph())
    out, attn = ops.gat_attention(**kwargs)
    want_out, want_attn = ops.gat_attention_ref(**kwargs)
    torch.testing.assert_close(out, want_out, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(attn, want_attn, atol=1e-6, rtol=1e-5)


def test_gat_attention_normalises_over_incoming_edges():
    edge_index = gat_graph()
    kwargs = gat_inputs(edge_index)
    out, attn = ops.gat_attention(**kwargs)
    dst = edge_index[1]
    sums = torch.zeros(attn.shape[0], N_NODES, HEADS).index_add_(1, dst, attn)
    has_edges = torch.bincount(dst, minlength=N_NODES) > 0
    torch.testing.assert_close(sums[:, has_edges], torch.ones_like(sums[:, has_edges]))
    leaf_edge = (dst == LEAF).nonzero().item()
    torch.testing.assert_close(attn[:, leaf_edge], torch.ones(attn.shape[0], HEADS))
    torch.testing.assert_close(out[:, LEAF], kwargs["x"][:, 4])
    assert torch.isfinite(out).all() and torch.isfinite(attn).all()
    assert (out[:, ISOLATED] == 0).all()


def test_gat_op_gradients_match_reference():
    kwargs = gat_inputs(gat_graph(), seed=22)
    g = torch.Generator().manual_seed(23)
    w_out = torch.randn(3, N_NODES, HEADS, CHANNELS, generator=g)
    w_attn = torch.randn(3, kwargs["edge_index"].shape[1], HEADS, generator=g)
    names = ("x", "att_src", "att_dst", "edge_bias")

    def grads(fn):
        leaves = {k: kwargs[k].clone().requires_grad_(True) for k in names}
        out, attn = fn(**leaves, edge_index=kwargs["edge_index"], negative_slope=0.2)
        return torch.autograd.grad((out * w_out).sum() + (attn * w_attn).sum(), list(leaves.values()))

    for name, got, want in zip(names, grads(ops.gat_attention), grads(ops.gat_attention_ref)):
        assert torch.isfinite(got).all(), name
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"d/d{n}: {m}")


def test_gat_gradcheck_double():
    kwargs = gat_inputs(gat_graph(), batch=2, seed=24)
    inputs = tuple(kwargs[k].double().requires_grad_(True) for k in ("x", "att_src", "att_dst", "edge_bias"))
    assert torch.autograd.gradcheck(lambda *t: ops.gat_attention(*t, kwargs["edge_index"], 0.2), inputs)


def test_gat_repeated_edges_count_like_the_edge_list():
    edge_index = torch.tensor([[0, 0, 1, 2], [1, 1, 2, 0]])
    kwargs = gat_inputs(edge_index)
    kwargs["x"] = kwargs["x"][:, :3]
    kwargs.pop("edge_index")
    got = ops.gat_attention(**kwargs, edge_index=edge_index)
    want = ops.gat_attention_ref(**kwargs, edge_index=edge_index)
    torch.testing.assert_close(got, want)


def test_gat_rejects_bad_edge_index():
    kwargs = gat_inputs(gat_graph())
    kwargs["edge_index"] = kwargs["edge_index"].clone()
    kwargs["edge_index"][0, 0] = N_NODES
    with pytest.raises(ValueError, match="outside"):
        ops.gat_attention(**kwargs)
    kwargs["edge_index"] = kwargs["edge_index"].int()
    with pytest.raises(ValueError, match="int64"):
        ops.gat_attention(**kwargs)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:DeprecationWarning")
def test_gat_jit_trace_records_the_op():
    kwargs = gat_inputs(gat_graph())
    names = ("x", "att_src", "att_dst", "edge_bias", "edge_index")

    def f(x, att_src, att_dst, edge_bias, edge_index):
        return ops.gat_attention(x, att_src, att_dst, edge_bias, edge_index)

    traced = torch.jit.trace(f, tuple(kwargs[k] for k in names))
    assert "spectramind::gat_attention" in str(traced.graph)
    other = gat_inputs(gat_graph(), batch=5, seed=25)
    for got, want in zip(traced(*(other[k] for k in names)), f(*(other[k] for k in names))):
        torch.testing.assert_close(got, want)


def test_gat_opcheck():
    kwargs = gat_inputs(gat_graph(), batch=2, seed=26)
    tensors = (kwargs[k].requires_grad_(True) for k in ("x", "att_src", "att_dst", "edge_bias"))
    args = (*tensors, kwargs["edge_index"], 0.2)
    result = torch.library.opcheck(ops._gat_attention_op, args)
    assert set(result.values()) == {"SUCCESS"}


def test_ops_never_call_the_slow_references(monkeypatch):
    # The op bodies and their backward must run the fast implementations.
    def boom(*args, **kwargs):
        raise AssertionError("reference implementation called")

    monkeypatch.setattr(ops, "selective_scan_ref", boom)
    monkeypatch.setattr(ops, "gat_attention_ref", boom)
    t = {k: v.requires_grad_(True) for k, v in scan_inputs(1, 3, 2, 9, seed=27).items()}
    ops.selective_scan(**t, delta_softplus=True).sum().backward()
    g = gat_inputs(gat_graph(), seed=28)
    g["x"].requires_grad_(True)
    out, attn = ops.gat_attention(**g)
    (out.sum() + attn.sum()).backward()
    assert all(v.grad is not None for v in t.values()) and g["x"].grad is not None


def test_scan_reverse_is_forward_on_flipped_time():
    # Independent of the oracle: scanning backwards equals scanning the flipped sequence forwards.
    t = scan_inputs(2, 5, 4, 45, seed=29)
    kwargs = scan_args(t, optional=True)
    flipped = {k: (v.flip(-1) if k in ("u", "delta", "B", "C", "z") else v) for k, v in kwargs.items()}
    got = ops.selective_scan(**kwargs, reverse=True)
    torch.testing.assert_close(got, ops.selective_scan(**flipped).flip(-1), atol=1e-5, rtol=1e-5)


def test_chunk_plans_cover_the_sequence():
    for batch, d_inner, d_state, length in itertools.product((1, 8), (5, 512), (4, 32), (1, 7, 283, 4096)):
        width, chunks, chunk_len = ops._scan_plan(batch, d_inner, d_state, length)
        assert 1 <= width <= d_inner and chunks >= 1 and 1 <= chunk_len <= 16
        assert batch * d_state * width * chunks <= max(ops._OP_ELEMENTS, batch * d_state * ops._MIN_CHUNKS)


def test_importing_the_package_registers_both_ops():
    import subprocess
    import sys

    code = (
        "import torch, spectramind; "
        "print(torch.ops.spectramind.selective_scan.default.name(), torch.ops.spectramind.gat_attention.default.name())"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "spectramind::selective_scan" in done.stdout and "spectramind::gat_attention" in done.stdout


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 4, 1), (1, 5, 2, 7), (3, 4, 16, 33)])
def test_scan_analytic_backward_matches_autograd_of_the_reference(shape, reverse):
    b, d, n, L = shape
    g = torch.Generator().manual_seed(b * 100 + L)
    f64 = dict(dtype=torch.float64)
    ins = [
        torch.randn(b, d, L, generator=g, **f64),
        torch.randn(b, d, L, generator=g, **f64),
        -torch.rand(d, n, generator=g, **f64) * 3 - 0.1,
        torch.randn(b, n, L, generator=g, **f64),
        torch.randn(b, n, L, generator=g, **f64),
        torch.randn(d, generator=g, **f64),
        torch.randn(b, d, L, generator=g, **f64),
        torch.randn(d, generator=g, **f64),
    ]
    leaves = [t.clone().requires_grad_(True) for t in ins]
    y = ops.selective_scan_ref(*leaves, True, reverse)
    gy = torch.randn(y.shape, generator=g, **f64)
    want = torch.autograd.grad(y, leaves, gy)
    got = ops.selective_scan_backward(gy, *ins, True, reverse)
    for name, w, h in zip(("u", "delta", "A", "B", "C", "D", "z", "delta_bias"), want, got):
        torch.testing.assert_close(h, w, rtol=1e-9, atol=1e-10, msg=lambda m: f"{name}: {m}")
    # Absent optional inputs give None gradients, present ones keep their dtype.
    got = ops.selective_scan_backward(gy.float(), *(t.float() for t in ins[:5]))
    assert got[5:] == (None, None, None) and all(t.dtype == torch.float32 for t in got[:5])
