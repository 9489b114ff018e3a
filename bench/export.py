"""Per-planet CPU latency of the eager model and its exported forms: eager, TorchScript, ONNX Runtime.

For each model preset (random weights with a random temperature + COREL calibration: latency does
not depend on the values) the :class:`export.module.ExportModule` is traced to TorchScript and
exported to ONNX (:mod:`export.onnx_export`) in a temporary directory, then each runtime runs
the same random inputs of T FGS1 steps at each batch size, single-threaded
(``torch.set_num_threads(1)``, onnxruntime ``intra_op_num_threads = inter_op_num_threads = 1``,
sequential execution). Latency per planet = median over repeats of one call / batch size,
after warm-up calls. One rich table; the last column is the speed-up of the best exported
runtime over eager at that preset and batch (issue 6 target: >= 1.5x).

Run by hand on an otherwise idle machine:

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.export [--presets small,base] [--batches 1,32] [--steps 64]
        [--repeats 7] [--warmup 3]

Shapes: fgs1 (B, T, 6), airs_nodes (B, 283, 8) float32 -> mu, sigma (B, 283).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import triton_kernels  # noqa: E402,F401  (the export entry point's registration, as in production)
from export.module import ExportModule  # noqa: E402
from export.torchscript import export_torchscript, load_torchscript  # noqa: E402
from spectramind.config import compose  # noqa: E402
from spectramind.model.calibration import COREL, CalibratedV50, Calibrator, TemperatureScaling, graph_for  # noqa: E402
from spectramind.model.v50 import SpectraMindV50, model_config_from  # noqa: E402

RUNTIMES = ("eager", "torchscript", "onnxruntime")


def build(preset: str, seed: int = 0) -> ExportModule:
    """A random-weight ``preset`` model with a random (non-identity) temperature + COREL calibration."""
    torch.manual_seed(seed)
    config = model_config_from(compose([f"model={preset}"]))
    model = SpectraMindV50(config)
    temperature = TemperatureScaling()
    corel = COREL(dict(config["model"]["calibration"]["corel"]), graph_for(config))
    with torch.no_grad():
        temperature.log_t_bin.normal_(0.0, 0.1)
        corel.out.weight.normal_(0.0, 0.1)
    return ExportModule(CalibratedV50(model, Calibrator(temperature, corel))).eval()


def inputs(batch: int, steps: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    fgs1 = rng.standard_normal((batch, steps, 6)).astype(np.float32)
    nodes = rng.standard_normal((batch, 283, 8)).astype(np.float32)
    return fgs1, nodes


def time_call(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    """Median seconds of one call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def runners(module: ExportModule, workdir: Path, steps: int) -> dict[str, Callable[[np.ndarray, np.ndarray], object]]:
    import onnxruntime as ort

    from export.onnx_export import export_onnx

    example = tuple(torch.from_numpy(a) for a in inputs(2, steps))
    ts_path, onnx_path = workdir / "model.torchscript.pt", workdir / "model.onnx"
    with torch.no_grad():
        export_torchscript(module, example, ts_path)
        export_onnx(module, example, onnx_path)
    scripted = load_torchscript(ts_path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])

    def torch_run(m: torch.nn.Module) -> Callable[[np.ndarray, np.ndarray], object]:
        def run(f: np.ndarray, a: np.ndarray) -> object:
            with torch.inference_mode():
                return m(torch.from_numpy(f), torch.from_numpy(a))

        return run

    return {
        "eager": torch_run(module),
        "torchscript": torch_run(scripted),
        "onnxruntime": lambda f, a: session.run(["mu", "sigma"], {"fgs1": f, "airs_nodes": a}),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="small,base")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--steps", type=int, default=64, help="FGS1 time steps T of the inputs")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=3, help="TorchScript optimises its graph over the first calls")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 120))
    batches = [int(b) for b in args.batches.split(",")]
    table = Table(title=f"per-planet CPU latency, 1 thread, T={args.steps} (ms / planet, median of {args.repeats})")
    for col in ("preset", "params", "batch", *RUNTIMES, "best exported", "speed-up vs eager"):
        table.add_column(col, justify="left" if col in ("preset", "best exported") else "right")
    for preset in args.presets.split(","):
        module = build(preset)
        params = sum(p.numel() for p in module.parameters())
        with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
            console.print(f"[dim]{preset}: exporting ...[/]")
            run = runners(module, Path(tmp), args.steps)
            for batch in batches:
                f, a = inputs(batch, args.steps)
                ms = {name: 1e3 * time_call(lambda r=r: r(f, a), args.repeats, args.warmup) / batch
                      for name, r in run.items()}
                best = min(("torchscript", "onnxruntime"), key=ms.__getitem__)
                table.add_row(preset, f"{params / 1e6:.2f}M", str(batch), *(f"{ms[r]:.2f}" for r in RUNTIMES), best,
                              f"{ms['eager'] / ms[best]:.2f}x")
                console.print(f"[dim]{preset} batch {batch}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in ms.items()))
    console.print(table)
    console.print("target (issue 6): the best exported runtime >= 1.5x faster than eager")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
