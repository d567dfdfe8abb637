"""The scheduler of one model version: a bounded queue, Triton-style dynamic batching, and
dispatch of each batch to the first idle instance.

Requests whose first dimension is the batch are gathered while an instance is busy (or for up to
``max_queue_delay_s``), concatenated, run once, and the outputs split back to each caller as
views. Requests whose other dimensions or datatypes differ are never mixed in one run. Everything
here runs on the event loop; only the model runs happen on the instances' threads.
"""

import asyncio
import enum
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from onnxruntime.capi.onnxruntime_pybind11_state import Fail as OrtFail
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument as OrtInvalidArgument

from turnout.errors import DeadlineExceeded, InvalidInput, Overloaded, RunFailed
from turnout.models.accounting import VersionCounters
from turnout.models.instance import Feed, OrtInstance, RunResult
from turnout.models.types import RunStats

log = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]
ScheduledResult = tuple[Outputs, RunStats]
Replace = Callable[[OrtInstance], OrtInstance]
# Waits between attempts to replace an abandoned instance whose replacement failed to load.
REPLACE_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """How a version batches and queues. ``max_batch_size = 0`` runs each request alone."""

    max_batch_size: int
    max_queue_delay_s: float = 0.0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 512
    run_timeout_s: float | None = None


class _State(enum.Enum):
    QUEUED = 1
    RUNNING = 2
    DONE = 3


class _Pending:
    """One request waiting in, or taken from, the queue."""

    __slots__ = (
        "deadline",
        "enqueued",
        "feed",
        "future",
        "key",
        "outputs",
        "queue_seconds",
        "rows",
        "solo",
        "state",
        "timer",
    )

    def __init__(
        self,
        feed: Feed,
        rows: int,
        key: tuple[Any, ...],
        outputs: tuple[str, ...],
        deadline: float | None,
        future: "asyncio.Future[ScheduledResult]",
    ) -> None:
        self.feed = feed
        self.rows = rows
        self.key = key
        self.outputs = outputs
        self.deadline = deadline
        self.future = future
        self.enqueued = time.perf_counter()
        self.queue_seconds = 0.0
        self.state = _State.QUEUED
        self.timer: asyncio.TimerHandle | None = None
        self.solo = False


class Scheduler:
    """Queues, batches and dispatches the requests of one model version.

    A run still going after ``policy.run_timeout_s`` fails its batch's requests (RunFailed) and
    its instance is abandoned; ``replace`` (called on a worker thread) makes the instance that
    takes its place, and until it is ready the version has one instance fewer.
    """

    def __init__(
        self,
        label: str,
        instances: list[OrtInstance],
        policy: BatchPolicy,
        input_names: tuple[str, ...],
        output_names: tuple[str, ...],
        counters: VersionCounters,
        replace: Replace | None = None,
    ) -> None:
        self._label = label
        self.instances = list(instances)
        self._replace = replace
        self._replacing: set[asyncio.Task[None]] = set()
        self._closed = False
        self._idle = deque(instances)
        self._policy = policy
        self._input_names = input_names
        self._output_names = output_names
        self._counters = counters
        self._queue: deque[_Pending] = deque()
        self._delay_timer: asyncio.TimerHandle | None = None
        self._running = 0
        self._settled: asyncio.Event | None = None

    async def submit(
        self, feed: Feed, rows: int, outputs: tuple[str, ...], deadline: float | None
    ) -> ScheduledResult:
        """Queue a request and wait for its share of a run.

        Raises Overloaded at once when the queue is full, DeadlineExceeded when ``deadline``
        (a ``time.monotonic()`` instant) passes before the request runs.
        """
        counters = self._counters
        if deadline is not None and deadline <= time.monotonic():
            counters.expired += 1
            raise self._expired()
        if counters.queued >= self._policy.max_queue_size:
            counters.rejected += 1
            raise Overloaded(
                f"{self._label}: the queue is full ({self._policy.max_queue_size} requests "
                "waiting); retry later"
            )
        loop = asyncio.get_running_loop()
        entry = _Pending(feed, rows, self._key(feed), outputs, deadline, loop.create_future())
        if deadline is not None:
            entry.timer = loop.call_later(deadline - time.monotonic(), self._expire, entry)
        self._queue.append(entry)
        counters.queued += 1
        self._dispatch()
        try:
            return await entry.future
        except asyncio.CancelledError:
            if entry.state is _State.QUEUED:
                self._leave_queue(entry)
                counters.abandoned += 1
            raise

    @property
    def ready_instances(self) -> int:
        """Instances able to take a batch now or once their run ends (not being replaced)."""
        return len(self.instances)

    def close(self) -> list[OrtInstance]:
        """Stop replacing instances; returns the live ones, for the caller to close."""
        self._closed = True
        for task in self._replacing:
            task.cancel()
        return list(self.instances)

    async def settle(self) -> None:
        """Return once nothing is queued or running."""
        while self._counters.queued or self._running:
            self._settled = self._settled or asyncio.Event()
            self._settled.clear()
            await self._settled.wait()

    def _check_settled(self) -> None:
        if self._settled is not None and not self._counters.queued and not self._running:
            self._settled.set()

    def _key(self, feed: Feed) -> tuple[Any, ...]:
        """What must match for two requests to share a run: every input's datatype and shape
        past the batch dimension."""
        if self._policy.max_batch_size == 0:
            return ()
        return tuple((feed[name].dtype, feed[name].shape[1:]) for name in self._input_names)

    def _leave_queue(self, entry: _Pending) -> None:
        entry.state = _State.DONE
        self._counters.queued -= 1
        if entry.timer is not None:
            entry.timer.cancel()
        self._check_settled()

    def _expire(self, entry: _Pending) -> None:
        if entry.state is _State.QUEUED and not entry.future.done():
            self._leave_queue(entry)
            self._counters.expired += 1
            entry.future.set_exception(self._expired())

    def _expired(self) -> DeadlineExceeded:
        return DeadlineExceeded(f"{self._label}: the request's deadline passed before it could run")

    def _dispatch(self) -> None:
        while self._idle and self._queue:
            batch = self._take_batch()
            if not batch:
                return
            self._launch(self._idle.popleft(), batch)

    def _take_batch(self) -> list[_Pending]:
        """The next batch, taken off the queue; empty when the queue holds nothing runnable or
        the head should wait for more requests."""
        queue = self._queue
        now = time.monotonic()
        while queue and (queue[0].state is not _State.QUEUED or _late(queue[0], now)):
            self._expire(queue.popleft())
        if not queue:
            return []
        head = queue[0]
        policy = self._policy
        if policy.max_batch_size == 0 or head.solo:
            chosen = [head]
        else:
            chosen = self._gather_entries(head, now)
            full = self._full(chosen)
            if not full and self._should_wait(head):
                return []
        for entry in chosen:
            self._leave_queue(entry)
            entry.state = _State.RUNNING
        while queue and queue[0].state is not _State.QUEUED:
            queue.popleft()
        return chosen

    def _gather_entries(self, head: _Pending, now: float) -> list[_Pending]:
        """The queued requests that can share a run with ``head``, oldest first, within
        max_batch_size rows and cut to a preferred batch size when one can be made."""
        policy = self._policy
        chosen: list[_Pending] = []
        rows = 0
        for entry in self._queue:
            if entry.state is not _State.QUEUED or entry.solo or entry.key != head.key:
                continue
            if _late(entry, now):
                continue
            if rows + entry.rows > policy.max_batch_size:
                continue
            chosen.append(entry)
            rows += entry.rows
            if rows == policy.max_batch_size:
                break
        if policy.preferred_batch_sizes and rows not in policy.preferred_batch_sizes:
            chosen = _preferred_prefix(chosen, policy.preferred_batch_sizes) or chosen
        return chosen

    def _full(self, chosen: list[_Pending]) -> bool:
        """Whether a batch is as large as it should get: max_batch_size or a preferred size."""
        rows = sum(entry.rows for entry in chosen)
        return rows >= self._policy.max_batch_size or rows in self._policy.preferred_batch_sizes

    def _should_wait(self, head: _Pending) -> bool:
        """Whether the head of the queue is still within its batching delay."""
        delay = self._policy.max_queue_delay_s
        if delay <= 0:
            return False
        remaining = delay - (time.perf_counter() - head.enqueued)
        if remaining <= 0:
            return False
        if self._delay_timer is None:
            self._delay_timer = asyncio.get_running_loop().call_later(remaining, self._delay_over)
        return True

    def _delay_over(self) -> None:
        self._delay_timer = None
        self._dispatch()

    def _launch(self, instance: OrtInstance, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        for entry in batch:
            entry.queue_seconds = started - entry.enqueued
            self._counters.queue_time.observe(entry.queue_seconds)
        if len(batch) == 1:
            feed = batch[0].feed
            outputs = batch[0].outputs
        else:
            feed = self._gather(instance, batch)
            outputs = self._union_outputs(batch)
        rows = sum(entry.rows for entry in batch)
        gather_seconds = time.perf_counter() - started
        loop = asyncio.get_running_loop()
        timeout = self._policy.run_timeout_s
        watchdog = (
            loop.call_later(timeout, self._hung, instance, batch, rows)
            if timeout is not None
            else None
        )

        def done(result: RunResult | None, error: BaseException | None) -> None:
            try:
                loop.call_soon_threadsafe(
                    self._complete,
                    instance,
                    batch,
                    outputs,
                    rows,
                    gather_seconds,
                    watchdog,
                    result,
                    error,
                )
            except RuntimeError:  # the loop closed while this ran: nobody waits any more
                return

        self._running += 1
        instance.submit(feed, list(outputs), done)

    def _gather(self, instance: OrtInstance, batch: list[_Pending]) -> Feed:
        rows = sum(entry.rows for entry in batch)
        feed: Feed = {}
        for name in self._input_names:
            parts = [entry.feed[name] for entry in batch]
            feed[name] = np.concatenate(parts, out=instance.staging(name, parts[0], rows))
        return feed

    def _union_outputs(self, batch: list[_Pending]) -> tuple[str, ...]:
        wanted = {name for entry in batch for name in entry.outputs}
        return tuple(name for name in self._output_names if name in wanted)

    def _complete(
        self,
        instance: OrtInstance,
        batch: list[_Pending],
        outputs: tuple[str, ...],
        rows: int,
        gather_seconds: float,
        watchdog: asyncio.TimerHandle | None,
        result: RunResult | None,
        error: BaseException | None,
    ) -> None:
        if instance.abandoned:
            return  # its batch was failed when it was abandoned
        if watchdog is not None:
            watchdog.cancel()
        self._idle.append(instance)
        self._running -= 1
        try:
            if result is None:
                self._fail(batch, error or RuntimeError("a run ended without a result"))
            else:
                self._deliver(batch, outputs, rows, gather_seconds, result)
        finally:
            self._dispatch()
            self._check_settled()

    def _hung(self, instance: OrtInstance, batch: list[_Pending], rows: int) -> None:
        """The run of ``batch`` on ``instance`` passed the hard timeout."""
        timeout = self._policy.run_timeout_s
        log.error(
            "%s: a run of %d rows on %s passed the hard timeout of %g s; its %d requests fail "
            "and the instance is replaced",
            self._label,
            rows,
            instance.thread_name,
            timeout,
            len(batch),
        )
        instance.abandon()
        self.instances.remove(instance)
        self._running -= 1
        self._counters.abandoned_runs += 1
        error = RunFailed(f"{self._label}: the run did not finish within {timeout:g} s")
        for entry in batch:
            entry.state = _State.DONE
            if not entry.future.done():
                entry.future.set_exception(error)
        if self._replace is not None and not self._closed:
            task = asyncio.create_task(self._replace_instance(instance))
            self._replacing.add(task)
            task.add_done_callback(self._replacing.discard)
        self._dispatch()
        self._check_settled()

    async def _replace_instance(self, abandoned: OrtInstance) -> None:
        assert self._replace is not None
        for attempt in itertools.count():
            try:
                instance = await asyncio.to_thread(self._replace, abandoned)
            except Exception as error:
                wait = REPLACE_BACKOFF_S[min(attempt, len(REPLACE_BACKOFF_S) - 1)]
                log.error(
                    "%s: replacing %s failed (%s); trying again in %g s",
                    self._label,
                    abandoned.thread_name,
                    error,
                    wait,
                )
                await asyncio.sleep(wait)
                continue
            if self._closed:
                await asyncio.to_thread(instance.close)
                return
            log.info("%s: %s replaced", self._label, instance.thread_name)
            self.instances.append(instance)
            self._idle.append(instance)
            self._dispatch()
            return

    def _fail(self, batch: list[_Pending], error: BaseException) -> None:
        if isinstance(error, OrtInvalidArgument | OrtFail):
            log.debug("%s: ONNX Runtime refused the input: %s", self._label, error)
            if len(batch) > 1:
                # One member's values may be at fault: run each alone, so only its owner fails.
                loop = asyncio.get_running_loop()
                for entry in reversed(batch):
                    if entry.future.done():
                        continue
                    # Already admitted, so back at the front whatever the queue's bound.
                    entry.state = _State.QUEUED
                    entry.solo = True
                    if entry.deadline is not None:
                        entry.timer = loop.call_later(
                            entry.deadline - time.monotonic(), self._expire, entry
                        )
                    self._queue.appendleft(entry)
                    self._counters.queued += 1
                return
            error = InvalidInput(f"{self._label} could not run on this input")
        for entry in batch:
            entry.state = _State.DONE
            if not entry.future.done():
                entry.future.set_exception(error)

    def _deliver(
        self,
        batch: list[_Pending],
        outputs: tuple[str, ...],
        rows: int,
        gather_seconds: float,
        result: RunResult,
    ) -> None:
        arrays, run_seconds = result
        split_started = time.perf_counter()
        if len(arrays) != len(outputs):
            self._fail(
                batch, RuntimeError(f"the run gave {len(arrays)} outputs for {len(outputs)}")
            )
            return
        by_name = dict(zip(outputs, arrays, strict=True))
        if self._policy.max_batch_size > 0:
            wrong = [name for name, array in by_name.items() if array.shape[:1] != (rows,)]
            if wrong:
                self._fail(
                    batch, RuntimeError(f"outputs {wrong} do not have the batch's {rows} rows")
                )
                return
        offset = 0
        for entry in batch:
            entry.state = _State.DONE
            if len(batch) == 1:
                shares = by_name
            else:
                end = offset + entry.rows
                shares = {name: by_name[name][offset:end] for name in entry.outputs}
                offset = end
            if not entry.future.done():
                stats = RunStats(entry.rows, entry.queue_seconds, run_seconds, rows)
                entry.future.set_result((shares, stats))
        scatter_seconds = time.perf_counter() - split_started
        self._counters.executed(rows, gather_seconds, run_seconds, scatter_seconds)


def _late(entry: _Pending, now: float) -> bool:
    return entry.deadline is not None and entry.deadline <= now


def _preferred_prefix(chosen: list[_Pending], preferred: tuple[int, ...]) -> list[_Pending]:
    """The longest prefix of ``chosen`` whose rows make a preferred batch size, if any."""
    best = 0
    rows = 0
    for index, entry in enumerate(chosen, start=1):
        rows += entry.rows
        if rows in preferred:
            best = index
    return chosen[:best]
