"""Triton's statistics extension: per model version counts and cumulative durations, which
perf_analyzer reads to split latency into queue, compute and transport time."""

import time
from dataclasses import dataclass, field
from typing import Any

from turnout.models.accounting import VersionCounters
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
class VersionStatistics:
    """Everything counted for one model version, whichever protocol its requests came by."""

    last_inference_ms: int = 0
    inference_count: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    cache_hit: Duration = field(default_factory=Duration)
    cache_miss: Duration = field(default_factory=Duration)

    def succeeded(
        self, total: float, compute_input: float, compute_output: float, run: RunStats
    ) -> None:
        """Count a request answered successfully, with where its time went (seconds)."""
        self.last_inference_ms = int(time.time() * 1000)
        self.inference_count += run.rows
        self.success.add(total)
        self.compute_input.add(compute_input)
        self.compute_output.add(compute_output)
        if run.cache_hit:
            self.cache_hit.add(total)
            return
        if run.cache_hit is False:
            self.cache_miss.add(total)
        self.queue.add(run.queue_seconds)
        self.compute_infer.add(run.run_seconds)

    def view(self, endpoint: str, version: str, counters: VersionCounters | None) -> dict[str, Any]:
        """As Triton's ModelStatistics; executions and batch sizes come from the version's
        scheduler counters (absent while it is not loaded)."""
        executions = sorted((counters.by_batch_size if counters else {}).items())
        return {
            "name": endpoint,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": sum(times.executions for _, times in executions),
            "inference_stats": {
                "success": self.success.view(),
                "fail": self.fail.view(),
                "queue": self.queue.view(),
                "compute_input": self.compute_input.view(),
                "compute_infer": self.compute_infer.view(),
                "compute_output": self.compute_output.view(),
                "cache_hit": self.cache_hit.view(),
                "cache_miss": self.cache_miss.view(),
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": _total(times.executions, times.gather_seconds),
                    "compute_infer": _total(times.executions, times.run_seconds),
                    "compute_output": _total(times.executions, times.scatter_seconds),
                }
                for size, times in executions
            ],
        }


class Statistics:
    """The statistics of every model version, created on first use."""

    def __init__(self) -> None:
        self._versions: dict[tuple[str, str], VersionStatistics] = {}

    def version(self, endpoint: str, version: str) -> VersionStatistics:
        """The statistics of one version."""
        stats = self._versions.get((endpoint, version))
        if stats is None:
            stats = self._versions[(endpoint, version)] = VersionStatistics()
        return stats


def _total(count: int, seconds: float) -> dict[str, int]:
    return {"count": count, "ns": int(seconds * _NS)}
