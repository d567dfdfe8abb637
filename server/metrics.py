"""Prometheus metrics. Label values come only from configured names and fixed sets, so random
traffic cannot grow the number of series."""

from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
)

from turnout import errors

UNKNOWN = "_unknown"
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0,
)  # fmt: skip

# Ordered most specific first: the first class an error is an instance of names its status.
_STATUS_OF_ERROR: tuple[tuple[type[Exception], str], ...] = (
    (errors.UnsupportedMediaType, "unsupported_media_type"),
    (errors.InvalidInput, "invalid_input"),
    (errors.PayloadTooLarge, "payload_too_large"),
    (errors.ModelNotFound, "not_found"),
    (errors.ModelNotReady, "model_not_ready"),
    (errors.Unavailable, "unavailable"),
    (errors.Overloaded, "overloaded"),
    (errors.DeadlineExceeded, "deadline_exceeded"),
)
STATUSES = ("success", "cancelled", "internal_error", *(status for _, status in _STATUS_OF_ERROR))


def status_of(error: BaseException | None) -> str:
    """The ``status`` label for a request that ended with ``error`` (None: success)."""
    if error is None:
        return "success"
    for kind, status in _STATUS_OF_ERROR:
        if isinstance(error, kind):
            return status
    return "internal_error"


class Metrics:
    """Every metric the server exports, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        self.requests = Counter(
            "turnout_requests",
            "Inference requests by endpoint, serving version, protocol and outcome.",
            ["endpoint", "version", "protocol", "status"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "turnout_request_duration_seconds",
            "Time from a request's arrival to its answer, decoding and encoding included.",
            ["endpoint", "version", "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.run_duration = Histogram(
            "turnout_model_run_duration_seconds",
            "Time ONNX Runtime spent running a model version.",
            ["endpoint", "version"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
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
        self._series: dict[tuple[str, str, str], SeriesSet] = {}

    def series(self, endpoint: str, version: str, protocol: str) -> "SeriesSet":
        """The metric children of one endpoint, version and protocol, created once."""
        key = (endpoint, version, protocol)
        found = self._series.get(key)
        if found is None:
            found = self._series[key] = SeriesSet(
                outcomes={
                    status: self.requests.labels(endpoint, version, protocol, status)
                    for status in STATUSES
                },
                duration=self.request_duration.labels(endpoint, version, protocol),
                run_duration=self.run_duration.labels(endpoint, version),
            )
        return found


@dataclass(frozen=True, slots=True)
class SeriesSet:
    """Looked-up metric children, so the hot path skips prometheus-client's label lookup."""

    outcomes: dict[str, Counter]
    duration: Histogram
    run_duration: Histogram
