"""Explanations of a SpectraMind V50 prediction: GAT attention, gradient attributions, grouped SHAP.

Four views of one planet's prediction, each usable alone and bundled by :func:`explain_planet`:

- :func:`attention_top_edges`: the strongest GAT attention edges per layer and head.
- :func:`node_importance`: how much each input bin (its 8 node features together) moves the
  prediction, from captum's IntegratedGradients or InputXGradient.
- :func:`shap_groups`: Shapley values over feature *groups*: every bin row of ``airs_nodes``
  (bin 0 = FGS1, 1..282 = AIRS) is one group and the FGS1 time series is cut into contiguous
  time segments, each one group. The explained quantity is a scalar: the mean predicted mu over
  a set of output bins ("white"), or one bin's mu (or sigma).
- :func:`explain_planet` writes ``explain.json`` and PNGs for one planet;
  :func:`explain_from_checkpoint` does the same from ``best.pt`` and a light-curve directory.

Shapley efficiency: the group values sum to f(x) - f(baseline). ``method="sampling"``
(captum ``ShapleyValueSampling``) satisfies it exactly for every permutation, so only float32
rounding remains; ``method="kernel"`` (captum ``KernelShap``) fits a weighted linear model whose
end-point weights are 1e6 instead of infinite, so it holds approximately.
:meth:`ShapResult.efficiency_tolerance` states the bound for each.

Shapes:
    - **input:** fgs1 (T, 6) or (1, T, 6), airs_nodes (283, 8) or (1, 283, 8) (one planet)
    - **output:** node importance (283,); SHAP values (283 + n_fgs1_segments,)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from captum._utils.models.model import Model as CaptumModel
from captum.attr import InputXGradient, IntegratedGradients, KernelShap, ShapleyValueSampling
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import PowerNorm, TwoSlopeNorm
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.utils.data import DataLoader

from spectramind.bins import N_BINS, BinGrid, grid_from_profile, load_grid, wavelengths
from spectramind.data.adc import read_star_info
from spectramind.data.features import FeatureOptions, ModelInputs, options_from_meta, planet_inputs, stack_inputs
from spectramind.data.lightcurves import LightCurves, list_lightcurves
from spectramind.model.v50 import SpectraMindV50, V50Output

__all__ = [
    "EFFICIENCY_ATOL",
    "EFFICIENCY_RTOL",
    "ExplainOptions",
    "IGResult",
    "ShapGroup",
    "ShapResult",
    "attention_top_edges",
    "explain_from_checkpoint",
    "explain_planet",
    "integrated_gradients",
    "node_importance",
    "shap_groups",
]

log = logging.getLogger(__name__)

QUANTITIES = ("mu", "sigma")
SHAP_METHODS = ("sampling", "kernel")
# |sum(values) - (f(x) - f(baseline))| <= RTOL * max(|f(x)|, |f(baseline)|, sum |values|) + ATOL.
# sampling: exact per permutation; what is left is float32 rounding of ~300 differences of
# outputs computed in different batch positions. kernel: the end points of captum's weighted
# regression weigh 1e6 against 1 for every other coalition, so they are fitted to about
# (typical residual) * n_samples / 1e6; 1e-3 of the scale covers it for n_samples up to ~1e4.
EFFICIENCY_RTOL = {"sampling": 1e-4, "kernel": 1e-3}
EFFICIENCY_ATOL = {"sampling": 1e-9, "kernel": 1e-8}  # mu is ~1e-2 (Rp/Rs)^2: fp32 rounding is ~1e-9
DEFAULT_SHAP_SAMPLES = {"sampling": 8, "kernel": 1024}  # permutations / coalitions
_JSON_DIGITS = 7  # float32 carries ~7 significant digits; more is noise that bloats the JSON


# ------------------------------------------------------------------ inputs and targets


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _as_batch(
    model: nn.Module, fgs1: Tensor | np.ndarray, airs_nodes: Tensor | np.ndarray
) -> tuple[Tensor, Tensor]:
    """One planet as a batch of one on the model's device: (1, T, 6), (1, 283, 8) float32."""
    device = _model_device(model)
    f = torch.as_tensor(fgs1, dtype=torch.float32, device=device)
    n = torch.as_tensor(airs_nodes, dtype=torch.float32, device=device)
    f = f.unsqueeze(0) if f.dim() == 2 else f
    n = n.unsqueeze(0) if n.dim() == 2 else n
    if f.dim() != 3 or f.shape[0] != 1 or f.shape[2] != 6:
        raise ValueError(f"fgs1 must have shape (T, 6) or (1, T, 6) (one planet), got {tuple(fgs1.shape)}")
    if tuple(n.shape) != (1, N_BINS, n.shape[2]) or n.shape[2] < 1:
        raise ValueError(f"airs_nodes must have shape ({N_BINS}, F) or (1, {N_BINS}, F), got {tuple(airs_nodes.shape)}")
    return f.detach(), n.detach()


def _baseline_batch(
    model: nn.Module,
    fgs1: Tensor,
    airs_nodes: Tensor,
    baseline: str | ModelInputs | tuple[Tensor | np.ndarray, Tensor | np.ndarray] | None,
) -> tuple[Tensor, Tensor]:
    """The reference inputs: "zero" (or None), "mean" (each feature's mean over time / over bins)
    or a reference planet's inputs. Shapes as the inputs: (1, T, 6), (1, 283, 8)."""
    if baseline is None or (isinstance(baseline, str) and baseline == "zero"):
        return torch.zeros_like(fgs1), torch.zeros_like(airs_nodes)
    if isinstance(baseline, str):
        if baseline != "mean":
            raise ValueError(
                f"baseline must be 'zero', 'mean', ModelInputs or a (fgs1, airs_nodes) pair, got {baseline!r}"
            )
        # A planet with every bin at its average features: what is left is each bin's deviation.
        mean_fgs1 = fgs1.mean(dim=1, keepdim=True).expand_as(fgs1)
        mean_nodes = airs_nodes.mean(dim=1, keepdim=True).expand_as(airs_nodes)
        return mean_fgs1.clone(), mean_nodes.clone()
    ref = (baseline.fgs1, baseline.airs_nodes) if isinstance(baseline, ModelInputs) else baseline
    bf, bn = _as_batch(model, ref[0], ref[1])
    if bf.shape != fgs1.shape or bn.shape != airs_nodes.shape:
        raise ValueError(
            f"baseline shapes {tuple(bf.shape)}, {tuple(bn.shape)} differ from the inputs' "
            f"{tuple(fgs1.shape)}, {tuple(airs_nodes.shape)}"
        )
    return bf, bn


def _output_bins(output_bins: int | Sequence[int] | None, default: Sequence[int]) -> list[int]:
    if output_bins is None:
        bins = list(default)
    else:
        bins = [int(output_bins)] if isinstance(output_bins, int) else list(output_bins)
    if not bins:
        raise ValueError("output_bins is empty")
    bad = [b for b in bins if not 0 <= int(b) < N_BINS]
    if bad:
        raise ValueError(f"output_bins must lie in [0, {N_BINS - 1}], got {bad[0]}")
    return [int(b) for b in bins]


def _check_quantity(quantity: str) -> None:
    if quantity not in QUANTITIES:
        raise ValueError(f"target quantity must be one of {QUANTITIES}, got {quantity!r}")


class _Eval:
    """Puts a model in eval mode (dropout off: attributions of a random forward are meaningless)
    and restores its mode afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.was_training = model, model.training

    def __enter__(self) -> nn.Module:
        self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)


# ------------------------------------------------------------------ attention


def attention_top_edges(
    out: V50Output,
    edge_index_with_loops: Tensor,
    k: int,
    index: int = 0,
    self_loops: bool = True,
) -> list[dict[str, Any]]:
    """The k strongest GAT attention edges of every layer and head of one planet.

    Each returned dict is ``{"layer", "head", "edges": [{"src", "dst", "weight",
    "src_wavelength_um", "dst_wavelength_um"}, ...]}`` with edges by decreasing weight. The
    weight of edge src -> dst is the softmax over dst's incoming edges (self loop included), so
    it lies in [0, 1]. ``self_loops=False`` leaves the self loops out of the ranking.

    Shapes:
        out.gat_attention: (B, L, E + 283, H); edge_index_with_loops: (2, E + 283).
        Returns L * H dicts, layer-major, each with min(k, E') edges.
    """
    att = out.gat_attention
    if att.dim() != 4 or att.numel() == 0:
        raise ValueError(
            f"gat_attention is empty (shape {tuple(att.shape)}): only the 'gat' backend of the AIRS GNN has attention"
        )
    if not 0 <= index < att.shape[0]:
        raise ValueError(f"index {index} is outside the batch of {att.shape[0]} planets")
    if edge_index_with_loops.shape != (2, att.shape[2]):
        raise ValueError(
            f"edge_index_with_loops must have shape (2, {att.shape[2]}) to match gat_attention, "
            f"got {tuple(edge_index_with_loops.shape)}"
        )
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    edges = edge_index_with_loops.detach().cpu().numpy()
    weights = att[index].detach().float().cpu().numpy()  # (L, E', H)
    keep = np.ones(edges.shape[1], dtype=bool) if self_loops else edges[0] != edges[1]
    cand = np.flatnonzero(keep)
    wl = wavelengths()
    result = []
    for layer in range(weights.shape[0]):
        for head in range(weights.shape[2]):
            w = weights[layer, cand, head]
            # Stable sort keeps ties in edge order, so the ranking is reproducible.
            top = cand[np.argsort(-w, kind="stable")[:k]]
            result.append(
                {
                    "layer": layer,
                    "head": head,
                    "edges": [
                        {
                            "src": int(edges[0, e]),
                            "dst": int(edges[1, e]),
                            "weight": float(weights[layer, e, head]),
                            "src_wavelength_um": float(wl[edges[0, e]]),
                            "dst_wavelength_um": float(wl[edges[1, e]]),
                        }
                        for e in top
                    ],
                }
            )
    return result


def attention_matrix(out: V50Output, edge_index_with_loops: Tensor, layer: int = -1, index: int = 0) -> np.ndarray:
    """Dense attention of one layer averaged over heads: ``A[dst, src]``; rows sum to 1.

    Shapes: out.gat_attention (B, L, E + 283, H) -> (283, 283).
    """
    att = out.gat_attention
    if att.dim() != 4 or att.numel() == 0:
        raise ValueError(f"gat_attention is empty (shape {tuple(att.shape)}): only the 'gat' backend has attention")
    w = att[index, layer].detach().float().mean(dim=-1).cpu().numpy()  # (E',)
    src, dst = edge_index_with_loops.detach().cpu().numpy()
    dense = np.zeros((N_BINS, N_BINS))
    np.add.at(dense, (dst, src), w)
    return dense


# ------------------------------------------------------------------ gradients


class IGResult(NamedTuple):
    """Integrated-gradients attributions of one planet.

    fgs1: (T, 6); airs_nodes: (283, 8); delta: captum's convergence delta, sum of all
    attributions minus (f(x) - f(baseline)) (completeness error of the path integral).
    """

    fgs1: Tensor
    airs_nodes: Tensor
    delta: float


def _scalar_forward(
    model: nn.Module, quantity: str, bins: list[int], reduce: str
) -> Callable[[Tensor, Tensor], Tensor]:
    """forward(fgs1 (P, T, 6), airs_nodes (P, 283, 8)) -> (P,): mu or sigma over ``bins``, summed or averaged."""
    _check_quantity(quantity)
    index = torch.tensor(bins, dtype=torch.long)

    def forward(fgs1: Tensor, airs_nodes: Tensor) -> Tensor:
        out = model(fgs1, airs_nodes)
        y = (out.mu if quantity == "mu" else out.sigma)[:, index.to(fgs1.device)]
        return y.sum(dim=1) if reduce == "sum" else y.mean(dim=1)

    return forward


def integrated_gradients(
    model: SpectraMindV50,
    fgs1: Tensor,
    airs_nodes: Tensor,
    target: str = "mu",
    output_bins: int | Sequence[int] | None = None,
    baseline: str | ModelInputs | tuple[Tensor, Tensor] = "zero",
    n_steps: int = 32,
    batch_size: int = 64,
) -> IGResult:
    """captum IntegratedGradients of ``target`` (mu or sigma) summed over ``output_bins``
    (default all 283) with respect to both inputs, with its convergence delta.

    Shapes: fgs1 (T, 6) or (1, T, 6), airs_nodes (283, 8) or (1, 283, 8) -> IGResult with
    fgs1 (T, 6), airs_nodes (283, 8).
    """
    x = _as_batch(model, fgs1, airs_nodes)
    b = _baseline_batch(model, *x, baseline)
    bins = _output_bins(output_bins, range(N_BINS))
    with _Eval(model):
        ig = IntegratedGradients(_scalar_forward(model, target, bins, "sum"))
        attr, delta = ig.attribute(
            x, baselines=b, n_steps=n_steps, internal_batch_size=batch_size, return_convergence_delta=True
        )
    return IGResult(attr[0][0].detach(), attr[1][0].detach(), float(delta.abs().max()))


def node_importance(
    model: SpectraMindV50,
    fgs1: Tensor,
    airs_nodes: Tensor,
    target: str = "mu",
    method: str = "ig",
    output_bins: int | Sequence[int] | None = None,
    per_output: bool = False,
    baseline: str | ModelInputs | tuple[Tensor, Tensor] = "zero",
    aggregate: str = "sum",
    n_steps: int = 32,
    batch_size: int = 64,
) -> Tensor:
    """Importance of every input bin (its 8 node features together) for the prediction.

    ``target`` mu or sigma, summed over ``output_bins`` (default all 283; an int picks one bin).
    ``method`` "ig" (IntegratedGradients from ``baseline``: "zero", "mean" or a reference
    planet) or "gxi" (InputXGradient, i.e. the gradient times the input, no baseline).
    ``aggregate`` "sum" keeps signs, so the IG values of all bins plus the FGS1 attributions add up
    to f(x) - f(baseline); "abs" sums magnitudes, so features that cancel still count.
    ``per_output=True`` explains every output bin separately (one attribution run each).

    Shapes: fgs1 (T, 6), airs_nodes (283, 8) (or with a leading 1) -> (283,), or
    (len(output_bins), 283) with ``per_output``.
    """
    if method not in ("ig", "gxi"):
        raise ValueError(f"method must be 'ig' or 'gxi', got {method!r}")
    if aggregate not in ("sum", "abs"):
        raise ValueError(f"aggregate must be 'sum' or 'abs', got {aggregate!r}")
    _check_quantity(target)
    bins = _output_bins(output_bins, range(N_BINS))
    groups = [[b] for b in bins] if per_output else [bins]
    x = _as_batch(model, fgs1, airs_nodes)
    rows = []
    for group in groups:
        if method == "ig":
            attr = integrated_gradients(model, *x, target, group, baseline, n_steps, batch_size).airs_nodes
        else:
            with _Eval(model):
                inputs = tuple(t.clone().requires_grad_(True) for t in x)
                attr = InputXGradient(_scalar_forward(model, target, group, "sum")).attribute(inputs)[1][0]
        attr = attr.detach()
        rows.append(attr.sum(dim=-1) if aggregate == "sum" else attr.abs().sum(dim=-1))
    return torch.stack(rows) if per_output else rows[0]


# ------------------------------------------------------------------ SHAP over groups


class ShapGroup(NamedTuple):
    """One feature group and its Shapley value.

    group: id (0..282 = bin rows, 283.. = FGS1 time segments); kind: "bin" or "fgs1_segment";
    bin: the bin index for a bin group, else None; wavelength_um: the bin's centre, else None;
    steps: (start, stop) FGS1 time steps of a segment, else None.
    """

    group: int
    kind: str
    bin: int | None
    wavelength_um: float | None
    steps: tuple[int, int] | None
    value: float

    def to_json(self) -> dict[str, Any]:
        d = self._asdict()
        d["steps"] = list(self.steps) if self.steps is not None else None
        return d


@dataclass
class ShapResult:
    """Shapley values of one planet's scalar target over feature groups.

    values: (283 + S,) group values, bins first (group g = bin g), then the S FGS1 time
    segments; segments: S (start, stop) step ranges; fx, f_baseline: the target at the inputs and
    at the baseline; target: "white" or a bin index; quantity: mu or sigma; output_bins: the bins
    a "white" target averages.
    """

    values: np.ndarray
    segments: list[tuple[int, int]]
    fx: float
    f_baseline: float
    method: str
    n_samples: int
    target: int | str
    quantity: str
    output_bins: list[int] = field(default_factory=list)

    @property
    def bin_values(self) -> np.ndarray:
        """(283,) the values of the bin groups."""
        return self.values[:N_BINS]

    @property
    def segment_values(self) -> np.ndarray:
        """(S,) the values of the FGS1 time-segment groups."""
        return self.values[N_BINS:]

    @property
    def efficiency_gap(self) -> float:
        """sum(values) - (f(x) - f(baseline)); zero for exact Shapley values."""
        return float(self.values.sum() - (self.fx - self.f_baseline))

    @property
    def efficiency_tolerance(self) -> float:
        """The bound on |efficiency_gap| this method guarantees (see the module docstring)."""
        # sum |values| measures how far the target moves between coalitions even when f(x) and
        # f(baseline) happen to be close, which is what the regression residuals scale with.
        scale = max(abs(self.fx), abs(self.f_baseline), float(np.abs(self.values).sum()))
        return EFFICIENCY_RTOL[self.method] * scale + EFFICIENCY_ATOL[self.method]

    def group(self, g: int) -> ShapGroup:
        wl = wavelengths()
        if g < N_BINS:
            return ShapGroup(g, "bin", g, float(wl[g]), None, float(self.values[g]))
        return ShapGroup(g, "fgs1_segment", None, None, self.segments[g - N_BINS], float(self.values[g]))

    def top_bins(self, k: int) -> list[ShapGroup]:
        """The k bin groups (FGS1 bin 0 and AIRS bins) with the largest |value|, largest first."""
        order = np.argsort(-np.abs(self.bin_values), kind="stable")[: max(k, 0)]
        return [self.group(int(g)) for g in order]

    def top_groups(self, k: int) -> list[ShapGroup]:
        """The k groups of any kind (bins and FGS1 segments) with the largest |value|."""
        order = np.argsort(-np.abs(self.values), kind="stable")[: max(k, 0)]
        return [self.group(int(g)) for g in order]

    def to_json(self, k: int) -> dict[str, Any]:
        return {
            "method": self.method,
            "n_samples": self.n_samples,
            "target": self.target,
            "quantity": self.quantity,
            "output_bins": self.output_bins,
            "fx": self.fx,
            "f_baseline": self.f_baseline,
            "sum_values": float(self.values.sum()),
            "efficiency_gap": self.efficiency_gap,
            "efficiency_tolerance": self.efficiency_tolerance,
            "top_bins": [g.to_json() for g in self.top_bins(k)],
            "fgs1_segments": [self.group(N_BINS + s).to_json() for s in range(len(self.segments))],
            "bin_values": _rounded(self.bin_values),
        }


def group_masks(
    n_steps: int, n_fgs1_segments: int, n_node_features: int = 8
) -> tuple[Tensor, Tensor, list[tuple[int, int]]]:
    """captum feature masks of the groups: bin g's row -> id g; FGS1 segment s -> id 283 + s.

    Shapes: returns fgs1 mask (1, T, 6), node mask (1, 283, F) (int64) and the S (start, stop)
    step ranges; segment s covers steps [floor(s T / S), floor((s + 1) T / S)).
    """
    if not 1 <= n_fgs1_segments <= n_steps:
        raise ValueError(f"n_fgs1_segments must be in [1, {n_steps}] (the FGS1 steps), got {n_fgs1_segments}")
    seg = (torch.arange(n_steps) * n_fgs1_segments) // n_steps
    fgs1_mask = (N_BINS + seg).view(1, n_steps, 1).expand(1, n_steps, 6).contiguous()
    node_mask = torch.arange(N_BINS).view(1, N_BINS, 1).expand(1, N_BINS, n_node_features).contiguous()
    bounds = [(s * n_steps // n_fgs1_segments, (s + 1) * n_steps // n_fgs1_segments) for s in range(n_fgs1_segments)]
    return fgs1_mask, node_mask, bounds


class _WeightedLeastSquares(CaptumModel):
    """KernelSHAP's regression, solved exactly in float64 with torch (captum's default needs
    scikit-learn, which this project does not depend on). Fits y ~ b + z.w with sample weights;
    ``representation`` is w, (1, M)."""

    def __init__(self) -> None:
        self.weights: Tensor | None = None
        self.intercept: Tensor | None = None

    def fit(self, train_data: DataLoader, **kwargs: object) -> dict[str, float]:
        zs, ys, ws = [], [], []
        for z, y, w in train_data:
            zs.append(z)
            ys.append(y)
            ws.append(w)
        z = torch.cat(zs).double()
        y = torch.cat(ys).double().reshape(-1)
        w = torch.cat(ws).double().reshape(-1)
        design = torch.cat([torch.ones(len(z), 1, dtype=z.dtype), z], dim=1)
        root = w.sqrt()
        # gelsd gives the minimum-norm solution when there are fewer coalitions than groups.
        sol = torch.linalg.lstsq(design * root[:, None], (y * root)[:, None], driver="gelsd").solution[:, 0]
        self.intercept, self.weights = sol[:1], sol[1:]
        return {}

    def representation(self) -> Tensor:
        if self.weights is None:
            raise RuntimeError("fit must run before representation")
        return self.weights[None, :].float()

    def __call__(self, x: Tensor) -> Tensor:
        if self.weights is None or self.intercept is None:
            raise RuntimeError("fit must run before use")
        return self.intercept + x.double() @ self.weights


def shap_groups(
    model: SpectraMindV50,
    fgs1: Tensor,
    airs_nodes: Tensor,
    output_bins: Sequence[int] | None = None,
    n_fgs1_segments: int = 8,
    n_samples: int | None = None,
    *,
    target: int | str = "white",
    quantity: str = "mu",
    method: str = "sampling",
    baseline: ModelInputs | tuple[Tensor, Tensor] | str | None = None,
    batch_size: int = 64,
    seed: int = 0,
) -> ShapResult:
    """Shapley values of a scalar target over feature groups (283 bin rows + FGS1 time segments).

    The target is ``quantity`` (mu or sigma) of the prediction: ``target="white"`` averages it
    over ``output_bins`` (default the 282 AIRS bins 1..282), an int ``target`` takes that bin.
    A group is "present" with the inputs' values and "absent" with the baseline's: zeros by
    default, or a reference planet's inputs (ModelInputs or a (fgs1, airs_nodes) pair, "mean").

    ``method="sampling"``: captum ShapleyValueSampling, ``n_samples`` random permutations
    (default 8; each costs 283 + S + 1 forwards); efficient exactly. ``method="kernel"``:
    captum KernelShap with ``n_samples`` coalitions (default 1024); efficient approximately.
    ``seed`` fixes the permutations / coalitions without touching the global RNG.

    Shapes: fgs1 (T, 6) or (1, T, 6), airs_nodes (283, 8) or (1, 283, 8) ->
    :class:`ShapResult` with values (283 + n_fgs1_segments,).
    """
    if method not in SHAP_METHODS:
        raise ValueError(f"method must be one of {SHAP_METHODS}, got {method!r}")
    _check_quantity(quantity)
    if isinstance(target, str):
        if target != "white":
            raise ValueError(f"target must be 'white' or a bin index, got {target!r}")
        bins = _output_bins(output_bins, range(1, N_BINS))
    else:
        bins = _output_bins(int(target), ())
    samples = DEFAULT_SHAP_SAMPLES[method] if n_samples is None else int(n_samples)
    if samples < 1:
        raise ValueError(f"n_samples must be at least 1, got {samples}")
    x = _as_batch(model, fgs1, airs_nodes)
    b = _baseline_batch(model, *x, baseline)
    fmask, nmask, bounds = group_masks(x[0].shape[1], n_fgs1_segments, x[1].shape[2])
    masks = (fmask.to(x[0].device), nmask.to(x[0].device))
    forward = _scalar_forward(model, quantity, bins, "mean")

    with _Eval(model), torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fx = float(forward(*x)[0])
        fb = float(forward(*b)[0])
        if method == "sampling":
            attr = ShapleyValueSampling(forward).attribute(
                x, baselines=b, feature_mask=masks, n_samples=samples, perturbations_per_eval=batch_size
            )
            # Every element of a group carries the group's whole value: read it back per group.
            values = torch.zeros(N_BINS + n_fgs1_segments, dtype=torch.float64)
            for a, m in zip(attr, masks):
                values.scatter_(0, m.reshape(-1).cpu(), a.detach().reshape(-1).double().cpu())
        else:
            explainer = KernelShap(forward)
            explainer.interpretable_model = _WeightedLeastSquares()
            coef = explainer.attribute(
                x,
                baselines=b,
                feature_mask=masks,
                n_samples=samples,
                perturbations_per_eval=batch_size,
                return_input_shape=False,
            )
            values = coef.detach().reshape(-1).double().cpu()
    return ShapResult(
        values=values.numpy(),
        segments=bounds,
        fx=fx,
        f_baseline=fb,
        method=method,
        n_samples=samples,
        target=target if isinstance(target, str) else int(target),
        quantity=quantity,
        output_bins=bins,
    )


# ------------------------------------------------------------------ options


@dataclass
class ExplainOptions:
    """What :func:`explain_planet` computes and writes.

    From the composed config (:meth:`from_config`): ``cfg.explainability`` (export_dir,
    capture_*, shap.{enable, topk_bins, save_png, save_json}) and ``cfg.model.explainability``
    (export_attention, export_node_importance, shap.{enable, topk_bins, overlay_symbolic}).
    A part is computed only when both files switch it on. ``save_png`` / ``save_json`` switch
    every PNG / the JSON. The remaining fields have no YAML key; ``shap.method``,
    ``shap.n_samples``, ``shap.n_fgs1_segments``, ``attention_topk`` and ``node_importance_method``
    are read when present (``+explainability.shap.n_samples=4``).
    """

    export_dir: Path = Path("outputs/explainability")
    attention: bool = True
    node_importance: bool = True
    latents_fgs1_steps: bool = False
    latents_airs_nodes: bool = True
    shap: bool = True
    topk_bins: int = 24
    save_png: bool = True
    save_json: bool = True
    overlay_symbolic: bool = True
    shap_method: str = "sampling"
    shap_samples: int | None = None
    n_fgs1_segments: int = 8
    attention_topk: int = 10
    node_importance_method: str = "ig"

    def __post_init__(self) -> None:
        self.export_dir = Path(self.export_dir)
        if self.shap_samples is not None:
            self.shap_samples = int(self.shap_samples)
            if self.shap_samples < 1:
                raise ValueError(f"explainability.shap.n_samples must be at least 1, got {self.shap_samples}")
        if self.shap_method not in SHAP_METHODS:
            raise ValueError(f"explainability.shap.method must be one of {SHAP_METHODS}, got {self.shap_method!r}")
        if self.node_importance_method not in ("ig", "gxi"):
            raise ValueError(
                f"explainability.node_importance_method must be 'ig' or 'gxi', got {self.node_importance_method!r}"
            )
        for name in ("topk_bins", "n_fgs1_segments", "attention_topk"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"explainability.{name} must be at least 1, got {getattr(self, name)!r}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | DictConfig) -> "ExplainOptions":
        """From a composed root config (``cfg.explainability`` and ``cfg.model.explainability``)
        or from one explainability mapping (the two already merged)."""
        plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        if "explainability" in plain or "model" in plain:
            root = dict(plain.get("explainability") or {})
            model = dict((plain.get("model") or {}).get("explainability") or {})
        else:
            root, model = plain, {}
        rshap, mshap = dict(root.get("shap") or {}), dict(model.get("shap") or {})
        latents = dict(root.get("capture_latents") or {})

        def both(a: Mapping[str, Any], ka: str, b: Mapping[str, Any], kb: str) -> bool:
            return bool(a.get(ka, True)) and bool(b.get(kb, True))

        return cls(
            export_dir=Path(root.get("export_dir", cls.export_dir)),
            attention=both(root, "capture_attention", model, "export_attention"),
            node_importance=both(root, "capture_node_importance", model, "export_node_importance"),
            latents_fgs1_steps=bool(latents.get("fgs1_steps", False)),
            latents_airs_nodes=bool(latents.get("airs_nodes", True)),
            shap=both(rshap, "enable", mshap, "enable"),
            topk_bins=int(rshap.get("topk_bins", mshap.get("topk_bins", 24))),
            save_png=bool(rshap.get("save_png", True)),
            save_json=bool(rshap.get("save_json", True)),
            overlay_symbolic=bool(mshap.get("overlay_symbolic", rshap.get("overlay_symbolic", True))),
            shap_method=str(rshap.get("method", mshap.get("method", "sampling"))),
            shap_samples=rshap.get("n_samples", mshap.get("n_samples")),
            n_fgs1_segments=int(rshap.get("n_fgs1_segments", mshap.get("n_fgs1_segments", 8))),
            attention_topk=int(root.get("attention_topk", 10)),
            node_importance_method=str(root.get("node_importance_method", "ig")),
        )


# ------------------------------------------------------------------ one planet


def _rounded(arr: np.ndarray | Tensor) -> Any:
    """Nested lists of floats with ``_JSON_DIGITS`` significant digits."""
    a = arr.detach().cpu().double().numpy() if isinstance(arr, Tensor) else np.asarray(arr, dtype=np.float64)
    return np.vectorize(lambda v: float(f"{v:.{_JSON_DIGITS}g}"), otypes=[object])(a).tolist() if a.size else a.tolist()


def _model_grid(model: SpectraMindV50) -> BinGrid:
    sym = getattr(model, "config", {}).get("symbolic") or {}
    return grid_from_profile(sym) if sym else load_grid()


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)  # Agg canvas: no display, no pyplot state shared with the caller
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def _plot_attention(dense: np.ndarray, layer: int, path: Path) -> Path:
    fig = Figure(figsize=(6.4, 5.6))
    ax = fig.add_subplot()
    # Most of the 283^2 entries are 0 and a few near 1: a square-root scale shows the weak edges.
    im = ax.imshow(dense, origin="lower", cmap="magma", norm=PowerNorm(0.5, vmin=0.0, vmax=max(dense.max(), 1e-12)))
    ax.set_xlabel("source bin")
    ax.set_ylabel("destination bin")
    ax.set_title(f"GAT attention, layer {layer}, mean over heads")
    fig.colorbar(im, ax=ax, label="weight")
    return _save(fig, path)


def _plot_importance(values: np.ndarray, label: str, path: Path) -> Path:
    fig = Figure(figsize=(8, 3.6))
    ax = fig.add_subplot()
    bins = np.arange(N_BINS)
    ax.bar(bins[1:], values[1:], width=1.0, color="tab:blue", label="AIRS")
    ax.bar(bins[:1], values[:1], width=1.0, color="tab:orange", label="FGS1")
    ax.axhline(0.0, color="k", lw=0.5)
    ax.set_xlabel("input bin (0 = FGS1, 1..282 = AIRS, blue to red)")
    ax.set_ylabel(label)
    ax.set_title("node importance")
    ax.legend(loc="best")
    return _save(fig, path)


def _plot_shap(
    mu: np.ndarray, sigma: np.ndarray, shap: ShapResult | None, k: int, grid: BinGrid, overlay: bool, path: Path
) -> Path:
    wl = wavelengths()
    fig = Figure(figsize=(9, 4.2))
    ax = fig.add_subplot()
    if overlay:
        colours = ("tab:cyan", "tab:olive", "tab:pink", "tab:purple", "tab:brown", "tab:gray")
        for i, (name, ranges) in enumerate(grid.molecule_windows.items()):
            for j, (lo, hi) in enumerate(ranges):
                colour = colours[i % len(colours)]
                ax.axvspan(wl[lo], wl[hi], color=colour, alpha=0.15, lw=0, label=name if j == 0 else None)
    ax.fill_between(wl[1:], (mu - sigma)[1:], (mu + sigma)[1:], color="tab:blue", alpha=0.25, lw=0, label="±σ")
    ax.plot(wl[1:], mu[1:], color="tab:blue", lw=1.0, label="μ (AIRS)")
    ax.errorbar(wl[:1], mu[:1], yerr=sigma[:1], fmt="s", color="tab:orange", ms=4, label="μ (FGS1)")
    if shap is not None:
        top = shap.top_bins(k)
        idx = np.array([g.bin for g in top], dtype=int)
        vals = np.array([g.value for g in top])
        vmax = max(float(np.abs(vals).max()) if len(vals) else 0.0, 1e-30)
        size = 20 + 180 * np.abs(vals) / vmax
        sc = ax.scatter(
            wl[idx], mu[idx], s=size, c=vals, cmap="coolwarm", norm=TwoSlopeNorm(0.0, -vmax, vmax),
            edgecolors="k", linewidths=0.5, zorder=3, label=f"SHAP top {len(top)}",
        )
        fig.colorbar(sc, ax=ax, label=f"SHAP value ({shap.quantity}, target {shap.target})")
    ax.set_xlabel("wavelength (µm)")
    ax.set_ylabel("(Rp/Rs)²")
    ax.set_title("predicted spectrum" + (" and SHAP top bins" if shap is not None else ""))
    ax.legend(loc="best", fontsize=7)
    return _save(fig, path)


def explain_planet(
    model: SpectraMindV50,
    inputs: ModelInputs,
    cfg_explain: Mapping[str, Any] | DictConfig | ExplainOptions,
    out_dir: Path,
    planet_id: int,
) -> dict[str, Path]:
    """Explain one planet and write the results under ``out_dir`` (export_dir/<planet_id>/).

    Writes ``explain.json`` (planet_id, wavelengths, mu, sigma, SHAP top-k bins with values and
    wavelengths, GAT top edges per layer and head, node importance, latents as asked) and
    ``attention.png``, ``node_importance.png``, ``shap_topk.png``, each only when its switch is on
    (``cfg_explain``: a composed root config, a merged explainability mapping or ExplainOptions).
    ``shap_topk.png`` is the spectrum with its ±sigma band even when SHAP is off.

    Shapes: inputs.fgs1 (T, 6), inputs.airs_nodes (283, 8). Returns {name: path written}.
    """
    opts = cfg_explain if isinstance(cfg_explain, ExplainOptions) else ExplainOptions.from_config(cfg_explain)
    if int(inputs.planet_id) != int(planet_id):
        raise ValueError(f"planet_id {planet_id} does not match inputs.planet_id {inputs.planet_id}")
    out_dir = Path(out_dir)
    batch = stack_inputs([inputs])
    x = _as_batch(model, batch["fgs1"], batch["airs_nodes"])
    with _Eval(model), torch.no_grad():
        out = model(*x)
    mu = out.mu[0].double().cpu().numpy()
    sigma = out.sigma[0].double().cpu().numpy()
    report: dict[str, Any] = {
        "planet_id": int(planet_id),
        "wavelength_um": _rounded(wavelengths()),
        "mu": _rounded(mu),
        "sigma": _rounded(sigma),
    }

    edges_loop = model.edge_index_with_loops
    has_attention = out.gat_attention.numel() > 0
    if opts.attention:
        if has_attention:
            report["attention"] = {
                "layers": int(out.gat_attention.shape[1]),
                "heads": int(out.gat_attention.shape[3]),
                "top_edges": attention_top_edges(out, edges_loop, opts.attention_topk),
            }
        else:
            log.info("planet %s: the AIRS GNN backend has no attention to explain", planet_id)
            report["attention"] = None

    importance = None
    if opts.node_importance:
        importance = node_importance(model, *x, target="mu", method=opts.node_importance_method)
        report["node_importance"] = {
            "method": opts.node_importance_method,
            "target": "mu summed over all bins",
            "baseline": "zero" if opts.node_importance_method == "ig" else None,
            "values": _rounded(importance),
        }

    shap = None
    if opts.shap:
        shap = shap_groups(
            model, *x, n_fgs1_segments=min(opts.n_fgs1_segments, x[0].shape[1]),
            n_samples=opts.shap_samples, method=opts.shap_method,
        )
        report["shap"] = shap.to_json(opts.topk_bins)

    latents: dict[str, Any] = {}
    if opts.latents_airs_nodes:
        latents["airs_nodes"] = _rounded(out.node_embeddings[0])
    if opts.latents_fgs1_steps:
        if model.fgs1 is None:
            latents["fgs1_steps"] = None
        else:
            # The forward only returns step latents when the model was built to export them.
            steps = out.fgs1_latents[0] if out.fgs1_latents.shape[1] else None
            if steps is None:
                with _Eval(model), torch.no_grad():
                    steps = model.fgs1(x[0]).steps[0]
            latents["fgs1_steps"] = _rounded(steps)
    if latents:
        report["latents"] = latents

    written: dict[str, Path] = {}
    if opts.save_json or opts.save_png:
        out_dir.mkdir(parents=True, exist_ok=True)
    if opts.save_json:
        path = out_dir / "explain.json"
        tmp = path.with_name(path.name + ".tmp")
        # allow_nan=False: a NaN would make the file unreadable to strict JSON parsers; fail here instead.
        tmp.write_text(json.dumps(report, allow_nan=False))
        tmp.replace(path)
        written["json"] = path
    if opts.save_png:
        if opts.attention and has_attention:
            layer = int(out.gat_attention.shape[1]) - 1
            written["attention_png"] = _plot_attention(
                attention_matrix(out, edges_loop, layer), layer, out_dir / "attention.png"
            )
        if importance is not None:
            written["node_importance_png"] = _plot_importance(
                importance.cpu().numpy(), f"{opts.node_importance_method} attribution (mu, all bins)",
                out_dir / "node_importance.png",
            )
        written["shap_png"] = _plot_shap(
            mu, sigma, shap, opts.topk_bins, _model_grid(model), opts.overlay_symbolic, out_dir / "shap_topk.png"
        )
    return written


# ------------------------------------------------------------------ from a checkpoint


def _find_planet(lcdir: Path, planet_id: int, split: str | None) -> tuple[str, list[Path]]:
    splits = (split,) if split else ("train", "test")
    found = [(s, list_lightcurves(lcdir, s).get(planet_id)) for s in splits]
    found = [(s, paths) for s, paths in found if paths]
    if not found:
        raise ValueError(f"planet {planet_id} has no light curves in {lcdir} (split {' or '.join(splits)})")
    if len(found) > 1:
        raise ValueError(f"planet {planet_id} is in both the train and the test split of {lcdir}")
    return found[0]


def explain_from_checkpoint(
    ckpt: Path,
    lcdir: Path,
    planet_id: int,
    cfg: Mapping[str, Any] | DictConfig,
    out_dir: Path | None = None,
    split: str | None = None,
) -> dict[str, Path]:
    """Explain one planet of a light-curve directory with the model of a checkpoint.

    Loads ``SpectraMindV50.from_checkpoint(ckpt)``, the planet's visits from
    ``LCDIR/{train,test}/<planet_id>/`` (``split`` forces one), its star from
    ``LCDIR/{split}_star_info.csv`` when present, builds the inputs with ``planet_inputs``
    (with the feature options the checkpoint was trained with, ``meta["features"]``; those of
    ``cfg`` for a checkpoint without them) and writes :func:`explain_planet`'s files to
    ``out_dir`` (default ``cfg.explainability.export_dir/<planet_id>``).

    Raises ValueError naming the planet and the LCDIR when the planet is not there.
    Returns {name: path written}.
    """
    lcdir, planet_id = Path(lcdir), int(planet_id)
    which, paths = _find_planet(lcdir, planet_id, split)
    model = SpectraMindV50.from_checkpoint(ckpt, map_location="cpu").eval()
    visits = [LightCurves.load(p) for p in paths]
    star = None
    if (lcdir / f"{which}_star_info.csv").is_file():
        stars = read_star_info(lcdir, which)
        if planet_id in stars.index:
            row = stars.loc[planet_id]
            if getattr(row, "ndim", 1) != 1:
                raise ValueError(f"{lcdir / f'{which}_star_info.csv'}: planet {planet_id} has more than one row")
            star = row.to_dict()
    meta = torch.load(ckpt, map_location="cpu", weights_only=True).get("meta") or {}
    features = options_from_meta(meta, ckpt) if "features" in meta else FeatureOptions.from_config(cfg)
    inputs = planet_inputs(visits, star, features)
    options = ExplainOptions.from_config(cfg)
    target = Path(out_dir) if out_dir is not None else options.export_dir / str(planet_id)
    return explain_planet(model, inputs, options, target, planet_id)
