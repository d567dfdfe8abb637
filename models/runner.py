"""The runner of one model version: validates a request, answers it from the cache when it can,
and otherwise hands it to the scheduler, which batches it and runs it on an instance."""

import asyncio
import dataclasses
import time

import numpy as np

from turnout.errors import DeadlineExceeded, InvalidInput, quoted
from turnout.models.accounting import VersionCounters
from turnout.models.cache import CacheSettings, ResultCache
from turnout.models.instance import Feed, OrtInstance
from turnout.models.scheduler import BatchPolicy, ScheduledResult, Scheduler
from turnout.models.types import ModelRequest, ModelResponse, ModelSignature, Placement, RunStats
from turnout.models.validation import validate_request


class ModelRunner:
    """Serves one model version on its worker instances."""

    def __init__(
        self,
        signature: ModelSignature,
        placement: Placement,
        instances: list[OrtInstance],
        policy: BatchPolicy,
        cache: CacheSettings | None = None,
        timeout_s: float | None = None,
    ) -> None:
        self.signature = signature
        self.placement = placement
        self.policy = policy
        self.counters = VersionCounters()
        self._timeout_s = timeout_s
        self._all_outputs = tuple(spec.name for spec in signature.outputs)
        self._bytes_inputs = {spec.name for spec in signature.inputs if spec.datatype.is_bytes}
        label = f"model {quoted(signature.name)} version {signature.version}"
        self._scheduler = Scheduler(
            label,
            instances,
            policy,
            tuple(spec.name for spec in signature.inputs),
            self._all_outputs,
            self.counters,
            self._replacement,
        )
        self._warmup = False
        self._cache = (
            ResultCache(cache, f"{signature.name}\0{signature.version}", self.counters.cache)
            if cache is not None
            else None
        )
        self._flights: dict[bytes, asyncio.Future[ScheduledResult]] = {}

    @property
    def ready_instances(self) -> int:
        """Instances serving now; fewer than configured while an abandoned one is replaced."""
        return self._scheduler.ready_instances

    @property
    def has_cache(self) -> bool:
        """Whether the version keeps a result cache."""
        return self._cache is not None

    async def infer(self, request: ModelRequest) -> ModelResponse:
        """Run ``request``; raises InvalidInput before running when it does not fit the model."""
        validate_request(self.signature, request)
        rows = self._rows(request)
        outputs = request.requested_outputs or self._all_outputs
        deadline = request.deadline
        if self._timeout_s is not None:
            own = time.monotonic() + self._timeout_s
            deadline = own if deadline is None else min(deadline, own)
        cache = self._cache
        if cache is None:
            feed = self._feed(request.inputs)
            shares, stats = await self._scheduler.submit(feed, rows, outputs, deadline)
            return ModelResponse(shares, stats)
        return await self._cached(cache, request, rows, outputs, deadline)

    async def _cached(
        self,
        cache: ResultCache,
        request: ModelRequest,
        rows: int,
        outputs: tuple[str, ...],
        deadline: float | None,
    ) -> ModelResponse:
        counters = self.counters.cache
        key = cache.key(request.inputs, outputs)
        while True:
            hit = cache.get(key)
            if hit is not None:
                counters.hits += 1
                return ModelResponse(hit, RunStats(rows, 0.0, 0.0, 0, cache_hit=True))
            flight = self._flights.get(key)
            leading = flight is None
            if flight is None:
                counters.misses += 1
                feed = self._feed(request.inputs)
                flight = asyncio.ensure_future(
                    self._scheduler.submit(feed, rows, outputs, deadline)
                )
                self._flights[key] = flight
                flight.add_done_callback(lambda landed: self._landed(cache, key, landed))
            else:
                # An identical request is running: wait for its result instead of running again.
                counters.hits += 1
            try:
                # The run's own queue entry carries the leader's deadline; a waiter bounds its
                # wait by its own.
                shares, stats = await self._await_flight(flight, None if leading else deadline)
            except DeadlineExceeded:
                if leading or (deadline is not None and deadline <= time.monotonic()):
                    raise
                continue  # the run this request waited for missed its own deadline: run anew
            if leading:
                return ModelResponse(shares, dataclasses.replace(stats, cache_hit=False))
            return ModelResponse(dict(shares), RunStats(rows, 0.0, 0.0, 0, cache_hit=True))

    async def _await_flight(
        self, flight: "asyncio.Future[ScheduledResult]", deadline: float | None
    ) -> ScheduledResult:
        """The shared run's result, waited for no longer than this request's own deadline."""
        if deadline is None:
            return await asyncio.shield(flight)
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                return await asyncio.shield(flight)
        except TimeoutError:
            self.counters.expired += 1
            raise DeadlineExceeded(
                f"model {quoted(self.signature.name)} version {self.signature.version}: "
                "the request's deadline passed before it could run"
            ) from None

    def _landed(
        self, cache: ResultCache, key: bytes, flight: "asyncio.Future[ScheduledResult]"
    ) -> None:
        del self._flights[key]
        if not flight.cancelled() and flight.exception() is None:
            cache.put(key, flight.result()[0])

    def _rows(self, request: ModelRequest) -> int:
        if self.signature.max_batch_size == 0 or not request.inputs:
            return 1
        return int(next(iter(request.inputs.values())).shape[0])

    def _feed(self, inputs: dict[str, np.ndarray]) -> Feed:
        """What ONNX Runtime is given: text for string inputs, native byte order throughout
        (it reads raw memory, and validation accepts either order)."""
        feed: Feed = inputs
        for name, array in inputs.items():
            if name in self._bytes_inputs:
                converted = _as_text(name, array)
            elif not array.dtype.isnative:
                converted = array.astype(array.dtype.newbyteorder("="))
            else:
                continue
            if feed is inputs:
                feed = dict(inputs)
            feed[name] = converted
        return feed

    def warm_up(self) -> None:
        """Run every instance once on zeros (blocking; called while loading). Replacements of
        abandoned instances are warmed up the same way."""
        self._warmup = True
        for instance in self._scheduler.instances:
            self._warm(instance)

    def _warm(self, instance: OrtInstance) -> None:
        feed: Feed = {
            spec.name: _zeros(spec.shape, spec.datatype.dtype, spec.datatype.is_bytes)
            for spec in self.signature.inputs
        }
        instance.run_now(feed, list(self._all_outputs))

    def _replacement(self, abandoned: OrtInstance) -> OrtInstance:
        """The instance that takes an abandoned one's place (blocking: loads the model)."""
        instance = abandoned.replacement()
        if self._warmup:
            try:
                self._warm(instance)
            except BaseException:
                instance.close()
                raise
        return instance

    async def settle(self) -> None:
        """Return once no request is queued or running on this version."""
        await self._scheduler.settle()

    def close(self) -> None:
        """Let queued runs finish, then stop the instances' threads."""
        for instance in self._scheduler.close():
            instance.close()


def _as_text(name: str, array: np.ndarray) -> np.ndarray:
    """ONNX string tensors hold text: decode each BYTES element as UTF-8."""
    flat = array.reshape(-1)
    text = np.empty(flat.shape, dtype=object)
    try:
        for i, element in enumerate(flat):
            text[i] = element.decode() if isinstance(element, bytes) else str(element)
    except UnicodeDecodeError:
        raise InvalidInput(
            f"input {quoted(name)}: element {i} is not valid UTF-8, which ONNX string tensors need"
        ) from None
    return text.reshape(array.shape)


def _zeros(shape: tuple[int, ...], dtype: np.dtype[np.generic], is_bytes: bool) -> np.ndarray:
    concrete = tuple(1 if dim < 0 else dim for dim in shape)
    if is_bytes:
        return np.full(concrete, "", dtype=object)
    return np.zeros(concrete, dtype=dtype)
