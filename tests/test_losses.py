"""Losses: every term on a spectrum whose value is worked out by hand, config wiring, gradients."""

import copy
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from spectramind.bins import N_BINS, load_grid
from spectramind.config import compose
from spectramind.model import losses as L

LOG_2PI = math.log(2 * math.pi)
# The seed profile: windows H2O [40,85] [210,240], CO2 [95,130] [245,265], CH4 [135,175] [270,282].
WINDOWS = {"H2O": [(40, 85), (210, 240)], "CO2": [(95, 130), (245, 265)], "CH4": [(135, 175), (270, 282)]}
# Smoothness with window 2 counts AIRS centres at full bins 3..280 (278 bins); the windows cover
# 46 + 36 + 41 + 31 + 21 + 11 = 186 of them, leaving 92.
SMOOTH_BINS_MASKED = 92
SMOOTH_BINS_ALL = 278


@pytest.fixture(scope="module")
def cfg():
    composed = compose()
    return {
        "losses": OmegaConf.to_container(composed.model.losses, resolve=True),
        "quantile": OmegaConf.to_container(composed.model.decoders.sigma_head.quantile, resolve=True),
    }


@pytest.fixture(scope="module")
def grid():
    return load_grid()


def flat(value: float = 0.0147, batch: int = 1) -> torch.Tensor:
    return torch.full((batch, N_BINS), value, dtype=torch.float64)


def band_spectrum(strengths: dict, base: float = 0.0147) -> torch.Tensor:
    """Continuum ``base`` plus a flat band of the given strength in each molecule's windows."""
    mu = flat(base)
    for mol, s in strengths.items():
        for lo, hi in WINDOWS[mol]:
            mu[0, lo : hi + 1] += s
    return mu


def gaussian_template(lo: int, hi: int) -> np.ndarray:
    n = hi - lo + 1
    x = np.arange(n)
    return np.exp(-0.5 * ((x - (n - 1) / 2) / (n / 4)) ** 2)


def symbolic(cfg, grid, **lambdas):
    """SymbolicLoss from the composed config with some lambdas replaced."""
    node = copy.deepcopy(cfg["losses"]["symbolic"])
    for term, lam in lambdas.items():
        node[term]["lambda"] = lam
    return L.SymbolicLoss(node, grid, cfg["quantile"])


# ---------------------------------------------------------------- GLL


def test_gll_of_perfect_unit_sigma_prediction_is_half_log_2pi():
    y = torch.rand(3, N_BINS, dtype=torch.float64)
    one = torch.ones_like(y)
    assert L.gaussian_nll(y, one, y).item() == pytest.approx(0.5 * LOG_2PI)
    assert L.gaussian_nll(y, one, y, reduction="sum").item() == pytest.approx(3 * N_BINS * 0.5 * LOG_2PI)
    assert L.gaussian_nll(y, one, y, reduction="none").shape == (3, N_BINS)
    assert L.gaussian_nll(y, one, y, weights=L.bin_weights()).item() == pytest.approx(0.5 * LOG_2PI)


def test_gll_hand_value_and_fgs1_weight():
    mu = flat(0.0)
    y = flat(0.02)
    sigma = flat(0.01)
    assert L.gaussian_nll(mu, sigma, y).item() == pytest.approx(0.5 * (LOG_2PI + 2 * math.log(0.01) + 4.0))
    # A one-sigma miss on FGS1 only: 0.5 extra on bin 0, weighted like the ADC2025 metric.
    y = flat(0.0)
    y[0, 0] = 0.01
    base = 0.5 * (LOG_2PI + 2 * math.log(0.01))
    assert L.gaussian_nll(mu, sigma, y).item() == pytest.approx(base + 0.5 / 283)
    weighted = L.gaussian_nll(mu, sigma, y, weights=L.bin_weights(57.846)).item()
    assert weighted == pytest.approx(base + 0.5 * 57.846 / (57.846 + 282))
    assert L.gaussian_nll(mu, sigma, y, weights=L.bin_weights(1.0)).item() == pytest.approx(base + 0.5 / 283)


def test_gll_rejects_bad_shapes_and_reduction():
    good = flat()
    with pytest.raises(ValueError, match=r"sigma must have shape \(B, 283\)"):
        L.gaussian_nll(good, torch.ones(1, 282), good)
    with pytest.raises(ValueError, match="reduction"):
        L.gaussian_nll(good, good, good, reduction="max")
    with pytest.raises(ValueError, match=r"weights must have shape \(283,\)"):
        L.gaussian_nll(good, good, good, weights=torch.ones(282))


# ---------------------------------------------------------------- nonnegativity


def test_nonnegativity_one_negative_bin(cfg, grid):
    mu = flat(0.0147)
    mu[0, 100] = -0.01
    assert L.nonnegativity_loss(mu, 2).item() == pytest.approx(1e-4 / 283)
    lam = cfg["losses"]["symbolic"]["nonnegativity"]["lambda"]
    terms = symbolic(cfg, grid)(mu)
    assert terms["nonnegativity"].item() == pytest.approx(lam * 1e-4 / 283)
    assert L.nonnegativity_loss(flat(0.0147), 2).item() == 0.0


def test_nonnegativity_in_half_precision_does_not_underflow():
    # (1e-3)^2 / 283 ~ 3.5e-9 is below fp16's smallest subnormal: the loss must be taken in fp32.
    mu = torch.zeros(1, N_BINS, dtype=torch.float16)
    mu[0, 5] = -1e-3
    value = L.nonnegativity_loss(mu, 2)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(float(torch.tensor(-1e-3, dtype=torch.float16)) ** 2 / 283, rel=1e-4)


# ---------------------------------------------------------------- smoothness


def test_smoothness_linear_airs_is_zero_and_fgs1_ignored(cfg, grid):
    mu = flat(0.0)
    mu[0, 1:] = 0.01 + 1e-5 * torch.arange(282, dtype=torch.float64)
    mu[0, 0] = 0.5  # far off the AIRS line: FGS1 must not enter the smoothness term
    assert L.smoothness_loss(mu, 2).item() < 1e-30
    assert symbolic(cfg, grid)(mu)["smoothness"].item() < 1e-30


def test_smoothness_spike_value_masked_and_unmasked(cfg, grid):
    h = 1e-3
    lam = cfg["losses"]["symbolic"]["smoothness"]["lambda"]
    assert cfg["losses"]["symbolic"]["smoothness"]["window"] == 2
    mu = flat()
    mu[0, 20] += h  # continuum bin: itself and bins 18..22 all counted
    # Residuals: h at the spike, -h/4 at each of its 4 neighbours -> h^2 (1 + 4/16).
    expected = h * h * 1.25 / SMOOTH_BINS_MASKED
    assert symbolic(cfg, grid)(mu)["smoothness"].item() == pytest.approx(lam * expected)

    mu = flat()
    mu[0, 60] += h  # inside the H2O window: a sharp line is allowed when mask_strong_lines
    assert symbolic(cfg, grid)(mu)["smoothness"].item() == 0.0
    unmasked = copy.deepcopy(cfg["losses"]["symbolic"])
    unmasked["smoothness"]["mask_strong_lines"] = False
    terms = L.SymbolicLoss(unmasked, grid)(mu)
    assert terms["smoothness"].item() == pytest.approx(lam * h * h * 1.25 / SMOOTH_BINS_ALL)


def test_smoothness_window_one_is_half_second_difference():
    mu = flat()
    mu[0, 20] += 1.0
    # window 1: residual 1 at the spike and -1/2 at each neighbour, over 280 interior AIRS bins.
    assert L.smoothness_loss(mu, 1).item() == pytest.approx(1.5 / 280)
    with pytest.raises(ValueError, match="smoothness window"):
        L.smoothness_loss(mu, 0)


# ---------------------------------------------------------------- seam


def test_seam_step_costs_its_square_and_ramp_costs_nothing(cfg, grid):
    lam = cfg["losses"]["symbolic"]["seam_continuity"]["lambda"]
    s = grid.seam_index
    h = 2e-4
    step = flat()
    step[0, s:] += h
    assert L.seam_continuity_loss(step, s).item() == pytest.approx(h * h)
    assert symbolic(cfg, grid)(step)["seam_continuity"].item() == pytest.approx(lam * h * h)

    g = 1e-5
    ramp = flat()
    ramp[0, 1:] += g * torch.arange(282, dtype=torch.float64)
    assert L.seam_continuity_loss(ramp, s).item() < 1e-24
    ramp_step = ramp.clone()
    ramp_step[0, s:] += h
    assert L.seam_continuity_loss(ramp_step, s).item() == pytest.approx((g + h) ** 2 - g**2)

    # A step one bin before the seam is a neighbour, not the seam: jump g^2 < typical.
    off = ramp.clone()
    off[0, s - 1 :] += h
    assert L.seam_continuity_loss(off, s).item() == 0.0


# ---------------------------------------------------------------- ratio envelopes


def test_ratio_inside_bounds_is_zero(cfg, grid):
    mu = band_spectrum({"H2O": 1e-4, "CH4": 1e-4, "CO2": 0.5e-4})  # ratios 1.0 and 0.5
    assert symbolic(cfg, grid)(mu)["ratio_envelopes"].item() == 0.0


def test_ratio_outside_bounds_costs_squared_excess(cfg, grid):
    lam = cfg["losses"]["symbolic"]["ratio_envelopes"]["lambda"]
    # CH4/H2O = 4 > 3: (S_CH4 - 3 S_H2O)^2 = (1e-4)^2; CO2/H2O = 0.5 is inside.
    mu = band_spectrum({"H2O": 1e-4, "CH4": 4e-4, "CO2": 0.5e-4})
    assert symbolic(cfg, grid)(mu)["ratio_envelopes"].item() == pytest.approx(lam * 1e-8, rel=1e-4)
    # CO2/H2O = 0.05 < 0.1: (0.1 S_H2O - S_CO2)^2 = (0.05e-4)^2; CH4/H2O = 1 is inside.
    mu = band_spectrum({"H2O": 1e-4, "CH4": 1e-4, "CO2": 0.05e-4})
    assert symbolic(cfg, grid)(mu)["ratio_envelopes"].item() == pytest.approx(lam * (0.05e-4) ** 2, rel=1e-3)
    # Without an H2O band the penalty stays the size of the CH4 band squared instead of exploding.
    mu = band_spectrum({"CH4": 2e-4})
    assert symbolic(cfg, grid)(mu)["ratio_envelopes"].item() == pytest.approx(lam * 4e-8, rel=1e-3)


def test_band_strength_is_window_mean_minus_continuum(grid):
    mu = band_spectrum({"H2O": 3e-4})
    mu[0, 0] = 1.0  # FGS1 is not continuum
    sym = L.SymbolicLoss({"ratio_envelopes": {"lambda": 1.0, "pairs": [["CH4", "H2O"]]}}, grid)
    h2o = torch.from_numpy(grid.molecule_mask("H2O"))
    assert L.band_strength(mu, h2o, sym.ratio_continuum).item() == pytest.approx(3e-4)
    assert int(sym.ratio_continuum.sum()) == 282 - 188


def test_ratio_config_errors(grid):
    with pytest.raises(ValueError, match="unknown molecule 'NH3'"):
        L.SymbolicLoss({"ratio_envelopes": {"lambda": 1.0, "pairs": [["NH3", "H2O"]]}}, grid)
    with pytest.raises(ValueError, match="ratio_bounds.H2O_CH4"):
        L.SymbolicLoss({"ratio_envelopes": {"lambda": 1.0, "pairs": [["H2O", "CH4"]]}}, grid)
    with pytest.raises(ValueError, match=r"losses.symbolic.seam_continuity.lambda is missing"):
        L.SymbolicLoss({"seam_continuity": {}}, grid)


# ---------------------------------------------------------------- molecular coherence


def windows_with(shape_fn, amplitude: float) -> torch.Tensor:
    mu = flat()
    for ranges in WINDOWS.values():
        for lo, hi in ranges:
            mu[0, lo : hi + 1] += amplitude * torch.from_numpy(shape_fn(lo, hi))
    return mu


def test_coherence_template_band_and_flat_cost_nothing(cfg, grid):
    sym = symbolic(cfg, grid)
    assert sym(windows_with(gaussian_template, 1.5e-4))["molecular_coherence"].item() < 1e-12
    assert sym(flat())["molecular_coherence"].item() < 1e-20


def test_coherence_dip_costs_its_unexplained_fraction(cfg, grid):
    lam = cfg["losses"]["symbolic"]["molecular_coherence"]["lambda"]
    a, floor = 1e-4, 1e-6
    # A dip of the template's shape has a negative amplitude: all of it is unexplained, so
    # each window costs |x|^2 / (|x|^2 + n floor^2) with x the mean-removed dip.
    expected = []
    for ranges in WINDOWS.values():
        for lo, hi in ranges:
            t = gaussian_template(lo, hi)
            x2 = a * a * np.sum((t - t.mean()) ** 2)
            expected.append(x2 / (x2 + len(t) * floor**2))
    value = symbolic(cfg, grid)(windows_with(gaussian_template, -a))["molecular_coherence"].item()
    assert value == pytest.approx(lam * np.mean(expected))
    assert np.mean(expected) > 0.9


def test_coherence_without_templates_accepts_quadratic_rejects_zigzag(grid):
    def parabola(lo, hi):
        x = np.arange(hi - lo + 1, dtype=float)
        return x * (hi - lo - x)

    def zigzag(lo, hi):
        return (np.arange(hi - lo + 1) % 2).astype(float)

    node = {"molecular_coherence": {"lambda": 1.0, "use_templates": False, "normalize_within_window": True}}
    sym = L.SymbolicLoss(node, grid)
    assert sym(windows_with(parabola, 1e-6))["molecular_coherence"].item() < 1e-12
    assert sym(windows_with(zigzag, 1e-3))["molecular_coherence"].item() > 0.9
    # The template prior rejects a parabola that is not its Gaussian shape, a little.
    assert L.SymbolicLoss({"molecular_coherence": {"lambda": 1.0}}, grid)(windows_with(parabola, 1e-6))[
        "molecular_coherence"
    ].item() > 1e-4


def test_coherence_normalisation_is_scale_free(grid):
    def zigzag(lo, hi):
        return (np.arange(hi - lo + 1) % 2).astype(float)

    norm = L.SymbolicLoss({"molecular_coherence": {"lambda": 1.0, "normalize_within_window": True}}, grid)
    raw = L.SymbolicLoss({"molecular_coherence": {"lambda": 1.0, "normalize_within_window": False}}, grid)
    n1, n2 = (norm(windows_with(zigzag, a))["molecular_coherence"].item() for a in (1e-3, 2e-3))
    r1, r2 = (raw(windows_with(zigzag, a))["molecular_coherence"].item() for a in (1e-3, 2e-3))
    assert n2 == pytest.approx(n1, rel=1e-5)
    assert r2 == pytest.approx(4 * r1)


# ---------------------------------------------------------------- quantiles


def test_quantile_crossing_penalty(cfg, grid):
    lam = cfg["losses"]["symbolic"]["quantile_monotonicity"]["lambda"]
    penalty = cfg["quantile"]["monotonic_penalty"]
    q = torch.zeros(1, N_BINS, 3, dtype=torch.float64)
    q[..., 0], q[..., 1], q[..., 2] = 0.01, 0.02, 0.03
    assert L.quantile_monotonicity_loss(q).item() == 0.0
    q[0, 7, 0] = 0.05  # crosses the median by 0.03
    assert L.quantile_monotonicity_loss(q).item() == pytest.approx(0.03**2 / (283 * 2))
    terms = symbolic(cfg, grid)(flat(), q)
    assert terms["quantile_monotonicity"].item() == pytest.approx(lam * penalty * 0.03**2 / (283 * 2))
    assert "quantile_monotonicity" not in symbolic(cfg, grid)(flat())


def test_pinball_hand_value():
    y = flat(0.0)
    q = torch.zeros(1, N_BINS, 3, dtype=torch.float64)
    q[0, 0, 0] = 0.1  # 0.1 above y at level 0.1: (1 - 0.1) * 0.1
    q[0, 1, 2] = -0.2  # 0.2 below y at level 0.9: 0.9 * 0.2
    expected = (0.9 * 0.1 + 0.9 * 0.2) / (283 * 3)
    assert L.pinball_loss(q, y, [0.1, 0.5, 0.9]).item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="q_list has 2 levels"):
        L.pinball_loss(q, y, [0.1, 0.9])


# ---------------------------------------------------------------- config wiring and the total


def rough_inputs(batch: int = 2):
    gen = torch.Generator().manual_seed(0)
    mu = 0.0147 + 1e-4 * torch.randn(batch, N_BINS, generator=gen, dtype=torch.float64)
    mu[:, 3] = -2e-3
    mu[:, grid_seam() :] += 3e-4
    for lo, hi in WINDOWS["CH4"]:
        mu[:, lo : hi + 1] += 1e-3  # CH4 far stronger than H2O: outside the ratio envelope
    q = mu[..., None] + 1e-4 * torch.randn(batch, N_BINS, 3, generator=gen, dtype=torch.float64)
    return mu, q


def grid_seam() -> int:
    return load_grid().seam_index


def test_composed_lambdas_scale_every_term(cfg, grid):
    mu, q = rough_inputs()
    base = symbolic(cfg, grid)(mu, q)
    assert set(base) == set(L.SYMBOLIC_TERMS)
    for term in L.SYMBOLIC_TERMS:
        assert base[term].item() > 0, term
        lam = cfg["losses"]["symbolic"][term]["lambda"]
        doubled = symbolic(cfg, grid, **{term: 2 * lam})(mu, q)
        for other in L.SYMBOLIC_TERMS:
            factor = 2.0 if other == term else 1.0
            assert doubled[other].item() == pytest.approx(factor * base[other].item()), (term, other)


def test_lambda_zero_is_exact_zero_and_absent_term_is_omitted(cfg, grid):
    mu, _ = rough_inputs()
    terms = symbolic(cfg, grid, seam_continuity=0.0)(mu)
    assert terms["seam_continuity"].item() == 0.0
    node = copy.deepcopy(cfg["losses"]["symbolic"])
    del node["smoothness"]
    node["nonnegativity"]["enable"] = False
    sym = L.SymbolicLoss(node, grid)
    terms = sym(mu)
    assert "smoothness" not in terms and "nonnegativity" not in terms
    assert sym.total(terms).item() == pytest.approx(sum(t.item() for t in terms.values()))
    assert sym.total({}).item() == 0.0


def test_total_loss_sums_terms_and_scales_symbolic(cfg, grid):
    mu, q = rough_inputs()
    sigma = torch.full_like(mu, 1e-4)
    y = mu.detach() + 5e-5
    total, terms = L.total_loss(mu, sigma, y, cfg["losses"], grid, q, quantile_cfg=cfg["quantile"])
    assert set(terms) == {"gll", "pinball", *L.SYMBOLIC_TERMS}
    assert total.item() == pytest.approx(sum(t.item() for t in terms.values()))
    expected_gll = L.gaussian_nll(mu, sigma, y, weights=L.bin_weights(57.846)).item()
    assert terms["gll"].item() == pytest.approx(cfg["losses"]["gll_weight"] * expected_gll)
    _, half = L.total_loss(
        mu, sigma, y, cfg["losses"], grid, q, symbolic_weight_scale=0.5, quantile_cfg=cfg["quantile"]
    )
    for term in L.SYMBOLIC_TERMS:
        assert half[term].item() == pytest.approx(0.5 * terms[term].item())
    assert half["gll"].item() == pytest.approx(terms["gll"].item())
    with pytest.raises(ValueError, match="without q_list"):
        L.total_loss(mu, sigma, y, cfg["losses"], grid, q)


def test_symbolic_disabled_leaves_only_gll(cfg, grid):
    mu, _ = rough_inputs()
    sigma = torch.full_like(mu, 1e-4)
    losses = copy.deepcopy(cfg["losses"])
    losses["symbolic"]["enable"] = False
    total, terms = L.total_loss(mu, sigma, mu.detach(), losses, grid)
    assert list(terms) == ["gll"]
    assert total.item() == pytest.approx(terms["gll"].item())


def test_gradients_flow_without_nan(cfg, grid):
    # All zeros is the worst case for the eps-guarded terms (flat windows, zero band strengths).
    mu = torch.zeros(2, N_BINS, requires_grad=True)
    sigma = torch.ones(2, N_BINS, requires_grad=True)
    q = torch.zeros(2, N_BINS, 3, requires_grad=True)
    total, terms = L.total_loss(mu, sigma, torch.zeros(2, N_BINS), cfg["losses"], grid, q, quantile_cfg=cfg["quantile"])
    assert torch.isfinite(total)
    total.backward()
    for name, t in (("mu", mu), ("sigma", sigma), ("quantiles", q)):
        assert t.grad is not None and torch.isfinite(t.grad).all(), name

    rough, rq = rough_inputs()
    rough = rough.float().requires_grad_(True)
    rq = rq.float().requires_grad_(True)
    sigma = torch.full_like(rough, 1e-4)
    total, _ = L.total_loss(rough, sigma, rough.detach() + 1e-5, cfg["losses"], grid, rq, quantile_cfg=cfg["quantile"])
    total.backward()
    assert torch.isfinite(rough.grad).all() and rough.grad.abs().sum() > 0
    assert torch.isfinite(rq.grad).all() and rq.grad.abs().sum() > 0


def test_symbolic_unit_rescales_the_squared_terms(grid):
    cfg = {"gll_weight": 1.0, "symbolic": {"smoothness": {"lambda": 1.0, "window": 2}}}
    mu = torch.zeros(2, 283)
    mu[:, 20] = 2e-4  # a 200 ppm spike outside the molecule windows
    y, sigma = torch.zeros(2, 283), torch.full((2, 283), 1e-4)
    raw = L.V50Loss(cfg, grid)(mu, sigma, y)[1]["smoothness"]
    scaled = L.V50Loss({**cfg, "symbolic_unit": 1e-4}, grid)(mu, sigma, y)[1]["smoothness"]
    assert float(scaled) == pytest.approx(float(raw) / 1e-8, rel=1e-4) and float(scaled) > 1e-3
    with pytest.raises(ValueError, match="symbolic_unit"):
        L.V50Loss({**cfg, "symbolic_unit": 0.0}, grid)
