"""serve.service without HTTP: start-up checks, predictions equal to `spectramind predict`, batching,
limits (queue, deadline), lifecycle (not ready, drain), explanations on their own queue, validation.

One tiny artifact per session (model=small, fgs1_steps=16, torchscript + onnx, buckets 1 and 3) and
two simulated planets at light-curve level, read back with LightCurves.load, so the features are
the real ones (the physics baseline runs per request, ~0.4 s a planet).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from export.cli import export_artifact
from serve.batcher import ClosedError, DeadlineError, DynamicBatcher, QueueFullError
from serve.features import InvalidField, p2p_scatter, to_lightcurves
from serve.runtime import WarmupError
from serve.service import (
    DeadlineExceeded,
    Draining,
    ExplainTimeout,
    NotReady,
    PlanetRequest,
    PlanetResult,
    QueueFull,
    RequestInvalid,
    Service,
)
from serve.settings import Settings
from spectramind.bins import N_BINS, wavelengths
from spectramind.data.adc import read_star_info
from spectramind.data.features import FEATURES_VERSION, FeatureOptions
from spectramind.data.lightcurves import LightCurves, list_lightcurves
from spectramind.data.simulate import SimulateOptions, simulate_dataset
from spectramind.model.calibration import COREL, Calibrator, TemperatureScaling, graph_for
from spectramind.model.v50 import SpectraMindV50, model_config_from
from train.predict import predict_checkpoint

STEPS = 16
BUCKETS = (1, 3)
TIMEOUT = 60  # seconds any future may take in these tests before the test fails


# ---------------------------------------------------------------- session fixtures


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> Path:
    """A small model with a non-trivial temperature + COREL calibration (as tests/test_export.py)."""
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
    features = json.loads(json.dumps(asdict(FeatureOptions(fgs1_steps=STEPS)), default=str))
    meta = {"features_version": FEATURES_VERSION, "features": features, "git_sha": "0" * 40}
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    model.save_checkpoint(path, calibration=Calibrator(temperature, corel, {}).state(), meta=meta)
    return path


@pytest.fixture(scope="session")
def artifact(ckpt, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("artifacts") / "tiny"
    export_artifact(ckpt, out, formats=("torchscript",), buckets=BUCKETS)
    return out


def toy_onnx_artifact(artifact: Path, out: Path, golden_sigma_offset: float = 0.0) -> Path:
    """The tiny artifact with a hand-made ONNX model in place of the network (exporting the real one
    takes ~30 s; tests/test_export.py proves its parity): mu = airs_nodes @ w + mean(fgs1),
    sigma = |mu| + 1e-3. Golden outputs from numpy, optionally wrong by ``golden_sigma_offset``."""
    import onnx
    from onnx import TensorProto, helper

    from spectramind.artifact import read_golden, write_golden, write_manifest

    w = np.linspace(-1.0, 1.0, 8, dtype=np.float32)[:, None]
    nodes = [
        helper.make_node("MatMul", ["airs_nodes", "w"], ["proj"]),
        helper.make_node("ReduceMean", ["fgs1", "axes"], ["level"], keepdims=1),
        helper.make_node("Add", ["proj", "level"], ["mu3"]),
        helper.make_node("Squeeze", ["mu3", "last"], ["mu"]),
        helper.make_node("Abs", ["mu"], ["mag"]),
        helper.make_node("Add", ["mag", "floor"], ["sigma"]),
    ]
    graph = helper.make_graph(
        nodes, "toy",
        [helper.make_tensor_value_info("fgs1", TensorProto.FLOAT, ["batch", STEPS, 6]),
         helper.make_tensor_value_info("airs_nodes", TensorProto.FLOAT, ["batch", N_BINS, 8])],
        [helper.make_tensor_value_info("mu", TensorProto.FLOAT, ["batch", N_BINS]),
         helper.make_tensor_value_info("sigma", TensorProto.FLOAT, ["batch", N_BINS])],
        [helper.make_tensor("w", TensorProto.FLOAT, [8, 1], w.ravel().tolist()),
         helper.make_tensor("axes", TensorProto.INT64, [2], [1, 2]),
         helper.make_tensor("last", TensorProto.INT64, [1], [2]),
         helper.make_tensor("floor", TensorProto.FLOAT, [], [1e-3])],
    )
    shutil.copytree(artifact, out)
    (out / "model.torchscript.pt").unlink()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), out / "model.onnx")
    g = read_golden(out)
    mu = (g["airs_nodes"] @ w)[..., 0] + g["fgs1"].mean(axis=(1, 2))[:, None]
    write_golden(out, g["planet_ids"], g["fgs1"], g["airs_nodes"], mu, np.abs(mu) + 1e-3 + golden_sigma_offset)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["formats"] = {"onnx": {"file": "model.onnx", "opset": 18},
                           "checkpoint": manifest["formats"]["checkpoint"]}
    write_manifest(out, manifest)
    return out


@pytest.fixture(scope="session")
def lcdir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "lc"
    simulate_dataset(out, SimulateOptions(n_planets=2, seed=3, level="lightcurves"), workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def planets(lcdir) -> list[tuple[LightCurves, dict]]:
    stars = read_star_info(lcdir, "train")
    out = []
    for pid, paths in list_lightcurves(lcdir, "train").items():
        out.append((LightCurves.load(paths[0]), stars.loc[pid].to_dict()))
    return out


def request_of(lc: LightCurves, star: dict | None, **changes) -> PlanetRequest:
    """A request carrying everything the light-curve file holds (as float64, as JSON would)."""
    req = PlanetRequest(
        planet_id=lc.planet_id,
        fgs1_flux=lc.fgs1[:, 0].astype(np.float64),
        fgs1_time_h=lc.fgs1_time_h.astype(np.float64),
        fgs1_centroid=lc.fgs1[:, 2:4].astype(np.float64),
        fgs1_jitter=lc.fgs1[:, 4:6].astype(np.float64),
        airs_flux=lc.airs_flux.astype(np.float64),
        airs_time_h=lc.airs_time_h.astype(np.float64),
        star=star,
        fgs1_err=lc.fgs1_err.astype(np.float64),
        airs_err=lc.airs_err.astype(np.float64),
        airs_trace=lc.airs_trace.astype(np.float64),
    )
    return replace(req, **changes)


def settings_for(artifact: Path, **kw) -> Settings:
    base = dict(artifact=artifact, threads=1, feature_workers=2, max_batch=8, max_queue_delay_us=20_000,
                max_queue=16, deadline_s=30.0, shap_timeout_s=30.0, shap_samples=1, explain_top_k=5)
    return Settings(**{**base, **kw})


@pytest.fixture(scope="session")
def service(artifact):
    svc = Service(settings_for(artifact))
    batches: list[int] = []
    svc.on_batch = lambda size, queue_s, compute_s: batches.append(size)
    svc.batches = batches  # type: ignore[attr-defined]
    svc.start()
    yield svc
    svc.stop(5.0)


@pytest.fixture(scope="session")
def golden_rows(artifact) -> tuple[np.ndarray, np.ndarray]:
    from spectramind.artifact import read_golden

    g = read_golden(artifact)
    return g["fgs1"], g["airs_nodes"]


def gate(svc: Service) -> threading.Event:
    """Hold the service's worker thread (the device owner) until the event is set."""
    return hold_worker(svc._batcher)


def hold_worker(batcher: DynamicBatcher) -> threading.Event:
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        entered.set()
        release.wait(TIMEOUT)

    batcher.call(hold)
    assert entered.wait(TIMEOUT), "the worker never ran the call"
    return release


# ---------------------------------------------------------------- start-up and predictions


def test_start_up_verified_and_warmed_at_every_bucket(service, artifact):
    assert service.ready and not service.draining
    info = service.info()
    assert info["runtime"] == "torchscript" and info["device"] == "cpu"
    assert [r["batch"] for r in info["warmup"]] == sorted(set(BUCKETS) | {8})
    assert all(r["mu_max_rel"] <= 1e-4 and r["sigma_max_rel"] <= 1e-4 for r in info["warmup"])
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert info["model"]["sha256"] == manifest["manifest_sha256"]
    assert info["fgs1_steps"] == STEPS and info["explanations"]["shap"]


def test_predict_equals_spectramind_predict(service, planets, lcdir, ckpt, tmp_path):
    reqs = [request_of(lc, star) for lc, star in planets]
    futures = service.predict(reqs)
    results = [f.result(TIMEOUT) for f in futures]
    # The `spectramind predict` path: CalibratedV50 on the same light-curve files, mu clipped at 0.
    out = tmp_path / "sub.csv"
    predict_checkpoint(ckpt, lcdir, out, splits=("train",), workers=1, progress=False)
    sub = pd.read_csv(out).set_index("planet_id")
    for (lc, _), res in zip(planets, results):
        assert isinstance(res, PlanetResult) and res.planet_id == lc.planet_id
        assert res.mu.shape == res.sigma.shape == (N_BINS,)
        assert np.isfinite(res.mu).all() and np.isfinite(res.sigma).all() and (res.sigma > 0).all()
        row = sub.loc[lc.planet_id].to_numpy()
        np.testing.assert_allclose(res.mu, row[:N_BINS], rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(res.sigma, row[N_BINS:], rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(res.wavelength_um, wavelengths())
        assert set(res.timings) == {"features_wait", "features", "queue", "compute", "total"}
        assert 0 <= res.timings["features_wait"] <= res.timings["total"]
        assert res.timings["total"] >= res.timings["features"] > 0
        assert res.model["sha256"] == service.info()["model"]["sha256"]
        assert res.calibration["method"] == "temperature+COREL"
        d = res.to_dict()
        assert json.loads(json.dumps(d))["mu"] == pytest.approx(res.mu.tolist())
        assert "attention" not in d and "shap" not in d


def test_optional_fields_get_defaults(service, planets):
    lc, _ = planets[0]
    bare = PlanetRequest(planet_id=7, fgs1_flux=lc.fgs1[:, 0], fgs1_time_h=None, fgs1_centroid=None,
                         fgs1_jitter=None, airs_flux=lc.airs_flux, airs_time_h=None)
    built = to_lightcurves(bare)
    assert built.fgs1_time_h[0] == 0 and built.fgs1_time_h[-1] == pytest.approx(7.5)
    assert built.airs_time_h[-1] == pytest.approx(7.5)
    assert not built.fgs1[:, 2:].any() and not built.airs_trace.any()
    # The point-to-point scatter is the white noise: the simulator's own errors are of that size.
    assert np.allclose(built.fgs1_err, p2p_scatter(lc.fgs1[:, 0]))
    ratio = np.median(built.airs_err[:, 0] / lc.airs_err.mean(axis=1))
    assert 0.5 < ratio < 2.0
    res = service.predict([bare])[0].result(TIMEOUT)
    assert res.planet_id == 7 and np.isfinite(res.mu).all() and (res.sigma > 0).all()


def test_batched_outputs_equal_unbatched(service, golden_rows):
    fgs1, nodes = golden_rows
    rng = np.random.default_rng(0)
    f = (fgs1[np.arange(8) % len(fgs1)] + 0.1 * rng.standard_normal((8, STEPS, 6))).astype(np.float32)
    n = (nodes[np.arange(8) % len(nodes)] + 0.1 * rng.standard_normal((8, N_BINS, 8))).astype(np.float32)
    one_at_a_time = [service.infer_tensors(f[i : i + 1], n[i : i + 1]).result(TIMEOUT) for i in range(8)]
    service.batches.clear()
    hold = gate(service)  # the 8 concurrent requests queue up while the worker is held
    with ThreadPoolExecutor(8) as pool:
        futures = list(pool.map(lambda i: service.infer_tensors(f[i : i + 1], n[i : i + 1]), range(8)))
    hold.set()
    batched = [fut.result(TIMEOUT) for fut in futures]
    assert max(service.batches) == 8, service.batches
    # Equal to fp32 rounding (BLAS picks its kernels by batch size: ~1e-5 relative, not bit-exact);
    # a row mix-up would be off by orders of magnitude more, as neighbours show.
    assert not np.allclose(one_at_a_time[0][1], one_at_a_time[1][1], rtol=1e-3)
    for (mu1, s1), (mub, sb) in zip(one_at_a_time, batched):
        np.testing.assert_allclose(mub, mu1, rtol=2e-5, atol=1e-9)
        np.testing.assert_allclose(sb, s1, rtol=2e-5, atol=1e-9)
    # and one request of 8 rows is 8 batch items with the same answers
    mu8, s8 = service.infer_tensors(f, n).result(TIMEOUT)
    np.testing.assert_allclose(mu8, np.concatenate([m for m, _ in one_at_a_time]), rtol=2e-5, atol=1e-9)
    np.testing.assert_allclose(s8, np.concatenate([s for _, s in one_at_a_time]), rtol=2e-5, atol=1e-9)


def test_onnx_runtime_and_the_golden_check(artifact, golden_rows, tmp_path):
    art = toy_onnx_artifact(artifact, tmp_path / "onnx")
    with pytest.raises(ValueError, match="SPECTRAMIND_RUNTIME=torchscript: artifact .* has no torchscript model"):
        Service(settings_for(art)).start()
    svc = Service(settings_for(art, runtime="onnx")).start()
    try:
        info = svc.info()
        assert info["runtime"] == "onnx" and info["providers"] == ["CPUExecutionProvider"]
        mu, sigma = svc.infer_tensors(*golden_rows).result(TIMEOUT)
        np.testing.assert_allclose(mu, svc.artifact.golden["mu"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(sigma, svc.artifact.golden["sigma"], rtol=1e-5, atol=1e-6)
    finally:
        svc.stop(1.0)
    # an artifact whose model does not reproduce its golden outputs never becomes ready
    off = toy_onnx_artifact(artifact, tmp_path / "off", golden_sigma_offset=1e-3)
    svc = Service(settings_for(off, runtime="onnx"))
    with pytest.raises(WarmupError, match="warm-up at batch 1 on cpu: sigma differs from the artifact's golden"):
        svc.start()
    assert not svc.ready


# ---------------------------------------------------------------- limits


def test_queue_full_is_refused_with_retry_after(service, golden_rows):
    fgs1, nodes = golden_rows
    hold = gate(service)
    try:
        limit = service.settings.max_queue
        admitted = service.infer_tensors(np.repeat(fgs1[:1], limit, 0), np.repeat(nodes[:1], limit, 0))
        with pytest.raises(QueueFull) as err:
            service.infer_tensors(fgs1[:1], nodes[:1])
        assert err.value.status == 429 and int(err.value.headers["Retry-After"]) >= 1
        with pytest.raises(QueueFull):
            service.predict([PlanetRequest(1, np.ones(64), None, None, None, np.ones((282, 32)), None)])
    finally:
        hold.set()
    assert admitted.result(TIMEOUT)[0].shape == (limit, N_BINS)


def test_request_larger_than_the_queue_is_invalid(service, golden_rows):
    fgs1, nodes = golden_rows
    n = service.settings.max_queue + 1
    with pytest.raises(RequestInvalid) as err:
        service.infer_tensors(np.repeat(fgs1[:1], n, 0), np.repeat(nodes[:1], n, 0))
    assert err.value.status == 422 and err.value.field == "fgs1"


def test_deadline_and_cancel_drop_the_request(service, golden_rows, planets):
    fgs1, nodes = golden_rows
    service.batches.clear()
    hold = gate(service)
    t0 = time.monotonic()
    late = service.infer_tensors(fgs1[:1], nodes[:1], deadline_s=0.1)
    gone = service.infer_tensors(fgs1[:1], nodes[:1])
    assert gone.cancel(), "a client that went away cancels its answer"
    with pytest.raises(DeadlineExceeded) as err:
        late.result(TIMEOUT)
    assert time.monotonic() - t0 < 1.0, "the 504 must come at the deadline, not when the worker frees up"
    assert err.value.status == 504
    hold.set()
    assert service.infer_tensors(fgs1[:1], nodes[:1]).result(TIMEOUT)[0].shape == (1, N_BINS)
    assert service.batches == [1], "the expired or cancelled request was computed anyway"
    # the deadline covers the feature stage too (~0.4 s of baseline fit here)
    lc, star = planets[0]
    with pytest.raises(DeadlineExceeded):
        service.predict([request_of(lc, star)], deadline_s=0.05)[0].result(TIMEOUT)


def test_batcher_bounds_deadlines_and_batches():
    rows_computed = []

    def run(f, n):
        rows_computed.append(len(f))
        return f[:, 0, 0][:, None] * np.ones((1, N_BINS)), np.ones((len(f), N_BINS))

    b = DynamicBatcher(run, max_batch_size=4, max_queue_delay_us=50_000, max_queue=3)
    b.start()
    event = hold_worker(b)
    x = np.zeros((STEPS, 6), np.float32)
    nodes = np.zeros((N_BINS, 8), np.float32)
    expired = b.submit(x, nodes, deadline=time.monotonic() + 0.01)
    ok = [b.submit(x + i, nodes) for i in (1, 2)]
    with pytest.raises(QueueFullError):
        b.submit(x, nodes)
    time.sleep(0.05)
    event.set()
    with pytest.raises(DeadlineError):
        expired.result(TIMEOUT)
    assert [fut.result(TIMEOUT)[0][0] for fut in ok] == [1.0, 2.0]
    assert rows_computed == [2] and ok[0].result()[2].batch_size == 2
    assert b.close(5.0)
    with pytest.raises(ClosedError):
        b.submit(x, nodes)


# ---------------------------------------------------------------- lifecycle


def test_tampered_artifact_is_refused_naming_the_file(artifact, tmp_path):
    bad = tmp_path / "tampered"
    shutil.copytree(artifact, bad)
    data = bytearray((bad / "model.torchscript.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "model.torchscript.pt").write_bytes(bytes(data))
    svc = Service(settings_for(bad))
    with pytest.raises(ValueError, match="model.torchscript.pt does not match its sha256"):
        svc.start()
    assert not svc.ready and "model.torchscript.pt" in svc.error
    with pytest.raises(NotReady, match="model.torchscript.pt") as err:
        svc.predict([PlanetRequest(1, np.ones(64), None, None, None, np.ones((282, 32)), None)])
    assert err.value.status == 503


def test_not_ready_before_start(artifact, golden_rows):
    svc = Service(settings_for(artifact))
    with pytest.raises(NotReady):
        svc.infer_tensors(*golden_rows)
    with pytest.raises(NotReady):
        svc.predict([PlanetRequest(1, np.ones(64), None, None, None, np.ones((282, 32)), None)])
    assert not svc.ready and svc.info()["ready"] is False


def test_drain_finishes_in_flight_then_refuses(artifact, planets):
    svc = Service(settings_for(artifact)).start()
    futures = svc.predict([request_of(lc, star) for lc, star in planets])
    stopper = ThreadPoolExecutor(1)
    drained = stopper.submit(svc.stop, 30.0)
    deadline = time.monotonic() + 5.0
    while not svc.draining and time.monotonic() < deadline:
        time.sleep(0.005)
    assert svc.draining and not svc.ready
    with pytest.raises(Draining) as err:
        svc.predict([request_of(*planets[0])])
    assert err.value.status == 503
    assert all(np.isfinite(f.result(TIMEOUT).mu).all() for f in futures)
    assert drained.result(TIMEOUT) is True
    stopper.shutdown()


# ---------------------------------------------------------------- explanations


def test_attention_and_shap_payloads(service, planets):
    lc, star = planets[0]
    res = service.predict([request_of(lc, star, explain_attention=True, explain_shap=True)])[0].result(TIMEOUT)
    plain = service.predict([request_of(lc, star)])[0].result(TIMEOUT)
    np.testing.assert_allclose(res.mu, plain.mu, rtol=1e-6)
    model_cfg = service.artifact.manifest["model_config"]["model"]
    assert res.attention and len({(a["layer"], a["head"]) for a in res.attention}) == len(res.attention)
    assert all(len(a["edges"]) == 5 and 0 <= a["edges"][0]["weight"] <= 1 for a in res.attention), model_cfg
    assert len(res.shap) == 5 and all(g["kind"] == "bin" for g in res.shap)
    values = [abs(g["value"]) for g in res.shap]
    assert values == sorted(values, reverse=True)
    assert "explain" in res.timings
    d = res.to_dict()
    assert d["attention"] == res.attention and d["shap"] == res.shap


def test_shap_times_out_while_predictions_keep_flowing(artifact, golden_rows, planets):
    svc = Service(settings_for(artifact, shap_timeout_s=1.0, shap_samples=500)).start()
    try:
        lc, star = planets[0]
        slow = svc.predict([request_of(lc, star, explain_shap=True)])[0]
        done_while_shap_ran = 0
        while not slow.done():
            mu, _ = svc.infer_tensors(*golden_rows).result(5.0)
            assert np.isfinite(mu).all()
            done_while_shap_ran += 1
        with pytest.raises(ExplainTimeout) as err:
            slow.result()
        assert err.value.status == 504 and "prediction itself succeeded" in err.value.message
        assert done_while_shap_ran >= 2
        # the SHAP thread stopped at its deadline and the queue is free for the next one
        fast = svc.predict([request_of(lc, star, explain_attention=True)])[0].result(TIMEOUT)
        assert fast.attention
    finally:
        svc.stop(5.0)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (lambda r: r.fgs1_flux.__setitem__(17, np.nan), "fgs1.flux[17]", "not finite"),
        (lambda r: setattr(r, "airs_flux", r.airs_flux[:281]), "airs.flux", "airs.flux: must have 282 rows, got 281"),
        (lambda r: r.fgs1_time_h.__setitem__(5, r.fgs1_time_h[4]), "fgs1.time", "not increasing at index 5"),
        (lambda r: r.airs_flux.__setitem__((3, 10), -5.0), "airs.flux[3][10]", "negative flux"),
        (lambda r: r.fgs1_flux.__setitem__(2, 3e12), "fgs1.flux[2]", "absurd flux"),
        (lambda r: r.airs_flux.__setitem__(40, 0.0), "airs.flux[40]", "all zero"),
        (lambda r: setattr(r, "fgs1_flux", r.fgs1_flux[:10]), "fgs1.flux", "too short"),
        (lambda r: setattr(r, "airs_flux", np.ones((282, 20_000))), "airs.flux", "too long"),
        (lambda r: setattr(r, "fgs1_centroid", r.fgs1_centroid[:, :1]), "fgs1.centroid", "must have shape"),
        (lambda r: r.airs_time_h.__setitem__(0, np.inf), "airs.time[0]", "not finite"),
        (lambda r: setattr(r, "star", {"Rs": 1.0, "mass": 2.0}), "star.mass", "unknown key"),
    ],
)
def test_validation_names_the_field(service, planets, change, field, message):
    lc, star = planets[0]
    req = request_of(lc, dict(star))
    change(req)
    fut = service.predict([req])[0]
    with pytest.raises(RequestInvalid) as err:
        fut.result(TIMEOUT)
    assert err.value.status == 422 and err.value.field == field
    assert message in err.value.message and err.value.message.startswith(field)


def test_validation_path_of_a_planet_in_a_list(service, planets):
    lc, star = planets[0]
    good, bad = request_of(lc, star), request_of(lc, star)
    bad.fgs1_flux[17] = np.nan
    futures = service.predict([good, bad])
    with pytest.raises(RequestInvalid) as err:
        futures[1].result(TIMEOUT)
    assert err.value.field == "planets[1].fgs1.flux[17]"
    assert np.isfinite(futures[0].result(TIMEOUT).mu).all()


def test_tensor_validation(service, golden_rows):
    fgs1, nodes = golden_rows
    bad = fgs1.copy()
    bad[0, 3, 2] = np.nan
    with pytest.raises(RequestInvalid) as err:
        service.infer_tensors(bad, nodes, fields=("FGS1", "AIRS"))
    assert err.value.field == "FGS1[0][3][2]"
    with pytest.raises(RequestInvalid, match=r"FGS1: must have shape \[B, 16, 6\]"):
        service.infer_tensors(fgs1[:, :8], nodes, fields=("FGS1", "AIRS"))


def test_settings_from_env_name_the_variable(tmp_path):
    s = Settings.from_env({"SPECTRAMIND_ARTIFACT": str(tmp_path), "SPECTRAMIND_MAX_BATCH": "4",
                           "SPECTRAMIND_BATCHING": "off", "SPECTRAMIND_DEVICE": "CPU"})
    assert s.artifact == tmp_path and s.max_batch == 4 and s.batching is False and s.device == "cpu"
    assert Settings.from_env({}).artifact == Path("outputs/artifacts/default")
    with pytest.raises(ValueError, match="SPECTRAMIND_MAX_QUEUE_DELAY_US"):
        Settings.from_env({"SPECTRAMIND_MAX_QUEUE_DELAY_US": "soon"})
    with pytest.raises(ValueError, match="SPECTRAMIND_RUNTIME"):
        Settings.from_env({"SPECTRAMIND_RUNTIME": "tensorrt"})
    with pytest.raises(ValueError, match="SPECTRAMIND_MAX_BATCH"):
        Settings.from_env({"SPECTRAMIND_MAX_BATCH": "0"})
    with pytest.raises(InvalidField):
        to_lightcurves(PlanetRequest(1, None, None, None, None, np.ones((282, 32)), None))
