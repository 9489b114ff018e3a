"""The artifact format (DESIGN.md): ``manifest.json``, golden planets, and the tamper check.

Export writes it, serve reads it; nothing here imports export or serve.

An artifact directory (written by ``spectramind-export``)::

    NAME/
      manifest.json                 this module: what the artifact is (below)
      model.torchscript.pt          export.torchscript (if requested)
      model.onnx                    export.onnx_export (if requested)
      golden.npz                    golden input/output planets (below)
      triton/spectramind/...        export.triton_repo (if requested)

``manifest.json`` keys (``FORMAT_VERSION`` 1):

- ``format_version``, ``name``, ``created`` (UTC, ISO 8601);
- ``checkpoint``: path, sha256 and provenance (git sha, config hash, phase/epoch/step, best metric);
- ``model_config``: the checkpoint's ``model_config`` (the model is rebuilt from it, never YAML);
- ``bins``: the 283-bin grid (``wavelength_um``, FGS1 band);
- ``features``: ``version`` (``FEATURES_VERSION``) and ``options`` (the checkpoint's
  ``meta["features"]``): how light curves become the inputs;
- ``inputs`` / ``outputs``: name, shape (``"batch"`` is the dynamic axis), dtype;
- ``formats``: per exported format its file(s) and facts (ops in the TorchScript graph, ONNX
  opset and node count, Triton repository path);
- ``calibration``: method (``temperature+COREL``, ``temperature``, ``COREL`` or ``none``: what
  the checkpoint enables), coverage target, and the fit report's numbers when present;
- ``batch_buckets``: the batch sizes the artifact was checked at (the server warms up at each);
- ``golden``: file, number of planets, planet ids, source, and the device of the reference outputs;
- ``parity``: the table of :mod:`export.parity`;
- ``libraries``: versions of torch, onnx, onnxruntime(-gpu), onnxscript, triton, numpy, spectramind
  (null when not installed) and the spectramind git sha of the checkpoint;
- ``files``: relative path -> {sha256, bytes} of every file of the artifact but the manifest;
- ``manifest_sha256``: sha256 of the canonical JSON of all the keys above, so an edit of the
  manifest itself is detected too.

Golden planets (``golden.npz``: ``planet_ids`` (G,), ``fgs1`` (G, T, 6), ``airs_nodes`` (G, 283, 8)
float32; ``mu``, ``sigma`` (G, 283) float32, the eager calibrated outputs on the CPU, the
reference numerics). With ``--data LCDIR`` they are the checkpoint's validation planets
(``meta["val_planets"]``, in that order) found in LCDIR, featurised with
:func:`spectramind.data.features.planet_inputs` and the checkpoint's feature options. Without
data they are synthetic (:func:`synthetic_inputs`): deterministic (seed 0) inputs of the
checkpoint's ``fgs1_steps``, shaped like real features (a transit dip in FGS1 flux, a spectrum of
O(1) depths in 1e-2 units, the exact wavelength column); planet ids are -1, -2, ...

:func:`verify_artifact` is what the server calls before loading: it recomputes every hash and
raises ValueError naming the first file that differs, is missing, or is not in the manifest.

Shapes: see golden planets above.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from spectramind.bins import FGS1_BAND_UM, N_BINS, wavelengths

__all__ = [
    "FORMAT_VERSION",
    "GOLDEN",
    "MANIFEST",
    "build_manifest",
    "calibration_summary",
    "data_inputs",
    "file_hashes",
    "library_versions",
    "read_golden",
    "sha256_file",
    "synthetic_inputs",
    "verify_artifact",
    "write_golden",
    "write_manifest",
]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
GOLDEN = "golden.npz"
_CHUNK = 1 << 20
_LIBRARIES = ("torch", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript", "triton", "numpy", "spectramind")


# ---------------------------------------------------------------- hashes


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_hashes(root: str | Path) -> dict[str, dict[str, Any]]:
    """relative POSIX path -> {"sha256", "bytes"} of every file under ``root`` except the manifest."""
    root = Path(root)
    return {rel: {"sha256": sha256_file(root / rel), "bytes": (root / rel).stat().st_size}
            for rel in sorted(_listed_names(root))}


def _canonical_sha256(body: Mapping[str, Any]) -> str:
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def write_manifest(root: str | Path, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Hash every file under ``root``, then write ``root/manifest.json``; returns what was written."""
    root = Path(root)
    # Round trip through JSON first so the self-hash is of exactly what a reader will parse.
    body = json.loads(json.dumps({k: v for k, v in manifest.items() if k != "manifest_sha256"}, default=str))
    body["files"] = file_hashes(root)
    body["manifest_sha256"] = _canonical_sha256(body)
    (root / MANIFEST).write_text(json.dumps(body, indent=2, sort_keys=False) + "\n")
    return body


def verify_artifact(root: str | Path) -> dict[str, Any]:
    """The manifest of the artifact ``root`` after checking every hash it records.

    Raises ValueError naming the first culprit: a missing or unparsable manifest, an unknown
    format version, an edited manifest, a listed file that is missing or whose sha256 (or size)
    differs, a file present in the directory but not listed.
    """
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise ValueError(f"artifact {root}: {MANIFEST} is missing")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"artifact {root}: {MANIFEST} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ValueError(f"artifact {root}: {MANIFEST} is not a JSON object")
    if manifest.get("format_version") != FORMAT_VERSION:
        got = manifest.get("format_version")
        raise ValueError(f"artifact {root}: {MANIFEST} format_version is {got!r}, this code reads {FORMAT_VERSION}")
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    if manifest.get("manifest_sha256") != _canonical_sha256(body):
        raise ValueError(f"artifact {root}: {MANIFEST} was modified (its manifest_sha256 does not match its content)")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ValueError(f"artifact {root}: {MANIFEST} lists no files")
    for rel, entry in sorted(files.items()):
        file = root / rel
        if not file.is_file():
            raise ValueError(f"artifact {root}: {rel} is missing")
        if file.stat().st_size != entry.get("bytes") or sha256_file(file) != entry.get("sha256"):
            raise ValueError(f"artifact {root}: {rel} does not match its sha256 in {MANIFEST}")
    extra = sorted(_listed_names(root) - set(files))
    if extra:
        raise ValueError(f"artifact {root}: {extra[0]} is not listed in {MANIFEST}")
    return manifest


def _listed_names(root: Path) -> set[str]:
    """Relative POSIX paths of every file under ``root`` except the manifest (no hashing)."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {MANIFEST}


# ---------------------------------------------------------------- golden planets


def synthetic_inputs(n: int, fgs1_steps: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic feature-like inputs of ``n`` planets (module docstring).

    Shapes: returns planet_ids (n,) int64 (-1, -2, ...), fgs1 (n, fgs1_steps, 6) and
    airs_nodes (n, 283, 8) float32.
    """
    if n < 1 or fgs1_steps < 2:
        raise ValueError(f"synthetic_inputs: need n >= 1 and fgs1_steps >= 2, got n={n}, fgs1_steps={fgs1_steps}")
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, fgs1_steps)
    wl = wavelengths()
    wl_col = 2 * (wl - wl.min()) / (wl.max() - wl.min()) - 1
    fgs1 = np.zeros((n, fgs1_steps, 6))
    nodes = np.zeros((n, N_BINS, 8))
    for i in range(n):
        depth = rng.uniform(0.5, 2.5)  # 1e-2 (Rp/Rs)^2, the range of the labels
        half = rng.uniform(0.15, 0.3)  # half transit duration, in units of the visit
        in_transit = np.clip((half - np.abs(t - 0.5)) / 0.05, 0.0, 1.0)  # trapezoid: ingress/egress
        fgs1[i, :, 0] = -depth * in_transit + 0.01 * rng.standard_normal(fgs1_steps)
        fgs1[i, :, 1] = t
        fgs1[i, :, 2:4] = 0.02 * rng.standard_normal((fgs1_steps, 2))
        fgs1[i, :, 4:6] = 0.005 * np.abs(rng.standard_normal((fgs1_steps, 2)))
        feature = 0.02 * np.exp(-0.5 * ((wl - rng.uniform(1.5, 3.5)) / 0.15) ** 2)  # a 200 ppm band
        spectrum = depth + feature + 0.005 * rng.standard_normal(N_BINS)
        nodes[i, :, 0] = spectrum
        nodes[i, :, 1] = rng.uniform(0.2, 0.6) + 0.1 * rng.standard_normal(N_BINS)
        nodes[i, :, 2] = np.clip((spectrum - spectrum[1:].mean()) * 100.0, -50, 50)
        nodes[i, :, 3] = spectrum * 1.08
        nodes[i, :, 4] = 0.5 + 0.1 * rng.standard_normal(N_BINS)
        nodes[i, :, 5] = 0.3 * rng.standard_normal(N_BINS)
        nodes[i, :, 6] = rng.uniform(0.0, 0.2, N_BINS)
        nodes[i, :, 7] = wl_col
    ids = -np.arange(1, n + 1, dtype=np.int64)
    return ids, fgs1.astype(np.float32), nodes.astype(np.float32)


def data_inputs(lcdir: str | Path, meta: Mapping[str, Any], n: int, source: object) -> tuple[np.ndarray, ...]:
    """Features of the first ``n`` of the checkpoint's validation planets (``meta["val_planets"]``)
    found in ``lcdir`` (split train, then test), built with the checkpoint's feature options.

    Shapes: returns planet_ids (g,), fgs1 (g, T, 6), airs_nodes (g, 283, 8) with 1 <= g <= n.
    Raises ValueError naming ``lcdir`` when it holds none of them (or ``source`` when the
    checkpoint lists no validation planets).
    """
    from spectramind.data.adc import read_star_info
    from spectramind.data.errors import PlanetDataError
    from spectramind.data.features import options_from_meta, planet_inputs
    from spectramind.data.lightcurves import LightCurves, list_lightcurves

    lcdir = Path(lcdir)
    if not lcdir.is_dir():
        raise ValueError(f"--data {lcdir} is not a directory")
    wanted = [int(p) for p in meta.get("val_planets") or []]
    if not wanted:
        raise ValueError(f"checkpoint {source} lists no validation planets (meta['val_planets']) for --data")
    options = options_from_meta(meta, source)
    ids, fgs1, nodes = [], [], []
    for split in ("train", "test"):
        planets = list_lightcurves(lcdir, split)
        stars = read_star_info(lcdir, split) if (lcdir / f"{split}_star_info.csv").is_file() else None
        for pid in wanted:
            if len(ids) >= n or pid in ids or pid not in planets:
                continue
            star = stars.loc[pid].to_dict() if stars is not None and pid in stars.index else None
            try:
                x = planet_inputs([LightCurves.load(p) for p in planets[pid]], star, options)
            except PlanetDataError as exc:
                raise ValueError(f"--data {lcdir}: golden planet {pid}: {exc}") from exc
            ids.append(pid)
            fgs1.append(x.fgs1)
            nodes.append(x.airs_nodes)
    if not ids:
        raise ValueError(f"--data {lcdir} holds none of the checkpoint's validation planets {wanted[:5]}")
    return np.array(ids, dtype=np.int64), np.stack(fgs1), np.stack(nodes)


def write_golden(root: str | Path, planet_ids: np.ndarray, fgs1: np.ndarray, airs_nodes: np.ndarray,
                 mu: np.ndarray, sigma: np.ndarray) -> Path:
    """Write ``root/golden.npz`` (module docstring); returns its path."""
    path = Path(root) / GOLDEN
    arrays = {
        "planet_ids": np.asarray(planet_ids, dtype=np.int64),
        "fgs1": np.asarray(fgs1, dtype=np.float32),
        "airs_nodes": np.asarray(airs_nodes, dtype=np.float32),
        "mu": np.asarray(mu, dtype=np.float32),
        "sigma": np.asarray(sigma, dtype=np.float32),
    }
    g = len(arrays["planet_ids"])
    for name, arr in arrays.items():
        if arr.shape[0] != g:
            raise ValueError(f"golden: {name} has {arr.shape[0]} planets, planet_ids has {g}")
    np.savez(path, **arrays)
    return path


def read_golden(root: str | Path) -> dict[str, np.ndarray]:
    """The arrays of ``root/golden.npz`` (verify the artifact first)."""
    path = Path(root) / GOLDEN
    if not path.is_file():
        raise ValueError(f"artifact {root}: {GOLDEN} is missing")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# ---------------------------------------------------------------- manifest content


def library_versions(git_sha: str | None) -> dict[str, str | None]:
    """Installed versions of the libraries an artifact depends on (null when absent), plus the git sha."""
    out: dict[str, str | None] = {}
    for name in _LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["spectramind_git_sha"] = git_sha
    return out


def calibration_summary(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """Method, coverage target and fit report of a checkpoint's calibration (baked into the artifact)."""
    state = ckpt.get("calibration") or {}
    temperature = bool((state.get("temperature") or {}).get("enable"))
    corel = bool((state.get("corel") or {}).get("enable"))
    method = "+".join(name for name, on in (("temperature", temperature), ("COREL", corel)) if on) or "none"
    meta = ckpt.get("meta") or {}
    train_cal = (((meta.get("config") or {}).get("train") or {}).get("calibration") or {}).get("corel") or {}
    model_cal = ((ckpt.get("model_config") or {}).get("model") or {}).get("calibration") or {}
    target = train_cal.get("coverage_target", (model_cal.get("corel") or {}).get("coverage_target"))
    report = {k: v for k, v in (state.get("report") or {}).items() if k != "holdout_index"}
    summary: dict[str, Any] = {
        "method": method,
        "baked_in": True,
        "coverage_target": float(target) if target is not None else None,
        "report": report or None,
    }
    if temperature:
        t = state["temperature"]
        log_bin = np.asarray(t.get("log_t_bin") or [0.0], dtype=np.float64)
        scale = np.exp(float(t.get("log_t_global", 0.0)) + log_bin)
        summary["temperature"] = {"global": math.exp(float(t.get("log_t_global", 0.0))),
                                  "bin_min": float(scale.min()), "bin_max": float(scale.max())}
    if corel:
        summary["corel"] = dict(state["corel"].get("config") or {})
    return summary


def build_manifest(
    *,
    name: str,
    ckpt: Mapping[str, Any],
    ckpt_path: str | Path,
    fgs1_steps: int,
    formats: Mapping[str, Any],
    batch_buckets: Sequence[int],
    golden: Mapping[str, Any],
    parity: Mapping[str, Any],
) -> dict[str, Any]:
    """Every key of the manifest but ``files`` and ``manifest_sha256`` (added by :func:`write_manifest`)."""
    meta = ckpt.get("meta") or {}
    provenance = {k: meta.get(k) for k in ("git_sha", "config_hash", "phase", "epoch", "step", "best_metric",
                                             "best_value")}
    return {
        "format_version": FORMAT_VERSION,
        "name": name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": {"path": str(Path(ckpt_path).resolve()), "sha256": sha256_file(ckpt_path), **provenance},
        "model_config": ckpt["model_config"],
        "bins": {"n_bins": N_BINS, "wavelength_um": [float(w) for w in wavelengths()],
                 "fgs1_band_um": list(FGS1_BAND_UM)},
        "features": {"version": meta.get("features_version"), "options": meta.get("features")},
        "inputs": [
            {"name": "fgs1", "shape": ["batch", int(fgs1_steps), 6], "dtype": "float32"},
            {"name": "airs_nodes", "shape": ["batch", N_BINS, 8], "dtype": "float32"},
        ],
        "outputs": [
            {"name": "mu", "shape": ["batch", N_BINS], "dtype": "float32", "units": "(Rp/Rs)^2", "calibrated": True},
            {"name": "sigma", "shape": ["batch", N_BINS], "dtype": "float32", "units": "(Rp/Rs)^2",
             "calibrated": True},
        ],
        "formats": dict(formats),
        "calibration": calibration_summary(ckpt),
        "batch_buckets": [int(b) for b in batch_buckets],
        "golden": dict(golden),
        "parity": dict(parity),
        "libraries": library_versions(meta.get("git_sha")),
    }
