"""The inference service: requests in, calibrated spectra out; no HTTP here (LitServe/vLLM style).

The HTTP layer (``serve.app``) is thin: it parses a body into :class:`PlanetRequest` objects,
calls :meth:`Service.predict` (or :meth:`Service.infer_tensors` for the Open Inference Protocol)
and awaits the returned futures; a :class:`ServiceError` becomes the one JSON error shape with
its ``status``, ``code``, ``message``, ``field`` and ``headers``.

Path of a request::

    PlanetRequest --(feature pool: serve.features, ~0.3 s of baseline fit)--> ModelInputs
      --(serve.batcher.DynamicBatcher: one worker thread owns the device)--> mu, sigma
      --(explanation queue, low priority, own timeout; only when asked)--> attention, SHAP
      --> PlanetResult

Lifecycle: ``Service(settings)`` -> :meth:`start` (settings -> verify every hash of the artifact
-> load the runtime on the chosen device -> warm up every batch bucket and compare the golden
outputs -> ``ready``) -> :meth:`stop` (``draining``: new work gets :class:`Draining`, in-flight
work finishes within the drain timeout, threads stop). Before ``ready``, work gets
:class:`NotReady`.

Timings (seconds, per request): ``features_wait`` (admission to a free feature worker: under load
the pool is the bottleneck, and without this part the wait would pass for server overhead),
``features`` (light curves -> model inputs), ``queue`` (enqueue
to the start of its batch), ``compute`` (the batch's forward), ``explain`` (when asked) and
``total`` (predict call to result).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serve.batcher import (
    ClosedError,
    DeadlineError,
    DeadlineWatch,
    DynamicBatcher,
    QueueFullError,
    TaskQueue,
    TaskTimeoutError,
    set_exception,
    set_result,
)
from serve.explain import Explainer, NoAttention
from serve.features import InvalidField, request_inputs
from serve.runtime import Artifact, Runtime, choose_device, load_runtime, open_artifact, warm_up
from serve.settings import Settings
from spectramind.bins import N_BINS

__all__ = [
    "DeadlineExceeded",
    "Draining",
    "ExplainTimeout",
    "NotReady",
    "PlanetRequest",
    "PlanetResult",
    "QueueFull",
    "RequestInvalid",
    "Service",
    "ServiceError",
]

log = logging.getLogger("spectramind.serve")


# ---------------------------------------------------------------- errors


class ServiceError(Exception):
    """A failure the client should see: HTTP ``status``, a stable ``code``, a ``message``, the
    culprit ``field`` path (or None) and extra response ``headers`` (e.g. Retry-After)."""

    status: int = 500
    code: str = "internal"

    def __init__(self, message: str, field: str | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.headers: dict[str, str] = dict(headers or {})

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "field": self.field}


class RequestInvalid(ServiceError):
    """422: a schema or physics violation; ``field`` is the path, e.g. ``airs.flux[17]``."""

    status = 422
    code = "invalid_request"


class QueueFull(ServiceError):
    """429: the bounded queue is full; ``headers["Retry-After"]`` says when to come back (seconds)."""

    status = 429
    code = "queue_full"

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message, None, {"Retry-After": str(max(1, int(np.ceil(retry_after_s))))})
        self.retry_after_s = retry_after_s


class NotReady(ServiceError):
    """503: start-up (hash check, load, warm-up) has not finished, or it failed."""

    status = 503
    code = "not_ready"


class Draining(ServiceError):
    """503: the service is shutting down and accepts no new work."""

    status = 503
    code = "draining"


class DeadlineExceeded(ServiceError):
    """504: the request's deadline passed before its result was ready (it was dropped)."""

    status = 504
    code = "deadline_exceeded"


class ExplainTimeout(ServiceError):
    """504: the explanation (SHAP) did not finish within its own timeout."""

    status = 504
    code = "explain_timeout"


# ---------------------------------------------------------------- contract types


@dataclass
class PlanetRequest:
    """One planet to predict (one visit of light curves), as the HTTP layer parsed it.

    Shapes:
        fgs1_flux: (T_f,) float64; fgs1_time_h: (T_f,) hours or None (uniform over 7.5 h);
        fgs1_centroid, fgs1_jitter: (T_f, 2) px or None (zeros);
        airs_flux: (282, T_a) float64, one row per AIRS bin in ascending wavelength;
        airs_time_h: (T_a,) hours or None (uniform over 7.5 h);
        fgs1_err: (T_f,) / airs_err: (282, T_a) or None (point-to-point scatter);
        airs_trace: (T_a, 2) px or None (zeros).
    """

    planet_id: int
    fgs1_flux: np.ndarray
    fgs1_time_h: np.ndarray | None
    fgs1_centroid: np.ndarray | None
    fgs1_jitter: np.ndarray | None
    airs_flux: np.ndarray
    airs_time_h: np.ndarray | None
    star: dict[str, float] | None = None
    explain_attention: bool = False
    explain_shap: bool = False
    fgs1_err: np.ndarray | None = None
    airs_err: np.ndarray | None = None
    airs_trace: np.ndarray | None = None


@dataclass
class PlanetResult:
    """The answer for one planet. Shapes: wavelength_um, mu, sigma (283,)."""

    planet_id: int
    wavelength_um: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray
    calibration: dict[str, Any]
    model: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    attention: list | None = None
    shap: list | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: arrays become lists of Python floats."""
        out: dict[str, Any] = {
            "planet_id": int(self.planet_id),
            "wavelength_um": np.asarray(self.wavelength_um, dtype=np.float64).tolist(),
            "mu": np.asarray(self.mu, dtype=np.float64).tolist(),
            "sigma": np.asarray(self.sigma, dtype=np.float64).tolist(),
            "calibration": self.calibration,
            "model": self.model,
            "timings": {k: float(v) for k, v in self.timings.items()},
        }
        if self.attention is not None:
            out["attention"] = self.attention
        if self.shap is not None:
            out["shap"] = self.shap
        return out


# ---------------------------------------------------------------- the service


def _failed(fut: Future) -> bool:
    """Done without a result: cancelled (the client went away) or failed."""
    return fut.cancelled() or fut.exception() is not None


def _service_error(exc: BaseException) -> BaseException:
    """The client-facing error of a failure inside the pipeline (anything else stays a server fault)."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, InvalidField):
        return RequestInvalid(exc.message, exc.field)
    if isinstance(exc, NoAttention):
        return RequestInvalid(f"explain.attention: {exc}", "explain.attention")
    if isinstance(exc, QueueFullError):
        return QueueFull(str(exc), exc.retry_after_s)
    if isinstance(exc, ClosedError):
        return Draining(str(exc))
    if isinstance(exc, DeadlineError):
        return DeadlineExceeded(str(exc))
    if isinstance(exc, TaskTimeoutError):
        return ExplainTimeout(str(exc))
    return exc


class Service:
    """The model behind the HTTP routes (module docstring). Thread-safe; never blocks the caller
    on the model: :meth:`predict` and :meth:`infer_tensors` return futures at once.

    ``on_batch(batch_size, queue_s, compute_s)``: set it (before or after :meth:`start`) to
    observe every batch (metrics); called on the worker thread, must be quick.
    """

    def __init__(self, settings: Settings | None = None, on_batch: Callable[[int, float, float], None] | None = None):
        self.settings = settings if settings is not None else Settings.from_env()
        self.on_batch = on_batch
        self.error: str | None = None
        self.artifact: Artifact | None = None
        self.runtime: Runtime | None = None
        self.explainer: Explainer | None = None
        self.warmup: list[dict[str, Any]] = []
        self.started_s: float | None = None
        self._ready = False
        self._draining = False
        self._stopped = False
        self._cond = threading.Condition()
        self._inflight: dict[Future, int] = {}  # answer future -> planets it stands for
        self._batcher: DynamicBatcher | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._watch: DeadlineWatch | None = None
        self._attention: TaskQueue | None = None
        self._shap: TaskQueue | None = None
        self._model_info: dict[str, Any] = {}
        self._calibration: dict[str, Any] = {}

    # ------------------------------------------------------------ state

    @property
    def ready(self) -> bool:
        """True once start-up succeeded and until :meth:`stop` begins."""
        return self._ready and not self._draining

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def queue_depth(self) -> int:
        """Requests admitted and not yet answered (features, queue, compute, explanations)."""
        with self._cond:
            return sum(self._inflight.values())

    def info(self) -> dict[str, Any]:
        """What is served, for model metadata and /v2/models/... (empty-ish before start-up)."""
        s = self.settings
        out: dict[str, Any] = {
            "ready": self.ready,
            "draining": self._draining,
            "error": self.error,
            "settings": s.as_dict(),
            "model": dict(self._model_info),
        }
        if self.artifact is not None and self.runtime is not None:
            m = self.artifact.manifest
            out.update({
                "artifact": str(self.artifact.root),
                "manifest_sha256": self.artifact.sha256,
                "inputs": m.get("inputs"),
                "outputs": m.get("outputs"),
                "calibration": m.get("calibration"),
                "batch_buckets": list(self.artifact.buckets),
                "fgs1_steps": self.artifact.fgs1_steps,
                "features": m.get("features"),
                "max_batch_size": self._batcher.max_batch_size if self._batcher else None,
                "explanations": {"attention": self.explainer is not None, "shap": self.explainer is not None},
                "warmup": self.warmup,
                "startup_s": self.started_s,
                **self.runtime.describe(),
            })
        return out

    # ------------------------------------------------------------ lifecycle

    def start(self) -> "Service":
        """Verify the artifact, load it on the device, warm up every batch bucket against the golden
        outputs; then ``ready``. Raises (and stays not ready, with ``error`` set) on any failure:
        ValueError naming a tampered or missing file or a bad setting, WarmupError."""
        if self._ready or self._stopped:
            raise RuntimeError("Service.start: already started" if self._ready else "Service.start: stopped")
        t0 = time.perf_counter()
        s = self.settings
        try:
            import triton_kernels  # noqa: F401  (registers the CUDA kernels of the ops before any model runs)

            artifact = open_artifact(s.artifact)
            device = choose_device(s.device)
            runtime = load_runtime(artifact, s.runtime, device, s.threads)
            log.info("serving %s with %s on %s", artifact.root, runtime.kind, device)
            max_batch = s.max_batch if s.batching else 1
            self._batcher = DynamicBatcher(runtime.forward, max_batch, s.max_queue_delay_us if s.batching else 0,
                                           s.max_queue, on_batch=self._batch_done)
            self._batcher.start()
            batcher = self._batcher
            buckets = sorted(set(artifact.buckets) | {max_batch})

            def run_on_worker(fgs1: np.ndarray, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                return batcher.call(lambda: runtime.forward(fgs1, nodes)).result()

            self.warmup = warm_up(run_on_worker, artifact, device, buckets, s.warmup_rtol)
            ckpt = artifact.checkpoint
            self.explainer = Explainer(ckpt, device, s.explain_top_k, s.shap_samples) if ckpt is not None else None
            if self.explainer is None:
                log.warning("artifact %s carries no checkpoint: explanations are unavailable", artifact.root)
            self._watch = DeadlineWatch()
            self._attention = TaskQueue("spectramind-attention", s.explain_queue, self._watch, nice=10)
            self._shap = TaskQueue("spectramind-shap", s.explain_queue, self._watch, nice=19)
            self._pool = ThreadPoolExecutor(s.feature_workers, thread_name_prefix="spectramind-features")
        except BaseException as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("start-up failed: %s", self.error)
            self._shutdown_parts(0.0)
            raise
        self.artifact, self.runtime = artifact, runtime
        sha = artifact.sha256
        self._model_info = {"name": "spectramind", "version": sha[:12], "sha256": sha,
                            "artifact": artifact.manifest.get("name"), "runtime": runtime.kind, "device": device}
        self._calibration = dict(artifact.manifest.get("calibration") or {})
        self.started_s = time.perf_counter() - t0
        self._ready = True
        sizes = ", ".join(str(r["batch"]) for r in self.warmup)
        log.info("ready in %.2f s (warm-up and golden check at batch %s)", self.started_s, sizes)
        return self

    def stop(self, drain_timeout_s: float | None = None) -> bool:
        """Stop accepting (new work gets Draining), let in-flight work finish within the timeout
        (default ``SPECTRAMIND_DRAIN_TIMEOUT_S``), then stop the threads. True when everything
        in flight finished; what did not fails with Draining."""
        timeout = self.settings.drain_timeout_s if drain_timeout_s is None else float(drain_timeout_s)
        end = time.monotonic() + timeout
        with self._cond:
            if self._stopped:
                return True
            self._draining = True
            drained = self._cond.wait_for(lambda: not self._inflight, timeout)
            left = list(self._inflight)
        for fut in left:
            set_exception(fut, Draining("the server shut down before this request finished"))
        self._shutdown_parts(max(0.0, end - time.monotonic()))
        self._stopped = True
        self._ready = False
        log.info("stopped (%s)", "drained" if drained else f"{len(left)} requests cut off")
        return drained

    def _shutdown_parts(self, timeout_s: float) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        for queue in (self._attention, self._shap):
            if queue is not None:
                queue.close(0.0)
        if self._batcher is not None:
            self._batcher.close(timeout_s)
        if self._watch is not None:
            self._watch.close()

    # ------------------------------------------------------------ admission

    def _admit(self, n: int, what: str) -> None:
        if self._draining or self._stopped:
            raise Draining("the server is shutting down")
        if not self._ready:
            raise NotReady(f"the model is not ready{': ' + self.error if self.error else ' (starting up)'}")
        limit = self.settings.max_queue
        if n > limit:
            raise RequestInvalid(f"{what}: {n} items in one request, at most {limit} (SPECTRAMIND_MAX_QUEUE)", what)
        load = sum(self._inflight.values())
        if load + n > limit:
            retry = self._batcher._retry_after() if self._batcher is not None else 1.0
            raise QueueFull(f"queue full: {load} planets in flight, limit {limit} (SPECTRAMIND_MAX_QUEUE)", retry)

    def _untrack(self, fut: Future) -> None:
        with self._cond:
            self._inflight.pop(fut, None)
            if not self._inflight:
                self._cond.notify_all()

    def _batch_done(self, batch_size: int, queue_s: float, compute_s: float) -> None:
        if self.on_batch is not None:
            self.on_batch(batch_size, queue_s, compute_s)

    # ------------------------------------------------------------ predict

    def predict(
        self, reqs: Sequence[PlanetRequest], deadline_s: float | None = None, paths: Sequence[str] | None = None
    ) -> list[Future]:
        """One Future[PlanetResult] per request, in order; returns at once.

        ``deadline_s`` (default ``SPECTRAMIND_DEADLINE_S``) bounds features + queue + compute;
        explanations then have their own timeout (``SPECTRAMIND_SHAP_TIMEOUT_S``). ``paths`` are
        the field-path prefixes of the requests in the body (default "" for one request,
        ``planets[i]`` for several), so errors name ``planets[2].airs.flux``.

        Raises at once: NotReady, Draining, QueueFull (all or none of the requests are admitted),
        RequestInvalid (more planets than the queue holds). Futures fail with RequestInvalid
        (field path), DeadlineExceeded, ExplainTimeout, QueueFull (explanation queue), Draining,
        or a plain exception for a server fault.
        """
        if not reqs:
            raise RequestInvalid("planets: no planet in the request", "planets")
        with self._cond:
            self._admit(len(reqs), "planets")
            prefixes = list(paths) if paths is not None else ([""] if len(reqs) == 1 else
                                                                [f"planets[{i}]" for i in range(len(reqs))])
            if len(prefixes) != len(reqs):
                raise ValueError(f"predict: {len(prefixes)} paths for {len(reqs)} requests")
            t0 = time.perf_counter()
            deadline = time.monotonic() + (self.settings.deadline_s if deadline_s is None else float(deadline_s))
            outs = []
            for req, prefix in zip(reqs, prefixes):
                outer: Future = Future()
                self._inflight[outer] = 1
                outs.append(outer)
        for outer in outs:
            outer.add_done_callback(self._untrack)
        assert self._pool is not None and self._watch is not None
        for req, prefix, outer in zip(reqs, prefixes, outs):
            stage: Future = Future()  # the prediction stage: the request's deadline applies to it
            self._watch.add(stage, deadline, lambda: DeadlineExceeded(f"no prediction within the deadline of "
                                                                      f"{deadline_s or self.settings.deadline_s:g} s"))
            stage.add_done_callback(lambda st, req=req, outer=outer: self._predicted(st, req, outer, t0))
            # A client that goes away cancels its answer: the work behind it is dropped too.
            outer.add_done_callback(lambda o, st=stage: st.cancel() if o.cancelled() else None)
            try:
                self._pool.submit(self._features, req, prefix, stage, deadline, time.perf_counter())
            except RuntimeError:  # the pool shut down between admission and here
                set_exception(stage, Draining("the server is shutting down"))
        return outs

    def _features(self, req: PlanetRequest, prefix: str, stage: Future, deadline: float, submitted: float) -> None:
        """Feature-pool thread: light curves -> inputs, then into the batcher (never the model)."""
        if stage.done():
            return
        try:
            t = time.perf_counter()
            wait_s = t - submitted
            inputs = request_inputs(req, self.artifact.options, prefix)  # type: ignore[union-attr]
            features_s = time.perf_counter() - t
            if (req.explain_attention or req.explain_shap) and self.explainer is None:
                raise RequestInvalid("explain: this artifact carries no checkpoint, so no explanations",
                                     f"{prefix + '.' if prefix else ''}explain")
            if stage.done():
                return
            inner = self._batcher.submit(inputs.fgs1, inputs.airs_nodes, deadline)  # type: ignore[union-attr]
        except BaseException as exc:
            set_exception(stage, _service_error(exc))
            return

        def computed(f: Future) -> None:
            if f.cancelled():
                return
            exc = f.exception()
            if exc is not None:
                set_exception(stage, _service_error(exc))
                return
            mu, sigma, bt = f.result()
            set_result(stage, (inputs, mu, sigma, {"features_wait": wait_s, "features": features_s,
                                                   "queue": bt.queue_s, "compute": bt.compute_s}))

        # A deadline that fails the stage first leaves the queued item for the batcher to drop.
        stage.add_done_callback(lambda st: inner.cancel() if _failed(st) else None)
        inner.add_done_callback(computed)

    def _predicted(self, stage: Future, req: PlanetRequest, outer: Future, t0: float) -> None:
        if stage.cancelled():
            outer.cancel()
            return
        exc = stage.exception()
        if exc is not None:
            set_exception(outer, exc)
            return
        inputs, mu, sigma, timings = stage.result()
        result = PlanetResult(
            planet_id=int(inputs.planet_id),
            wavelength_um=self.artifact.wavelength_um,  # type: ignore[union-attr]
            # A depth cannot be negative (and the ADC2025 metric rejects it): as `spectramind predict`.
            mu=np.clip(np.asarray(mu, dtype=np.float64), 0.0, None),
            sigma=np.asarray(sigma, dtype=np.float64),
            calibration=self._calibration,
            model=dict(self._model_info),
            timings=timings,
        )
        if not (req.explain_attention or req.explain_shap):
            result.timings["total"] = time.perf_counter() - t0
            set_result(outer, result)
            return
        self._explain(req, inputs, result, outer, t0)

    def _explain(self, req: PlanetRequest, inputs: Any, result: PlanetResult, outer: Future, t0: float) -> None:
        """Attention and SHAP on their own low-priority queues, each with the explanation timeout."""
        explainer, batcher, timeout = self.explainer, self._batcher, self.settings.shap_timeout_s
        assert explainer is not None and batcher is not None
        fgs1, nodes = inputs.fgs1, inputs.airs_nodes
        t_explain = time.perf_counter()
        parts: dict[str, Future] = {}
        try:
            if req.explain_attention:
                parts["attention"] = self._attention.submit(  # type: ignore[union-attr]
                    lambda deadline: explainer.attention(fgs1, nodes), timeout)
            if req.explain_shap:
                parts["shap"] = self._shap.submit(  # type: ignore[union-attr]
                    lambda deadline: explainer.shap(fgs1, nodes, deadline, lambda: batcher.busy, outer.done), timeout)
        except BaseException as exc:
            for f in parts.values():
                f.cancel()
            set_exception(outer, _service_error(exc))
            return
        remaining = [len(parts)]
        lock = threading.Lock()

        def part_done(_: Future) -> None:
            with lock:
                remaining[0] -= 1
                if remaining[0]:
                    return
            for name, f in parts.items():
                exc = f.exception() if not f.cancelled() else ClosedError(f"{name}: explanation cancelled")
                if exc is not None:
                    err = _service_error(exc)
                    if isinstance(err, ExplainTimeout):
                        err = ExplainTimeout(f"{name}: not done within SPECTRAMIND_SHAP_TIMEOUT_S={timeout:g} s "
                                             "(the prediction itself succeeded)")
                    set_exception(outer, err)
                    return
                setattr(result, name, f.result())
            result.timings["explain"] = time.perf_counter() - t_explain
            result.timings["total"] = time.perf_counter() - t0
            set_result(outer, result)

        for f in parts.values():
            f.add_done_callback(part_done)
        outer.add_done_callback(lambda o: [f.cancel() for f in parts.values()] if o.cancelled() else None)

    # ------------------------------------------------------------ tensors (Open Inference Protocol)

    def infer_tensors(
        self,
        fgs1: np.ndarray,
        airs_nodes: np.ndarray,
        deadline_s: float | None = None,
        fields: tuple[str, str] = ("fgs1", "airs_nodes"),
    ) -> Future:
        """Model inputs straight to the batcher (each row its own batch item); a Future of
        (mu, sigma) (B, 283) float32, the artifact's outputs as they are (mu not clipped).

        Shapes: fgs1 (B, T, 6) with T the artifact's fgs1_steps, airs_nodes (B, 283, 8), finite.
        ``fields`` name the two tensors in errors. Raises RequestInvalid, NotReady, Draining,
        QueueFull at once; the future fails with DeadlineExceeded, Draining or a server fault.
        """
        f = self._tensor(fgs1, fields[0], 3)
        n = self._tensor(airs_nodes, fields[1], 3)
        art = self.artifact
        if art is not None and f.shape[1:] != (art.fgs1_steps, 6):
            raise RequestInvalid(f"{fields[0]}: must have shape [B, {art.fgs1_steps}, 6], got {list(f.shape)}",
                                 fields[0])
        if n.shape[1:] != (N_BINS, 8):
            raise RequestInvalid(f"{fields[1]}: must have shape [B, {N_BINS}, 8], got {list(n.shape)}", fields[1])
        if f.shape[0] != n.shape[0] or f.shape[0] < 1:
            raise RequestInvalid(f"{fields[1]}: batch {n.shape[0]} differs from {fields[0]}'s {f.shape[0]}"
                                 if f.shape[0] else f"{fields[0]}: empty batch", fields[1])
        outer: Future = Future()
        with self._cond:
            self._admit(f.shape[0], fields[0])
            self._inflight[outer] = f.shape[0]
        outer.add_done_callback(self._untrack)
        deadline = time.monotonic() + (self.settings.deadline_s if deadline_s is None else float(deadline_s))
        assert self._batcher is not None and self._watch is not None
        inners: list[Future] = []
        try:
            for i in range(f.shape[0]):
                inners.append(self._batcher.submit(f[i], n[i], deadline))
        except BaseException as exc:
            for x in inners:
                x.cancel()
            set_exception(outer, _service_error(exc))
            raise _service_error(exc) from None
        self._watch.add(outer, deadline, lambda: DeadlineExceeded("no result within the deadline"))
        outer.add_done_callback(lambda o: [x.cancel() for x in inners] if _failed(o) else None)
        remaining = [len(inners)]
        lock = threading.Lock()

        def row_done(_: Future) -> None:
            with lock:
                remaining[0] -= 1
                if remaining[0]:
                    return
            for x in inners:
                if x.cancelled():
                    return
                if x.exception() is not None:
                    set_exception(outer, _service_error(x.exception()))
                    return
            mu = np.stack([x.result()[0] for x in inners]).astype(np.float32)
            sigma = np.stack([x.result()[1] for x in inners]).astype(np.float32)
            set_result(outer, (mu, sigma))

        for x in inners:
            x.add_done_callback(row_done)
        return outer

    @staticmethod
    def _tensor(value: Any, name: str, ndim: int) -> np.ndarray:
        try:
            arr = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            raise RequestInvalid(f"{name}: must be a tensor of numbers", name) from None
        if arr.ndim != ndim:
            raise RequestInvalid(f"{name}: must have {ndim} dimensions, got shape {list(arr.shape)}", name)
        bad = ~np.isfinite(arr)
        if bad.any():
            idx = "".join(f"[{int(i)}]" for i in np.argwhere(bad)[0])
            raise RequestInvalid(f"{name}{idx}: not finite", f"{name}{idx}")
        return arr
