"""Shadow traffic: a sampled copy of a route's requests sent to another version in the
background, its outputs compared with the primary's. The caller is answered by the primary
alone; the shadow's latency and errors never reach it. Copies are bounded in flight (the excess
is dropped and counted)."""

import asyncio
import logging
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from turnout.models.accounting import Histogram
from turnout.models.repository import ModelRepository
from turnout.models.types import ModelRequest
from turnout.router.specs import ShadowConfig
from turnout.router.types import InferenceRequest

log = logging.getLogger(__name__)

SAMPLED_RECORDS = 100
DIFF_BUCKETS = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


@dataclass(slots=True)
class ShadowCounters:
    """What the shadow of one endpoint has done."""

    mirrored: int = 0
    dropped: int = 0
    errors: int = 0
    compared: int = 0
    top1_rows: int = 0
    top1_agreed: int = 0
    max_abs_diff: Histogram = field(default_factory=lambda: Histogram(DIFF_BUCKETS))
    records: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=SAMPLED_RECORDS))


class ShadowMirror:
    """Sends the sampled copies and keeps the comparisons."""

    def __init__(self, repository: ModelRepository, rng: random.Random) -> None:
        self._repository = repository
        self._rng = rng
        self._inflight: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.counters: dict[tuple[str, str], ShadowCounters] = {}

    def mirror(
        self,
        config: ShadowConfig,
        request: InferenceRequest,
        primary_version: str,
        primary: dict[str, np.ndarray],
    ) -> None:
        """Maybe send a copy of an answered request to the shadow version."""
        if config.version == primary_version or self._rng.random() >= config.rate:
            return
        endpoint = request.endpoint
        counters = self._counters(endpoint, config.version)
        if self._inflight.get(endpoint, 0) >= config.max_inflight:
            counters.dropped += 1
            return
        counters.mirrored += 1
        self._inflight[endpoint] = self._inflight.get(endpoint, 0) + 1
        task = asyncio.create_task(self._shadow(config.version, request, primary, counters))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for the copies in flight."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def stop(self) -> None:
        """Abandon the copies in flight (shadows are best effort; shutdown does not wait)."""
        for task in self._tasks:
            task.cancel()
        await self.drain()

    def _counters(self, endpoint: str, version: str) -> ShadowCounters:
        key = (endpoint, version)
        found = self.counters.get(key)
        if found is None:
            found = self.counters[key] = ShadowCounters()
        return found

    async def _shadow(
        self,
        version: str,
        request: InferenceRequest,
        primary: dict[str, np.ndarray],
        counters: ShadowCounters,
    ) -> None:
        try:
            runner = self._repository.runner(request.endpoint, version)
            shadow = await runner.infer(
                ModelRequest(request.inputs, tuple(primary), request.deadline)
            )
        except Exception as error:
            counters.errors += 1
            log.debug("shadow %s of %r failed: %s", version, request.endpoint, error)
            return
        finally:
            self._inflight[request.endpoint] -= 1
        self._compare(request, primary, shadow.outputs, counters)

    def _compare(
        self,
        request: InferenceRequest,
        primary: dict[str, np.ndarray],
        shadow: dict[str, np.ndarray],
        counters: ShadowCounters,
    ) -> None:
        record: dict[str, Any] = {"request_id": request.request_id, "outputs": {}}
        worst = 0.0
        for name, expected in primary.items():
            got = shadow.get(name)
            if got is None or got.shape != expected.shape or expected.dtype.kind not in "biuf":
                continue
            difference = float(
                np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64)), initial=0.0)
            )
            worst = max(worst, difference)
            compared: dict[str, Any] = {"max_abs_diff": difference}
            if expected.dtype.kind == "f" and expected.ndim >= 2 and expected.shape[-1] > 1:
                agreed = np.argmax(expected, axis=-1) == np.argmax(got, axis=-1)
                counters.top1_rows += int(agreed.size)
                counters.top1_agreed += int(agreed.sum())
                compared["top1_agreement"] = float(agreed.mean())
            record["outputs"][name] = compared
        counters.compared += 1
        counters.max_abs_diff.observe(worst)
        counters.records.append(record)
