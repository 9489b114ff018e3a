import math

import numpy as np
import pytest
import torch

from spectramind.bins import N_BINS, load_grid
from train.masks import MASK_KINDS, MaskSpec, apply_masks, make_masks, node_snr_db, time_snr_db

B, T = 6, 64


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    fgs1 = torch.randn(B, T, 6, generator=g)
    nodes = torch.randn(B, N_BINS, 8, generator=g)
    return fgs1, nodes


def _gen(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _runs(row: np.ndarray) -> int:
    return int(row[0]) + int(np.sum(row[1:] & ~row[:-1]))


@pytest.mark.parametrize("kind", ["random", "block"])
@pytest.mark.parametrize("ratio", [0.1, 0.35, 0.8])
def test_exact_counts(kind: str, ratio: float) -> None:
    fgs1, nodes = _inputs()
    m = make_masks(MaskSpec(kind, ratio), fgs1, nodes, _gen())
    assert m.time.dtype == torch.bool and m.time.shape == (B, T) and m.nodes.shape == (B, N_BINS)
    assert (m.time.sum(1) == math.floor(ratio * T + 0.5)).all()
    assert (m.nodes.sum(1) == math.floor(ratio * N_BINS + 0.5)).all()
    assert not torch.equal(m.nodes[0], m.nodes[1])  # rows are drawn independently


def test_block_is_contiguous() -> None:
    fgs1, nodes = _inputs()
    m = make_masks(MaskSpec("block", 0.35), fgs1, nodes, _gen())
    for row in m.time.numpy():
        assert _runs(row) <= math.ceil(22 / (T // 16))
    for row in m.nodes.numpy():
        assert _runs(row) <= math.ceil(99 / 8)
    rnd = make_masks(MaskSpec("random", 0.35), fgs1, nodes, _gen())
    assert np.mean([_runs(r) for r in rnd.nodes.numpy()]) > 2 * np.mean([_runs(r) for r in m.nodes.numpy()])


def test_fixed_pattern() -> None:
    fgs1, nodes = _inputs()
    m = make_masks(MaskSpec("fixed", 0.35), fgs1, nodes, _gen(1))
    m2 = make_masks(MaskSpec("fixed", 0.35), fgs1[:2], nodes[:2], _gen(9))
    expected = np.arange(T) % 3 == 1
    assert (m.time.numpy() == expected).all() and torch.equal(m2.time, m.time[:2])
    assert m.nodes[0].nonzero().flatten().tolist() == list(range(1, N_BINS, 3))
    assert (make_masks(MaskSpec("fixed", 0.25), fgs1, nodes).time[0].nonzero().flatten() == torch.arange(2, T, 4)).all()


def test_snr_aware_respects_floor_and_prefers_high_snr() -> None:
    g = torch.Generator().manual_seed(3)
    nodes = torch.zeros(400, N_BINS, 8)
    nodes[..., 1] = 0.0  # sigma = 100 ppm
    depth_ppm = torch.linspace(0, 3000, N_BINS)  # SNR from -inf to ~29.5 dB
    nodes[..., 0] = depth_ppm / 1e6 / 1e-2
    fgs1 = torch.randn(400, T, 6, generator=g) * 0.01
    fgs1[:, 20:40, 0] -= torch.linspace(0.02, 0.5, 20)  # transit: only these steps clear 10 dB
    m = make_masks(MaskSpec("snr_aware", 0.35, snr_floor_db=10.0), fgs1, nodes, _gen())
    snr = node_snr_db(nodes)[0]
    eligible = snr >= 10.0
    assert not m.nodes[:, ~eligible].any()
    assert (m.nodes.sum(1) == math.floor(0.35 * int(eligible.sum()) + 0.5)).all()
    freq = m.nodes.double().mean(0)
    idx = eligible.nonzero().flatten()
    lo, hi = idx[: len(idx) // 4], idx[-len(idx) // 4 :]
    assert freq[hi].mean() > 1.5 * freq[lo].mean()
    tsnr = time_snr_db(fgs1)
    assert not (m.time & (tsnr < 10.0)).any()
    assert m.time[:, 20:40].any() and ((tsnr >= 10.0).sum(1) > 0).all()


def test_snr_aware_row_without_eligible_masks_nothing() -> None:
    fgs1, nodes = _inputs()
    fgs1[..., 0] = 0.0
    nodes[..., 0] = 0.0
    m = make_masks(MaskSpec("snr_aware", 0.5), fgs1, nodes, _gen())
    assert not m.time.any() and not m.nodes.any()


def test_molecule_masked_inside_windows() -> None:
    grid = load_grid()
    inside = torch.as_tensor(np.any([grid.molecule_mask(n) for n in grid.molecules], axis=0))
    fgs1, nodes = _inputs()
    m = make_masks(MaskSpec("molecule_masked", 0.35), fgs1, nodes, _gen(), grid)
    assert (m.nodes.sum(1) == 99).all() and not m.nodes[:, ~inside].any()
    assert (m.time.sum(1) == math.floor(0.35 * T + 0.5)).all()
    big = make_masks(MaskSpec("molecule_masked", 0.9), fgs1, nodes, _gen(), grid)
    assert torch.equal(big.nodes, inside.expand(B, -1))  # all 188 window bins, no more
    # Whole windows: with a 20 % ratio (57 bins) at most one window per row is partial.
    windows = [w for n in grid.molecules for w in grid.molecule_windows[n]]
    small = make_masks(MaskSpec("molecule_masked", 0.2), fgs1, nodes, _gen(), grid)
    for row in small.nodes:
        partial = [lo for lo, hi in windows if 0 < int(row[lo : hi + 1].sum()) < hi - lo + 1]
        assert len(partial) <= 1


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_seeded_determinism(kind: str) -> None:
    fgs1, nodes = _inputs()
    fgs1[:, 10:30, 0] -= 5.0
    a = make_masks(MaskSpec(kind, 0.35), fgs1, nodes, _gen(7))
    b = make_masks(MaskSpec(kind, 0.35), fgs1, nodes, _gen(7))
    assert torch.equal(a.time, b.time) and torch.equal(a.nodes, b.nodes)


def test_bad_spec_errors() -> None:
    with pytest.raises(ValueError, match=r"train\.curriculum\.mae\.mask_ratio"):
        MaskSpec("random", 1.0)
    with pytest.raises(ValueError, match=r"train\.curriculum\.mae\.mask_ratio"):
        MaskSpec("random", 0.0)
    with pytest.raises(ValueError, match=r"train\.curriculum\.mae\.mask_kind"):
        MaskSpec("stripes", 0.3)
    mae = {"mask_kind": "snr_aware", "mask_ratio": "0.35", "snr_floor_db": 10, "decoder_loss_weight": 0.1}
    spec = MaskSpec.from_mapping(mae)
    assert spec == MaskSpec("snr_aware", 0.35, 10.0)
    with pytest.raises(ValueError, match="fgs1"):
        make_masks(spec, torch.zeros(2, 8, 5), torch.zeros(2, N_BINS, 8))


def test_apply_masks_keeps_positional_columns() -> None:
    fgs1, nodes = _inputs()
    m = make_masks(MaskSpec("random", 0.5), fgs1, nodes, _gen())
    f, n = apply_masks(fgs1, nodes, m)
    assert torch.equal(f[..., 1], fgs1[..., 1]) and torch.equal(n[..., 7], nodes[..., 7])
    assert (f[m.time][:, [0, 2, 3, 4, 5]] == 0).all() and (n[m.nodes][:, :7] == 0).all()
    assert torch.equal(f[~m.time], fgs1[~m.time]) and torch.equal(n[~m.nodes], nodes[~m.nodes])
    assert not torch.equal(f, fgs1)  # a new tensor, the input untouched
