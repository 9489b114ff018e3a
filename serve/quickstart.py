"""``python -m serve.quickstart``: a default artifact on a fresh machine, then the server.

    python -m serve.quickstart [--planets 48] [--epochs 4] [--work outputs/quickstart]
                               [--host 127.0.0.1] [--port 8000] [--build-only] [--force]

If ``$SPECTRAMIND_ARTIFACT`` (default ``outputs/artifacts/default``) holds no manifest, build a
small default artifact there, with progress shown:

1. simulate ``--planets`` labelled planets at light-curve level (:mod:`spectramind.data.simulate`,
   seed 7) into ``WORK/data``;
2. train ``model=small train=quickstart data.features.fgs1_steps=64`` (supervised phase only,
   ``--epochs`` epochs, then the post-hoc calibration) into ``WORK/run``;
3. export the calibrated best checkpoint (:func:`export.cli.export_artifact`, TorchScript and
   ONNX, golden planets = the validation planets of ``WORK/data``) and verify its hashes.

It fits in 10 minutes on 2 CPU cores (about 3 to 5 with the defaults). Then the process becomes
``uvicorn serve.app:app --host 127.0.0.1 --port 8000`` with ``SPECTRAMIND_ARTIFACT`` set
(``os.execvp``: signals reach the server directly, so Ctrl-C drains it). ``--build-only`` stops
after the artifact (tests, CI, images).

An artifact that is present but fails verification is not replaced silently (it may be a user's
model): the command exits with status 2 and the verification error, unless ``--force``. A path
that exists and is not an artifact (files, no manifest) is never replaced (status 2).
``SPECTRAMIND_QUICKSTART_PLANETS`` and ``SPECTRAMIND_QUICKSTART_EPOCHS`` are the defaults of
``--planets`` and ``--epochs`` (a test builds with 12 planets and 1 epoch).

This is a front door like ``spectramind.cli``: it imports ``train`` and ``export`` lazily, only to
build; the server (``serve.app``) never imports them.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from spectramind.artifact import MANIFEST, verify_artifact

__all__ = ["QuickstartOptions", "artifact_state", "build_default_artifact", "main"]

log = logging.getLogger("spectramind.quickstart")

ARTIFACT_ENV = "SPECTRAMIND_ARTIFACT"
DEFAULT_ARTIFACT = "outputs/artifacts/default"
DEFAULT_WORK = "outputs/quickstart"
PLANETS_ENV = "SPECTRAMIND_QUICKSTART_PLANETS"
EPOCHS_ENV = "SPECTRAMIND_QUICKSTART_EPOCHS"
SIM_SEED = 7
FGS1_STEPS = 64
# The quickstart's own composition: the train preset cannot set data.features, hence the override.
OVERRIDES = ("model=small", "train=quickstart", f"data.features.fgs1_steps={FGS1_STEPS}")
FORMATS = ("torchscript", "onnx")
# The server warms up and checks golden outputs at each of these batch sizes.
DEFAULT_BUCKETS = (1, 8, 32)
# Two validation planets at least, so calibration and golden planets have something to work on.
MIN_PLANETS = 10


@dataclass(frozen=True)
class QuickstartOptions:
    """What to build and where. ``planets`` labelled planets, ``epochs`` supervised epochs."""

    artifact: Path
    work: Path = Path(DEFAULT_WORK)
    planets: int = 48
    epochs: int = 4
    workers: int | None = None
    formats: tuple[str, ...] = FORMATS
    buckets: tuple[int, ...] = DEFAULT_BUCKETS

    def __post_init__(self) -> None:
        if self.planets < MIN_PLANETS:
            raise ValueError(f"--planets must be >= {MIN_PLANETS} (a validation split is held out), got {self.planets}")
        if self.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {self.epochs}")
        if not self.formats or any(f not in FORMATS for f in self.formats):
            raise ValueError(f"--formats must be a non-empty subset of {','.join(FORMATS)}, "
                             f"got {','.join(self.formats)}")
        if not self.buckets or min(self.buckets) < 1:
            raise ValueError(f"--batch-buckets must be positive integers, got {list(self.buckets)}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if self.artifact.resolve() == self.work.resolve() or self.work.resolve() in self.artifact.resolve().parents:
            # WORK/data and WORK/run are wiped on every build: the artifact must not live there.
            raise ValueError(f"{ARTIFACT_ENV}={self.artifact} must be outside --work {self.work}")


def artifact_state(path: Path) -> str:
    """``"verified"`` (a manifest whose hashes all match), ``"absent"`` (no directory, or an empty
    one: build there), ``"foreign"`` (a file, or a directory with files but no manifest: never
    replaced, it is not an artifact) or ``"invalid"`` (a manifest that fails verification;
    :func:`verify_artifact` says why)."""
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return "absent"
    if not (path / MANIFEST).is_file():
        return "foreign"
    try:
        verify_artifact(path)
    except ValueError:
        return "invalid"
    return "verified"


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or not text.strip():
        return default
    try:
        return int(text)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {text!r}") from exc


def build_default_artifact(options: QuickstartOptions, console: Console | None = None,
                           progress: bool = True) -> dict:
    """Simulate, train and export into ``options.artifact`` (module docstring); returns the verified manifest.

    ``WORK/data`` and ``WORK/run`` are replaced; an existing artifact directory is replaced only
    once the new one is complete (export writes next to it, then renames).
    """
    import torch

    from export.cli import export_artifact
    from spectramind.config import compose
    from spectramind.data.lightcurves import Binning
    from spectramind.data.simulate import SimulateOptions, simulate_dataset
    from train.loop import run_training

    console = console or Console(stderr=True)
    work = options.work
    data_dir, run_dir = work / "data", work / "run"
    workers = options.workers or max(1, min(os.cpu_count() or 1, 8))
    # ONNX export needs the export extra (onnx, onnxscript); the serve extra alone serves TorchScript.
    formats = options.formats
    if "onnx" in formats and not (importlib.util.find_spec("onnx") and importlib.util.find_spec("onnxscript")):
        formats = tuple(f for f in formats if f != "onnx") or ("torchscript",)
        console.print("[yellow]onnx/onnxscript not installed (the export extra): exporting TorchScript only[/]")
    started = time.perf_counter()
    times: dict[str, float] = {}

    def stage(i: int, text: str) -> float:
        console.rule(f"[bold]quickstart {i}/3[/] {text}  [dim]({time.perf_counter() - started:.0f} s elapsed)[/]")
        return time.perf_counter()

    t = stage(1, f"simulate {options.planets} planets (light curves, seed {SIM_SEED}) -> {data_dir}")
    for d in (data_dir, run_dir):
        if d.exists():
            shutil.rmtree(d)
    cfg = compose([*OVERRIDES, f"train.epochs.supervised={options.epochs}"])
    sim = SimulateOptions(**cfg.data.simulate)
    sim.n_planets, sim.seed, sim.level, sim.n_test, sim.two_visit_fraction = (
        options.planets, SIM_SEED, "lightcurves", 0, 0.0)
    summary = simulate_dataset(data_dir, sim, binning=Binning(**cfg.data.binning), workers=workers, progress=progress)
    if summary.failures:
        raise RuntimeError(f"quickstart: simulation failed for {len(summary.failures)} planets: {summary.failures[0]}")
    times["simulate"] = time.perf_counter() - t

    t = stage(2, f"train {' '.join(OVERRIDES)} ({options.epochs} supervised epochs, then calibration) -> {run_dir}")
    result = run_training(cfg, data_dir, run_dir, workers=workers, progress=progress)
    if result.best_ckpt is None:
        raise RuntimeError(f"quickstart: training wrote no best checkpoint in {run_dir}")
    times["train"] = time.perf_counter() - t

    t = stage(3, f"export {','.join(formats)} -> {options.artifact}")
    with torch.no_grad():
        export_artifact(result.best_ckpt, options.artifact, formats=formats, buckets=options.buckets, data=data_dir,
                        force=options.artifact.exists(), console=console)
    manifest = verify_artifact(options.artifact)
    times["export"] = time.perf_counter() - t

    cal = manifest.get("calibration", {})
    console.print(
        f"[green]default artifact ready[/]: {options.artifact} "
        f"(model=small, calibration {cal.get('method')}, "
        f"formats {', '.join(manifest['formats'])}) in {time.perf_counter() - started:.0f} s "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in times.items())}; validation {_metrics_line(result.metrics)})"
    )
    return manifest


def _metrics_line(metrics: dict) -> str:
    keys = [k for k in ("val/score", "val/gll", "cal/after/coverage_90") if k in metrics]
    return ", ".join(f"{k} {metrics[k]:.4g}" for k in keys) or "n/a"


def _buckets(text: str) -> tuple[int, ...]:
    try:
        return tuple(sorted({int(b) for b in text.split(",") if b.strip()}))
    except ValueError as exc:
        raise ValueError(f"--batch-buckets must be comma-separated integers, got {text!r}") from exc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m serve.quickstart", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--planets", type=int, default=None, help=f"simulated planets (default ${PLANETS_ENV} or 48)")
    p.add_argument("--epochs", type=int, default=None, help=f"supervised epochs (default ${EPOCHS_ENV} or 4)")
    p.add_argument("--work", type=Path, default=Path(DEFAULT_WORK), help="simulation and training outputs")
    p.add_argument("--workers", type=int, default=None, help="processes for simulation/features (default: CPUs)")
    p.add_argument("--formats", default=",".join(FORMATS), help="exported runtimes: torchscript[,onnx]")
    p.add_argument("--batch-buckets", default=",".join(map(str, DEFAULT_BUCKETS)),
                   help="batch sizes the export checks and the server warms up")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--build-only", action="store_true", help="build the artifact if needed, do not serve")
    p.add_argument("--force", action="store_true", help="rebuild even over an artifact that fails verification")
    return p


def serve_command(host: str, port: int) -> list[str]:
    """argv of the server: this interpreter's uvicorn, so an unactivated venv works too."""
    return [sys.executable, "-m", "uvicorn", "serve.app:app", "--host", host, "--port", str(port)]


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    console = Console(stderr=True)
    artifact = Path(os.environ.get(ARTIFACT_ENV) or DEFAULT_ARTIFACT)
    try:
        options = QuickstartOptions(
            artifact=artifact, work=args.work,
            planets=args.planets if args.planets is not None else _env_int(PLANETS_ENV, 48),
            epochs=args.epochs if args.epochs is not None else _env_int(EPOCHS_ENV, 4),
            workers=args.workers,
            formats=tuple(f.strip() for f in args.formats.split(",") if f.strip()),
            buckets=_buckets(args.batch_buckets),
        )
        state = artifact_state(artifact)
        if state == "foreign":
            console.print(f"error: {ARTIFACT_ENV}={artifact} exists and is not an artifact (no {MANIFEST}); "
                          "point it at an artifact directory or at an absent/empty one to build there", soft_wrap=True)
            return 2
        if state == "invalid" and not args.force:
            try:
                verify_artifact(artifact)
            except ValueError as exc:
                console.print(f"error: {exc}\n(remove it, point {ARTIFACT_ENV} elsewhere, or pass --force to rebuild)",
                              soft_wrap=True)
            return 2
        if state == "verified":
            console.print(f"artifact {artifact}: verified, not rebuilding")
        else:
            build_default_artifact(options, console)
    except ValueError as exc:
        console.print(f"error: {exc}", soft_wrap=True)
        return 2
    if args.build_only:
        return 0
    os.environ[ARTIFACT_ENV] = str(artifact)
    cmd = serve_command(args.host, args.port)
    console.print(f"serving {artifact} on http://{args.host}:{args.port}  ({' '.join(cmd[1:])})")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(cmd[0], cmd)
    return 0  # not reached: execvp replaces the process


if __name__ == "__main__":
    sys.exit(main())
