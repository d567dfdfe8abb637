"""What the models layer counts, as plain numbers updated on the event loop; the server layer
reads them when it reports (Prometheus at scrape time, Triton's statistics on request)."""

import bisect
from dataclasses import dataclass, field

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Histogram:
    """Counts per bucket (values up to each bound; the last bucket is +Inf) and their sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count one value."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def merged(self, other: "Histogram") -> "Histogram":
        """A histogram of both sets of values."""
        merged = Histogram(self.bounds)
        merged.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        merged.total = self.total + other.total
        return merged


@dataclass(slots=True)
class ExecutionTimes:
    """Executions of one batch size and their cumulative gather, run and scatter seconds."""

    executions: int = 0
    gather_seconds: float = 0.0
    run_seconds: float = 0.0
    scatter_seconds: float = 0.0


@dataclass(slots=True)
class CacheCounters:
    """The result cache of one version."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    entries: int = 0
    bytes: int = 0


@dataclass(slots=True)
class VersionCounters:
    """Everything the scheduler and cache of one model version count."""

    queue_time: Histogram = field(default_factory=Histogram)
    batch_size: Histogram = field(default_factory=lambda: Histogram(BATCH_SIZE_BUCKETS))
    by_batch_size: dict[int, ExecutionTimes] = field(default_factory=dict)
    rejected: int = 0
    expired: int = 0
    abandoned: int = 0
    abandoned_runs: int = 0
    queued: int = 0
    cache: CacheCounters = field(default_factory=CacheCounters)

    @property
    def executions(self) -> int:
        """How many times the model ran."""
        return sum(times.executions for times in self.by_batch_size.values())

    def executed(self, rows: int, gather: float, run: float, scatter: float) -> None:
        """Count one execution of ``rows`` rows and where its time went (seconds)."""
        self.batch_size.observe(rows)
        times = self.by_batch_size.get(rows)
        if times is None:
            times = self.by_batch_size[rows] = ExecutionTimes()
        times.executions += 1
        times.gather_seconds += gather
        times.run_seconds += run
        times.scatter_seconds += scatter
