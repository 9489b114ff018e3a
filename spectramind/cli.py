"""The ``spectramind`` command: the front door that dispatches to each stage.

Every command takes its flags plus Hydra overrides (``key=value``) composed onto
``configs/config.yaml``; flags win over the config values they mirror::

    spectramind simulate --out S --n-planets 8 --seed 1
    spectramind calibrate --data S --out L
    spectramind baseline --data L --out sub.csv
    spectramind score --truth S/train.csv --submission sub.csv
    spectramind demo                       # all four on an embedded default
    spectramind train --data L --out RUN model=small train=fast_smoke
    spectramind calibrate-model --ckpt RUN/checkpoints/best.pt --data L
    spectramind predict --ckpt RUN/checkpoints/best.pt --data L --out sub.csv
    spectramind ablate --data L --out A    # the sweep of configs/train/ablation.yaml
    spectramind config model=small         # print the composed config

The training stages live in the top-level ``train`` package, imported only when a training
command runs.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.logging import RichHandler

from spectramind.config import compose, split_overrides
from spectramind.data.errors import PlanetDataError
from spectramind.data.lightcurves import Binning
from spectramind.data.runner import RunSummary, StrictFailure, console
from spectramind.options import options_from

log = logging.getLogger("spectramind")


def _options(cls: type, node: DictConfig, **flags):
    """Build an options dataclass from its config node; flags that were given win."""
    section = cls.__name__.removesuffix("Options").lower()
    return options_from(cls, OmegaConf.to_container(node, resolve=True), section, **flags)


def _binning(cfg: DictConfig) -> Binning:
    return Binning(**OmegaConf.to_container(cfg.data.binning, resolve=True))


def _finish(summary: RunSummary, out_dir: Path | None) -> int:
    summary.report()
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        summary.write(out_dir / f"{summary.task.split()[0]}_summary.json")
    if not summary.results:
        console.print(f"[red]{summary.task}: nothing succeeded[/]")
        return 1
    return 0


# ---------------------------------------------------------------- commands


def cmd_simulate(args: argparse.Namespace, cfg: DictConfig) -> int:
    from spectramind.data.simulate import SimulateOptions, simulate_dataset

    opts = _options(
        SimulateOptions,
        cfg.data.simulate,
        n_planets=args.n_planets,
        seed=args.seed,
        reads_scale=args.reads_scale,
        level=args.level,
        n_test=args.n_test,
    )
    out = Path(args.out)
    summary = simulate_dataset(out, opts, binning=_binning(cfg), workers=args.workers)
    return _finish(summary, out)


def cmd_calibrate(args: argparse.Namespace, cfg: DictConfig) -> int:
    from spectramind.data.calibrate import CalibrateOptions, calibrate_dataset

    opts = _options(CalibrateOptions, cfg.data.calibrate)
    out = Path(args.out)
    summary = calibrate_dataset(
        Path(args.data), out, opts, binning=_binning(cfg), splits=args.splits, workers=args.workers, strict=args.strict
    )
    return _finish(summary, out)


def cmd_baseline(args: argparse.Namespace, cfg: DictConfig) -> int:
    from spectramind.baseline import BaselineOptions, baseline_dataset

    opts = _options(BaselineOptions, cfg.data.baseline)
    out = Path(args.out)
    summary = baseline_dataset(Path(args.data), out, opts, splits=args.splits, workers=args.workers, strict=args.strict)
    return _finish(summary, out.parent)


def cmd_score(args: argparse.Namespace, cfg: DictConfig) -> int:
    from spectramind.metric import score_files

    report = score_files(Path(args.truth), Path(args.submission), naive_mean=args.naive_mean, naive_sigma=args.naive_sigma)
    print(report.to_json(), flush=True)
    return 0


def cmd_demo(args: argparse.Namespace, cfg: DictConfig) -> int:
    """Simulate, calibrate, fit the baseline and score a small set: the end-to-end job."""
    from spectramind.baseline import BaselineOptions, baseline_dataset
    from spectramind.data.calibrate import CalibrateOptions, calibrate_dataset
    from spectramind.data.simulate import SimulateOptions, simulate_dataset
    from spectramind.metric import score_files

    out = Path(args.out)
    raw, lcdir, sub = out / "raw", out / "lightcurves", out / "submission.csv"
    # The demo owns its folder: a rerun starts from scratch instead of mixing in old planets.
    for stale in (raw, lcdir):
        shutil.rmtree(stale, ignore_errors=True)
    binning = _binning(cfg)
    sim = _options(SimulateOptions, cfg.data.simulate, n_planets=args.n_planets, seed=args.seed, level="raw")
    steps: list[tuple[str, Callable[[], RunSummary], Path]] = [
        ("simulate", lambda: simulate_dataset(raw, sim, binning=binning, workers=args.workers), raw),
        (
            "calibrate",
            lambda: calibrate_dataset(
                raw, lcdir, _options(CalibrateOptions, cfg.data.calibrate), binning=binning, workers=args.workers
            ),
            lcdir,
        ),
        (
            "baseline",
            lambda: baseline_dataset(lcdir, sub, _options(BaselineOptions, cfg.data.baseline), workers=args.workers),
            out,
        ),
    ]
    for name, step, where in steps:
        t0 = time.perf_counter()
        status = _finish(step(), where)
        console.print(f"{name}: {time.perf_counter() - t0:.1f} s")
        if status:
            return status
    report = score_files(raw / "train.csv", sub)
    print(report.to_json(), flush=True)
    return 0


def cmd_explain(args: argparse.Namespace, cfg: DictConfig) -> int:
    """Attention, node importance and SHAP exports of one planet, as configs/model/explainability.yaml asks."""
    from spectramind.model.explain import explain_from_checkpoint

    written = explain_from_checkpoint(
        Path(args.ckpt), Path(args.data), args.planet, cfg, out_dir=Path(args.out) if args.out else None
    )
    for name, path in written.items():
        console.print(f"{name}: {path}")
    return 0


def cmd_model_summary(args: argparse.Namespace, cfg: DictConfig) -> int:
    """Build every model preset (with the command's overrides) and print its parameter count."""
    from rich.table import Table

    from spectramind.config import compose
    from spectramind.model.v50 import SpectraMindV50, model_config_from

    table = Table(title="SpectraMind V50 presets")
    for col in ("preset", "parameters", "fgs1 d_model x layers", "gnn backend x layers", "fusion"):
        table.add_column(col, justify="right")
    for preset in args.presets:
        pcfg = compose([*args.overrides, f"model={preset}"])
        model = SpectraMindV50(model_config_from(pcfg))
        enc = pcfg.model.encoders
        table.add_row(
            preset,
            f"{model.parameter_count():,}",
            f"{enc.fgs1_mamba.d_model} x {enc.fgs1_mamba.n_layers}",
            f"{enc.airs_gnn.backend} x {enc.airs_gnn.n_layers}",
            str(pcfg.model.fusion.kind),
        )
    Console().print(table)
    return 0


def _data_dir(args: argparse.Namespace, cfg: DictConfig) -> Path:
    return Path(args.data if args.data else str(cfg.data.lightcurves))


def _exposed_flags() -> list[str]:
    """The train keys the seed's ``cli.expose_flags`` turns into flags (--optimizer-lr, ...)."""
    from spectramind.config import CONFIG_DIR

    base = OmegaConf.load(CONFIG_DIR / "train" / "base.yaml")
    if not bool(OmegaConf.select(base, "cli.register_commands", default=True)):
        return []
    return [str(k) for k in OmegaConf.select(base, "cli.expose_flags", default=[]) or []]


def _flag_overrides(args: argparse.Namespace) -> list[str]:
    out = []
    for key in _exposed_flags():
        value = getattr(args, "x_" + key.replace(".", "_"), None)
        if value is not None:
            out.append(f"train.{key}={value}")
    return out


def cmd_train(args: argparse.Namespace, cfg: DictConfig) -> int:
    """Train (curriculum, checkpoints, calibration) on the labelled planets of a light-curve directory."""
    import json

    from train.guardrail import RuntimeOverrun
    from train.loop import run_training

    extra = _flag_overrides(args)
    if args.resume:
        extra += ["train.resume.enable=true", f"train.resume.ckpt_path={args.resume}"]
    if extra:
        cfg = compose([*args.overrides, *extra])
    try:
        result = run_training(cfg, _data_dir(args, cfg), Path(args.out), workers=args.workers)
    except RuntimeOverrun as exc:
        console.print(f"[red]{exc}[/]", soft_wrap=True)
        return 3
    print(json.dumps(result.summary(), default=str))
    return 0


def cmd_predict(args: argparse.Namespace, cfg: DictConfig) -> int:
    """A submission from a checkpoint (calibration applied) for the planets of a light-curve directory."""
    from train.predict import predict_checkpoint

    sets = predict_checkpoint(Path(args.ckpt), _data_dir(args, cfg), Path(args.out), splits=args.splits,
                              workers=args.workers)
    n = sum(len(s) for s in sets)
    failed = sum(len(s.failures) for s in sets)
    console.print(f"predict: {n} planets -> {args.out}" + (f" ({failed} left out)" if failed else ""))
    return 0 if n else 1


def cmd_calibrate_model(args: argparse.Namespace, cfg: DictConfig) -> int:
    """Post-hoc temperature + COREL calibration of a checkpoint on its validation planets."""
    from train.calibrate import calibrate_standalone

    out = Path(args.out) if args.out else Path(args.ckpt)
    report = calibrate_standalone(cfg, Path(args.ckpt), _data_dir(args, cfg), out, workers=args.workers)
    console.print(report, soft_wrap=True)
    return 0


def cmd_ablate(args: argparse.Namespace, cfg: DictConfig) -> int:
    """The sweep of ``train.ablate`` (train=ablation by default): one training run per combination."""
    from train.ablate import run_ablation_from_config
    from train.loop import run_training

    overrides = list(args.overrides)
    if not any(o.startswith("train=") for o in overrides):
        overrides.append("train=ablation")
        cfg = compose(overrides)
    if "ablate" not in cfg.train:
        raise ValueError("spectramind ablate needs a train preset with an ablate block (train=ablation)")
    data = _data_dir(args, cfg)
    out = Path(args.out)

    def train_fn(run_overrides: list[str], run_dir: Path) -> dict:
        return run_training(compose(run_overrides), data, run_dir, workers=args.workers, progress=False).summary()

    board = run_ablation_from_config(cfg, overrides, train_fn, out)
    console.print(f"ablate: {len(board.records)} runs; leaderboard {board.md_path}, {board.html_path}")
    return 0


def cmd_config(args: argparse.Namespace, cfg: DictConfig) -> int:
    print(OmegaConf.to_yaml(cfg), end="")
    return 0


# ---------------------------------------------------------------- parser


def _splits(text: str) -> tuple[str, ...]:
    parts = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in parts if s not in ("train", "test")]
    if bad or not parts:
        raise argparse.ArgumentTypeError(f"--splits takes train and/or test, got {text!r}")
    return parts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spectramind",
        description="SpectraMind V50: ADC2025-format data to calibrated transmission spectra. "
        "Any command also takes Hydra overrides key=value (e.g. data.binning.airs_seconds=300).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser, strict: bool = True) -> None:
        p.add_argument("--workers", type=int, default=None, help="parallel processes (default: CPU count)")
        if strict:
            p.add_argument("--strict", action="store_true", help="stop at the first bad planet instead of skipping it")

    p = sub.add_parser("simulate", help="write simulated planets in the ADC2025 layout (or as light curves)")
    p.add_argument("--out", required=True, help="output data root")
    p.add_argument("--n-planets", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--reads-scale", type=float, default=None, help="fraction of the real number of reads")
    p.add_argument("--level", choices=("raw", "lightcurves"), default=None)
    p.add_argument("--n-test", type=int, default=None, help="extra unlabelled planets in test/")
    common(p, strict=False)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("calibrate", help="reduce raw ADC2025 frames to light curves")
    p.add_argument("--data", required=True, help="ADC2025 data root")
    p.add_argument("--out", required=True, help="light-curve directory to write")
    p.add_argument("--splits", type=_splits, default=("train", "test"), help="train,test")
    common(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("baseline", help="physics transit-fit predictions for a light-curve directory")
    p.add_argument("--data", required=True, help="light-curve directory")
    p.add_argument("--out", required=True, help="submission CSV to write")
    p.add_argument("--splits", type=_splits, default=("train", "test"), help="train,test")
    common(p)
    p.set_defaults(func=cmd_baseline)

    p = sub.add_parser("score", help="the ADC2025 score of a submission")
    p.add_argument("--truth", required=True, help="labels CSV (planet_id, wl_1..wl_283)")
    p.add_argument("--submission", required=True, help="submission CSV")
    p.add_argument("--naive-mean", type=float, default=None, help="default: mean of the truth labels")
    p.add_argument("--naive-sigma", type=float, default=None, help="default: std of the truth labels")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("demo", help="simulate, calibrate, baseline and score a small set")
    p.add_argument("--out", default="outputs/demo")
    p.add_argument("--n-planets", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    common(p, strict=False)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("explain", help="attention / node importance / SHAP exports for one planet")
    p.add_argument("--ckpt", required=True, help="checkpoint (best.pt)")
    p.add_argument("--data", required=True, help="light-curve directory")
    p.add_argument("--planet", required=True, type=int, help="planet id")
    p.add_argument("--out", default=None, help="default: explainability.export_dir/<planet>")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("train", help="train the model (curriculum, checkpoints, calibration) on light curves")
    p.add_argument("--data", default=None, help="light-curve directory (default: data.lightcurves)")
    p.add_argument("--out", default="outputs/train", help="run directory (checkpoints, logs)")
    p.add_argument("--resume", default=None, help="checkpoint to resume (sets train.resume.ckpt_path)")
    for key in _exposed_flags():
        p.add_argument("--" + key.replace(".", "-").replace("_", "-"), dest="x_" + key.replace(".", "_"),
                       default=None, help=f"train.{key}")
    p.add_argument("--workers", type=int, default=None, help="processes for the feature cache (default: CPU count)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="a submission from a checkpoint for a light-curve directory")
    p.add_argument("--ckpt", required=True, help="checkpoint (best.pt)")
    p.add_argument("--data", default=None, help="light-curve directory (default: data.lightcurves)")
    p.add_argument("--out", required=True, help="submission CSV to write")
    p.add_argument("--splits", type=_splits, default=("test",), help="train,test (default: test)")
    p.add_argument("--workers", type=int, default=None)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("calibrate-model", help="fit temperature + COREL calibration of a checkpoint")
    p.add_argument("--ckpt", required=True, help="checkpoint to calibrate")
    p.add_argument("--data", default=None, help="light-curve directory it was trained on")
    p.add_argument("--out", default=None, help="calibrated checkpoint to write (default: overwrite --ckpt)")
    p.add_argument("--workers", type=int, default=None)
    p.set_defaults(func=cmd_calibrate_model)

    p = sub.add_parser("ablate", help="run the sweep of train.ablate and write a leaderboard")
    p.add_argument("--data", default=None, help="light-curve directory (default: data.lightcurves)")
    p.add_argument("--out", default="outputs/ablate", help="sweep directory")
    p.add_argument("--workers", type=int, default=None)
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("model-summary", help="parameter count of every model preset")
    p.add_argument("--presets", nargs="+", default=["small", "medium", "base", "large"])
    p.set_defaults(func=cmd_model_summary)

    p = sub.add_parser("config", help="print the composed configuration")
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides, rest = split_overrides(argv)
    parser = build_parser()
    args = parser.parse_args(rest)
    args.overrides = overrides
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
    # The stages' entry point registers the Triton kernels as the ops' CUDA implementations
    # (cheap, and a no-op for CPU tensors); spectramind's library modules never import it.
    import triton_kernels  # noqa: F401

    try:
        cfg = compose(overrides)
        return int(args.func(args, cfg))
    except (ValueError, PlanetDataError, StrictFailure, FileNotFoundError) as exc:
        if args.verbose:
            raise
        console.print(f"[red]error:[/] {exc}", soft_wrap=True)
        return 2
