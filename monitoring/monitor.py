"""The drift monitor: live requests sampled on the event loop (a dictionary lookup, a random
draw and a queue hand-off, never the caller's time otherwise), windows of samples compared with
the reference on a thread of the monitor's own, records handed to the sink writers.

Per model version: a sample rate and a cap on samples per second; a window closes every
``window_samples`` rows or ``window_seconds``, whichever first. The reference comes from a file
(inputs; the outputs from running the model on them), or from the first ``capture_reference``
rows of live traffic for what the file does not give.
"""

import logging
import queue
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from turnout.monitoring.features import Column, columns, reduced
from turnout.monitoring.profile import Reference, compare, reference_of
from turnout.monitoring.records import (
    DEFAULT_BOUNDS,
    LEVELS,
    STATUS_FEATURE,
    DriftRecord,
    Status,
    Thresholds,
    worst,
)
from turnout.monitoring.sinks import SinkWriter

log = logging.getLogger(__name__)

DRAIN_INTERVAL_S = 0.05  # how often the worker takes the samples queued meanwhile


@dataclass(frozen=True, slots=True)
class MonitorSettings:
    """How one model version is watched."""

    sample_rate: float = 1.0
    max_samples_per_s: float = 100.0
    window_samples: int = 1000
    window_seconds: float = 60.0
    capture_reference: int = 1000
    thresholds: Thresholds = field(default_factory=lambda: Thresholds(dict(DEFAULT_BOUNDS)))


@dataclass(slots=True)
class MonitorCounters:
    """What the monitor of one version has done."""

    sampled: int = 0
    limited: int = 0  # over the samples-per-second cap
    dropped: int = 0  # the queue to the worker was full
    windows: int = 0


class _Version:
    """The state of one watched version (touched by the event loop for sampling, and by the
    worker thread for everything else)."""

    def __init__(
        self, endpoint: str, version: str, settings: MonitorSettings, batched: bool
    ) -> None:
        self.endpoint = endpoint
        self.version = version
        self.settings = settings
        self.batched = batched
        self.counters = MonitorCounters()
        self.profile: dict[str, Reference] = {}
        self.capturing: bool | None = None  # None until the first sample says
        self.capture: list[dict[str, np.ndarray]] = []
        self.captured_rows = 0
        self.window: list[dict[str, np.ndarray]] = []
        self.window_rows = 0
        self.window_start = time.time()
        self.window_clock = time.monotonic()
        self.tokens = settings.max_samples_per_s
        self.refilled = time.monotonic()


class DriftMonitor:
    """Every watched version, the worker thread and the sink writers."""

    def __init__(
        self,
        writers: Sequence[SinkWriter],
        queue_size: int = 10_000,
        queue_bytes: int = 256 << 20,
    ) -> None:
        self.writers = list(writers)
        self._queue_bytes = queue_bytes
        # Bytes of the tensors handed to the worker and taken by it: each written by one thread
        # only, so their difference is what waits, without a lock on the hot path.
        self._bytes_in = 0
        self._bytes_out = 0
        self._versions: dict[tuple[str, str], _Version] = {}
        # A sample, a forgotten version's last call (no tensors), or the stop (None).
        self._queue: queue.SimpleQueue[tuple[_Version, dict[str, np.ndarray] | None] | None] = (
            queue.SimpleQueue()
        )
        self._queue_size = queue_size
        self._rng = random.Random()
        self._numpy_rng = np.random.default_rng(0)
        self._thread = threading.Thread(target=self._work, name="drift-monitor", daemon=True)
        self._started = False

    # -- set-up (event loop, or the loading thread) ------------------------------------------

    def watch(
        self,
        endpoint: str,
        version: str,
        settings: MonitorSettings,
        batched: bool,
        reference: dict[str, Column],
    ) -> None:
        """Watch a version against ``reference`` (its features from a file or a model run); any
        feature seen in traffic but missing there is captured from the first live rows."""
        watched = _Version(endpoint, version, settings, batched)
        watched.profile = {
            name: reference_of(column, self._numpy_rng) for name, column in reference.items()
        }
        self._versions[(endpoint, version)] = watched
        log.info(
            "drift monitoring %r version %s: %d reference features, sampling %g",
            endpoint,
            version,
            len(watched.profile),
            settings.sample_rate,
        )

    def forget(self, endpoint: str, version: str) -> None:
        """Stop watching a version (it was unloaded); its window in progress is still closed
        and written, after the samples already queued."""
        watched = self._versions.pop((endpoint, version), None)
        if watched is not None:
            self._queue.put((watched, None))

    def counters(self) -> dict[tuple[str, str], MonitorCounters]:
        """The counters of every watched version."""
        return {key: watched.counters for key, watched in self._versions.items()}

    def start(self) -> None:
        """Start the worker thread."""
        if not self._started:
            self._started = True
            self._thread.start()

    def stop(self, deadline_s: float) -> None:
        """Close the windows in progress, write every record, stop. Blocks; run it off the
        event loop."""
        end = time.monotonic() + deadline_s
        if self._started:
            self._queue.put(None)
            self._thread.join(deadline_s)
            if self._thread.is_alive():
                log.error("drift monitoring: the last windows were not closed by the deadline")
        for writer in self.writers:
            # The writers flush side by side; each waits out what is left of the deadline.
            writer.start_closing()
        for writer in self.writers:
            writer.close(max(end - time.monotonic(), 0.1))

    # -- the hot path (event loop) -----------------------------------------------------------

    def offer(
        self,
        endpoint: str,
        version: str,
        inputs: dict[str, np.ndarray],
        outputs: dict[str, np.ndarray],
    ) -> None:
        """Maybe sample an answered request. Never blocks, never raises."""
        watched = self._versions.get((endpoint, version))
        if watched is None:
            return
        settings = watched.settings
        if settings.sample_rate < 1.0 and self._rng.random() >= settings.sample_rate:
            return
        now = time.monotonic()
        watched.tokens = min(
            max(settings.max_samples_per_s, 1.0),
            watched.tokens + (now - watched.refilled) * settings.max_samples_per_s,
        )
        watched.refilled = now
        if watched.tokens < 1.0:
            watched.counters.limited += 1
            return
        size = sum(tensor.nbytes for tensor in inputs.values()) + sum(
            tensor.nbytes for tensor in outputs.values()
        )
        if (
            self._queue.qsize() >= self._queue_size
            or self._bytes_in - self._bytes_out + size > self._queue_bytes
        ):
            watched.counters.dropped += 1
            return
        watched.tokens -= 1.0
        watched.counters.sampled += 1
        self._bytes_in += size
        self._queue.put((watched, {**inputs, **outputs}))

    # -- the worker thread -------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            # Woken by a clock, not by each sample: handing the GIL to this thread for every
            # sampled request would cost the event loop more than the statistics do.
            time.sleep(DRAIN_INTERVAL_S)
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    try:
                        self._close_all(final=True)
                    except Exception:
                        log.exception("drift monitoring: closing the last windows failed")
                    return
                self._step(item)
            self._step(None)

    def _step(self, item: tuple[_Version, dict[str, np.ndarray] | None] | None) -> None:
        try:
            if item is not None and item[1] is not None:
                self._bytes_out += sum(tensor.nbytes for tensor in item[1].values())
                self._add(item[0], item[1])
            elif item is not None:
                self._close_due([item[0]], final=True)
            self._close_all(final=False)
        except Exception:
            log.exception("drift monitoring step failed")

    def _add(self, watched: _Version, tensors: dict[str, np.ndarray]) -> None:
        # Kept whole: a window's tensors are split into features once, when it closes.
        if not watched.batched:
            tensors = {name: tensor[np.newaxis, ...] for name, tensor in tensors.items()}
        # Only what the features need is kept (an image's channel means, not its pixels).
        tensors = {name: reduced(tensor) for name, tensor in tensors.items()}
        rows = min((len(tensor) for tensor in tensors.values()), default=0)
        if watched.capturing is None:
            features = columns(tensors, batched=True)
            watched.capturing = any(name not in watched.profile for name in features)
        if watched.capturing:
            watched.capture.append(tensors)
            watched.captured_rows += rows
            if watched.captured_rows >= watched.settings.capture_reference:
                self._capture(watched)
            return
        if not watched.window:
            # A window starts with its first sample, not at the end of a quiet spell.
            watched.window_start = time.time()
            watched.window_clock = time.monotonic()
        watched.window.append(tensors)
        watched.window_rows += rows

    def _capture(self, watched: _Version) -> None:
        """The reference of every feature the file did not give, from the captured rows."""
        for name, column in _features(watched.capture).items():
            if name not in watched.profile:
                watched.profile[name] = reference_of(column, self._numpy_rng)
        watched.capture = []
        watched.capturing = False
        log.info(
            "drift monitoring %r version %s: reference captured from %d live rows",
            watched.endpoint,
            watched.version,
            watched.captured_rows,
        )

    def _close_all(self, final: bool) -> None:
        self._close_due(list(self._versions.values()), final)

    def _close_due(self, versions: list[_Version], final: bool) -> None:
        now = time.monotonic()
        for watched in versions:
            settings = watched.settings
            due = watched.window_rows >= settings.window_samples or (
                watched.window_rows
                and (final or now - watched.window_clock >= settings.window_seconds)
            )
            if not due:
                continue
            try:
                records = self._close(watched)
            except Exception:
                log.exception(
                    "drift window of %r version %s dropped", watched.endpoint, watched.version
                )
                records = []
            finally:
                self._reset(watched)
            for writer in self.writers:
                writer.put(records)

    def _close(self, watched: _Version) -> list[DriftRecord]:
        end = time.time()
        rows = watched.window_rows
        records = []

        def record(feature: str, statistic: str, value: float, status: Status) -> None:
            records.append(
                DriftRecord(
                    end,
                    watched.endpoint,
                    watched.version,
                    feature,
                    statistic,
                    value,
                    status,
                    rows,
                    watched.window_start,
                )
            )

        statuses: list[Status] = []
        found = _features(watched.window)
        judged = sorted(name for name in found if name in watched.profile)
        for name in judged:
            try:
                drift = compare(
                    watched.profile[name], found[name], watched.settings.thresholds, len(judged)
                )
            except (TypeError, ValueError) as error:
                # Live values of another kind than the reference's (text against numbers).
                log.warning(
                    "drift of %r version %s feature %s not computed: %s",
                    watched.endpoint,
                    watched.version,
                    name,
                    error,
                )
                continue
            for statistic, value in drift.values.items():
                record(name, statistic, value, drift.statuses[statistic])
            record(name, "status", float(LEVELS[drift.status]), drift.status)
            statuses.append(drift.status)
            # Let the event loop's thread have the GIL between features, so that a request
            # arriving now waits for one feature's statistics at most, not the whole window's.
            time.sleep(0)
        overall = worst(statuses)
        record(STATUS_FEATURE, "status", float(LEVELS[overall]), overall)
        watched.counters.windows += 1
        return records

    @staticmethod
    def _reset(watched: _Version) -> None:
        watched.window = []
        watched.window_rows = 0
        watched.window_start = time.time()
        watched.window_clock = time.monotonic()


def _features(samples: list[dict[str, np.ndarray]]) -> dict[str, Column]:
    """The features of some samples' tensors (rows first): joined tensor by tensor, or, where
    samples of one tensor differ in shape beyond the rows, feature by feature."""
    joined: dict[str, np.ndarray] = {}
    for name in dict.fromkeys(name for sample in samples for name in sample):
        parts = [sample[name] for sample in samples if name in sample]
        try:
            joined[name] = np.concatenate(parts)
        except ValueError:
            return _features_one_by_one(samples)
    return columns(joined, batched=True)


def _features_one_by_one(samples: list[dict[str, np.ndarray]]) -> dict[str, Column]:
    parts: dict[str, list[Column]] = {}
    for sample in samples:
        for name, column in columns(sample, batched=True).items():
            parts.setdefault(name, []).append(column)
    return {
        name: Column(np.concatenate([column.values for column in found]), found[0].numeric)
        for name, found in parts.items()
    }
