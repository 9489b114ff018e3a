"""Typed option dataclasses built from config nodes: one way to coerce, check and report.

Every stage's options (simulate, calibrate, baseline, features) are dataclasses whose fields
are exactly the keys of their YAML file. YAML and command-line overrides hand over loosely
typed values, so fields are coerced to their annotation, range rules are checked, and an
unknown or bad key gets a ValueError naming ``section.key``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import fields
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")

_SCALARS = {"bool": bool, "int": int, "float": float, "str": str}


def coerce_fields(obj: Any, section: str) -> None:
    """Coerce bool/int/float/str fields of a dataclass instance to their annotation, in place."""
    for f in fields(obj):
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        if kind not in _SCALARS:
            continue
        value = getattr(obj, f.name)
        if kind == "bool":
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{section}.{f.name} must be true or false, got {value!r}")
            value = bool(value)
        elif kind == "int":
            try:
                whole = not isinstance(value, bool) and float(value).is_integer()
            except (TypeError, ValueError):
                whole = False
            if not whole:
                raise ValueError(f"{section}.{f.name} must be an integer, got {value!r}")
            value = int(float(value))
        elif kind == "float":
            try:
                value = float(value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{section}.{f.name} must be a number, got {value!r}") from exc
        else:
            value = str(value)
        object.__setattr__(obj, f.name, value)


def check_rules(section: str, obj: Any, rules: Iterable[tuple[str, bool, str]]) -> None:
    """Raise ValueError for the first (field, ok, rule) whose ``ok`` is false."""
    for name, ok, rule in rules:
        if not ok:
            raise ValueError(f"{section}.{name} must be {rule}, got {getattr(obj, name)!r}")


def options_from(cls: type[T], mapping: Mapping[str, Any] | None, section: str, **given: Any) -> T:
    """Build ``cls`` from a config mapping; keyword values that are not None win over it."""
    values = dict(mapping or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{section}: unknown option {unknown[0]!r}; known: {', '.join(sorted(known))}")
    values.update({k: v for k, v in given.items() if v is not None})
    return cls(**values)
