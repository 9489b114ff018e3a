"""Execution: the dynamic batcher that owns the device, the low-priority task queue, the deadline watch.

:class:`DynamicBatcher` (Triton's dynamic batcher, in one thread): requests are single planets
(fgs1 (T, 6), airs_nodes (283, 8)); one worker thread takes the oldest, waits at most
``max_queue_delay_us`` from that request's arrival for the batch to fill up to
``max_batch_size``, drops every request whose deadline has already passed (it is never
computed), runs the batch and hands each request its own row. The worker is the only thread that
calls the model once serving starts; :meth:`DynamicBatcher.call` runs anything else that must
touch the device (the warm-up) on that same thread. The queue is bounded: a full queue refuses at
once (:class:`QueueFullError` with a Retry-After estimate) instead of growing latency without
bound.

:class:`TaskQueue`: a bounded FIFO with its own worker thread for slow, optional work (Shapley
values). Its thread runs at the lowest OS scheduling priority (nice 19, Linux), each task has a
timeout counted from submission, and a task receives its deadline so it can stop cooperatively;
a task that outlives its timeout fails with :class:`TaskTimeoutError` at the timeout, not when it
finishes.

:class:`DeadlineWatch`: one thread that fails futures still pending at their deadline, so a
client hears 504 at its deadline even while the worker is busy with an earlier batch.

Errors here are plain: :mod:`serve.service` turns them into the HTTP-facing ServiceErrors.

Shapes: a batch stacks fgs1 (B, T, 6) and airs_nodes (B, 283, 8) float32; ``run`` returns mu,
sigma (B, 283); each request's future gets ``(mu (283,), sigma (283,), timings)``.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

__all__ = [
    "BatchTimings",
    "ClosedError",
    "DeadlineError",
    "DeadlineWatch",
    "DynamicBatcher",
    "QueueFullError",
    "TaskQueue",
    "TaskTimeoutError",
    "set_result",
    "set_exception",
]

log = logging.getLogger("spectramind.serve")

T = TypeVar("T")
Run = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
OnBatch = Callable[[int, float, float], None]


class QueueFullError(Exception):
    """The bounded queue is full; ``retry_after_s`` estimates when it will have room."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ClosedError(Exception):
    """The queue is closed (shutting down) and takes no new work, or dropped work at shutdown."""


class DeadlineError(Exception):
    """The deadline passed before the work was done."""


class TaskTimeoutError(Exception):
    """A task of a :class:`TaskQueue` did not finish within its timeout."""


def set_result(fut: Future, value: Any) -> bool:
    """Complete ``fut`` unless a deadline, a cancel or a shutdown already did; True when it was set."""
    try:
        fut.set_result(value)
        return True
    except InvalidStateError:
        return False


def set_exception(fut: Future, exc: BaseException) -> bool:
    """Fail ``fut`` unless it is already done; True when it was set."""
    try:
        fut.set_exception(exc)
        return True
    except InvalidStateError:
        return False


@dataclass
class BatchTimings:
    """Seconds a request spent waiting (enqueue to the start of its batch) and its batch computing."""

    queue_s: float
    compute_s: float
    batch_size: int


@dataclass
class _Item:
    fgs1: np.ndarray
    airs_nodes: np.ndarray
    deadline: float | None
    future: Future
    enqueued: float = field(default_factory=time.monotonic)


@dataclass
class _Call:
    fn: Callable[[], Any]
    future: Future
    enqueued: float = field(default_factory=time.monotonic)


class DynamicBatcher:
    """One worker thread that owns ``run`` (the model) and batches single-planet requests.

    ``on_batch(batch_size, queue_s, compute_s)`` is called after every batch from the worker
    thread: queue_s is the wait of the batch's oldest request (the batching delay it paid),
    compute_s the forward. It must be quick; its exceptions are logged and ignored.
    """

    def __init__(
        self,
        run: Run,
        max_batch_size: int,
        max_queue_delay_us: int,
        max_queue: int,
        on_batch: OnBatch | None = None,
        name: str = "spectramind-batcher",
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_queue_delay_us < 0:
            raise ValueError(f"batcher: need max_batch_size >= 1, max_queue >= 1, max_queue_delay_us >= 0; got "
                             f"{max_batch_size}, {max_queue}, {max_queue_delay_us}")
        self.run = run
        self.max_batch_size = int(max_batch_size)
        self.max_queue_delay_s = max_queue_delay_us * 1e-6
        self.max_queue = int(max_queue)
        self.on_batch = on_batch
        self.name = name
        self._items: deque[_Item | _Call] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._busy = False
        self._last_compute_s = 0.01
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._started = False

    # ------------------------------------------------------------ public

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    @property
    def pending(self) -> int:
        """Requests waiting for a batch (not counting the one being computed)."""
        return len(self._items)

    @property
    def busy(self) -> bool:
        """True while a batch is computing or requests are waiting: low-priority work should yield."""
        return self._busy or bool(self._items)

    def submit(self, fgs1: np.ndarray, airs_nodes: np.ndarray, deadline: float | None = None) -> Future:
        """Queue one planet; ``deadline`` is a ``time.monotonic()`` instant or None.

        Shapes: fgs1 (T, 6), airs_nodes (283, 8). Returns a Future of (mu (283,), sigma (283,),
        BatchTimings). Raises QueueFullError (queue at ``max_queue``) or ClosedError.
        """
        item = _Item(np.asarray(fgs1, dtype=np.float32), np.asarray(airs_nodes, dtype=np.float32), deadline, Future())
        with self._cond:
            if self._closing:
                raise ClosedError(f"{self.name} is shutting down")
            if len(self._items) >= self.max_queue:
                raise QueueFullError(f"{self.name}: queue full ({self.max_queue} waiting)", self._retry_after())
            self._items.append(item)
            self._cond.notify()
        return item.future

    def call(self, fn: Callable[[], T]) -> Future:
        """Run ``fn()`` on the worker thread (between batches); a Future of its result."""
        item = _Call(fn, Future())
        with self._cond:
            if self._closing:
                raise ClosedError(f"{self.name} is shutting down")
            self._items.append(item)
            self._cond.notify()
        return item.future

    def close(self, timeout_s: float | None = None) -> bool:
        """Stop accepting; the worker finishes what is queued, then exits. True when it did within
        ``timeout_s``; otherwise what is still queued fails with ClosedError."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if not self._started:
            self._fail_queued()
            return True
        self._thread.join(timeout_s)
        drained = not self._thread.is_alive()
        if not drained:
            self._fail_queued()
        return drained

    # ------------------------------------------------------------ worker

    def _retry_after(self) -> float:
        batches = len(self._items) / self.max_batch_size + 1
        return batches * max(self._last_compute_s, self.max_queue_delay_s)

    def _fail_queued(self) -> None:
        with self._cond:
            items, self._items = list(self._items), deque()
        for it in items:
            set_exception(it.future, ClosedError(f"{self.name} shut down before this request was computed"))

    def _take(self) -> list[_Item | _Call] | None:
        """The next batch (or one call), waiting for the batching delay; None when closed and empty."""
        with self._cond:
            while not self._items:
                if self._closing:
                    return None
                self._cond.wait()
            if isinstance(self._items[0], _Call):
                return [self._items.popleft()]
            end = self._items[0].enqueued + self.max_queue_delay_s
            while len(self._items) < self.max_batch_size and not self._closing:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch: list[_Item | _Call] = []
            while self._items and len(batch) < self.max_batch_size and isinstance(self._items[0], _Item):
                batch.append(self._items.popleft())
            self._busy = True
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                if isinstance(batch[0], _Call):
                    self._call(batch[0])
                else:
                    self._compute(batch)  # type: ignore[arg-type]
            finally:
                self._busy = False

    def _call(self, item: _Call) -> None:
        if not item.future.set_running_or_notify_cancel():
            return
        try:
            set_result(item.future, item.fn())
        except BaseException as exc:  # the caller sees it through the future
            set_exception(item.future, exc)

    def _compute(self, batch: list[_Item]) -> None:
        start = time.monotonic()
        live = []
        for it in batch:
            if it.future.done():  # failed by its deadline watch or cancelled while waiting
                continue
            if it.deadline is not None and start > it.deadline:
                waited = start - it.enqueued
                set_exception(it.future, DeadlineError(f"deadline passed after {waited:.3f} s in the queue"))
                continue
            if it.future.set_running_or_notify_cancel():
                live.append(it)
        if not live:
            return
        fgs1 = np.stack([it.fgs1 for it in live])
        nodes = np.stack([it.airs_nodes for it in live])
        try:
            mu, sigma = self.run(fgs1, nodes)
        except BaseException as exc:
            log.exception("%s: batch of %d failed", self.name, len(live))
            for it in live:
                set_exception(it.future, exc)
            return
        compute = time.monotonic() - start
        self._last_compute_s = compute
        for i, it in enumerate(live):
            set_result(it.future, (mu[i], sigma[i], BatchTimings(start - it.enqueued, compute, len(live))))
        if self.on_batch is not None:
            try:
                self.on_batch(len(live), start - live[0].enqueued, compute)
            except Exception:
                log.exception("%s: on_batch hook failed", self.name)


# ---------------------------------------------------------------- low-priority tasks


@dataclass
class _Task:
    fn: Callable[[float], Any]
    deadline: float
    future: Future


class TaskQueue:
    """A bounded FIFO of slow tasks run one at a time on its own low-priority thread.

    A task is ``fn(deadline) -> result`` (``deadline`` a ``time.monotonic()`` instant, so it can
    stop early); its future fails with TaskTimeoutError at ``timeout_s`` after submission
    (through ``watch``) whether it is still queued or running.
    """

    def __init__(self, name: str, max_queue: int, watch: "DeadlineWatch", nice: int = 19) -> None:
        self.name = name
        self.max_queue = int(max_queue)
        self.watch = watch
        self.nice = nice
        self._tasks: deque[_Task] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[float], T], timeout_s: float) -> Future:
        deadline = time.monotonic() + timeout_s
        task = _Task(fn, deadline, Future())
        with self._cond:
            if self._closing:
                raise ClosedError(f"{self.name} is shutting down")
            if len(self._tasks) >= self.max_queue:
                raise QueueFullError(f"{self.name}: queue full ({self.max_queue} waiting)", timeout_s)
            self._tasks.append(task)
            self._cond.notify()
        self.watch.add(task.future, deadline, lambda: TaskTimeoutError(f"{self.name}: not done within {timeout_s:g} s"))
        return task.future

    def close(self, timeout_s: float | None = None) -> bool:
        """Stop accepting; queued tasks fail with ClosedError; the running one may finish."""
        with self._cond:
            self._closing = True
            tasks, self._tasks = list(self._tasks), deque()
            self._cond.notify_all()
        for t in tasks:
            set_exception(t.future, ClosedError(f"{self.name} shut down before this task ran"))
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        try:  # Linux: per-thread nice, so predictions win the CPU whenever both want it
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
        except (AttributeError, OSError) as exc:
            log.info("%s: could not lower the thread priority (%s)", self.name, exc)
        while True:
            with self._cond:
                while not self._tasks and not self._closing:
                    self._cond.wait()
                if not self._tasks:
                    return
                task = self._tasks.popleft()
            if task.future.done() or not task.future.set_running_or_notify_cancel():
                continue
            try:
                set_result(task.future, task.fn(task.deadline))
            except BaseException as exc:
                set_exception(task.future, exc)


# ---------------------------------------------------------------- deadlines


class DeadlineWatch:
    """Fails futures still pending at their deadline (one thread, a heap of deadlines)."""

    def __init__(self, name: str = "spectramind-deadlines") -> None:
        self._heap: list[tuple[float, int, Future, Callable[[], BaseException]]] = []
        self._count = itertools.count()
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def add(self, fut: Future, deadline: float, error: Callable[[], BaseException]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._count), fut, error))
            if self._heap[0][2] is fut:
                self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(1.0)

    def _loop(self) -> None:
        while True:
            with self._cond:
                # Futures that finished in time leave the heap lazily, when they reach its top.
                while self._heap and self._heap[0][2].done():
                    heapq.heappop(self._heap)
                if self._closing:
                    return
                if not self._heap:
                    self._cond.wait()
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                _, _, fut, error = heapq.heappop(self._heap)
            # Outside the lock: the future's callbacks may add deadlines of their own.
            set_exception(fut, error())
