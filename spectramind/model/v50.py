"""SpectraMind V50: the one model definition shared by training, export and serving.

.. math::
    \\mathbf{p}, \\mathbf{s} &= \\mathrm{FGS1Encoder}(\\mathbf{x}^{fgs1}) \\\\
    \\mathbf{n} &= \\mathrm{AIRSGNN}(\\mathbf{x}^{airs}; \\mathcal{G}) \\\\
    \\mathbf{f} &= \\mathrm{Fusion}(\\mathbf{p}, \\mathbf{s}, \\mathbf{n}) \\\\
    \\mu &= \\mu^{base} + u_\\mu\\,\\mathrm{MuHead}(\\mathbf{f}), \\quad
    \\sigma = \\sigma^{base}\\,\\mathrm{SigmaHead}(\\mathbf{f})

built from a model config (``cfg.model`` of ``configs/config.yaml``) and the symbolic profile
(``cfg.symbolic``), which together are the ``model_config`` saved in every checkpoint, so a
checkpoint rebuilds its model without any training YAML. The physics graph
(:mod:`spectramind.model.graph`) is built once and stored as buffers.

The heads predict corrections to the physics baseline that the node features carry
(:mod:`spectramind.data.features`: column 0 is the baseline depth / 1e-2, column 1 is
log10(baseline sigma / 1e-4)): :math:`\\mu^{base}` and :math:`\\sigma^{base}` are those, the mu
head works in units :math:`u_\\mu` = ``MU_UNIT`` (100 ppm, the size of the spectral features and
of the baseline's errors) and the sigma head's output is a factor on the baseline sigma. So an
untrained model starts near the baseline, the heads see O(1) targets, and the GLL gradients
reaching them are O(1) although the spectrum is ~1e-2 and its errors ~1e-4.

Shapes:
    - **input:** fgs1 (B, T, 6) and airs_nodes (B, 283, 8) from :mod:`spectramind.data.features`
    - **output:** :class:`V50Output` (always the same named tuple)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from spectramind.bins import N_BINS, grid_from_profile, load_grid
from spectramind.model.capture import capturing
from spectramind.model.fusion import Fusion
from spectramind.model.gnn import AIRSGNN
from spectramind.model.graph import build_graph
from spectramind.model.heads import MuHead, SigmaHead
from spectramind.model.mamba import FGS1Encoder

CHECKPOINT_KEYS = ("model", "model_config", "calibration", "meta")
# Units of the node features' baseline columns and of the mu head (see the module docstring);
# DEPTH_UNIT and SIGMA_UNIT must equal spectramind.data.features' (a test checks it).
DEPTH_UNIT = 1e-2
SIGMA_UNIT = 1e-4
MU_UNIT = 1e-4


class V50Output(NamedTuple):
    """Everything one forward pass gives; unused parts are empty tensors, never None.

    mu, sigma: (B, 283) the spectrum and its standard deviation in (Rp/Rs)^2 (before post-hoc
        calibration unless a temperature is passed).
    quantiles: (B, 283, Q) quantiles of the spectrum, mu + sigma_base * head quantile, of the
        quantile sigma head; (B, 283, 0) for flow.
    mu_partials: (B, S, 283) the mu head's correction at each scale, in (Rp/Rs)^2; they sum to
        mu - mu_base.
    gat_attention: (B, L, E + 283, H) GAT attention per layer over ``edge_index_with_loops``;
        (B, 0, 0, 0) for other backends.
    fusion_attention: (B, 283, T) node-over-time attention of cross-attend fusion; (B, 283, 0) otherwise.
    node_embeddings: (B, 283, D) fused node features fed to the heads.
    fgs1_latents: (B, T, d_model) FGS1 per-step latents if ``export_step_latents``; (B, 0, d_model) otherwise.
    """

    mu: Tensor
    sigma: Tensor
    quantiles: Tensor
    mu_partials: Tensor
    gat_attention: Tensor
    fusion_attention: Tensor
    node_embeddings: Tensor
    fgs1_latents: Tensor


def _plain(cfg: Mapping[str, Any] | DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


def model_config_from(cfg: Mapping[str, Any] | DictConfig) -> dict:
    """The ``model_config`` of a composed config: {"model": cfg.model, "symbolic": cfg.symbolic}, plain types."""
    return {"model": _plain(cfg["model"]), "symbolic": _plain(cfg["symbolic"])}


class SpectraMindV50(nn.Module):
    """The V50 network. ``config`` is a :func:`model_config_from` mapping."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        if "model" not in config:
            raise ValueError("model config must have a 'model' key (see model_config_from)")
        self.config = {"model": _plain(config["model"]), "symbolic": _plain(config.get("symbolic") or {})}
        m = self.config["model"]
        grid = grid_from_profile(self.config["symbolic"]) if self.config["symbolic"] else load_grid()
        enc = m["encoders"]
        fgs1_cfg, airs_cfg = enc["fgs1_mamba"], enc["airs_gnn"]

        graph = build_graph(airs_cfg, grid)
        self.register_buffer("edge_index", graph.edge_index, persistent=False)
        self.register_buffer("edge_attr", graph.edge_attr, persistent=False)
        self.register_buffer("edge_type", graph.edge_type, persistent=False)

        self.fgs1_enabled = bool(fgs1_cfg.get("enabled", True))
        self.export_step_latents = bool(fgs1_cfg.get("export_step_latents", False))
        self.d_model = int(fgs1_cfg["d_model"])
        self.fgs1_dim = int(fgs1_cfg["proj_out"])
        self.fgs1 = FGS1Encoder(fgs1_cfg) if self.fgs1_enabled else None

        self.airs_enabled = bool(airs_cfg.get("enabled", True))
        airs_out = int(airs_cfg["out_dim"])
        node_features = int(airs_cfg["node_features"])
        if self.airs_enabled:
            wl = torch.as_tensor(grid.wavelength_um, dtype=torch.float32)
            tags = torch.as_tensor(grid.molecule_tags(), dtype=torch.long)
            self.airs: nn.Module = AIRSGNN(airs_cfg, wl, tags, grid.seam_index, len(grid.molecules))
        else:
            # Without the graph the node features still need the width the fusion expects.
            self.airs = nn.Linear(node_features, airs_out)
        self.node_features = node_features

        self.fusion = Fusion(m["fusion"], self.fgs1_dim, self.d_model, airs_out)
        self.mu_head = MuHead(m["decoders"]["mu_head"], self.fusion.dim)
        self.sigma_head = SigmaHead(m["decoders"]["sigma_head"], self.fusion.dim)

    @property
    def edge_index_with_loops(self) -> Tensor:
        """(2, E + 283): the edges ``gat_attention`` refers to (input edges, then one self loop per bin)."""
        loops = torch.arange(N_BINS, device=self.edge_index.device)
        return torch.cat([self.edge_index, torch.stack([loops, loops])], dim=1)

    def baseline(self, airs_nodes: Tensor) -> tuple[Tensor, Tensor]:
        """The physics-baseline mu and sigma carried by the node features, (B, 283) each."""
        return airs_nodes[..., 0] * DEPTH_UNIT, torch.pow(10.0, airs_nodes[..., 1]) * SIGMA_UNIT

    def forward(
        self,
        fgs1: Tensor,
        airs_nodes: Tensor,
        temperature: Tensor | None = None,
        step_latents: bool | None = None,
    ) -> V50Output:
        """``step_latents`` overrides ``export_step_latents`` for this call (MAE pretraining needs them)."""
        batch = airs_nodes.shape[0]
        if not capturing():
            if fgs1.dim() != 3 or fgs1.shape[0] != batch or fgs1.shape[2] != 6:
                raise ValueError(f"fgs1 must have shape ({batch}, time, 6), got {tuple(fgs1.shape)}")
            if tuple(airs_nodes.shape[1:]) != (N_BINS, self.node_features):
                raise ValueError(
                    f"airs_nodes must have shape (batch, {N_BINS}, {self.node_features}), got {tuple(airs_nodes.shape)}"
                )
        if self.fgs1 is not None:
            enc = self.fgs1(fgs1)
            pooled, steps = enc.pooled, enc.steps
        else:
            pooled = fgs1.new_zeros(batch, self.fgs1_dim)
            steps = fgs1.new_zeros(batch, fgs1.shape[1], self.d_model)
        if self.airs_enabled:
            airs = self.airs(airs_nodes, self.edge_index, self.edge_attr, self.edge_type)
            nodes, gat_attention = airs.nodes, airs.attention
        else:
            nodes, gat_attention = self.airs(airs_nodes), airs_nodes.new_zeros(batch, 0, 0, 0)
        fused = self.fusion(pooled, steps, nodes)
        mu = self.mu_head(fused.nodes)
        sig = self.sigma_head(fused.nodes, temperature)
        keep_steps = self.export_step_latents if step_latents is None else step_latents
        latents = steps if keep_steps else steps[:, :0]
        mu_base, sigma_base = self.baseline(airs_nodes)
        mean = mu_base + MU_UNIT * mu.mu
        return V50Output(
            mu=mean,
            sigma=sigma_base * sig.sigma,
            quantiles=mean[..., None] + sigma_base[..., None] * sig.quantiles,
            mu_partials=MU_UNIT * mu.partials,
            gat_attention=gat_attention,
            fusion_attention=fused.attention,
            node_embeddings=fused.nodes,
            fgs1_latents=latents,
        )

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------ checkpoints

    def checkpoint(self, calibration: Mapping[str, Any] | None = None, meta: Mapping[str, Any] | None = None) -> dict:
        """The checkpoint dict of DESIGN.md: model state, model_config, calibration, meta."""
        return {
            "model": {k: v.detach().cpu() for k, v in self.state_dict().items()},
            "model_config": self.config,
            "calibration": dict(calibration or {}),
            "meta": dict(meta or {}),
        }

    def save_checkpoint(self, path: str | Path, **kwargs: Any) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.checkpoint(**kwargs), tmp)
        tmp.replace(path)

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> "SpectraMindV50":
        """Rebuild the model from a checkpoint's model_config and load its weights (weights_only loading)."""
        return cls.from_checkpoint_dict(load_checkpoint_dict(path, map_location), path)

    @classmethod
    def from_checkpoint_dict(cls, ckpt: Mapping[str, Any], source: object) -> "SpectraMindV50":
        """The model of an already loaded checkpoint dict; errors name ``source``."""
        model = cls(ckpt["model_config"])
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise ValueError(f"checkpoint {source} does not match its model_config: {exc}") from exc
        return model


def load_checkpoint_dict(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint file read with ``torch.load(weights_only=True)``, with DESIGN.md's keys checked.

    Raises FileNotFoundError for a missing file and ValueError naming the file when weights-only
    loading refuses it or a key is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ValueError(f"checkpoint {path} cannot be loaded with weights_only=True: {exc}") from exc
    if not isinstance(ckpt, dict):
        raise ValueError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a dict")
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {', '.join(missing)}")
    return ckpt
