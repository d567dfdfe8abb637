"""Admission control of the data plane (server/dataplane.py, server/saturation.py): how late the
event loop runs is measured, and requests are refused at once (Overloaded, counted for their
endpoint) while it runs later than allowed or too many requests are in flight."""

import asyncio
import time

import pytest

from turnout.errors import Overloaded
from turnout.models.repository import ModelRepository
from turnout.router.router import Router
from turnout.server.dataplane import DataPlane
from turnout.server.metrics import UNKNOWN, Metrics
from turnout.server.saturation import LoopLag

TICK_S = 0.01
BLOCK_S = 0.3


def plane(max_inflight: int = 100, max_loop_lag_s: float | None = 0.1) -> DataPlane:
    repository = ModelRepository([])
    return DataPlane(repository, Router(repository), Metrics(), None, max_inflight, max_loop_lag_s)


def overloaded(data_plane: DataPlane, protocol: str) -> int:
    return data_plane.metrics.series(UNKNOWN, "", protocol).outcomes["overloaded"]


async def _observed_lag(blocks: int) -> tuple[float, float]:
    """The most LoopLag read while ``blocks`` callbacks in a row each held the loop for
    BLOCK_S, and what it read a few ticks after."""
    lag = LoopLag(TICK_S)
    measuring = asyncio.create_task(lag.run())
    await asyncio.sleep(3 * TICK_S)
    loop = asyncio.get_running_loop()

    def hold(remaining: int) -> None:
        # What a backlog does: each turn of the loop is taken by work queued before the timer.
        time.sleep(BLOCK_S)
        if remaining > 1:
            loop.call_soon(hold, remaining - 1)

    loop.call_soon(hold, blocks)
    observed = 0.0
    watch_until = time.monotonic() + blocks * (BLOCK_S + TICK_S) + 5 * TICK_S
    while time.monotonic() < watch_until:
        observed = max(observed, lag.seconds)
        await asyncio.sleep(0)
    await asyncio.sleep(10 * TICK_S)
    recovered = lag.seconds
    measuring.cancel()
    return observed, recovered


def test_a_loop_that_stays_late_reads_as_lag_and_recovers() -> None:
    observed, recovered = asyncio.run(_observed_lag(blocks=4))
    assert observed >= BLOCK_S - 2 * TICK_S
    assert recovered < BLOCK_S / 2


def test_one_long_callback_is_not_saturation() -> None:
    observed, recovered = asyncio.run(_observed_lag(blocks=1))
    assert observed < BLOCK_S / 2
    assert recovered < BLOCK_S / 2


def test_a_request_is_refused_while_the_loop_runs_later_than_allowed() -> None:
    data_plane = plane(max_loop_lag_s=0.1)
    data_plane.loop_lag.seconds = 0.25
    with (
        pytest.raises(Overloaded, match=r"saturated \(requests wait 250 ms"),
        data_plane.request("grpc", "nope"),
    ):
        pytest.fail("admitted")
    assert overloaded(data_plane, "grpc") == 1
    data_plane.loop_lag.seconds = 0.05
    with data_plane.request("grpc", "nope"):
        pass
    assert overloaded(data_plane, "grpc") == 1


def test_no_lag_limit_admits_whatever_the_lag() -> None:
    data_plane = plane(max_loop_lag_s=None)
    data_plane.loop_lag.seconds = 60.0
    with data_plane.request("http", "nope"):
        pass
    assert overloaded(data_plane, "http") == 0


def test_requests_past_the_in_flight_cap_are_refused_and_counted() -> None:
    data_plane = plane(max_inflight=2)
    with data_plane.request("http", "a"), data_plane.request("grpc", "b"):
        with (
            pytest.raises(Overloaded, match="limit of 2 requests in flight"),
            data_plane.request("http", "c"),
        ):
            pytest.fail("admitted")
        assert overloaded(data_plane, "http") == 1
    with data_plane.request("http", "d"):
        pass
