"""``spectramind-export``: a checkpoint in, an artifact directory out (TorchScript, ONNX, manifest, parity).

Usage::

    spectramind-export --ckpt RUN/checkpoints/best.pt --out artifacts/NAME
        [--formats torchscript,onnx,triton-repo] [--device cpu|cuda] [--batch-buckets 1,8,32]
        [--data LCDIR] [--golden 2] [--rtol R] [--atol A] [--opset 18] [--force]

Steps (:func:`export_artifact`): read the checkpoint (``weights_only``, :func:`export.module.load_for_export`);
build the golden planets (the validation planets of ``--data``, else synthetic:
:mod:`spectramind.artifact`) and their eager outputs on the CPU; trace TorchScript and/or export
ONNX (on the CPU: the artifact is portable, a GPU server moves it); check parity of every
exported runtime against eager on ``--device`` at every batch bucket (:mod:`export.parity`);
write the Triton repository if asked; write ``golden.npz`` and ``manifest.json``; verify the
hashes. ``triton-repo`` implies ``onnx``.

Everything is written into a hidden temporary directory next to ``--out``, which is renamed to
``--out`` only when every step passed: a failure leaves no half-written artifact. An existing
``--out`` is refused unless ``--force`` (then replaced only after the new one is complete).

Exit status: 0 written; 2 bad input (one line ``error: ...`` on stderr: missing, corrupt or
refused checkpoint, config that does not match the code, bad flags, an existing --out); 3 parity
beyond tolerance (the table is printed, then the ``error:`` line).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

import triton_kernels  # noqa: F401  (registers the CUDA kernels of the ops before any model runs)
from spectramind.artifact import (
    GOLDEN,
    build_manifest,
    data_inputs,
    synthetic_inputs,
    verify_artifact,
    write_golden,
    write_manifest,
)
from export.module import ExportModule, load_for_export, one_line
from export.parity import (
    DEFAULT_TOLERANCES,
    ParityError,
    ParityRow,
    Tolerance,
    check_parity,
    eager_runner,
    parity_record,
    parity_table,
    run_parity,
    tile,
)
from export.torchscript import CUSTOM_OPS, baked_devices, export_torchscript, graph_ops

__all__ = ["FORMATS", "ExportResult", "build_parser", "export_artifact", "main"]

log = logging.getLogger("spectramind.export")

FORMATS = ("torchscript", "onnx", "triton-repo")
TORCHSCRIPT_FILE = "model.torchscript.pt"
ONNX_FILE = "model.onnx"
DEFAULT_BUCKETS = (1, 8, 32)


@dataclass
class ExportResult:
    path: Path
    manifest: dict[str, Any]
    rows: list[ParityRow]


def parse_formats(text: str) -> tuple[str, ...]:
    """``torchscript,onnx,triton-repo`` -> formats in canonical order; triton-repo implies onnx."""
    items = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in items if s not in FORMATS]
    if unknown or not items:
        bad = repr(unknown[0]) if unknown else "(none)"
        raise ValueError(f"--formats: unknown format {bad}; choose from {', '.join(FORMATS)}")
    if "triton-repo" in items:
        items.append("onnx")
    return tuple(f for f in FORMATS if f in items)


def parse_buckets(text: str) -> tuple[int, ...]:
    """``1,8,32`` -> sorted unique positive batch sizes."""
    try:
        sizes = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError as exc:
        raise ValueError(f"--batch-buckets must be comma-separated integers, got {text!r}") from exc
    if not sizes or sizes[0] < 1:
        raise ValueError(f"--batch-buckets must be positive integers, got {text!r}")
    return tuple(sizes)


def _golden_inputs(
    ckpt: dict, ckpt_path: Path, data: Path | None, n: int, steps: int
) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    if data is not None:
        ids, fgs1, nodes = data_inputs(data, ckpt["meta"], n, ckpt_path)
        info = {"source": f"validation planets of {data}"}
    else:
        ids, fgs1, nodes = synthetic_inputs(n, steps)
        info = {"source": "synthetic (spectramind.artifact.synthetic_inputs, seed 0)"}
    if fgs1.shape[1] != steps:
        raise ValueError(f"--data {data}: features have {fgs1.shape[1]} FGS1 steps, the checkpoint {steps}")
    return info, ids, fgs1, nodes


def export_artifact(
    ckpt_path: str | Path,
    out: str | Path,
    formats: Sequence[str] = ("torchscript", "onnx"),
    device: str = "cpu",
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    data: str | Path | None = None,
    golden: int = 2,
    tolerances: dict[str, Tolerance] | None = None,
    opset: int = 18,
    force: bool = False,
    console: Console | None = None,
) -> ExportResult:
    """Write the artifact directory ``out`` (module docstring); returns its path, manifest and parity rows.

    Raises ValueError (bad input), ParityError (a runtime beyond tolerance), ImportError (onnx
    requested without the export extra); ``out`` is then untouched and no temporary is left.
    """
    console = console or Console(stderr=True)
    ckpt_path, out = Path(ckpt_path), Path(out)
    formats = parse_formats(",".join(formats))
    buckets = tuple(sorted({int(b) for b in buckets}))
    if not buckets or buckets[0] < 1:
        raise ValueError(f"batch buckets must be positive integers, got {list(buckets)}")
    if golden < 1:
        raise ValueError(f"--golden must be >= 1, got {golden}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device")
    if out.exists() and not force:
        raise ValueError(f"--out {out} already exists (pass --force to replace it)")
    if "onnx" in formats:
        from export import onnx_export  # noqa: F401  (fail here, before any work, without the export extra)

    module, ckpt = load_for_export(ckpt_path)
    steps = int(ckpt["meta"]["features"]["fgs1_steps"])
    info, ids, fgs1, nodes = _golden_inputs(ckpt, ckpt_path, Path(data) if data is not None else None, golden, steps)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        with torch.no_grad():
            rows, manifest = _write(module, ckpt, ckpt_path, tmp, out.name, formats, device, buckets, info, ids,
                                    fgs1, nodes, tolerances, opset, console)
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out, manifest, rows)


CHECKPOINT_FILE = "checkpoint.pt"


def _write(module: ExportModule, ckpt: dict, ckpt_path: Path, tmp: Path, name: str, formats: Sequence[str],
           device: str, buckets: Sequence[int], info: dict, ids: np.ndarray, fgs1: np.ndarray, nodes: np.ndarray,
           tolerances: dict[str, Tolerance] | None, opset: int, console: Console) -> tuple[list[ParityRow], dict]:
    module = module.cpu().eval()
    mu, sigma = eager_runner(module, "cpu")(fgs1, nodes)
    # Batch >= 2 in the example: an exporter may specialise a size-1 axis to a constant.
    example = (torch.from_numpy(tile(fgs1, max(2, len(fgs1)))), torch.from_numpy(tile(nodes, max(2, len(nodes)))))
    facts: dict[str, Any] = {}
    # The checkpoint itself travels in the artifact (hashed like every file): the server rebuilds
    # the eager model from it for explanations (GAT attention, Shapley values), which the traced
    # graphs, returning only mu and sigma, cannot give.
    shutil.copyfile(ckpt_path, tmp / CHECKPOINT_FILE)
    facts["checkpoint"] = {"file": CHECKPOINT_FILE, "use": "explanations (eager model)"}
    runners = {}
    if "torchscript" in formats:
        export_torchscript(module, example, tmp / TORCHSCRIPT_FILE)
        ops = sorted(graph_ops(tmp / TORCHSCRIPT_FILE))
        baked = baked_devices(tmp / TORCHSCRIPT_FILE)
        if baked:
            where = "; ".join(f"{dev} in {', '.join(users)}" for dev, users in baked.items())
            log.warning("TorchScript: the trace baked device constants (%s): the file runs only on that device", where)
        facts["torchscript"] = {"file": TORCHSCRIPT_FILE, "method": "torch.jit.trace",
                                "custom_ops": [op for op in CUSTOM_OPS if op in ops], "load": "import spectramind",
                                "baked_devices": baked}
    if "onnx" in formats:
        from export.onnx_export import export_onnx, onnx_node_count

        export_onnx(module, example, tmp / ONNX_FILE, opset=opset)
        facts["onnx"] = {"file": ONNX_FILE, "opset": opset, "nodes": onnx_node_count(tmp / ONNX_FILE),
                         "external_data": False}

    from export.parity import onnxruntime_runners, torchscript_runner

    if "torchscript" in formats:
        runners["torchscript"] = (device, torchscript_runner(tmp / TORCHSCRIPT_FILE, device))
    if "onnx" in formats:
        runners.update(onnxruntime_runners(tmp / ONNX_FILE, device))
    reference = eager_runner(module, device)
    rows = run_parity(reference, device, runners, fgs1, nodes, buckets, tolerances)
    console.print(parity_table(rows, device))
    check_parity(rows)
    module.cpu()

    if "triton-repo" in formats:
        from export.triton_repo import write_triton_repo

        model_dir = write_triton_repo(tmp / ONNX_FILE, tmp, fgs1.shape[1], buckets)
        facts["triton-repo"] = {"dir": model_dir.relative_to(tmp).as_posix(), "platform": "onnxruntime_onnx",
                                "max_batch_size": max(buckets)}
    write_golden(tmp, ids, fgs1, nodes, mu, sigma)
    golden = {"file": GOLDEN, "planets": len(ids), "planet_ids": [int(p) for p in ids], "reference_device": "cpu",
              **info}
    manifest = build_manifest(name=name, ckpt=ckpt, ckpt_path=ckpt_path, fgs1_steps=fgs1.shape[1], formats=facts,
                              batch_buckets=buckets, golden=golden, parity=parity_record(rows, device))
    write_manifest(tmp, manifest)
    return rows, verify_artifact(tmp)


def _replace(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` to ``out``; an existing ``out`` (--force) is moved aside first and
    deleted only after the rename, so some complete artifact is at ``out`` at every moment but one."""
    if not out.exists():
        tmp.rename(out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    old.rmdir()
    out.rename(old)
    try:
        tmp.rename(out)
    except OSError:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spectramind-export", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, type=Path, help="checkpoint (best.pt of spectramind train)")
    p.add_argument("--out", required=True, type=Path, help="artifact directory to create")
    p.add_argument("--formats", default="torchscript,onnx", help=f"comma-separated: {', '.join(FORMATS)}")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="device of the parity check")
    p.add_argument("--batch-buckets", default=",".join(map(str, DEFAULT_BUCKETS)),
                   help="batch sizes checked for parity and preferred by the Triton repository")
    p.add_argument("--data", type=Path, default=None,
                   help="light-curve directory: golden planets are the checkpoint's validation planets in it")
    p.add_argument("--golden", type=int, default=2, help="number of golden planets stored in the artifact")
    p.add_argument("--rtol", type=float, default=None, help="parity rtol (default: 1e-4 CPU, 1e-3 GPU)")
    p.add_argument("--atol", type=float, default=None, help="parity atol (default: 1e-7 CPU, 1e-6 GPU)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 18)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    return p


def _tolerances(rtol: float | None, atol: float | None) -> dict[str, Tolerance] | None:
    if rtol is None and atol is None:
        return None
    for flag, value in (("--rtol", rtol), ("--atol", atol)):
        if value is not None and not value >= 0:
            raise ValueError(f"{flag} must be >= 0, got {value}")
    return {k: Tolerance(rtol if rtol is not None else t.rtol, atol if atol is not None else t.atol)
            for k, t in DEFAULT_TOLERANCES.items()}


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    console = Console()
    if not console.is_terminal:  # logs and CI: the parity table is wider than the 80-column default
        console = Console(width=max(console.width, 120))
    try:
        result = export_artifact(
            args.ckpt, args.out, formats=parse_formats(args.formats), device=args.device,
            buckets=parse_buckets(args.batch_buckets), data=args.data, golden=args.golden,
            tolerances=_tolerances(args.rtol, args.atol), opset=args.opset, force=args.force, console=console,
        )
    except ParityError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 3
    except ImportError as exc:
        print(f"error: --formats onnx needs the export extra (pip install 'spectramind[export]'): {one_line(exc)}",
              file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # an exporter or runtime refusing the model: still one line, nothing written
        print(f"error: export failed: {type(exc).__name__}: {one_line(exc)}", file=sys.stderr)
        return 2
    files = result.manifest["files"]
    console.print(f"artifact: {result.path} ({len(files)} files, formats {', '.join(result.manifest['formats'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
