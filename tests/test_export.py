"""spectramind-export on a tiny checkpoint (model=small, T=16): round trip, manifest, parity, bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from export import cli
from spectramind.artifact import GOLDEN, MANIFEST, read_golden, synthetic_inputs, verify_artifact
from export.torchscript import CUSTOM_OPS, baked_devices, graph_ops
from spectramind.bins import N_BINS, wavelengths
from spectramind.data.features import FEATURES_VERSION, FeatureOptions
from spectramind.model.calibration import COREL, Calibrator, TemperatureScaling, graph_for
from spectramind.model.v50 import SpectraMindV50, model_config_from

REPO = Path(__file__).resolve().parents[1]
STEPS = 16
BUCKETS = (1, 3)


class Unsafe:
    """A custom class: a checkpoint pickling one is refused by weights_only loading."""


def _meta(**extra) -> dict:
    features = json.loads(json.dumps(asdict(FeatureOptions(fgs1_steps=STEPS)), default=str))
    return {"features_version": FEATURES_VERSION, "features": features, "git_sha": "0" * 40, **extra}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict]:
    """A small model with a non-trivial temperature + COREL calibration (so baking it in matters)."""
    from spectramind.config import compose

    torch.manual_seed(0)
    config = model_config_from(compose(["model=small"]))
    model = SpectraMindV50(config).eval()
    corel = COREL(dict(config["model"]["calibration"]["corel"]), graph_for(config))
    temperature = TemperatureScaling()
    with torch.no_grad():
        temperature.log_t_global.fill_(0.2)
        temperature.log_t_bin.normal_(0.0, 0.1)
        corel.out.weight.normal_(0.0, 0.3)
    report = {"before": {"coverage_90": 0.8}, "after": {"coverage_90": 0.9}, "holdout_index": [0, 1]}
    cal = Calibrator(temperature, corel, report)
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    model.save_checkpoint(path, calibration=cal.state(), meta=_meta())
    return path, config


@pytest.fixture(scope="module")
def artifact(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("artifacts") / "tiny"
    argv = ["--ckpt", str(tiny[0]), "--out", str(out), "--formats", "torchscript,onnx,triton-repo",
            "--batch-buckets", ",".join(map(str, BUCKETS))]
    assert cli.main(argv) == 0
    return out


def test_artifact_layout_and_manifest(artifact, tiny):
    names = sorted(p.relative_to(artifact).as_posix() for p in artifact.rglob("*") if p.is_file())
    assert names == sorted([MANIFEST, GOLDEN, "checkpoint.pt", "model.torchscript.pt", "model.onnx",
                            "triton/spectramind/config.pbtxt", "triton/spectramind/1/model.onnx"])
    assert not [p for p in artifact.parent.iterdir() if p.name.startswith(".")], "a temporary was left behind"
    m = json.loads((artifact / MANIFEST).read_text())
    assert m["format_version"] == 1
    assert m["model_config"] == json.loads(json.dumps(tiny[1]))
    assert m["features"]["version"] == FEATURES_VERSION and m["features"]["options"]["fgs1_steps"] == STEPS
    assert m["inputs"] == [
        {"name": "fgs1", "shape": ["batch", STEPS, 6], "dtype": "float32"},
        {"name": "airs_nodes", "shape": ["batch", N_BINS, 8], "dtype": "float32"},
    ]
    assert [(o["name"], o["shape"]) for o in m["outputs"]] == [("mu", ["batch", N_BINS]), ("sigma", ["batch", N_BINS])]
    assert np.allclose(m["bins"]["wavelength_um"], wavelengths())
    assert m["calibration"]["method"] == "temperature+COREL" and m["calibration"]["coverage_target"] == 0.9
    report = m["calibration"]["report"]
    assert report["after"] == {"coverage_90": 0.9} and "holdout_index" not in report
    assert m["batch_buckets"] == list(BUCKETS)
    assert m["formats"]["onnx"]["opset"] >= 18 and m["formats"]["onnx"]["nodes"] < 2000
    assert m["formats"]["checkpoint"]["file"] == "checkpoint.pt" and "checkpoint.pt" in m["files"]
    assert m["formats"]["torchscript"]["custom_ops"] == list(CUSTOM_OPS)
    assert m["libraries"]["torch"] and m["libraries"]["onnxruntime"]
    assert m["libraries"]["spectramind_git_sha"] == "0" * 40
    assert m["golden"]["planets"] == 2 and m["golden"]["planet_ids"] == [-1, -2]
    assert set(m["files"]) == set(names) - {MANIFEST}
    # parity: every runtime at every bucket, all within the CPU tolerance
    rows = m["parity"]["rows"]
    assert m["parity"]["passed"] and all(r["passed"] for r in rows)
    assert sorted((r["runtime"], r["batch"]) for r in rows) == sorted(
        (rt, b) for rt in ("torchscript", "onnxruntime-cpu") for b in BUCKETS)
    assert all(r["sigma_max_rel"] <= 1e-4 and r["mu_max_rel"] <= 1e-4 for r in rows)


def test_calibration_is_baked_in(artifact, tiny):
    """The golden outputs are the calibrated ones: they differ from the raw model's sigma, not its mu."""
    g = read_golden(artifact)
    model = SpectraMindV50.from_checkpoint(tiny[0]).eval()
    with torch.no_grad():
        raw = model(torch.from_numpy(g["fgs1"]), torch.from_numpy(g["airs_nodes"]))
    np.testing.assert_allclose(g["mu"], raw.mu.numpy(), rtol=1e-6)
    assert np.abs(np.log(g["sigma"] / raw.sigma.numpy())).mean() > 0.05


def test_torchscript_reloads_in_a_fresh_process_with_only_spectramind(artifact):
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np, torch
        import spectramind
        m = torch.jit.load({str(artifact / 'model.torchscript.pt')!r})
        g = np.load({str(artifact / GOLDEN)!r})
        x = [torch.from_numpy(np.concatenate([g[k]] * 2)) for k in ("fgs1", "airs_nodes")]  # batch 4: not traced at
        with torch.no_grad():
            mu, sigma = m(*x)
        ref_mu, ref_sigma = (np.concatenate([g[k]] * 2) for k in ("mu", "sigma"))
        np.testing.assert_allclose(mu.numpy(), ref_mu, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(sigma.numpy(), ref_sigma, rtol=1e-4, atol=1e-7)
        assert not any(n == "export" or n.startswith(("export.", "triton_kernels")) for n in sys.modules)
        print("ok", tuple(mu.shape))
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == f"ok (4, {N_BINS})"


def test_saved_graph_names_both_custom_ops(artifact):
    ops = graph_ops(artifact / "model.torchscript.pt")
    assert set(CUSTOM_OPS) <= ops
    assert "aten::linear" in ops  # the walk sees the inlined submodules, not just the top-level calls


def test_traced_graph_bakes_no_device(artifact):
    """A device constant in the trace pins the artifact to the CPU (map_location moves only tensors)."""
    assert baked_devices(artifact / "model.torchscript.pt") == {}
    assert json.loads((artifact / MANIFEST).read_text())["formats"]["torchscript"]["baked_devices"] == {}


def test_onnx_runs_in_onnxruntime_with_the_golden_outputs(artifact):
    import onnxruntime as ort

    g = read_golden(artifact)
    session = ort.InferenceSession(str(artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["fgs1", "airs_nodes"]
    assert [o.name for o in session.get_outputs()] == ["mu", "sigma"]
    mu, sigma = session.run(["mu", "sigma"], {"fgs1": g["fgs1"][:1], "airs_nodes": g["airs_nodes"][:1]})
    np.testing.assert_allclose(mu, g["mu"][:1], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(sigma, g["sigma"][:1], rtol=1e-4, atol=1e-7)


def test_triton_repository(artifact):
    model_dir = artifact / "triton" / "spectramind"
    text = (model_dir / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in text
    assert f"max_batch_size: {max(BUCKETS)}" in text
    assert "preferred_batch_size: [ 1, 3 ]" in text
    for name, dims in (("fgs1", f"{STEPS}, 6"), ("airs_nodes", f"{N_BINS}, 8"), ("mu", str(N_BINS)),
                       ("sigma", str(N_BINS))):
        assert f'name: "{name}"\n    data_type: TYPE_FP32\n    dims: [ {dims} ]' in text
    assert (model_dir / "1" / "model.onnx").read_bytes() == (artifact / "model.onnx").read_bytes()


def test_hashes_verify_and_tampering_is_named(artifact, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(artifact, copy)
    assert verify_artifact(copy)["format_version"] == 1
    # one flipped byte in the middle of the weights
    target = copy / "model.torchscript.pt"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model\.torchscript\.pt does not match its sha256"):
        verify_artifact(copy)
    shutil.copyfile(artifact / "model.torchscript.pt", target)
    verify_artifact(copy)
    # an edited manifest (a parity row made to look better) is caught by the manifest's own hash
    m = json.loads((copy / MANIFEST).read_text())
    m["parity"]["rows"][0]["mu_max_abs"] = 0.0 if m["parity"]["rows"][0]["mu_max_abs"] else 1.0
    (copy / MANIFEST).write_text(json.dumps(m, indent=2))
    with pytest.raises(ValueError, match=r"manifest\.json was modified"):
        verify_artifact(copy)
    shutil.copyfile(artifact / MANIFEST, copy / MANIFEST)
    # a file slipped in, and a file removed
    (copy / "extra.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"extra\.bin is not listed"):
        verify_artifact(copy)
    (copy / "extra.bin").unlink()
    (copy / GOLDEN).unlink()
    with pytest.raises(ValueError, match=r"golden\.npz is missing"):
        verify_artifact(copy)


def test_synthetic_golden_inputs_are_deterministic_and_feature_like():
    a, b = synthetic_inputs(3, STEPS), synthetic_inputs(3, STEPS)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    ids, fgs1, nodes = a
    assert fgs1.shape == (3, STEPS, 6) and nodes.shape == (3, N_BINS, 8) and fgs1.dtype == np.float32
    wl = wavelengths()
    np.testing.assert_allclose(nodes[0, :, 7], 2 * (wl - wl.min()) / (wl.max() - wl.min()) - 1, atol=1e-6)
    assert (fgs1[:, STEPS // 2, 0] < -0.4).all() and (np.abs(fgs1[:, 0, 0]) < 0.1).all()  # a transit dip


def test_golden_from_light_curves_matches_spectramind_predict(tiny, tmp_path, capsys):
    """--data: the golden planets are the checkpoint's validation planets, featurised by the shared
    spectramind.data.features function; the artifact on those inputs (the server's path) gives what
    `spectramind predict` writes for the same planets."""
    from spectramind.data.simulate import SimulateOptions, simulate_dataset
    from train.predict import predict_checkpoint

    lcdir = tmp_path / "lc"
    simulate_dataset(lcdir, SimulateOptions(n_planets=3, seed=5, level="lightcurves", n_test=0,
                                            two_visit_fraction=0.0), workers=1, progress=False)
    ids = sorted(int(p.name) for p in (lcdir / "train").iterdir())
    ckpt = torch.load(tiny[0], weights_only=True)
    ckpt["meta"]["val_planets"] = [ids[2], 12345, ids[0]]  # 12345 is not in the LCDIR: skipped
    path = tmp_path / "val.pt"
    torch.save(ckpt, path)
    out = tmp_path / "art"
    argv = ["--ckpt", str(path), "--out", str(out), "--formats", "torchscript", "--batch-buckets", "2",
            "--data", str(lcdir)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    g = read_golden(out)
    assert g["planet_ids"].tolist() == [ids[2], ids[0]]
    assert json.loads((out / MANIFEST).read_text())["golden"]["source"] == f"validation planets of {lcdir}"
    scripted = torch.jit.load(str(out / "model.torchscript.pt"))
    with torch.no_grad():
        mu, sigma = (t.numpy() for t in scripted(torch.from_numpy(g["fgs1"]), torch.from_numpy(g["airs_nodes"])))
    predict_checkpoint(path, lcdir, tmp_path / "sub.csv", splits=("train",), workers=1, progress=False)
    sub = pd.read_csv(tmp_path / "sub.csv").set_index("planet_id").loc[g["planet_ids"]].to_numpy()
    np.testing.assert_allclose(sub[:, :N_BINS], np.clip(mu, 0.0, None), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(sub[:, N_BINS:], sigma, rtol=1e-5, atol=1e-10)


# ---------------------------------------------------------------- bad input


def _bad_checkpoints(root: Path, good: Path) -> dict[str, tuple[Path, str]]:
    """name -> (checkpoint path, fragment of the expected message)."""
    out = {"missing": (root / "nope.pt", "does not exist")}
    (root / "garbage.pt").write_bytes(b"this is not a checkpoint" * 50)
    out["corrupt"] = (root / "garbage.pt", "is not a torch checkpoint")
    blob = good.read_bytes()
    (root / "truncated.pt").write_bytes(blob[: len(blob) // 2])
    out["truncated"] = (root / "truncated.pt", "corrupt or truncated")
    ckpt = torch.load(good, weights_only=True)
    torch.save({**ckpt, "meta": {**ckpt["meta"], "note": Unsafe()}}, root / "unsafe.pt")
    out["weights_only refusal"] = (root / "unsafe.pt", "refused by weights_only loading")
    wrong = json.loads(json.dumps(ckpt["model_config"]))
    wrong["model"]["encoders"]["fgs1_mamba"]["d_state"] = 8
    torch.save({**ckpt, "model_config": wrong}, root / "mismatch.pt")
    out["config mismatch"] = (root / "mismatch.pt", "weights do not match its model_config")
    torch.save({**ckpt, "meta": {**ckpt["meta"], "features_version": FEATURES_VERSION + 1}}, root / "features.pt")
    out["features version"] = (root / "features.pt", f"features version {FEATURES_VERSION + 1}")
    torch.save({k: v for k, v in ckpt.items() if k != "calibration"}, root / "nokey.pt")
    out["missing key"] = (root / "nokey.pt", "lacks the key(s) calibration")
    return out


def test_bad_checkpoints_exit_2_with_one_line_and_leave_nothing(tiny, tmp_path, capsys):
    cases = _bad_checkpoints(tmp_path, tiny[0])
    for name, (path, fragment) in cases.items():
        work = tmp_path / f"out-{name.replace(' ', '_')}"
        work.mkdir()
        out = work / "art"
        code = cli.main(["--ckpt", str(path), "--out", str(out), "--formats", "torchscript", "--batch-buckets", "1"])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, f"{name}: exit {code}, stderr {err!r}"
        assert len(lines) == 1 and lines[0].startswith("error: "), f"{name}: {err!r}"
        assert fragment in lines[0] and str(path) in lines[0], f"{name}: {lines[0]!r}"
        assert list(work.iterdir()) == [], f"{name}: left {list(work.iterdir())}"


def test_existing_out_is_refused_without_force(tiny, tmp_path, capsys):
    out = tmp_path / "art"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert cli.main(["--ckpt", str(tiny[0]), "--out", str(out), "--formats", "torchscript"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_parity_failure_exits_3_and_leaves_nothing(tiny, tmp_path, monkeypatch, capsys):
    """A TorchScript runtime that drifts by 1e-3 on sigma fails the default tolerance; --force keeps the old --out."""
    import export.parity as parity

    real = parity.torchscript_runner

    def drifting(path, device):
        run = real(path, device)
        return lambda f, a: (lambda mu, sigma: (mu, sigma * 1.001))(*run(f, a))

    monkeypatch.setattr(parity, "torchscript_runner", drifting)
    out = tmp_path / "art"
    out.mkdir()
    (out / "keep.txt").write_text("previous artifact")
    code = cli.main(["--ckpt", str(tiny[0]), "--out", str(out), "--formats", "torchscript", "--batch-buckets", "2",
                     "--force"])
    captured = capsys.readouterr()
    assert code == 3
    assert "FAIL sigma" in captured.out  # the table is printed before the error
    (line,) = [x for x in captured.err.splitlines() if x.strip()]
    assert line.startswith("error: parity: torchscript on cpu at batch 2") and "sigma out of tolerance" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"] and [p.name for p in out.iterdir()] == ["keep.txt"]


def test_bad_flags_exit_2(tiny, tmp_path, capsys):
    for flags, fragment in ((["--formats", "torchscript,tflite"], "unknown format 'tflite'"),
                            (["--batch-buckets", "0,4"], "positive integers"),
                            (["--golden", "0"], "--golden must be >= 1")):
        code = cli.main(["--ckpt", str(tiny[0]), "--out", str(tmp_path / "art"), *flags])
        assert code == 2 and fragment in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
