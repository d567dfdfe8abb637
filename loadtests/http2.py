"""HTTP/2's wire vocabulary for the load test's gRPC client (``grpc_channel``): the frame types,
flags, settings and error codes of RFC 9113 it uses, a frame's bytes, and the HPACK (RFC 7541)
field literals that need no table, so that a request's header block can be prepared once."""

import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0, 1, 3, 4, 5, 6, 7, 8, 9
)  # fmt: skip
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY = 0x4, 0x8, 0x20
SETTINGS_ENABLE_PUSH, SETTINGS_MAX_CONCURRENT_STREAMS = 0x2, 0x3
SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE = 0x4, 0x5
RST_REFUSED_STREAM, RST_CANCEL = 0x7, 0x8
DEFAULT_WINDOW = 65_535
MAX_WINDOW = 2**31 - 1
DEFAULT_MAX_FRAME = 16_384  # also the smallest SETTINGS_MAX_FRAME_SIZE allowed
LAST_STREAM_ID = 2**31 - 1

_FRAME_HEADER = struct.Struct(">HBBBI")  # 24-bit length as 16 + 8 bits, type, flags, stream


def frame(frame_type: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame's bytes."""
    length = len(payload)
    return _FRAME_HEADER.pack(length >> 8, length & 0xFF, frame_type, flags, stream_id) + payload


def _hpack_integer(value: int, prefix_bits: int, first_byte: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first_byte | value])
    encoded = [first_byte | limit]
    value -= limit
    while value >= 128:
        encoded.append(value & 0x7F | 0x80)
        value >>= 7
    encoded.append(value)
    return bytes(encoded)


def _hpack_string(text: str) -> bytes:
    raw = text.encode("latin-1")
    return _hpack_integer(len(raw), 7, 0) + raw


def unindexed(name: str | int, value: str) -> bytes:
    """A header field literal without indexing (stateless, so blocks can be prepared once); a
    name given as an int is its index in HPACK's static table."""
    if isinstance(name, int):
        return _hpack_integer(name, 4, 0) + _hpack_string(value)
    return b"\x00" + _hpack_string(name) + _hpack_string(value)
