"""SpectraMindV50 end to end: presets, tracing with the custom ops, checkpoints."""

from __future__ import annotations

import pytest
import torch

from spectramind.config import compose
from spectramind.model.v50 import SpectraMindV50, V50Output, model_config_from

PRESETS = ("small", "medium", "base", "large")


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)
    torch.manual_seed(0)


def build(*overrides: str) -> SpectraMindV50:
    return SpectraMindV50(model_config_from(compose(list(overrides))))


def inputs(batch: int = 2, steps: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch, steps, 6), torch.randn(batch, 283, 8)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_runs_forward_and_backward(preset):
    model = build(f"model={preset}")
    out = model(*inputs())
    assert isinstance(out, V50Output)
    assert out.mu.shape == out.sigma.shape == (2, 283)
    assert torch.isfinite(out.mu).all() and (out.sigma > 0).all()
    (out.mu.square().mean() + out.sigma.log().mean()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_parameter_counts_follow_the_presets():
    counts = {p: build(f"model={p}").parameter_count() for p in PRESETS}
    assert counts["small"] < counts["medium"] < counts["base"] < counts["large"]
    # Golden number for the small preset: a change of architecture must show up here on purpose.
    assert counts["small"] == 1_107_850


def test_trace_matches_eager_and_names_both_ops():
    model = build("model=small").eval()
    traced = torch.jit.trace(model, inputs(2, 16), check_trace=False)
    graph = str(traced.inlined_graph)
    assert "spectramind::selective_scan" in graph
    assert "spectramind::gat_attention" in graph
    x = inputs(3, 16)
    with torch.no_grad():
        eager, again = model(*x), traced(*x)
    torch.testing.assert_close(again[0], eager.mu, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(again[1], eager.sigma, rtol=1e-5, atol=1e-6)


def test_outputs_keep_one_type_across_options():
    model = build("model=small", "model.fusion.kind=cross_attend", "model.encoders.fgs1_mamba.export_step_latents=true")
    out = model(*inputs(2, 12))
    assert out.fusion_attention.shape == (2, 283, 12)
    assert out.fgs1_latents.shape == (2, 12, 128)
    plain = build("model=small", "model.encoders.airs_gnn.backend=rgcn")(*inputs(2, 12))
    assert plain.gat_attention.numel() == 0 and plain.fgs1_latents.shape == (2, 0, 128)
    x = inputs(2, 12)
    out = model(*x)
    mu_base, _ = model.baseline(x[1])
    torch.testing.assert_close(out.mu_partials.sum(1), out.mu - mu_base, rtol=1e-4, atol=1e-9)


def test_checkpoint_roundtrip_and_refusals(tmp_path):
    model = build("model=small").eval()
    path = tmp_path / "best.pt"
    model.save_checkpoint(path, calibration={"temperature": 1.0}, meta={"step": 3})
    again = SpectraMindV50.from_checkpoint(path).eval()
    x = inputs()
    with torch.no_grad():
        torch.testing.assert_close(again(*x).mu, model(*x).mu)
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) == {"model", "model_config", "calibration", "meta"}
    ckpt["model_config"]["model"]["encoders"]["fgs1_mamba"]["d_model"] = 64
    torch.save(ckpt, tmp_path / "mismatch.pt")
    with pytest.raises(ValueError, match="does not match its model_config"):
        SpectraMindV50.from_checkpoint(tmp_path / "mismatch.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="weights_only"):
        SpectraMindV50.from_checkpoint(tmp_path / "corrupt.pt")


def test_bad_input_names_the_tensor():
    model = build("model=small")
    with pytest.raises(ValueError, match="airs_nodes must have shape"):
        model(torch.randn(2, 8, 6), torch.randn(2, 282, 8))
    with pytest.raises(ValueError, match="fgs1 must have shape"):
        model(torch.randn(2, 8, 5), torch.randn(2, 283, 8))


def test_heads_correct_the_physics_baseline_of_the_node_features():
    from spectramind.data import features
    from spectramind.model import v50

    assert (v50.DEPTH_UNIT, v50.SIGMA_UNIT) == (features.DEPTH_UNIT, features.SIGMA_UNIT)
    model = build("model=small").eval()
    fgs1, nodes = inputs(2, 12)
    nodes[..., 0] = 1.5  # 1.5e-2 baseline depth
    nodes[..., 1] = 0.5  # sigma 10**0.5 * 1e-4
    with torch.no_grad():
        for head in (model.mu_head, model.sigma_head):
            for p in head.parameters():
                p.zero_()
        out = model(fgs1, nodes)
    torch.testing.assert_close(out.mu, torch.full((2, 283), 1.5e-2))
    # A zeroed sigma head outputs sigma_min + softplus(softplus-floored 0): a fixed factor on the baseline.
    factor = out.sigma / (10**0.5 * 1e-4)
    torch.testing.assert_close(factor, torch.full_like(factor, float(factor[0, 0])))
    assert 0.5 < float(factor[0, 0]) < 1.5
