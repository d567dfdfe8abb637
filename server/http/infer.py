"""``POST /v2/models/{m}[/versions/{v}]/infer`` as a plain ASGI callable.

This is the hot path, so it reads the ASGI scope, body and headers directly instead of going
through starlette's request, routing and response objects; the rest of the HTTP API is starlette.
"""

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeVar

from turnout.errors import ClientDisconnected, TurnoutError, UnsupportedMediaType
from turnout.server.dataplane import DataPlane
from turnout.server.http.body import Receive, byte_count, read_body
from turnout.server.http.codec import decode_request, encode_response
from turnout.server.http.errors import error_body, error_headers, status_for
from turnout.server.tensors import RequestLimits

Scope = MutableMapping[str, Any]
_Result = TypeVar("_Result")
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

HEADER_LENGTH = "inference-header-content-length"
ROUTING_KEY_HEADER = "x-routing-key"
JSON = "application/json"
BINARY = "application/octet-stream"
_PREFIX = "/v2/models/"
_SUFFIX = "/infer"
_JSON_HEADERS = [(b"content-type", JSON.encode())]


def infer_path(path: str) -> tuple[str, str | None] | None:
    """``(model, version)`` of an infer path, or None when ``path`` is not one."""
    if not (path.startswith(_PREFIX) and path.endswith(_SUFFIX)):
        return None
    parts = path[len(_PREFIX) : -len(_SUFFIX)].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
        return parts[0], parts[2]
    return None


class InferEndpoint:
    """Decodes, runs through the data plane and encodes one inference request."""

    def __init__(self, plane: DataPlane, max_request_bytes: int, limits: RequestLimits) -> None:
        self._plane = plane
        self._max_request_bytes = max_request_bytes
        self._limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = infer_path(scope["path"])
        if target is None:
            await _respond(send, 404, error_body("not found"), _JSON_HEADERS)
            return
        endpoint, version = target
        headers = {name.decode("latin-1").lower(): value.decode("latin-1")
                   for name, value in scope["headers"]}  # fmt: skip
        request_id = ""
        try:
            with self._plane.request("http", endpoint) as tracked:
                body = await read_body(receive, headers, self._max_request_bytes)
                header_length = _header_length(headers)
                _check_content_type(headers, header_length is not None)
                decoded = decode_request(
                    body,
                    header_length,
                    endpoint,
                    version,
                    headers.get(ROUTING_KEY_HEADER),
                    self._limits,
                )
                request_id = decoded.request.request_id
                response = await _unless_disconnected(
                    receive, self._plane.infer(decoded.request, tracked)
                )
                encoded = encode_response(response, response.request_id, decoded)
        except TurnoutError as error:
            await _respond_error(send, error)
            return
        except ClientDisconnected:
            return
        except Exception as error:
            await _respond_error(send, self._plane.internal_error(error, request_id))
            return
        if encoded.header_length is None:
            await _respond(send, 200, encoded.body, _JSON_HEADERS)
        else:
            await _respond(
                send,
                200,
                encoded.body,
                [
                    (b"content-type", BINARY.encode()),
                    (b"inference-header-content-length", str(encoded.header_length).encode()),
                ],
            )


async def _unless_disconnected(receive: Receive, work: Awaitable[_Result]) -> _Result:
    """Await ``work``; if the client disconnects first, cancel it (a queued request then leaves
    the queue without running) and raise ClientDisconnected."""
    task = asyncio.current_task()
    watcher = asyncio.ensure_future(receive())
    disconnected = False

    def on_message(message: "asyncio.Future[MutableMapping[str, Any]]") -> None:
        nonlocal disconnected
        if (
            task is not None
            and not message.cancelled()
            and message.exception() is None
            and message.result()["type"] == "http.disconnect"
        ):
            disconnected = True
            task.cancel()

    watcher.add_done_callback(on_message)
    try:
        return await work
    except asyncio.CancelledError:
        if disconnected and task is not None:
            task.uncancel()
            raise ClientDisconnected from None
        raise
    finally:
        watcher.remove_done_callback(on_message)
        watcher.cancel()


def _header_length(headers: dict[str, str]) -> int | None:
    value = headers.get(HEADER_LENGTH)
    return None if value is None else byte_count(value, "Inference-Header-Content-Length")


def _check_content_type(headers: dict[str, str], binary: bool) -> None:
    value = headers.get("content-type")
    if value is None:
        return
    media_type = value.partition(";")[0].strip().lower()
    if media_type == JSON or (binary and media_type == BINARY):
        return
    raise UnsupportedMediaType(
        "Content-Type must be application/json, or application/octet-stream with "
        "Inference-Header-Content-Length"
    )


async def _respond_error(send: Send, error: TurnoutError) -> None:
    headers = [
        (name.lower().encode(), value.encode()) for name, value in error_headers(error).items()
    ]
    await _respond(send, status_for(error), error_body(error.message), [*_JSON_HEADERS, *headers])


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
