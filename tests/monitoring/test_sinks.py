"""The drift sinks (monitoring/sinks.py): JSONL files rotated by size, the SQLite table, the
Prometheus gauges, and the SinkWriter that feeds each from a thread of its own (batches, retries
with back-off, a bounded buffer, shutdown within a deadline)."""

import dataclasses
import json
import math
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.support.polling import wait_for
from turnout.monitoring import sinks
from turnout.monitoring.records import LEVELS, DriftRecord, Status
from turnout.monitoring.sinks import GaugeSink, JsonlSink, SinkWriter, SqliteSink

FIELDS = [field.name for field in dataclasses.fields(DriftRecord)]


def record(
    number: int,
    *,
    endpoint: str = "fraud",
    version: str = "1",
    feature: str = "INPUT0[0]",
    statistic: str = "psi",
    value: float | None = None,
    status: Status = "ok",
) -> DriftRecord:
    """A record told apart from the others by ``number`` (its time and window size)."""
    return DriftRecord(
        time=1_700_000_000.0 + number,
        endpoint=endpoint,
        version=version,
        feature=feature,
        statistic=statistic,
        value=float(number) / 7 if value is None else value,
        status=status,
        window_samples=number,
        window_start=1_699_999_000.0 + number,
    )


def records(first: int, count: int) -> list[DriftRecord]:
    return [record(number) for number in range(first, first + count)]


def read_jsonl(path: Path) -> list[DriftRecord]:
    return [DriftRecord(**json.loads(line)) for line in path.read_text("utf-8").splitlines()]


# -- a sink to watch the writer with -----------------------------------------------------------


class RecordingSink:
    """Keeps every batch it accepts; can be made to raise a number of times, to raise until
    released, or to block in ``write`` until released."""

    name = "recording"

    def __init__(self, failures: int = 0, fail_until_released: bool = False) -> None:
        self.batches: list[list[DriftRecord]] = []
        self.attempts = 0
        self.closed = False
        self.failures = failures
        self.fail_until_released = fail_until_released
        self.block = False
        self.released = threading.Event()
        self.entered = threading.Event()
        self._lock = threading.Lock()

    def write(self, batch: Sequence[DriftRecord]) -> None:
        with self._lock:
            self.attempts += 1
        self.entered.set()
        if self.block:
            self.released.wait()
        if self.fail_until_released and not self.released.is_set():
            raise OSError("disk full")
        if self.failures > 0:
            self.failures -= 1
            raise OSError("disk full")
        with self._lock:
            self.batches.append(list(batch))

    def close(self) -> None:
        self.closed = True

    def kept(self) -> list[DriftRecord]:
        with self._lock:
            return [kept for batch in self.batches for kept in batch]


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries after milliseconds, not seconds (set before any writer thread starts)."""
    monkeypatch.setattr(sinks, "FIRST_RETRY_S", 0.001)
    monkeypatch.setattr(sinks, "LAST_RETRY_S", 0.01)


# -- JsonlSink ---------------------------------------------------------------------------------


def test_jsonl_writes_one_whole_object_per_line_with_every_field(tmp_path: Path) -> None:
    path = tmp_path / "state" / "drift.jsonl"  # the folder does not exist yet
    sink = JsonlSink(path)
    first = [
        record(1),
        record(2, feature="*", statistic="status", value=2.0, status="alert"),
        record(3, feature="label", statistic="chi2_pvalue", value=0.5, status="warn"),
    ]
    sink.write(first)
    sink.write([record(4)])
    sink.close()

    lines = path.read_text("utf-8").splitlines()
    assert len(lines) == 4
    for line, expected in zip(lines, [*first, record(4)], strict=True):
        parsed = json.loads(line)
        assert isinstance(parsed, dict)
        assert sorted(parsed) == sorted(FIELDS)
        assert DriftRecord(**parsed) == expected
    assert path.read_text("utf-8").endswith("\n")


def test_jsonl_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "drift.jsonl"
    JsonlSink(path).write(records(0, 2))
    JsonlSink(path).write(records(2, 2))  # e.g. after a restart

    assert read_jsonl(path) == records(0, 4)


def test_jsonl_rotation_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "drift.jsonl"
    sink = JsonlSink(path, max_bytes=600, backups=100)
    written = []
    for batch in range(40):
        chunk = records(batch * 3, 3)
        sink.write(chunk)
        written.extend(chunk)

    rotated = sorted(tmp_path.glob("drift.jsonl.*"), key=lambda file: int(file.suffix[1:]))
    assert len(rotated) >= 5  # rotation did happen, several times
    kept = [kept for file in [*reversed(rotated), path] for kept in read_jsonl(file)]
    assert kept == written
    for file in rotated:
        assert file.stat().st_size >= 600  # a file is rotated only once full


def test_jsonl_rotation_keeps_at_most_backups_files(tmp_path: Path) -> None:
    path = tmp_path / "drift.jsonl"
    sink = JsonlSink(path, max_bytes=400, backups=3)
    written = []
    for batch in range(60):
        chunk = records(batch * 2, 2)
        sink.write(chunk)
        written.extend(chunk)

    names = sorted(file.name for file in tmp_path.iterdir())
    assert names == ["drift.jsonl", "drift.jsonl.1", "drift.jsonl.2", "drift.jsonl.3"]
    # What is kept is the newest records, oldest in PATH.3, with no gap and no repeat.
    kept = [kept for name in reversed(names[1:]) for kept in read_jsonl(tmp_path / name)]
    kept += read_jsonl(path)
    assert kept == written[-len(kept) :]
    assert len(kept) < len(written)


# -- SqliteSink --------------------------------------------------------------------------------

COLUMNS = [
    ("time", "REAL"),
    ("endpoint", "TEXT"),
    ("version", "TEXT"),
    ("feature", "TEXT"),
    ("statistic", "TEXT"),
    ("value", "REAL"),
    ("status", "TEXT"),
    ("window_samples", "INTEGER"),
    ("window_start", "REAL"),
]


def rows(path: Path) -> list[tuple[object, ...]]:
    """The drift table, read by a connection of the test's own."""
    connection = sqlite3.connect(path)
    try:
        return connection.execute("SELECT * FROM drift ORDER BY rowid").fetchall()
    finally:
        connection.close()


def test_sqlite_creates_the_documented_table(tmp_path: Path) -> None:
    path = tmp_path / "db" / "drift.db"
    sink = SqliteSink(path)
    written = [*records(0, 3), record(3, feature="*", statistic="status", status="alert")]
    sink.write(written)
    sink.close()

    connection = sqlite3.connect(path)
    try:
        table = connection.execute("PRAGMA table_info(drift)").fetchall()
        indexes = connection.execute("PRAGMA index_list(drift)").fetchall()
        indexed = connection.execute("PRAGMA index_info(drift_by_version)").fetchall()
    finally:
        connection.close()
    assert [(column[1], column[2]) for column in table] == COLUMNS
    # Every column NOT NULL but the value (NULL where a statistic is not defined).
    assert [column[1] for column in table if column[3] == 0] == ["value"]
    assert "drift_by_version" in [index[1] for index in indexes]
    assert [column[2] for column in indexed] == ["endpoint", "version", "feature", "time"]
    assert rows(path) == [dataclasses.astuple(kept) for kept in written]


def test_sqlite_is_readable_while_the_sink_is_open(tmp_path: Path) -> None:
    path = tmp_path / "drift.db"
    sink = SqliteSink(path)
    try:
        sink.write(records(0, 2))
        assert rows(path) == [dataclasses.astuple(kept) for kept in records(0, 2)]
        sink.write(records(2, 2))
        assert rows(path) == [dataclasses.astuple(kept) for kept in records(0, 4)]

        connection = sqlite3.connect(path)
        try:
            (mode,) = connection.execute("PRAGMA journal_mode").fetchone()
        finally:
            connection.close()
        assert mode == "wal"
    finally:
        sink.close()


def test_sqlite_writes_one_transaction_per_batch(tmp_path: Path) -> None:
    path = tmp_path / "drift.db"
    sink = SqliteSink(path)
    try:
        sink.write(records(0, 2))
        # SQLite cannot hold an integer of 2**64: the third row fails, after two were inserted.
        unstorable = dataclasses.replace(record(4), window_samples=2**64)
        with pytest.raises(OverflowError):
            sink.write([record(2), record(3), unstorable, record(5)])
        assert rows(path) == [dataclasses.astuple(kept) for kept in records(0, 2)]

        sink.write(records(2, 2))  # the sink still works after a failed batch
        assert rows(path) == [dataclasses.astuple(kept) for kept in records(0, 4)]
    finally:
        sink.close()


def test_sqlite_sink_behind_a_writer_keeps_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sinks, "BATCH", 10)
    path = tmp_path / "drift.db"
    writer = SinkWriter(SqliteSink(path))
    writer.put(records(0, 25))
    writer.put(records(25, 10))
    assert writer.close(10.0)
    assert writer.counters.written == 35
    assert rows(path) == [dataclasses.astuple(kept) for kept in records(0, 35)]


def test_a_record_with_a_non_finite_value_does_not_stall_the_sqlite_sink(tmp_path: Path) -> None:
    # The monitor can produce a non-finite statistic (the thresholds judge such values ok): the
    # Wasserstein distance of float64 features near the type's limits is NaN, for one. SQLite
    # stores NaN as NULL; the writer must not retry that batch forever while every later
    # record waits behind it.
    path = tmp_path / "drift.db"
    writer = SinkWriter(SqliteSink(path))
    try:
        writer.put([record(0, statistic="wasserstein", value=float("nan")), record(1)])
        writer.put([record(2)])

        def later_record_kept() -> bool:
            try:
                return any(row[7] == 2 for row in rows(path))
            except sqlite3.OperationalError:  # the table is not there yet
                return False

        wait_for(later_record_kept, "the records after the non-finite one", timeout_s=3.0)
    finally:
        writer.close(0.5)
    values = {row[7]: row[5] for row in rows(path)}
    assert values == {0: None, 1: pytest.approx(1 / 7), 2: pytest.approx(2 / 7)}


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_jsonl_lines_are_strict_json_even_for_a_non_finite_value(
    tmp_path: Path, value: float
) -> None:
    # NaN and Infinity are not JSON: other readers (jq, JavaScript) refuse them.
    path = tmp_path / "drift.jsonl"
    JsonlSink(path).write([record(0, value=value), record(1)])

    def refuse(constant: str) -> object:
        raise ValueError(f"{constant} is not JSON")

    lines = path.read_text("utf-8").splitlines()
    parsed = [json.loads(line, parse_constant=refuse) for line in lines]
    assert parsed[0]["value"] is None
    assert parsed[1]["value"] == pytest.approx(1 / 7)


# -- GaugeSink ---------------------------------------------------------------------------------


def test_gauges_keep_the_latest_value_of_every_series_and_the_statuses() -> None:
    sink = GaugeSink()
    sink.write(
        [
            record(1, feature="x", statistic="psi", value=0.05),
            record(1, feature="x", statistic="ks_pvalue", value=0.5),
            record(1, feature="x", statistic="status", value=0.0, status="ok"),
            record(1, feature="*", statistic="status", value=0.0, status="ok"),
            record(1, version="2", feature="x", statistic="psi", value=0.3),
            record(1, version="2", feature="x", statistic="status", value=2.0, status="alert"),
        ]
    )
    sink.write(
        [
            record(2, feature="x", statistic="psi", value=0.15),
            record(2, feature="x", statistic="status", value=1.0, status="warn"),
            record(2, feature="*", statistic="status", value=1.0, status="warn"),
        ]
    )

    values, statuses = sink.snapshot()
    assert values == {
        ("fraud", "1", "x", "psi"): 0.15,
        ("fraud", "1", "x", "ks_pvalue"): 0.5,
        ("fraud", "2", "x", "psi"): 0.3,
    }
    assert statuses == {
        ("fraud", "1", "x"): LEVELS["warn"],
        ("fraud", "1", "*"): LEVELS["warn"],
        ("fraud", "2", "x"): LEVELS["alert"],
    }

    values.clear()
    statuses.clear()
    assert len(sink.snapshot()[0]) == 3  # the snapshot was a copy
    assert len(sink.snapshot()[1]) == 3


# -- SinkWriter --------------------------------------------------------------------------------


def test_writer_writes_everything_in_order_in_batches_of_at_most_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sinks, "BATCH", 7)
    sink = RecordingSink()
    writer = SinkWriter(sink)
    writer.put(records(0, 30))
    writer.put([])
    writer.put(records(30, 1))
    writer.put(records(31, 19))

    wait_for(lambda: writer.counters.written == 50 or None, "all 50 records written")
    assert sink.kept() == records(0, 50)
    assert max(len(batch) for batch in sink.batches) <= 7
    assert writer.counters == sinks.WriterCounters(written=50, errors=0, dropped=0)
    assert writer.close(5.0)
    assert sink.closed


def test_writer_retries_a_failing_sink_until_it_takes_everything(fast_retries: None) -> None:
    sink = RecordingSink(failures=3)
    writer = SinkWriter(sink)
    writer.put(records(0, 10))
    writer.put(records(10, 10))

    wait_for(lambda: writer.counters.written == 20 or None, "all 20 records written")
    assert sink.kept() == records(0, 20)
    assert writer.counters.errors == 3
    assert writer.counters.dropped == 0
    assert sink.attempts == len(sink.batches) + 3
    assert writer.close(5.0)


def test_writer_buffer_drops_the_oldest_while_the_sink_fails(
    monkeypatch: pytest.MonkeyPatch, fast_retries: None
) -> None:
    monkeypatch.setattr(sinks, "BUFFER", 10)
    sink = RecordingSink(fail_until_released=True)
    writer = SinkWriter(sink)
    for first in range(0, 100, 10):
        writer.put(records(first, 10))
    # Two failures after the last put: the second attempt took its batch from a buffer that
    # already held the newest records.
    errors = writer.counters.errors
    wait_for(lambda: writer.counters.errors >= errors + 2 or None, "two more failed attempts")
    assert writer.counters.dropped == 90

    sink.released.set()
    wait_for(lambda: writer.counters.written == 10 or None, "the buffered records written")
    assert sink.kept() == records(90, 10)
    assert writer.close(5.0)
    assert writer.counters.dropped == 90
    assert writer.counters.written + writer.counters.dropped == 100


def test_put_never_blocks_on_a_blocked_sink_and_the_buffer_stays_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sinks, "BUFFER", 10)
    sink = RecordingSink()
    sink.block = True
    writer = SinkWriter(sink)
    try:
        writer.put([record(0)])
        assert sink.entered.wait(5.0), "the writer never called the sink"

        def put_many() -> None:
            for number in range(1, 51):
                writer.put([record(number)])

        putter = threading.Thread(target=put_many)
        putter.start()
        putter.join(5.0)
        assert not putter.is_alive(), "put() blocked behind a blocked sink"
        assert writer.counters.dropped == 40
        assert writer.counters.written == 0
    finally:
        sink.released.set()

    assert writer.close(5.0)
    assert sink.kept() == [record(0), *records(41, 10)]
    assert writer.counters.written == 11


def test_close_flushes_what_is_pending(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sinks, "BATCH", 4)
    sink = RecordingSink()
    sink.block = True
    writer = SinkWriter(sink)
    writer.put(records(0, 4))
    assert sink.entered.wait(5.0), "the writer never called the sink"
    writer.put(records(4, 9))  # pending while the sink is busy with the first batch

    release = threading.Timer(0.1, sink.released.set)
    release.start()
    try:
        assert writer.close(10.0)
    finally:
        release.cancel()
    assert sink.kept() == records(0, 13)
    assert writer.counters.written == 13
    assert sink.closed


def test_close_gives_up_at_the_deadline_on_a_blocked_sink() -> None:
    sink = RecordingSink()
    sink.block = True
    writer = SinkWriter(sink)
    writer.put(records(0, 3))
    assert sink.entered.wait(5.0), "the writer never called the sink"
    writer.put(records(3, 2))
    try:
        started = time.monotonic()
        assert writer.close(0.2) is False
        # Loose: only that close() returned instead of waiting for the sink.
        assert time.monotonic() - started < 5.0
        assert not sink.closed
    finally:
        sink.released.set()
    # Released, the writer still finishes what it held.
    wait_for(lambda: writer.counters.written == 5 or None, "the held records written")
    assert sink.kept() == records(0, 5)


def test_close_gives_up_at_the_deadline_on_a_failing_sink(fast_retries: None) -> None:
    sink = RecordingSink(fail_until_released=True)
    writer = SinkWriter(sink)
    writer.put(records(0, 3))
    try:
        assert writer.close(0.2) is False
        assert writer.counters.errors >= 1
        assert writer.counters.written == 0
    finally:
        sink.released.set()
    wait_for(lambda: writer.counters.written == 3 or None, "the held records written")


def test_close_of_an_idle_writer_returns_true() -> None:
    sink = RecordingSink()
    writer = SinkWriter(sink)
    assert writer.close(5.0)
    assert sink.closed
    assert sink.attempts == 0
