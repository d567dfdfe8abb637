"""The result cache of one model version: opt-in, bounded in bytes with LRU eviction, entries
expiring after a TTL, keyed by a 128-bit BLAKE2b digest of everything that determines a result."""

import hashlib
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from turnout.models.accounting import CacheCounters

Outputs = dict[str, np.ndarray]
_LENGTH = struct.Struct("<Q")


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """How much a version may cache, and for how long."""

    max_bytes: int
    ttl_s: float


@dataclass(slots=True)
class _Entry:
    outputs: Outputs
    size: int
    expires: float


class ResultCache:
    """Answers identical requests from memory. Stored outputs are private read-only copies, so
    a hit returns exactly what the miss that filled it returned."""

    def __init__(self, settings: CacheSettings, identity: str, counters: CacheCounters) -> None:
        self._settings = settings
        self._identity = identity.encode()
        self._counters = counters
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()

    def key(self, inputs: dict[str, np.ndarray], outputs: tuple[str, ...]) -> bytes:
        """The digest of the model identity, the requested outputs and every input's name,
        datatype, shape and bytes. Every field is length-prefixed, so no two different
        requests feed the hash the same byte stream."""
        digest = hashlib.blake2b(digest_size=16)
        _field(digest, self._identity)
        _field(digest, "\0".join(outputs).encode())
        for name in sorted(inputs):
            array = inputs[name]
            _field(digest, name.encode())
            _field(digest, array.dtype.str.encode())
            _field(digest, repr(array.shape).encode())
            if array.dtype.kind == "O":
                for element in array.reshape(-1):
                    _field(digest, element if isinstance(element, bytes) else str(element).encode())
            else:
                _field(digest, np.ascontiguousarray(array).data)
        return digest.digest()

    def get(self, key: bytes) -> Outputs | None:
        """The cached outputs (read-only arrays in a dict of the caller's own), refreshed as most
        recently used; None when absent or expired."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= time.monotonic():
            self._remove(key)
            self._counters.evictions += 1
            return None
        self._entries.move_to_end(key)
        return dict(entry.outputs)

    def put(self, key: bytes, outputs: Outputs) -> None:
        """Keep a copy of ``outputs``, evicting the least recently used entries to fit; results
        larger than the whole budget are not kept."""
        size = sum(_size(array) for array in outputs.values()) + len(key)
        if size > self._settings.max_bytes:
            return
        if key in self._entries:
            self._remove(key)
        while self._counters.bytes + size > self._settings.max_bytes:
            oldest = next(iter(self._entries))
            self._remove(oldest)
            self._counters.evictions += 1
        copies = {}
        for name, array in outputs.items():
            copy = np.array(array, copy=True, order="C")
            copy.flags.writeable = False
            copies[name] = copy
        self._entries[key] = _Entry(copies, size, time.monotonic() + self._settings.ttl_s)
        self._counters.bytes += size
        self._counters.entries += 1

    def _remove(self, key: bytes) -> None:
        entry = self._entries.pop(key)
        self._counters.bytes -= entry.size
        self._counters.entries -= 1


def _field(digest: "hashlib.blake2b", data: bytes | memoryview) -> None:
    digest.update(_LENGTH.pack(len(data) if isinstance(data, bytes) else data.nbytes))
    digest.update(data)


def _size(array: np.ndarray) -> int:
    """Bytes an output holds, the text of BYTES elements included."""
    if array.dtype.kind != "O":
        return array.nbytes
    return array.nbytes + sum(
        len(element) if isinstance(element, bytes) else len(str(element).encode())
        for element in array.reshape(-1)
    )
