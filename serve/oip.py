"""Open Inference Protocol v2 (KServe / Triton Inference Server HTTP) for the model ``spectramind``.

Routes (``{version}`` routes accept the served version only)::

    GET  /v2                                        server metadata (extensions: binary_tensor_data)
    GET  /v2/health/live                            200 while the process can serve (503 after a failed start-up)
    GET  /v2/health/ready                           200 once warm-up matched the golden outputs, else 503
    GET  /v2/models/spectramind[/versions/{v}]         model metadata: the tensors below
    GET  /v2/models/spectramind[/versions/{v}]/ready   200 / 503
    POST /v2/models/spectramind[/versions/{v}]/infer   inference

Tensors (``B`` planets, light curves in, not model inputs: the server computes the features)::

    inputs   FGS1       FP32  (B, T_f)       FGS1 flux light curves
             AIRS       FP32  (B, 282, T_a)  AIRS flux, one series per bin, ascending wavelength
             FGS1_TIME  FP32  (B, T_f)       optional, hours (absent: uniform over the visit)
             AIRS_TIME  FP32  (B, T_a)       optional, hours
             PLANET_ID  INT64 (B,)           optional (absent: 0..B-1)
    outputs  MU         FP32  (B, 283)       calibrated transit depth per bin
             SIGMA      FP32  (B, 283)       calibrated 1-sigma uncertainty
             ATTENTION  BYTES (B,)           JSON per planet, with request parameter {"attention": true}
             SHAP       BYTES (B,)           JSON per planet, with request parameter {"shap": true}

Request parameters: ``attention`` and ``shap`` (bool), ``timeout`` (µs, Triton's: lowers the
deadline), ``binary_data_output`` (all outputs binary). Output parameter ``binary_data``.

The binary tensor extension: a request may carry ``Inference-Header-Content-Length: N``; the
first N bytes are the JSON header and the rest the raw little-endian tensors, in input order,
each sized by its ``parameters.binary_data_size``. A response with binary outputs has the same
layout (BYTES elements as a 4-byte little-endian length and the bytes). So the unmodified
``tritonclient.http.InferenceServerClient`` works. Errors carry the fields of the server's error
shape with the protocol's ``{"error": $string}`` (:mod:`serve.errors`); violations name the
tensor and element, e.g. ``AIRS[1][17][3]``.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from serve.errors import MalformedBody, NotFound
from serve.schemas import MAX_PLANETS, loads_json, planet_request, read_body
from serve.service import Draining, NotReady, PlanetRequest, PlanetResult, RequestInvalid
from spectramind.bins import N_AIRS, N_BINS

__all__ = ["INPUTS", "MODEL_NAME", "OUTPUTS", "InferRequest", "encode_response", "make_router", "parse_infer"]

MODEL_NAME = "spectramind"
HEADER_LENGTH = "Inference-Header-Content-Length"
# name -> (datatype, shape with -1 for a dynamic axis, required)
INPUTS: dict[str, tuple[str, list[int], bool]] = {
    "FGS1": ("FP32", [-1, -1], True),
    "AIRS": ("FP32", [-1, N_AIRS, -1], True),
    "FGS1_TIME": ("FP32", [-1, -1], False),
    "AIRS_TIME": ("FP32", [-1, -1], False),
    "PLANET_ID": ("INT64", [-1], False),
}
OUTPUTS: dict[str, tuple[str, list[int]]] = {
    "MU": ("FP32", [-1, N_BINS]),
    "SIGMA": ("FP32", [-1, N_BINS]),
    "ATTENTION": ("BYTES", [-1]),
    "SHAP": ("BYTES", [-1]),
}
_DTYPES = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"), "INT64": np.dtype("<i8"), "INT32": np.dtype("<i4")}
_REQUEST_KEYS = {"id", "parameters", "inputs", "outputs"}


@dataclass
class InferRequest:
    """A parsed infer request: the planets, the outputs asked for (name -> binary?), parameters."""

    id: str | None
    planets: list[PlanetRequest]
    outputs: dict[str, bool]
    deadline_s: float | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- metadata


def server_metadata(version: str) -> dict[str, Any]:
    return {"name": "spectramind", "version": version, "extensions": ["binary_tensor_data"]}


def model_metadata(info: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": MODEL_NAME,
        "versions": [_version(info)],
        "platform": f"spectramind_{info.get('runtime', 'torchscript')}",
        "inputs": [{"name": n, "datatype": d, "shape": s} for n, (d, s, _) in INPUTS.items()],
        "outputs": [{"name": n, "datatype": d, "shape": s} for n, (d, s) in OUTPUTS.items()],
        "parameters": {k: info[k] for k in ("sha256", "device", "runtime") if k in info},
    }


def _version(info: dict[str, Any]) -> str:
    return str(info.get("version") or "1")


# ---------------------------------------------------------------- request


def parse_infer(body: bytes, header_length: str | None, max_planets: int = MAX_PLANETS) -> InferRequest:
    """An infer body (JSON, or JSON header + binary tensors) -> planets; raises MalformedBody (400)
    for a broken layout and RequestInvalid (422) naming the tensor for a bad tensor."""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise MalformedBody(f"{HEADER_LENGTH} is not an integer: {header_length!r}", HEADER_LENGTH) from None
        if not 0 < n <= len(body):
            raise MalformedBody(f"{HEADER_LENGTH} is {n} but the body has {len(body)} bytes", HEADER_LENGTH)
        doc, binary = loads_json(body[:n]), memoryview(body)[n:]
    else:
        doc, binary = loads_json(body), memoryview(b"")
    if not isinstance(doc, dict):
        raise RequestInvalid("the infer request must be a JSON object", "$")
    unknown = sorted(set(doc) - _REQUEST_KEYS)
    if unknown:
        raise RequestInvalid(f"{unknown[0]} is not a field of an infer request", unknown[0])
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise RequestInvalid("parameters must be an object", "parameters")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestInvalid("inputs must be a non-empty list of tensors", "inputs")

    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for i, spec in enumerate(inputs):
        if not isinstance(spec, dict):
            raise RequestInvalid(f"inputs[{i}] must be an object", f"inputs[{i}]")
        name = spec.get("name")
        if name not in INPUTS:
            raise RequestInvalid(f"inputs[{i}].name {name!r} is not an input; known: {', '.join(INPUTS)}",
                                 f"inputs[{i}].name")
        if name in tensors:
            raise RequestInvalid(f"input {name} is given twice", f"inputs[{i}].name")
        arr, offset = _input_tensor(spec, name, binary, offset)
        tensors[name] = arr
    if offset != len(binary):
        raise MalformedBody(f"the body has {len(binary) - offset} bytes after the last binary tensor", HEADER_LENGTH)
    for name, (_, _, required) in INPUTS.items():
        if required and name not in tensors:
            raise RequestInvalid(f"input {name} is required", name)

    planets = _planets(tensors, params, max_planets)
    return InferRequest(
        id=str(doc["id"]) if doc.get("id") is not None else None,
        planets=planets,
        outputs=_requested_outputs(doc.get("outputs"), params, planets),
        deadline_s=_timeout(params),
        parameters=params,
    )


def _input_tensor(spec: dict[str, Any], name: str, binary: memoryview, offset: int) -> tuple[np.ndarray, int]:
    datatype, shape_spec, _ = INPUTS[name]
    where = f"inputs[{name}]"
    if spec.get("datatype") != datatype:
        raise RequestInvalid(f"{name} must have datatype {datatype}, got {spec.get('datatype')!r}", f"{where}.datatype")
    shape = spec.get("shape")
    if (not isinstance(shape, list) or len(shape) != len(shape_spec)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise RequestInvalid(f"{name} must have a shape of {len(shape_spec)} sizes like {shape_spec}, got {shape!r}",
                             f"{where}.shape")
    for axis, (want, got) in enumerate(zip(shape_spec, shape)):
        if want != -1 and want != got:
            raise RequestInvalid(f"{name} axis {axis} must be {want}, got {got}", f"{where}.shape")
    dtype = _DTYPES[datatype]
    count = int(np.prod(shape))
    params = spec.get("parameters") or {}
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if size is not None:
        if "data" in spec:
            raise RequestInvalid(f"{name} has both data and binary_data_size", where)
        if not isinstance(size, int) or size != count * dtype.itemsize:
            raise MalformedBody(f"{name}: binary_data_size {size!r} does not match shape {shape} of {datatype} "
                                f"({count * dtype.itemsize} bytes)", f"{where}.parameters.binary_data_size")
        if offset + size > len(binary):
            raise MalformedBody(f"{name}: the body ends before its {size} binary bytes", where)
        arr = np.frombuffer(binary[offset:offset + size], dtype=dtype).reshape(shape)
        return arr, offset + size
    if "data" not in spec:
        raise RequestInvalid(f"{name} has neither data nor binary_data_size", where)
    try:
        arr = np.asarray(spec["data"], dtype=np.float64 if dtype.kind == "f" else np.int64)
    except (ValueError, TypeError):
        raise RequestInvalid(f"{name} data must be numbers", f"{where}.data") from None
    if arr.size != count:
        raise RequestInvalid(f"{name} data holds {arr.size} values, shape {shape} needs {count}", f"{where}.data")
    return arr.reshape(shape), offset


def _planets(t: dict[str, np.ndarray], params: dict[str, Any], max_planets: int) -> list[PlanetRequest]:
    fgs1, airs = t["FGS1"], t["AIRS"]
    b = fgs1.shape[0]
    if b == 0 or b > max_planets:
        raise RequestInvalid(f"FGS1 holds {b} planets, 1 to {max_planets} per request", "inputs[FGS1].shape")
    leads = {"AIRS": airs, **{k: t[k] for k in ("FGS1_TIME", "AIRS_TIME", "PLANET_ID") if k in t}}
    for name, arr in leads.items():
        if arr.shape[0] != b:
            raise RequestInvalid(f"{name} holds {arr.shape[0]} planets, FGS1 holds {b}", f"inputs[{name}].shape")
    flags = {}
    for key in ("attention", "shap"):
        value = params.get(key, False)
        if not isinstance(value, bool):
            raise RequestInvalid(f"parameter {key} must be true or false, got {value!r}", f"parameters.{key}")
        flags[key] = value
    out = []
    for i in range(b):
        names = {"fgs1_flux": f"FGS1[{i}]", "airs_flux": f"AIRS[{i}]", "fgs1_time_h": f"FGS1_TIME[{i}]",
                 "airs_time_h": f"AIRS_TIME[{i}]", "planet_id": f"PLANET_ID[{i}]"}
        out.append(planet_request(
            prefix="", names=names,
            planet_id=int(t["PLANET_ID"][i]) if "PLANET_ID" in t else i,
            fgs1_flux=fgs1[i], airs_flux=airs[i],
            fgs1_time_h=t["FGS1_TIME"][i] if "FGS1_TIME" in t else None,
            airs_time_h=t["AIRS_TIME"][i] if "AIRS_TIME" in t else None,
            explain_attention=flags["attention"], explain_shap=flags["shap"],
        ))
    return out


def _requested_outputs(outputs: Any, params: dict[str, Any], planets: Sequence[PlanetRequest]) -> dict[str, bool]:
    binary_all = params.get("binary_data_output", False)
    if not isinstance(binary_all, bool):
        raise RequestInvalid("parameter binary_data_output must be true or false", "parameters.binary_data_output")
    if outputs is None:
        names = ["MU", "SIGMA"]
        names += ["ATTENTION"] if planets[0].explain_attention else []
        names += ["SHAP"] if planets[0].explain_shap else []
        return {n: binary_all for n in names}
    if not isinstance(outputs, list) or not outputs:
        raise RequestInvalid("outputs must be a non-empty list", "outputs")
    asked: dict[str, bool] = {}
    for i, spec in enumerate(outputs):
        name = spec.get("name") if isinstance(spec, dict) else None
        if name not in OUTPUTS:
            raise RequestInvalid(f"outputs[{i}].name {name!r} is not an output; known: {', '.join(OUTPUTS)}",
                                 f"outputs[{i}].name")
        p = spec.get("parameters") or {}
        binary = p.get("binary_data", binary_all) if isinstance(p, dict) else binary_all
        if not isinstance(binary, bool):
            raise RequestInvalid(f"outputs[{i}].parameters.binary_data must be true or false",
                                 f"outputs[{i}].parameters.binary_data")
        asked[name] = binary
    # Asking for ATTENTION / SHAP by name asks for the explanation too.
    for p in planets:
        p.explain_attention = p.explain_attention or "ATTENTION" in asked
        p.explain_shap = p.explain_shap or "SHAP" in asked
    return asked


def _timeout(params: dict[str, Any]) -> float | None:
    value = params.get("timeout")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise RequestInvalid(f"parameter timeout must be a positive number of microseconds, got {value!r}",
                             "parameters.timeout")
    return float(value) * 1e-6


# ---------------------------------------------------------------- response


def encode_response(
    req: InferRequest, results: Sequence[PlanetResult], info: dict[str, Any]
) -> tuple[bytes, dict[str, str]]:
    """The infer response body and its headers (``Inference-Header-Content-Length`` when any
    output is binary)."""
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, binary in req.outputs.items():
        datatype, _ = OUTPUTS[name]
        if name in ("MU", "SIGMA"):
            arr = np.stack([getattr(r, name.lower()) for r in results]).astype("<f4")
            shape = list(arr.shape)
            raw = arr.tobytes() if binary else None
            data = None if binary else arr.ravel().tolist()
        else:
            texts = [orjson.dumps(getattr(r, name.lower())) for r in results]
            shape = [len(texts)]
            raw = b"".join(struct.pack("<I", len(t)) + t for t in texts) if binary else None
            data = None if binary else [t.decode() for t in texts]
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if raw is not None:
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = data
        outputs.append(entry)
    head: dict[str, Any] = {"model_name": MODEL_NAME, "model_version": _version(info), "outputs": outputs}
    if req.id is not None:
        head["id"] = req.id
    header = orjson.dumps(head)
    if not blobs:
        return header, {"Content-Type": "application/json"}
    return header + b"".join(blobs), {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}


# ---------------------------------------------------------------- routes


def make_router(predict: Callable[[Request, list[PlanetRequest], float | None, bool], Awaitable[list[PlanetResult]]],
                ) -> APIRouter:
    """The OIP routes; ``predict(request, planets, deadline_s, is_list)`` is the app's shared path
    to the service (deadline None: the configured one). The app's state (``request.app.state.server``)
    provides ``service``, ``settings``, ``version`` and ``startup_error``."""
    router = APIRouter()

    def server(request: Request) -> Any:
        return request.app.state.server

    def check_model(s: Any, model_name: str, version: str | None) -> dict[str, Any]:
        if model_name != MODEL_NAME:
            raise NotFound(f"model {model_name!r} is not served; this server serves {MODEL_NAME!r}", "model_name")
        info = s.model_info()
        if version is not None and version != _version(info):
            raise NotFound(f"model {MODEL_NAME} has no version {version!r}; served: {_version(info)}", "version")
        return info

    def ready_or_raise(s: Any) -> None:
        if s.service is not None and s.service.draining:
            raise Draining("the server is shutting down")
        if s.service is None or not s.service.ready:
            raise NotReady(s.not_ready_reason())

    @router.get("/v2")
    async def v2_metadata(request: Request) -> Response:
        return _json(server_metadata(server(request).version))

    @router.get("/v2/health/live")
    async def live(request: Request) -> Response:
        s = server(request)
        if s.startup_error is not None:
            raise NotReady(s.not_ready_reason())
        return _json({"live": True})

    @router.get("/v2/health/ready")
    async def ready(request: Request) -> Response:
        ready_or_raise(server(request))
        return _json({"ready": True})

    @router.get("/v2/models/{model_name}")
    @router.get("/v2/models/{model_name}/versions/{version}")
    async def metadata(request: Request, model_name: str, version: str | None = None) -> Response:
        s = server(request)
        ready_or_raise(s)
        return _json(model_metadata(check_model(s, model_name, version)))

    @router.get("/v2/models/{model_name}/ready")
    @router.get("/v2/models/{model_name}/versions/{version}/ready")
    async def model_ready(request: Request, model_name: str, version: str | None = None) -> Response:
        s = server(request)
        if model_name != MODEL_NAME:
            raise NotFound(f"model {model_name!r} is not served; this server serves {MODEL_NAME!r}", "model_name")
        ready_or_raise(s)
        check_model(s, model_name, version)
        return _json({"name": MODEL_NAME, "ready": True})

    @router.post("/v2/models/{model_name}/infer")
    @router.post("/v2/models/{model_name}/versions/{version}/infer")
    async def infer(request: Request, model_name: str, version: str | None = None) -> Response:
        s = server(request)
        ready_or_raise(s)
        info = check_model(s, model_name, version)
        body = await read_body(request, s.settings.max_body_bytes)
        req = parse_infer(body, request.headers.get(HEADER_LENGTH), s.max_planets)
        results = await predict(request, req.planets, req.deadline_s, len(req.planets) > 1)
        payload, headers = encode_response(req, results, info)
        return Response(payload, headers=headers)

    return router


def _json(doc: dict[str, Any]) -> Response:
    return Response(orjson.dumps(doc), media_type="application/json")
