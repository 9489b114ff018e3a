"""The Mamba blocks are causal / anti-causal as promised, train, ignore padding, and trace to the custom op."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from spectramind.config import compose
from spectramind.model.mamba import BiMambaLayer, FGS1Encoder, FGS1Encoding, MambaBlock
from spectramind.model.norm import RMSNorm, make_norm

torch.set_num_threads(1)

D_MODEL, D_STATE, L = 8, 4, 13
TINY = [
    "model.encoders.fgs1_mamba.d_model=16",
    "model.encoders.fgs1_mamba.d_state=4",
    "model.encoders.fgs1_mamba.n_layers=1",
    "model.encoders.fgs1_mamba.proj_out=8",
]


def _tiny_cfg(**over: object) -> dict[str, object]:
    cfg: dict[str, object] = dict(
        enabled=True, in_features=6, d_model=16, d_state=4, d_conv=4, expand=2, n_layers=2,
        bidirectional=True, dropout=0.0, layer_norm="rms", proj_out=8, export_step_latents=False,
    )  # fmt: skip
    cfg.update(over)
    return cfg


def _x(batch: int = 2, length: int = L, dim: int = D_MODEL, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, length, dim, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("norm", ["rms", "layernorm"])
def test_block_and_layer_shapes(norm: str) -> None:
    torch.manual_seed(0)
    x = _x()
    for layer in (MambaBlock(D_MODEL, D_STATE, norm=norm), BiMambaLayer(D_MODEL, D_STATE, norm=norm)):
        y = layer(x)
        assert y.shape == x.shape and y.dtype == x.dtype
        assert torch.isfinite(y).all()
        assert not torch.allclose(y, x)


def test_mamba_init_follows_mamba_ssm() -> None:
    torch.manual_seed(0)
    ssm = MambaBlock(32, D_STATE, dt_rank="auto").ssm
    assert ssm.dt_rank == 2  # ceil(32 / 16)
    dt = F.softplus(ssm.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    assert torch.allclose(-torch.exp(ssm.A_log), -torch.arange(1.0, D_STATE + 1).expand(64, -1))
    assert torch.equal(ssm.D, torch.ones(64))


def test_forward_block_is_causal() -> None:
    torch.manual_seed(0)
    block = MambaBlock(D_MODEL, D_STATE).eval()
    x = _x()
    k = 5
    x2 = x.clone()
    x2[:, k + 1 :] = _x(seed=1)[:, k + 1 :]
    y, y2 = block(x), block(x2)
    torch.testing.assert_close(y[:, : k + 1], y2[:, : k + 1])
    assert not torch.allclose(y[:, k + 1 :], y2[:, k + 1 :])


def test_reverse_block_is_anti_causal() -> None:
    torch.manual_seed(0)
    block = MambaBlock(D_MODEL, D_STATE, reverse=True).eval()
    x = _x()
    k = 6
    x2 = x.clone()
    x2[:, :k] = _x(seed=1)[:, :k]
    y, y2 = block(x), block(x2)
    torch.testing.assert_close(y[:, k:], y2[:, k:])
    assert not torch.allclose(y[:, :k], y2[:, :k])


def test_reverse_block_is_forward_block_on_reversed_time() -> None:
    # The anti-causal conv flips its kernel, so the same weights give the mirror image.
    torch.manual_seed(0)
    fwd = MambaBlock(D_MODEL, D_STATE, d_conv=3).eval()
    rev = MambaBlock(D_MODEL, D_STATE, d_conv=3, reverse=True).eval()
    rev.load_state_dict(fwd.state_dict())
    x = _x()
    torch.testing.assert_close(rev(x), fwd(x.flip(1)).flip(1), rtol=1e-5, atol=1e-5)


def test_bidirectional_layer_sees_both_sides() -> None:
    torch.manual_seed(0)
    layer = BiMambaLayer(D_MODEL, D_STATE).eval()
    x = _x()
    y = layer(x)
    late, early = x.clone(), x.clone()
    late[:, -1] += 1.0
    early[:, 0] += 1.0
    assert not torch.allclose(layer(late)[:, 0], y[:, 0])  # the first step hears the last
    assert not torch.allclose(layer(early)[:, -1], y[:, -1])  # and the last hears the first


@pytest.mark.parametrize("bidirectional", [True, False])
def test_backward_reaches_every_parameter(bidirectional: bool) -> None:
    torch.manual_seed(0)
    enc = FGS1Encoder(_tiny_cfg(bidirectional=bidirectional))
    out = enc(_x(dim=6))
    (out.pooled.square().sum() + out.steps.square().mean()).backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("preset", ["base", "small", "medium", "large"])
def test_encoder_builds_from_each_preset(preset: str) -> None:
    cfg = compose([f"model={preset}", *TINY]).model.encoders.fgs1_mamba
    torch.manual_seed(0)
    enc = FGS1Encoder(cfg)
    assert len(enc.layers) == 1 and isinstance(enc.layers[0], BiMambaLayer)  # the presets are bidirectional
    assert isinstance(enc.norm_f, RMSNorm)
    out = enc(torch.randn(2, 33, 6))
    assert isinstance(out, FGS1Encoding)
    assert out.pooled.shape == (2, 8) and out.steps.shape == (2, 33, 16)


def test_encoder_reads_direction_and_norm_from_config() -> None:
    over = ["model.encoders.fgs1_mamba.bidirectional=false", "model.encoders.fgs1_mamba.layer_norm=layernorm"]
    cfg = compose(["model=small", *TINY, *over]).model.encoders.fgs1_mamba
    enc = FGS1Encoder(cfg)
    assert type(enc.layers[0]) is MambaBlock and isinstance(enc.norm_f, torch.nn.LayerNorm)
    assert enc(torch.randn(2, 33, 6)).steps.shape == (2, 33, 16)


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_does_not_change_the_encoding(side: str) -> None:
    torch.manual_seed(0)
    enc = FGS1Encoder(_tiny_cfg()).eval()
    real = torch.randn(1, 20, 6)
    junk = 100.0 * torch.randn(1, 9, 6)
    mask = torch.zeros(1, 29, dtype=torch.bool)
    if side == "right":
        x, real_steps = torch.cat([real, junk], dim=1), slice(0, 20)
    else:
        x, real_steps = torch.cat([junk, real], dim=1), slice(9, 29)
    mask[:, real_steps] = True
    alone = enc(real)
    padded = enc(x, mask)
    torch.testing.assert_close(padded.pooled, alone.pooled, rtol=1e-4, atol=1e-5)
    steps = padded.steps[:, real_steps]
    torch.testing.assert_close(steps, alone.steps, rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
def test_trace_keeps_the_custom_op_and_generalises_over_length() -> None:
    torch.manual_seed(0)
    enc = FGS1Encoder(_tiny_cfg(n_layers=1)).eval()
    traced = torch.jit.trace(enc, (torch.randn(2, 33, 6),))
    assert "spectramind::selective_scan" in str(traced.inlined_graph)
    other = torch.randn(3, 21, 6)
    pooled, steps = traced(other)
    want = enc(other)
    torch.testing.assert_close(pooled, want.pooled)
    torch.testing.assert_close(steps, want.steps)


def test_bad_inputs_name_the_culprit() -> None:
    enc = FGS1Encoder(_tiny_cfg(n_layers=1))
    with pytest.raises(ValueError, match="fgs1 input must have shape"):
        enc(torch.randn(2, 33, 5))
    with pytest.raises(ValueError, match="mask must be bool"):
        enc(torch.randn(2, 33, 6), torch.ones(2, 33))
    with pytest.raises(ValueError, match="norm must be"):
        make_norm("batchnorm", 4)
    with pytest.raises(ValueError, match="dt_rank"):
        MambaBlock(8, dt_rank="big")


def test_rmsnorm_normalises_and_keeps_dtype() -> None:
    norm = RMSNorm(8)
    x = 1e3 * torch.randn(4, 8, dtype=torch.float64)
    y = norm(x)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y.square().mean(-1), torch.ones(4, dtype=torch.float64), rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        half = norm(torch.full((2, 8), 300.0, dtype=torch.float16))  # 300^2 overflows fp16; the statistic is fp32
    assert torch.isfinite(half).all() and math.isclose(half[0, 0].item(), 1.0, rel_tol=1e-3)


def test_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    enc = FGS1Encoder(_tiny_cfg(dropout=0.5))
    x = torch.randn(2, 9, 6)
    enc.eval()
    torch.testing.assert_close(enc(x).pooled, copy.deepcopy(enc)(x).pooled)
    enc.train()
    assert not torch.allclose(enc(x).pooled, enc(x).pooled)
