"""Fitting the post-hoc calibration: options, temperature optimum, COREL, report, checkpoint round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spectramind.config import compose
from spectramind.model.calibration import CalibratedV50
from spectramind.model.v50 import SpectraMindV50, model_config_from
from train.calibrate import (
    CalibrationOptions,
    calibrate_checkpoint,
    calibration_options,
    fit_calibration,
    reliability_diagram,
    report_markdown,
)

MODEL_CONFIG = {
    "model": {
        "encoders": {"airs_gnn": {"graph": {}, "edge_features": {"dims": 4}}},
        "calibration": {"corel": {"gnn_backend": "gat", "hidden_dim": 16, "n_layers": 2, "dropout": 0.0}},
    },
    "symbolic": {},
}
WL = np.linspace(-1.0, 1.0, 283)


def _planets(n: int, seed: int = 0):
    """Truth y ~ N(mu, true_sigma), true_sigma ~100 ppm varying per element; airs_nodes carry mu and wavelength."""
    rng = np.random.default_rng(seed)
    true_sigma = 1e-4 * np.exp(rng.normal(0.0, 0.3, (n, 283)))
    mu = 0.015 + 1e-3 * rng.normal(size=(n, 283))
    y = mu + true_sigma * rng.normal(size=(n, 283))
    nodes = rng.normal(size=(n, 283, 8))
    nodes[..., 0], nodes[..., 7] = mu / 1e-2, WL
    return mu, true_sigma, y, nodes


def _options(**over) -> CalibrationOptions:
    temp = {"max_iters": 800, **over.pop("temperature", {})}
    return CalibrationOptions.from_mapping({"temperature": temp, "corel": {"enable": False, **over.pop("corel", {})}})


def test_options_from_both_layouts_and_checks() -> None:
    base = calibration_options(compose(["train=base"]).train)
    standalone = calibration_options(compose(["train=calibration"]).train)
    assert (base.temperature.max_iters, base.corel.epochs) == (500, 20)
    assert (standalone.temperature.max_iters, standalone.corel.epochs) == (800, 30)
    assert standalone.corel.optimizer.lr == pytest.approx(1e-3) and base.corel.holdout_fraction == 0.2
    with pytest.raises(ValueError, match=r"train.calibration.corel.holdout_fraction must be in \(0, 1\)"):
        CalibrationOptions.from_mapping({"corel": {"holdout_fraction": 1.0}})
    with pytest.raises(ValueError, match="train.calibration.corel.optimizer.name"):
        CalibrationOptions.from_mapping({"corel": {"optimizer": {"name": "sgd"}}})
    with pytest.raises(ValueError, match="train.calibration.temperature: unknown option 'max_iter'"):
        CalibrationOptions.from_mapping({"temperature": {"max_iter": 3}})
    with pytest.raises(ValueError, match="train: no calibration options"):
        calibration_options({"epochs": {}})


def test_temperature_fixes_overconfidence() -> None:
    mu, true_sigma, y, nodes = _planets(64)
    result = fit_calibration(mu, true_sigma / 3, y, nodes, _options(), MODEL_CONFIG, seed=0)
    rep = result.report
    assert (rep["n_fit"], rep["n_holdout"], rep["holdout_is_fit"]) == (52, 12, False)
    assert rep["before"]["coverage_90"] < 0.5
    assert abs(rep["after"]["coverage_90"] - 0.9) < 0.05
    assert rep["after"]["score"] > rep["before"]["score"] + 0.2 and rep["after"]["gll"] < rep["before"]["gll"]
    # The NLL optimum of one scale T on z = (y - mu) / sigma is sqrt(weighted mean z^2) over the fit planets.
    fit = np.setdiff1d(np.arange(64), rep["holdout_index"])
    z2 = ((y - mu) / (true_sigma / 3))[fit] ** 2
    w = np.ones(283)
    w[0] = 57.846
    closed = np.sqrt((z2 * w).sum() / (w.sum() * len(fit)))
    assert abs(rep["temperature"]["global"] / closed - 1) < 0.01
    assert 2.8 < closed < 3.2


def test_corel_fixes_wavelength_dependent_miscalibration() -> None:
    mu, true_sigma, y, nodes = _planets(64, seed=1)
    sigma = true_sigma * np.where(WL < 0, 1 / 3, 2.0)
    mu_t, true_t, y_t, nodes_t = _planets(200, seed=2)
    sigma_t = true_t * np.where(WL < 0, 1 / 3, 2.0)

    def per_bin_error(corel: bool) -> float:
        opts = _options(
            temperature={"per_bin": False},
            corel={"enable": corel, "epochs": 12, "batch": 16, "optimizer": {"lr": 1e-2}},
        )
        result = fit_calibration(mu, sigma, y, nodes, opts, MODEL_CONFIG, seed=0)
        assert result.report["corel"]["kept"] is corel
        # Per-bin coverage needs many planets to rise above binomial noise: score fresh ones.
        with torch.no_grad():
            s2 = result.calibrator(*(torch.as_tensor(a, dtype=torch.float32) for a in (mu_t, sigma_t, nodes_t))).numpy()
        inside = np.abs(y_t - mu_t) <= 1.6449 * s2
        return float(np.abs(inside.mean(0) - 0.9).mean())

    global_only, with_corel = per_bin_error(False), per_bin_error(True)
    assert global_only > 0.08
    assert with_corel < 0.5 * global_only


def test_tiny_set_reports_on_fit_planets(tmp_path) -> None:
    mu, true_sigma, y, nodes = _planets(3)
    rep = fit_calibration(mu, true_sigma, y, nodes, _options(), MODEL_CONFIG, seed=0).report
    assert rep["holdout_is_fit"] and rep["n_fit"] == rep["n_holdout"] == 3 and "< 1" in rep["note"]
    table = report_markdown(rep)
    assert "| coverage_90 |" in table and "| score |" in table and "temperature: global" in table
    png = reliability_diagram(mu, true_sigma / 2, true_sigma, y, tmp_path / "rel.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Seeded: the same fit twice gives the same COREL, and the caller's RNG is left alone.
    opts = _options(corel={"enable": True, "epochs": 1, "batch": 2})
    expected = torch.manual_seed(5) and torch.rand(1)
    torch.manual_seed(5)
    reports = [fit_calibration(mu, true_sigma / 2, y, nodes, opts, MODEL_CONFIG, seed=3).report for _ in "ab"]
    assert torch.equal(torch.rand(1), expected)
    assert reports[0]["corel"] == reports[1]["corel"] and np.isfinite(reports[0]["corel"]["final_loss"])
    with pytest.raises(ValueError, match="airs_nodes must have shape"):
        fit_calibration(mu, true_sigma, y, nodes[..., :5], _options(), MODEL_CONFIG)


def test_calibrate_checkpoint_round_trip(tmp_path) -> None:
    cfg = compose(["model=small", "model.calibration.corel.hidden_dim=8"])
    torch.manual_seed(0)
    model = SpectraMindV50(model_config_from(cfg))
    src, dst = tmp_path / "best.pt", tmp_path / "calibrated.pt"
    model.save_checkpoint(src, meta={"epoch": 3})
    mu, true_sigma, y, nodes = _planets(10)
    opts = _options(corel={"enable": True, "epochs": 2, "batch": 4})
    result = calibrate_checkpoint(src, mu, true_sigma / 2, y, nodes, opts, dst, seed=0)
    ckpt = torch.load(dst, weights_only=True)
    assert ckpt["meta"] == {"epoch": 3} and ckpt["calibration"]["version"] == 1
    assert ckpt["calibration"]["report"]["n_fit"] == result.report["n_fit"] == 8
    log_t = ckpt["calibration"]["temperature"]["log_t_global"]
    assert log_t == pytest.approx(np.log(result.report["temperature"]["global"])) and log_t > 0.3
    loaded = CalibratedV50.from_checkpoint(dst).eval()
    args = tuple(torch.as_tensor(a, dtype=torch.float32) for a in (mu, true_sigma / 2, nodes))
    with torch.no_grad():
        assert torch.allclose(loaded.calibrator(*args), result.calibrator(*args))
    assert not list(tmp_path.glob("*.tmp*"))
