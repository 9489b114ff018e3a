"""RunLogger: JSONL events, rotating markdown log, MLflow file store, rank-0-only writing, provenance."""

import json
import logging
import os
import re

import pytest
from omegaconf import OmegaConf

from spectramind.config import config_hash
from train.logs import NullProgress, RunLogger, git_sha

CONFIG = {"train": {"optimizer": {"lr": 0.001, "betas": [0.9, 0.95]}, "seed": 3}, "model": {"name": "tiny"}}


def logging_cfg(mlflow: bool = False, rotate_mb: float = 0.001) -> dict:
    return {
        "level": "DEBUG",
        "rich_console": False,
        "file_log": {"enable": True, "path": "logs/debug.md", "rotate_mb": rotate_mb, "backups": 2},
        "jsonl": {"enable": True, "path": "events.jsonl"},
        "mlflow": {
            "enable": mlflow, "tracking_uri": "", "experiment": "unit",
            "tags": {"repo_sha": "unknown", "config_hash": "unknown", "team": "v50"},
        },
    }


def events(run_dir):
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def test_jsonl_file_log_rotation_and_provenance(tmp_path):
    with RunLogger(tmp_path, logging_cfg(), CONFIG, run_name="r1") as run:
        run.metrics(10, {"train/loss": 0.5, "val/gll": -3.25}, phase="supervised")
        run.event("epoch", step=11, epoch=1)
        for i in range(40):
            run.log.info("line %d %s", i, "x" * 60)
    evs = events(tmp_path)
    assert [e["kind"] for e in evs] == ["start", "metrics", "epoch", "end"]
    assert evs[1]["step"] == 10 and evs[1]["phase"] == "supervised" and evs[1]["values"]["val/gll"] == -3.25
    assert evs[2]["epoch"] == 1 and evs[3]["status"] == "FINISHED"
    start = evs[0]
    assert re.fullmatch(r"[0-9a-f]{40}", start["git_sha"]) and start["git_sha"] == git_sha()
    assert start["config_hash"] == config_hash(OmegaConf.create(CONFIG))
    assert start["torch"] and start["python"]
    assert OmegaConf.to_container(OmegaConf.load(tmp_path / "config.yaml")) == CONFIG
    # 40 lines of ~90 bytes against a 1 KiB limit: rotated, and only `backups` old files kept.
    logs = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert logs == ["debug.md", "debug.md.1", "debug.md.2"]
    for name in logs:
        text = (tmp_path / "logs" / name).read_text()
        assert os.path.getsize(tmp_path / "logs" / name) <= 1100
        assert all(re.match(r"- \d{4}-\d\d-\d\d \d\d:\d\d:\d\d (INFO|DEBUG) ", ln) for ln in text.splitlines())
    assert "line 39" in (tmp_path / "logs" / "debug.md").read_text()
    assert not logging.getLogger("spectramind.train").handlers


def test_failure_is_recorded_and_propagates(tmp_path):
    with pytest.raises(ValueError, match="boom"):
        with RunLogger(tmp_path, logging_cfg(), CONFIG):
            raise ValueError("boom")
    end = events(tmp_path)[-1]
    assert end["kind"] == "end" and end["status"] == "FAILED" and "ValueError: boom" in end["error"]
    assert "ERROR run failed: ValueError: boom" in (tmp_path / "logs" / "debug.md").read_text()


def test_rank_one_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    with RunLogger(run_dir, logging_cfg(mlflow=True), CONFIG, rank=1) as run:
        run.metrics(1, {"val/gll": 1.0}, phase="supervised")
        run.event("epoch", epoch=1)
        run.log.warning("not written")
        assert isinstance(run.progress(10, "x", force=True), NullProgress)
    assert not run_dir.exists()


def test_mlflow_file_store_gets_params_metrics_tags(tmp_path):
    from mlflow.tracking import MlflowClient

    with RunLogger(tmp_path, logging_cfg(mlflow=True, rotate_mb=1), CONFIG, run_name="ml") as run:
        run.metrics(1, {"val/gll": 2.0}, phase="supervised")
        run.metrics(2, {"val/gll": 1.5}, phase="supervised")
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.info.run_name == "ml"
    assert got.data.params["train.optimizer.lr"] == "0.001"
    assert got.data.params["train.optimizer.betas"] == "[0.9, 0.95]"
    assert got.data.metrics["val/gll"] == 1.5
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "val/gll")] == [(1, 2.0), (2, 1.5)]
    assert got.data.tags["repo_sha"] == git_sha() != "unknown"
    assert got.data.tags["config_hash"] == run.config_hash and got.data.tags["team"] == "v50"


def test_progress_and_validation(tmp_path):
    cfg = logging_cfg()
    cfg["rich_console"] = True
    with RunLogger(tmp_path, cfg, CONFIG) as run:
        assert isinstance(run.progress(5, "epochs"), NullProgress)  # pytest's stdout is not a tty
        with run.progress(5, "epochs", force=True) as bar:
            assert not isinstance(bar, NullProgress)
            bar.advance(2)
            bar.update(description="epochs (val)")
    assert logging.getLogger("spectramind.train").propagate
    with pytest.raises(ValueError, match="rotate_mb must be > 0"):
        RunLogger(tmp_path, logging_cfg(rotate_mb=0), CONFIG)
    bad = logging_cfg()
    bad["level"] = "LOUD"
    with pytest.raises(ValueError, match="train.logging.level"):
        RunLogger(tmp_path, bad, CONFIG)
