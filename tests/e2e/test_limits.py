"""The configurable limits end to end, on a server whose limits are set small: request heads
bounded in bytes and headers (431), heads and bodies that trickle closed after their deadlines
(408 / closed), a cap on open connections (503 + Retry-After), on gRPC metadata and concurrent
RPCs (RESOURCE_EXHAUSTED), on requests in flight in the whole process (503 + Retry-After,
counted for the endpoint), and on what one request may hold (400). After each refusal the server
is still live and answers a good request correctly."""

import functools
import http.client
import json
import queue
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.support.batching_models import slow_echo
from tests.support.e2e import (
    assert_serving,
    inflight,
    mlp_json_request,
    mlp_rows,
    scrape,
    write_config,
)
from tests.support.onnx_models import write_model
from tests.support.polling import wait_for
from tests.support.rawhttp import Reply, assert_no_leak, post_json, request, send_raw
from tests.support.scheduling import (
    InThread,
    busy_echo,
    echo_body,
    echo_message,
    echo_values,
    raw_outputs,
)
from tests.support.server import TurnoutProcess
from turnout.protos import inference_pb2 as pb
from turnout.protos import inference_pb2_grpc as pb_grpc

MAX_HEADER_BYTES = 2048
MAX_HEADERS = 20
HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 8
MAX_CONCURRENT_RPCS = 3
MAX_INFLIGHT = 3
MAX_TENSORS = 4
MAX_TENSOR_ELEMENTS = 10_000
MAX_STRING_BYTES = 64
# How long past a deadline the server may take to act on it on a busy test machine.
SLACK_S = 5.0
# The server's clock for a connection starts when it accepts it, a little before the client's.
EARLY_S = 0.5


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TurnoutProcess]:
    """A server with every limit small: mlp version 1, strings, and the slow echo model."""
    root = tmp_path_factory.mktemp("limits")
    write_model(slow_echo(), root / "slow_echo.onnx")
    config = write_config(
        root / "turnout.yaml",
        {
            "server": {
                "limits": {
                    "max_header_bytes": MAX_HEADER_BYTES,
                    "max_headers": MAX_HEADERS,
                    "header_timeout_s": HEADER_TIMEOUT_S,
                    "body_timeout_s": BODY_TIMEOUT_S,
                    "max_connections": MAX_CONNECTIONS,
                    "max_concurrent_rpcs": MAX_CONCURRENT_RPCS,
                    "max_inflight_requests": MAX_INFLIGHT,
                    "max_tensors": MAX_TENSORS,
                    "max_tensor_elements": MAX_TENSOR_ELEMENTS,
                    "max_string_bytes": MAX_STRING_BYTES,
                }
            },
            "models": [
                {"name": "mlp", "version": 1, "path": str(repository / "mlp/1/model.onnx")},
                {
                    "name": "strings",
                    "version": 1,
                    "path": str(repository / "strings/1/model.onnx"),
                },
                {"name": "echo", "version": 1, "path": "slow_echo.onnx", "device": "cpu"},
            ],
        },
    )
    with TurnoutProcess(["--config", str(config)], root / "run") as process:
        yield process
        assert process.stop() == 0, process.logs()
        assert "Traceback" not in process.logs(), process.logs()


@pytest.fixture(autouse=True)
def still_serving(server: TurnoutProcess, repository: Path) -> Iterator[None]:
    """After every test: live, and a good request answered correctly."""
    yield
    assert_serving(server, repository, version="1")


def refusals(server: TurnoutProcess, reason: str) -> float:
    return scrape(server).value("turnout_http_refusals_total", reason=reason)


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def parse_reply(raw: bytes) -> Reply:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return Reply(int(status_line.split()[1]), {k.lower(): v for k, v in headers.items()}, body)


def connect(server: TurnoutProcess, timeout_s: float = HEADER_TIMEOUT_S + SLACK_S) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.http_port), timeout=timeout_s)


# --- the request head ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "head"),
    [
        pytest.param(b"", b"X-Big: " + b"a" * MAX_HEADER_BYTES + b"\r\n", id="one-huge-header"),
        pytest.param(b"", b"".join(b"X-%d: %s\r\n" % (i, b"v" * 100) for i in range(19)), id="sum"),
        pytest.param(b"?q=" + b"u" * MAX_HEADER_BYTES, b"", id="long-url"),
    ],
)
def test_a_head_over_the_byte_limit_gets_431_and_the_connection_closes(
    server: TurnoutProcess, query: bytes, head: bytes
) -> None:
    before = refusals(server, "header_too_large")
    path = b"/v2/health/live" + query
    with connect(server) as sock:
        sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n")
        reply = parse_reply(read_all(sock))
    assert reply.status == 431, reply
    assert reply.headers["connection"] == "close"
    assert str(MAX_HEADER_BYTES) in reply.error()
    assert refusals(server, "header_too_large") == before + 1


def test_a_head_that_never_ends_is_refused_at_the_limit_not_buffered(
    server: TurnoutProcess,
) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nX-Endless: ")
        sent = 0
        # The server stops reading at the limit; sending on fails once it has closed.
        try:
            while sent < 100 * MAX_HEADER_BYTES:
                sock.sendall(b"a" * 256)
                sent += 256
                time.sleep(0.002)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert sent < 100 * MAX_HEADER_BYTES


def test_too_many_headers_get_431(server: TurnoutProcess) -> None:
    headers = b"".join(b"X-%d: 1\r\n" % i for i in range(MAX_HEADERS + 1))
    reply = send_raw(server.http_url, b"GET /v2/health/live HTTP/1.1\r\n" + headers + b"\r\n")
    assert reply.status == 431, reply
    assert f"more than {MAX_HEADERS} headers" in reply.error()


def test_as_many_headers_as_allowed_are_served(server: TurnoutProcess) -> None:
    headers = {f"X-{i}": "1" for i in range(MAX_HEADERS - 4)}
    reply = request(server.http_url, "GET", "/v2/health/live", headers=headers)
    assert reply.status == 200, reply


@pytest.mark.parametrize(
    "data",
    [b"\x00\x01\x02 garbage\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"GET /\x7f HTTP/1.1 x y\r\n\r\n"],
    ids=["binary", "bad-version", "bad-request-line"],
)
def test_garbage_gets_400_with_the_one_error_body(server: TurnoutProcess, data: bytes) -> None:
    before = refusals(server, "malformed")
    reply = send_raw(server.http_url, data)
    assert reply.status == 400, reply
    assert reply.error() == "malformed HTTP request"
    assert refusals(server, "malformed") == before + 1


# --- slow clients ---------------------------------------------------------------------------


def test_a_head_that_trickles_gets_408_after_the_deadline_and_others_are_served(
    server: TurnoutProcess, repository: Path
) -> None:
    before = refusals(server, "header_timeout")
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")

        def trickle() -> bytes:
            try:
                for _ in range(int((HEADER_TIMEOUT_S + SLACK_S) * 10)):
                    sock.sendall(b"X")
                    time.sleep(0.1)
            except OSError:
                pass
            return read_all(sock)

        slow = InThread(trickle)
        assert_serving(server, repository, version="1")
        reply = parse_reply(slow.result())
        elapsed = time.monotonic() - started
    assert reply.status == 408, reply
    assert "did not arrive within" in reply.error()
    assert HEADER_TIMEOUT_S - EARLY_S <= elapsed < HEADER_TIMEOUT_S + SLACK_S
    assert refusals(server, "header_timeout") == before + 1


def test_a_connection_that_sends_nothing_is_closed_after_the_head_deadline(
    server: TurnoutProcess,
) -> None:
    with connect(server) as sock:
        started = time.monotonic()
        assert read_all(sock) == b""
        elapsed = time.monotonic() - started
        assert HEADER_TIMEOUT_S - EARLY_S <= elapsed < HEADER_TIMEOUT_S + SLACK_S


def test_a_body_that_trickles_is_closed_after_the_deadline_and_nothing_runs(
    server: TurnoutProcess,
) -> None:
    before = refusals(server, "body_timeout")
    body = json.dumps(mlp_json_request(mlp_rows(1))).encode()
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(
            b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body[:10]
        )
        assert read_all(sock) == b""
        elapsed = time.monotonic() - started
        assert BODY_TIMEOUT_S - EARLY_S <= elapsed < BODY_TIMEOUT_S + SLACK_S
    assert refusals(server, "body_timeout") == before + 1
    assert wait_for(lambda: inflight(server, "http") == 0, "the abandoned request to end")


def test_a_keep_alive_client_is_served_request_after_request(server: TurnoutProcess) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
    try:
        for _ in range(5):
            connection.request("GET", "/v2/health/live")
            response = connection.getresponse()
            assert response.status == 200
            response.read()
    finally:
        connection.close()


# --- connections, RPCs and requests in flight -----------------------------------------------


def test_connections_past_the_cap_get_503_with_retry_after_until_some_close(
    server: TurnoutProcess,
) -> None:
    held = [connect(server) for _ in range(MAX_CONNECTIONS)]
    try:

        def refused() -> Reply | None:
            reply = send_raw(server.http_url, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            return reply if reply.status == 503 else None

        reply = wait_for(refused, "a connection past the cap refused", timeout_s=HEADER_TIMEOUT_S)
        assert reply.headers["retry-after"] == "1"
        assert f"limit of {MAX_CONNECTIONS} connections" in reply.error()
    finally:
        for sock in held:
            sock.close()
    wait_for(
        lambda: request(server.http_url, "GET", "/v2/health/live").status == 200,
        "connections served again",
    )


def test_grpc_metadata_over_the_limit_is_resource_exhausted(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        stub.ServerLive(
            pb.ServerLiveRequest(), metadata=[("x-big", "a" * (2 * MAX_HEADER_BYTES))], timeout=10
        )
    assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live


Feed = queue.SimpleQueue[pb.ModelInferRequest | None]


def open_stream(
    stub: pb_grpc.GRPCInferenceServiceStub, value: int
) -> tuple[Feed, Iterator[pb.ModelStreamInferResponse]] | None:
    """A ModelStreamInfer call held open, known to be running because it answered one request;
    None when the server refused it (an RPC that just ended may still hold its slot)."""
    feed: Feed = queue.SimpleQueue()
    feed.put(echo_message("echo", echo_values(1, 1, value)))

    def requests() -> Iterator[pb.ModelInferRequest]:
        while (message := feed.get()) is not None:
            yield message

    stream = stub.ModelStreamInfer(requests(), timeout=60)
    try:
        first = next(stream)
    except grpc.RpcError as error:
        feed.put(None)
        if error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
            return None
        raise
    assert first.error_message == "", first
    assert raw_outputs(first.infer_response)["Y"].tolist() == [[value]]
    return feed, stream


def test_rpcs_past_the_concurrent_cap_are_resource_exhausted(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    held = [
        wait_for(functools.partial(open_stream, stub, value), "a stream open")
        for value in range(MAX_CONCURRENT_RPCS)
    ]
    try:
        with pytest.raises(grpc.RpcError) as raised:
            stub.ServerLive(pb.ServerLiveRequest(), timeout=10)
        assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        for feed, _ in held:
            feed.put(None)
        for _, stream in held:
            assert list(stream) == []

    def live() -> bool:
        try:
            return bool(stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live)
        except grpc.RpcError as error:
            if error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
                return False
            raise

    wait_for(live, "RPCs served again")


def test_requests_past_the_in_flight_cap_are_refused_at_once_and_the_admitted_complete(
    server: TurnoutProcess, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    def overloaded() -> float:
        return scrape(server).value(
            "turnout_requests_total",
            endpoint="echo",
            version="",
            protocol="http",
            status="overloaded",
        )

    before = overloaded()
    with busy_echo(server, "echo"):
        waiting = [
            InThread(
                functools.partial(
                    post_json,
                    server.http_url,
                    "/v2/models/echo/infer",
                    echo_body(echo_values(1, 1, start)),
                )
            )
            for start in (1, 2)
        ]
        wait_for(lambda: inflight(server, "http") == MAX_INFLIGHT, "the cap reached")
        reply = post_json(server.http_url, "/v2/models/echo/infer", echo_body(echo_values(1, 1, 3)))
        assert reply.status == 503, reply
        assert reply.headers["retry-after"] == "1"
        assert f"limit of {MAX_INFLIGHT} requests in flight" in reply.error()
        with pytest.raises(grpc.RpcError) as raised:
            stub.ModelInfer(echo_message("echo", echo_values(1, 1, 4)), timeout=10)
        assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "in flight" in (raised.value.details() or "")
        assert ("retry-after", "1") in raised.value.trailing_metadata()
        replies = [call.result() for call in waiting]
    for start, admitted in zip((1, 2), replies, strict=True):
        assert admitted.status == 200, admitted
        assert admitted.json()["outputs"][0]["data"] == [start]
    assert overloaded() == before + 1


# --- what one request may hold ----------------------------------------------------------------


def test_more_inputs_than_allowed_get_400_over_http_and_grpc(
    server: TurnoutProcess, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    tensors = [
        {"name": f"IN{i}", "datatype": "FP32", "shape": [1], "data": [0.0]}
        for i in range(MAX_TENSORS + 1)
    ]
    reply = post_json(server.http_url, "/v2/models/mlp/infer", {"inputs": tensors})
    assert reply.status == 400, reply
    assert f"at most {MAX_TENSORS}" in reply.error()
    message = pb.ModelInferRequest(
        model_name="mlp",
        inputs=[
            pb.ModelInferRequest.InferInputTensor(name=f"IN{i}", datatype="FP32", shape=[1])
            for i in range(MAX_TENSORS + 1)
        ],
    )
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(message, timeout=10)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert f"at most {MAX_TENSORS}" in (raised.value.details() or "")


def test_more_requested_outputs_than_allowed_get_400(server: TurnoutProcess) -> None:
    document = mlp_json_request(mlp_rows(1))
    document["outputs"] = [{"name": f"OUT{i}"} for i in range(MAX_TENSORS + 1)]
    reply = post_json(server.http_url, "/v2/models/mlp/infer", document)
    assert reply.status == 400, reply
    assert f"at most {MAX_TENSORS}" in reply.error()


def test_a_shape_of_more_elements_than_allowed_gets_400_before_any_data_is_read(
    server: TurnoutProcess,
) -> None:
    tensor = {"name": "INPUT0", "datatype": "FP32", "shape": [1_000_000, 64], "data": [0.0]}
    reply = post_json(server.http_url, "/v2/models/mlp/infer", {"inputs": [tensor]})
    assert reply.status == 400, reply
    message = reply.error()
    assert str(MAX_TENSOR_ELEMENTS) in message
    assert "elements" in message


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_a_string_longer_than_allowed_gets_400_over_http(
    server: TurnoutProcess, binary: bool
) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        text = np.array([b"ok", b"x" * (MAX_STRING_BYTES + 1)], dtype=object)
        tensor = httpclient.InferInput("TEXT", [2], "BYTES")
        tensor.set_data_from_numpy(text, binary_data=binary)
        with pytest.raises(InferenceServerException) as raised:
            client.infer("strings", [tensor])
        assert str(raised.value.status()) == "400"
        message = raised.value.message() or ""
        assert_no_leak(message)
        assert f"element 1 has {MAX_STRING_BYTES + 1} bytes" in message
        fits = np.array([b"x" * MAX_STRING_BYTES], dtype=object)
        tensor = httpclient.InferInput("TEXT", [1], "BYTES")
        tensor.set_data_from_numpy(fits, binary_data=binary)
        assert client.infer("strings", [tensor]).as_numpy("ECHO").tolist() == fits.tolist()
    finally:
        client.close()


def test_a_string_longer_than_allowed_gets_invalid_argument_over_grpc(
    server: TurnoutProcess,
) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        tensor = grpcclient.InferInput("TEXT", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([b"x" * (MAX_STRING_BYTES + 1)], dtype=object))
        with pytest.raises(InferenceServerException) as raised:
            client.infer("strings", [tensor])
        assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert f"at most {MAX_STRING_BYTES}" in (raised.value.message() or "")
    finally:
        client.close()
