"""A lean gRPC client for the load generator: unary calls multiplexed on one HTTP/2 connection,
on asyncio protocols, header blocks decoded by hpack.

A load generator's own time per call is part of every latency it reports. grpc.aio spent about
0.35 ms of Python per call on the event loop's thread here, and the load test read a fixed-rate
p50 1.27x perf_analyzer's with it; with this client 1.03x (BENCHMARKS.md, issue 6). A call is
one write of prepared header bytes and a DATA frame, and one pass over the frames of its answer.

What a unary client needs of HTTP/2 (RFC 9113) and of gRPC over HTTP/2: flow control both ways,
SETTINGS, PING, GOAWAY, RST_STREAM, CONTINUATION, padding, the server's stream limit, deadlines
(``grpc-timeout`` and a local timer), and the status from trailers, from a trailers-only answer
or from the HTTP status. No TLS, compression or streaming calls.
"""

import asyncio
import struct
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, cast

import hpack

from turnout.loadtests.http2 import (
    ACK,
    CONTINUATION,
    DATA,
    DEFAULT_MAX_FRAME,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    LAST_STREAM_ID,
    MAX_WINDOW,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PUSH_PROMISE,
    RST_CANCEL,
    RST_REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    SETTINGS_ENABLE_PUSH,
    SETTINGS_INITIAL_WINDOW_SIZE,
    SETTINGS_MAX_CONCURRENT_STREAMS,
    SETTINGS_MAX_FRAME_SIZE,
    WINDOW_UPDATE,
    frame,
    unindexed,
)

# The window this client gives each stream; it tops a stream's window up every WINDOW_TOP_UP
# bytes, so a large answer streams without waiting on the client.
STREAM_WINDOW = 16 * 1024 * 1024
WINDOW_TOP_UP = 32_768
CONNECT_ATTEMPTS = 3
KNOWN_BLOCKS_KEPT = 64
STATUS_NAMES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
    "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
)  # fmt: skip
# gRPC's mapping for an answer whose HTTP status is not 200 and that carries no grpc-status.
HTTP_STATUS_CODES = {
    "400": "INTERNAL", "401": "UNAUTHENTICATED", "403": "PERMISSION_DENIED",
    "404": "UNIMPLEMENTED", "429": "UNAVAILABLE", "502": "UNAVAILABLE", "503": "UNAVAILABLE",
    "504": "UNAVAILABLE",
}  # fmt: skip
# RST_STREAM error codes as gRPC reads them; any other is INTERNAL.
RESET_CODES = {7: "UNAVAILABLE", 8: "CANCELLED", 11: "RESOURCE_EXHAUSTED", 12: "PERMISSION_DENIED"}


@dataclass(frozen=True, slots=True)
class Reply:
    """How one call ended: ``code`` is a gRPC status name, or ``CONNECTION`` when the connection
    could not be opened or failed before the answer; ``message`` is the answer's bytes when OK."""

    code: str
    message: bytes | None = None
    details: str = ""
    received_at: float = field(default_factory=time.perf_counter)


def _grpc_timeout(timeout_s: float) -> str:
    milliseconds = max(1, int(timeout_s * 1000 + 0.999))
    return f"{milliseconds}m" if milliseconds < 10**8 else f"{min(int(timeout_s), 10**8 - 1)}S"


@dataclass(slots=True, eq=False)
class _Call:
    waiter: "asyncio.Future[Reply]"
    send_window: int
    unsent: memoryview
    http_status: str | None = None
    grpc_status: str | None = None
    grpc_message: str = ""
    body: bytearray = field(default_factory=bytearray)
    unacknowledged: int = 0
    refused: bool = False  # reset with REFUSED_STREAM: the server never processed it


class _Connection(asyncio.Protocol):
    """One HTTP/2 connection; its calls are its streams."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._decoder = hpack.Decoder()
        self._known_blocks: dict[bytes, list[tuple[str, str]]] = {}
        self._calls: dict[int, _Call] = {}
        self._blocked: list[int] = []  # streams with data the send windows do not yet allow
        self._next_stream_id = 1
        self._send_window = DEFAULT_WINDOW
        self._peer_stream_window = DEFAULT_WINDOW
        self._peer_max_frame = DEFAULT_MAX_FRAME
        self._peer_max_streams = LAST_STREAM_ID
        self._unacknowledged = 0
        self._header_stream = 0  # the stream of a header block still in CONTINUATION frames
        self._header_flags = 0
        self._header_block = bytearray()
        self._slot_waiters: list[asyncio.Future[bool]] = []
        self.failure: Reply | None = None  # why the connection ended, once it has
        self.draining = False  # GOAWAY received: no new streams

    @property
    def accepts_calls(self) -> bool:
        return self.failure is None and not self.draining and self._next_stream_id < LAST_STREAM_ID

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self._transport = cast(asyncio.Transport, transport)
        settings = struct.pack(
            ">HIHI", SETTINGS_ENABLE_PUSH, 0, SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW
        )
        window = struct.pack(">I", MAX_WINDOW - DEFAULT_WINDOW)
        self._transport.write(
            PREFACE + frame(SETTINGS, 0, 0, settings) + frame(WINDOW_UPDATE, 0, 0, window)
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(Reply("CONNECTION", details=f"connection closed ({exc or 'EOF'})"))

    async def call(self, header_block: bytes, message: bytes, timeout_s: float) -> Reply | None:
        """One unary call; None when this connection stopped taking calls before it was sent."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        framed = struct.pack(">BI", 0, len(message)) + message
        while True:
            while len(self._calls) >= self._peer_max_streams:
                freed = await self._stream_freed(deadline)
                if freed is not True:
                    return freed
            if not self.accepts_calls:
                return None
            call = _Call(loop.create_future(), self._peer_stream_window, memoryview(framed))
            reply = await self._exchange(call, header_block, deadline)
            if not call.refused or not self._calls:
                return reply
            # A refused stream was never processed (RFC 9113, 8.7), so it is sent again once
            # another call ends: the server counts a stream open a little longer than the client.
            freed = await self._stream_freed(deadline)
            if freed is not True:
                return freed

    async def _exchange(self, call: _Call, header_block: bytes, deadline: float) -> Reply:
        assert self._transport is not None
        stream_id, self._next_stream_id = self._next_stream_id, self._next_stream_id + 2
        self._calls[stream_id] = call
        # One write for the headers and as much of the message as the windows allow: as one
        # TCP segment the server reads the call whole in one wake.
        frames = [self._header_frames(stream_id, header_block)]
        self._send(stream_id, call, frames)
        self._transport.write(b"".join(frames))
        loop = asyncio.get_running_loop()
        expiry = loop.call_at(deadline, self._expire, stream_id)
        try:
            return await call.waiter
        except asyncio.CancelledError:
            self._cancel(stream_id, Reply("CANCELLED", details="the caller gave up"))
            raise
        finally:
            expiry.cancel()

    async def _stream_freed(self, deadline: float) -> Reply | Literal[True] | None:
        """True once a call of this connection ended; None when the connection stopped taking
        calls first; DEADLINE_EXCEEDED when the deadline came first."""
        loop = asyncio.get_running_loop()
        slot = loop.create_future()
        self._slot_waiters.append(slot)
        try:
            return True if await asyncio.wait_for(slot, deadline - loop.time()) else None
        except TimeoutError:
            return Reply("DEADLINE_EXCEEDED", details="no stream free before the deadline")

    def close(self) -> None:
        self._fail(Reply("CONNECTION", details="channel closed"))

    def _header_frames(self, stream_id: int, block: bytes) -> bytes:
        size = self._peer_max_frame
        if len(block) <= size:
            return frame(HEADERS, END_HEADERS, stream_id, block)
        pieces = [block[start : start + size] for start in range(0, len(block), size)]
        frames = [frame(HEADERS, 0, stream_id, pieces[0])]
        frames += [frame(CONTINUATION, 0, stream_id, piece) for piece in pieces[1:-1]]
        frames.append(frame(CONTINUATION, END_HEADERS, stream_id, pieces[-1]))
        return b"".join(frames)

    def _send(self, stream_id: int, call: _Call, frames: list[bytes]) -> None:
        """Add to ``frames`` the DATA frames the send windows allow."""
        while call.unsent:
            size = min(len(call.unsent), self._send_window, call.send_window, self._peer_max_frame)
            if size <= 0:
                if stream_id not in self._blocked:
                    self._blocked.append(stream_id)
                return
            chunk, call.unsent = call.unsent[:size], call.unsent[size:]
            flags = 0 if call.unsent else END_STREAM
            frames.append(frame(DATA, flags, stream_id, bytes(chunk)))
            self._send_window -= size
            call.send_window -= size

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        offset, available = 0, len(buffer)
        while available - offset >= 9 and self.failure is None:
            length = buffer[offset] << 16 | buffer[offset + 1] << 8 | buffer[offset + 2]
            # This client never raises its own limit from HTTP/2's default.
            if length > DEFAULT_MAX_FRAME:
                self._abort(f"a frame of {length} bytes, over the {DEFAULT_MAX_FRAME} allowed")
                return
            end = offset + 9 + length
            if end > available:
                break
            frame_type, flags = buffer[offset + 3], buffer[offset + 4]
            stream_id = int.from_bytes(buffer[offset + 5 : offset + 9]) & LAST_STREAM_ID
            payload = bytes(buffer[offset + 9 : end])
            offset = end
            if self._header_stream and frame_type != CONTINUATION:
                self._abort("a header block interrupted by another frame")
                return
            self._frame_received(frame_type, flags, stream_id, payload)
        del buffer[:offset]

    def _frame_received(self, frame_type: int, flags: int, stream_id: int, payload: bytes) -> None:
        if frame_type == DATA:
            self._data_received(flags, stream_id, payload)
        elif frame_type == HEADERS:
            if flags & PADDED:
                payload = payload[1 : len(payload) - payload[0]]
            if flags & PRIORITY:
                payload = payload[5:]
            self._header_stream, self._header_flags = stream_id, flags
            self._header_block[:] = payload
            if flags & END_HEADERS:
                self._headers_received()
        elif frame_type == CONTINUATION:
            if stream_id != self._header_stream or not stream_id:
                self._abort("a CONTINUATION frame with no header block to continue")
                return
            self._header_block += payload
            if flags & END_HEADERS:
                self._headers_received()
        elif frame_type == RST_STREAM and len(payload) == 4:
            error = int.from_bytes(payload)
            if error == RST_REFUSED_STREAM and stream_id in self._calls:
                self._calls[stream_id].refused = True
            code = RESET_CODES.get(error, "INTERNAL")
            self._finish(stream_id, Reply(code, details=f"stream reset by the server ({error})"))
        elif frame_type == SETTINGS and not flags & ACK:
            self._settings_received(payload)
        elif frame_type == PING and not flags & ACK and self._transport is not None:
            self._transport.write(frame(PING, ACK, 0, payload))
        elif frame_type == GOAWAY and len(payload) >= 8:
            self._goaway_received(payload)
        elif frame_type == WINDOW_UPDATE and len(payload) == 4:
            self._window_update_received(stream_id, int.from_bytes(payload) & LAST_STREAM_ID)
        elif frame_type == PUSH_PROMISE:
            self._abort("a PUSH_PROMISE, though push was disabled")

    def _data_received(self, flags: int, stream_id: int, payload: bytes) -> None:
        assert self._transport is not None
        self._unacknowledged += len(payload)
        if self._unacknowledged >= MAX_WINDOW // 2:
            increment = struct.pack(">I", self._unacknowledged)
            self._transport.write(frame(WINDOW_UPDATE, 0, 0, increment))
            self._unacknowledged = 0
        call = self._calls.get(stream_id)
        if call is None:
            return
        call.unacknowledged += len(payload)
        if flags & PADDED:
            payload = payload[1 : len(payload) - payload[0]]
        call.body += payload
        if flags & END_STREAM:
            self._finish(stream_id, self._reply(call))
        elif call.unacknowledged >= WINDOW_TOP_UP:
            increment = struct.pack(">I", call.unacknowledged)
            self._transport.write(frame(WINDOW_UPDATE, 0, stream_id, increment))
            call.unacknowledged = 0

    def _headers_received(self) -> None:
        stream_id, flags = self._header_stream, self._header_flags
        self._header_stream = 0
        block = bytes(self._header_block)
        fields = self._known_blocks.get(block)
        if fields is None:
            table = self._decoder.header_table.dynamic_entries
            before = tuple(table)
            try:
                # Every block is decoded, a finished stream's too: the table is the connection's.
                fields = cast(list[tuple[str, str]], self._decoder.decode(block))
            except hpack.HPACKError as error:
                self._abort(f"an undecodable header block ({error})")
                return
            # A block that left the table as it was decodes the same until one that changes
            # it, and a server repeats its headers: those are decoded once.
            if tuple(table) != before:
                self._known_blocks.clear()
            elif len(self._known_blocks) < KNOWN_BLOCKS_KEPT:
                self._known_blocks[block] = fields
        call = self._calls.get(stream_id)
        if call is None:
            return
        for name, value in fields:
            if name == ":status":
                call.http_status = value
            elif name == "grpc-status":
                call.grpc_status = value
            elif name == "grpc-message":
                call.grpc_message = urllib.parse.unquote(value)
        if flags & END_STREAM:
            self._finish(stream_id, self._reply(call))

    def _reply(self, call: _Call) -> Reply:
        details = call.grpc_message
        if call.grpc_status is None:
            if call.http_status != "200":
                code = HTTP_STATUS_CODES.get(call.http_status or "", "UNKNOWN")
                return Reply(code, details=f"HTTP status {call.http_status}")
            return Reply("INTERNAL", details="the answer ended without a grpc-status")
        number = int(call.grpc_status) if call.grpc_status.isdigit() else -1
        code = STATUS_NAMES[number] if 0 <= number < len(STATUS_NAMES) else "UNKNOWN"
        if code != "OK":
            return Reply(code, details=details)
        body = call.body
        if len(body) < 5 or body[0] != 0 or int.from_bytes(body[1:5]) != len(body) - 5:
            return Reply("INTERNAL", details="not one uncompressed length-prefixed message")
        return Reply("OK", bytes(body[5:]))

    def _settings_received(self, payload: bytes) -> None:
        assert self._transport is not None
        if len(payload) % 6:
            self._abort(f"a SETTINGS frame of {len(payload)} bytes")
            return
        for offset in range(0, len(payload), 6):
            identifier, value = struct.unpack_from(">HI", payload, offset)
            if identifier == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    self._abort(f"an initial window of {value} bytes")
                    return
                change, self._peer_stream_window = value - self._peer_stream_window, value
                for call in self._calls.values():
                    call.send_window += change
            elif identifier == SETTINGS_MAX_FRAME_SIZE:
                if not DEFAULT_MAX_FRAME <= value < 2**24:
                    self._abort(f"a largest frame of {value} bytes")
                    return
                self._peer_max_frame = value
            elif identifier == SETTINGS_MAX_CONCURRENT_STREAMS:
                self._peer_max_streams = value
        self._transport.write(frame(SETTINGS, ACK, 0))
        self._wake_slot_waiters()
        self._send_blocked()

    def _goaway_received(self, payload: bytes) -> None:
        self.draining = True
        last_stream_id = int.from_bytes(payload[:4]) & LAST_STREAM_ID
        details = payload[8:].decode("utf-8", "replace") or "the server is going away"
        for stream_id in [stream_id for stream_id in self._calls if stream_id > last_stream_id]:
            self._finish(stream_id, Reply("UNAVAILABLE", details=details))
        for slot in self._slot_waiters:
            if not slot.done():
                slot.set_result(False)
        self._slot_waiters.clear()

    def _window_update_received(self, stream_id: int, increment: int) -> None:
        if not stream_id:
            self._send_window += increment
        elif stream_id in self._calls:
            self._calls[stream_id].send_window += increment
        self._send_blocked()

    def _send_blocked(self) -> None:
        blocked, self._blocked = self._blocked, []
        frames: list[bytes] = []
        for stream_id in blocked:
            if stream_id in self._calls:
                self._send(stream_id, self._calls[stream_id], frames)
        if frames and self._transport is not None:
            self._transport.write(b"".join(frames))

    def _finish(self, stream_id: int, reply: Reply) -> None:
        call = self._calls.pop(stream_id, None)
        if call is None:
            return
        if not call.waiter.done():
            call.waiter.set_result(reply)
        self._wake_slot_waiters()
        if self.draining and not self._calls and self._transport is not None:
            self._transport.close()

    def _wake_slot_waiters(self) -> None:
        """Wake as many calls waiting for a stream as the server's limit now has room for; each
        checks again when it runs."""
        free = self._peer_max_streams - len(self._calls)
        while self._slot_waiters and free > 0:
            slot = self._slot_waiters.pop(0)
            if not slot.done():
                slot.set_result(True)
                free -= 1

    def _expire(self, stream_id: int) -> None:
        self._cancel(stream_id, Reply("DEADLINE_EXCEEDED", details="deadline exceeded"))

    def _cancel(self, stream_id: int, reply: Reply) -> None:
        """End a call the server has not finished, telling it so."""
        if stream_id in self._calls and self._transport is not None and self.failure is None:
            self._transport.write(frame(RST_STREAM, 0, stream_id, struct.pack(">I", RST_CANCEL)))
        self._finish(stream_id, reply)

    def _abort(self, problem: str) -> None:
        self._fail(Reply("CONNECTION", details=f"protocol error: the server sent {problem}"))

    def _fail(self, reply: Reply) -> None:
        if self.failure is None:
            self.failure = reply
        for stream_id in list(self._calls):
            self._finish(stream_id, reply)
        for slot in self._slot_waiters:
            if not slot.done():
                slot.set_result(False)
        self._slot_waiters.clear()
        if self._transport is not None:
            self._transport.abort()


class GrpcChannel:
    """Unary gRPC calls to one server over one HTTP/2 connection at a time; a connection that
    fails or is told to go away is replaced for the next call."""

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        self._connections: set[_Connection] = set()
        self._blocks: dict[tuple[str, float], bytes] = {}
        self._closed = False

    async def unary(
        self,
        method: str,
        message: bytes,
        metadata: Sequence[tuple[str, str]] = (),
        timeout_s: float = 30.0,
    ) -> Reply:
        """Call ``method`` (``/package.Service/Method``) with a serialized request message."""
        block = self._blocks.get((method, timeout_s))
        if block is None:
            block = self._blocks[method, timeout_s] = self._header_block(method, timeout_s)
        if metadata:
            block += b"".join(unindexed(name.lower(), value) for name, value in metadata)
        # A connection told to go away before the call was sent is replaced; a server that
        # keeps doing that is not retried for ever.
        for _ in range(CONNECT_ATTEMPTS):
            if self._closed:
                break
            connection = self._connection
            if connection is None or not connection.accepts_calls:
                try:
                    connection = await asyncio.wait_for(self._connected(), timeout_s)
                except TimeoutError:
                    return Reply("DEADLINE_EXCEEDED", details="no connection before the deadline")
                except OSError as error:
                    return Reply("CONNECTION", details=f"cannot connect: {error}")
            reply = await connection.call(block, message, timeout_s)
            if reply is not None:
                return reply
            if connection.failure is not None:
                return connection.failure
        return Reply(
            "CONNECTION",
            details="channel closed" if self._closed else "no connection took the call",
        )

    async def close(self) -> None:
        """Close every connection; calls in flight end as CONNECTION."""
        self._closed = True
        for connection in self._connections:
            connection.close()
        self._connections.clear()

    def _header_block(self, method: str, timeout_s: float) -> bytes:
        # Static table: 0x83 is ":method: POST", 0x86 ":scheme: http"; names 4 ":path",
        # 1 ":authority", 31 "content-type".
        return b"".join(
            [
                b"\x83\x86",
                unindexed(4, method),
                unindexed(1, self._authority),
                unindexed(31, "application/grpc"),
                unindexed("te", "trailers"),
                unindexed("grpc-timeout", _grpc_timeout(timeout_s)),
            ]
        )

    async def _connected(self) -> _Connection:
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
            # Retrieved here so that a failed connect no one waits for any more is not logged.
            self._connecting.add_done_callback(lambda task: task.cancelled() or task.exception())
        return await asyncio.shield(self._connecting)

    async def _connect(self) -> _Connection:
        try:
            loop = asyncio.get_running_loop()
            _, connection = await loop.create_connection(_Connection, self._host, self._port)
        finally:
            self._connecting = None
        if self._closed:
            connection.close()
            return connection
        self._connections = {known for known in self._connections if known.failure is None}
        self._connections.add(connection)
        self._connection = connection
        return connection
