"""Hydra configuration: compose ``configs/config.yaml`` with overrides, hash it, split argv.

Every stage reads its configuration through :func:`compose`, so a preset or an override means
the same thing to ``spectramind train``, a sweep and a test. The composed tree is::

    model           model/<preset>.yaml          (model=base|small|medium|large)
    train           train/<preset>.yaml          (train=base|local|kaggle|fast_smoke|ablation|calibration)
    symbolic        model/symbolic_profiles.yaml
    explainability  model/explainability.yaml
    presets         fusion (model/fusion_presets.yaml), decoders (model/decoder_presets.yaml)
    data            data/paths.yaml + binning, simulate, calibrate, baseline
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

__all__ = ["CONFIG_DIR", "compose", "config_hash", "split_overrides", "to_container"]

CONFIG_DIR: Path = Path(__file__).resolve().parents[1] / "configs"

# key=value, +key=value, ++key=value, ~key[=value]; keys are dotted paths or group/option[@package].
_OVERRIDE = re.compile(
    r"""^(?:
        (?:\+\+|\+)?{key}=.*
      | ~{key}(?:=.*)?
    )$""".format(key=r"[A-Za-z_][\w\-]*(?:[./][\w\-]+)*(?:@[\w\-.]*)?"),
    re.VERBOSE | re.DOTALL,
)


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` with Hydra overrides and resolve every interpolation.

    Safe to call any number of times in one process: the global Hydra state is cleared first.
    Raises ``ValueError`` naming the offending override when an override does not parse,
    selects a preset that does not exist, or sets a key that is not in the config.
    """
    overrides = list(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR), job_name="spectramind"):
            cfg = hydra_compose(config_name=config_name, overrides=overrides)
    except HydraException as exc:
        raise ValueError(_explain(exc, overrides, config_name)) from exc
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as exc:
        raise ValueError(f"config {config_name!r} with overrides {overrides} does not resolve: {exc}") from exc
    return cfg


def config_hash(cfg: DictConfig) -> str:
    """First 12 hex characters of the sha256 of the resolved config as key-sorted YAML."""
    text = OmegaConf.to_yaml(cfg, resolve=True, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain Python dicts and lists (for JSON, checkpoints, manifests)."""
    return cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split argv into (Hydra overrides, everything else), each in its original order.

    Overrides are ``key=value``, ``+key=value``, ``++key=value`` and ``~key`` tokens. Anything
    starting with ``-`` is a flag (``--out=DIR`` included), and bare words such as a flag's
    value (``--out DIR``) or a subcommand stay in the second list.
    """
    overrides = [tok for tok in argv if _OVERRIDE.match(tok)]
    rest = [tok for tok in argv if not _OVERRIDE.match(tok)]
    return overrides, rest


def _override_key(override: str) -> str:
    """The key of an override, without its ``+``/``~`` prefix, value or ``@package``."""
    return override.lstrip("+~").split("=", 1)[0].split("@", 1)[0]


def _explain(exc: HydraException, overrides: list[str], config_name: str) -> str:
    """A one-paragraph message that names the override Hydra rejected."""
    if isinstance(exc, OverrideParseException):
        parser = OverridesParser.create()
        for override in overrides:
            try:
                parser.parse_override(override)
            except HydraException as bad:
                return f"invalid override {override!r}: {bad}"
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and "/" in exc.missing_cfg_file:
        group, option = exc.missing_cfg_file.rsplit("/", 1)
        culprit = next((ov for ov in overrides if _override_key(ov) == group), None)
        if culprit is not None:
            presets = ", ".join(_presets(group, exc.options or [], config_name))
            reason = f"configs/{group} has no preset {option!r}; available presets: {presets}"
            return f"invalid override {culprit!r}: {reason}"
    message = str(exc)
    culprit = next((ov for ov in overrides if f"'{_override_key(ov)}'" in message), None)
    if culprit is not None:
        return f"invalid override {culprit!r}: {message}"
    return f"cannot compose config {config_name!r} with overrides {overrides}: {message}"


def _presets(group: str, options: list[str], config_name: str) -> list[str]:
    """Options of ``group`` minus the files the root config mounts elsewhere (``group/option@pkg``)."""
    root = OmegaConf.load(CONFIG_DIR / f"{config_name}.yaml")
    mounted = {
        entry.split("@", 1)[0].split("/", 1)[1]
        for entry in root.get("defaults", [])
        if isinstance(entry, str) and entry.startswith(f"{group}/")
    }
    return sorted(opt for opt in options if opt not in mounted)
