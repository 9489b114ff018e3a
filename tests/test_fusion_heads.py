"""Fusion kinds and presets, the multi-scale mu head and the flow / quantile sigma heads."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from omegaconf import DictConfig

from spectramind.bins import N_BINS
from spectramind.config import compose
from spectramind.model.fusion import FUSION_KINDS, Fused, Fusion
from spectramind.model.heads import MuHead, MuOutput, SigmaHead, SigmaOutput, scale_operators

torch.set_num_threads(1)

B, T, DF, DS, DA = 2, 11, 6, 5, 7


@functools.cache
def _composed() -> DictConfig:
    return compose(["model=small"])


def _fusion_cfg(kind: str, **over: object) -> dict[str, object]:
    cfg: dict[str, object] = {"kind": kind, "dim": 16, "hidden": 12, "dropout": 0.0}
    cfg["cross_attend"] = {"n_heads": 4, "n_layers": 2}
    cfg.update(over)
    return cfg


def _inputs(seed: int = 0, n: int = N_BINS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, DF, generator=g), torch.randn(B, T, DS, generator=g), torch.randn(B, n, DA, generator=g)


def _mu_cfg(kind: str = "multiscale", **over: object) -> dict[str, object]:
    cfg: dict[str, object] = {"type": kind, "hidden": 12, "dropout": 0.0, "scales": ["coarse", "mid", "fine"]}
    cfg.update(aux_losses=True, **over)
    return cfg


def _sigma_cfg(kind: str = "flow", **over: object) -> dict[str, object]:
    cfg: dict[str, object] = {"type": kind, "hidden": 12, "dropout": 0.0, "activation": "softplus"}
    cfg.update(sigma_min=1e-4, temperature_scaling_compatible=True, quantile={"q_list": [0.1, 0.5, 0.9]})
    cfg.update(over)
    return cfg


def _assert_all_grads(module: torch.nn.Module) -> None:
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# ---------------------------------------------------------------- fusion


@pytest.mark.parametrize("kind", FUSION_KINDS)
def test_fusion_kinds_shapes_and_backward(kind: str) -> None:
    torch.manual_seed(0)
    fusion = Fusion(_fusion_cfg(kind), DF, DS, DA)
    pooled, steps, nodes = (t.requires_grad_() for t in _inputs())
    out = fusion(pooled, steps, nodes)
    assert isinstance(out, Fused)
    assert out.nodes.shape == (B, N_BINS, 16)
    assert out.attention.shape == ((B, N_BINS, T) if kind == "cross_attend" else (B, N_BINS, 0))
    # A random projection: the LayerNorm at the end makes a sum of squares nearly constant.
    (out.nodes * torch.randn(out.nodes.shape)).sum().backward()
    _assert_all_grads(fusion)
    assert pooled.grad.abs().sum() > 0 and nodes.grad.abs().sum() > 0  # every kind uses both inputs
    uses_steps = steps.grad is not None and bool(steps.grad.abs().sum() > 0)
    assert uses_steps == (kind == "cross_attend")


@pytest.mark.parametrize("name", ["concat", "cross_attend", "gated"])
def test_fusion_presets_build(name: str) -> None:
    cfg = _composed()
    preset = cfg.presets.fusion[name]
    fusion = Fusion(preset, DF, DS, DA)
    out = fusion(*_inputs())
    assert out.nodes.shape == (B, N_BINS, preset.dim)
    # The documented way to apply a preset is an override of model.fusion.
    applied = compose(["model=small", f"model.fusion=${{presets.fusion.{name}}}"]).model.fusion
    assert Fusion(applied, DF, DS, DA).kind == name


def test_fusion_of_the_composed_model_config() -> None:
    model = _composed().model
    fgs1, gnn = model.encoders.fgs1_mamba, model.encoders.airs_gnn
    fusion = Fusion(model.fusion, fgs1.proj_out, fgs1.d_model, gnn.out_dim)
    assert fusion.kind == "concat" and fusion.dim == 256


def test_cross_attention_is_a_distribution_over_real_steps() -> None:
    torch.manual_seed(0)
    fusion = Fusion(_fusion_cfg("cross_attend"), DF, DS, DA)  # training mode: weights are not dropped out
    pooled, steps, nodes = _inputs()
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 7:] = False
    out = fusion(pooled, steps, nodes, step_mask=mask)
    torch.testing.assert_close(out.attention.sum(-1), torch.ones(B, N_BINS))
    assert torch.all(out.attention[1, :, 7:] == 0)
    junk = steps.clone()
    junk[1, 7:] = 1e3
    fusion.eval()
    torch.testing.assert_close(fusion(pooled, junk, nodes, mask).nodes, fusion(pooled, steps, nodes, mask).nodes)


def test_gated_fusion_mixes_both_sources() -> None:
    torch.manual_seed(0)
    fusion = Fusion(_fusion_cfg("gated"), DF, DS, DA).eval()
    pooled, steps, nodes = _inputs()
    base = fusion(pooled, steps, nodes).nodes
    assert not torch.allclose(fusion(pooled + 1.0, steps, nodes).nodes, base)
    assert not torch.allclose(fusion(pooled, steps, nodes + 1.0).nodes, base)


def test_fusion_rejects_bad_config_and_shapes() -> None:
    with pytest.raises(ValueError, match="fusion.kind"):
        Fusion(_fusion_cfg("sum"), DF, DS, DA)
    with pytest.raises(ValueError, match="multiple of fusion.cross_attend.n_heads"):
        Fusion(_fusion_cfg("cross_attend", dim=18), DF, DS, DA)
    fusion = Fusion(_fusion_cfg("concat"), DF, DS, DA)
    pooled, steps, nodes = _inputs(n=282)
    with pytest.raises(ValueError, match="nodes must have shape"):
        fusion(pooled, steps, nodes)
    pooled, steps, nodes = _inputs()
    with pytest.raises(ValueError, match="fgs1_pooled"):
        fusion(pooled[:, :3], steps, nodes)
    with pytest.raises(ValueError, match="step_mask"):
        fusion(pooled, steps, nodes, step_mask=torch.ones(B, T + 1, dtype=torch.bool))


# ---------------------------------------------------------------- mu head


def test_scale_operators_pool_and_interpolate() -> None:
    pool, up = scale_operators(12)
    assert pool.shape == up.shape == (13, N_BINS)
    torch.testing.assert_close(pool.sum(1), torch.ones(13))
    torch.testing.assert_close(up.sum(0), torch.ones(N_BINS))  # a constant stays constant
    assert pool[0, 0] == 1 and up[0, 0] == 1 and pool[0, 1:].abs().sum() == 0  # FGS1 is its own group
    sizes = (pool[1:] > 0).sum(1)
    assert set(sizes.tolist()) == {23, 24} and sizes.sum() == N_BINS - 1
    ramp = torch.arange(13.0)
    spectrum = ramp @ up
    steps = spectrum[2:] - spectrum[1:-1]
    assert steps.min() >= 0 and steps.max() < 0.1  # linear between centres: no jumps at group edges


@pytest.mark.parametrize("kind", ["multiscale", "single"])
def test_mu_head_shapes_and_partials_sum_to_mu(kind: str) -> None:
    torch.manual_seed(0)
    head = MuHead(_mu_cfg(kind), 16)
    nodes = torch.randn(B, N_BINS, 16)
    out = head(nodes)
    assert isinstance(out, MuOutput) and out.mu.shape == (B, N_BINS)
    n_scales = 3 if kind == "multiscale" else 1
    assert out.partials.shape == (B, n_scales, N_BINS)
    torch.testing.assert_close(out.partials.sum(1), out.mu)
    out.mu.sum().backward()
    _assert_all_grads(head)


def test_mu_head_coarse_partial_is_smooth_and_scales_are_configurable() -> None:
    torch.manual_seed(0)
    head = MuHead(_mu_cfg(scales=["fine", "coarse"]), 16)
    assert head.scales == ("coarse", "fine")
    out = head(torch.randn(B, N_BINS, 16))
    coarse = out.partials[:, 0, 1:]
    _, up = scale_operators(12)
    # The coarse spectrum lies in the span of the 12 interpolation functions of the AIRS groups.
    solution = torch.linalg.lstsq(up[1:, 1:].T, coarse.T.detach()).solution
    torch.testing.assert_close(up[1:, 1:].T @ solution, coarse.T.detach(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="scales"):
        MuHead(_mu_cfg(scales=["coarse", "ultra"]), 16)
    with pytest.raises(ValueError, match="mu_head.type"):
        MuHead(_mu_cfg("deep"), 16)


def test_mu_head_from_composed_config_and_preset() -> None:
    cfg = _composed()
    for node in (cfg.model.decoders.mu_head, cfg.presets.decoders.multiscale_mu_default):
        head = MuHead(node, 8)
        assert head.scales == ("coarse", "mid", "fine") and head.aux_losses
        assert head(torch.randn(1, N_BINS, 8)).mu.shape == (1, N_BINS)
    with pytest.raises(ValueError, match="mu_head nodes"):
        head(torch.randn(1, N_BINS, 9))


# ---------------------------------------------------------------- sigma head


@pytest.mark.parametrize("scale", [1.0, 1e4, -1e4])
@pytest.mark.parametrize("log_scale_bias", [0.0, -1e4, 1e4])
def test_flow_sigma_exceeds_sigma_min_even_at_extremes(scale: float, log_scale_bias: float) -> None:
    torch.manual_seed(0)
    head = SigmaHead(_sigma_cfg(), 16)
    with torch.no_grad():
        head.log_scale.bias.fill_(log_scale_bias)
    out = head(scale * torch.randn(B, N_BINS, 16))
    assert isinstance(out, SigmaOutput)
    assert out.sigma.shape == (B, N_BINS) and out.quantiles.shape == (B, N_BINS, 0)
    assert torch.isfinite(out.sigma).all()
    assert (out.sigma > 1e-4).all()


def test_flow_sigma_is_the_flow_slope_at_the_median() -> None:
    torch.manual_seed(0)
    head = SigmaHead(_sigma_cfg(sigma_min=1e-12), 16).double()
    with torch.no_grad():
        head.log_scale.bias.fill_(-9.0)  # softplus(lambda) = exp(lambda) to 1e-4 relative there
    nodes = torch.randn(B, N_BINS, 16, dtype=torch.float64)
    eps = torch.zeros(B, N_BINS, dtype=torch.float64, requires_grad=True)
    residual = head.flow_residual(eps, nodes)
    assert torch.all(residual == 0)  # the median residual is zero: mu stays the centre
    (slope,) = torch.autograd.grad(residual.sum(), eps)  # elementwise maps: the sum's gradient is the slope
    torch.testing.assert_close(head(nodes).sigma, slope, rtol=2e-4, atol=0.0)
    far = torch.linspace(-4, 4, 9, dtype=torch.float64).expand(B, N_BINS, 9).permute(2, 0, 1)
    values = torch.stack([head.flow_residual(e, nodes) for e in far])
    assert (values.diff(dim=0) > 0).all()  # invertible: increasing in eps


def test_temperature_multiplies_sigma() -> None:
    torch.manual_seed(0)
    nodes = torch.randn(B, N_BINS, 16)
    for kind in ("flow", "quantile"):
        head = SigmaHead(_sigma_cfg(kind), 16).eval()
        sigma = head(nodes).sigma
        torch.testing.assert_close(head(nodes, torch.tensor(2.0)).sigma, 2.0 * sigma)
        per_bin = torch.linspace(0.5, 3.0, N_BINS)
        torch.testing.assert_close(head(nodes, per_bin).sigma, per_bin * sigma)
    with pytest.raises(ValueError, match="temperature must be"):
        head(nodes, torch.ones(282))
    strict = SigmaHead(_sigma_cfg(temperature_scaling_compatible=False), 16)
    with pytest.raises(ValueError, match="temperature_scaling_compatible"):
        strict(nodes, torch.tensor(2.0))


@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_quantile_head_is_monotone_with_positive_sigma(scale: float) -> None:
    torch.manual_seed(0)
    head = SigmaHead(_sigma_cfg("quantile", quantile={"q_list": [0.1, 0.25, 0.5, 0.75, 0.9]}), 16)
    out = head(scale * torch.randn(B, N_BINS, 16))
    assert out.quantiles.shape == (B, N_BINS, 5)
    assert (out.quantiles.diff(dim=-1) >= 0).all()
    assert (out.sigma > 0).all() and torch.isfinite(out.sigma).all()
    spread = out.quantiles[..., -1] - out.quantiles[..., 0]
    torch.testing.assert_close(out.sigma, spread / (2 * 1.2815516) + 1e-4)
    out.sigma.sum().backward()
    assert all(p.grad is not None for p in head.parameters())


def test_sigma_head_from_composed_config_and_preset() -> None:
    cfg = _composed()
    flow = SigmaHead(cfg.model.decoders.sigma_head, 8)
    preset = SigmaHead(cfg.presets.decoders.sigma_flow_default, 8)  # the preset omits the optional keys
    quantile = SigmaHead({**cfg.model.decoders.sigma_head, "type": "quantile"}, 8)
    assert flow.kind == preset.kind == "flow" and quantile.q_list == (0.1, 0.5, 0.9)
    nodes = torch.randn(1, N_BINS, 8)
    for head in (flow, preset, quantile):
        assert head(nodes).sigma.shape == (1, N_BINS)
    with pytest.raises(ValueError, match="sigma_min"):
        SigmaHead(_sigma_cfg(sigma_min=0.0), 8)
    with pytest.raises(ValueError, match="q_list"):
        SigmaHead(_sigma_cfg("quantile", quantile={"q_list": [0.9, 0.1]}), 8)
    with pytest.raises(ValueError, match="activation"):
        SigmaHead(_sigma_cfg(activation="exp"), 8)


def test_fusion_and_heads_trace_for_other_batch_and_length() -> None:
    torch.manual_seed(0)
    fusion = Fusion(_fusion_cfg("cross_attend"), DF, DS, DA).eval()
    mu_head, sigma_head = MuHead(_mu_cfg(), 16).eval(), SigmaHead(_sigma_cfg(), 16).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced_fusion = torch.jit.trace(fusion, _inputs())
        traced_mu = torch.jit.trace(mu_head, (torch.randn(B, N_BINS, 16),))
        traced_sigma = torch.jit.trace(sigma_head, (torch.randn(B, N_BINS, 16), torch.tensor(1.5)))
    # nn.MultiheadAttention's own shape checks warn from torch/nn/functional.py; ours must not.
    ours = [w for w in caught if "spectramind" in w.filename and issubclass(w.category, torch.jit.TracerWarning)]
    assert not ours, [str(w.message) for w in ours]
    g = torch.Generator().manual_seed(1)
    pooled, steps = torch.randn(3, DF, generator=g), torch.randn(3, 17, DS, generator=g)
    nodes = torch.randn(3, N_BINS, DA, generator=g)
    fused, attention = traced_fusion(pooled, steps, nodes)
    want = fusion(pooled, steps, nodes)
    torch.testing.assert_close(fused, want.nodes)
    assert attention.shape == (3, N_BINS, 17)
    torch.testing.assert_close(traced_mu(fused)[0], mu_head(fused).mu)
    t = torch.tensor(2.0)
    torch.testing.assert_close(traced_sigma(fused, t)[0], sigma_head(fused, t).sigma)
