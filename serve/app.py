"""The HTTP server: ``uvicorn serve.app:app`` (FastAPI; routes are thin, the work is in serve.service).

Routes::

    POST /predict                      light curves (JSON or npz) -> calibrated mu, sigma (schemas)
    GET  /metrics                      Prometheus text format (serve.metrics)
    GET  /v2, /v2/health/{live,ready}, /v2/models/spectramind[/ready], POST .../infer
                                       Open Inference Protocol v2 (serve.oip)

Start-up (the lifespan): settings from the environment (:meth:`Settings.from_env`; a bad value
names its variable and uvicorn exits non-zero); the artifact's hashes are verified before the
server listens, so a tampered artifact is refused with one clear log line and exit status 3;
then :meth:`Service.start` (load, warm-up at every batch bucket, golden comparison) runs in a
background thread, so ``/v2/health/live`` answers at once and ``/v2/health/ready`` turns 200
only after the warm-up. Should that background start fail, the failure is logged and the
process exits with status 1 (``exit_on_failure``; tests keep the process and read the reason
from the health routes).

Shutdown: uvicorn stops accepting connections and waits for in-flight requests; then
:meth:`Service.stop` drains what is still queued within ``SPECTRAMIND_DRAIN_TIMEOUT_S``; new
work meanwhile gets 503 ``draining``.

Every response carries ``X-Request-ID`` and ``Server-Timing``; every error the one JSON shape of
:mod:`serve.errors`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import metadata
from typing import Any

import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response

from serve.errors import ModelFault, install_handlers
from serve.metrics import Metrics, MetricsMiddleware, report_timings
from serve.oip import make_router
from serve.schemas import MAX_PLANETS, media_type, parse_predict, read_body
from serve.service import (
    DeadlineExceeded,
    Draining,
    NotReady,
    PlanetRequest,
    PlanetResult,
    Service,
)
from serve.settings import Settings
from spectramind.artifact import verify_artifact

__all__ = ["Server", "app", "create_app"]

log = logging.getLogger("spectramind.serve")
# Parsing a large body takes milliseconds: off the event loop above this size.
_INLINE_PARSE_BYTES = 256 * 1024
# The service enforces deadlines; this margin only guards against a future that never resolves.
_GUARD_MARGIN_S = 1.0


def _version() -> str:
    try:
        return metadata.version("spectramind")
    except metadata.PackageNotFoundError:
        return "0"


class Server:
    """What the routes share: settings, the service, metrics and the start-up state."""

    def __init__(self, settings: Settings | None, service: Any, metrics: Metrics, exit_on_failure: bool) -> None:
        self.settings = settings
        self.service = service
        self.metrics = metrics
        self.exit_on_failure = exit_on_failure
        self.version = _version()
        self.startup_error: str | None = None
        self._info: dict[str, Any] | None = None

    @property
    def max_planets(self) -> int:
        return min(MAX_PLANETS, self.settings.max_queue) if self.settings is not None else MAX_PLANETS

    def not_ready_reason(self) -> str:
        if self.startup_error is not None:
            return f"start-up failed: {self.startup_error}"
        return "the model is loading and warming up; retry when /v2/health/ready answers 200"

    def accepting(self) -> None:
        """Raise 503 unless the service takes new work (cheap: before any body is read)."""
        if self.service is not None and self.service.draining:
            raise Draining("the server is shutting down")
        if self.service is None or not self.service.ready:
            raise NotReady(self.not_ready_reason())

    def model_info(self) -> dict[str, Any]:
        """name, version, sha256, runtime, device (the service's ``info()["model"]``) and the
        artifact's stable facts; cached once the service is ready."""
        if self._info is not None:
            return self._info
        raw = self.service.info()
        info = dict(raw.get("model") or {})
        for key in ("manifest_sha256", "fgs1_steps", "max_batch_size", "batch_buckets", "calibration"):
            if raw.get(key) is not None:
                info[key] = raw[key]
        if self.service.ready:
            self._info = info
        return info

    def start_service(self) -> None:
        """Background thread: the slow part of start-up; readiness turns true when it returns."""
        try:
            self.service.start()
        except Exception as exc:
            self.startup_error = f"{type(exc).__name__}: {exc}"
            log.critical("start-up failed, the server will never be ready: %s", self.startup_error, exc_info=exc)
            if self.exit_on_failure:
                for handler in logging.getLogger("spectramind").handlers + logging.getLogger().handlers:
                    handler.flush()
                sys.stderr.flush()
                os._exit(1)  # nothing to drain: no request was ever accepted
            return
        info = self.model_info()
        self.metrics.set_model(info)
        self.metrics.ready.set(1)
        log.info("ready: model %s version %s (sha256 %s) on %s via %s", info.get("name"), info.get("version"),
                 str(info.get("sha256"))[:12], info.get("device"), info.get("runtime"))

    async def predict(self, request: Request, reqs: list[PlanetRequest], deadline_s: float | None,
                      is_list: bool) -> list[PlanetResult]:
        """The shared path of /predict and OIP infer: submit (field paths ``planets[i]`` for a
        list), await without blocking the loop, count metrics and non-finite outputs."""
        limit = self.settings.deadline_s
        deadline = limit if deadline_s is None else min(deadline_s, limit)
        explain = any(r.explain_attention or r.explain_shap for r in reqs)
        guard = deadline + (self.settings.shap_timeout_s if explain else 0.0) + _GUARD_MARGIN_S
        paths = [f"planets[{i}]" for i in range(len(reqs))] if is_list else [""]
        futures = self.service.predict(reqs, deadline, paths)
        results: list[PlanetResult] = []
        try:
            async with asyncio.timeout(guard):
                for fut in futures:
                    results.append(await asyncio.wrap_future(fut))
        except TimeoutError:
            raise DeadlineExceeded(f"no result within the deadline of {deadline:g} s") from None
        finally:
            for fut in futures:
                fut.cancel()
        m = self.metrics
        for req, res in zip(reqs, results):
            m.observe_result(res.timings, {"attention": req.explain_attention, "shap": req.explain_shap})
            report_timings(request.scope, res.timings)
            bad = m.count_non_finite("mu", res.mu) + m.count_non_finite("sigma", res.sigma)
            if bad:
                raise ModelFault(f"the model produced {bad} non-finite values for planet {res.planet_id}")
        return results


def _configure_logging() -> None:
    logger = logging.getLogger("spectramind")
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def create_app(settings: Settings | None = None, service: Any = None, exit_on_failure: bool = True) -> FastAPI:
    """The app. ``settings`` None: read from the environment at start-up. ``service`` None: a
    :class:`Service` of those settings, after the artifact's hashes are verified."""
    metrics = Metrics()
    server = Server(settings, service, metrics, exit_on_failure)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _configure_logging()
        if server.settings is None:
            server.settings = Settings.from_env()
        if server.service is None:
            try:
                await asyncio.to_thread(verify_artifact, server.settings.artifact)
            except ValueError as exc:
                log.critical("refusing to start: %s", exc)
                raise RuntimeError(f"refusing to start: {exc}") from None
            server.service = Service(server.settings)
        server.service.on_batch = metrics.observe_batch
        starter = threading.Thread(target=server.start_service, name="spectramind-startup", daemon=True)
        starter.start()
        log.info("starting: artifact %s, settings %s", server.settings.artifact, server.settings.as_dict())
        try:
            yield
        finally:
            metrics.ready.set(0)
            log.info("draining (at most %g s)", server.settings.drain_timeout_s)
            await asyncio.to_thread(server.service.stop, server.settings.drain_timeout_s)
            await asyncio.to_thread(starter.join, 5.0)
            log.info("stopped")

    app = FastAPI(title="SpectraMind V50", version=server.version, lifespan=lifespan)
    app.state.server = server
    install_handlers(app)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        server.accepting()
        body = await read_body(request, server.settings.max_body_bytes)
        args = (body, media_type(request), server.max_planets, server.settings.max_body_bytes)
        if len(body) > _INLINE_PARSE_BYTES:
            reqs, is_list = await asyncio.to_thread(parse_predict, *args)
        else:
            reqs, is_list = parse_predict(*args)
        results = await server.predict(request, reqs, None, is_list)
        doc = {"planets": [r.to_dict() for r in results]} if is_list else results[0].to_dict()
        return Response(orjson.dumps(doc), media_type="application/json")

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    async def oip_predict(request: Request, reqs: list[PlanetRequest], deadline_s: float | None,
                          is_list: bool) -> list[PlanetResult]:
        return await server.predict(request, reqs, deadline_s, is_list)

    app.include_router(make_router(oip_predict))
    return app


app = create_app()
