"""Prometheus metrics and Triton statistics, recorded once per request.

The per-request series are plain counters updated on the event loop and turned into Prometheus
families only when /metrics is scraped, so the hot path pays for a few additions rather than
prometheus-client's locked updates. Label values come only from configured names and fixed sets,
so random traffic cannot grow the number of series.
"""

import bisect
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Gauge, ProcessCollector
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from turnout import errors
from turnout.models.types import RunStats
from turnout.server.statistics import Statistics, VersionStatistics

UNKNOWN = "_unknown"
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0,
)  # fmt: skip

# Ordered most specific first: the first class an error is an instance of names its status.
_STATUS_OF_ERROR: tuple[tuple[type[BaseException], str], ...] = (
    (errors.ClientDisconnected, "cancelled"),
    (errors.UnsupportedMediaType, "unsupported_media_type"),
    (errors.InvalidInput, "invalid_input"),
    (errors.PayloadTooLarge, "payload_too_large"),
    (errors.ModelNotFound, "not_found"),
    (errors.ModelNotReady, "model_not_ready"),
    (errors.Unavailable, "unavailable"),
    (errors.Overloaded, "overloaded"),
    (errors.DeadlineExceeded, "deadline_exceeded"),
)
STATUSES = (
    "success",
    "internal_error",
    *dict.fromkeys(status for _, status in _STATUS_OF_ERROR),
)


def status_of(error: BaseException | None) -> str:
    """The ``status`` label for a request that ended with ``error`` (None: success)."""
    if error is None:
        return "success"
    for kind, status in _STATUS_OF_ERROR:
        if isinstance(error, kind):
            return status
    return "internal_error"


class LatencyHistogram:
    """Counts per bucket of LATENCY_BUCKETS (the last one is +Inf) and the sum of the values."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        """Count one value."""
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus's ``le`` buckets."""
        buckets = []
        running = 0
        for bound, count in zip((*map(str, LATENCY_BUCKETS), "+Inf"), self.counts, strict=True):
            running += count
            buckets.append((bound, float(running)))
        return buckets


class RequestSeries:
    """Everything recorded about the requests of one endpoint, version and protocol."""

    __slots__ = ("duration", "outcomes", "run_duration", "statistics")

    def __init__(self, statistics: VersionStatistics | None) -> None:
        self.outcomes = dict.fromkeys(STATUSES, 0)
        self.duration = LatencyHistogram()
        self.run_duration = LatencyHistogram()
        self.statistics = statistics

    def succeeded(
        self, total: float, compute_input: float, compute_output: float, run: RunStats
    ) -> None:
        """Record a request answered successfully (times in seconds)."""
        self.outcomes["success"] += 1
        self.duration.observe(total)
        self.run_duration.observe(run.run_seconds)
        if self.statistics is not None:
            self.statistics.succeeded(total, compute_input, compute_output, run)

    def failed(self, status: str, total: float, run: RunStats | None) -> None:
        """Record a request that ended with an error or was abandoned."""
        self.outcomes[status] += 1
        self.duration.observe(total)
        if run is not None:
            self.run_duration.observe(run.run_seconds)
        if self.statistics is not None:
            self.statistics.fail.add(total)


class Metrics:
    """Every metric the server exports, in a registry of its own, and Triton's statistics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.statistics = Statistics()
        self._series: dict[tuple[str, str, str], RequestSeries] = {}
        ProcessCollector(registry=self.registry)
        self.registry.register(_RequestCollector(self._series))
        self.inflight = Gauge(
            "turnout_inflight_requests",
            "Inference requests being served now.",
            ["protocol"],
            registry=self.registry,
        )
        self.model_ready = Gauge(
            "turnout_model_ready",
            "1 when a model version is loaded and serving, else 0.",
            ["endpoint", "version"],
            registry=self.registry,
        )

    def series(self, endpoint: str, version: str, protocol: str) -> RequestSeries:
        """The series of one endpoint, version ("" before one was chosen) and protocol."""
        key = (endpoint, version, protocol)
        found = self._series.get(key)
        if found is None:
            statistics = self.statistics.version(endpoint, version) if version else None
            found = self._series[key] = RequestSeries(statistics)
        return found


class _RequestCollector(Collector):
    """Turns the request series into Prometheus families at scrape time."""

    def __init__(self, series: dict[tuple[str, str, str], RequestSeries]) -> None:
        self._series = series

    def collect(self) -> Iterator[Metric]:
        labels = ["endpoint", "version", "protocol"]
        requests = CounterMetricFamily(
            "turnout_requests",
            "Inference requests by endpoint, serving version, protocol and outcome.",
            labels=[*labels, "status"],
        )
        duration = HistogramMetricFamily(
            "turnout_request_duration_seconds",
            "Time from a request's arrival to its answer, decoding and encoding included.",
            labels=labels,
        )
        run_duration = HistogramMetricFamily(
            "turnout_model_run_duration_seconds",
            "Time ONNX Runtime spent running a model version.",
            labels=["endpoint", "version"],
        )
        runs: dict[tuple[str, str], list[LatencyHistogram]] = {}
        for (endpoint, version, protocol), series in list(self._series.items()):
            for status, count in series.outcomes.items():
                requests.add_metric([endpoint, version, protocol, status], count)
            histogram = series.duration
            duration.add_metric(
                [endpoint, version, protocol], histogram.cumulative(), histogram.total
            )
            if version:
                runs.setdefault((endpoint, version), []).append(series.run_duration)
        for key, histograms in runs.items():
            merged = LatencyHistogram()
            for histogram in histograms:
                merged.counts = [
                    a + b for a, b in zip(merged.counts, histogram.counts, strict=True)
                ]
                merged.total += histogram.total
            run_duration.add_metric(list(key), merged.cumulative(), merged.total)
        yield requests
        yield duration
        yield run_duration
