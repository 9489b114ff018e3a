"""The training loop end to end on tiny simulated planets: checkpoints, loss, resume, guardrail,
predict -> score, the CLI, and distributed training on 2 CPU processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from spectramind.cli import main as cli
from spectramind.config import compose
from spectramind.data.simulate import SimulateOptions, simulate_dataset
from spectramind.model.calibration import CalibratedV50
from spectramind.model.v50 import SpectraMindV50
from train.checkpoints import load_checkpoint
from train.guardrail import RuntimeOverrun
from train.loop import run_training

# fast_smoke on model=small with a short FGS1 sequence, no loader processes, no MLflow: seconds.
TINY = [
    "model=small",
    "train=fast_smoke",
    "data.features.fgs1_steps=16",
    "train.batch.workers=0",
    "train.batch.train=4",
    "train.logging.mlflow.enable=false",
    "train.logging.rich_console=false",
]


@pytest.fixture(scope="module")
def lcdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lc")
    opts = SimulateOptions(n_planets=16, seed=5, level="lightcurves", n_test=3)
    simulate_dataset(root, opts, workers=1, progress=False)
    return root


def events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


def test_fast_smoke_writes_checkpoints_that_predict_and_score_accept(lcdir, tmp_path, capsys):
    run = tmp_path / "run"
    res = run_training(compose(TINY), lcdir, run, workers=1, progress=False)
    assert res.best_ckpt == run / "checkpoints" / "best.pt" and res.last_ckpt.is_file()
    ckpt = load_checkpoint(res.best_ckpt)
    assert set(ckpt) >= {"model", "model_config", "calibration", "meta"}
    assert ckpt["meta"]["config_hash"] and len(ckpt["meta"]["val_planets"]) == 3  # 20 % of 16
    # Calibration ran after supervised training and is stored with a report.
    cal = ckpt["calibration"]
    assert cal["temperature"]["enable"] and "after" in cal["report"]
    assert (run / "calibration" / "reliability.png").stat().st_size > 1000
    model = SpectraMindV50.from_checkpoint(res.best_ckpt)
    assert model.parameter_count() > 1e6
    kinds = {e["kind"] for e in events(run)}
    assert {"start", "metrics", "result", "end"} <= kinds
    assert "v50_debug_log.md" in os.listdir(run)

    sub = tmp_path / "sub.csv"
    assert cli(["predict", "--ckpt", str(res.best_ckpt), "--data", str(lcdir), "--out", str(sub), "--workers", "1"]) == 0
    capsys.readouterr()
    assert cli(["score", "--truth", str(lcdir / "test_truth.csv"), "--submission", str(sub)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["n_planets"] == 3 and 0.0 <= report["score"] <= 1.0
    # The submission is the calibrated model's output.
    wrapped = CalibratedV50.from_checkpoint(res.best_ckpt)
    assert not torch.equal(wrapped.calibrator.temperature.log_t_bin.detach(), torch.zeros(283))


def test_supervised_loss_decreases(lcdir, tmp_path):
    cfg = compose([*TINY, "train.epochs.mae=0", "train.epochs.supervised=6", "train.optimizer.lr=1e-3",
                   "train.early_stopping.enable=false", "train.calibration.run_after_supervised=false"])
    run_training(cfg, lcdir, tmp_path / "run", workers=1, progress=False)
    losses = [e["values"]["train/loss"] for e in events(tmp_path / "run") if "train/loss" in e.get("values", {})]
    assert len(losses) == 6
    assert np.mean(losses[-2:]) < np.mean(losses[:2])


def test_guardrail_stops_and_resume_continues_exactly(lcdir, tmp_path):
    base = [*TINY, "train.epochs.mae=1", "train.epochs.supervised=2", "train.calibration.run_after_supervised=false",
            "train.early_stopping.enable=false"]
    full = run_training(compose(base), lcdir, tmp_path / "full", workers=1, progress=False)

    # A tiny runtime budget: the run stops after its first optimiser step with last.pt saved.
    cut = tmp_path / "cut"
    with pytest.raises(RuntimeOverrun, match="target_total_hours"):
        run_training(compose([*base, "train.runtime_guardrails.target_total_hours=1e-9"]), lcdir, cut,
                     workers=1, progress=False)
    saved = load_checkpoint(cut / "checkpoints" / "last.pt")["train_state"]
    # fast_smoke accumulates 2 batches a step
    assert (saved["phase"], saved["epoch"], saved["batch"], saved["step"]) == (0, 0, 2, 1)
    assert any(e["kind"] == "guardrail" for e in events(cut))

    resumed = run_training(
        compose([*base, "train.resume.enable=true", f"train.resume.ckpt_path={cut / 'checkpoints' / 'last.pt'}"]),
        lcdir, cut, workers=1, progress=False,
    )
    assert resumed.steps == full.steps
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_cli_train_flags_and_bad_data(lcdir, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--data", str(lcdir), "--out", str(run), "--epochs-supervised", "1", "--workers", "1",
            *TINY, "train.epochs.mae=0", "train.calibration.run_after_supervised=false"]
    assert cli(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["best_ckpt"].endswith("best.pt") and summary["stopped"] == "completed"
    assert load_checkpoint(run / "checkpoints" / "last.pt")["meta"]["config"]["train"]["epochs"]["supervised"] == 1
    assert cli(["train", "--data", str(tmp_path / "nowhere"), "--out", str(run), *TINY]) == 2
    assert "no planets" in capsys.readouterr().err


DDP_SCRIPT = textwrap.dedent(
    """
    import os, sys, torch
    torch.set_num_threads(1)
    from spectramind.config import compose
    from train.loop import run_training
    lcdir, run, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
    res = run_training(compose(overrides), lcdir, run, workers=1, progress=False)
    torch.save(res.model.state_dict(), os.path.join(run, f"rank{os.environ['RANK']}.pt"))
    """
)


@pytest.mark.slow
def test_ddp_two_cpu_processes_keep_replicas_equal(lcdir, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    run = tmp_path / "run"
    run.mkdir()
    overrides = [*TINY, "train.epochs.mae=1", "train.epochs.supervised=1", "train.batch.train=2",
                 "train.calibration.run_after_supervised=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           str(script), str(lcdir), str(run), *overrides]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    a = torch.load(run / "rank0.pt", weights_only=True)
    b = torch.load(run / "rank1.pt", weights_only=True)
    # Rank 0's initial weights (DDP broadcasts them): the loop seeds with train.seed, then builds the model.
    torch.manual_seed(int(compose(TINY).train.seed))
    init = SpectraMindV50(load_checkpoint(run / "checkpoints" / "last.pt")["model_config"]).state_dict()
    moved = 0
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-6, atol=1e-7, msg=lambda m: f"{name}: {m}")
        moved += int(not torch.equal(a[name], init[name]))
    assert moved > 10  # the replicas trained, not just stayed at a common init


def test_cli_ablate_runs_the_sweep_and_writes_the_leaderboard(lcdir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # train.ablate.export paths are relative to the working directory
    args = ["ablate", "--data", str(lcdir), "--out", "outputs/ablate", "--workers", "1", "train=ablation",
            "model=small", "data.features.fgs1_steps=16", "train.epochs.mae=0", "train.epochs.contrastive=0",
            "train.epochs.supervised=1", "train.batch.workers=0", "train.batch.train=4",
            "train.logging.mlflow.enable=false", "train.calibration.run_after_supervised=false",
            "train.ablate.max_runs=2", "train.ablate.top_n=1"]
    assert cli(args) == 0
    board = tmp_path / "outputs" / "ablate"
    md = (board / "leaderboard.md").read_text()
    assert md.count("| ok") == 2 or md.count("ok |") == 2, md
    assert "val/score" in md and (board / "leaderboard.html").read_text().count("<tr") >= 3
    assert len(list((board / "topn_bundles").glob("*.zip"))) == 1
