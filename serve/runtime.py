"""The artifact at run time: verify its hashes, load TorchScript or ONNX Runtime on a device, warm up.

:func:`open_artifact` is the tamper check (:func:`spectramind.artifact.verify_artifact`: every
file's sha256 and the manifest's own) plus what the server needs from the manifest: the feature
options (so requests become exactly the inputs the model learned from), the golden planets, the
batch buckets. :func:`load_runtime` loads the chosen format on the chosen device
(:func:`choose_device`: ``auto`` is cuda when torch sees one, else cpu). :func:`warm_up` runs a
forward at every batch bucket, golden planets cycled to fill the batch, and compares the outputs
with the golden ones: only a runtime that reproduces the export-time outputs may serve.

Tolerances of the golden comparison are those of ``export.parity``: on the CPU rtol 1e-4,
atol 1e-7 ((Rp/Rs)^2: sigma ~1e-4, mu ~1e-2); on a GPU rtol 1e-3, atol 1e-6 (the Triton kernels
and cuDNN sum in other orders than the CPU reference the golden outputs come from).

Shapes: forward takes fgs1 (B, T, 6), airs_nodes (B, 283, 8) float32 and returns mu, sigma
(B, 283) float32 numpy arrays.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import spectramind  # noqa: F401  (registers the spectramind ops a TorchScript graph names)
from spectramind.artifact import read_golden, verify_artifact
from spectramind.bins import N_BINS
from spectramind.data.features import FeatureOptions, options_from_meta

__all__ = [
    "Artifact",
    "OnnxRuntime",
    "Runtime",
    "TorchScriptRuntime",
    "WarmupError",
    "choose_device",
    "load_runtime",
    "open_artifact",
    "warm_up",
]

log = logging.getLogger("spectramind.serve")

TOLERANCES = {"cpu": (1e-4, 1e-7), "cuda": (1e-3, 1e-6)}  # (rtol, atol), as export.parity
RUNTIME_FILES = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx"}
_FORMAT_KEYS = {"torchscript": "torchscript", "onnx": "onnx"}


class WarmupError(RuntimeError):
    """The loaded runtime does not reproduce the artifact's golden outputs (or cannot run)."""


@dataclass
class Artifact:
    """A verified artifact directory and what the server reads from it.

    Shapes: golden fgs1 (G, T, 6), airs_nodes (G, 283, 8), mu, sigma (G, 283).
    """

    root: Path
    manifest: dict[str, Any]
    options: FeatureOptions
    golden: dict[str, np.ndarray]
    fgs1_steps: int
    buckets: tuple[int, ...]
    wavelength_um: np.ndarray = field(repr=False)

    @property
    def sha256(self) -> str:
        return str(self.manifest["manifest_sha256"])

    @property
    def checkpoint(self) -> Path | None:
        """The checkpoint copied into the artifact (for the eager model of explanations), if any."""
        entry = (self.manifest.get("formats") or {}).get("checkpoint") or {}
        name = entry.get("file")
        return self.root / name if name and name in self.manifest.get("files", {}) else None


def open_artifact(root: str | Path) -> Artifact:
    """Verify every hash of ``root`` and read its manifest, feature options and golden planets.

    Raises ValueError naming the culprit: a tampered, missing or unlisted file
    (:func:`verify_artifact`), feature options of another version, malformed golden planets.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"artifact {root} is not a directory (SPECTRAMIND_ARTIFACT)")
    manifest = verify_artifact(root)
    features = manifest.get("features") or {}
    meta = {"features_version": features.get("version"), "features": features.get("options")}
    options = options_from_meta(meta, f"artifact {root}")
    golden = read_golden(root)
    steps = int(options.fgs1_steps)
    g = golden["fgs1"]
    if g.ndim != 3 or g.shape[1:] != (steps, 6) or golden["airs_nodes"].shape[1:] != (N_BINS, 8):
        raise ValueError(f"artifact {root}: golden.npz inputs have shapes {g.shape}, {golden['airs_nodes'].shape}; "
                         f"the manifest's features say ({steps}, 6) and ({N_BINS}, 8)")
    buckets = tuple(sorted({int(b) for b in manifest.get("batch_buckets") or [1]}))
    wl = np.asarray((manifest.get("bins") or {}).get("wavelength_um"), dtype=np.float64)
    if wl.shape != (N_BINS,):
        raise ValueError(f"artifact {root}: manifest bins.wavelength_um must have {N_BINS} values, got {wl.shape}")
    return Artifact(root, manifest, options, golden, steps, buckets, wl)


def choose_device(setting: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; an explicit cuda without one is an error."""
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"SPECTRAMIND_DEVICE={setting}: torch sees no CUDA device")
    return setting


class Runtime(ABC):
    """One loaded model; only the batcher's worker thread calls :meth:`forward` once serving."""

    kind: str
    device: str

    @abstractmethod
    def forward(self, fgs1: np.ndarray, airs_nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Shapes: fgs1 (B, T, 6), airs_nodes (B, 283, 8) float32 -> mu, sigma (B, 283) float32."""

    def describe(self) -> dict[str, Any]:
        return {"runtime": self.kind, "device": self.device}


class TorchScriptRuntime(Runtime):
    """``torch.jit.load`` of ``model.torchscript.pt``; on a GPU the ops run their Triton kernels."""

    kind = "torchscript"

    def __init__(self, path: Path, device: str) -> None:
        self.device = device
        self.module = torch.jit.load(str(path), map_location=device).eval()
        # Predictions outrank explanations on a shared GPU: their stream gets the high priority.
        self.stream = torch.cuda.Stream(device=device, priority=-1) if device.startswith("cuda") else None

    def forward(self, fgs1: np.ndarray, airs_nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f = torch.from_numpy(np.ascontiguousarray(fgs1, dtype=np.float32))
        n = torch.from_numpy(np.ascontiguousarray(airs_nodes, dtype=np.float32))
        with torch.inference_mode():
            if self.stream is None:
                mu, sigma = self.module(f, n)
                return mu.float().numpy(), sigma.float().numpy()
            with torch.cuda.stream(self.stream):
                mu, sigma = self.module(f.to(self.device, non_blocking=True), n.to(self.device, non_blocking=True))
                mu, sigma = mu.float().cpu(), sigma.float().cpu()
            return mu.numpy(), sigma.numpy()


class OnnxRuntime(Runtime):
    """An onnxruntime InferenceSession of ``model.onnx`` with ``export.onnx_export.ORT_PROVIDERS``."""

    kind = "onnx"

    def __init__(self, path: Path, device: str, threads: int) -> None:
        import onnxruntime as ort

        from export.onnx_export import ORT_PROVIDERS

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=ORT_PROVIDERS(device))
        self.providers = list(self.session.get_providers())
        if device.startswith("cuda") and self.providers[0] != "CUDAExecutionProvider":
            raise ValueError(f"SPECTRAMIND_RUNTIME=onnx on {device}: this onnxruntime has no CUDA provider "
                             f"(providers {self.providers}); install onnxruntime-gpu or set SPECTRAMIND_DEVICE=cpu")
        self.device = device

    def forward(self, fgs1: np.ndarray, airs_nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feeds = {"fgs1": np.ascontiguousarray(fgs1, dtype=np.float32),
                 "airs_nodes": np.ascontiguousarray(airs_nodes, dtype=np.float32)}
        mu, sigma = self.session.run(["mu", "sigma"], feeds)
        return mu, sigma

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "providers": self.providers}


def load_runtime(artifact: Artifact, kind: str, device: str, threads: int) -> Runtime:
    """Load format ``kind`` (torchscript | onnx) of ``artifact`` on ``device``.

    Raises ValueError naming the setting when the artifact lacks the format or its TorchScript
    trace baked another device into the graph.
    """
    if kind not in RUNTIME_FILES:
        raise ValueError(f"SPECTRAMIND_RUNTIME must be torchscript or onnx, got {kind!r}")
    facts = (artifact.manifest.get("formats") or {}).get(_FORMAT_KEYS[kind])
    name = (facts or {}).get("file", RUNTIME_FILES[kind])
    if not facts or name not in artifact.manifest.get("files", {}):
        have = sorted(k for k in (artifact.manifest.get("formats") or {}) if k in RUNTIME_FILES)
        raise ValueError(f"SPECTRAMIND_RUNTIME={kind}: artifact {artifact.root} has no {kind} model "
                         f"(it has {', '.join(have) or 'none'})")
    torch.set_num_threads(threads)
    if kind == "torchscript":
        baked = facts.get("baked_devices") or {}
        foreign = [d for d in baked if str(d).split(":")[0] != device.split(":")[0]]
        if foreign:
            raise ValueError(f"SPECTRAMIND_RUNTIME=torchscript on {device}: artifact {artifact.root} "
                             f"{name} has {', '.join(foreign)} baked into its graph; use SPECTRAMIND_RUNTIME=onnx")
        return TorchScriptRuntime(artifact.root / name, device)
    return OnnxRuntime(artifact.root / name, device, threads)


def tile(x: np.ndarray, batch: int) -> np.ndarray:
    """``batch`` rows of ``x`` cycling through its rows (row i is x[i mod len(x)])."""
    return np.ascontiguousarray(x[np.arange(batch) % len(x)])


def warm_up(
    run: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    artifact: Artifact,
    device: str,
    buckets: Sequence[int],
    rtol: float | None = None,
) -> list[dict[str, Any]]:
    """A forward at every batch size of ``buckets`` on golden planets (cycled), compared with the
    golden outputs; returns one row per bucket (batch, seconds, max abs/rel errors).

    Raises WarmupError naming the bucket, the output and the error when a result is off or not finite.
    """
    kind = "cuda" if device.startswith("cuda") else "cpu"
    default_rtol, atol = TOLERANCES[kind]
    rtol = default_rtol if rtol is None or kind == "cuda" and rtol < default_rtol else rtol
    g = artifact.golden
    rows = []
    for batch in sorted({int(b) for b in buckets}):
        fgs1, nodes = tile(g["fgs1"], batch), tile(g["airs_nodes"], batch)
        # Twice: TorchScript's profiling executor specialises a graph on its second call of a shape,
        # so the second forward is the one that serves; both are checked.
        for _ in range(2):
            t0 = time.perf_counter()
            try:
                mu, sigma = run(fgs1, nodes)
            except Exception as exc:
                raise WarmupError(f"warm-up at batch {batch} on {device} failed: {type(exc).__name__}: {exc}") from exc
            seconds = time.perf_counter() - t0
            errors = _compare(batch, device, g, mu, sigma, rtol, atol)
        rows.append({"batch": batch, "seconds": seconds, **errors})
    return rows


def _compare(batch: int, device: str, g: dict[str, np.ndarray], mu: np.ndarray, sigma: np.ndarray,
             rtol: float, atol: float) -> dict[str, float]:
    """Max abs/rel errors of one warm-up forward against the golden outputs; WarmupError when off."""
    row: dict[str, float] = {}
    for name, got in (("mu", mu), ("sigma", sigma)):
        ref = tile(g[name], batch).astype(np.float64)
        got = np.asarray(got, dtype=np.float64)
        if got.shape != ref.shape:
            raise WarmupError(f"warm-up at batch {batch}: {name} has shape {got.shape}, golden {ref.shape}")
        if not np.isfinite(got).all():
            raise WarmupError(f"warm-up at batch {batch}: {name} has non-finite values")
        diff = np.abs(got - ref)
        row[f"{name}_max_abs"] = float(diff.max())
        row[f"{name}_max_rel"] = float((diff / np.maximum(np.abs(ref), 1e-30)).max())
        if not np.all(diff <= atol + rtol * np.abs(ref)):
            raise WarmupError(
                f"warm-up at batch {batch} on {device}: {name} differs from the artifact's golden outputs "
                f"(max abs {row[f'{name}_max_abs']:.3g}, max rel {row[f'{name}_max_rel']:.3g}; "
                f"tolerance rtol {rtol:g}, atol {atol:g})"
            )
    return row
