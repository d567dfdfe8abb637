"""Reading a request body within the size limit, counting bytes as they stream in, and undoing
``Content-Encoding: gzip|deflate`` without letting a small body expand past the limit."""

import zlib
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from turnout.errors import ClientDisconnected, InvalidInput, PayloadTooLarge, UnsupportedMediaType

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


MAX_COUNT_DIGITS = 20  # any byte count a request can carry; int() of more is wasted work


def byte_count(value: str, header: str) -> int:
    """A header's byte count; InvalidInput unless it is a decimal of at most MAX_COUNT_DIGITS
    digits (leading zeros aside)."""
    digits = value.lstrip("0") or "0"
    if not (value.isascii() and value.isdigit()) or len(digits) > MAX_COUNT_DIGITS:
        raise InvalidInput(
            f"{header} must be a non-negative integer of at most {MAX_COUNT_DIGITS} digits"
        )
    return int(digits)


async def read_body(receive: Receive, headers: Mapping[str, str], limit: int) -> bytes:
    """The whole body, decompressed; PayloadTooLarge as soon as it passes ``limit`` bytes
    (before reading anything when Content-Length already says so)."""
    declared = headers.get("content-length")
    if declared is not None and byte_count(declared, "Content-Length") > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    received = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk: bytes = message.get("body", b"")
        received += len(chunk)
        if received > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding == "identity":
        return body
    wbits = _WBITS.get(encoding)
    if wbits is None:
        raise UnsupportedMediaType("Content-Encoding must be gzip, deflate or identity")
    return _decompress(body, wbits, limit, encoding)


def _decompress(body: bytes, wbits: int, limit: int, encoding: str) -> bytes:
    decompressor = zlib.decompressobj(wbits)
    try:
        data = decompressor.decompress(body, limit + 1)
    except zlib.error:
        raise InvalidInput(f"the body is not valid {encoding} data") from None
    if len(data) > limit or decompressor.unconsumed_tail:
        raise _too_large(limit, "decompressed ")
    if not decompressor.eof:
        raise InvalidInput(f"the {encoding} body is truncated")
    return data


def _too_large(limit: int, what: str = "") -> PayloadTooLarge:
    return PayloadTooLarge(f"the {what}request body is larger than the limit of {limit} bytes")
