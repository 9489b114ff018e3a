import pytest
import torch

from spectramind.bins import N_BINS
from spectramind.config import compose
from train.augment import AugmentOptions, augment

B, T = 16, 128


def _inputs(batch: int = B, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    fgs1 = torch.randn(batch, T, 6, generator=g) * 0.1
    fgs1[..., 1] = torch.linspace(0, 1, T)
    nodes = torch.randn(batch, N_BINS, 8, generator=g) * 0.1
    nodes[..., 0] += 1.5
    return fgs1, nodes


def _gen(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_off_is_identity_and_not_in_place() -> None:
    fgs1, nodes = _inputs()
    f, n = augment(fgs1, nodes, AugmentOptions(), _gen())
    assert torch.equal(f, fgs1) and torch.equal(n, nodes)
    assert f.data_ptr() != fgs1.data_ptr() and n.data_ptr() != nodes.data_ptr()
    f0, n0 = fgs1.clone(), nodes.clone()
    augment(fgs1, nodes, AugmentOptions(True, 0.3, 0.2, 0.1), _gen())
    assert torch.equal(fgs1, f0) and torch.equal(nodes, n0)


def test_jitter_coupling() -> None:
    fgs1, nodes = _inputs(batch=200)
    f, n = augment(fgs1, nodes, AugmentOptions(jitter_augment=True, jitter_std=0.25), _gen())
    assert torch.equal(n, nodes) and torch.equal(f[..., 1], fgs1[..., 1])
    d = (f - fgs1).double()
    dx, dy, dflux = d[..., 2], d[..., 3], d[..., 0]
    assert dx.std().item() == pytest.approx(0.25, rel=0.1) and dy.std().item() == pytest.approx(0.25, rel=0.1)
    # The flux perturbation is exactly linear in the added offsets, with N(0, 0.05) coefficients.
    design = torch.stack([dx, dy], dim=-1)
    coef = torch.linalg.lstsq(design, dflux[..., None]).solution[..., 0]
    resid = dflux - (design @ coef[..., None])[..., 0]
    assert resid.abs().max().item() < 1e-5
    assert coef.std().item() == pytest.approx(0.05, rel=0.2) and abs(coef.mean().item()) < 0.02
    # Jitter columns get the fast part: zero-mean locally, smaller than the full offset.
    fast = d[..., 4]
    assert fast.std() < dx.std() and fast.std() > 0.05
    # dx is smooth (AR(1) with tau = 5 steps).
    lag1 = (dx[:, 1:] * dx[:, :-1]).mean() / (dx * dx).mean()
    assert lag1.item() == pytest.approx(torch.exp(torch.tensor(-0.2)).item(), abs=0.05)


def test_time_dropout_fraction_and_interpolation() -> None:
    g = torch.Generator().manual_seed(5)
    fgs1 = torch.randn(64, T, 6, generator=g)
    fgs1[..., 1] = torch.linspace(0, 1, T)
    f, _ = augment(fgs1, _inputs(64)[1], AugmentOptions(time_dropout_prob=0.3), _gen())
    changed = (f != fgs1).any(-1)
    assert changed.float().mean().item() == pytest.approx(0.3, abs=0.03)
    assert torch.equal(f[..., 1], fgs1[..., 1])
    ramp = torch.arange(T, dtype=torch.float32)[None, :, None].expand(8, T, 6).clone()
    r, _ = augment(ramp, _inputs(8)[1], AugmentOptions(time_dropout_prob=0.3), _gen())
    interior = torch.zeros(T, dtype=torch.bool)
    interior[10:-10] = True
    assert torch.allclose(r[:, interior], ramp[:, interior], atol=1e-4)  # a line interpolates exactly
    # Ends hold the nearest kept value: the first rows are constant until the first kept step.
    first_kept = (r[..., 0] == ramp[..., 0]).float().argmax(1)
    for row, k in zip(r, first_kept):
        assert (row[:k, 0] == row[k, 0]).all()


def test_spectral_smooth_noise() -> None:
    fgs1, nodes = _inputs(batch=300)
    f, n = augment(fgs1, nodes, AugmentOptions(spectral_smooth_noise=0.05), _gen())
    assert torch.equal(f, fgs1)
    d0, d2 = (n - nodes)[..., 0].double(), (n - nodes)[..., 2].double()
    assert torch.equal(n[:, 0], nodes[:, 0]) and torch.equal(n[..., [1, 3, 4, 5, 6, 7]], nodes[..., [1, 3, 4, 5, 6, 7]])
    curve = d0[:, 1:]
    assert curve.std().item() == pytest.approx(0.05, rel=0.1)
    assert torch.allclose(d2[:, 1:], 100.0 * curve, atol=1e-3)
    c = curve - curve.mean(1, keepdim=True)
    lag1 = ((c[:, 1:] * c[:, :-1]).sum(1) / (c * c).sum(1)).mean()
    assert lag1.item() > 0.8


@pytest.mark.parametrize("opts", [AugmentOptions(True, 0.25, 0.2, 0.05)])
def test_seeded_determinism(opts: AugmentOptions) -> None:
    fgs1, nodes = _inputs()
    a = augment(fgs1, nodes, opts, _gen(3))
    b = augment(fgs1, nodes, opts, _gen(3))
    c = augment(fgs1, nodes, opts, _gen(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])


def test_from_mapping_and_errors() -> None:
    cfg = compose(["train=base"]).train.data_augmentation
    opts = AugmentOptions.from_mapping(cfg)
    assert opts == AugmentOptions(True, 0.25, 0.0, 0.0)
    assert AugmentOptions.from_mapping(None) == AugmentOptions()
    with pytest.raises(ValueError, match=r"train\.data_augmentation\.fgs1: unknown option 'jitter'"):
        AugmentOptions.from_mapping({"fgs1": {"jitter": 1}})
    with pytest.raises(ValueError, match=r"unknown group 'ariel'"):
        AugmentOptions.from_mapping({"ariel": {}})
    with pytest.raises(ValueError, match=r"train\.data_augmentation\.fgs1\.time_dropout_prob"):
        AugmentOptions.from_mapping({"fgs1": {"time_dropout_prob": 1.0}})
    with pytest.raises(ValueError, match=r"train\.data_augmentation\.airs\.spectral_smooth_noise"):
        AugmentOptions(spectral_smooth_noise=-0.1)
    with pytest.raises(ValueError, match=r"train\.data_augmentation\.fgs1\.jitter_augment"):
        AugmentOptions(jitter_augment="yes")
    with pytest.raises(ValueError, match="fgs1"):
        augment(torch.zeros(2, T, 5), torch.zeros(2, N_BINS, 8), AugmentOptions())
