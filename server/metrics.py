"""Prometheus metrics and Triton statistics, recorded once per request.

The per-request series are plain counters updated on the event loop and turned into Prometheus
families only when /metrics is scraped, so the hot path pays for a few additions rather than
prometheus-client's locked updates. Label values come only from configured names and fixed sets,
so random traffic cannot grow the number of series.
"""

from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Gauge, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from turnout import errors
from turnout.models.accounting import Histogram
from turnout.models.repository import ModelRepository
from turnout.models.types import RunStats
from turnout.monitoring.monitor import DriftMonitor
from turnout.monitoring.sinks import GaugeSink
from turnout.router.router import Router
from turnout.server.http.protocol import REFUSAL_REASONS
from turnout.server.saturation import LoopLag
from turnout.server.statistics import Statistics, VersionStatistics

UNKNOWN = "_unknown"

# Ordered most specific first: the first class an error is an instance of names its status.
_STATUS_OF_ERROR: tuple[tuple[type[BaseException], str], ...] = (
    (errors.ClientDisconnected, "cancelled"),
    (errors.UnsupportedMediaType, "unsupported_media_type"),
    (errors.InvalidInput, "invalid_input"),
    (errors.PayloadTooLarge, "payload_too_large"),
    (errors.AlreadyRecorded, "already_recorded"),
    (errors.Unauthenticated, "unauthenticated"),
    (errors.PermissionDenied, "permission_denied"),
    (errors.ModelNotFound, "not_found"),
    (errors.ModelNotReady, "model_not_ready"),
    (errors.Unavailable, "unavailable"),
    (errors.Overloaded, "overloaded"),
    (errors.DeadlineExceeded, "deadline_exceeded"),
    (errors.RunFailed, "internal_error"),
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


def _buckets(histogram: Histogram) -> list[tuple[str, float]]:
    """Prometheus's cumulative ``le`` buckets of a histogram."""
    buckets = []
    running = 0
    for bound, count in zip((*histogram.bounds, float("inf")), histogram.counts, strict=True):
        running += count
        buckets.append((floatToGoString(bound), float(running)))
    return buckets


class RequestSeries:
    """Everything recorded about the requests of one endpoint, version and protocol."""

    __slots__ = ("duration", "outcomes", "run_duration", "statistics")

    def __init__(self, statistics: VersionStatistics | None) -> None:
        self.outcomes = dict.fromkeys(STATUSES, 0)
        self.duration = Histogram()
        self.run_duration = Histogram()
        self.statistics = statistics

    def succeeded(
        self, total: float, compute_input: float, compute_output: float, run: RunStats
    ) -> None:
        """Record a request answered successfully (times in seconds)."""
        self.outcomes["success"] += 1
        self.duration.observe(total)
        if not run.cache_hit:
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
        self.http_refusals: Counter[str] = Counter()
        ProcessCollector(registry=self.registry)
        self.registry.register(_RequestCollector(self._series))
        self.registry.register(_RefusalCollector(self.http_refusals))
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

    def watch(self, repository: ModelRepository) -> None:
        """Export the scheduler and cache counters of the repository's versions."""
        self.registry.register(_ModelCollector(repository))

    def watch_loop_lag(self, lag: LoopLag) -> None:
        """Export how late the event loop runs."""
        Gauge(
            "turnout_event_loop_lag_seconds",
            "How late the event loop ran its last timer: how long a request waits to be read.",
            registry=self.registry,
        ).set_function(lambda: lag.seconds)

    def watch_router(self, router: Router) -> None:
        """Export the routes' state: policies, shadow comparisons, bandit arms, rollouts."""
        self.registry.register(_RouterCollector(router))

    def watch_monitor(self, monitor: DriftMonitor) -> None:
        """Export drift statistics, statuses and the monitor's own counters."""
        self.registry.register(_DriftCollector(monitor))

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
        runs: dict[tuple[str, str], Histogram] = {}
        for (endpoint, version, protocol), series in list(self._series.items()):
            for status, count in series.outcomes.items():
                requests.add_metric([endpoint, version, protocol, status], count)
            histogram = series.duration
            duration.add_metric([endpoint, version, protocol], _buckets(histogram), histogram.total)
            if version:
                seen = runs.get((endpoint, version))
                runs[(endpoint, version)] = (
                    series.run_duration if seen is None else seen.merged(series.run_duration)
                )
        for key, histogram in runs.items():
            run_duration.add_metric(list(key), _buckets(histogram), histogram.total)
        yield requests
        yield duration
        yield run_duration


class _RefusalCollector(Collector):
    """HTTP connections closed or answered by the connection's own limits, by reason."""

    def __init__(self, refusals: "Counter[str]") -> None:
        self._refusals = refusals

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "turnout_http_refusals",
            "HTTP requests refused, or connections closed, before reaching the application.",
            labels=["reason"],
        )
        for reason in REFUSAL_REASONS:
            family.add_metric([reason], self._refusals[reason])
        yield family


class _ModelCollector(Collector):
    """Turns each loaded version's scheduler and cache counters into Prometheus families."""

    def __init__(self, repository: ModelRepository) -> None:
        self._repository = repository

    def collect(self) -> Iterator[Metric]:
        labels = ["endpoint", "version"]

        def counter(name: str, documentation: str) -> CounterMetricFamily:
            return CounterMetricFamily(name, documentation, labels=labels)

        def gauge(name: str, documentation: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, documentation, labels=labels)

        batch_size = HistogramMetricFamily(
            "turnout_batch_size", "Rows per model execution.", labels=labels
        )
        queue_time = HistogramMetricFamily(
            "turnout_queue_duration_seconds",
            "Time requests waited in a version's queue before running.",
            labels=labels,
        )
        queue_depth = gauge("turnout_queue_depth", "Requests waiting in a version's queue.")
        rejected = counter(
            "turnout_queue_rejected", "Requests refused at once because the queue was full."
        )
        expired = counter(
            "turnout_queue_expired", "Requests whose deadline passed before they could run."
        )
        abandoned = counter(
            "turnout_queue_abandoned", "Requests whose caller went away while they were queued."
        )
        abandoned_runs = counter(
            "turnout_abandoned_runs", "Runs given up after the hard run timeout."
        )
        instances_ready = gauge(
            "turnout_instances_ready", "Instances serving (fewer while one is replaced)."
        )
        hits = counter("turnout_cache_hits", "Requests answered from the result cache.")
        misses = counter("turnout_cache_misses", "Requests the result cache could not answer.")
        evictions = counter("turnout_cache_evictions", "Results evicted or expired from the cache.")
        cached_bytes = gauge("turnout_cache_bytes", "Bytes held by the result cache.")
        for entry in self._repository.entries():
            runner = entry.runner
            if runner is None:
                continue
            key = [entry.spec.name, entry.spec.version]
            counts = runner.counters
            batch_size.add_metric(key, _buckets(counts.batch_size), counts.batch_size.total)
            queue_time.add_metric(key, _buckets(counts.queue_time), counts.queue_time.total)
            queue_depth.add_metric(key, counts.queued)
            rejected.add_metric(key, counts.rejected)
            expired.add_metric(key, counts.expired)
            abandoned.add_metric(key, counts.abandoned)
            abandoned_runs.add_metric(key, counts.abandoned_runs)
            instances_ready.add_metric(key, runner.ready_instances)
            if runner.has_cache:
                hits.add_metric(key, counts.cache.hits)
                misses.add_metric(key, counts.cache.misses)
                evictions.add_metric(key, counts.cache.evictions)
                cached_bytes.add_metric(key, counts.cache.bytes)
        yield from (batch_size, queue_time, queue_depth, rejected, expired, abandoned)
        yield from (abandoned_runs, instances_ready)
        yield from (hits, misses, evictions, cached_bytes)


class _RouterCollector(Collector):
    """Turns the router's counters into Prometheus families."""

    def __init__(self, router: Router) -> None:
        self._router = router

    def collect(self) -> Iterator[Metric]:
        router = self._router
        shadow_labels = ["endpoint", "version"]
        arm_labels = ["endpoint", "arm"]
        policy = GaugeMetricFamily(
            "turnout_route_info",
            "The policy of each endpoint's route.",
            labels=["endpoint", "policy"],
        )
        mirrored = CounterMetricFamily(
            "turnout_shadow_mirrored", "Requests copied to a shadow version.", labels=shadow_labels
        )
        dropped = CounterMetricFamily(
            "turnout_shadow_dropped",
            "Shadow copies dropped because too many were in flight.",
            labels=shadow_labels,
        )
        failed = CounterMetricFamily(
            "turnout_shadow_errors", "Shadow copies that failed.", labels=shadow_labels
        )
        difference = HistogramMetricFamily(
            "turnout_shadow_max_abs_diff",
            "Largest absolute difference between a shadow's outputs and the primary's.",
            labels=shadow_labels,
        )
        agreement = GaugeMetricFamily(
            "turnout_shadow_top1_agreement",
            "Share of rows whose top-1 class the shadow and the primary agree on.",
            labels=shadow_labels,
        )
        pulls = CounterMetricFamily(
            "turnout_bandit_pulls", "Requests a bandit sent to each arm.", labels=arm_labels
        )
        rewards = CounterMetricFamily(
            "turnout_bandit_rewards", "Rewards received per arm.", labels=arm_labels
        )
        estimate = GaugeMetricFamily(
            "turnout_bandit_reward_estimate", "Mean reward per arm so far.", labels=arm_labels
        )
        percent = GaugeMetricFamily(
            "turnout_rollout_canary_percent",
            "Share of traffic a guarded rollout gives its canary now.",
            labels=["endpoint"],
        )
        rollbacks = CounterMetricFamily(
            "turnout_rollout_rollbacks", "Guarded rollouts rolled back.", labels=["endpoint"]
        )
        for endpoint, route in router.routes().items():
            policy.add_metric([endpoint, route.config.policy], 1)
            if route.bandit is not None:
                estimates = route.bandit.estimates()
                for arm, stats in route.bandit.stats.items():
                    pulls.add_metric([endpoint, arm], stats.pulls)
                    rewards.add_metric([endpoint, arm], stats.rewards)
                    estimate.add_metric([endpoint, arm], estimates[arm])
            if route.rollout is not None:
                percent.add_metric([endpoint], route.rollout.percent)
                rollbacks.add_metric([endpoint], router.rollbacks.get(endpoint, 0))
        for (endpoint, version), counters in router.shadows.counters.items():
            key = [endpoint, version]
            mirrored.add_metric(key, counters.mirrored)
            dropped.add_metric(key, counters.dropped)
            failed.add_metric(key, counters.errors)
            histogram = counters.max_abs_diff
            difference.add_metric(key, _buckets(histogram), histogram.total)
            if counters.top1_rows:
                agreement.add_metric(key, counters.top1_agreed / counters.top1_rows)
        yield from (policy, mirrored, dropped, failed, difference, agreement)
        yield from (pulls, rewards, estimate, percent, rollbacks)


class _DriftCollector(Collector):
    """Turns the drift monitor's latest results and counters into Prometheus families."""

    def __init__(self, monitor: DriftMonitor) -> None:
        self._monitor = monitor

    def collect(self) -> Iterator[Metric]:
        version_labels = ["endpoint", "version"]
        value = GaugeMetricFamily(
            "turnout_drift_value",
            "The latest window's value of a drift statistic of a feature.",
            labels=["endpoint", "version", "feature", "statistic"],
        )
        status = GaugeMetricFamily(
            "turnout_drift_status",
            "Drift status of a feature (feature '*': the version), 0 ok, 1 warn, 2 alert.",
            labels=["endpoint", "version", "feature"],
        )
        sampled = CounterMetricFamily(
            "turnout_drift_samples", "Requests sampled for drift monitoring.", labels=version_labels
        )
        skipped = CounterMetricFamily(
            "turnout_drift_samples_skipped",
            "Samples not taken: over the per-second cap, or the monitor's queue was full.",
            labels=[*version_labels, "reason"],
        )
        windows = CounterMetricFamily(
            "turnout_drift_windows", "Windows compared with the reference.", labels=version_labels
        )
        sink_errors = CounterMetricFamily(
            "turnout_drift_sink_errors", "Failed writes to a drift sink.", labels=["sink"]
        )
        sink_dropped = CounterMetricFamily(
            "turnout_drift_records_dropped",
            "Drift records dropped because a sink fell too far behind.",
            labels=["sink"],
        )
        watched = self._monitor.counters()
        for (endpoint, version), counters in watched.items():
            key = [endpoint, version]
            sampled.add_metric(key, counters.sampled)
            skipped.add_metric([*key, "rate_cap"], counters.limited)
            skipped.add_metric([*key, "queue_full"], counters.dropped)
            windows.add_metric(key, counters.windows)
        for writer in self._monitor.writers:
            sink_errors.add_metric([writer.sink.name], writer.counters.errors)
            sink_dropped.add_metric([writer.sink.name], writer.counters.dropped)
            if isinstance(writer.sink, GaugeSink):
                values, statuses = writer.sink.snapshot()
                # An unloaded version's last values would otherwise stay exported.
                for series, number in values.items():
                    if series[:2] in watched:
                        value.add_metric(list(series), number)
                for feature, level in statuses.items():
                    if feature[:2] in watched:
                        status.add_metric(list(feature), level)
        yield from (value, status, sampled, skipped, windows, sink_errors, sink_dropped)
