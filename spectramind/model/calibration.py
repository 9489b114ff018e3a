"""Post-hoc calibration of the predicted sigma: temperature scaling, then COREL, baked into serving.

.. math::
    \\sigma_T &= \\sigma \\cdot \\exp(\\tau_{global} + \\tau_j) \\\\
    \\sigma' &= \\sigma_T \\cdot \\exp(g_j), \\quad
        g = \\log 10 \\cdot \\tanh(\\mathrm{COREL}(\\mu, \\sigma_T, \\mathbf{x}^{airs}) / \\log 10)

``mu`` is never changed. The modules only apply a calibration; fitting lives in
``train/calibrate.py``. A fitted :class:`Calibrator` travels in the checkpoint's
``"calibration"`` entry as the plain dict of :meth:`Calibrator.state` (``torch.load``
``weights_only=True`` safe); :class:`CalibratedV50` is what export and serving run.

COREL node features (``COREL_FEATURES``, 10 per bin), computed from the temperature-scaled sigma:

===  ============  =====================================================================
col  name          value
===  ============  =====================================================================
0    log_sigma     log10(sigma_T / 1e-4): the sigma being corrected, 100 ppm reads 0
1    z_baseline    (mu - depth_fit * 1e-2) / sigma_T clipped to +-10: how far the model
                   moved from the physics baseline, in its own sigmas
2-9  airs_nodes    the 8 ``airs_nodes`` columns as given (depth_fit, log_sigma, depth_rel,
                   depth_box, log_noise, log_flux, pointing_r2, wavelength)
===  ============  =====================================================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from spectramind.bins import N_BINS, grid_from_profile, load_grid
from spectramind.model.capture import capturing
from spectramind.model.gat import GATLayer
from spectramind.model.graph import BinGraph, build_graph
from spectramind.model.v50 import DEPTH_UNIT, SIGMA_UNIT, SpectraMindV50, V50Output, load_checkpoint_dict

__all__ = ["COREL", "COREL_FEATURES", "CalibratedV50", "Calibrator", "TemperatureScaling", "graph_for"]

STATE_VERSION = 1
# The airs_nodes columns of spectramind.data.features (not imported: serving needs no baseline fit).
AIRS_COLUMNS = ("depth_fit", "log_sigma", "depth_rel", "depth_box", "log_noise", "log_flux", "pointing_r2")
AIRS_COLUMNS += ("wavelength",)
COREL_FEATURES = ("log_sigma", "z_baseline") + tuple(f"airs_{c}" for c in AIRS_COLUMNS)
N_AIRS_FEATURES = len(AIRS_COLUMNS)
Z_CLIP = 10.0
MAX_LOG_SCALE = math.log(10.0)  # COREL may widen or narrow a sigma at most tenfold
SIGMA_FLOOR = 1e-15


class TemperatureScaling(nn.Module):
    """sigma' = sigma * exp(log_t_global + log_t_bin). Identity at init.

    Shapes: sigma (B, 283) -> (B, 283); log_t_global (), log_t_bin (283,).
    """

    def __init__(self) -> None:
        super().__init__()
        self.log_t_global = nn.Parameter(torch.zeros(()))
        self.log_t_bin = nn.Parameter(torch.zeros(N_BINS))

    def log_scale(self) -> Tensor:
        """log T per bin, (283,)."""
        return self.log_t_global + self.log_t_bin

    def forward(self, sigma: Tensor) -> Tensor:
        return sigma * torch.exp(self.log_scale()).to(sigma.dtype)


def graph_for(model_config: Mapping[str, Any]) -> BinGraph:
    """The bin graph of a checkpoint's model_config ({"model": ..., "symbolic": ...}), as the model builds it."""
    if "model" not in model_config:
        raise ValueError("model_config must have a 'model' key (see spectramind.model.v50.model_config_from)")
    symbolic = model_config.get("symbolic") or {}
    grid = grid_from_profile(dict(symbolic)) if symbolic else load_grid()
    return build_graph(dict(model_config["model"]["encoders"]["airs_gnn"]), grid)


def corel_config(cfg: Mapping[str, Any]) -> dict:
    """Plain, checked COREL config from ``model.calibration.corel`` (keys: gnn_backend, hidden_dim,
    n_layers, dropout, edge_features, optional heads [1]); other keys (coverage_target, loss) are the
    fitter's and are dropped."""
    sec = "model.calibration.corel"
    out = {
        "gnn_backend": str(cfg.get("gnn_backend", "gat")),
        "hidden_dim": int(cfg.get("hidden_dim", 128)),
        "n_layers": int(cfg.get("n_layers", 2)),
        "dropout": float(cfg.get("dropout", 0.0)),
        "edge_features": bool(cfg.get("edge_features", True)),
        "heads": int(cfg.get("heads", 1)),
    }
    if out["gnn_backend"] != "gat":
        raise ValueError(f"{sec}.gnn_backend must be 'gat' (the only COREL backend), got {out['gnn_backend']!r}")
    for key in ("hidden_dim", "n_layers", "heads"):
        if out[key] < 1:
            raise ValueError(f"{sec}.{key} must be >= 1, got {out[key]}")
    if not 0.0 <= out["dropout"] < 1.0:
        raise ValueError(f"{sec}.dropout must be in [0, 1), got {out['dropout']}")
    return out


class COREL(nn.Module):
    """Graph network giving a per-bin log scale of sigma from the features of the module docstring.

    .. math::
        h^0 = \\mathrm{LN}(\\mathrm{GELU}(W_{in} x)), \\quad
        h^{l+1} = \\mathrm{LN}(h^l + \\mathrm{Dropout}(\\mathrm{GELU}(\\mathrm{GAT}_l(h^l, e)))), \\quad
        g = L \\tanh(w_{out}^\\top h^{n} / L),\\ L = \\log 10

    ``w_out`` and its bias start at zero, so an untrained COREL is the identity (g = 0). The GAT
    layers (:class:`spectramind.model.gat.GATLayer`, ``heads`` heads of ``hidden_dim / heads``
    channels) run over the model's bin graph; with ``edge_features`` they see its 4 edge attributes.
    ``dropout`` drops node features after each GAT layer; the layers get no attention dropout,
    which would redo every aggregation on the (B, E, H, C) edge list (4x slower to train on CPU).

    Shapes:
        - **input:** mu, sigma (B, 283) physical units; airs_nodes (B, 283, 8)
        - **output:** g (B, 283)
    """

    def __init__(self, config: Mapping[str, Any], graph: BinGraph) -> None:
        super().__init__()
        self.config = corel_config(config)
        hidden, heads = self.config["hidden_dim"], self.config["heads"]
        if hidden % heads:
            raise ValueError(f"model.calibration.corel.hidden_dim ({hidden}) must be a multiple of heads ({heads})")
        self.register_buffer("edge_index", graph.edge_index.clone(), persistent=False)
        self.register_buffer("edge_attr", graph.edge_attr.clone(), persistent=False)
        edge_dim = int(graph.edge_attr.shape[1]) if self.config["edge_features"] else None
        self.inp = nn.Linear(len(COREL_FEATURES), hidden)
        self.norm_in = nn.LayerNorm(hidden)
        self.layers = nn.ModuleList(
            GATLayer(hidden, hidden // heads, heads=heads, edge_dim=edge_dim)
            for _ in range(self.config["n_layers"])
        )
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(self.config["n_layers"]))
        self.drop = nn.Dropout(self.config["dropout"])
        self.out = nn.Linear(hidden, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @staticmethod
    def features(mu: Tensor, sigma: Tensor, airs_nodes: Tensor) -> Tensor:
        """The (B, 283, 10) node features of the module docstring."""
        s = sigma.clamp_min(SIGMA_FLOOR)
        log_sigma = torch.log10(s / SIGMA_UNIT)
        z = ((mu - airs_nodes[..., 0] * DEPTH_UNIT) / s).clamp(-Z_CLIP, Z_CLIP)
        return torch.cat([log_sigma[..., None], z[..., None], airs_nodes], dim=-1)

    def forward(self, mu: Tensor, sigma: Tensor, airs_nodes: Tensor) -> Tensor:
        if not capturing() and tuple(airs_nodes.shape[1:]) != (N_BINS, N_AIRS_FEATURES):
            shape = tuple(airs_nodes.shape)
            raise ValueError(f"COREL: airs_nodes must be (B, {N_BINS}, {N_AIRS_FEATURES}), got {shape}")
        x = self.features(mu, sigma, airs_nodes).to(self.inp.weight.dtype)
        h = self.norm_in(nn.functional.gelu(self.inp(x)))
        for gat, norm in zip(self.layers, self.norms):
            h = norm(h + self.drop(nn.functional.gelu(gat(h, self.edge_index, self.edge_attr).out)))
        return MAX_LOG_SCALE * torch.tanh(self.out(h).squeeze(-1) / MAX_LOG_SCALE)


class Calibrator(nn.Module):
    """Optional temperature scaling, then optional COREL; with neither it is the identity.

    Shapes: mu, sigma (B, 283), airs_nodes (B, 283, 8) -> sigma' (B, 283).
    """

    def __init__(
        self,
        temperature: TemperatureScaling | None = None,
        corel: COREL | None = None,
        report: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.temperature = temperature
        self.corel = corel
        self.report = dict(report or {})

    def forward(self, mu: Tensor, sigma: Tensor, airs_nodes: Tensor) -> Tensor:
        if self.temperature is not None:
            sigma = self.temperature(sigma)
        if self.corel is not None:
            sigma = sigma * torch.exp(self.corel(mu, sigma, airs_nodes)).to(sigma.dtype)
        return sigma

    def state(self) -> dict:
        """Plain dict for the checkpoint's "calibration" entry (weights_only-safe)."""
        t = self.temperature
        temperature = {
            "enable": t is not None,
            "log_t_global": float(t.log_t_global.detach()) if t is not None else 0.0,
            "log_t_bin": [float(v) for v in t.log_t_bin.detach().cpu()] if t is not None else [0.0] * N_BINS,
        }
        c = self.corel
        corel = {
            "enable": c is not None,
            "config": dict(c.config) if c is not None else {},
            "state_dict": {k: v.detach().cpu().clone() for k, v in c.state_dict().items()} if c is not None else {},
        }
        return {"version": STATE_VERSION, "temperature": temperature, "corel": corel, "report": dict(self.report)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any] | None, model_config: Mapping[str, Any] | None = None) -> Calibrator:
        """Rebuild from :meth:`state`; None or {} gives the identity. COREL needs ``model_config`` for its graph."""
        if not state:
            return cls()
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"calibration.version must be {STATE_VERSION}, got {state.get('version')!r}")
        temperature = None
        t_state = state.get("temperature") or {}
        if t_state.get("enable"):
            log_bin = list(t_state["log_t_bin"])
            if len(log_bin) != N_BINS:
                raise ValueError(f"calibration.temperature.log_t_bin must have {N_BINS} values, got {len(log_bin)}")
            temperature = TemperatureScaling()
            with torch.no_grad():
                temperature.log_t_global.fill_(float(t_state["log_t_global"]))
                temperature.log_t_bin.copy_(torch.tensor(log_bin, dtype=torch.float32))
        corel = None
        c_state = state.get("corel") or {}
        if c_state.get("enable"):
            if model_config is None:
                raise ValueError("calibration.corel is enabled: the model_config is needed to build its graph")
            corel = COREL(c_state["config"], graph_for(model_config))
            try:
                corel.load_state_dict(c_state["state_dict"])
            except RuntimeError as exc:
                msg = "calibration.corel.state_dict does not match calibration.corel.config"
                raise ValueError(f"{msg}: {exc}") from exc
        return cls(temperature, corel, state.get("report"))


class CalibratedV50(nn.Module):
    """A SpectraMindV50 whose sigma goes through a :class:`Calibrator`; mu and the rest are unchanged.

    Shapes: fgs1 (B, T, 6), airs_nodes (B, 283, 8) -> :class:`V50Output` with calibrated sigma.
    """

    def __init__(self, model: SpectraMindV50, calibrator: Calibrator | None = None) -> None:
        super().__init__()
        self.model = model
        self.calibrator = calibrator if calibrator is not None else Calibrator()

    def forward(self, fgs1: Tensor, airs_nodes: Tensor) -> V50Output:
        out = self.model(fgs1, airs_nodes)
        return out._replace(sigma=self.calibrator(out.mu, out.sigma, airs_nodes))

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> CalibratedV50:
        """Model and calibrator of one checkpoint, read once with ``weights_only=True``."""
        ckpt = load_checkpoint_dict(path, map_location)
        model = SpectraMindV50.from_checkpoint_dict(ckpt, path)
        try:
            calibrator = Calibrator.from_state(ckpt["calibration"], ckpt["model_config"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"checkpoint {path}: bad calibration entry: {exc}") from exc
        return cls(model, calibrator).to(map_location)
