"""The load generator's clients against a real Turnout: what each protocol's outcome says for
an answer, an unknown endpoint and a server that is not there, and when the answer counts as
received."""

import asyncio
import socket
import time

import numpy as np
import pytest
import uvloop

from tests.support.e2e import mlp_rows
from tests.support.server import TurnoutProcess
from turnout.loadtests.clients import Outcome, Target, open_client, prepare

PROTOCOLS = ("grpc", "http", "http-binary")


def _target(protocol: str, port: int) -> Target:
    return Target("grpc" if protocol == "grpc" else "http", "127.0.0.1", port)


def _port(server: TurnoutProcess, protocol: str) -> int:
    return server.grpc_port if protocol == "grpc" else server.http_port


def _infer(protocol: str, target: Target, endpoint: str, rows: np.ndarray) -> list[Outcome]:
    async def run() -> list[Outcome]:
        client = open_client(protocol, target, [endpoint])
        try:
            requests = prepare(protocol, endpoint, [{"INPUT0": rows}])
            outcomes = []
            for number in range(3):
                sent = time.perf_counter()
                outcome = await client.infer(requests[0], f"client-test-{number}", None)
                assert sent <= outcome.answered_at <= time.perf_counter()
                outcomes.append(outcome)
            return outcomes
        finally:
            await client.close()

    return uvloop.run(run())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_answer_names_its_version(server: TurnoutProcess, protocol: str) -> None:
    target = _target(protocol, _port(server, protocol))
    outcomes = _infer(protocol, target, "mlp", mlp_rows(1))
    code = "OK" if protocol == "grpc" else "200"
    assert {(outcome.ok, outcome.code) for outcome in outcomes} == {(True, code)}
    assert {outcome.version for outcome in outcomes} <= {"1", "2"}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_unknown_endpoint_is_counted_by_its_code(server: TurnoutProcess, protocol: str) -> None:
    target = _target(protocol, _port(server, protocol))
    outcomes = _infer(protocol, target, "no-such-model", mlp_rows(1))
    code = "NOT_FOUND" if protocol == "grpc" else "404"
    assert {(outcome.ok, outcome.code, outcome.version) for outcome in outcomes} == {
        (False, code, None)
    }


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_server_that_is_not_there_is_a_connection_error(protocol: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    outcomes = _infer(protocol, _target(protocol, port), "mlp", mlp_rows(1))
    assert {(outcome.ok, outcome.code) for outcome in outcomes} == {(False, "CONNECTION")}


def test_giving_up_a_grpc_wait_cancels_the_call(server: TurnoutProcess) -> None:
    async def run() -> None:
        client = open_client("grpc", _target("grpc", server.grpc_port), ["slow"])
        try:
            # About a third of a second of the slow model: still running when given up.
            iterations = np.array([200_000], dtype=np.int64)
            request = prepare("grpc", "slow", [{"ITERATIONS": iterations}])[0]
            waiting = asyncio.create_task(client.infer(request, "abandoned", None))
            await asyncio.sleep(0.05)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            answer = await client.infer(
                prepare("grpc", "mlp", [{"INPUT0": mlp_rows(1)}])[0], "after", None
            )
            assert answer.ok, answer
        finally:
            await client.close()

    uvloop.run(run())
