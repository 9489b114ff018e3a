"""Ablation sweeps with a fake train_fn: expansion order, seeded subsets, failures, leaderboards, zips."""

import json
import re
import zipfile

import pytest

from spectramind.config import compose
from train.ablate import expand_search_space, plan_sweep, run_ablation, run_ablation_from_config, search_key

TRAIN_KEYS = {"optimizer", "scheduler", "seed", "epochs", "model"}
SPACE = {
    "optimizer.lr": [1.0e-4, 2.0e-4],
    "model.fusion.kind": ["concat", "gated"],
    "model.decoders.sigma_head.type": ["flow"],
}


def test_search_key_rule_and_expansion_order():
    assert search_key("optimizer.lr", TRAIN_KEYS) == "train.optimizer.lr"
    assert search_key("model.fusion.kind", TRAIN_KEYS) == "model.fusion.kind"
    assert search_key("data.binning.x", TRAIN_KEYS) == "data.binning.x"
    assert expand_search_space(SPACE, TRAIN_KEYS) == [
        ["train.optimizer.lr=0.0001", "model.fusion.kind=concat", "model.decoders.sigma_head.type=flow"],
        ["train.optimizer.lr=0.0001", "model.fusion.kind=gated", "model.decoders.sigma_head.type=flow"],
        ["train.optimizer.lr=0.0002", "model.fusion.kind=concat", "model.decoders.sigma_head.type=flow"],
        ["train.optimizer.lr=0.0002", "model.fusion.kind=gated", "model.decoders.sigma_head.type=flow"],
    ]
    odd = expand_search_space({"a": ["x,y", True, None, [1, 2]], "b": "range(1,3)"}, set())
    assert [p[0] for p in odd[::2]] == ["a='x,y'", "a=True", "a=null", "a=[1,2]"]
    assert [p[1] for p in odd[:2]] == ["b=1", "b=2"]
    with pytest.raises(ValueError, match="search_space.a has no values"):
        expand_search_space({"a": []}, set())


def test_max_runs_takes_a_seeded_subset_in_product_order():
    space = {"a": [1, 2, 3], "b": [1, 2, 3], "c": [1, 2, 3]}
    full = expand_search_space(space, set())
    plan = plan_sweep(space, set(), max_runs=5, seed=7)
    assert plan.sampled and plan.total == 27 and len(plan.runs) == 5
    assert plan.runs == plan_sweep(space, set(), 5, 7).runs
    idx = [full.index(r) for r in plan.runs]
    assert idx == sorted(idx) and len(set(idx)) == 5
    assert plan.runs != plan_sweep(space, set(), 5, 8).runs
    assert plan.describe() == "5 of 27 combinations (seeded random subset, seed 7)"
    whole = plan_sweep(space, set(), max_runs=27, seed=7)
    assert not whole.sampled and whole.runs == full


def fake_train(calls):
    def train_fn(overrides, run_dir):
        calls.append(list(overrides))
        params = dict(o.split("=", 1) for o in overrides)
        lr, kind = float(params["train.optimizer.lr"]), params["model.fusion.kind"]
        if kind == "gated" and lr > 1.5e-4:
            raise RuntimeError("diverged")
        (run_dir / "notes.txt").write_text(f"{kind} {lr}")
        score = {"concat": 1.0, "gated": 2.0}[kind] + lr * 1e3
        return {"val/score": score, "val/gll": -score, "best_ckpt": run_dir / "best.pt", "phase": "supervised"}

    return train_fn


def test_run_ablation_leaderboard_failures_and_zips(tmp_path):
    calls = []
    base = ["model=small", "train=ablation", "train.optimizer.lr=0.5"]
    board = run_ablation(
        base, fake_train(calls), tmp_path / "runs", search_space=SPACE, train_keys=TRAIN_KEYS, seed=0,
        max_runs=10, top_n=2, md_path=tmp_path / "out" / "lb.md", html_path=tmp_path / "out" / "lb.html",
        zip_dir=tmp_path / "zips",
    )
    assert calls[0] == ["model=small", "train=ablation", *expand_search_space(SPACE, TRAIN_KEYS)[0]]
    assert [r.name for r in board.ranked()] == ["run001", "run002", "run000"]
    failed = board.records[3]
    assert failed.status == "failed" and failed.error == "RuntimeError: diverged"
    assert board.records[1].best_ckpt == str(tmp_path / "runs" / "run001" / "best.pt")
    assert board.records[1].metrics == {"val/score": pytest.approx(2.1), "val/gll": pytest.approx(-2.1)}

    md = (tmp_path / "out" / "lb.md").read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and "run0" in ln]
    assert [re.search(r"run\d{3}", r).group() for r in rows] == ["run001", "run002", "run000", "run003"]
    assert md.splitlines()[4].startswith("| rank | run | train.optimizer.lr | model.fusion.kind |")
    assert "| val/score | val/gll | seconds | status |" in md.splitlines()[4]
    assert rows[0].startswith("| 1 | run001 | 0.0001 | gated | flow | 2.1 | -2.1 |")
    assert rows[3].startswith("| - | run003 | 0.0002 | gated |") and "failed: RuntimeError: diverged" in rows[3]
    assert "all 4 combinations; 3 ok, 1 failed" in md

    page = (tmp_path / "out" / "lb.html").read_text()
    assert "<script>" in page and "addEventListener(\"click\"" in page
    assert "src=" not in page and "href=" not in page
    assert [page.index(n) for n in ("run001", "run002", "run000", "run003")] == sorted(
        page.index(n) for n in ("run001", "run002", "run000", "run003"))
    assert json.loads((tmp_path / "out" / "lb.json").read_text())["records"][0]["name"] == "run001"

    assert sorted(p.name for p in (tmp_path / "zips").iterdir()) == ["rank1_run001.zip", "rank2_run002.zip"]
    with zipfile.ZipFile(tmp_path / "zips" / "rank1_run001.zip") as zf:
        assert zf.read("notes.txt") == b"gated 0.0001"


def test_from_config_min_mode_and_subset(tmp_path):
    cfg = compose(["model=small", "train=ablation"])
    composed = []

    def train_fn(overrides, run_dir):
        if not composed:  # the overrides a sweep produces must compose against the real config
            run_cfg = compose(overrides)
            composed.append((run_cfg.train.optimizer.lr, run_cfg.model.fusion.kind))
        return {"val/gll": float(len(overrides[-1])) + 0.001 * len(list(run_dir.parent.iterdir()))}

    board = run_ablation_from_config(cfg, ["model=small", "train=ablation"], train_fn, tmp_path / "runs",
                                     export_root=tmp_path, monitor="val/gll", mode="min")
    assert board.plan.sampled and board.plan.total == 162 and len(board.records) == cfg.train.ablate.max_runs
    assert composed[0] == (float(board.plan.runs[0][0].split("=")[1]), board.plan.runs[0][3].split("=")[1])
    values = [r.metrics["val/gll"] for r in board.ranked()]
    assert values == sorted(values)
    assert (tmp_path / "outputs" / "ablate" / "leaderboard.md").is_file()
    assert len(list((tmp_path / "outputs" / "ablate" / "topn_bundles").iterdir())) == cfg.train.ablate.top_n
