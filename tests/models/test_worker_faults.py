"""Worker faults in the scheduler (models/scheduler.py, models/instance.py): a run that passes the
version's hard run timeout fails only its own batch, its instance is abandoned (ONNX Runtime is
told to stop the run) and replaced, and until the replacement is ready the version has one
instance fewer. Real ONNX Runtime sessions on a model whose run takes as long as asked."""

import asyncio
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import onnxruntime as ort
import pytest

from tests.support.batching_models import slow_echo
from turnout.errors import RunFailed
from turnout.models.accounting import VersionCounters
from turnout.models.instance import OrtInstance
from turnout.models.providers import CPU
from turnout.models.scheduler import BatchPolicy, Scheduler

RUN_TIMEOUT_S = 0.3
# Loop steps that would keep an instance busy for minutes.
ENDLESS_STEPS = 200_000_000
WAIT_TIMEOUT_S = 20.0


def new_session() -> ort.InferenceSession:
    return ort.InferenceSession(slow_echo().SerializeToString(), providers=[CPU])


def steps(count: int) -> dict[str, np.ndarray]:
    return {"X": np.array([[count]], dtype=np.int64)}


class Replacements:
    """The scheduler's ``replace``: holds each replacement until ``release`` is set; fails the
    first ``failures`` attempts."""

    def __init__(self, failures: int = 0) -> None:
        self.release = threading.Event()
        self.release.set()
        self.failures = failures
        self.attempts = 0
        self.made: list[OrtInstance] = []

    def __call__(self, abandoned: OrtInstance) -> OrtInstance:
        self.attempts += 1
        assert self.release.wait(WAIT_TIMEOUT_S)
        if self.attempts <= self.failures:
            raise RuntimeError("the model file went away")
        instance = abandoned.replacement()
        self.made.append(instance)
        return instance


@pytest.fixture
def instances() -> Iterator[list[OrtInstance]]:
    made: list[OrtInstance] = []
    yield made
    for instance in made:
        if not instance.abandoned:
            instance.close()


def scheduler_of(
    instances: list[OrtInstance], replace: Callable[[OrtInstance], OrtInstance], count: int = 1
) -> tuple[Scheduler, VersionCounters]:
    for index in range(count):
        instances.append(OrtInstance(new_session(), f"ort-echo-1-{index}", None, new_session))
    counters = VersionCounters()
    policy = BatchPolicy(max_batch_size=8, run_timeout_s=RUN_TIMEOUT_S)
    scheduler = Scheduler(
        "model 'echo' version 1", list(instances), policy, ("X",), ("Y",), counters, replace
    )
    return scheduler, counters


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def test_a_run_past_the_hard_timeout_fails_its_batch_and_the_instance_is_replaced(
    instances: list[OrtInstance],
) -> None:
    replacements = Replacements()
    replacements.release.clear()
    scheduler, counters = scheduler_of(instances, replacements)
    (original,) = instances

    async def scenario() -> None:
        started = time.monotonic()
        with pytest.raises(RunFailed, match=f"did not finish within {RUN_TIMEOUT_S:g} s"):
            await scheduler.submit(steps(ENDLESS_STEPS), 1, ("Y",), None)
        assert time.monotonic() - started < RUN_TIMEOUT_S + 5
        assert original.abandoned
        assert scheduler.ready_instances == 0
        assert counters.abandoned_runs == 1
        # With no instance, a request waits in the queue for the replacement.
        waiting = asyncio.ensure_future(scheduler.submit(steps(7), 1, ("Y",), None))
        await until(lambda: counters.queued == 1, "the request queued")
        replacements.release.set()
        shares, _ = await asyncio.wait_for(waiting, WAIT_TIMEOUT_S)
        np.testing.assert_array_equal(shares["Y"], [[7]])
        assert scheduler.ready_instances == 1
        assert scheduler.instances == replacements.made

    asyncio.run(scenario())
    instances.extend(replacements.made)
    # ONNX Runtime stopped the abandoned run: its thread ends long before the run would have.
    original._thread.join(WAIT_TIMEOUT_S)
    assert not original._thread.is_alive()


def test_other_instances_serve_while_one_is_replaced(instances: list[OrtInstance]) -> None:
    replacements = Replacements()
    replacements.release.clear()
    scheduler, counters = scheduler_of(instances, replacements, count=2)

    async def scenario() -> None:
        hung = asyncio.ensure_future(scheduler.submit(steps(ENDLESS_STEPS), 1, ("Y",), None))
        await until(lambda: counters.queued == 0, "the hung request running")
        for value in (1, 2, 3):
            shares, _ = await scheduler.submit(steps(value), 1, ("Y",), None)
            np.testing.assert_array_equal(shares["Y"], [[value]])
        with pytest.raises(RunFailed):
            await hung
        assert scheduler.ready_instances == 1
        replacements.release.set()
        await until(lambda: scheduler.ready_instances == 2, "the replacement")

    asyncio.run(scenario())
    instances.extend(replacements.made)


def test_a_replacement_that_fails_to_load_is_tried_again(instances: list[OrtInstance]) -> None:
    replacements = Replacements(failures=1)
    scheduler, _ = scheduler_of(instances, replacements)

    async def scenario() -> None:
        with pytest.raises(RunFailed):
            await scheduler.submit(steps(ENDLESS_STEPS), 1, ("Y",), None)
        await until(lambda: scheduler.ready_instances == 1, "the second attempt")
        shares, _ = await scheduler.submit(steps(4), 1, ("Y",), None)
        np.testing.assert_array_equal(shares["Y"], [[4]])

    asyncio.run(scenario())
    instances.extend(replacements.made)
    assert replacements.attempts == 2


def test_runs_within_the_hard_timeout_are_untouched(instances: list[OrtInstance]) -> None:
    replacements = Replacements()
    scheduler, counters = scheduler_of(instances, replacements)

    async def scenario() -> None:
        for value in range(20):
            shares, _ = await scheduler.submit(steps(value), 1, ("Y",), None)
            np.testing.assert_array_equal(shares["Y"], [[value]])
        # Past the timeout after the last run: a finished run's watchdog must not fire.
        await asyncio.sleep(RUN_TIMEOUT_S * 2)

    asyncio.run(scenario())
    assert counters.abandoned_runs == 0
    assert replacements.attempts == 0
    assert scheduler.ready_instances == 1
