"""Prometheus metrics of the server (prometheus-client) and the ``Server-Timing`` header.

Every metric lives in the app's own :class:`prometheus_client.CollectorRegistry`, so two apps
in one process (tests) never collide. Names (all seconds unless said otherwise):

==============================================  ==========  ========================================
metric                                          type        labels / meaning
==============================================  ==========  ========================================
``spectramind_request_duration_seconds``        histogram   route: arrival to response start
``spectramind_features_duration_seconds``       histogram   light curves -> model inputs, a planet
``spectramind_queue_duration_seconds``          histogram   enqueue to the start of the batch
``spectramind_compute_duration_seconds``        histogram   one batched forward (per batch)
``spectramind_batch_size``                      histogram   planets per forward
``spectramind_explanation_duration_seconds``    histogram   kind: attention | shap | attention+shap
``spectramind_requests_total``                  counter     route, status
``spectramind_requests_in_flight``              gauge       requests being answered now
``spectramind_non_finite_outputs_total``        counter     output: mu | sigma (values, not planets)
``spectramind_model_info``                      info        name, version, sha256, runtime, device
``spectramind_ready``                           gauge       1 once warm-up matched the golden outputs
==============================================  ==========  ========================================

Time buckets run from 50 µs to 10 s (1-2.5-5 steps), so the sub-millisecond server overhead
and a slow SHAP explanation both land in a bucket of their own.

:class:`MetricsMiddleware` is a plain ASGI middleware (no per-request task, no body copy): it
assigns the request id, counts the in-flight gauge, times the request, labels it with the route
template (``/v2/models/{model_name}/infer``, never the raw path) and writes ``Server-Timing``
(``total`` plus the ``features``, ``queue``, ``compute`` and ``explain`` parts a route reports
through :func:`report_timings`). A server fault escaping a route becomes the 500 error shape
here, with the request id in the body and the log.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

from serve.errors import internal_error_response, is_oip, request_id_of

__all__ = ["BATCH_BUCKETS", "TIME_BUCKETS", "Metrics", "MetricsMiddleware", "report_timings"]

TIME_BUCKETS = (
    50e-6, 100e-6, 250e-6, 500e-6,
    1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3,
    1.0, 2.5, 5.0, 10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_TIMINGS_KEY = "spectramind.timings"
_SERVER_TIMING_PARTS = ("features_wait", "features", "queue", "compute", "explain")


class Metrics:
    """The server's metrics in their own registry; ``render()`` is the /metrics body."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.request_latency = Histogram("spectramind_request_duration_seconds",
                                         "Request latency, arrival to response start", ["route"],
                                         buckets=TIME_BUCKETS, registry=r)
        self.features_time = Histogram("spectramind_features_duration_seconds",
                                       "Light curves -> model inputs, per planet", buckets=TIME_BUCKETS, registry=r)
        self.queue_time = Histogram("spectramind_queue_duration_seconds",
                                    "Time in the batcher queue, per planet", buckets=TIME_BUCKETS, registry=r)
        self.compute_time = Histogram("spectramind_compute_duration_seconds",
                                      "Batched forward time, per batch", buckets=TIME_BUCKETS, registry=r)
        self.batch_size = Histogram("spectramind_batch_size", "Planets per forward", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.explain_time = Histogram("spectramind_explanation_duration_seconds", "Explanation time, per planet",
                                      ["kind"], buckets=TIME_BUCKETS, registry=r)
        self.requests = Counter("spectramind_requests", "Requests answered", ["route", "status"], registry=r)
        self.in_flight = Gauge("spectramind_requests_in_flight", "Requests being answered", registry=r)
        self.non_finite = Counter("spectramind_non_finite_outputs", "Non-finite values the model produced",
                                  ["output"], registry=r)
        self.model_info = Info("spectramind_model", "The served artifact", registry=r)
        self.ready = Gauge("spectramind_ready", "1 once the warm-up matched the golden outputs", registry=r)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def observe_batch(self, batch_size: int, queue_s: float, compute_s: float) -> None:
        """The service's ``on_batch`` hook (worker thread): size and forward time of one batch.
        Queue time is per planet (:meth:`observe_result`), not per batch."""
        self.batch_size.observe(batch_size)
        self.compute_time.observe(compute_s)

    def observe_result(self, timings: Mapping[str, float], explained: Mapping[str, bool]) -> None:
        """Per-planet timings of a result (seconds): features, queue and, when an explanation was
        asked, explain (labelled attention, shap or attention+shap)."""
        if "features" in timings:
            self.features_time.observe(timings["features"])
        if "queue" in timings:
            self.queue_time.observe(timings["queue"])
        kinds = "+".join(k for k in ("attention", "shap") if explained.get(k))
        if kinds and "explain" in timings:
            self.explain_time.labels(kinds).observe(timings["explain"])

    def count_non_finite(self, name: str, values: np.ndarray) -> int:
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        if bad:
            self.non_finite.labels(name).inc(bad)
        return bad

    def set_model(self, info: Mapping[str, Any]) -> None:
        self.model_info.info({k: str(info[k]) for k in ("name", "version", "sha256", "runtime", "device")
                              if info.get(k) is not None})


def report_timings(scope: dict[str, Any], timings: Mapping[str, float]) -> None:
    """Let the middleware put a request's parts (seconds) in ``Server-Timing``; the largest
    value wins when a request holds several planets."""
    store = scope.get(_TIMINGS_KEY)
    if store is None:
        return
    for key in _SERVER_TIMING_PARTS:
        if key in timings:
            store[key] = max(store.get(key, 0.0), float(timings[key]))


class MetricsMiddleware:
    """ASGI middleware: request id, in-flight gauge, latency histogram, status counter,
    ``Server-Timing`` and ``X-Request-ID`` headers, and the 500 shape for escaped server faults."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        rid = request_id_of(scope)
        timings: dict[str, float] = {}
        scope[_TIMINGS_KEY] = timings
        status = 500
        started = False
        m = self.metrics
        m.in_flight.inc()

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                total_ms = (time.perf_counter() - start) * 1e3
                parts = [f"total;dur={total_ms:.3f}"] + [f"{k};dur={v * 1e3:.3f}" for k, v in timings.items()]
                headers = list(message.get("headers") or [])
                names = {h[0].lower() for h in headers}
                headers.append((b"server-timing", ", ".join(parts).encode()))
                if b"x-request-id" not in names:
                    headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:  # a server fault: answer 500 with the request id, log the traceback
            if started:
                raise
            await internal_error_response(exc, rid, is_oip(scope))(scope, receive, send_wrapper)
        finally:
            m.in_flight.dec()
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            m.request_latency.labels(label).observe(time.perf_counter() - start)
            m.requests.labels(label, str(status)).inc()
