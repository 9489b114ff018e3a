"""serve.quickstart (the default artifact of a fresh machine) and the shipped sample request.

The quickstart builds once per module with the tiny setting (12 planets, 1 epoch, TorchScript
only, buckets 1 and 2); every test reads that artifact.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from serve import quickstart
from serve.examples import make_sample
from spectramind.artifact import MANIFEST, read_golden, verify_artifact
from spectramind.bins import N_AIRS, N_BINS

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

TINY = {"planets": 12, "epochs": 1, "workers": 1, "formats": ("torchscript",), "buckets": (1, 2)}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("quickstart")
    options = quickstart.QuickstartOptions(artifact=root / "artifacts" / "default", work=root / "work", **TINY)
    manifest = quickstart.build_default_artifact(options, progress=False)
    return options.artifact, manifest


def test_build_writes_a_verified_artifact(built):
    artifact, manifest = built
    assert verify_artifact(artifact) == manifest
    assert quickstart.artifact_state(artifact) == "verified"
    assert manifest["features"]["options"]["fgs1_steps"] == quickstart.FGS1_STEPS
    assert manifest["inputs"][0]["shape"] == ["batch", quickstart.FGS1_STEPS, 6]
    assert manifest["batch_buckets"] == [1, 2]
    assert set(manifest["formats"]) >= {"torchscript", "checkpoint"}
    assert manifest["model_config"]["model"]["encoders"]["fgs1_mamba"]["d_model"] == 128  # the small preset
    assert manifest["calibration"]["method"] != "none"
    # Golden planets are real validation planets of the simulated set, not synthetic ones.
    golden = read_golden(artifact)
    assert (golden["planet_ids"] > 0).all()
    assert np.isfinite(golden["mu"]).all() and (golden["sigma"] > 0).all()


def test_existing_artifact_is_kept_and_tampered_one_refused(built, tmp_path, monkeypatch, capsys):
    artifact, _ = built
    copy = tmp_path / "copy"
    shutil.copytree(artifact, copy)
    monkeypatch.setenv(quickstart.ARTIFACT_ENV, str(copy))
    before = {p.name: p.stat().st_mtime_ns for p in copy.iterdir()}
    # Verified: nothing is rebuilt (the work dir would be created by a build).
    assert quickstart.main(["--build-only", "--work", str(tmp_path / "work")]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in copy.iterdir()} == before
    assert not (tmp_path / "work").exists()

    with open(copy / "golden.npz", "ab") as fh:
        fh.write(b"\0")
    assert quickstart.artifact_state(copy) == "invalid"
    assert quickstart.main(["--build-only", "--work", str(tmp_path / "work")]) == 2
    err = capsys.readouterr().err
    assert "golden.npz" in err and "--force" in err
    assert not (tmp_path / "work").exists()


def test_absent_artifact_and_bad_settings(tmp_path, monkeypatch, capsys):
    assert quickstart.artifact_state(tmp_path / "nothing") == "absent"
    (tmp_path / "empty").mkdir()
    assert quickstart.artifact_state(tmp_path / "empty") == "absent"
    # A directory that holds something else is never built over (export would replace it whole).
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert quickstart.artifact_state(foreign) == "foreign"
    monkeypatch.setenv(quickstart.ARTIFACT_ENV, str(foreign))
    assert quickstart.main(["--build-only", "--work", str(tmp_path / "work")]) == 2
    assert "not an artifact" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "mine" and not (tmp_path / "work").exists()
    with pytest.raises(ValueError, match="--planets"):
        quickstart.QuickstartOptions(artifact=tmp_path / "a", planets=3)
    with pytest.raises(ValueError, match="outside --work"):
        quickstart.QuickstartOptions(artifact=tmp_path / "w" / "art", work=tmp_path / "w")
    monkeypatch.setenv(quickstart.ARTIFACT_ENV, str(tmp_path / "a"))
    monkeypatch.setenv(quickstart.PLANETS_ENV, "many")
    assert quickstart.main(["--build-only"]) == 2
    assert quickstart.PLANETS_ENV in capsys.readouterr().err


def test_serve_command_is_this_interpreters_uvicorn():
    assert quickstart.serve_command("127.0.0.1", 8000) == [
        sys.executable, "-m", "uvicorn", "serve.app:app", "--host", "127.0.0.1", "--port", "8000"]


# ---------------------------------------------------------------- the sample request


def test_sample_request_shapes_and_size():
    raw = make_sample.SAMPLE.read_bytes()
    assert len(raw) < 300_000
    body = json.loads(raw)
    assert set(body) == {"planet_id", "fgs1", "airs", "star"}
    tf, ta = len(body["fgs1"]["flux"]), len(body["airs"]["time_h"])
    assert 64 <= tf <= 200 and 40 <= ta <= 60
    assert np.shape(body["fgs1"]["time_h"]) == (tf,)
    assert np.shape(body["fgs1"]["centroid"]) == np.shape(body["fgs1"]["jitter"]) == (tf, 2)
    flux = np.asarray(body["airs"]["flux"], dtype=np.float64)
    assert flux.shape == (N_AIRS, ta) and np.isfinite(flux).all() and (flux > 0).all()
    assert (np.diff(body["fgs1"]["time_h"]) > 0).all() and (np.diff(body["airs"]["time_h"]) > 0).all()
    # A transit is in it: the FGS1 minimum is well below the out-of-transit level.
    f = np.asarray(body["fgs1"]["flux"])
    assert f.min() < (1 - 3e-3) * np.median(f[:10])


def test_sample_request_is_reproduced_by_its_generator(tmp_path):
    out = tmp_path / "sample.json"
    assert make_sample.main(["--out", str(out)]) == 0
    assert out.read_bytes() == make_sample.SAMPLE.read_bytes(), "run python -m serve.examples.make_sample"


def test_sample_request_parses_and_predicts_with_the_built_artifact(built):
    from serve.features import request_inputs
    from serve.schemas import parse_predict
    from spectramind.data.features import options_from_meta

    artifact, manifest = built
    reqs, is_list = parse_predict(make_sample.SAMPLE.read_bytes(), "application/json")
    assert not is_list and len(reqs) == 1
    req = reqs[0]
    assert req.airs_flux.shape[0] == N_AIRS and req.fgs1_flux.ndim == 1 and req.star is not None
    options = options_from_meta({"features_version": manifest["features"]["version"],
                                 "features": manifest["features"]["options"]}, artifact)
    inputs = request_inputs(req, options)
    # serve.features imported spectramind, which registers the custom ops the TorchScript graph calls.
    model = torch.jit.load(str(artifact / "model.torchscript.pt"))
    with torch.no_grad():
        mu, sigma = model(torch.from_numpy(inputs.fgs1[None]), torch.from_numpy(inputs.airs_nodes[None]))
    assert mu.shape == sigma.shape == (1, N_BINS)
    assert torch.isfinite(mu).all() and (sigma > 0).all()
    assert (artifact / MANIFEST).is_file()
