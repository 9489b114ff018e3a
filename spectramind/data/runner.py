"""Run one function over many planets, in parallel processes, without letting one bad planet sink the run.

Every data command (simulate, calibrate, baseline) goes through :func:`run_planets`: work
items run in a process pool with a progress bar; a failing item is recorded with its
message (which names planet and file, see :class:`PlanetDataError`) and the run goes on,
unless ``strict`` is set, in which case the first failure is raised.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from spectramind.data.errors import PlanetDataError

console = Console(stderr=True)


@dataclass
class Failure:
    item: str
    error: str


@dataclass
class RunSummary:
    """What a data command did: results of the items that worked, and the items skipped."""

    task: str
    results: list[Any] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def report(self) -> None:
        console.print(f"[bold]{self.task}[/]: {len(self.results)} ok, {len(self.failures)} skipped")
        for f in self.failures:
            console.print(f"  [red]skipped[/] {f.item}: {f.error}")

    def write(self, path: Path) -> None:
        data = {"task": self.task, "ok": len(self.results), "skipped": [f.__dict__ for f in self.failures]}
        Path(path).write_text(json.dumps(data, indent=2))


class StrictFailure(RuntimeError):
    """Raised by a strict run on its first failing item."""


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def _label(item: Any) -> str:
    if isinstance(item, tuple):
        return " ".join(str(x) for x in item)
    return str(item)


def run_planets(
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    *,
    task: str,
    workers: int | None = None,
    strict: bool = False,
    progress: bool = True,
) -> RunSummary:
    """Apply ``fn`` to every item; results keep the order of ``items``.

    ``fn`` must be a picklable top-level function when ``workers > 1``. PlanetDataError
    and any other exception from one item become a :class:`Failure` for that item; with
    ``strict`` the run stops at the first one with :class:`StrictFailure`.
    """
    workers = default_workers() if workers is None else max(1, workers)
    summary = RunSummary(task=task)
    slots: list[Any] = [None] * len(items)
    done: list[bool] = [False] * len(items)

    def record(i: int, exc: BaseException | None, value: Any) -> None:
        if exc is None:
            slots[i] = value
            done[i] = True
            return
        msg = str(exc) if isinstance(exc, PlanetDataError) else f"{type(exc).__name__}: {exc}"
        summary.failures.append(Failure(item=_label(items[i]), error=msg))
        if strict:
            raise StrictFailure(f"{task} failed on {_label(items[i])}: {msg}") from exc

    columns = (TextColumn(f"[bold]{task}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not progress, transient=False) as bar:
        tid = bar.add_task(task, total=len(items))
        if workers == 1 or len(items) <= 1:
            for i, item in enumerate(items):
                try:
                    value = fn(item)
                except Exception as exc:  # one planet's fault is recorded, not fatal
                    record(i, exc, None)
                else:
                    record(i, None, value)
                bar.advance(tid)
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(items))) as pool:
                futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
                try:
                    for fut in as_completed(futures):
                        i = futures[fut]
                        exc = fut.exception()
                        record(i, exc, None if exc else fut.result())
                        bar.advance(tid)
                except StrictFailure:
                    for f in futures:
                        f.cancel()
                    raise
    summary.results = [slots[i] for i in range(len(items)) if done[i]]
    return summary
