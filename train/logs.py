"""RunLogger: one object that records a training run on every channel it has.

Channels (all written by rank 0 only; other ranks get a silent logger and no-op methods):

- console: a ``rich.logging.RichHandler`` when ``logging.rich_console``;
- file log: ``run_dir/<file_log.path>``, a rotating markdown list (``- 2026-11-29 04:00:00 INFO msg``),
  ``rotate_mb`` MiB per file (fractions allowed), ``backups`` old files kept;
- JSONL: ``run_dir/<jsonl.path>``, one JSON object a line (``ts``, ``kind``, ``step``, fields), flushed
  on every write so a crashed run keeps every event;
- MLflow: params (the flattened resolved config), tags and metrics. An empty ``tracking_uri`` means a
  local file store at ``run_dir/mlruns``; nothing ever starts a server.

On start the run records the git sha, the config hash (:func:`spectramind.config.config_hash`) and
library versions, and writes the resolved config to ``run_dir/config.yaml``.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from logging.handlers import RotatingFileHandler
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
import torch
from omegaconf import DictConfig, OmegaConf

from spectramind.config import config_hash

__all__ = ["LOGGER_NAME", "NullProgress", "RunLogger", "git_sha"]

LOGGER_NAME = "spectramind.train"
_STATUSES = ("FINISHED", "FAILED", "KILLED")
_MLFLOW_KEY_MAX = 250
_MLFLOW_BATCH = 100
_REPO = Path(__file__).resolve().parents[1]


def git_sha(repo: Path = _REPO) -> str:
    """``git rev-parse HEAD`` of ``repo``; else env ``GIT_COMMIT``; else ``"unknown"``."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        out = None
    if out is not None and out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", out.stdout.strip()):
        return out.stdout.strip()
    return os.environ.get("GIT_COMMIT") or "unknown"


def _flatten(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Dotted (key, leaf) pairs of nested dicts; lists are leaves (one MLflow param each)."""
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            yield from _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, tree


def _mlflow_key(key: str) -> str:
    """MLflow accepts alphanumerics and ``_-. /``; anything else becomes ``_``."""
    return re.sub(r"[^\w\-. /]", "_", key)[:_MLFLOW_KEY_MAX]


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.item() if obj.numel() == 1 else obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, DictConfig):
        return OmegaConf.to_container(obj, resolve=True)
    raise TypeError(f"event field of type {type(obj).__name__} is not JSON serialisable")


class NullProgress:
    """The progress interface with nothing behind it (rank > 0, no tty, rich_console off)."""

    def __enter__(self) -> NullProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def advance(self, n: float = 1) -> None:
        return None

    def update(self, **kw: Any) -> None:
        return None


class _RichProgress:
    """One rich.progress task: ``advance(n)`` and ``update(description=..., total=...)``."""

    def __init__(self, total: int, description: str) -> None:
        from rich.progress import Progress

        self._progress = Progress(transient=False)
        self._task = self._progress.add_task(description, total=total)

    def __enter__(self) -> _RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def advance(self, n: float = 1) -> None:
        self._progress.advance(self._task, n)

    def update(self, **kw: Any) -> None:
        self._progress.update(self._task, **kw)


class RunLogger:
    """Console + rotating file log + JSONL events + MLflow for one run.

    Use as a context manager: entering calls :meth:`start`; leaving calls :meth:`close` with
    ``FINISHED``, ``KILLED`` (KeyboardInterrupt) or ``FAILED`` (any other exception, which propagates).
    ``self.log`` is the ``logging.Logger`` of the run.
    """

    def __init__(
        self,
        run_dir: Path,
        cfg_logging: Mapping[str, Any],
        config: Mapping[str, Any],
        rank: int = 0,
        run_name: str | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.cfg = cfg_logging
        self.config = config if isinstance(config, DictConfig) else OmegaConf.create(dict(config))
        self.rank = rank
        self.run_name = run_name or self.run_dir.name
        self.active = rank == 0
        self.run_id: str | None = None
        self.git_sha = "unknown"
        self.config_hash = "unknown"
        self._handlers: list[logging.Handler] = []
        self._jsonl: Any = None
        self._mlflow: Any = None
        self._t0 = time.monotonic()
        self._closed = False
        self.log = self._make_logger()

    def _make_logger(self) -> logging.Logger:
        if not self.active:
            quiet = logging.getLogger(f"{LOGGER_NAME}.rank{self.rank}")
            quiet.propagate = False
            if not quiet.handlers:
                quiet.addHandler(logging.NullHandler())
            return quiet
        level = str(self.cfg.get("level", "INFO")).upper()
        if not isinstance(logging.getLevelName(level), int):
            raise ValueError(f"train.logging.level must be a logging level name, got {level!r}")
        log = logging.getLogger(LOGGER_NAME)
        log.setLevel(level)
        self._propagate = log.propagate
        if self.cfg.get("rich_console", False):
            from rich.logging import RichHandler

            self._handlers.append(RichHandler(show_path=False, rich_tracebacks=True))
            # The rich handler is the console; propagating would print every line twice.
            log.propagate = False
        file_cfg = self.cfg.get("file_log") or {}
        if file_cfg.get("enable", False):
            rotate_mb, backups = float(file_cfg.get("rotate_mb", 8)), int(file_cfg.get("backups", 5))
            if rotate_mb <= 0:
                raise ValueError(f"train.logging.file_log.rotate_mb must be > 0, got {rotate_mb}")
            if backups < 0:
                raise ValueError(f"train.logging.file_log.backups must be >= 0, got {backups}")
            path = self.run_dir / str(file_cfg["path"])
            path.parent.mkdir(parents=True, exist_ok=True)
            handler = RotatingFileHandler(
                path, maxBytes=max(1, int(rotate_mb * 1024 * 1024)), backupCount=backups, encoding="utf-8"
            )
            handler.setFormatter(logging.Formatter("- %(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
            self._handlers.append(handler)
        for handler in self._handlers:
            log.addHandler(handler)
        jsonl_cfg = self.cfg.get("jsonl") or {}
        if jsonl_cfg.get("enable", False):
            path = self.run_dir / str(jsonl_cfg["path"])
            path.parent.mkdir(parents=True, exist_ok=True)
            self._jsonl = path.open("ab")
        return log

    def __enter__(self) -> RunLogger:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.close("KILLED", error="interrupted")
        else:
            self.log.error("run failed: %s: %s", exc_type.__name__, exc)
            self.close("FAILED", error=f"{exc_type.__name__}: {exc}")

    def start(self) -> None:
        """Record provenance (git sha, config hash, versions), write config.yaml, open the MLflow run."""
        if not self.active:
            return
        self.git_sha = git_sha()
        self.config_hash = config_hash(self.config)
        versions = {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda or "none",
            "platform": platform.platform(),
        }
        self.run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, self.run_dir / "config.yaml", resolve=True)
        mlflow_cfg = self.cfg.get("mlflow") or {}
        if mlflow_cfg.get("enable", False):
            self._start_mlflow(mlflow_cfg, versions)
        self.event(
            "start", run_name=self.run_name, git_sha=self.git_sha, config_hash=self.config_hash,
            mlflow_run_id=self.run_id, argv=sys.argv, **versions,
        )
        self.log.info(
            "run %s: git %s, config %s, torch %s, python %s",
            self.run_name, self.git_sha[:12], self.config_hash, versions["torch"], versions["python"],
        )

    def _start_mlflow(self, mlflow_cfg: Mapping[str, Any], versions: dict[str, str]) -> None:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

        uri = str(mlflow_cfg.get("tracking_uri") or "") or (self.run_dir / "mlruns").resolve().as_uri()
        client = MlflowClient(tracking_uri=uri)
        name = str(mlflow_cfg.get("experiment") or "spectramind_v50")
        experiment = client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment is not None else client.create_experiment(name)
        tags = {str(k): str(v) for k, v in dict(mlflow_cfg.get("tags") or {}).items()}
        for key, real in (("repo_sha", self.git_sha), ("config_hash", self.config_hash)):
            if tags.get(key, "unknown") in ("unknown", "", "None"):
                tags[key] = real
        tags.update({f"version.{k}": v for k, v in versions.items()})
        run = client.create_run(experiment_id, tags=tags, run_name=self.run_name)
        self._mlflow, self.run_id = client, run.info.run_id
        container = OmegaConf.to_container(self.config, resolve=True)
        params = [Param(_mlflow_key(k), str(v)[:MAX_PARAM_VAL_LENGTH]) for k, v in _flatten(container)]
        for i in range(0, len(params), _MLFLOW_BATCH):
            client.log_batch(self.run_id, params=params[i : i + _MLFLOW_BATCH])
        self.log.info("mlflow run %s in experiment %r at %s", self.run_id, name, uri)

    def event(self, kind: str, step: int | None = None, **fields: Any) -> None:
        """Append one JSON line ``{"ts", "kind", "step", **fields}`` to the JSONL log and flush it."""
        if self._jsonl is None:
            return
        record = {"ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "kind": kind, "step": step}
        record.update(fields)
        self._jsonl.write(orjson.dumps(record, default=_jsonable, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
        self._jsonl.flush()

    def metrics(self, step: int, values: Mapping[str, float], phase: str) -> None:
        """Log scalar metrics at ``step``: a JSONL "metrics" event, MLflow metrics, a debug line."""
        if not self.active:
            return
        values = {k: float(v) for k, v in values.items()}
        self.event("metrics", step=step, phase=phase, values=values)
        if self._mlflow is not None and values:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            batch = [Metric(_mlflow_key(k), v, now, step) for k, v in values.items()]
            self._mlflow.log_batch(self.run_id, metrics=batch)
        self.log.debug("%s step %d: %s", phase, step, ", ".join(f"{k}={v:.6g}" for k, v in values.items()))

    def progress(self, total: int, description: str, force: bool = False) -> NullProgress | _RichProgress:
        """A rich progress bar on rank 0 with rich_console and a tty (or ``force``); else a no-op."""
        if self.active and self.cfg.get("rich_console", False) and (force or sys.stdout.isatty()):
            return _RichProgress(total, description)
        return NullProgress()

    def close(self, status: str = "FINISHED", error: str | None = None) -> None:
        """Write the "end" event, end the MLflow run with ``status``, release the handlers. Idempotent."""
        if status not in _STATUSES:
            raise ValueError(f"RunLogger.close status must be one of {_STATUSES}, got {status!r}")
        if self._closed or not self.active:
            self._closed = True
            return
        self._closed = True
        elapsed = time.monotonic() - self._t0
        self.event("end", status=status, elapsed_s=round(elapsed, 3), error=error)
        self.log.info("run %s %s after %.1f s", self.run_name, status.lower(), elapsed)
        if self._mlflow is not None:
            self._mlflow.set_terminated(self.run_id, status)
        for handler in self._handlers:
            self.log.removeHandler(handler)
            handler.close()
        self.log.propagate = self._propagate
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
