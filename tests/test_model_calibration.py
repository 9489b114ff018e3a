"""Calibration modules: identity at init, temperature math, state round trip, CalibratedV50."""

from __future__ import annotations

import math

import pytest
import torch

from spectramind.model.calibration import (
    COREL,
    COREL_FEATURES,
    CalibratedV50,
    Calibrator,
    TemperatureScaling,
    graph_for,
)
from spectramind.model.v50 import SpectraMindV50, V50Output, model_config_from

TINY_COREL = {"gnn_backend": "gat", "hidden_dim": 8, "n_layers": 2, "dropout": 0.1, "edge_features": True}
MODEL_CONFIG = {"model": {"encoders": {"airs_gnn": {"graph": {}, "edge_features": {"dims": 4}}}}, "symbolic": {}}


def _inputs(batch: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mu = 0.01 + 1e-3 * torch.rand(batch, 283, generator=g)
    sigma = 1e-5 + 1e-4 * torch.rand(batch, 283, generator=g)
    nodes = torch.randn(batch, 283, 8, generator=g)
    return mu, sigma, nodes


def _fitted() -> Calibrator:
    torch.manual_seed(1)
    temp = TemperatureScaling()
    corel = COREL(TINY_COREL, graph_for(MODEL_CONFIG))
    with torch.no_grad():
        temp.log_t_global.fill_(0.4)
        temp.log_t_bin.normal_(0, 0.1)
        for p in corel.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return Calibrator(temp, corel, {"note": "synthetic"}).eval()


def test_identity_at_init() -> None:
    mu, sigma, nodes = _inputs()
    cal = Calibrator(TemperatureScaling(), COREL(TINY_COREL, graph_for(MODEL_CONFIG)))
    assert torch.equal(cal(mu, sigma, nodes), sigma)
    assert torch.equal(Calibrator.from_state({})(mu, sigma, nodes), sigma)
    assert torch.equal(Calibrator.from_state(None)(mu, sigma, nodes), sigma)


def test_temperature_math() -> None:
    temp = TemperatureScaling()
    with torch.no_grad():
        temp.log_t_global.fill_(math.log(2.0))
        temp.log_t_bin[5] = math.log(3.0)
    sigma = torch.full((2, 283), 1e-4)
    out = temp(sigma)
    assert torch.allclose(out[:, 0], torch.full((2,), 2e-4))
    assert torch.allclose(out[:, 5], torch.full((2,), 6e-4))


def test_corel_features_and_bound() -> None:
    mu, sigma, nodes = _inputs()
    feats = COREL.features(mu, sigma, nodes)
    assert feats.shape == (3, 283, len(COREL_FEATURES)) == (3, 283, 10)
    assert torch.allclose(feats[..., 0], torch.log10(sigma / 1e-4))
    z = ((mu - nodes[..., 0] * 1e-2) / sigma).clamp(-10, 10)
    assert torch.allclose(feats[..., 1], z)
    assert torch.equal(feats[..., 2:], nodes)
    corel = COREL(TINY_COREL, graph_for(MODEL_CONFIG)).eval()
    with torch.no_grad():
        corel.out.bias.fill_(100.0)
    g = corel(mu, sigma, nodes)
    assert torch.allclose(g, torch.full_like(g, math.log(10.0)))


def test_bad_backend_named() -> None:
    with pytest.raises(ValueError, match="model.calibration.corel.gnn_backend"):
        COREL({**TINY_COREL, "gnn_backend": "rgcn"}, graph_for(MODEL_CONFIG))
    with pytest.raises(ValueError, match="calibration.version"):
        Calibrator.from_state({"version": 7})


def test_state_round_trip_weights_only(tmp_path) -> None:
    cal = _fitted()
    mu, sigma, nodes = _inputs()
    path = tmp_path / "cal.pt"
    torch.save(cal.state(), path)
    state = torch.load(path, weights_only=True)
    assert state["version"] == 1 and state["report"] == {"note": "synthetic"}
    assert len(state["temperature"]["log_t_bin"]) == 283
    back = Calibrator.from_state(state, MODEL_CONFIG).eval()
    with torch.no_grad():
        expected, got = cal(mu, sigma, nodes), back(mu, sigma, nodes)
    assert not torch.allclose(expected, sigma)
    assert torch.equal(expected, got)


@pytest.fixture(scope="module")
def small_model() -> SpectraMindV50:
    from spectramind.config import compose

    torch.manual_seed(0)
    return SpectraMindV50(model_config_from(compose(["model=small"]))).eval()


def test_calibrated_v50(small_model: SpectraMindV50, tmp_path) -> None:
    cal = _fitted()
    wrapped = CalibratedV50(small_model, cal).eval()
    fgs1, nodes = torch.randn(2, 16, 6), torch.randn(2, 283, 8)
    with torch.no_grad():
        raw = small_model(fgs1, nodes)
        out = wrapped(fgs1, nodes)
    assert isinstance(out, V50Output)
    assert torch.equal(out.mu, raw.mu)
    assert torch.allclose(out.sigma, cal(raw.mu, raw.sigma, nodes))
    assert not torch.allclose(out.sigma, raw.sigma)

    path = tmp_path / "ckpt.pt"
    small_model.save_checkpoint(path, calibration=cal.state())
    loaded = CalibratedV50.from_checkpoint(path).eval()
    with torch.no_grad():
        again = loaded(fgs1, nodes)
    assert torch.allclose(again.sigma, out.sigma) and torch.allclose(again.mu, out.mu)


def test_calibrator_traces_for_export() -> None:
    cal = _fitted()
    traced = torch.jit.trace(cal, _inputs(2, 0), check_trace=False)
    other = _inputs(4, 3)
    with torch.no_grad():
        assert torch.allclose(traced(*other), cal(*other))
