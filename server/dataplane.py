"""The transport-neutral core that the HTTP and gRPC front ends both call: admission while
draining, in-flight accounting, metrics, and the one place unexpected faults become a logged
internal error."""

import asyncio
import functools
import logging
import time
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NoReturn

from turnout import __version__
from turnout.errors import InternalError, InvalidInput, Overloaded, Unavailable, quoted
from turnout.models.loader import VersionSpec
from turnout.models.repository import ModelRepository, VersionEntry
from turnout.models.types import RunStats
from turnout.monitoring.monitor import DriftMonitor
from turnout.router.router import Router
from turnout.router.types import InferenceRequest, InferenceResponse
from turnout.server.drift import watch_version
from turnout.server.metrics import UNKNOWN, Metrics, RequestSeries, status_of
from turnout.server.monitoring_config import ModelMonitoring
from turnout.server.saturation import LoopLag

log = logging.getLogger(__name__)

SERVER_NAME = "turnout"
PROTOCOLS = ("http", "grpc")
EXTENSIONS = ("binary_tensor_data", "model_configuration", "parameters", "statistics")


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What ``GET /v2`` and ServerMetadata report."""

    name: str
    version: str
    extensions: tuple[str, ...]


class DataPlane:
    """Shared by every transport; owns the router and repository for request handling."""

    def __init__(
        self,
        repository: ModelRepository,
        router: Router,
        metrics: Metrics,
        monitor: DriftMonitor | None = None,
        max_inflight: int = 4096,
        max_loop_lag_s: float | None = None,
    ) -> None:
        self.repository = repository
        self.router = router
        self.metrics = metrics
        self.monitor = monitor or DriftMonitor([])
        self.info = ServerInfo(SERVER_NAME, __version__, EXTENSIONS)
        self.draining = False
        self.max_inflight = max_inflight
        self.max_loop_lag_s = max_loop_lag_s
        self.loop_lag = LoopLag()
        self._inflight = 0
        self._inflight_by_protocol = dict.fromkeys(PROTOCOLS, 0)
        for protocol in PROTOCOLS:
            metrics.inflight.labels(protocol).set_function(
                functools.partial(self._inflight_by_protocol.__getitem__, protocol)
            )
        self._idle = asyncio.Event()
        self._idle.set()

    def is_ready(self) -> bool:
        """Whether the server takes inference requests: every model loaded and not draining."""
        return not self.draining and self.repository.is_ready()

    def version_entry(self, endpoint: str, version: str | None) -> VersionEntry:
        """The entry of the version that serves ``endpoint`` (or the pinned one)."""
        return self.repository.entry(endpoint, self.router.resolve(endpoint, version))

    def model_ready(self, endpoint: str, version: str | None) -> bool:
        """Whether that version is ready; raises ModelNotFound for unknown names."""
        return self.version_entry(endpoint, version).serving

    def request(self, protocol: str, endpoint: str) -> "RequestScope":
        """Admit an inference request; raises Unavailable while draining.

        Use the scope as a context manager around decoding, inference and encoding; entering it
        raises Overloaded (counted for the endpoint) when ``max_inflight`` requests are in
        flight already, or the event loop runs more than ``max_loop_lag_s`` late.
        """
        if self.draining:
            raise Unavailable("the server is shutting down")
        return RequestScope(self, protocol, endpoint)

    async def infer(self, request: InferenceRequest, scope: "RequestScope") -> InferenceResponse:
        """Route and run a decoded request inside its scope."""
        scope.version = self.router.choose(request)
        scope.dispatched = time.perf_counter()
        response = await self.router.run(request, scope.version)
        scope.returned = time.perf_counter()
        self.monitor.offer(request.endpoint, scope.version, request.inputs, response.outputs)
        scope.run = response.stats
        return response

    def statistics(self, endpoint: str | None, version: str | None) -> list[dict[str, Any]]:
        """Triton's statistics for every version, one model's versions, or one version."""
        if endpoint is None:
            keys = [(entry.spec.name, entry.spec.version) for entry in self.repository.entries()]
        elif version is None:
            keys = [(endpoint, v) for v in self.repository.versions(endpoint)]
        else:
            keys = [(endpoint, self.repository.entry(endpoint, version).spec.version)]
        views = []
        for name, version_name in keys:
            runner = self.repository.entry(name, version_name).runner
            statistics = self.metrics.statistics.version(name, version_name)
            views.append(statistics.view(name, version_name, runner.counters if runner else None))
        return views

    async def load_version(
        self, spec: VersionSpec, monitoring: ModelMonitoring | None, who: str
    ) -> dict[str, Any]:
        """Load a version beside the live ones; routes see it once it is ready."""
        entry = await self.repository.load(spec)
        if entry.runner is not None and monitoring is not None:
            await watch_version(self.monitor, entry.runner, monitoring)
        self.router.refresh(spec.name)
        self.publish_model_states()
        outcome = {"model": spec.name, "version": spec.version, "state": entry.state.value}
        if entry.reason:
            outcome["reason"] = entry.reason
        await self.router.audit_event(who, "load", spec.name, None, outcome)
        return outcome

    async def unload_version(self, endpoint: str, version: str, who: str) -> dict[str, Any]:
        """Unload a version no route sends traffic to, after its requests finish."""
        self.repository.entry(endpoint, version)
        if version in self.router.versions_in_use(endpoint):
            raise InvalidInput(
                f"the route of {quoted(endpoint)} sends traffic to version {version}; "
                "change the route first"
            )
        await self.repository.unload(endpoint, version)
        self.monitor.forget(endpoint, version)
        self.metrics.model_ready.remove(endpoint, version)
        self.router.refresh(endpoint)
        self.publish_model_states()
        outcome = {"model": endpoint, "version": version, "state": "UNLOADED"}
        await self.router.audit_event(who, "unload", endpoint, None, outcome)
        return outcome

    def repository_index(self) -> list[dict[str, str]]:
        """Every model version and its state, as Triton's repository index lists them."""
        index = []
        for entry in self.repository.entries():
            item = {"name": entry.spec.name, "version": entry.spec.version}
            item["state"] = entry.state.value
            if entry.reason:
                item["reason"] = entry.reason
            index.append(item)
        return index

    def internal_error(self, error: BaseException, request_id: str) -> InternalError:
        """Log an unexpected fault with a request id and return the error the client sees."""
        request_id = request_id or uuid.uuid4().hex
        log.error("request %s failed inside Turnout", request_id, exc_info=error)
        return InternalError(request_id)

    def start_draining(self) -> None:
        """Refuse new requests and report not ready; requests in flight carry on."""
        self.draining = True

    async def wait_idle(self, grace_s: float) -> bool:
        """Wait until no request is in flight; False when ``grace_s`` passed first."""
        try:
            async with asyncio.timeout(grace_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def publish_model_states(self) -> None:
        """Refresh the per-version readiness gauge."""
        for entry in self.repository.entries():
            ready = 1 if entry.serving else 0
            self.metrics.model_ready.labels(entry.spec.name, entry.spec.version).set(ready)

    def _enter(self, scope: "RequestScope") -> None:
        if self._inflight >= self.max_inflight:
            self._refuse(scope, f"at its limit of {self.max_inflight} requests in flight")
        lag = self.loop_lag.seconds
        if self.max_loop_lag_s is not None and lag > self.max_loop_lag_s:
            self._refuse(
                scope, f"saturated (requests wait {lag * 1000:.0f} ms before they are read)"
            )
        self._inflight += 1
        self._inflight_by_protocol[scope.protocol] += 1
        self._idle.clear()

    def _refuse(self, scope: "RequestScope", why: str) -> NoReturn:
        """Count ``scope``'s request as overloaded for its endpoint and refuse it."""
        self._series(scope).failed("overloaded", 0.0, None)
        raise Overloaded(f"the server is {why}; retry later")

    def _series(self, scope: "RequestScope") -> RequestSeries:
        endpoint = scope.endpoint if self.repository.has_model(scope.endpoint) else UNKNOWN
        return self.metrics.series(endpoint, scope.version or "", scope.protocol)

    def _exit(self, scope: "RequestScope", error: BaseException | None) -> None:
        self._inflight -= 1
        self._inflight_by_protocol[scope.protocol] -= 1
        if self._inflight == 0:
            self._idle.set()
        finished = time.perf_counter()
        total = finished - scope.started
        series = self._series(scope)
        run = scope.run
        status = "success" if error is None and run is not None else _status(error)
        if status == "success" and run is not None:
            compute_input = scope.dispatched - scope.started
            series.succeeded(total, compute_input, finished - scope.returned, run)
        else:
            series.failed(status, total, run)
        if scope.version:
            self.router.finished(scope.endpoint, scope.version, total, status)


def _status(error: BaseException | None) -> str:
    if isinstance(error, asyncio.CancelledError):
        return "cancelled"
    return status_of(error)


class RequestScope:
    """One admitted request: counts it in flight and records its outcome on exit."""

    __slots__ = (
        "_plane",
        "dispatched",
        "endpoint",
        "protocol",
        "returned",
        "run",
        "started",
        "version",
    )

    def __init__(self, plane: DataPlane, protocol: str, endpoint: str) -> None:
        self._plane = plane
        self.protocol = protocol
        self.endpoint = endpoint
        self.version: str | None = None
        self.run: RunStats | None = None
        self.started = time.perf_counter()
        self.dispatched = self.started
        self.returned = self.started

    def __enter__(self) -> "RequestScope":
        self._plane._enter(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._plane._exit(self, exc)
