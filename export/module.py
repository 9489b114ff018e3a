"""The module that gets exported: a checkpoint's model with its post-hoc calibration baked in.

:class:`ExportModule` wraps :class:`spectramind.model.calibration.CalibratedV50` (the network,
then temperature scaling and COREL on sigma) and returns only what the artifact serves, the
calibrated ``(mu, sigma)`` as a plain tuple, so tracers see two outputs and no named tuple.

:func:`load_for_export` is the only way export reads a checkpoint: ``torch.load`` with
``weights_only=True`` (never a pickle that can run code), the model rebuilt from the
checkpoint's ``model_config`` (never from training YAML), the calibrator from its
``calibration`` entry. Every way a checkpoint can be unusable is a ``ValueError`` whose
one-line message names the file and the cause:

- the file does not exist;
- it is not a readable torch checkpoint (corrupt, truncated, not a zip archive);
- ``weights_only`` loading refuses it (it pickles Python objects, e.g. a custom class);
- it lacks one of the keys ``model``, ``model_config``, ``calibration``, ``meta``;
- its ``model_config`` does not build a model of this code, or its weights do not fit that
  model (the config does not match the code);
- its calibration entry is malformed;
- its features were built by another ``FEATURES_VERSION`` or it carries no feature options
  (the artifact's inputs would not be the ones the model learned from).

Shapes:
    - **input:** fgs1 (B, T, 6), airs_nodes (B, 283, 8) float32 (:mod:`spectramind.data.features`)
    - **output:** mu, sigma (B, 283) calibrated, in (Rp/Rs)^2
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from spectramind.data.features import FEATURES_VERSION, options_from_meta
from spectramind.model.calibration import CalibratedV50, Calibrator
from spectramind.model.v50 import CHECKPOINT_KEYS, SpectraMindV50

__all__ = ["ExportModule", "load_checkpoint_dict", "load_for_export", "one_line"]

_MAX_MESSAGE = 300


def one_line(exc: BaseException | str) -> str:
    """The first non-empty line of an error message, shortened: torch's messages run to paragraphs."""
    fallback = "" if isinstance(exc, str) else type(exc).__name__
    line = next((s.strip() for s in str(exc).splitlines() if s.strip()), fallback)
    return line if len(line) <= _MAX_MESSAGE else line[: _MAX_MESSAGE - 3] + "..."


class ExportModule(nn.Module):
    """``CalibratedV50`` in eval mode whose forward returns the calibrated ``(mu, sigma)`` only.

    Shapes: fgs1 (B, T, 6), airs_nodes (B, 283, 8) -> mu, sigma (B, 283).
    """

    def __init__(self, calibrated: CalibratedV50) -> None:
        super().__init__()
        self.calibrated = calibrated
        self.eval()

    @property
    def model(self) -> SpectraMindV50:
        return self.calibrated.model

    def forward(self, fgs1: Tensor, airs_nodes: Tensor) -> tuple[Tensor, Tensor]:
        out = self.calibrated(fgs1, airs_nodes)
        return out.mu, out.sigma


def _unpickling_cause(exc: BaseException) -> tuple[bool, str]:
    """(refused, cause) of a weights_only UnpicklingError: refused when a Python global was rejected."""
    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return True, f"it pickles the Python object {found.group(1)}"
    detail = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", text, re.S)
    return False, one_line(detail.group(1)) if detail else one_line(exc)


def load_checkpoint_dict(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict of ``path``, read with ``torch.load(weights_only=True)`` on the CPU.

    Raises ValueError (one line, naming ``path``) for a missing, unreadable or refused file, or a
    file without the checkpoint keys.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  a damaged file makes the unpickler raise anything (IndexError, ...)
        if isinstance(exc, pickle.UnpicklingError):
            refused, cause = _unpickling_cause(exc)
            if refused:
                raise ValueError(f"checkpoint {path} is refused by weights_only loading: {cause}") from exc
        else:
            cause = f"{type(exc).__name__}: {one_line(exc).split('. ')[0]}"
        with open(path, "rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"  # torch.save writes a zip archive
        kind = "corrupt or truncated" if zipped else "not a torch checkpoint (not a zip archive)"
        raise ValueError(f"checkpoint {path} is {kind}: {cause}") from exc
    if not isinstance(ckpt, dict):
        raise ValueError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a checkpoint dict")
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint {path} lacks the key(s) {', '.join(missing)}")
    return ckpt


def load_for_export(ckpt_path: str | Path) -> tuple[ExportModule, dict[str, Any]]:
    """The eval-mode :class:`ExportModule` of a checkpoint (on the CPU) and the checkpoint dict.

    Raises ValueError with a one-line message naming the file and the cause (module docstring).
    """
    path = Path(ckpt_path)
    ckpt = load_checkpoint_dict(path)
    meta = ckpt["meta"] if isinstance(ckpt["meta"], dict) else {}
    version = meta.get("features_version")
    if version != FEATURES_VERSION:
        raise ValueError(
            f"checkpoint {path} was trained on features version {version}, this code builds version {FEATURES_VERSION}"
        )
    try:
        options_from_meta(meta, path)
    except ValueError as exc:
        raise ValueError(one_line(exc)) from exc
    try:
        model = SpectraMindV50(ckpt["model_config"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        cause = f"missing key {exc}" if isinstance(exc, KeyError) else one_line(exc)
        raise ValueError(f"checkpoint {path}: model_config does not build a model of this code: {cause}") from exc
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ValueError(f"checkpoint {path}: weights do not match its model_config: {_state_dict_cause(exc)}") from exc
    try:
        calibrator = Calibrator.from_state(ckpt["calibration"], ckpt["model_config"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        cause = f"missing key {exc}" if isinstance(exc, KeyError) else one_line(exc)
        raise ValueError(f"checkpoint {path}: bad calibration entry: {cause}") from exc
    return ExportModule(CalibratedV50(model, calibrator)), ckpt


def _state_dict_cause(exc: BaseException) -> str:
    """load_state_dict's multi-line report in one line: the first missing/unexpected/mismatched key."""
    text = str(exc)
    parts = []
    for label in ("Missing key(s)", "Unexpected key(s)"):
        found = re.search(rf"{re.escape(label)} in state_dict: ([^.]+?)(?:\.\s|$)", text, re.S)
        if found:
            keys = [k.strip().strip('"') for k in found.group(1).split(",")]
            more = f" (+{len(keys) - 1} more)" if len(keys) > 1 else ""
            parts.append(f"{label.split()[0].lower()} {keys[0]}{more}")
    found = re.search(r"size mismatch for ([\w.]+): (.+?)(?:\n|$)", text)
    if found:
        parts.append(f"size mismatch for {found.group(1)}: {found.group(2).strip()}")
    return "; ".join(parts) if parts else one_line(exc)
