"""Parity of the exported formats with the eager model: the artifact must give the eager mu and sigma.

For every batch bucket B the golden planets are tiled to B planets (planet i of the batch is
golden planet i mod G) and run through the eager :class:`export.module.ExportModule` (the
reference, on the export device) and through each exported runtime:

- ``torchscript``: the saved file, reloaded with ``torch.jit.load`` on the export device;
- ``onnxruntime``: the ONNX file in an ``InferenceSession`` with the CPU execution provider,
  and again with the CUDA provider when onnxruntime-gpu is installed and a GPU is present.

Per (runtime, device, bucket) the table records, for mu and for sigma, the maximum absolute
error max|x - ref| and the maximum relative error max|x - ref| / max(|ref|, 1e-30); a row passes
when every element satisfies |x - ref| <= atol + rtol |ref| (``numpy.allclose``) and is finite.
Default tolerances: fp32 on the CPU rtol 1e-4, atol 1e-7 ((Rp/Rs)^2: sigma is ~1e-4, mu ~1e-2);
a row that involves a GPU (eager on CUDA, or the CUDA provider) rtol 1e-3, atol 1e-6, since the
Triton kernels and onnxruntime's CUDA kernels sum in other orders. Both are overridable.

Shapes: golden fgs1 (G, T, 6), airs_nodes (G, 283, 8) float32; outputs mu, sigma (B, 283).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.table import Table
from torch import nn

__all__ = [
    "DEFAULT_TOLERANCES",
    "ParityError",
    "ParityRow",
    "check_parity",
    "eager_runner",
    "parity_record",
    "Runner",
    "Tolerance",
    "onnxruntime_runners",
    "parity_table",
    "run_parity",
    "tile",
    "torchscript_runner",
]

Runner = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
_TINY = 1e-30


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float


DEFAULT_TOLERANCES = {"cpu": Tolerance(rtol=1e-4, atol=1e-7), "cuda": Tolerance(rtol=1e-3, atol=1e-6)}


class ParityError(RuntimeError):
    """An exported runtime's outputs differ from the eager model's beyond the tolerance."""


@dataclass
class ParityRow:
    runtime: str
    device: str
    batch: int
    mu_max_abs: float
    mu_max_rel: float
    sigma_max_abs: float
    sigma_max_rel: float
    rtol: float
    atol: float
    passed: bool
    failed_outputs: str  # "", "mu", "sigma" or "mu,sigma"


def tile(x: np.ndarray, batch: int) -> np.ndarray:
    """``batch`` rows of ``x`` cycling through its rows (row i is x[i mod len(x)])."""
    return np.ascontiguousarray(x[np.arange(batch) % len(x)])


def _errors(got: np.ndarray, ref: np.ndarray, tol: Tolerance) -> tuple[float, float, bool]:
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        return float("inf"), float("inf"), False
    diff = np.abs(got - ref)
    finite = bool(np.isfinite(got).all() and np.isfinite(ref).all())
    max_abs = float(diff.max()) if finite else float("inf")
    max_rel = float((diff / np.maximum(np.abs(ref), _TINY)).max()) if finite else float("inf")
    ok = finite and bool(np.all(diff <= tol.atol + tol.rtol * np.abs(ref)))
    return max_abs, max_rel, ok


def eager_runner(module: nn.Module, device: str | torch.device) -> Runner:
    module = module.to(device).eval()

    def run(fgs1: np.ndarray, airs_nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            mu, sigma = module(torch.from_numpy(fgs1).to(device), torch.from_numpy(airs_nodes).to(device))
        return mu.float().cpu().numpy(), sigma.float().cpu().numpy()

    return run


def torchscript_runner(path: str | Path, device: str | torch.device) -> Runner:
    """The TorchScript file at ``path`` on ``device`` as a numpy runner."""
    from export.torchscript import load_torchscript

    return eager_runner(load_torchscript(path, device), device)


def onnxruntime_runners(path: str | Path, device: str) -> dict[str, tuple[str, Runner]]:
    """Runners of the ONNX file: ``{"onnxruntime-cpu": ...}`` always, ``"onnxruntime-cuda"`` when
    onnxruntime has the CUDA provider and torch sees a GPU. Values are (device, runner)."""
    import onnxruntime as ort

    from export.onnx_export import ORT_PROVIDERS

    available = ort.get_available_providers()
    wanted = {"onnxruntime-cpu": ("cpu", ["CPUExecutionProvider"])}
    if "CUDAExecutionProvider" in available and torch.cuda.is_available():
        wanted["onnxruntime-cuda"] = ("cuda", ORT_PROVIDERS("cuda"))
    out = {}
    for name, (dev, providers) in wanted.items():
        session = ort.InferenceSession(str(path), providers=providers)
        if dev == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
            got = session.get_providers()
            raise RuntimeError(f"onnxruntime did not start the CUDA provider for {path} (got {got})")

        def run(fgs1: np.ndarray, airs_nodes: np.ndarray, session=session) -> tuple[np.ndarray, np.ndarray]:
            mu, sigma = session.run(["mu", "sigma"], {"fgs1": fgs1, "airs_nodes": airs_nodes})
            return mu, sigma

        out[name] = (dev, run)
    return out


def run_parity(
    reference: Runner,
    reference_device: str,
    runners: Mapping[str, tuple[str, Runner]],
    fgs1: np.ndarray,
    airs_nodes: np.ndarray,
    buckets: Sequence[int],
    tolerances: Mapping[str, Tolerance] | None = None,
) -> list[ParityRow]:
    """One :class:`ParityRow` per (runtime, bucket); ``runners`` maps a runtime name to (device, runner).
    ``tolerances`` has a "cpu" and a "cuda" entry (default :data:`DEFAULT_TOLERANCES`)."""
    tols = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    rows = []
    for batch in buckets:
        x_f, x_a = tile(fgs1, batch), tile(airs_nodes, batch)
        ref_mu, ref_sigma = reference(x_f, x_a)
        for name, (device, run) in runners.items():
            tol = tols["cuda" if "cuda" in (device, reference_device) else "cpu"]
            mu, sigma = run(x_f, x_a)
            mu_abs, mu_rel, mu_ok = _errors(mu, ref_mu, tol)
            s_abs, s_rel, s_ok = _errors(sigma, ref_sigma, tol)
            failed = ",".join(out for out, ok in (("mu", mu_ok), ("sigma", s_ok)) if not ok)
            rows.append(ParityRow(name, device, int(batch), mu_abs, mu_rel, s_abs, s_rel, tol.rtol, tol.atol,
                                  not failed, failed))
    return rows


def parity_table(rows: Sequence[ParityRow], reference_device: str) -> Table:
    """The rows as a rich table."""
    tols = sorted({(r.rtol, r.atol) for r in rows})
    caption = "pass: |x - ref| <= atol + rtol |ref|, " + "; ".join(f"rtol {r:g}, atol {a:g}" for r, a in tols)
    table = Table(title=f"parity vs eager on {reference_device}", caption=caption)
    for col in ("runtime", "device", "batch", "mu max abs", "mu max rel", "sigma max abs", "sigma max rel", "ok"):
        table.add_column(col, justify="left" if col in ("runtime", "device", "ok") else "right", no_wrap=True)
    for r in rows:
        table.add_row(r.runtime, r.device, str(r.batch), f"{r.mu_max_abs:.2e}", f"{r.mu_max_rel:.2e}",
                      f"{r.sigma_max_abs:.2e}", f"{r.sigma_max_rel:.2e}",
                      "[green]pass[/]" if r.passed else f"[red]FAIL {r.failed_outputs}[/]")
    return table


def parity_record(rows: Sequence[ParityRow], reference_device: str) -> dict[str, Any]:
    """The manifest's ``parity`` entry."""
    return {
        "reference": f"eager on {reference_device}",
        "metric": "max |x - ref| and max |x - ref| / |ref| over the golden planets tiled to each bucket",
        "passed": all(r.passed for r in rows),
        "rows": [asdict(r) for r in rows],
    }


def check_parity(rows: Sequence[ParityRow]) -> None:
    """Raise :class:`ParityError` naming the first failing row."""
    for r in rows:
        if not r.passed:
            raise ParityError(
                f"parity: {r.runtime} on {r.device} at batch {r.batch} differs from eager beyond rtol {r.rtol:g} / "
                f"atol {r.atol:g} (mu max abs {r.mu_max_abs:.3g}, rel {r.mu_max_rel:.3g}; sigma max abs "
                f"{r.sigma_max_abs:.3g}, rel {r.sigma_max_rel:.3g}): {r.failed_outputs} out of tolerance"
            )
