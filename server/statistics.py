"""Triton's statistics extension: per model version counts and cumulative durations, which
perf_analyzer reads to split latency into queue, compute and transport time."""

import time
from dataclasses import dataclass, field
from typing import Any

from turnout.models.types import RunStats

_NS = 1_000_000_000


@dataclass(slots=True)
class Duration:
    """A count and the total nanoseconds spent."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        """Count one more, taking ``seconds``."""
        self.count += 1
        self.ns += int(seconds * _NS)

    def view(self) -> dict[str, int]:
        """As Triton's StatisticDuration."""
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class BatchStatistics:
    """Compute durations of the executions of one batch size."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class VersionStatistics:
    """Everything counted for one model version."""

    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, BatchStatistics] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RequestTiming:
    """Where a successful request's time went, in seconds."""

    total: float
    compute_input: float
    compute_output: float
    run: RunStats


class Statistics:
    """Counters of every model version that has served a request."""

    def __init__(self) -> None:
        self._versions: dict[tuple[str, str], VersionStatistics] = {}

    def record_success(self, endpoint: str, version: str, timing: RequestTiming) -> None:
        """Count a request answered successfully."""
        stats = self._get(endpoint, version)
        run = timing.run
        stats.last_inference_ms = int(time.time() * 1000)
        stats.inference_count += run.rows
        stats.execution_count += 1
        stats.success.add(timing.total)
        stats.queue.add(run.queue_seconds)
        stats.compute_input.add(timing.compute_input)
        stats.compute_infer.add(run.run_seconds)
        stats.compute_output.add(timing.compute_output)
        batch = stats.batches.get(run.rows)
        if batch is None:
            batch = stats.batches[run.rows] = BatchStatistics()
        batch.compute_input.add(timing.compute_input)
        batch.compute_infer.add(run.run_seconds)
        batch.compute_output.add(timing.compute_output)

    def record_failure(self, endpoint: str, version: str, seconds: float) -> None:
        """Count a request that failed after its version was chosen."""
        self._get(endpoint, version).fail.add(seconds)

    def view(self, endpoint: str, version: str) -> dict[str, Any]:
        """Triton's ModelStatistics for one version, zeros if it has served nothing."""
        stats = self._versions.get((endpoint, version)) or VersionStatistics()
        return {
            "name": endpoint,
            "version": version,
            "last_inference": stats.last_inference_ms,
            "inference_count": stats.inference_count,
            "execution_count": stats.execution_count,
            "inference_stats": {
                "success": stats.success.view(),
                "fail": stats.fail.view(),
                "queue": stats.queue.view(),
                "compute_input": stats.compute_input.view(),
                "compute_infer": stats.compute_infer.view(),
                "compute_output": stats.compute_output.view(),
                "cache_hit": Duration().view(),
                "cache_miss": Duration().view(),
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": batch.compute_input.view(),
                    "compute_infer": batch.compute_infer.view(),
                    "compute_output": batch.compute_output.view(),
                }
                for size, batch in sorted(stats.batches.items())
            ],
        }

    def _get(self, endpoint: str, version: str) -> VersionStatistics:
        stats = self._versions.get((endpoint, version))
        if stats is None:
            stats = self._versions[(endpoint, version)] = VersionStatistics()
        return stats
