"""Where drift records go: JSONL files, an SQLite database, and Prometheus gauges.

A sink is written to by a SinkWriter thread of its own, in batches: a failing sink is retried
with back-off and its errors counted; while it fails, records wait in a bounded buffer (the oldest
dropped and counted); it never blocks or fails the caller. At shutdown the writer flushes what is
buffered, within a deadline.
"""

import dataclasses
import json
import logging
import sqlite3
import threading
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from turnout.monitoring.records import FIELDS, LEVELS, DriftRecord

log = logging.getLogger(__name__)

BUFFER = 100_000  # records a writer holds while its sink is slow or failing
BATCH = 1_000
FIRST_RETRY_S = 0.1
LAST_RETRY_S = 10.0

SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS drift (
    time REAL NOT NULL,            -- end of the window, seconds since the epoch
    endpoint TEXT NOT NULL,
    version TEXT NOT NULL,
    feature TEXT NOT NULL,         -- e.g. INPUT0[3]; '*' for the version's overall status
    statistic TEXT NOT NULL,       -- psi, ks_pvalue, ...; 'status' for status records
    value REAL,                    -- NULL where not defined (a window of NaN values)
    status TEXT NOT NULL,          -- ok, warn or alert
    window_samples INTEGER NOT NULL,
    window_start REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS drift_by_version ON drift (endpoint, version, feature, time);
"""


class Sink(Protocol):
    """Somewhere records are kept. ``write`` may block and may raise; the writer retries."""

    name: str

    def write(self, records: Sequence[DriftRecord]) -> None:
        """Keep ``records`` (all of them, or raise)."""

    def close(self) -> None:
        """Release what the sink holds."""


class JsonlSink:
    """One JSON object per line; the file is rotated to ``PATH.1`` … ``PATH.N`` past a size."""

    name = "jsonl"

    def __init__(self, path: Path, max_bytes: int = 64 << 20, backups: int = 5) -> None:
        self.path = path
        self._max_bytes = max_bytes
        self._backups = backups
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, records: Sequence[DriftRecord]) -> None:
        """Append the records, all or none (each line whole), rotating first when the file is
        full."""
        if self.path.exists() and self.path.stat().st_size >= self._max_bytes:
            self._rotate()
        lines = "".join(
            json.dumps(dict(zip(FIELDS, record.row(), strict=True))) + "\n" for record in records
        )
        data = memoryview(lines.encode())
        with self.path.open("ab", buffering=0) as file:
            start = file.tell() if file.seekable() else None
            try:
                written = 0
                while written < len(data):
                    written += file.write(data[written:])
            except OSError:
                # A full disk may have taken part of the batch: cut it off, so that the retry
                # neither leaves half a line nor writes a record twice.
                if start is not None:
                    file.truncate(start)
                raise

    def close(self) -> None:
        """Nothing is held open between writes."""

    def _rotate(self) -> None:
        for index in range(self._backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{index + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))


class SqliteSink:
    """The table ``drift`` of an SQLite database (schema in SQLITE_SCHEMA), one transaction per
    batch."""

    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._connection: sqlite3.Connection | None = None

    def write(self, records: Sequence[DriftRecord]) -> None:
        """Insert the records in one transaction."""
        connection = self._connect()
        try:
            with connection:
                connection.executemany(
                    "INSERT INTO drift VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [record.row() for record in records],
                )
        except sqlite3.Error:
            # The next try opens the database afresh (it may have been moved or repaired).
            self.close()
            raise

    def close(self) -> None:
        """Close the database."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            # Used only from the writer's thread, which is not the one that created the sink.
            connection = sqlite3.connect(self.path, check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(SQLITE_SCHEMA)
            self._connection = connection
        return self._connection


class GaugeSink:
    """The latest value and status of every statistic, read by /metrics."""

    name = "prometheus"

    def __init__(self) -> None:
        self.values: dict[tuple[str, str, str, str], float] = {}
        self.statuses: dict[tuple[str, str, str], int] = {}
        self._lock = threading.Lock()

    def write(self, records: Sequence[DriftRecord]) -> None:
        """Keep the latest of each series."""
        with self._lock:
            for record in records:
                key = (record.endpoint, record.version, record.feature)
                if record.statistic == "status":
                    self.statuses[key] = LEVELS[record.status]
                else:
                    self.values[(*key, record.statistic)] = record.value

    def snapshot(
        self,
    ) -> tuple[dict[tuple[str, str, str, str], float], dict[tuple[str, str, str], int]]:
        """Copies of the values and statuses."""
        with self._lock:
            return dict(self.values), dict(self.statuses)

    def close(self) -> None:
        """Nothing to release."""


@dataclasses.dataclass(slots=True)
class WriterCounters:
    """What a writer has done."""

    written: int = 0
    errors: int = 0
    dropped: int = 0


class SinkWriter:
    """Feeds one sink from a thread of its own."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.counters = WriterCounters()
        self._pending: deque[DriftRecord] = deque()
        self._writing = 0  # records of the batch the sink has now
        self._condition = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"drift-{sink.name}", daemon=True)
        self._thread.start()

    def put(self, records: Sequence[DriftRecord]) -> None:
        """Hand records over (never blocks); beyond BUFFER, the oldest are dropped."""
        with self._condition:
            if self._closing and not self._thread.is_alive():
                self.counters.dropped += len(records)
                if records:
                    log.error(
                        "drift sink %s: %d records came after it closed",
                        self.sink.name,
                        len(records),
                    )
                return
            self._pending.extend(records)
            overflow = len(self._pending) - BUFFER
            for _ in range(max(overflow, 0)):
                self._pending.popleft()
            self.counters.dropped += max(overflow, 0)
            self._condition.notify()

    def start_closing(self) -> None:
        """Write what is pending without waiting between retries, then stop."""
        with self._condition:
            self._closing = True
            self._condition.notify()

    def close(self, deadline_s: float) -> bool:
        """Write what is pending, then stop; False if the sink was still failing or blocked
        when ``deadline_s`` ran out (what it held is lost, and said so in the log)."""
        self.start_closing()
        self._thread.join(deadline_s)
        if self._thread.is_alive():
            log.error(
                "drift sink %s: %d records not written by the shutdown deadline",
                self.sink.name,
                len(self._pending) + self._writing,
            )
            return False
        self.sink.close()
        return True

    def _run(self) -> None:
        delay = FIRST_RETRY_S
        while True:
            with self._condition:
                while not self._pending and not self._closing:
                    self._condition.wait()
                if not self._pending:
                    return
                batch = [self._pending.popleft() for _ in range(min(BATCH, len(self._pending)))]
                self._writing = len(batch)
            try:
                self.sink.write(batch)
            except Exception as error:
                self.counters.errors += 1
                log.warning(
                    "drift sink %s failed (%s); retrying in %.1f s", self.sink.name, error, delay
                )
                with self._condition:
                    # Back to the front, oldest first; the bound still holds.
                    self._writing = 0
                    self._pending.extendleft(reversed(batch))
                    while len(self._pending) > BUFFER:
                        self._pending.popleft()
                        self.counters.dropped += 1
                with self._condition:
                    # Woken early by close(), which retries at the shortest back-off: a sink
                    # that recovers during the shutdown still gets its records.
                    self._condition.wait(FIRST_RETRY_S if self._closing else delay)
                delay = min(delay * 2, LAST_RETRY_S)
                continue
            delay = FIRST_RETRY_S
            with self._condition:
                self._writing = 0
                self.counters.written += len(batch)
