"""Explanations: Shapley efficiency and dummy groups, IG completeness, attention edges, the files
explain_planet writes and the switches that stop them, and explain_from_checkpoint on a tiny LCDIR."""

from __future__ import annotations

import json
import math

import batman
import numpy as np
import pandas as pd
import pytest
import torch

from spectramind.bins import N_AIRS, N_BINS, wavelengths
from spectramind.config import compose
from spectramind.data.features import ModelInputs
from spectramind.data.lightcurves import LightCurves, fgs1_feature_matrix, visit_path
from spectramind.model.explain import (
    ExplainOptions,
    attention_top_edges,
    explain_from_checkpoint,
    explain_planet,
    integrated_gradients,
    node_importance,
    shap_groups,
)
from spectramind.model.v50 import SpectraMindV50, model_config_from

# The small preset shrunk to ~9k parameters: one SHAP permutation (292 forwards) takes ~0.4 s.
TINY = [
    "model=small",
    "model.encoders.fgs1_mamba.d_model=16",
    "model.encoders.fgs1_mamba.d_state=4",
    "model.encoders.fgs1_mamba.n_layers=1",
    "model.encoders.fgs1_mamba.proj_out=16",
    "model.encoders.airs_gnn.hidden_dim=16",
    "model.encoders.airs_gnn.out_dim=16",
    "model.encoders.airs_gnn.n_layers=2",
    "model.fusion.dim=32",
    "model.fusion.hidden=16",
    "model.decoders.mu_head.hidden=16",
    "model.decoders.sigma_head.hidden=16",
    "data.features.fgs1_steps=16",
    "+explainability.shap.n_samples=1",
]
STEPS = 16


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def cfg():
    return compose(TINY)


@pytest.fixture(scope="module")
def model(cfg) -> SpectraMindV50:
    torch.manual_seed(0)
    return SpectraMindV50(model_config_from(cfg)).eval()


@pytest.fixture(scope="module")
def x() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(STEPS, 6, generator=gen), torch.randn(N_BINS, 8, generator=gen)


# ------------------------------------------------------------------ SHAP


@pytest.mark.parametrize("method,n_samples", [("sampling", 2), ("kernel", 400)])
def test_shap_values_are_efficient(model, x, method, n_samples):
    res = shap_groups(model, *x, n_fgs1_segments=4, n_samples=n_samples, method=method)
    assert res.values.shape == (N_BINS + 4,) and np.isfinite(res.values).all()
    with torch.no_grad():
        out = model(x[0][None], x[1][None])
        zero = model(torch.zeros(1, STEPS, 6), torch.zeros(1, N_BINS, 8))
    # f is the white target: the mean mu over the AIRS bins, at the inputs and at the zero baseline.
    assert res.fx == pytest.approx(float(out.mu[0, 1:].mean()), rel=1e-5)
    assert res.f_baseline == pytest.approx(float(zero.mu[0, 1:].mean()), rel=1e-5)
    assert abs(res.fx - res.f_baseline) > 5e-5  # the property below is not vacuous (mu is ~1e-2)
    gap = res.values.sum() - (res.fx - res.f_baseline)
    assert abs(gap) <= res.efficiency_tolerance
    # The tolerance is the stated one: 1e-4 (sampling) / 1e-3 (kernel) of the scale, not looser.
    scale = max(abs(res.fx), abs(res.f_baseline), np.abs(res.values).sum())
    assert res.efficiency_tolerance <= {"sampling": 1e-4, "kernel": 1e-3}[method] * scale + 1e-8


def test_top_bins_are_sorted_bin_groups(model, x):
    res = shap_groups(model, *x, n_fgs1_segments=4, n_samples=1)
    top = res.top_bins(5)
    assert len(top) == 5 and all(g.kind == "bin" and g.bin == g.group < N_BINS for g in top)
    mags = [abs(g.value) for g in top]
    assert mags == sorted(mags, reverse=True)
    assert mags[0] == pytest.approx(np.abs(res.bin_values).max())
    assert top[0].wavelength_um == pytest.approx(wavelengths()[top[0].bin])
    groups = res.top_groups(N_BINS + 4)
    assert {g.kind for g in groups} == {"bin", "fgs1_segment"}
    assert [g.steps for g in groups if g.kind == "fgs1_segment"] and res.segments == [(0, 4), (4, 8), (8, 12), (12, 16)]


def test_a_group_equal_to_its_baseline_gets_zero(model, x):
    fgs1, nodes = x[0].clone(), x[1].clone()
    dummy = 57
    nodes[dummy] = 0.0  # present or absent, the zero baseline gives the same inputs
    fgs1[:4] = 0.0  # so does FGS1 segment 0 (steps 0..3)
    res = shap_groups(model, fgs1, nodes, n_fgs1_segments=4, n_samples=2, target=dummy)
    assert res.target == dummy and res.output_bins == [dummy]
    scale = np.abs(res.values).max()
    assert scale > 0
    assert abs(res.bin_values[dummy]) <= 1e-6 * scale
    assert abs(res.segment_values[0]) <= 1e-6 * scale
    assert all(g.bin != dummy for g in res.top_bins(10))


def test_reference_planet_baselines(model, x):
    # A reference planet identical to the inputs leaves nothing to explain.
    same = shap_groups(model, *x, n_fgs1_segments=4, n_samples=1, baseline=_inputs(x))
    assert same.fx == same.f_baseline and np.abs(same.values).max() <= 1e-7
    # The mean baseline (every bin at the average features) still attributes completely.
    res = integrated_gradients(model, *x, baseline="mean", n_steps=64)
    assert res.airs_nodes.shape == (N_BINS, 8) and res.fgs1.shape == (STEPS, 6)
    total = float(res.fgs1.sum() + res.airs_nodes.sum())
    assert res.delta <= 0.01 * abs(total) and abs(total) > 1e-3  # mu is in (Rp/Rs)^2, ~1e-2
    with pytest.raises(ValueError, match="baseline"):
        node_importance(model, *x, baseline="median")


def test_shap_rejects_bad_arguments(model, x):
    with pytest.raises(ValueError, match="method"):
        shap_groups(model, *x, method="exact")
    with pytest.raises(ValueError, match="n_fgs1_segments"):
        shap_groups(model, *x, n_fgs1_segments=STEPS + 1)
    with pytest.raises(ValueError, match="target"):
        shap_groups(model, *x, target="red")
    with pytest.raises(ValueError, match="output_bins"):
        shap_groups(model, *x, output_bins=[300])


# ------------------------------------------------------------------ gradients and attention


@pytest.mark.parametrize("method", ["ig", "gxi"])
@pytest.mark.parametrize("target", ["mu", "sigma"])
def test_node_importance_shape_and_finite(model, x, method, target):
    imp = node_importance(model, *x, target=target, method=method)
    assert imp.shape == (N_BINS,) and torch.isfinite(imp).all() and imp.abs().sum() > 0


def test_node_importance_per_output_bin(model, x):
    rows = node_importance(model, *x, method="gxi", output_bins=[3, 200], per_output=True)
    assert rows.shape == (2, N_BINS)
    summed = node_importance(model, *x, method="gxi", output_bins=[3, 200])
    # Input x gradient is linear in the target: the per-bin rows add up to the summed target's.
    torch.testing.assert_close(rows.sum(0), summed, rtol=1e-4, atol=1e-6)
    mags = node_importance(model, *x, method="gxi", aggregate="abs")
    assert (mags >= 0).all() and (mags >= node_importance(model, *x, method="gxi").abs() - 1e-6).all()


def test_integrated_gradients_are_complete(model, x):
    res = integrated_gradients(model, *x, n_steps=64)
    with torch.no_grad():
        at_x = model(x[0][None], x[1][None]).mu.sum()
        at_zero = model(torch.zeros(1, STEPS, 6), torch.zeros(1, N_BINS, 8)).mu.sum()
    diff = float(at_x - at_zero)
    total = float(res.fgs1.sum() + res.airs_nodes.sum())
    assert abs(diff) > 0.01  # mu in (Rp/Rs)^2 summed over 283 bins
    assert res.delta <= 0.01 * abs(diff)
    assert total == pytest.approx(diff, rel=0.01)
    # node_importance with aggregate="sum" is the same attribution, summed over the 8 features.
    imp = node_importance(model, *x, n_steps=64)
    torch.testing.assert_close(imp, res.airs_nodes.sum(-1), rtol=1e-4, atol=1e-8)


def test_attention_top_edges_sorted_and_bounded(model, x):
    with torch.no_grad():
        out = model(x[0][None], x[1][None])
    edges = model.edge_index_with_loops
    top = attention_top_edges(out, edges, k=7)
    layers, heads = out.gat_attention.shape[1], out.gat_attention.shape[3]
    assert [(t["layer"], t["head"]) for t in top] == [(l, h) for l in range(layers) for h in range(heads)]
    wl = wavelengths()
    for t in top:
        w = [e["weight"] for e in t["edges"]]
        assert len(w) == 7 and w == sorted(w, reverse=True) and all(0.0 <= v <= 1.0 for v in w)
        # The largest weight of the layer/head is the first one.
        assert w[0] == pytest.approx(float(out.gat_attention[0, t["layer"], :, t["head"]].max()))
        for e in t["edges"]:
            assert e["src_wavelength_um"] == pytest.approx(wl[e["src"]])
            assert e["dst_wavelength_um"] == pytest.approx(wl[e["dst"]])
    no_loops = attention_top_edges(out, edges, k=50, self_loops=False)
    assert all(e["src"] != e["dst"] for t in no_loops for e in t["edges"])
    with pytest.raises(ValueError, match="edge_index_with_loops"):
        attention_top_edges(out, edges[:, :-1], k=3)


# ------------------------------------------------------------------ files


def _inputs(x: tuple[torch.Tensor, torch.Tensor], pid: int = 5) -> ModelInputs:
    return ModelInputs(planet_id=pid, fgs1=x[0].numpy(), airs_nodes=x[1].numpy())


def test_explain_planet_writes_json_and_pngs(model, x, cfg, tmp_path):
    opts = ExplainOptions.from_config(cfg)
    assert opts.shap_samples == 1 and opts.topk_bins == 24 and opts.shap and opts.attention
    paths = explain_planet(model, _inputs(x), cfg, tmp_path / "5", 5)
    names = {
        "json": "explain.json",
        "attention_png": "attention.png",
        "node_importance_png": "node_importance.png",
        "shap_png": "shap_topk.png",
    }
    assert {k: p.name for k, p in paths.items()} == names
    for p in paths.values():
        assert p.parent == tmp_path / "5" and p.stat().st_size > 0
    assert all(paths[k].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for k in names if k.endswith("png"))
    report = json.loads(paths["json"].read_text())
    assert report["planet_id"] == 5 and len(report["mu"]) == len(report["sigma"]) == N_BINS
    top = report["shap"]["top_bins"]
    assert len(top) == 24 and all(t["wavelength_um"] == pytest.approx(wavelengths()[t["bin"]], rel=1e-6) for t in top)
    assert abs(report["shap"]["efficiency_gap"]) <= report["shap"]["efficiency_tolerance"]
    assert len(report["attention"]["top_edges"]) == report["attention"]["layers"] * report["attention"]["heads"]
    assert len(report["node_importance"]["values"]) == N_BINS
    # capture_latents: airs_nodes true, fgs1_steps false (configs/model/explainability.yaml).
    assert np.array(report["latents"]["airs_nodes"]).shape == (N_BINS, 32)
    assert "fgs1_steps" not in report["latents"]


def test_explain_planet_respects_switches(model, x, cfg, tmp_path):
    off = compose(TINY + ["explainability.shap.enable=false", "explainability.shap.save_png=false",
                          "explainability.capture_latents.fgs1_steps=true"])
    paths = explain_planet(model, _inputs(x), off, tmp_path / "a", 5)
    assert set(paths) == {"json"} and not list((tmp_path / "a").glob("*.png"))
    report = json.loads(paths["json"].read_text())
    assert "shap" not in report and "attention" in report
    assert np.array(report["latents"]["fgs1_steps"]).shape == (STEPS, 16)

    # The model file's switches count too: export_attention false drops attention and its PNG.
    no_json = compose(TINY + ["explainability.shap.save_json=false", "model.explainability.export_attention=false",
                              "model.explainability.export_node_importance=false"])
    paths = explain_planet(model, _inputs(x), no_json, tmp_path / "b", 5)
    assert set(paths) == {"shap_png"} and not (tmp_path / "b" / "explain.json").exists()
    with pytest.raises(ValueError, match="planet_id"):
        explain_planet(model, _inputs(x, pid=6), cfg, tmp_path / "c", 5)


# ------------------------------------------------------------------ from a checkpoint

T_AIRS, T_FGS1, VISIT_H, DEPTH = 60, 180, 6.0, 0.01
STAR = {"Rs": 1.0, "Ms": 1.0, "Ts": 5700.0, "Mp": 1.0, "e": 0.0, "P": 3.0, "sma": 8.8, "i": 88.0}


def _visit(pid: int) -> LightCurves:
    rng = np.random.default_rng(pid)
    p = batman.TransitParams()
    p.t0, p.per, p.rp, p.a, p.inc, p.ecc, p.w = 3.0, 72.0, math.sqrt(DEPTH), 8.8, 88.0, 0.0, 90.0
    p.limb_dark, p.u = "quadratic", [0.2, 0.2]
    ta = (np.arange(T_AIRS) + 0.5) * VISIT_H / T_AIRS
    tf = (np.arange(T_FGS1) + 0.5) * VISIT_H / T_FGS1
    star = np.linspace(1200.0, 600.0, N_AIRS)[:, None]
    airs = star * batman.TransitModel(p, ta).light_curve(p)[None] * (1 + 3e-4 * rng.standard_normal((N_AIRS, T_AIRS)))
    fgs1 = 5e4 * batman.TransitModel(p, tf).light_curve(p) * (1 + 1e-4 * rng.standard_normal(T_FGS1))
    cx, cy = 0.01 * rng.standard_normal((2, T_FGS1))
    return LightCurves(
        planet_id=pid, visit=0, fgs1=fgs1_feature_matrix(fgs1, tf, cx, cy), fgs1_err=np.full(T_FGS1, 5.0),
        fgs1_time_h=tf, airs_flux=airs, airs_err=star * 3e-4 * np.ones((1, T_AIRS)), airs_time_h=ta,
        airs_trace=0.01 * rng.standard_normal((T_AIRS, 2)), meta={"split": "test", "source": "test_explain"},
    )


def test_explain_from_checkpoint(model, cfg, tmp_path):
    lcdir = tmp_path / "lc"
    _visit(42).save(visit_path(lcdir, "test", 42, 0))
    pd.DataFrame([{"planet_id": 42, **STAR}]).to_csv(lcdir / "test_star_info.csv", index=False)
    ckpt = tmp_path / "best.pt"
    model.save_checkpoint(ckpt)
    paths = explain_from_checkpoint(ckpt, lcdir, 42, cfg, out_dir=tmp_path / "out" / "42")
    assert set(paths) == {"json", "attention_png", "node_importance_png", "shap_png"}
    report = json.loads(paths["json"].read_text())
    assert report["planet_id"] == 42 and np.isfinite(report["mu"]).all()
    assert report["shap"]["n_samples"] == 1  # the cfg's +explainability.shap.n_samples reached SHAP

    with pytest.raises(ValueError, match=rf"planet 43 .*{lcdir}"):
        explain_from_checkpoint(ckpt, lcdir, 43, cfg)
    with pytest.raises(ValueError, match="planet 42"):
        explain_from_checkpoint(ckpt, lcdir, 42, cfg, split="train")


def test_explain_from_checkpoint_default_dir_is_export_dir(model, tmp_path):
    lcdir = tmp_path / "lc"
    _visit(7).save(visit_path(lcdir, "train", 7, 0))  # no star info: the baseline falls back
    ckpt = tmp_path / "best.pt"
    model.save_checkpoint(ckpt)
    cfg = compose(TINY + ["explainability.shap.enable=false", "explainability.shap.save_png=false",
                          f"explainability.export_dir={tmp_path / 'exp'}"])
    paths = explain_from_checkpoint(ckpt, lcdir, 7, cfg)
    assert paths == {"json": tmp_path / "exp" / "7" / "explain.json"}


def test_explain_command(model, tmp_path, capsys):
    from spectramind.cli import main

    lcdir = tmp_path / "lc"
    _visit(9).save(visit_path(lcdir, "train", 9, 0))
    pd.DataFrame([{"planet_id": 9, **STAR}]).to_csv(lcdir / "train_star_info.csv", index=False)
    ckpt = tmp_path / "best.pt"
    model.save_checkpoint(ckpt)
    out = tmp_path / "exp"
    args = ["explain", "--ckpt", str(ckpt), "--data", str(lcdir), "--planet", "9", "--out", str(out), *TINY]
    assert main(args) == 0
    assert json.loads((out / "explain.json").read_text())["planet_id"] == 9
    assert (out / "shap_topk.png").stat().st_size > 0
    assert main([*args[:5], "--planet", "10", "--out", str(out), *TINY]) == 2
    assert "planet 10" in capsys.readouterr().err
