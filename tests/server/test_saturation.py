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


def test_the_lag_reads_how_long_the_loop_was_blocked_and_recovers() -> None:
    async def scenario() -> tuple[float, float]:
        lag = LoopLag(TICK_S)
        measuring = asyncio.create_task(lag.run())
        await asyncio.sleep(3 * TICK_S)
        # A callback that holds the loop: what a saturated loop does to every timer.
        asyncio.get_running_loop().call_soon(time.sleep, BLOCK_S)
        blocked = 0.0
        watch_until = time.monotonic() + BLOCK_S + 5 * TICK_S
        while time.monotonic() < watch_until:
            blocked = max(blocked, lag.seconds)
            await asyncio.sleep(0)
        await asyncio.sleep(10 * TICK_S)
        recovered = lag.seconds
        measuring.cancel()
        return blocked, recovered

    blocked, recovered = asyncio.run(scenario())
    assert blocked >= BLOCK_S - 2 * TICK_S
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
