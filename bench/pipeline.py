"""End-to-end data-path benchmark: simulate -> calibrate -> baseline -> score, timed per stage.

    python bench/pipeline.py --n-planets 100 --workers 2 [--reads-scale 0.02] [--out outputs/bench]

Prints a table of wall time per stage, planets/s, bytes on disk, and the baseline's ADC2025
score with its parts. Run by hand; never collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from spectramind.baseline import BaselineOptions, baseline_dataset
from spectramind.config import compose
from spectramind.data.calibrate import CalibrateOptions, calibrate_dataset
from spectramind.data.lightcurves import Binning
from spectramind.data.simulate import SimulateOptions, simulate_dataset
from spectramind.metric import score_files


def peak_rss_mb() -> float:
    """Largest resident set so far of this process and of its finished workers (Linux reports KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, workers) / 1024


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-planets", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--reads-scale", type=float, default=None)
    ap.add_argument("--out", default="outputs/bench/pipeline")
    args = ap.parse_args()

    cfg = compose()
    binning = Binning(**cfg.data.binning)
    sim = SimulateOptions(**cfg.data.simulate)
    sim.n_planets, sim.seed, sim.level = args.n_planets, args.seed, "raw"
    if args.reads_scale is not None:
        sim.reads_scale = args.reads_scale
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    raw, lcdir, sub = out / "raw", out / "lightcurves", out / "submission.csv"

    rows = []

    def stage(name: str, fn, size_of: Path | None) -> None:
        t0 = time.perf_counter()
        summary = fn()
        dt = time.perf_counter() - t0
        ok = len(summary.results) if summary is not None else args.n_planets
        rows.append((name, dt, ok / dt if dt > 0 else float("inf"), du(size_of) if size_of else 0, ok, peak_rss_mb()))

    stage("simulate (raw)", lambda: simulate_dataset(raw, sim, binning=binning, workers=args.workers, progress=False), raw)
    stage(
        "calibrate",
        lambda: calibrate_dataset(
            raw, lcdir, CalibrateOptions(**cfg.data.calibrate), binning=binning, workers=args.workers, progress=False
        ),
        lcdir,
    )
    stage(
        "baseline",
        lambda: baseline_dataset(
            lcdir, sub, BaselineOptions(**cfg.data.baseline), workers=args.workers, progress=False
        ),
        None,
    )
    t0 = time.perf_counter()
    report = score_files(raw / "train.csv", sub)
    rows.append(("score", time.perf_counter() - t0, float("nan"), 0, report.n_planets, peak_rss_mb()))

    console = Console()
    table = Table(
        title=f"data path, {args.n_planets} planets, reads_scale {sim.reads_scale}, {args.workers} workers, "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()})"
    )
    for col in ("stage", "wall s", "planets/s", "MB written", "planets ok", "peak RSS MB so far"):
        table.add_column(col, justify="right")
    for name, dt, rate, size, ok, rss in rows:
        table.add_row(name, f"{dt:.1f}", f"{rate:.2f}", f"{size / 1e6:.0f}" if size else "-", str(ok), f"{rss:.0f}")
    table.add_row("total", f"{sum(r[1] for r in rows):.1f}", "", "", "", "")
    console.print(table)

    s = Table(title="baseline, ADC2025 metric")
    for col in ("score", "fgs1 part", "airs part", "rmse ppm", "coverage 68", "coverage 90"):
        s.add_column(col, justify="right")
    s.add_row(*(f"{v:.4f}" if i not in (3,) else f"{v:.1f}" for i, v in enumerate(
        (report.score, report.fgs1, report.airs, report.rmse_ppm, report.coverage_68, report.coverage_90))))
    console.print(s)
    (out / "bench.json").write_text(json.dumps({"stages": rows, "score": json.loads(report.to_json())}, indent=2))


if __name__ == "__main__":
    main()
