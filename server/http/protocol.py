"""The HTTP/1.1 connection: uvicorn's httptools protocol with the bounds a server in front of
every model needs and uvicorn leaves out. The request line and headers are counted in bytes and
in number as they stream in (uvicorn would buffer a header of any size); a request's head and its
body must each arrive within a deadline (against clients that trickle); the number of open
connections is capped; and refusals made here, before the application sees a request, carry the
same ``{"error": ...}`` body as every other error."""

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from turnout.server.http.errors import error_body

# How long a refused connection is still read (and what arrives thrown away) after the refusal
# is written: closing with unread data makes the kernel reset the connection, and the client may
# lose the refusal before reading it.
LINGER_S = 1.0
# uvicorn logs a warning for every request its parser stops on, refusals made here included; a
# flood of bad requests must not become a flood of log lines (turnout_http_refusals counts them).
_QUIET_LOG = logging.getLogger("turnout.server.http.connections")
_QUIET_LOG.setLevel(logging.ERROR)
REFUSAL_REASONS = (
    "malformed",
    "header_too_large",
    "too_many_headers",
    "header_timeout",
    "body_timeout",
    "too_many_connections",
)
_STATUS_LINES = {
    400: b"HTTP/1.1 400 Bad Request\r\n",
    408: b"HTTP/1.1 408 Request Timeout\r\n",
    431: b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
    503: b"HTTP/1.1 503 Service Unavailable\r\n",
}


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The bounds on one HTTP connection and on how many there are."""

    max_header_bytes: int
    max_headers: int
    header_timeout_s: float
    body_timeout_s: float
    max_connections: int


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; the refusal is already recorded."""


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol within ConnectionLimits; build one with ``guarded``."""

    limits: ClassVar[ConnectionLimits]
    refusals: ClassVar["Counter[str]"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logger = _QUIET_LOG
        self._reading_head = True
        self._in_message = False
        self._head_bytes = 0
        self._header_count = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._refusal: tuple[int, str, str] | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        limit = self.limits.max_connections
        if len(self.connections) > limit:
            self._refuse(
                503,
                "too_many_connections",
                f"the server has its limit of {limit} connections open; retry later",
                retry_after=True,
            )
            return
        self._arm(self.limits.header_timeout_s, self._head_too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        view = memoryview(data)
        limit = self.limits.max_header_bytes
        # While a head is being read, feed at most one byte past the limit at a time, so a head
        # that never ends is refused after ``limit`` bytes, not buffered whole.
        while view and self._reading_head and not self._refused:
            piece = view[: limit - self._head_bytes + 1]
            view = view[len(piece) :]
            self._head_bytes += len(piece)
            super().data_received(piece)  # type: ignore[arg-type]
            if self._reading_head and self._head_bytes > limit:
                self._refuse(
                    431, "header_too_large", f"the request head is larger than {limit} bytes"
                )
        if view and not self._refused:
            super().data_received(view)  # type: ignore[arg-type]

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_message = True
        if self._deadline is None:
            self._arm(self.limits.header_timeout_s, self._head_too_slow)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self._refusal = (
                431,
                "too_many_headers",
                f"the request has more than {self.limits.max_headers} headers",
            )
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._arm(self.limits.body_timeout_s, self._body_too_slow)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_message = False
        self._reading_head = True
        self._head_bytes = 0
        self._header_count = 0
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        """Called by uvicorn when the parser stops: on malformed input, or on a refusal
        raised from a callback here."""
        status, reason, message = self._refusal or (400, "malformed", "malformed HTTP request")
        self._refuse(status, reason, message)

    def _refuse(self, status: int, reason: str, message: str, retry_after: bool = False) -> None:
        self._disarm()
        if self._refused or self.transport.is_closing():
            return
        self._refused = True
        self.refusals[reason] += 1
        body = error_body(message)
        head = [
            _STATUS_LINES[status],
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n",
        ]
        if retry_after:
            head.append(b"retry-after: 1\r\n")
        self.transport.write(b"".join([*head, b"\r\n", body]))
        # A refused connection lingering does not hold one of max_connections' places: under a
        # storm of reconnects, lingering refusals would otherwise refuse everyone.
        self.connections.discard(self)
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._arm(LINGER_S, self.transport.close)
        else:
            self.transport.close()

    def _arm(self, seconds: float, expire: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_too_slow(self) -> None:
        self._deadline = None
        if not self._in_message:
            # Nothing of a request arrived: an idle connection, closed without a word.
            self.refusals["header_timeout"] += 1
            self.transport.close()
            return
        self._refuse(
            408,
            "header_timeout",
            f"the request head did not arrive within {self.limits.header_timeout_s:g} s",
        )

    def _body_too_slow(self) -> None:
        # The application is waiting for the body: closing makes its read end as a disconnect.
        self._deadline = None
        self.refusals["body_timeout"] += 1
        self.transport.close()


def guarded(limits: ConnectionLimits, refusals: "Counter[str]") -> type[GuardedHttpProtocol]:
    """A protocol class for uvicorn's ``http=`` bound to these limits, counting its refusals
    in ``refusals`` (by REFUSAL_REASONS)."""
    return type(
        "GuardedHttpProtocol", (GuardedHttpProtocol,), {"limits": limits, "refusals": refusals}
    )
