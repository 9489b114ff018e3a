import math

import pytest
import torch

from spectramind.bins import N_BINS
from train.masks import Masks, MaskSpec, apply_masks, make_masks
from train.pretrain import MAEHead, Projector, Recon, mae_loss, nt_xent


def _naive_nt_xent(z: torch.Tensor, tau: float) -> float:
    views, batch, _ = z.shape
    samples = [(v, b, z[v, b] / z[v, b].norm()) for v in range(views) for b in range(batch)]
    total = 0.0
    for v, b, zi in samples:
        denom = sum(math.exp(float(zi @ zk) / tau) for w, c, zk in samples if (w, c) != (v, b))
        logs = [float(zi @ zp) / tau - math.log(denom) for w, c, zp in samples if c == b and w != v]
        total += -sum(logs) / len(logs)
    return total / len(samples)


def test_mae_head_shapes_and_grad() -> None:
    head = MAEHead(d_model=16, node_dim=12)
    rec = head(torch.randn(3, 40, 16), torch.randn(3, N_BINS, 12))
    assert rec.fgs1.shape == (3, 40, 6) and rec.nodes.shape == (3, N_BINS, 8)
    fgs1, nodes = torch.randn(3, 40, 6), torch.randn(3, N_BINS, 8)
    masks = make_masks(MaskSpec("random", 0.4), fgs1, nodes, torch.Generator().manual_seed(0))
    loss, terms = mae_loss(rec, fgs1, nodes, masks)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())
    assert set(terms) == {"mae_time", "mae_nodes"} and not terms["mae_time"].requires_grad


def test_mae_loss_golden_masked_only() -> None:
    fgs1, nodes = torch.zeros(2, 4, 6), torch.zeros(2, N_BINS, 8)
    rec_f, rec_n = torch.zeros_like(fgs1), torch.zeros_like(nodes)
    t_mask, n_mask = torch.zeros(2, 4, dtype=torch.bool), torch.zeros(2, N_BINS, dtype=torch.bool)
    t_mask[0, 1] = True
    n_mask[1, 5] = n_mask[1, 6] = True
    rec_f[0, 1] = torch.tensor([1.0, 100.0, 1.0, 1.0, 1.0, 1.0])  # col 1 (time_norm) is ignored
    rec_f[0, 0] = 50.0  # unmasked step: ignored
    rec_n[1, 5, :7] = 2.0
    rec_n[1, 5, 7] = 100.0  # wavelength is ignored
    rec_n[0] = 50.0  # unmasked row: ignored
    loss, terms = mae_loss(Recon(rec_f, rec_n), fgs1, nodes, Masks(t_mask, n_mask))
    assert terms["mae_time"].item() == pytest.approx(1.0)
    assert terms["mae_nodes"].item() == pytest.approx(4.0 * 7 / 14)
    assert loss.item() == pytest.approx(0.5 * (1.0 + 2.0))


def test_mae_loss_empty_part_is_zero_not_nan() -> None:
    fgs1, nodes = torch.randn(2, 8, 6), torch.randn(2, N_BINS, 8)
    rec = Recon(torch.zeros_like(fgs1, requires_grad=True), torch.zeros_like(nodes, requires_grad=True))
    masks = Masks(torch.zeros(2, 8, dtype=torch.bool), torch.ones(2, N_BINS, dtype=torch.bool))
    loss, terms = mae_loss(rec, fgs1, nodes, masks)
    assert terms["mae_time"].item() == 0.0 and torch.isfinite(loss)
    loss.backward()
    assert torch.equal(rec.fgs1.grad, torch.zeros_like(fgs1))
    assert loss.item() == pytest.approx(0.5 * float((nodes[..., :7] ** 2).mean()))
    with pytest.raises(ValueError, match="reconstruction"):
        mae_loss(Recon(fgs1[:, :4], nodes), fgs1, nodes, masks)


def test_mae_on_masked_inputs_learns() -> None:
    torch.manual_seed(0)
    fgs1, nodes = torch.randn(4, 16, 6), torch.randn(4, N_BINS, 8)
    masks = make_masks(MaskSpec("random", 0.3), fgs1, nodes, torch.Generator().manual_seed(1))
    f_in, n_in = apply_masks(fgs1, nodes, masks)
    enc_f, enc_n, head = torch.nn.Linear(6, 8), torch.nn.Linear(8, 8), MAEHead(8, 8)
    opt = torch.optim.Adam([*enc_f.parameters(), *enc_n.parameters(), *head.parameters()], lr=1e-2)
    first = None
    for _ in range(20):
        loss, _ = mae_loss(head(enc_f(f_in), enc_n(n_in)), fgs1, nodes, masks)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_projector_unit_norm() -> None:
    z = Projector(20, 7)(torch.randn(5, 20))
    assert z.shape == (5, 7) and torch.allclose(z.norm(dim=-1), torch.ones(5), atol=1e-6)
    with pytest.raises(ValueError, match="projector_dim"):
        Projector(20, 0)


@pytest.mark.parametrize("views,batch,tau", [(2, 4, 0.1), (3, 5, 0.5)])
def test_nt_xent_golden_identical_orthogonal(views: int, batch: int, tau: float) -> None:
    base = torch.eye(batch, 8)
    z = base.expand(views, batch, 8)
    n = views * batch
    expected = math.log((views - 1) + (n - views) * math.exp(-1.0 / tau))
    assert nt_xent(z, tau).item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert nt_xent(z, 0.01).item() == pytest.approx(math.log(views - 1), abs=1e-4)


def test_nt_xent_random_matches_naive_and_log_n() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 4, 6, generator=g)
    assert nt_xent(z, 0.3).item() == pytest.approx(_naive_nt_xent(z, 0.3), rel=1e-5)
    wide = torch.randn(2, 16, 2048, generator=g)
    assert nt_xent(wide, 1.0).item() == pytest.approx(math.log(31), abs=0.05)
    aligned = torch.randn(1, 16, 2048, generator=g).expand(2, 16, 2048)
    assert nt_xent(aligned, 0.1).item() < 0.01


def test_nt_xent_errors() -> None:
    with pytest.raises(ValueError, match=r"train\.curriculum\.contrastive\.views"):
        nt_xent(torch.randn(1, 4, 3), 0.1)
    with pytest.raises(ValueError, match="batch"):
        nt_xent(torch.randn(2, 1, 3), 0.1)
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(torch.randn(2, 3, 3), 0.0)
