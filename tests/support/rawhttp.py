"""Plain HTTP/1.1 requests with the standard library, for raw JSON and malformed requests, and
checks of the one error body every Turnout error uses."""

import http.client
import json
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

TIMEOUT_S = 10.0
# Two or more path segments ("/tmp/x", "/work/main/server"), an internal Python file, or a
# traceback: things an error message must never carry.
_LEAKS = (
    re.compile(r"(?:/[\w.-]+){2,}"),
    re.compile(r"\.py\b"),
    re.compile(r"Traceback|File \""),
    re.compile(r"onnxruntime_src|pybind11|site-packages"),
)


@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP response: status, headers (names lower-cased) and body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    def error(self) -> str:
        """The message of an error body, checking that the body is exactly ``{"error": str}``
        sent as JSON, and that it leaks nothing internal."""
        assert self.headers.get("content-type", "").startswith("application/json"), self
        document = self.json()
        assert isinstance(document, dict), self
        assert list(document) == ["error"], self
        message = document["error"]
        assert isinstance(message, str), self
        assert message, self
        assert_no_leak(message)
        return message


def assert_no_leak(message: str) -> None:
    """Fail when ``message`` carries a file path, a traceback or ONNX Runtime internals."""
    for pattern in _LEAKS:
        assert not pattern.search(message), f"error message leaks internals: {message!r}"


def request(
    address: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = TIMEOUT_S,
) -> Reply:
    """Send one request to ``address`` (``host:port``) on a fresh connection."""
    host, _, port = address.rpartition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout_s)
    try:
        connection.request(method, path, body=body, headers=dict(headers or {}))
        response = connection.getresponse()
        return Reply(
            response.status,
            {name.lower(): value for name, value in response.getheaders()},
            response.read(),
        )
    finally:
        connection.close()


def post_json(
    address: str,
    path: str,
    document: Any,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = TIMEOUT_S,
) -> Reply:
    """POST ``document`` as ``application/json``."""
    merged = {"Content-Type": "application/json", **(headers or {})}
    return request(address, "POST", path, json.dumps(document).encode(), merged, timeout_s)


def send_raw(address: str, data: bytes, timeout_s: float = TIMEOUT_S) -> Reply:
    """Write ``data`` as-is on a new connection (it need not be a complete or valid request)
    and read one response, without sending anything more."""
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        sock.sendall(data)
        response = http.client.HTTPResponse(sock, method="POST")
        response.begin()
        try:
            return Reply(
                response.status,
                {name.lower(): value for name, value in response.getheaders()},
                response.read(),
            )
        finally:
            response.close()
