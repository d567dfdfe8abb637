"""The open loop's pacer: it never returns before the moment asked for, returns at once for a
moment passed, and a wait given up does not cut short the next one."""

import asyncio
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from turnout.loadtests.pacing import Pacer

Runner = Callable[[Coroutine[Any, Any, None]], None]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    """Runs a coroutine on the standard event loop or on uvloop (the load test's)."""
    return asyncio.run if request.param == "asyncio" else uvloop.run


def test_waits_end_at_or_after_their_moments_in_order(run: Runner) -> None:
    async def body() -> None:
        pacer = Pacer()
        try:
            moments = [time.perf_counter() + 0.002 * step for step in range(1, 51)]
            for moment in moments:
                await pacer.until(moment)
                assert time.perf_counter() >= moment
        finally:
            pacer.close()

    run(body())


@pytest.mark.skipif(sys.platform != "linux", reason="timerfd is Linux's")
def test_linux_paces_on_a_timerfd(run: Runner) -> None:
    async def body() -> None:
        pacer = Pacer()
        assert pacer.precise
        pacer.close()
        assert not pacer.precise

    run(body())


def test_a_moment_passed_returns_without_waiting_on_the_loop(run: Runner) -> None:
    async def body() -> None:
        pacer = Pacer()
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        counting = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        before = ticks
        await pacer.until(time.perf_counter() - 1.0)
        assert ticks == before  # no turn of the loop was given up
        counting.cancel()
        pacer.close()

    run(body())


def test_a_wait_given_up_does_not_end_the_next_one_early(run: Runner) -> None:
    async def body() -> None:
        pacer = Pacer()
        try:
            abandoned = asyncio.create_task(pacer.until(time.perf_counter() + 0.01))
            await asyncio.sleep(0)
            abandoned.cancel()
            await asyncio.sleep(0.03)  # the abandoned moment passes, unread
            later = time.perf_counter() + 0.05
            await pacer.until(later)
            assert time.perf_counter() >= later
        finally:
            pacer.close()

    run(body())


def test_the_event_loop_stays_responsive_while_waiting(run: Runner) -> None:
    async def body() -> None:
        pacer = Pacer()
        try:
            answered = asyncio.Event()
            asyncio.get_running_loop().call_later(0.01, answered.set)
            await pacer.until(time.perf_counter() + 0.1)
            assert answered.is_set()
        finally:
            pacer.close()

    run(body())
