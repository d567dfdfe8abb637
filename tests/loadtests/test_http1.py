"""The load generator's HTTP/1.1 client: keep-alive reuse, the connection bound, and every way
a connection can fail (refused, closed early, malformed, too slow, abandoned), against scripted
servers on loopback that answer what a real server may; and its answers from a real Turnout."""

import asyncio
import socket
from collections.abc import Awaitable, Callable

import orjson
import pytest

from tests.support.server import TurnoutProcess
from turnout.loadtests.http1 import HttpError, HttpPool

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Peer:
    """A scripted HTTP server: counts connections and the most open at once."""

    def __init__(self, answer: Handler) -> None:
        self.answer = answer
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            await self.answer(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


def _keep_answering(answer: bytes, delay_s: float = 0.0) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await _read_request(reader)
            await asyncio.sleep(delay_s)
            writer.write(answer)
            await writer.drain()

    return handler


async def _with_peer(
    answer: Handler, body: Callable[[Peer, HttpPool], Awaitable[None]], max_connections: int = 4
) -> Peer:
    peer = Peer(answer)
    server = await asyncio.start_server(peer.handle, "127.0.0.1", 0)
    peer.port = server.sockets[0].getsockname()[1]
    pool = HttpPool("127.0.0.1", peer.port, max_connections)
    try:
        await body(peer, pool)
    finally:
        await pool.close()
        server.close()
    return peer


def test_sequential_requests_share_one_connection() -> None:
    async def body(peer: Peer, pool: HttpPool) -> None:
        for _ in range(20):
            response = await pool.request("POST", "/x", [], b"{}", 5)
            assert (response.status, response.body) == (200, b"ok")

    peer = asyncio.run(_with_peer(_keep_answering(OK), body))
    assert peer.connections == 1


def test_concurrent_requests_never_open_more_than_the_bound() -> None:
    async def body(peer: Peer, pool: HttpPool) -> None:
        answers = await asyncio.gather(*(pool.request("GET", "/", [], b"", 5) for _ in range(12)))
        assert [answer.body for answer in answers] == [b"ok"] * 12

    peer = asyncio.run(_with_peer(_keep_answering(OK, delay_s=0.02), body, max_connections=3))
    assert peer.most_open == 3
    assert peer.connections == 3


def test_a_chunked_answer_is_read_whole_with_its_headers() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nInference-Header-Content-Length: 3"
        b"\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
    )

    async def body(peer: Peer, pool: HttpPool) -> None:
        for _ in range(2):
            response = await pool.request("GET", "/", [], b"", 5)
            assert response.body == b"abcdefg"
            assert response.headers["inference-header-content-length"] == "3"

    peer = asyncio.run(_with_peer(_keep_answering(chunked), body))
    assert peer.connections == 1


def test_connection_close_is_honoured() -> None:
    closing = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"

    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(closing)
        await writer.drain()

    async def body(peer: Peer, pool: HttpPool) -> None:
        for _ in range(3):
            assert (await pool.request("GET", "/", [], b"", 5)).status == 503

    peer = asyncio.run(_with_peer(answer_once, body))
    assert peer.connections == 3


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(b"", id="closed-before-answering"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", id="closed-mid-body"),
        pytest.param(b"NOT HTTP AT ALL\r\n\r\n", id="malformed"),
    ],
)
def test_a_broken_answer_fails_that_request_and_the_next_one_gets_a_fresh_connection(
    reply: bytes,
) -> None:
    async def broken_then_good(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        if peer_state["broken"]:
            writer.write(OK)
            await writer.drain()
            await _keep_answering(OK)(reader, writer)
            return
        peer_state["broken"] = True
        writer.write(reply)
        await writer.drain()

    peer_state = {"broken": False}

    async def body(peer: Peer, pool: HttpPool) -> None:
        with pytest.raises(HttpError):
            await pool.request("GET", "/", [], b"", 5)
        assert (await pool.request("GET", "/", [], b"", 5)).body == b"ok"

    peer = asyncio.run(_with_peer(broken_then_good, body))
    assert peer.connections == 2


def test_a_slow_answer_times_out_and_is_never_read_as_the_next_ones() -> None:
    answers = iter([b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate", OK, OK])

    async def slow_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await _read_request(reader)
            answer = next(answers)
            await asyncio.sleep(0.5 if answer.endswith(b"late") else 0)
            writer.write(answer)
            await writer.drain()

    async def body(peer: Peer, pool: HttpPool) -> None:
        with pytest.raises(TimeoutError):
            await pool.request("GET", "/", [], b"", 0.1)
        assert (await pool.request("GET", "/", [], b"", 5)).body == b"ok"

    peer = asyncio.run(_with_peer(slow_first, body))
    assert peer.connections == 2


def test_an_abandoned_request_does_not_leave_its_answer_for_the_next() -> None:
    async def body(peer: Peer, pool: HttpPool) -> None:
        abandoned = asyncio.create_task(pool.request("GET", "/", [], b"", 5))
        await asyncio.sleep(0.05)
        abandoned.cancel()
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        assert (await pool.request("GET", "/", [], b"", 5)).body == b"ok"

    peer = asyncio.run(_with_peer(_keep_answering(OK, delay_s=0.2), body))
    assert peer.connections == 2


def test_a_refused_connection_is_an_http_error_and_frees_its_slot() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def run() -> None:
        pool = HttpPool("127.0.0.1", port, 1)
        for _ in range(3):
            with pytest.raises(HttpError, match="cannot connect"):
                await pool.request("GET", "/", [], b"", 5)
        await pool.close()

    asyncio.run(run())


def test_answers_from_a_real_turnout(server: TurnoutProcess) -> None:
    request = {
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]
    }

    async def run() -> None:
        pool = HttpPool("127.0.0.1", server.http_port, 2)
        try:
            ready = await pool.request("GET", "/v2/health/ready", [], b"", 5)
            answer = await pool.request(
                "POST",
                "/v2/models/mlp/infer",
                [("Content-Type", "application/json")],
                orjson.dumps(request),
                5,
            )
            missing = await pool.request(
                "POST", "/v2/models/nope/infer", [], orjson.dumps(request), 5
            )
        finally:
            await pool.close()
        assert ready.status == 200
        assert answer.status == 200
        outputs = orjson.loads(answer.body)["outputs"]
        assert {output["name"]: output["shape"] for output in outputs}["OUTPUT0"] == [1, 10]
        assert missing.status == 404
        assert "error" in orjson.loads(missing.body)

    asyncio.run(run())
