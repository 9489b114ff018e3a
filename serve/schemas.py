"""Request bodies -> :class:`serve.service.PlanetRequest`: parse once, validate as arrays.

A ``POST /predict`` body is one of

- JSON (``application/json``), parsed once with orjson; every series becomes one numpy array
  (never a model object per float) and is checked as an array::

      {"planet_id": 7,
       "fgs1": {"flux": [...T_f], "time_h"?: [...T_f], "centroid"?: [[x, y], ...T_f],
                "jitter"?: [[x, y], ...T_f]},
       "airs": {"flux": [[...T_a] x 282], "time_h"?: [...T_a]},
       "star"?: {"Rs", "Ms", "Ts", "Mp", "e", "P", "sma", "i"},
       "explain"?: {"attention": bool, "shap": bool}}

  or ``{"planets": [<that>, ...]}`` for several planets in one request;
- an npz archive (``application/x-npz`` or ``application/octet-stream``) with the arrays
  ``fgs1_flux`` (T_f,) or (B, T_f), ``airs_flux`` (282, T_a) or (B, 282, T_a) and optionally
  ``fgs1_time_h``, ``airs_time_h``, ``fgs1_centroid``, ``fgs1_jitter`` (same leading axes) and
  ``planet_id`` (scalar or (B,)); never unpickled.

Violations raise :class:`serve.service.RequestInvalid` (422) naming the field path, e.g.
``airs.flux[17][3]`` or ``planets[2].fgs1.time_h``: wrong type or shape, NaN/Inf (JSON ``NaN``
literals and ``null`` included), the wrong number of AIRS series, too few or too many time
bins, time that does not increase strictly, negative or absurd flux, a non-positive median
flux, unknown keys, impossible star parameters. A body that is not JSON / npz at all raises
:class:`serve.errors.MalformedBody` (400); one over the size limit :class:`PayloadTooLarge`
(413), before it is read in full.

The limits (time bins, absurd flux, star keys) are :mod:`serve.features`' constants, so this
early check and the service's own agree.

Shapes: PlanetRequest.fgs1_flux (T_f,), airs_flux (282, T_a), float64.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson
from starlette.requests import Request

from serve.errors import MalformedBody, PayloadTooLarge, UnsupportedMedia
from serve.features import AIRS_MAX_STEPS, AIRS_MIN_STEPS, FGS1_MAX_STEPS, FGS1_MIN_STEPS, FLUX_ABSURD, STAR_KEYS
from serve.service import PlanetRequest, RequestInvalid
from spectramind.bins import N_AIRS

__all__ = [
    "MAX_PLANETS",
    "NPZ_TYPES",
    "loads_json",
    "parse_predict",
    "planet_request",
    "read_body",
]

MAX_PLANETS = 256
NPZ_TYPES = ("application/x-npz", "application/octet-stream")
_PLANET_KEYS = {"planet_id", "fgs1", "airs", "star", "explain"}
_FGS1_KEYS = {"flux", "time_h", "centroid", "jitter"}
_AIRS_KEYS = {"flux", "time_h"}
_EXPLAIN_KEYS = {"attention", "shap"}
_NPZ_KEYS = {"planet_id", "fgs1_flux", "fgs1_time_h", "fgs1_centroid", "fgs1_jitter", "airs_flux", "airs_time_h"}


# ---------------------------------------------------------------- body


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes before reading it all: on the
    declared Content-Length first, then on the bytes actually streamed (chunked bodies, liars)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise MalformedBody(f"Content-Length is not an integer: {declared!r}", "Content-Length") from None
        if size > limit:
            raise PayloadTooLarge(f"body of {size} bytes is over the limit of {limit} bytes "
                                  "(SPECTRAMIND_MAX_BODY_BYTES)")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes (SPECTRAMIND_MAX_BODY_BYTES)")
        chunks.append(chunk)
    return b"".join(chunks)


def loads_json(body: bytes) -> Any:
    """Parse JSON once with orjson. orjson refuses the ``NaN``/``Infinity`` literals that
    Python's json writes; those bodies are re-read leniently so the NaN is reported as a 422
    naming its field rather than as a malformed body."""
    if not body:
        raise MalformedBody("the request body is empty")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise MalformedBody(f"the body is not valid JSON: {exc}") from None


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "application/json").split(";")[0].strip().lower()


def parse_predict(body: bytes, content_type: str, max_planets: int = MAX_PLANETS,
                  max_bytes: int | None = None) -> tuple[list[PlanetRequest], bool]:
    """The planets of a /predict body and whether the body was a list (``{"planets": [...]}`` or a
    batched npz); raises MalformedBody, UnsupportedMedia or RequestInvalid."""
    if content_type in NPZ_TYPES:
        return _parse_npz(body, max_planets, max_bytes if max_bytes is not None else 8 * len(body) + (1 << 20))
    if content_type not in ("application/json", "text/json", ""):
        raise UnsupportedMedia(f"Content-Type {content_type!r} is not read here; send application/json or "
                               f"application/x-npz", "Content-Type")
    doc = loads_json(body)
    if not isinstance(doc, dict):
        raise RequestInvalid(f"the body must be a JSON object, got {_kind(doc)}", "$")
    if "planets" in doc:
        extra = set(doc) - {"planets"}
        if extra:
            raise RequestInvalid(f"a list request holds only 'planets', got also {sorted(extra)}", sorted(extra)[0])
        planets = doc["planets"]
        if not isinstance(planets, list) or not planets:
            raise RequestInvalid("planets must be a non-empty list of planet objects", "planets")
        if len(planets) > max_planets:
            raise RequestInvalid(f"planets holds {len(planets)} planets, at most {max_planets} per request", "planets")
        return [_planet_from_json(p, f"planets[{i}].") for i, p in enumerate(planets)], True
    return [_planet_from_json(doc, "")], False


# ---------------------------------------------------------------- JSON planet


def _planet_from_json(doc: Any, prefix: str) -> PlanetRequest:
    if not isinstance(doc, dict):
        raise RequestInvalid(f"a planet must be a JSON object, got {_kind(doc)}", prefix.rstrip(".") or "$")
    _no_unknown(doc, _PLANET_KEYS, prefix)
    fgs1 = _required_object(doc, "fgs1", prefix)
    airs = _required_object(doc, "airs", prefix)
    _no_unknown(fgs1, _FGS1_KEYS, prefix + "fgs1.")
    _no_unknown(airs, _AIRS_KEYS, prefix + "airs.")
    for obj, name in ((fgs1, "fgs1"), (airs, "airs")):
        if "flux" not in obj:
            raise RequestInvalid(f"{prefix}{name}.flux is required", f"{prefix}{name}.flux")
    explain = doc.get("explain") or {}
    if not isinstance(explain, dict):
        raise RequestInvalid(f"explain must be an object, got {_kind(explain)}", prefix + "explain")
    _no_unknown(explain, _EXPLAIN_KEYS, prefix + "explain.")
    flags = {}
    for key in ("attention", "shap"):
        value = explain.get(key, False)
        if not isinstance(value, bool):
            raise RequestInvalid(f"explain.{key} must be true or false, got {_kind(value)}", f"{prefix}explain.{key}")
        flags[key] = value
    if "planet_id" not in doc:
        raise RequestInvalid("planet_id is required", prefix + "planet_id")
    return planet_request(
        prefix=prefix, planet_id=doc["planet_id"], fgs1_flux=fgs1["flux"], airs_flux=airs["flux"],
        fgs1_time_h=fgs1.get("time_h"), fgs1_centroid=fgs1.get("centroid"), fgs1_jitter=fgs1.get("jitter"),
        airs_time_h=airs.get("time_h"), star=doc.get("star"), explain_attention=flags["attention"],
        explain_shap=flags["shap"], names=_JSON_NAMES)


_JSON_NAMES = {"fgs1_flux": "fgs1.flux", "airs_flux": "airs.flux", "fgs1_time_h": "fgs1.time_h",
               "fgs1_centroid": "fgs1.centroid", "fgs1_jitter": "fgs1.jitter", "airs_time_h": "airs.time_h",
               "planet_id": "planet_id", "star": "star"}


# ---------------------------------------------------------------- the checks, shared by every body


def planet_request(
    *,
    prefix: str,
    planet_id: Any,
    fgs1_flux: Any,
    airs_flux: Any,
    fgs1_time_h: Any = None,
    fgs1_centroid: Any = None,
    fgs1_jitter: Any = None,
    airs_time_h: Any = None,
    star: Any = None,
    explain_attention: bool = False,
    explain_shap: bool = False,
    names: Mapping[str, str] | None = None,
) -> PlanetRequest:
    """Validate one planet's arrays (lists or numpy) and build its PlanetRequest; ``names`` maps
    argument names to the field names of the body (``fgs1.flux`` for JSON, ``FGS1[2]`` for OIP),
    ``prefix`` is prepended to every field path."""
    names = names or {}

    def field(key: str) -> str:
        return prefix + names.get(key, key)

    pid = _planet_id(planet_id, field("planet_id"))
    f_flux = _flux(fgs1_flux, field("fgs1_flux"), 1, FGS1_MIN_STEPS, FGS1_MAX_STEPS)
    a_flux = _flux(airs_flux, field("airs_flux"), 2, AIRS_MIN_STEPS, AIRS_MAX_STEPS)
    t_f, t_a = f_flux.shape[0], a_flux.shape[1]
    return PlanetRequest(
        planet_id=pid,
        fgs1_flux=f_flux,
        fgs1_time_h=_time(fgs1_time_h, field("fgs1_time_h"), t_f, field("fgs1_flux")),
        fgs1_centroid=_pairs(fgs1_centroid, field("fgs1_centroid"), t_f, field("fgs1_flux")),
        fgs1_jitter=_pairs(fgs1_jitter, field("fgs1_jitter"), t_f, field("fgs1_flux")),
        airs_flux=a_flux,
        airs_time_h=_time(airs_time_h, field("airs_time_h"), t_a, field("airs_flux")),
        star=_star(star, field("star")),
        explain_attention=bool(explain_attention),
        explain_shap=bool(explain_shap),
    )


def _array(value: Any, path: str, ndim: int) -> np.ndarray:
    """``value`` as a float64 array of ``ndim`` dimensions, every element finite."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "fiu":
            raise RequestInvalid(f"{path} must hold numbers, got dtype {value.dtype}", path)
        arr = value.astype(np.float64, copy=False)
    else:
        if not isinstance(value, list):
            raise RequestInvalid(f"{path} must be an array of numbers, got {_kind(value)}", path)
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (ValueError, TypeError):
            raise RequestInvalid(f"{path} must be a rectangular array of numbers ({ndim}-D)", path) from None
    if arr.ndim != ndim:
        raise RequestInvalid(f"{path} must be {ndim}-D, got shape {arr.shape}", path)
    if not np.isfinite(arr).all():
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
        count = int((~np.isfinite(arr)).sum())
        where = path + "".join(f"[{i}]" for i in bad)
        raise RequestInvalid(f"{where} is {_describe(arr[bad])} ({count} non-finite values in {path}; "
                             f"NaN, Infinity and null are not allowed)", where)
    return arr


def _flux(value: Any, path: str, ndim: int, min_bins: int, max_bins: int) -> np.ndarray:
    arr = _array(value, path, ndim)
    if ndim == 2 and arr.shape[0] != N_AIRS:
        raise RequestInvalid(f"{path} must have {N_AIRS} rows (one series per AIRS bin), got {arr.shape[0]}", path)
    n = arr.shape[-1]
    if n < min_bins:
        raise RequestInvalid(f"{path} has {n} time bins, at least {min_bins} are needed for a transit fit", path)
    if n > max_bins:
        raise RequestInvalid(f"{path} has {n} time bins, at most {max_bins} (the reads of a 7.5 h visit)", path)
    low = arr.min()
    if low < 0:
        where = path + "".join(f"[{int(i)}]" for i in np.unravel_index(int(np.argmin(arr)), arr.shape))
        raise RequestInvalid(f"{where} is {low:g}: flux must be >= 0 (detector units per second)", where)
    high = arr.max()
    if high > FLUX_ABSURD:
        where = path + "".join(f"[{int(i)}]" for i in np.unravel_index(int(np.argmax(arr)), arr.shape))
        raise RequestInvalid(f"{where} is {high:g}: flux above {FLUX_ABSURD:g} is not a stellar signal", where)
    med = np.median(arr, axis=-1)
    if ndim == 1 and not med > 0:
        raise RequestInvalid(f"{path} has a median of {float(med):g}: the star must be seen (median > 0)", path)
    if ndim == 2 and not (med > 0).any():
        raise RequestInvalid(f"{path}: no AIRS series has a positive median flux", path)
    return arr


def _time(value: Any, path: str, n: int, flux_path: str) -> np.ndarray | None:
    if value is None:
        return None
    arr = _array(value, path, 1)
    if arr.shape[0] != n:
        raise RequestInvalid(f"{path} has {arr.shape[0]} values, {flux_path} has {n} time bins", path)
    steps = np.diff(arr)
    if (steps <= 0).any():
        i = int(np.argmax(steps <= 0)) + 1
        raise RequestInvalid(f"{path}[{i}] = {arr[i]:g} does not follow {arr[i - 1]:g}: time must increase "
                             f"strictly", f"{path}[{i}]")
    return arr


def _pairs(value: Any, path: str, n: int, flux_path: str) -> np.ndarray | None:
    if value is None:
        return None
    arr = _array(value, path, 2)
    if arr.shape != (n, 2):
        raise RequestInvalid(f"{path} must have shape ({n}, 2) (one [x, y] per {flux_path} bin), got {arr.shape}",
                             path)
    return arr


def _planet_id(value: Any, path: str) -> int:
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iu":
        value = int(value)
    if isinstance(value, np.integer):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestInvalid(f"{path} must be an integer, got {_kind(value)}", path)
    if not -(2**63) <= value < 2**63:
        raise RequestInvalid(f"{path} must fit in 64 bits, got {value}", path)
    return value


def _star(value: Any, path: str) -> dict[str, float] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RequestInvalid(f"{path} must be an object, got {_kind(value)}", path)
    out: dict[str, float] = {}
    for key, v in value.items():
        where = f"{path}.{key}"
        if key not in STAR_KEYS:
            raise RequestInvalid(f"{where} is not a star parameter; known: {', '.join(STAR_KEYS)}", where)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise RequestInvalid(f"{where} must be a finite number, got {v!r}", where)
        out[key] = float(v)
    rules = {"Rs": (0, None, "> 0 (solar radii)"), "Ms": (0, None, "> 0 (solar masses)"),
             "Ts": (0, None, "> 0 (K)"), "Mp": (0, None, "> 0"), "P": (0, None, "> 0 (days)"),
             "sma": (1, None, "> 1 (a/Rs: the orbit is outside the star)"), "i": (0, 90, "in (0, 90] (degrees)")}
    for key, (lo, hi, text) in rules.items():
        if key in out and not (out[key] > lo and (hi is None or out[key] <= hi)):
            raise RequestInvalid(f"{path}.{key} = {out[key]:g} must be {text}", f"{path}.{key}")
    if "e" in out and not 0 <= out["e"] < 1:
        raise RequestInvalid(f"{path}.e = {out['e']:g} must be in [0, 1) (a bound orbit)", f"{path}.e")
    return out


# ---------------------------------------------------------------- npz


def _parse_npz(body: bytes, max_planets: int, max_bytes: int) -> tuple[list[PlanetRequest], bool]:
    if not body:
        raise MalformedBody("the request body is empty")
    try:
        archive = zipfile.ZipFile(io.BytesIO(body))
        members = archive.infolist()
    except (zipfile.BadZipFile, ValueError) as exc:
        raise MalformedBody(f"the body is not an npz archive: {exc}") from None
    unpacked = sum(m.file_size for m in members)
    if unpacked > max_bytes:  # a small compressed body must not unpack into gigabytes
        raise PayloadTooLarge(f"the npz archive unpacks to {unpacked} bytes, over the limit of {max_bytes}")
    try:
        with np.load(io.BytesIO(body), allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise MalformedBody(f"the npz archive cannot be read (object arrays are refused): {exc}") from None
    unknown = sorted(set(arrays) - _NPZ_KEYS)
    if unknown:
        raise RequestInvalid(f"npz array {unknown[0]!r} is not read; known: {', '.join(sorted(_NPZ_KEYS))}", unknown[0])
    for key in ("fgs1_flux", "airs_flux"):
        if key not in arrays:
            raise RequestInvalid(f"npz array {key!r} is required", key)
    batched = arrays["fgs1_flux"].ndim == 2
    if batched:
        n = arrays["fgs1_flux"].shape[0]
        if n > max_planets:
            raise RequestInvalid(f"fgs1_flux holds {n} planets, at most {max_planets} per request", "fgs1_flux")
        lead = {"airs_flux": 3, "fgs1_time_h": 2, "airs_time_h": 2, "fgs1_centroid": 3, "fgs1_jitter": 3,
                "planet_id": 1}
        for key, ndim in lead.items():
            if key in arrays and (arrays[key].ndim != ndim or arrays[key].shape[0] != n):
                raise RequestInvalid(f"npz {key} must be {ndim}-D with {n} planets first (as fgs1_flux), "
                                     f"got shape {arrays[key].shape}", key)
        ids: Sequence[Any] = arrays["planet_id"] if "planet_id" in arrays else np.arange(n)
        return [
            planet_request(prefix=f"planets[{b}].", planet_id=ids[b],
                           **{k: arrays[k][b] for k in _NPZ_KEYS - {"planet_id"} if k in arrays})
            for b in range(n)
        ], True
    pid = arrays.get("planet_id", np.asarray(0))
    if pid.ndim != 0:
        raise RequestInvalid(f"npz planet_id must be a scalar for one planet, got shape {pid.shape}", "planet_id")
    return [planet_request(prefix="", planet_id=pid, **{k: arrays[k] for k in _NPZ_KEYS - {"planet_id"}
                                                         if k in arrays})], False


# ---------------------------------------------------------------- helpers


def _required_object(doc: Mapping[str, Any], key: str, prefix: str) -> dict:
    if key not in doc:
        raise RequestInvalid(f"{prefix}{key} is required", prefix + key)
    value = doc[key]
    if not isinstance(value, dict):
        raise RequestInvalid(f"{prefix}{key} must be an object, got {_kind(value)}", prefix + key)
    return value


def _no_unknown(doc: Mapping[str, Any], known: set[str], prefix: str) -> None:
    unknown = sorted(str(k) for k in set(doc) - known)
    if unknown:
        raise RequestInvalid(f"{prefix}{unknown[0]} is not a known field; known: {', '.join(sorted(known))}",
                             prefix + unknown[0])


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "an object"}.get(type(value), type(value).__name__)


def _describe(x: Any) -> str:
    x = float(x)
    return "NaN (or null)" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")
