"""Fitting the post-hoc sigma calibration (temperature scaling, then COREL) on validation predictions.

Inputs: the trained model's mu, sigma (N, 283) on N validation planets, labels y, airs_nodes
(N, 283, 8), physical units. A seeded split by ``corel.holdout_fraction``: both stages fit on the
rest, the report compares the holdout before and after (with N * holdout_fraction < 1 the fit
planets are the holdout too, and the report says so).

Temperature (``temperature``): minimise the ADC-weighted Gaussian NLL ``gaussian_nll(0, sigma_T,
y - mu, weights=bin_weights())`` with Adam (``lr``, at most ``max_iters`` steps each), first over
log_t_global alone, then over log_t_bin (if ``per_bin``) plus the penalty ``(prior_planets / n_fit)
* sum_j w_j log_t_bin_j^2 / sum_j w_j``: each planet adds curvature ~2 w_j / sum w to bin j's loss
at the optimum, so the penalty acts as ``prior_planets`` (default 10) pseudo-planets at the global
temperature and shrinks a per-bin estimate by n_fit / (n_fit + prior_planets) (a bin's scale from
10 residuals is ~25 % uncertain). A stage stops once the loss changed by < ``tol`` for ``PATIENCE``
steps in a row.

COREL (``corel``): AdamW, ``epochs`` epochs of shuffled mini-batches of ``batch`` fit planets on
the temperature-scaled sigma, with sigma' = sigma_T exp(g), z = (y - mu) / sigma':

    loss = COVERAGE_WEIGHT * (mean sigmoid((z_q sigma' - |y - mu|) / (tau sigma')) - target)^2
         + mean_j (log mean_i z_ij^2)^2
         + [GLL(sigma') - GLL(sigma_T)]

z_q = Phi^-1(1/2 + target/2) (1.645 for 0.9), tau = ``COVERAGE_TAU``; mean_i over the planets
of the batch, mean_j over the 283 bins (the per-bin second moment of z pushed to 1); GLL the
weighted NLL above, taken relative to the temperature-only GLL so the term starts at 0 and
any increase of the metric's likelihood is paid for. COREL is kept only if it lowers that GLL
on the fit planets (eval mode); otherwise the calibrator is temperature-only (report
``corel.kept``). Cost: the GAT's dense 283 x 283 aggregation, ~3 (hidden_dim 32) to ~10 ms (128)
per planet and step on one CPU thread.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import norm

from spectramind.bins import N_BINS
from spectramind.metric import score_arrays
from spectramind.model.calibration import COREL, Calibrator, TemperatureScaling, graph_for
from spectramind.model.losses import bin_weights, gaussian_nll
from spectramind.model.v50 import load_checkpoint_dict
from spectramind.options import check_rules, coerce_fields, options_from

__all__ = ["CalibrationOptions", "CalibrationResult", "calibrate_checkpoint", "calibration_options", "fit_calibration"]
__all__ += ["CorelOptions", "TemperatureOptions", "coverage", "reliability_diagram", "report_markdown"]

PATIENCE = 10
COVERAGE_TAU = 0.1
COVERAGE_WEIGHT = 10.0
REPORT_LEVELS = (0.68, 0.90, 0.95)
RELIABILITY_LEVELS = np.round(np.append(np.arange(0.05, 0.951, 0.05), 0.99), 2)


@dataclass
class TemperatureOptions:
    enable: bool = True
    max_iters: int = 500
    lr: float = 1e-2
    tol: float = 1e-6
    per_bin: bool = True
    prior_planets: float = 10.0


@dataclass
class CorelOptimizerOptions:
    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0


@dataclass
class CorelOptions:
    enable: bool = True
    coverage_target: float = 0.9
    holdout_fraction: float = 0.2
    epochs: int = 20
    batch: int = 256
    optimizer: CorelOptimizerOptions = field(default_factory=CorelOptimizerOptions)


_RULES = {  # (field, ok, rule) per options class, for spectramind.options.check_rules
    TemperatureOptions: lambda o: (("max_iters", o.max_iters >= 1, ">= 1"), ("lr", o.lr > 0, "> 0"),
                                   ("tol", o.tol >= 0, ">= 0"), ("prior_planets", o.prior_planets >= 0, ">= 0")),
    CorelOptimizerOptions: lambda o: (("name", o.name == "adamw", "'adamw'"), ("lr", o.lr > 0, "> 0"),
                                      ("weight_decay", o.weight_decay >= 0, ">= 0")),
    CorelOptions: lambda o: (("coverage_target", 0 < o.coverage_target < 1, "in (0, 1)"),
                             ("holdout_fraction", 0 < o.holdout_fraction < 1, "in (0, 1)"),
                             ("epochs", o.epochs >= 0, ">= 0"), ("batch", o.batch >= 1, ">= 1")),
}


def _checked(cls: type, mapping: Any, section: str, **given: Any) -> Any:
    opt = options_from(cls, mapping, section, **given)
    coerce_fields(opt, section)
    check_rules(section, opt, _RULES[cls](opt))
    return opt


@dataclass
class CalibrationOptions:
    """``train.calibration`` of the base-derived presets, or ``cfg.train`` of ``train=calibration``."""

    temperature: TemperatureOptions = field(default_factory=TemperatureOptions)
    corel: CorelOptions = field(default_factory=CorelOptions)

    @classmethod
    def from_mapping(cls, node: Mapping[str, Any] | None, section: str = "train.calibration") -> CalibrationOptions:
        node = dict(node or {})
        unknown = sorted(set(node) - {"temperature", "corel", "run_after_supervised"})
        if unknown:
            raise ValueError(f"{section}: unknown option {unknown[0]!r}; known: corel, run_after_supervised, "
                             "temperature")
        corel = dict(node.get("corel") or {})
        optim = _checked(CorelOptimizerOptions, corel.pop("optimizer", None), f"{section}.corel.optimizer")
        return cls(
            _checked(TemperatureOptions, node.get("temperature"), f"{section}.temperature"),
            _checked(CorelOptions, corel, f"{section}.corel", optimizer=optim),
        )


def calibration_options(cfg_train: Mapping[str, Any]) -> CalibrationOptions:
    """Options from ``cfg.train``: its ``calibration`` block, or its top level under ``train=calibration``."""
    if "calibration" in cfg_train:
        return CalibrationOptions.from_mapping(cfg_train["calibration"], "train.calibration")
    node = {k: cfg_train[k] for k in ("temperature", "corel") if k in cfg_train}
    if node:
        return CalibrationOptions.from_mapping(node, "train")
    raise ValueError("train: no calibration options (neither train.calibration nor train.temperature/train.corel)")


@dataclass
class CalibrationResult:
    calibrator: Calibrator
    report: dict


def _tensor(name: str, x: Any, shape: tuple[int, ...]) -> torch.Tensor:
    t = x.detach().cpu().double() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float64))
    if tuple(t.shape[1:]) != shape or t.shape[0] < 1:
        raise ValueError(f"{name} must have shape (n_planets, {', '.join(map(str, shape))}), got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: {int((~torch.isfinite(t)).sum())} non-finite values")
    return t


def coverage(resid: np.ndarray | torch.Tensor, sigma: np.ndarray | torch.Tensor, level: float) -> float:
    """Fraction of |y - mu| inside the central ``level`` Gaussian interval of half-width z sigma."""
    z = norm.ppf(0.5 + level / 2)
    return float(np.mean(np.abs(np.asarray(resid)) <= z * np.asarray(sigma)))


def _minimise(params: list[torch.Tensor], loss_fn, opt: TemperatureOptions) -> int:
    optim = torch.optim.Adam(params, lr=opt.lr)
    prev, calm = math.inf, 0
    for step in range(1, opt.max_iters + 1):
        optim.zero_grad()
        loss = loss_fn()
        loss.backward()
        optim.step()
        calm = calm + 1 if abs(prev - loss.item()) < opt.tol else 0
        if calm >= PATIENCE:
            return step
        prev = loss.item()
    return opt.max_iters


def _fit_temperature(resid: torch.Tensor, sigma: torch.Tensor, w: torch.Tensor, opt: TemperatureOptions):
    ts = TemperatureScaling().to(torch.float64)
    zero = torch.zeros_like(resid)

    def nll() -> torch.Tensor:
        return gaussian_nll(zero, ts(sigma), resid, weights=w)

    it_global = _minimise([ts.log_t_global], nll, opt)
    it_bin, shrink = 0, opt.prior_planets / resid.shape[0]
    if opt.per_bin:
        it_bin = _minimise([ts.log_t_bin], lambda: nll() + shrink * (w * ts.log_t_bin**2).sum() / w.sum(), opt)
    ts.requires_grad_(False)
    return ts.float(), {"iters_global": it_global, "iters_bin": it_bin}


def _corel_loss(resid: torch.Tensor, s_t: torch.Tensor, g: torch.Tensor, w: torch.Tensor, target: float):
    s2 = s_t * torch.exp(g)
    z_q = float(norm.ppf(0.5 + target / 2))
    soft = torch.sigmoid((z_q * s2 - resid.abs()) / (COVERAGE_TAU * s2)).mean()
    zmse = torch.log(((resid / s2) ** 2).mean(0)).pow(2).mean()
    zero = torch.zeros_like(resid)
    dgll = gaussian_nll(zero, s2, resid, weights=w) - gaussian_nll(zero, s_t, resid, weights=w)
    return COVERAGE_WEIGHT * (soft - target) ** 2 + zmse + dgll


def _fit_corel(mu, s_t, resid, nodes, w, opt: CorelOptions, model_config, seed: int, device):
    cfg = dict(model_config["model"].get("calibration", {}).get("corel", {}))
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    mu, s_t, resid, nodes, w = (t.to(device) for t in (mu, s_t, resid, nodes, w))
    last = float("nan")
    # Initialisation and dropout masks follow ``seed`` without touching the caller's RNG state.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        corel = COREL(cfg, graph_for(model_config)).to(device).train()
        optim = torch.optim.AdamW(corel.parameters(), lr=opt.optimizer.lr, weight_decay=opt.optimizer.weight_decay)
        for _ in range(opt.epochs):
            for idx in torch.randperm(mu.shape[0], generator=gen).split(opt.batch):
                idx = idx.to(device)
                loss = _corel_loss(resid[idx], s_t[idx], corel(mu[idx], s_t[idx], nodes[idx]), w, opt.coverage_target)
                optim.zero_grad()
                loss.backward()
                optim.step()
                last = loss.item()
    corel.eval().requires_grad_(False)
    with torch.no_grad():
        s2 = s_t * torch.exp(corel(mu, s_t, nodes))
        before, after = (float(gaussian_nll(torch.zeros_like(resid), s, resid, weights=w)) for s in (s_t, s2))
    return corel.cpu(), {"final_loss": last, "fit_gll_before": before, "fit_gll_after": after, "kept": after < before}


def _metrics(y, mu, sigma, naive_mean: float, naive_sigma: float) -> dict:
    resid, s = (y - mu).numpy(), sigma.numpy()
    out = {f"coverage_{round(p * 100)}": coverage(resid, s, p) for p in REPORT_LEVELS}
    # The metric refuses negative depths, as a submission would be clipped before scoring.
    score = score_arrays(y.numpy(), np.clip(mu.numpy(), 0, None), s, naive_mean, naive_sigma)
    out["score"] = score.score
    out["gll"] = float(gaussian_nll(torch.zeros_like(y), sigma, y - mu, weights=bin_weights().double()))
    return out


def fit_calibration(
    mu: Any, sigma: Any, y: Any, airs_nodes: Any, options: CalibrationOptions,
    model_config: Mapping[str, Any], seed: int = 0, device: str | torch.device = "cpu",
) -> CalibrationResult:
    """Fit temperature then COREL on the fit part of the planets; report on the holdout (module docstring).

    Shapes: mu, sigma, y (N, 283); airs_nodes (N, 283, 8); numpy or torch, physical units.
    """
    named = (("mu", mu, (N_BINS,)), ("sigma", sigma, (N_BINS,)), ("y", y, (N_BINS,)))
    mu, sigma, y, nodes = (_tensor(*a) for a in (*named, ("airs_nodes", airs_nodes, (N_BINS, 8))))
    n = mu.shape[0]
    if not (sigma.shape[0] == y.shape[0] == nodes.shape[0] == n):
        sizes = ", ".join(str(t.shape[0]) for t in (mu, sigma, y, nodes))
        raise ValueError(f"mu, sigma, y, airs_nodes disagree on n_planets: {sizes}")
    if (sigma <= 0).any():
        raise ValueError(f"sigma: {int((sigma <= 0).sum())} values <= 0")
    perm = np.random.default_rng(seed).permutation(n)
    n_hold = int(math.floor(n * options.corel.holdout_fraction))
    shared = n_hold < 1
    hold, fit = (perm, perm) if shared else (perm[:n_hold], perm[n_hold:])
    note = (f"n_planets * holdout_fraction = {n * options.corel.holdout_fraction:.2f} < 1: fitted and reported "
            "on the same planets" if shared else "")
    w = bin_weights().double()
    resid = y - mu

    temperature, t_info = None, {}
    if options.temperature.enable:
        temperature, t_info = _fit_temperature(resid[fit], sigma[fit], w, options.temperature)
    with torch.no_grad():
        s_t = temperature(sigma.float()).double() if temperature is not None else sigma
    corel, c_info = None, {"kept": False}
    if options.corel.enable:
        fit_data = (t[fit].float() for t in (mu, s_t, resid, nodes))
        corel, c_info = _fit_corel(*fit_data, w.float(), options.corel, model_config, seed, device)
        corel = corel if c_info["kept"] else None
    calibrator = Calibrator(temperature, corel).eval()
    with torch.no_grad():
        s_after = calibrator(mu.float(), sigma.float(), nodes.float()).double()

    naive_mean, naive_sigma = float(y[fit].mean()), float(y[fit].std(unbiased=False))
    t_bin = (temperature.log_scale().detach() if temperature is not None else torch.zeros(N_BINS)).exp()
    report = {
        "n_planets": n, "n_fit": len(fit), "n_holdout": len(hold), "holdout_is_fit": shared, "note": note,
        "seed": int(seed), "holdout_index": [int(i) for i in np.sort(hold)],
        "before": _metrics(y[hold], mu[hold], sigma[hold], naive_mean, naive_sigma),
        "after": _metrics(y[hold], mu[hold], s_after[hold], naive_mean, naive_sigma),
        "temperature": {
            "enable": options.temperature.enable, "per_bin": options.temperature.per_bin,
            "prior_planets": options.temperature.prior_planets, **t_info,
            "global": float(temperature.log_t_global.exp()) if temperature is not None else 1.0,
            "bin_min": float(t_bin.min()), "bin_median": float(t_bin.median()), "bin_max": float(t_bin.max()),
        },
        "corel": {"enable": options.corel.enable, "epochs": options.corel.epochs, **c_info},
    }
    calibrator.report = report
    return CalibrationResult(calibrator, report)


def report_markdown(report: Mapping[str, Any]) -> str:
    """A small markdown table of the holdout metrics before and after calibration."""
    rows = ["| metric | before | after |", "|---|---|---|"]
    for key in report["before"]:
        rows.append(f"| {key} | {report['before'][key]:.4f} | {report['after'][key]:.4f} |")
    t, c = report["temperature"], report["corel"]
    rows += [
        "",
        f"planets: {report['n_fit']} fit, {report['n_holdout']} holdout. {report.get('note', '')}".rstrip(),
        f"temperature: global {t['global']:.3f}, per bin min {t['bin_min']:.3f} / median {t['bin_median']:.3f} "
        f"/ max {t['bin_max']:.3f}" if t["enable"] else "temperature: off",
        f"COREL: {'kept' if c.get('kept') else 'not kept'}" if c["enable"] else "COREL: off",
    ]
    return "\n".join(rows) + "\n"


def reliability_diagram(mu: Any, sigma_before: Any, sigma_after: Any, y: Any, path: str | Path) -> Path:
    """PNG of observed vs nominal central-interval coverage (levels 0.05..0.99), before and after."""
    # A bare Figure on the Agg canvas: no pyplot, so no global backend switch in the caller's process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    resid = np.asarray(y, dtype=np.float64) - np.asarray(mu, dtype=np.float64)
    fig = Figure(figsize=(4.5, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="ideal")
    for label, s in (("before", sigma_before), ("after", sigma_after)):
        observed = [coverage(resid, np.asarray(s, dtype=np.float64), p) for p in RELIABILITY_LEVELS]
        ax.plot(RELIABILITY_LEVELS, observed, "o-", ms=3, label=label)
    ax.set(xlabel="nominal coverage", ylabel="observed coverage", xlim=(0, 1), ylim=(0, 1), title="Reliability")
    ax.legend(loc="upper left")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def calibrate_checkpoint(
    ckpt_path: str | Path, mu: Any, sigma: Any, y: Any, airs_nodes: Any, options: CalibrationOptions,
    out_path: str | Path, seed: int = 0, device: str | torch.device = "cpu",
) -> CalibrationResult:
    """Fit on the given predictions; write ``ckpt_path`` with "calibration" replaced to ``out_path`` (atomically)."""
    out_path = Path(out_path)
    ckpt = load_checkpoint_dict(ckpt_path)
    result = fit_calibration(mu, sigma, y, airs_nodes, options, ckpt["model_config"], seed, device)
    ckpt["calibration"] = result.calibrator.state()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f"{out_path.name}.tmp{os.getpid()}")
    torch.save(ckpt, tmp)
    tmp.replace(out_path)
    return result


# ---------------------------------------------------------------- stages: after training, standalone


def _uncalibrated(ckpt_path: Path, fgs1: np.ndarray, airs_nodes: np.ndarray, device: torch.device | str):
    from spectramind.model.v50 import SpectraMindV50
    from train.evaluate import predict_arrays

    model = SpectraMindV50.from_checkpoint(ckpt_path).to(device)
    return predict_arrays(model, fgs1, airs_nodes, 64, device)


def _write_report(result: CalibrationResult, mu, sigma, y, nodes, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    hold = np.asarray(result.report["holdout_index"], dtype=np.int64)
    with torch.no_grad():
        after = result.calibrator(*(torch.as_tensor(a[hold]).float() for a in (mu, sigma, nodes))).double().numpy()
    (out_dir / "report.md").write_text(report_markdown(result.report))
    (out_dir / "report.json").write_text(json.dumps(result.report, indent=2, default=float))
    reliability_diagram(mu[hold], sigma[hold], after, y[hold], out_dir / "reliability.png")


def _flat(report: Mapping[str, Any]) -> dict[str, float]:
    return {f"{when}_{k}": float(v) for when in ("before", "after") for k, v in report[when].items()}


def calibrate_validation(
    cfg: Mapping[str, Any], ckpt_path: Path, val_set: Any, run_dir: Path,
    device: torch.device | str = "cpu", also: Path | None = None,
) -> dict[str, float]:
    """Calibrate ``ckpt_path`` in place on the validation planets of the run (``val_set``, a
    :class:`train.data.FeatureSet`), copy the calibration into ``also`` (last.pt), and write
    ``run_dir/calibration/{report.md, report.json, reliability.png}``. Returns before/after metrics."""
    options = calibration_options(cfg["train"])
    mu, sigma = _uncalibrated(ckpt_path, val_set.fgs1, val_set.airs_nodes, device)
    result = calibrate_checkpoint(ckpt_path, mu, sigma, val_set.labels, val_set.airs_nodes, options, ckpt_path,
                                  seed=int(cfg["train"]["seed"]), device=device)
    if also is not None and Path(also).is_file() and Path(also) != Path(ckpt_path):
        ckpt = torch.load(also, map_location="cpu", weights_only=True)
        ckpt["calibration"] = result.calibrator.state()
        tmp = Path(also).with_name(f"{Path(also).name}.tmp{os.getpid()}")
        torch.save(ckpt, tmp)
        tmp.replace(also)
    _write_report(result, mu, sigma, val_set.labels, val_set.airs_nodes, Path(run_dir) / "calibration")
    return _flat(result.report)


def calibrate_standalone(
    cfg: Mapping[str, Any], ckpt_path: Path, data_dir: Path, out_path: Path, workers: int | None = None,
    device: torch.device | str = "cpu",
) -> str:
    """``spectramind calibrate-model``: refit the calibration of a checkpoint on the validation
    planets recorded in its meta (features rebuilt from ``data_dir`` with the checkpoint's feature
    options), write the calibrated checkpoint to ``out_path`` and the report beside it
    (``<out dir>/calibration/``). Options come from ``cfg.train`` (``train=calibration`` or any
    preset with a calibration block). Returns the report as markdown."""
    from train.data import load_features
    from spectramind.data.features import options_from_meta

    ckpt_path, out_path = Path(ckpt_path), Path(out_path)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    val_ids = (ckpt.get("meta") or {}).get("val_planets")
    if not val_ids:
        raise ValueError(f"{ckpt_path}: meta has no val_planets; calibrate it from the training run instead")
    features = load_features(Path(data_dir), "train", options_from_meta(ckpt.get("meta"), ckpt_path), workers=workers)
    index = {int(p): i for i, p in enumerate(features.planet_ids)}
    missing = [p for p in val_ids if p not in index]
    if missing:
        raise ValueError(f"{data_dir}: validation planet {missing[0]} of {ckpt_path} is missing ({len(missing)} in all)")
    val = features.subset(np.array([index[p] for p in val_ids]))
    if not val.has_labels:
        raise ValueError(f"{data_dir}: the validation planets of {ckpt_path} have no labels in train.csv")
    options = calibration_options(cfg["train"])
    mu, sigma = _uncalibrated(ckpt_path, val.fgs1, val.airs_nodes, device)
    seed = int(cfg["train"].get("seed", 0) or 0)
    result = calibrate_checkpoint(ckpt_path, mu, sigma, val.labels, val.airs_nodes, options, out_path, seed, device)
    _write_report(result, mu, sigma, val.labels, val.airs_nodes, out_path.parent / "calibration")
    return report_markdown(result.report)
