"""The HTTP layer of the server: every route and status code in-process, tritonclient, concurrent
clients and a real Prometheus against a live uvicorn on 127.0.0.1, graceful drain, tampering.

One tiny artifact per session (model=small, fgs1_steps=16, TorchScript, buckets 1 and 4). A stub
service (below) stands in only where a status code cannot be provoked deterministically from the
real one (429, a server fault, a non-finite output, a start-up in progress or failed, draining).
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import batman
import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from serve.app import create_app
from serve.service import PlanetResult, QueueFull
from serve.settings import Settings
from spectramind.artifact import MANIFEST
from spectramind.bins import N_AIRS, N_BINS, wavelengths

REPO = Path(__file__).resolve().parents[1]
STEPS = 16
T_FGS1, T_AIRS, VISIT_H = 64, 32, 6.0
STAR = {"Rs": 1.0, "Ms": 1.0, "Ts": 5700.0, "Mp": 1.0, "e": 0.0, "P": 3.0, "sma": 8.8, "i": 88.0}
LATENCY = "spectramind_request_duration_seconds"

torch.set_num_threads(1)


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="session")
def serve_artifact(tmp_path_factory) -> Path:
    """A tiny exported artifact (TorchScript, golden outputs, checkpoint for explanations)."""
    from export import cli
    from spectramind.config import compose
    from spectramind.data.features import FEATURES_VERSION, FeatureOptions
    from spectramind.model.v50 import SpectraMindV50, model_config_from

    torch.manual_seed(0)
    model = SpectraMindV50(model_config_from(compose(["model=small"]))).eval()
    features = json.loads(json.dumps(asdict(FeatureOptions(fgs1_steps=STEPS)), default=str))
    ckpt = tmp_path_factory.mktemp("serve_ckpt") / "best.pt"
    model.save_checkpoint(ckpt, meta={"features_version": FEATURES_VERSION, "features": features, "git_sha": "0" * 40})
    out = tmp_path_factory.mktemp("serve_artifacts") / "tiny"
    assert cli.main(["--ckpt", str(ckpt), "--out", str(out), "--formats", "torchscript", "--batch-buckets", "1,4"]) == 0
    return out


def _transit(t: np.ndarray, t0: float, depth: float, u: tuple[float, float]) -> np.ndarray:
    p = batman.TransitParams()
    p.t0, p.per, p.rp, p.a, p.inc, p.ecc, p.w = t0, STAR["P"] * 24, math.sqrt(depth), STAR["sma"], STAR["i"], 0.0, 90.0
    p.limb_dark, p.u = "quadratic", list(u)
    return batman.TransitModel(p, t).light_curve(p)


def planet_doc(pid: int = 7, seed: int = 0) -> dict:
    """A /predict JSON body: one visit with a ~1 % transit, float32-exact values (so the same
    planet sent as FP32 tensors is the same input)."""
    rng = np.random.default_rng(seed)
    tf = (np.arange(T_FGS1) + 0.5) * VISIT_H / T_FGS1
    ta = (np.arange(T_AIRS) + 0.5) * VISIT_H / T_AIRS
    depth = 0.01 + 0.001 * seed
    fgs1 = 5e4 * _transit(tf, 3.0, depth, (0.40, 0.22)) * (1 + 100e-6 * rng.standard_normal(T_FGS1))
    star = np.linspace(1200.0, 600.0, N_AIRS)[:, None]
    airs = star * _transit(ta, 3.0, depth, (0.15, 0.18))[None, :] * (1 + 300e-6 * rng.standard_normal((N_AIRS, T_AIRS)))
    f32 = lambda a: np.asarray(a, dtype=np.float32).astype(np.float64).tolist()  # noqa: E731
    return {"planet_id": pid, "fgs1": {"flux": f32(fgs1), "time_h": f32(tf)},
            "airs": {"flux": f32(airs), "time_h": f32(ta)}, "star": dict(STAR)}


def settings_for(artifact: Path, **kw) -> Settings:
    base = dict(artifact=artifact, device="cpu", threads=1, feature_workers=2, max_queue_delay_us=2000,
                deadline_s=30.0, shap_timeout_s=60.0, shap_samples=1, drain_timeout_s=5.0)
    return Settings(**{**base, **kw})


def wait_ready(get, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if get("/v2/health/ready").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError("the server did not become ready")


def err(r) -> dict:
    body = r.json()
    return body["error"]


@pytest.fixture(scope="module")
def client(serve_artifact):
    app = create_app(settings_for(serve_artifact), exit_on_failure=False)
    with TestClient(app, raise_server_exceptions=False) as c:
        wait_ready(c.get)
        yield c


@pytest.fixture(scope="module")
def reference(client) -> dict:
    r = client.post("/predict", json=planet_doc())
    assert r.status_code == 200, r.text
    return r.json()


class StubService:
    """Stands in for serve.service.Service where a status code needs a controlled failure."""

    def __init__(self, mode: str, start_gate: threading.Event | None = None) -> None:
        self.mode, self.gate = mode, start_gate
        self.ready = False
        self.draining = mode == "draining"
        self.on_batch = None
        self.started = threading.Event()

    def start(self) -> None:
        if self.gate is not None:
            self.gate.wait(10)
        if self.mode == "fail_start":
            raise RuntimeError("golden outputs differ at batch 4")
        self.ready = True
        self.started.set()

    def stop(self, timeout: float) -> bool:
        self.draining = True
        return True

    def info(self) -> dict:
        return {"model": {"name": "spectramind", "version": "stub", "sha256": "0" * 64, "runtime": "stub",
                          "device": "cpu"}}

    def predict(self, reqs, deadline_s, paths):
        if self.mode == "queue_full":
            raise QueueFull("queue full: 3 requests in flight, limit 3", retry_after_s=1.6)
        out = []
        for req in reqs:
            f: Future = Future()
            if self.mode == "boom":
                f.set_exception(RuntimeError("worker exploded"))
            elif self.mode == "nan":
                mu = np.full(N_BINS, 0.01)
                mu[5] = np.nan
                f.set_result(PlanetResult(req.planet_id, wavelengths(), mu, np.full(N_BINS, 1e-4), {}, {},
                                          {"features": 0.1, "queue": 0.001, "compute": 0.002}))
            # "never": the future is left pending (the app's guard must answer 504)
            out.append(f)
        return out


def stub_client(mode: str, gate: threading.Event | None = None, **kw) -> TestClient:
    service = StubService(mode, gate)
    app = create_app(settings_for(Path("/nonexistent"), **kw), service=service, exit_on_failure=False)
    return TestClient(app, raise_server_exceptions=False)


# ---------------------------------------------------------------- in-process: the routes


def test_health_metadata_and_unknown_routes(client, serve_artifact):
    manifest = json.loads((serve_artifact / MANIFEST).read_text())
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    v2 = client.get("/v2").json()
    assert v2["name"] == "spectramind" and "binary_tensor_data" in v2["extensions"]
    meta = client.get("/v2/models/spectramind").json()
    assert [i["name"] for i in meta["inputs"]][:2] == ["FGS1", "AIRS"]
    assert {o["name"]: o["shape"] for o in meta["outputs"]}["MU"] == [-1, N_BINS]
    assert meta["parameters"]["sha256"] == manifest["manifest_sha256"]
    version = meta["versions"][0]
    assert client.get(f"/v2/models/spectramind/versions/{version}/ready").json()["ready"] is True
    assert client.get("/v2/models/spectramind/ready").status_code == 200

    r = client.get("/v2/models/other")
    assert r.status_code == 404 and r.json()["field"] == "model_name" and isinstance(r.json()["error"], str)
    assert client.get("/v2/models/spectramind/versions/nope").status_code == 404
    r = client.get("/nowhere", headers={"X-Request-ID": "abc-123"})
    assert r.status_code == 404 and err(r)["code"] == "not_found" and err(r)["request_id"] == "abc-123"
    assert r.headers["x-request-id"] == "abc-123"
    r = client.get("/predict")
    assert r.status_code == 405 and err(r)["status"] == 405


def test_predict_json(client, reference, serve_artifact):
    manifest = json.loads((serve_artifact / MANIFEST).read_text())
    r = client.post("/predict", json=planet_doc())
    assert r.status_code == 200
    out = r.json()
    assert out["planet_id"] == 7
    mu, sigma = np.array(out["mu"]), np.array(out["sigma"])
    assert mu.shape == sigma.shape == (N_BINS,) and np.isfinite(mu).all() and (sigma > 0).all()
    np.testing.assert_allclose(out["wavelength_um"], wavelengths(), rtol=1e-6)
    assert out["model"]["sha256"] == manifest["manifest_sha256"] and out["model"]["name"] == "spectramind"
    assert "method" in out["calibration"]
    assert {"features", "queue", "compute", "total"} <= set(out["timings"])
    assert "attention" not in out and "shap" not in out
    np.testing.assert_array_equal(mu, reference["mu"])  # deterministic
    timing = r.headers["server-timing"]
    assert timing.startswith("total;dur=") and "compute;dur=" in timing and "queue;dur=" in timing
    assert len(r.headers["x-request-id"]) == 32


def test_predict_list_npz_and_batched_equals_unbatched(client, reference):
    docs = [planet_doc(7, 0), planet_doc(8, 1), planet_doc(9, 0)]
    r = client.post("/predict", json={"planets": docs})
    assert r.status_code == 200, r.text
    planets = r.json()["planets"]
    assert [p["planet_id"] for p in planets] == [7, 8, 9]
    np.testing.assert_allclose(planets[0]["mu"], reference["mu"], rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(planets[2]["sigma"], reference["sigma"], rtol=1e-5, atol=1e-12)
    assert not np.allclose(planets[1]["mu"], planets[0]["mu"])  # a deeper transit is another answer

    doc = planet_doc()
    buf = io.BytesIO()
    np.savez(buf, planet_id=np.int64(7), fgs1_flux=np.array(doc["fgs1"]["flux"], np.float32),
             fgs1_time_h=np.array(doc["fgs1"]["time_h"]), airs_flux=np.array(doc["airs"]["flux"], np.float32),
             airs_time_h=np.array(doc["airs"]["time_h"]))
    r = client.post("/predict", content=buf.getvalue(), headers={"Content-Type": "application/x-npz"})
    assert r.status_code == 200, r.text
    # the npz planet carries no star info, so compare only the shape of the answer
    assert r.json()["planet_id"] == 7 and len(r.json()["mu"]) == N_BINS

    buf = io.BytesIO()
    np.savez(buf, fgs1_flux=np.stack([doc["fgs1"]["flux"]] * 2), airs_flux=np.stack([doc["airs"]["flux"]] * 2))
    r = client.post("/predict", content=buf.getvalue(), headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200 and [p["planet_id"] for p in r.json()["planets"]] == [0, 1]
    np.testing.assert_allclose(r.json()["planets"][0]["mu"], r.json()["planets"][1]["mu"], rtol=1e-6)


def test_explanations(client, reference):
    doc = {**planet_doc(), "explain": {"attention": True, "shap": True}}
    r = client.post("/predict", json=doc)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["attention"] and out["shap"]
    assert "explain" in out["timings"] and "explain;dur=" in r.headers["server-timing"]
    np.testing.assert_allclose(out["mu"], reference["mu"], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d["airs"]["flux"][17].__setitem__(3, float("nan")), "airs.flux[17][3]"),
        (lambda d: d["fgs1"]["flux"].__setitem__(9, None), "fgs1.flux[9]"),
        (lambda d: d["fgs1"]["flux"].__setitem__(2, float("inf")), "fgs1.flux[2]"),
        (lambda d: d["airs"].__setitem__("flux", d["airs"]["flux"][:281]), "airs.flux"),
        (lambda d: d["airs"]["flux"][4].pop(), "airs.flux"),
        (lambda d: d["fgs1"].update(flux=d["fgs1"]["flux"][:10], time_h=d["fgs1"]["time_h"][:10]), "fgs1.flux"),
        (lambda d: d["fgs1"].update(flux=[1.0] * 200_000, time_h=None), "fgs1.flux"),
        (lambda d: d["fgs1"]["time_h"].__setitem__(5, 0.0), "fgs1.time_h[5]"),
        (lambda d: d["airs"]["time_h"].pop(), "airs.time_h"),
        (lambda d: d["airs"]["flux"][2].__setitem__(4, -5.0), "airs.flux[2][4]"),
        (lambda d: d["fgs1"]["flux"].__setitem__(0, 1e12), "fgs1.flux[0]"),
        (lambda d: d["airs"].__setitem__("fluxx", 1), "airs.fluxx"),
        (lambda d: d.pop("fgs1"), "fgs1"),
        (lambda d: d.__setitem__("planet_id", "seven"), "planet_id"),
        (lambda d: d["star"].__setitem__("e", 1.5), "star.e"),
        (lambda d: d["star"].__setitem__("Teff", 5000), "star.Teff"),
        (lambda d: d.__setitem__("explain", {"shap": "yes"}), "explain.shap"),
        (lambda d: d["fgs1"].__setitem__("centroid", [[0.0, 0.0]] * 3), "fgs1.centroid"),
    ],
)
def test_422_names_the_field(client, mutate, field):
    doc = planet_doc()
    mutate(doc)
    # json.dumps writes NaN/Infinity literals as Python clients do; orjson alone would call that malformed
    r = client.post("/predict", content=json.dumps(doc), headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    e = err(r)
    assert e["field"] == field and e["code"] == "invalid_request" and e["request_id"] == r.headers["x-request-id"]


def test_422_in_a_list_names_the_planet(client):
    bad = planet_doc()
    bad["airs"]["flux"][1][1] = float("nan")
    r = client.post("/predict", content=json.dumps({"planets": [planet_doc(), bad]}),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and err(r)["field"] == "planets[1].airs.flux[1][1]"


def test_400_413_415(client):
    for body in (b"{not json", b"", b"[1, 2"):
        r = client.post("/predict", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and err(r)["code"] == "malformed_body", body
    r = client.post("/predict", content=b"PK\x03\x04garbage", headers={"Content-Type": "application/x-npz"})
    assert r.status_code == 400
    r = client.post("/predict", content=b"hello", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and err(r)["field"] == "Content-Type"
    r = client.post("/predict", content=b"[1]", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and err(r)["field"] == "$"

    server = client.app.state.server
    settings = server.settings
    server.settings = settings.with_(max_body_bytes=1000)
    try:
        # declared too large: refused on Content-Length, before the body is read
        r = client.post("/predict", content=json.dumps(planet_doc()), headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and err(r)["code"] == "payload_too_large" and "1000" in err(r)["message"]
        # chunked, no Content-Length: refused while streaming
        sent = []

        def chunks():
            for _ in range(50):
                sent.append(1)
                yield b" " * 100

        r = client.post("/predict", content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "content-length" not in {k.lower() for k in r.request.headers}
    finally:
        server.settings = settings


def test_oip_json_and_errors_in_process(client, reference):
    doc = planet_doc()
    fgs1, airs = np.array([doc["fgs1"]["flux"]]), np.array([doc["airs"]["flux"]])
    body = {"id": "r1", "inputs": [
        {"name": "FGS1", "datatype": "FP32", "shape": list(fgs1.shape), "data": fgs1.ravel().tolist()},
        {"name": "AIRS", "datatype": "FP32", "shape": list(airs.shape), "data": airs.tolist()},
        {"name": "FGS1_TIME", "datatype": "FP32", "shape": [1, T_FGS1], "data": doc["fgs1"]["time_h"]},
        {"name": "AIRS_TIME", "datatype": "FP32", "shape": [1, T_AIRS], "data": doc["airs"]["time_h"]},
        {"name": "PLANET_ID", "datatype": "INT64", "shape": [1], "data": [7]}]}
    r = client.post("/v2/models/spectramind/infer", json=body)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert r.json()["id"] == "r1" and set(out) == {"MU", "SIGMA"} and out["MU"]["shape"] == [1, N_BINS]
    assert "inference-header-content-length" not in r.headers
    assert np.isfinite(out["MU"]["data"]).all() and min(out["SIGMA"]["data"]) > 0

    bad = json.loads(json.dumps(body))
    bad["inputs"][1]["shape"] = [1, 281, T_AIRS]
    r = client.post("/v2/models/spectramind/infer", json=bad)
    assert r.status_code == 422 and r.json()["field"] == "inputs[AIRS].shape" and "282" in r.json()["error"]
    bad = json.loads(json.dumps(body))
    bad["inputs"][0]["data"][3] = -1.0
    r = client.post("/v2/models/spectramind/infer", json=bad)
    assert r.status_code == 422 and r.json()["field"] == "FGS1[0][3]"
    r = client.post("/v2/models/spectramind/infer", content=b"{}x", headers={"Inference-Header-Content-Length": "99"})
    assert r.status_code == 400 and r.json()["code"] == "malformed_body"
    # Triton's timeout parameter (µs) lowers the deadline: 1 µs cannot be met
    r = client.post("/v2/models/spectramind/infer", json={**body, "parameters": {"timeout": 1}})
    assert r.status_code == 504 and r.json()["code"] == "deadline_exceeded"


def test_metrics_endpoint(client, reference):
    text = client.get("/metrics").text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (LATENCY, "spectramind_queue_duration_seconds", "spectramind_compute_duration_seconds"):
        buckets = [s for s in fams[name].samples if s.name.endswith("_bucket")]
        assert float(buckets[0].labels["le"]) == 5e-05 and buckets[-2].labels["le"] == "10.0"
        assert any(s.value > 0 for s in buckets)
    assert any(s.value > 0 for s in fams["spectramind_batch_size"].samples if s.name.endswith("_count"))
    reqs = {(s.labels["route"], s.labels["status"]): s.value for s in fams["spectramind_requests"].samples
            if s.name == "spectramind_requests_total"}
    assert reqs[("/predict", "200")] >= 1 and reqs[("/predict", "422")] >= 1 and reqs[("unmatched", "404")] >= 1
    info = fams["spectramind_model_info"].samples[0].labels
    assert info["name"] == "spectramind" and info["device"] == "cpu" and len(info["sha256"]) == 64
    assert "spectramind_requests_in_flight" in fams and "spectramind_non_finite_outputs" in fams
    assert [s.value for s in fams["spectramind_ready"].samples] == [1.0]
    assert "spectramind_explanation_duration_seconds" in fams


# ---------------------------------------------------------------- in-process: controlled failures


def test_503_while_starting_then_ready():
    gate = threading.Event()
    with stub_client("ok", gate) as c:
        assert c.get("/v2/health/live").status_code == 200  # answers at once, before warm-up
        r = c.get("/v2/health/ready")
        assert r.status_code == 503 and r.json()["code"] == "not_ready"
        r = c.post("/predict", json=planet_doc())
        assert r.status_code == 503 and err(r)["code"] == "not_ready"
        assert c.get("/v2/models/spectramind/ready").status_code == 503
        gate.set()
        wait_ready(c.get, 10)
        assert c.get("/v2/models/spectramind").json()["versions"] == ["stub"]


def test_failed_start_is_reported_by_health():
    with stub_client("fail_start") as c:
        time.sleep(0.2)
        for path in ("/v2/health/live", "/v2/health/ready"):
            r = c.get(path)
            assert r.status_code == 503 and "golden outputs differ" in r.json()["error"]


def test_429_503_draining_500_504_and_non_finite(caplog):
    with stub_client("queue_full") as c:
        wait_ready(c.get, 5)
        r = c.post("/predict", json=planet_doc())
        assert r.status_code == 429 and r.headers["retry-after"] == "2" and err(r)["code"] == "queue_full"
    with stub_client("draining") as c:
        r = c.post("/predict", json=planet_doc())
        assert r.status_code == 503 and err(r)["code"] == "draining"
    with stub_client("boom") as c, caplog.at_level("ERROR", logger="spectramind.serve"):
        wait_ready(c.get, 5)
        r = c.post("/predict", json=planet_doc(), headers={"X-Request-ID": "req-500"})
        assert r.status_code == 500 and err(r) == {"status": 500, "code": "internal", "field": None,
                                                   "request_id": "req-500",
                                                   "message": "internal server error (request id req-500)"}
        assert any("req-500" in rec.getMessage() and rec.exc_info for rec in caplog.records)
    with stub_client("nan") as c:
        wait_ready(c.get, 5)
        r = c.post("/predict", json=planet_doc())
        assert r.status_code == 500 and err(r)["code"] == "model_fault" and "1 non-finite" in err(r)["message"]
        text = c.get("/metrics").text
        assert 'spectramind_non_finite_outputs_total{output="mu"} 1.0' in text
    with stub_client("never", deadline_s=0.05) as c:
        wait_ready(c.get, 5)
        t = time.perf_counter()
        r = c.post("/predict", json=planet_doc())
        assert r.status_code == 504 and err(r)["code"] == "deadline_exceeded" and time.perf_counter() - t < 5


# ---------------------------------------------------------------- live uvicorn on 127.0.0.1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_uvicorn(artifact: Path, log_path: Path, **env) -> tuple[subprocess.Popen, str]:
    port = free_port()
    full = {**os.environ, "OMP_NUM_THREADS": "1", "SPECTRAMIND_ARTIFACT": str(artifact), "SPECTRAMIND_DEVICE": "cpu",
            "SPECTRAMIND_THREADS": "1", "SPECTRAMIND_DRAIN_TIMEOUT_S": "10", "SPECTRAMIND_SHAP_SAMPLES": "1", **env}
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "serve.app:app", "--host", "127.0.0.1", "--port",
                             str(port), "--timeout-graceful-shutdown", "15"], cwd=REPO, env=full, stdout=log,
                            stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


@pytest.fixture(scope="module")
def live(serve_artifact, tmp_path_factory):
    """A live server on the test artifact; beside it, started at the same time so that their
    imports overlap, one on a tampered copy (``test_tampered_artifact_refuses_to_start``)."""
    tmp = tmp_path_factory.mktemp("uvicorn")
    bad_proc, _ = start_uvicorn(tamper(serve_artifact, tmp / "tampered"), tmp / "tampered.log")
    proc, url = start_uvicorn(serve_artifact, tmp / "server.log")
    end = time.monotonic() + 90
    try:
        while True:
            assert proc.poll() is None, (tmp / "server.log").read_text()[-3000:]
            assert time.monotonic() < end, "server not ready: " + (tmp / "server.log").read_text()[-3000:]
            try:
                if httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass  # not listening yet: poll again
            time.sleep(0.1)
        yield SimpleNamespace(proc=proc, url=url, log=tmp / "server.log", tampered=bad_proc,
                              tampered_log=tmp / "tampered.log")
    finally:
        stop(proc)
        stop(bad_proc)


def test_tritonclient_against_live_server(live, reference):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    url = live.url
    client = httpclient.InferenceServerClient(url=url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("spectramind")
    meta = client.get_model_metadata("spectramind")
    assert meta["name"] == "spectramind" and {o["name"] for o in meta["outputs"]} >= {"MU", "SIGMA"}

    docs = [planet_doc(7, 0), planet_doc(8, 1)]
    fgs1 = np.array([d["fgs1"]["flux"] for d in docs], np.float32)
    airs = np.array([d["airs"]["flux"] for d in docs], np.float32)
    times = [np.array([d[k]["time_h"] for d in docs], np.float32) for k in ("fgs1", "airs")]
    inputs = []
    for name, arr in (("FGS1", fgs1), ("AIRS", airs), ("FGS1_TIME", times[0]), ("AIRS_TIME", times[1])):
        inp = httpclient.InferInput(name, list(arr.shape), "FP32")
        inp.set_data_from_numpy(arr, binary_data=True)
        inputs.append(inp)
    outputs = [httpclient.InferRequestedOutput("MU", binary_data=True),
               httpclient.InferRequestedOutput("SIGMA", binary_data=False)]
    res = client.infer("spectramind", inputs=inputs, outputs=outputs)
    mu, sigma = res.as_numpy("MU"), res.as_numpy("SIGMA")
    assert mu.dtype == np.float32 and mu.shape == sigma.shape == (2, N_BINS)
    assert np.isfinite(mu).all() and (sigma > 0).all()
    # the same light curves through /predict (without star info, as the tensors carry none)
    plain = {k: v for k, v in docs[0].items() if k != "star"}
    ref = httpx.post(url + "/predict", json=plain, timeout=30).json()
    np.testing.assert_allclose(mu[0], ref["mu"], rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(sigma[0], ref["sigma"], rtol=1e-5, atol=1e-10)

    # no outputs named: everything binary; attention asked through a request parameter
    res = client.infer("spectramind", inputs=inputs, parameters={"attention": True})
    attention = res.as_numpy("ATTENTION")
    assert attention.shape == (2,) and json.loads(attention[0]) and res.as_numpy("SHAP") is None
    np.testing.assert_allclose(res.as_numpy("MU"), mu, rtol=1e-5, atol=1e-8)

    bad = httpclient.InferInput("AIRS", [2, N_AIRS, T_AIRS], "FP32")
    bad.set_data_from_numpy(np.where(np.arange(T_AIRS) == 3, np.nan, airs).astype(np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("spectramind", inputs=[inputs[0], bad])
    assert info.value.status() == "422" and "AIRS[0][0][3]" in str(info.value)


def test_concurrent_clients_match_sequential(live):
    url = live.url
    docs = [planet_doc(100 + i, seed=i % 4) for i in range(16)]
    with httpx.Client(timeout=60) as c:
        sequential = {i: c.post(url + "/predict", json=docs[i]).json() for i in range(4)}

    def one(i: int) -> tuple[int, dict]:
        with httpx.Client(timeout=60) as c:
            r = c.post(url + "/predict", json=docs[i])
            assert r.status_code == 200, r.text
            return i, r.json()

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(len(docs))))
    for i, out in results:
        assert out["planet_id"] == 100 + i
        np.testing.assert_allclose(out["mu"], sequential[i % 4]["mu"], rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(out["sigma"], sequential[i % 4]["sigma"], rtol=1e-5, atol=1e-12)
    text = httpx.get(url + "/metrics").text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    # Every one of the 20 planets went through a batch (batched together or not): the batch-size
    # histogram's sum counts planets, its count counts batches.
    planets = sum(s.value for s in fams["spectramind_batch_size"].samples if s.name.endswith("_sum"))
    batches = sum(s.value for s in fams["spectramind_batch_size"].samples if s.name.endswith("_count"))
    assert planets >= 20 and 1 <= batches <= planets
    gauge = [s.value for s in fams["spectramind_requests_in_flight"].samples]
    assert gauge == [1.0]  # only the /metrics request itself


def _prometheus() -> str | None:
    """The prometheus binary, installing the Debian package when it is missing and we may."""
    found = shutil.which("prometheus")
    if found or not shutil.which("apt-get") or os.geteuid() != 0:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "install", "-y", "-qq", "prometheus"], ["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "prometheus"]):
        # Bounded: the suite's per-test timeout (300 s) must not be spent waiting on a mirror.
        try:
            subprocess.run(cmd, env=env, capture_output=True, timeout=80)
        except subprocess.TimeoutExpired:
            break
        if shutil.which("prometheus"):
            break
    return shutil.which("prometheus")


def test_prometheus_scrapes_and_answers_a_quantile(live, tmp_path):
    binary = _prometheus()
    if binary is None:
        pytest.skip("the Debian package prometheus is not installed and could not be installed (apt-get as root)")
    url = live.url
    port = free_port()
    target = url.removeprefix("http://")
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n  - job_name: spectramind\n    metrics_path: /metrics\n"
        f"    static_configs:\n      - targets: ['{target}']\n")
    prom = subprocess.Popen([binary, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb"))
    stop_traffic = threading.Event()

    def traffic() -> None:
        with httpx.Client(timeout=10) as c:
            while not stop_traffic.is_set():
                c.get(url + "/v2/health/ready")
                time.sleep(0.01)

    feeder = threading.Thread(target=traffic, daemon=True)
    feeder.start()
    query = f"histogram_quantile(0.5, sum(rate({LATENCY}_bucket[30s])) by (le))"
    value = None
    try:
        end = time.monotonic() + 45
        while time.monotonic() < end and value is None:
            time.sleep(0.5)
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": query}, timeout=5)
            except httpx.TransportError:
                continue
            result = r.json().get("data", {}).get("result", [])
            if result and math.isfinite(float(result[0]["value"][1])):
                value = float(result[0]["value"][1])
    finally:
        stop_traffic.set()
        feeder.join(5)
        prom.terminate()
        prom.wait(10)
    assert value is not None, (tmp_path / "prometheus.log").read_text()[-2000:]
    assert 0 < value < 1.0  # the median latency of health checks: well under a second


def test_graceful_shutdown_drains_in_flight_requests(live):
    """Last user of the live server: SIGTERM while a request is in flight; it still gets its answer."""
    proc, url, log_path = live.proc, live.url, live.log
    docs = {"planets": [planet_doc(i, i % 3) for i in range(6)]}  # 6 baseline fits: in flight for a while
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.post, url + "/predict", json=docs, timeout=60)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        r = pending.result()
    assert r.status_code == 200 and len(r.json()["planets"]) == 6
    # uvicorn re-raises the captured SIGTERM after its graceful shutdown: killed by it, or 0
    assert proc.wait(30) in (0, -signal.SIGTERM)
    log = log_path.read_text()
    assert "draining" in log and "stopped" in log and log.index("draining") < log.rindex("stopped")
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "/v2/health/live", timeout=2)


def tamper(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    with open(dst / "model.torchscript.pt", "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    return dst


def test_tampered_artifact_fails_the_lifespan(serve_artifact, tmp_path, caplog):
    app = create_app(settings_for(tamper(serve_artifact, tmp_path / "t")), exit_on_failure=False)
    with caplog.at_level("CRITICAL", logger="spectramind.serve"), pytest.raises(RuntimeError, match="refusing"):
        with TestClient(app):
            pass  # entering runs the lifespan, which must refuse the artifact
    assert any("model.torchscript.pt" in r.getMessage() for r in caplog.records if r.levelname == "CRITICAL")


def test_tampered_artifact_refuses_to_start(live):
    """``uvicorn serve.app:app`` on a tampered artifact: one clear line, a non-zero exit."""
    code = live.tampered.wait(90)
    log = live.tampered_log.read_text()
    assert code != 0, log[-2000:]
    line = next(ln for ln in log.splitlines() if "refusing to start" in ln)
    assert "CRITICAL" in line and "model.torchscript.pt" in line
