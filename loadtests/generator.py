"""One load-generating process: it runs every phase of the plan (its share of the concurrency
or of the arrival rate) from a start time shared by all processes, and records what happened
per second and per phase, in histograms that merge exactly with the other processes'.

Closed loop: N callers, each sending its next request when the previous one is answered;
latency from send to answer. Open loop: requests due at fixed or Poisson-distributed moments,
each sent when due whatever is still in flight; latency from the moment it was due, so a server
that stalls shows its stall in every request that waited for it rather than in fewer requests.
"""

import asyncio
import logging
import multiprocessing
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import uvloop

from turnout.loadtests.clients import Client, Outcome, Target, open_client, prepare
from turnout.loadtests.data import Rows
from turnout.loadtests.histogram import LatencyHistogram
from turnout.loadtests.pacing import Pacer

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 10_000  # per process in open loop; beyond it, requests are not sent (and counted)
PROGRESS_S = 1.0


@dataclass(frozen=True)
class PhasePlan:
    """What one process does in one phase."""

    name: str
    start_s: float
    duration_s: float
    concurrency: int  # this process's callers (closed loop), else 0
    rate: float  # this process's requests per second (open loop), else 0
    poisson: bool
    mix: list[tuple[str, float]]  # endpoint, weight
    drift_start_s: float | None  # when the drifted requests take over, into the phase
    routing_keys: int | None
    rewards: dict[str, dict[str, float]]


@dataclass(frozen=True)
class Plan:
    """What one process is given."""

    index: int
    target: Target
    protocol: str
    start_at: float  # time.time() of the run's second 0, the same for every process
    phases: list[PhasePlan]
    # Phase ("" for those without data of their own) → endpoint → requests.
    requests: dict[str, dict[str, list[Rows]]]
    drifted: dict[str, dict[str, list[Rows]]]  # phase → endpoint → requests


@dataclass
class Tally:
    """What happened to the requests of one second or one phase."""

    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    requests: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    versions: Counter[str] = field(default_factory=Counter)  # "endpoint/version" → answered
    not_sent: int = 0  # open loop: due, but MAX_IN_FLIGHT were in flight already
    # The answered requests that succeeded: under overload, the latency of what was admitted.
    success_latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def add(self, endpoint: str, outcome: Outcome, latency_us: float) -> None:
        """Count one request."""
        self.requests += 1
        self.latency.record(latency_us)
        if outcome.ok:
            self.versions[f"{endpoint}/{outcome.version}"] += 1
            self.success_latency.record(latency_us)
        else:
            self.errors[outcome.code] += 1

    def to_dict(self) -> dict[str, Any]:
        """A picklable, JSON-able form."""
        return {
            "latency": self.latency.to_dict(),
            "requests": self.requests,
            "errors": dict(self.errors),
            "versions": dict(self.versions),
            "not_sent": self.not_sent,
            "success_latency": self.success_latency.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Tally":
        """The tally ``to_dict`` gave."""
        return cls(
            LatencyHistogram.from_dict(data["latency"]),
            data["requests"],
            Counter(data["errors"]),
            Counter(data["versions"]),
            data["not_sent"],
            LatencyHistogram.from_dict(data["success_latency"]),
        )

    def merge(self, other: "Tally") -> None:
        """Add another process's tally."""
        self.latency.merge(other.latency)
        self.requests += other.requests
        self.errors.update(other.errors)
        self.versions.update(other.versions)
        self.not_sent += other.not_sent
        self.success_latency.merge(other.success_latency)


class Recorder:
    """Tallies per second of the run and per phase."""

    def __init__(self) -> None:
        self.seconds: dict[int, Tally] = {}  # until handed to the parent
        self.phases: dict[str, Tally] = {}
        self.rewards: Counter[str] = Counter()

    def hand_over(self, before: int) -> dict[int, dict[str, Any]]:
        """The tallies of the seconds before ``before``, forgotten here: the parent adds them
        up (an answer that comes late to a second handed over is handed over again, alone)."""
        done = [second for second in self.seconds if second < before]
        return {second: self.seconds.pop(second).to_dict() for second in done}

    def add(
        self, phase: str, second: int, endpoint: str, outcome: Outcome, latency_us: float
    ) -> None:
        """Count one request, due at ``second`` of the run, in ``phase``."""
        tally = self.seconds.get(second)
        if tally is None:
            tally = self.seconds[second] = Tally()
        tally.add(endpoint, outcome, latency_us)
        phase_tally = self.phases.get(phase)
        if phase_tally is None:
            phase_tally = self.phases[phase] = Tally()
        phase_tally.add(endpoint, outcome, latency_us)

    def not_sent(self, phase: str, second: int) -> None:
        """Count a request the process could not send."""
        for tally in (
            self.seconds.setdefault(second, Tally()),
            self.phases.setdefault(phase, Tally()),
        ):
            tally.not_sent += 1

    def to_dict(self) -> dict[str, Any]:
        """Everything, picklable."""
        return {
            "seconds": self.hand_over(max(self.seconds, default=-1) + 1),
            "phases": {name: tally.to_dict() for name, tally in self.phases.items()},
            "rewards": dict(self.rewards),
        }


class _Run:
    """The state of one process's run."""

    def __init__(
        self,
        plan: Plan,
        client: Client,
        plain: dict[str, dict[str, list[object]]],
        drifted: dict[str, dict[str, list[object]]],
    ) -> None:
        self.plan = plan
        self.client = client
        self.plain = plain
        self.drifted = drifted
        self.recorder = Recorder()
        self.rng = random.Random(plan.index)
        self.sequence = 0
        self.cursor: Counter[str] = Counter()
        # perf_counter at the run's second 0 (not the event loop's clock: uvloop's counts
        # whole milliseconds).
        self.zero = time.perf_counter() + (plan.start_at - time.time())
        self.in_flight: set[asyncio.Task[None]] = set()

    def pick(self, phase: PhasePlan, now: float) -> tuple[str, object, str | None]:
        """The endpoint, prepared request and routing key of the next request."""
        endpoints = [endpoint for endpoint, _ in phase.mix]
        endpoint = (
            endpoints[0]
            if len(endpoints) == 1
            else self.rng.choices(endpoints, [weight for _, weight in phase.mix])[0]
        )
        drifted = phase.drift_start_s is not None and now >= phase.start_s + phase.drift_start_s
        if drifted:
            pool = self.drifted[phase.name][endpoint]
        else:
            pool = self.plain.get(phase.name, self.plain[""])[endpoint]
        index = self.cursor[endpoint] % len(pool)
        self.cursor[endpoint] += 1
        key = f"user-{self.rng.randrange(phase.routing_keys)}" if phase.routing_keys else None
        return endpoint, pool[index], key

    async def send(self, phase: PhasePlan, due: float) -> None:
        """Send one request due at ``due`` (perf_counter) and count it: its latency runs from
        when it was due, or from when it was sent if that was earlier (the event loop's timers
        may wake a little early where there is no timerfd)."""
        endpoint, request, key = self.pick(phase, due - self.zero)
        self.sequence += 1
        request_id = f"lt-{self.plan.index}-{self.sequence}"
        start = min(due, time.perf_counter())
        outcome = await self.client.infer(request, request_id, key)
        latency_us = (outcome.answered_at - start) * 1e6
        self.recorder.add(phase.name, int(due - self.zero), endpoint, outcome, latency_us)
        odds = phase.rewards.get(endpoint, {}).get(outcome.version or "") if outcome.ok else None
        if odds is not None:
            reward = 1.0 if self.rng.random() < odds else 0.0
            answer = await self.client.reward(endpoint, request_id, reward)
            self.recorder.rewards[answer.code if not answer.ok else "sent"] += 1

    async def closed(self, phase: PhasePlan, end: float) -> None:
        async def caller() -> None:
            while time.perf_counter() < end:
                await self.send(phase, time.perf_counter())

        await asyncio.gather(*(caller() for _ in range(phase.concurrency)))

    async def opened(self, phase: PhasePlan, start: float, pacer: Pacer) -> None:
        # Moments as offsets into the phase, a fixed rate's each computed afresh: summing the
        # gaps onto a large clock reading made the count of a fixed-rate phase depend on
        # rounding (599 or 600 requests for 3 s at 200/s).
        offset = 0.0
        arrivals = 0
        while True:
            arrivals += 1
            if phase.poisson:
                offset += self.rng.expovariate(phase.rate)
            else:
                offset = arrivals / phase.rate
            if offset >= phase.duration_s:
                break
            due = start + offset
            await pacer.until(due)
            if len(self.in_flight) >= MAX_IN_FLIGHT:
                self.recorder.not_sent(phase.name, int(due - self.zero))
                continue
            task = asyncio.create_task(self.send(phase, due))
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)
        if self.in_flight:
            await asyncio.wait(set(self.in_flight))

    async def run(self, progress: "multiprocessing.Queue[Any] | None") -> None:
        reporter = asyncio.create_task(self.report(progress)) if progress is not None else None
        pacer = Pacer()
        try:
            for phase in self.plan.phases:
                start = self.zero + phase.start_s
                end = start + phase.duration_s
                if time.perf_counter() < start:
                    await asyncio.sleep(start - time.perf_counter())
                if phase.concurrency:
                    await self.closed(phase, end)
                elif phase.rate:
                    await self.opened(phase, start, pacer)
                else:
                    await asyncio.sleep(max(end - time.perf_counter(), 0))
        finally:
            pacer.close()
        if reporter is not None:
            reporter.cancel()

    async def report(self, progress: "multiprocessing.Queue[Any]") -> None:
        """Every second, the tallies of the seconds just over, so that this process holds no
        more than a few seconds of them however long the run."""
        while True:
            await asyncio.sleep(PROGRESS_S)
            finished = int(time.perf_counter() - self.zero)
            seconds = self.recorder.hand_over(finished)
            progress.put(("progress", self.plan.index, (finished, seconds)))


async def _run(plan: Plan, progress: "multiprocessing.Queue[Any] | None") -> dict[str, Any]:
    endpoints = sorted({endpoint for phase in plan.phases for endpoint, _ in phase.mix})

    def encoded(sets: dict[str, dict[str, list[Rows]]]) -> dict[str, dict[str, list[object]]]:
        return {
            key: {name: prepare(plan.protocol, name, found) for name, found in by_name.items()}
            for key, by_name in sets.items()
        }

    client = open_client(plan.protocol, plan.target, endpoints)
    cpu_start = time.process_time()
    try:
        run = _Run(plan, client, encoded(plan.requests), encoded(plan.drifted))
        await run.run(progress)
    finally:
        await client.close()
    return {**run.recorder.to_dict(), "cpu_seconds": time.process_time() - cpu_start}


def run_in_process(plan: Plan, progress: "multiprocessing.Queue[Any] | None") -> dict[str, Any]:
    """Run the plan on this process's own event loop; returns its recorder's figures."""
    return uvloop.run(_run(plan, progress))


def worker_main(plan: Plan, results: "multiprocessing.Queue[Any]") -> None:
    """The entry point of a load-generating process."""
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
    try:
        results.put(("done", plan.index, run_in_process(plan, results)))
    except KeyboardInterrupt:
        return  # Ctrl-C reached the whole process group; the parent reports it
    except Exception as error:  # reported to the parent, which fails the run with it
        results.put(("failed", plan.index, f"{type(error).__name__}: {error}"))
