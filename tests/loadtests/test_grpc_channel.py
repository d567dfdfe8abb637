"""The load generator's gRPC channel: against a real grpc.aio server (answers, statuses,
metadata, deadlines, flow control both ways, the server's stream limit, a server going away),
and against scripted HTTP/2 peers that answer what a server may but grpc.aio never does
(trailers-only answers, HTTP statuses, resets, GOAWAY, padding, CONTINUATION, PING, broken
frames)."""

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable

import grpc
import hpack
import pytest
import uvloop

from turnout.loadtests.grpc_channel import GrpcChannel, Reply
from turnout.loadtests.http2 import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PADDED,
    PING,
    PREFACE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    frame,
)

SERVICE = "test.Echo"
ECHO = f"/{SERVICE}/Echo"


# --- a real grpc.aio server ---------------------------------------------------------------


class EchoService:
    """Echoes requests; ``Fail`` answers the status the request names, ``Stall`` never answers,
    ``Metadata`` answers the x-routing-key it was sent. Counts calls running at once."""

    def __init__(self) -> None:
        self.running = 0
        self.most_running = 0
        self.cancelled = asyncio.Event()

    async def echo(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(0.01)
            return request
        finally:
            self.running -= 1

    async def fail(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(grpc.StatusCode[request.decode()], "nope: 100% ünïcode\nsecond line")
        raise AssertionError("abort returns only by raising")

    async def stall(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return request

    async def metadata(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        metadata = dict(context.invocation_metadata() or ())
        return str(metadata.get("x-routing-key", "")).encode()

    def handler(self) -> grpc.GenericRpcHandler:
        methods = {"Echo": self.echo, "Fail": self.fail, "Stall": self.stall}
        methods["Metadata"] = self.metadata
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {name: grpc.unary_unary_rpc_method_handler(method) for name, method in methods.items()},
        )


Body = Callable[[GrpcChannel, EchoService, grpc.aio.Server, int], Awaitable[None]]


def _with_server(body: Body, options: list[tuple[str, int]] | None = None) -> EchoService:
    service = EchoService()

    async def run() -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0), *(options or [])])
        server.add_generic_rpc_handlers([service.handler()])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = GrpcChannel("127.0.0.1", port)
        try:
            await body(channel, service, server, port)
        finally:
            await channel.close()
            await server.stop(None)

    asyncio.run(run())
    return service


def test_answers_come_back_to_their_own_callers() -> None:
    async def body(channel: GrpcChannel, *_: object) -> None:
        messages = [f"request {number}".encode() * (number % 7) for number in range(200)]
        replies = await asyncio.gather(*(channel.unary(ECHO, message) for message in messages))
        assert [(reply.code, reply.message) for reply in replies] == [
            ("OK", message) for message in messages
        ]

    _with_server(body)


@pytest.mark.parametrize("code", ["NOT_FOUND", "RESOURCE_EXHAUSTED", "INVALID_ARGUMENT"])
def test_a_status_and_its_message_are_read_from_the_trailers(code: str) -> None:
    async def body(channel: GrpcChannel, *_: object) -> None:
        reply = await channel.unary(f"/{SERVICE}/Fail", code.encode())
        assert (reply.code, reply.message) == (code, None)
        assert reply.details == "nope: 100% ünïcode\nsecond line"

    _with_server(body)


def test_an_unknown_method_is_unimplemented() -> None:
    async def body(channel: GrpcChannel, *_: object) -> None:
        assert (await channel.unary(f"/{SERVICE}/Missing", b"")).code == "UNIMPLEMENTED"

    _with_server(body)


def test_metadata_reaches_the_server() -> None:
    async def body(channel: GrpcChannel, *_: object) -> None:
        method = f"/{SERVICE}/Metadata"
        for key in ("user-1", "user-2", "x" * 20_000):
            reply = await channel.unary(method, b"", [("X-Routing-Key", key)])
            assert (reply.code, reply.message) == ("OK", key.encode())

    # Twenty thousand bytes of metadata: a header block over one frame, sent in CONTINUATIONs.
    _with_server(body, [("grpc.max_metadata_size", 65_536)])


def test_messages_larger_than_every_window_cross_both_ways() -> None:
    async def body(channel: GrpcChannel, *_: object) -> None:
        messages = [bytes([number]) * (3 * 1024 * 1024 + number) for number in range(4)]
        replies = await asyncio.gather(*(channel.unary(ECHO, message) for message in messages))
        assert [reply.message for reply in replies] == messages

    _with_server(body, [("grpc.max_receive_message_length", 8 * 1024 * 1024)])


def test_a_call_past_its_deadline_ends_and_is_cancelled_at_the_server() -> None:
    async def body(channel: GrpcChannel, service: EchoService, *_: object) -> None:
        reply = await channel.unary(f"/{SERVICE}/Stall", b"", timeout_s=0.2)
        assert reply.code == "DEADLINE_EXCEEDED"
        await asyncio.wait_for(service.cancelled.wait(), 10)
        assert (await channel.unary(ECHO, b"after")).message == b"after"

    _with_server(body)


def test_a_caller_giving_up_cancels_the_call_at_the_server() -> None:
    async def body(channel: GrpcChannel, service: EchoService, *_: object) -> None:
        waiting = asyncio.create_task(channel.unary(f"/{SERVICE}/Stall", b""))
        await asyncio.sleep(0.1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await asyncio.wait_for(service.cancelled.wait(), 10)

    _with_server(body)


def test_the_servers_stream_limit_is_kept() -> None:
    async def body(channel: GrpcChannel, *_: object) -> None:
        await channel.unary(ECHO, b"first")  # the server's SETTINGS arrive with this answer
        replies = await asyncio.gather(*(channel.unary(ECHO, b"x") for _ in range(30)))
        assert {reply.code for reply in replies} == {"OK"}

    service = _with_server(body, [("grpc.max_concurrent_streams", 3)])
    assert service.most_running <= 3


def test_a_server_that_goes_away_is_reconnected_to_when_it_is_back() -> None:
    async def body(
        channel: GrpcChannel, service: EchoService, server: grpc.aio.Server, port: int
    ) -> None:
        in_flight = asyncio.create_task(channel.unary(ECHO, b"in flight"))
        await asyncio.sleep(0.005)
        await server.stop(grace=5)
        assert (await in_flight).message == b"in flight"
        assert (await channel.unary(ECHO, b"while away")).code == "CONNECTION"
        again = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        again.add_generic_rpc_handlers([service.handler()])
        again.add_insecure_port(f"127.0.0.1:{port}")
        await again.start()
        try:
            assert (await channel.unary(ECHO, b"back")).message == b"back"
        finally:
            await again.stop(None)

    _with_server(body)


def test_nobody_listening_is_a_connection_failure() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def run() -> Reply:
        channel = GrpcChannel("127.0.0.1", port)
        try:
            return await channel.unary(ECHO, b"")
        finally:
            await channel.close()

    reply = uvloop.run(run())
    assert reply.code == "CONNECTION"
    assert "cannot connect" in reply.details


# --- scripted HTTP/2 peers ----------------------------------------------------------------


class ScriptedPeer:
    """An HTTP/2 server that reads the client's preface and frames and answers each call (a
    HEADERS frame on a new stream) with the frames ``answer`` gives."""

    def __init__(self, answer: Callable[["ScriptedPeer", int], bytes]) -> None:
        self.answer = answer
        self.encoder = hpack.Encoder()
        self.frames: list[tuple[int, int, int, bytes]] = []  # type, flags, stream, payload
        self.connections = 0
        self.settings = b""  # sent on each new connection before any answer
        self.grants_back = False  # a WINDOW_UPDATE for each DATA frame received, as it is read

    def headers(self, fields: list[tuple[str, str]]) -> bytes:
        return bytes(self.encoder.encode(fields))

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        # Each connection has its own HPACK table.
        self.encoder = hpack.Encoder()
        try:
            assert await reader.readexactly(len(PREFACE)) == PREFACE
            writer.write(frame(SETTINGS, 0, 0, self.settings))
            while True:
                head = await reader.readexactly(9)
                length = int.from_bytes(head[:3])
                payload = await reader.readexactly(length)
                stream_id = int.from_bytes(head[5:9]) & 0x7FFFFFFF
                self.frames.append((head[3], head[4], stream_id, payload))
                if head[3] == DATA and self.grants_back:
                    writer.write(frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", length)))
                if head[3] == DATA and head[4] & END_STREAM:
                    writer.write(self.answer(self, stream_id))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def message(body: bytes, compressed: bool = False) -> bytes:
    return struct.pack(">BI", compressed, len(body)) + body


def ok_answer(peer: ScriptedPeer, stream_id: int) -> bytes:
    return b"".join(
        [
            frame(HEADERS, END_HEADERS, stream_id, peer.headers([(":status", "200")])),
            frame(DATA, 0, stream_id, message(b"answer")),
            frame(
                HEADERS, END_HEADERS | END_STREAM, stream_id, peer.headers([("grpc-status", "0")])
            ),
        ]
    )


def _call_scripted(
    answer: Callable[[ScriptedPeer, int], bytes], calls: int = 1, timeout_s: float = 5.0
) -> tuple[list[Reply], ScriptedPeer]:
    peer = ScriptedPeer(answer)

    async def run() -> list[Reply]:
        server = await asyncio.start_server(peer.handle, "127.0.0.1", 0)
        channel = GrpcChannel("127.0.0.1", server.sockets[0].getsockname()[1])
        try:
            return [await channel.unary(ECHO, b"hello", timeout_s=timeout_s) for _ in range(calls)]
        finally:
            await channel.close()
            server.close()

    return uvloop.run(run()), peer


def _one_block(stream_id: int, block: bytes, end_stream: bool = True) -> bytes:
    return frame(HEADERS, END_HEADERS | (END_STREAM if end_stream else 0), stream_id, block)


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ([(":status", "200"), ("grpc-status", "5"), ("grpc-message", "no%20such")], "NOT_FOUND"),
        ([(":status", "503")], "UNAVAILABLE"),
        ([(":status", "404")], "UNIMPLEMENTED"),
        ([(":status", "500")], "UNKNOWN"),
        ([(":status", "200")], "INTERNAL"),
        ([(":status", "200"), ("grpc-status", "99")], "UNKNOWN"),
        ([(":status", "200"), ("grpc-status", "x")], "UNKNOWN"),
    ],
)
def test_a_trailers_only_answer_is_read_by_grpcs_rules(
    fields: list[tuple[str, str]], code: str
) -> None:
    def answer(peer: ScriptedPeer, stream_id: int) -> bytes:
        return _one_block(stream_id, peer.headers(fields))

    (reply,), _ = _call_scripted(answer)
    assert (reply.code, reply.message) == (code, None)
    if code == "NOT_FOUND":
        assert reply.details == "no such"


def test_padding_continuation_ping_and_settings_are_handled() -> None:
    def answer(peer: ScriptedPeer, stream_id: int) -> bytes:
        block = peer.headers([(":status", "200"), ("x-filler", "f" * 40)])
        return b"".join(
            [
                frame(PING, 0, 0, b"12345678"),
                frame(SETTINGS, 0, 0, struct.pack(">HI", 0x5, 32_768)),
                frame(HEADERS, 0, stream_id, block[:10]),
                frame(CONTINUATION, 0, stream_id, block[10:20]),
                frame(CONTINUATION, END_HEADERS, stream_id, block[20:]),
                frame(DATA, PADDED, stream_id, b"\x03" + message(b"answer")[:8] + b"\0\0\0"),
                frame(DATA, 0, stream_id, message(b"answer")[8:]),
                frame(DATA, 0, 0x7FFFFFFF, b"for a stream that is not there"),
                _one_block(stream_id, peer.headers([("grpc-status", "0")])),
            ]
        )

    replies, peer = _call_scripted(answer, calls=3)
    assert [(reply.code, reply.message) for reply in replies] == [("OK", b"answer")] * 3
    acknowledged = [payload for kind, flags, _, payload in peer.frames if kind == PING]
    assert acknowledged == [b"12345678"] * 3
    assert sum(kind == SETTINGS and flags == 1 for kind, flags, _, _ in peer.frames) >= 3
    assert peer.connections == 1


def test_the_servers_stream_window_paces_the_message() -> None:
    peer = ScriptedPeer(ok_answer)
    peer.settings = struct.pack(">HI", 0x4, 3)  # three bytes of window per stream
    peer.grants_back = True

    async def run() -> list[Reply]:
        server = await asyncio.start_server(peer.handle, "127.0.0.1", 0)
        channel = GrpcChannel("127.0.0.1", server.sockets[0].getsockname()[1])
        try:
            # The first call goes out before the SETTINGS arrive, the others after.
            return [await channel.unary(ECHO, b"hello") for _ in range(3)]
        finally:
            await channel.close()
            server.close()

    replies = uvloop.run(run())
    assert [reply.message for reply in replies] == [b"answer"] * 3
    for stream_id in (3, 5):
        sent = [
            payload
            for kind, _, stream, payload in peer.frames
            if (kind, stream) == (DATA, stream_id)
        ]
        assert b"".join(sent) == message(b"hello")
        assert max(len(payload) for payload in sent) <= 3


def test_a_repeated_header_block_is_read_in_the_table_of_its_moment() -> None:
    # The second and fourth trailers are the same bytes (the newest entry of HPACK's table),
    # which reads "grpc-status: 0" the first time and "grpc-status: 5" the second.
    statuses = iter(["0", "0", "5", "5", "0"])

    def answer(peer: ScriptedPeer, stream_id: int) -> bytes:
        trailers = peer.headers([("grpc-status", next(statuses))])
        return b"".join(
            [
                frame(HEADERS, END_HEADERS, stream_id, peer.headers([(":status", "200")])),
                frame(DATA, 0, stream_id, message(b"answer")),
                _one_block(stream_id, trailers),
            ]
        )

    replies, _ = _call_scripted(answer, calls=5)
    codes = [reply.code for reply in replies]
    assert codes == ["OK", "OK", "NOT_FOUND", "NOT_FOUND", "OK"]


def test_a_reset_stream_ends_its_call_with_the_mapped_status() -> None:
    def answer(peer: ScriptedPeer, stream_id: int) -> bytes:
        return frame(RST_STREAM, 0, stream_id, struct.pack(">I", 7))

    (reply,), _ = _call_scripted(answer)
    assert reply.code == "UNAVAILABLE"


def test_goaway_refuses_later_streams_and_the_next_call_opens_a_new_connection() -> None:
    def answer(peer: ScriptedPeer, stream_id: int) -> bytes:
        return frame(GOAWAY, 0, 0, struct.pack(">II", 0, 0) + b"draining")

    replies, peer = _call_scripted(answer, calls=2)
    assert [(reply.code, reply.details) for reply in replies] == [("UNAVAILABLE", "draining")] * 2
    assert peer.connections == 2


@pytest.mark.parametrize(
    ("answer_frames", "code"),
    [
        (lambda peer, sid: frame(DATA, 0, sid, b"\0" * 20_000), "CONNECTION"),
        (lambda peer, sid: b"HTTP/1.1 400 Bad Request\r\n\r\n", "CONNECTION"),
        (
            lambda peer, sid: frame(HEADERS, END_HEADERS | END_STREAM, sid, b"\xff\xff\xff"),
            "CONNECTION",
        ),
        (
            lambda peer, sid: (
                frame(HEADERS, 0, sid, peer.headers([(":status", "200")]))
                + frame(PING, 0, 0, b"x" * 8)
            ),
            "CONNECTION",
        ),
        (
            lambda peer, sid: ok_answer(peer, sid).replace(
                message(b"answer"), message(b"answer", compressed=True)
            ),
            "INTERNAL",
        ),
        (lambda peer, sid: frame(SETTINGS, 0, 0, b"\0\4\0"), "CONNECTION"),
        (lambda peer, sid: frame(SETTINGS, 0, 0, struct.pack(">HI", 0x5, 100)), "CONNECTION"),
        (lambda peer, sid: frame(SETTINGS, 0, 0, struct.pack(">HI", 0x4, 2**31)), "CONNECTION"),
    ],
    ids=[
        "frame-too-large",
        "not-http2",
        "bad-hpack",
        "interrupted-headers",
        "compressed",
        "settings-length",
        "settings-frame-size",
        "settings-window",
    ],
)
def test_a_broken_answer_is_an_error_not_a_hang(
    answer_frames: Callable[[ScriptedPeer, int], bytes], code: str
) -> None:
    (reply,), _ = _call_scripted(answer_frames)
    assert reply.code == code


def test_a_connection_closed_before_the_answer_is_a_connection_failure() -> None:
    def answer(peer: ScriptedPeer, stream_id: int) -> bytes:
        raise ConnectionResetError

    (reply,), _ = _call_scripted(answer)
    assert reply.code == "CONNECTION"


def test_a_server_that_never_answers_is_reset_at_the_deadline() -> None:
    (reply,), peer = _call_scripted(lambda peer, stream_id: b"", timeout_s=0.2)
    assert reply.code == "DEADLINE_EXCEEDED"
    resets = [(stream, payload) for kind, _, stream, payload in peer.frames if kind == RST_STREAM]
    assert resets == [(1, struct.pack(">I", 8))]
