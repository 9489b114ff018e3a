"""Science benchmark: does the trained, calibrated model beat the physics baseline?

    python -m bench.science [--n-train 1000] [--n-test 200] [--out outputs/bench/science]
                            [--workers 2] [overrides ...]

1. simulates ``--n-train`` labelled planets (seed 11) and ``--n-test`` held-out planets
   (seed 22) at light-curve level (reused when already there);
2. runs the physics baseline on the held-out planets;
3. trains ``model=small train=cpu_science data.features.fgs1_steps=32`` (plus any overrides
   given) on the training planets, with calibration on its validation split;
4. predicts the held-out planets with the calibrated best checkpoint;

and prints one table: ADC2025 score, its FGS1/AIRS parts, RMSE (ppm) and 68/90 % coverage
of the baseline and of the model on the held-out planets, with wall times. Run by hand;
never collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from spectramind.baseline import BaselineOptions, baseline_dataset
from spectramind.config import compose
from spectramind.data.lightcurves import Binning
from spectramind.data.simulate import SimulateOptions, simulate_dataset
from spectramind.metric import score_files
from train.loop import run_training
from train.predict import predict_checkpoint

DEFAULT_OVERRIDES = ["model=small", "train=cpu_science", "data.features.fgs1_steps=32"]


def simulated(root: Path, n: int, seed: int, workers: int) -> Path:
    if (root / "train.csv").is_file() and len(list((root / "train").iterdir())) == n:
        return root
    cfg = compose()
    sim = SimulateOptions(**cfg.data.simulate)
    sim.n_planets, sim.seed, sim.level, sim.n_test = n, seed, "lightcurves", 0
    simulate_dataset(root, sim, binning=Binning(**cfg.data.binning), workers=workers)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch threads for training")
    ap.add_argument("--out", default="outputs/bench/science")
    args, overrides = ap.parse_known_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    times = {}

    t0 = time.perf_counter()
    train_dir = simulated(out / "train_lc", args.n_train, 11, args.workers)
    test_dir = simulated(out / "heldout_lc", args.n_test, 22, args.workers)
    times["simulate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    base_csv = out / "baseline.csv"
    cfg = compose([*DEFAULT_OVERRIDES, *overrides])
    baseline_dataset(test_dir, base_csv, BaselineOptions(**cfg.data.baseline), splits=("train",), workers=args.workers)
    times["baseline"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    result = run_training(cfg, train_dir, out / "run", workers=args.workers)
    times["train (features, curriculum, calibration)"] = time.perf_counter() - t0
    if result.best_ckpt is None:
        raise SystemExit("training wrote no best checkpoint")

    t0 = time.perf_counter()
    model_csv = out / "model.csv"
    predict_checkpoint(result.best_ckpt, test_dir, model_csv, splits=("train",), workers=args.workers)
    times["predict"] = time.perf_counter() - t0

    truth = test_dir / "train.csv"
    reports = {"physics baseline": score_files(truth, base_csv), "V50 small, calibrated": score_files(truth, model_csv)}
    console = Console()
    table = Table(
        title=f"held-out planets: {args.n_test} (seed 22); trained on {args.n_train} (seed 11); "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), torch threads {args.threads}"
    )
    for col in ("predictor", "score", "fgs1 part", "airs part", "rmse ppm", "coverage 68", "coverage 90"):
        table.add_column(col, justify="right")
    for name, r in reports.items():
        table.add_row(name, f"{r.score:.4f}", f"{r.fgs1:.4f}", f"{r.airs:.4f}", f"{r.rmse_ppm:.1f}",
                      f"{r.coverage_68:.3f}", f"{r.coverage_90:.3f}")
    console.print(table)
    t = Table(title=f"wall time (training stopped: {result.stopped}, {result.steps} optimiser steps)")
    t.add_column("stage")
    t.add_column("s", justify="right")
    for k, v in times.items():
        t.add_row(k, f"{v:.0f}")
    console.print(t)
    (out / "science.json").write_text(json.dumps(
        {"overrides": [*DEFAULT_OVERRIDES, *overrides], "times": times, "train": result.summary(),
         "reports": {k: json.loads(v.to_json()) for k, v in reports.items()}}, indent=2, default=str))


if __name__ == "__main__":
    main()
