"""A lean HTTP/1.1 client for the load generator: keep-alive connections on asyncio protocols,
responses parsed by httptools (the parser uvicorn serves with).

A load generator's own time per call is part of every latency it reports. With aiohttp the
load test read a fixed-rate p50 1.39x perf_analyzer's and spent 2.2x its CPU at saturation; with
this client 0.98x and 0.88x (BENCHMARKS.md, issue 6). A request is one bytes write and one
parser feed.
"""

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import httptools


class HttpError(Exception):
    """The connection failed: refused, reset, closed early, or a malformed response."""


@dataclass(frozen=True, slots=True)
class Response:
    """A whole response; header names are lower-cased."""

    status: int
    headers: dict[str, str]
    body: bytes
    received_at: float  # time.perf_counter() when its last byte was parsed


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Response] | None = None
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self.reusable = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            self.abort(HttpError(f"malformed response: {error}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self._fail(HttpError(f"connection closed before the response ended ({exc or 'EOF'})"))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        response = Response(
            self._parser.get_status_code(),
            self._headers,
            b"".join(self._body),
            time.perf_counter(),
        )
        self.reusable = self.reusable and self._parser.should_keep_alive()
        self._headers, self._body = {}, []
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    def send(self, data: bytes) -> "asyncio.Future[Response]":
        """Write a whole request; the future is its response."""
        assert self._transport is not None
        assert self._waiter is None
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(data)
        return self._waiter

    def abort(self, error: Exception) -> None:
        """Fail the request in flight with ``error`` and drop the connection."""
        self.reusable = False
        self._fail(error)
        if self._transport is not None:
            self._transport.abort()

    def _fail(self, error: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)


class HttpPool:
    """Keep-alive connections to one server, at most ``max_connections`` open; a request that
    finds none free waits for one (and the wait is part of its latency)."""

    def __init__(self, host: str, port: int, max_connections: int) -> None:
        self._host, self._port = host, port
        self._host_header = f"Host: {f'[{host}]' if ':' in host else host}:{port}\r\n"
        self._max_connections = max_connections
        self._open = 0
        self._idle: list[_Connection] = []
        self._waiting: deque[asyncio.Future[_Connection | None]] = deque()

    async def request(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        timeout_s: float,
    ) -> Response:
        """Send one request and read its whole response. Raises ``TimeoutError`` past
        ``timeout_s`` and ``HttpError`` when the connection fails."""
        head = "".join(
            [
                f"{method} {path} HTTP/1.1\r\n",
                self._host_header,
                *(f"{name}: {value}\r\n" for name, value in headers),
                f"Content-Length: {len(body)}\r\n\r\n",
            ]
        )
        connection = await self._acquire()
        loop = asyncio.get_running_loop()
        expiry = loop.call_later(
            timeout_s, connection.abort, TimeoutError(f"no response in {timeout_s:g} s")
        )
        try:
            return await connection.send(head.encode("latin-1") + body)
        except BaseException:
            # A cancelled or failed request may still be answered later: never reuse it.
            connection.abort(HttpError("request abandoned"))
            raise
        finally:
            expiry.cancel()
            self._release(connection)

    async def close(self) -> None:
        """Close the idle connections; those in use close as their requests end."""
        self._max_connections = 0
        for connection in self._idle:
            connection.abort(HttpError("client closed"))
        self._idle.clear()
        while self._waiting:
            self._waiting.popleft().set_result(None)

    async def _acquire(self) -> _Connection:
        while True:
            while self._idle:
                idle = self._idle.pop()
                if idle.reusable:
                    return idle
                self._open -= 1  # the server closed it while it was idle
            if self._open < self._max_connections:
                self._open += 1
                try:
                    _, connection = await asyncio.get_running_loop().create_connection(
                        _Connection, self._host, self._port
                    )
                except OSError as error:
                    self._open -= 1
                    self._wake_one()
                    raise HttpError(f"cannot connect: {error}") from None
                return connection
            waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            handed = await waiter
            if handed is not None:
                return handed
            if self._max_connections == 0:
                raise HttpError("client closed")

    def _release(self, connection: _Connection) -> None:
        if connection.reusable and self._max_connections:
            while self._waiting:
                waiter = self._waiting.popleft()
                if not waiter.done():
                    waiter.set_result(connection)
                    return
            self._idle.append(connection)
            return
        connection.abort(HttpError("connection not reusable"))
        self._open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        """A connection slot is free: let one waiting request open a connection."""
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
