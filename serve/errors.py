"""One JSON error shape for every failure the server answers, and the handlers that produce it.

Every error response, from ``/predict``, the Open Inference Protocol routes, routing (404/405)
or a server fault, has the body::

    {"error": {"status": 422, "code": "invalid_request", "message": "...",
               "field": "airs.flux[17][3]", "request_id": "9f1c..."}}

and the ``X-Request-ID`` header. ``field`` is the path of the culprit in the request (or null).

The Open Inference Protocol routes (``/v2...``) carry the same fields, except that the protocol
fixes ``error`` to be the message string (``{"error": $string}``; tritonclient formats it into
its exception text and fails on an object)::

    {"error": "...", "status": 422, "code": "invalid_request", "field": "AIRS[0]", "request_id": "9f1c..."}

=====  ==========================  ==============================================================
code   class                       when
=====  ==========================  ==============================================================
400    :class:`MalformedBody`      the body is not JSON / npz / OIP binary at all
404    :class:`NotFound`           unknown route or model name
405    (routing)                   wrong method for a route
413    :class:`PayloadTooLarge`    body over ``SPECTRAMIND_MAX_BODY_BYTES``, refused before it is read
415    :class:`UnsupportedMedia`   a Content-Type the route does not read
422    ``RequestInvalid``          schema or physics violation, with the field path
429    ``QueueFull``               bounded queue full, with ``Retry-After``
500    :class:`ModelFault` / any   a server fault (non-finite model output, a bug); logged with the
                                   request id and traceback, the body carries the request id
503    ``NotReady`` / ``Draining`` start-up not finished (or failed) / shutting down
504    ``DeadlineExceeded`` /      past the request's deadline / the explanation's timeout
       ``ExplainTimeout``
=====  ==========================  ==============================================================

The HTTP-only errors subclass :class:`serve.service.ServiceError`, so one mapping serves all.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

import orjson
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from serve.service import ServiceError

__all__ = [
    "MalformedBody",
    "ModelFault",
    "NotFound",
    "PayloadTooLarge",
    "UnsupportedMedia",
    "error_body",
    "error_response",
    "install_handlers",
    "internal_error_response",
    "is_oip",
    "request_id_of",
]

log = logging.getLogger("spectramind.serve")

REQUEST_ID_HEADER = "x-request-id"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
               415: "unsupported_media_type", 422: "invalid_request", 500: "internal", 503: "not_ready"}


class MalformedBody(ServiceError):
    """400: the body cannot be parsed at all (not JSON, not an npz archive, a bad binary layout)."""

    status = 400
    code = "malformed_body"


class NotFound(ServiceError):
    """404: an unknown route or model name."""

    status = 404
    code = "not_found"


class PayloadTooLarge(ServiceError):
    """413: the body is over the configured limit (checked on Content-Length, then while streaming)."""

    status = 413
    code = "payload_too_large"


class UnsupportedMedia(ServiceError):
    """415: a Content-Type the route does not read."""

    status = 415
    code = "unsupported_media_type"


class ModelFault(ServiceError):
    """500: the model answered something it must never answer (non-finite mu or sigma)."""

    status = 500
    code = "model_fault"


def request_id_of(scope: dict[str, Any]) -> str:
    """The request id of this request: the client's ``X-Request-ID`` when it is a safe token,
    else a fresh one; stored in the scope so every layer reports the same id."""
    rid = scope.get("spectramind.request_id")
    if rid is None:
        given = None
        for name, value in scope.get("headers") or ():
            if name == b"x-request-id":
                given = value.decode("latin-1")
                break
        rid = given if given and _SAFE_ID.match(given) else uuid.uuid4().hex
        scope["spectramind.request_id"] = rid
    return rid


def error_body(status: int, code: str, message: str, field: str | None, request_id: str, oip: bool = False) -> bytes:
    """The error body; ``oip``: the Open Inference Protocol's variant (``error`` is the message)."""
    if oip:
        return orjson.dumps({"error": message, "status": status, "code": code, "field": field,
                             "request_id": request_id})
    return orjson.dumps({"error": {"status": status, "code": code, "message": message, "field": field,
                                   "request_id": request_id}})


def is_oip(scope: dict[str, Any]) -> bool:
    path = scope.get("path", "")
    return path == "/v2" or path.startswith("/v2/")


def error_response(exc: ServiceError, request_id: str, oip: bool = False) -> Response:
    headers = {**exc.headers, "X-Request-ID": request_id}
    return Response(error_body(exc.status, exc.code, exc.message, exc.field, request_id, oip),
                    status_code=exc.status, headers=headers, media_type="application/json")


def internal_error_response(exc: BaseException, request_id: str, oip: bool = False) -> Response:
    """500 for a server fault: the traceback goes to the log with the request id, the client gets the id."""
    log.error("request %s failed with a server fault: %s: %s", request_id, type(exc).__name__, exc, exc_info=exc)
    body = error_body(500, "internal", f"internal server error (request id {request_id})", None, request_id, oip)
    return Response(body, status_code=500, headers={"X-Request-ID": request_id}, media_type="application/json")


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    rid = request_id_of(request.scope)
    if exc.status >= 500 and exc.status not in (503, 504):
        log.error("request %s: %s (%s)", rid, exc.message, exc.code)
    return error_response(exc, rid, is_oip(request.scope))


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    err = ServiceError(str(exc.detail), None, dict(exc.headers or {}))
    err.status, err.code = status, _HTTP_CODES.get(status, f"http_{status}")
    if status == 404:
        err.message = f"no route {request.method} {request.url.path}"
    elif status == 405:
        err.message = f"method {request.method} is not allowed on {request.url.path}"
    return error_response(err, request_id_of(request.scope), is_oip(request.scope))


async def _validation_error(request: Request, exc: Exception) -> Response:
    errors = getattr(exc, "errors", lambda: [])()
    first = errors[0] if errors else {}
    field = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "path", "query")) or None
    err = ServiceError(str(first.get("msg", "invalid request")), field)
    err.status, err.code = 422, "invalid_request"
    return error_response(err, request_id_of(request.scope), is_oip(request.scope))


def install_handlers(app: Any) -> None:
    """Register the handlers on a FastAPI/Starlette app (server faults: :mod:`serve.app`'s middleware)."""
    from fastapi.exceptions import RequestValidationError

    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _validation_error)
