"""Reading drift records back (monitoring/report.py): from the JSONL sink with its rotated files
and from the SQLite sink, the latest window per feature, and the errors for what is not a sink."""

import dataclasses
import gzip
import json
import math
import shutil
import sqlite3
from pathlib import Path

import pytest

from turnout.monitoring.records import DriftRecord
from turnout.monitoring.report import UnreadableSink, latest, read_records
from turnout.monitoring.sinks import JsonlSink, Sink, SqliteSink


def record(
    when: float,
    *,
    endpoint: str = "fraud",
    version: str = "1",
    feature: str = "INPUT0[0]",
    statistic: str = "psi",
    value: float = 0.01,
) -> DriftRecord:
    return DriftRecord(
        time=when,
        endpoint=endpoint,
        version=version,
        feature=feature,
        statistic=statistic,
        value=value,
        status="ok",
        window_samples=100,
        window_start=when - 60.0,
    )


def a_window(when: float, endpoint: str = "fraud", version: str = "1") -> list[DriftRecord]:
    return [
        record(when, endpoint=endpoint, version=version, feature=feature, statistic=statistic)
        for feature in ("INPUT0[0]", "*")
        for statistic in (("psi", "status") if feature != "*" else ("status",))
    ]


# -- JSONL -------------------------------------------------------------------------------------


def test_reads_what_the_jsonl_sink_wrote_rotated_files_included(tmp_path: Path) -> None:
    path = tmp_path / "drift.jsonl"
    sink = JsonlSink(path, max_bytes=500, backups=50)
    written = []
    for window in range(30):
        records = a_window(1000.0 + window, endpoint=("fraud", "churn")[window % 2])
        sink.write(records)
        written.extend(records)
    assert (tmp_path / "drift.jsonl.2").exists()  # several files to read

    assert read_records(path) == written
    assert read_records(path, endpoint="churn") == [
        kept for kept in written if kept.endpoint == "churn"
    ]
    assert read_records(path, endpoint="nobody") == []


def test_rotated_files_are_read_oldest_first(tmp_path: Path) -> None:
    # Every record has the same time, so the order read is the order of the files: PATH.12
    # (the oldest) down to PATH.1, then PATH, with PATH.10 after PATH.2 and before PATH.9.
    path = tmp_path / "drift.jsonl"
    sink = JsonlSink(path, max_bytes=150, backups=20)
    written = [record(5.0, feature=f"f{number}") for number in range(13)]
    for kept in written:
        sink.write([kept])
    assert (tmp_path / "drift.jsonl.12").exists()

    assert read_records(path) == written


def test_reads_any_suffix_but_the_sqlite_ones_as_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "drift.log"
    JsonlSink(path).write(a_window(1.0))
    assert read_records(path) == a_window(1.0)


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "drift.jsonl"
    lines = [json.dumps(dataclasses.asdict(kept)) for kept in a_window(1.0)]
    path.write_text("\n" + "\n\n".join(lines) + "\n   \n", encoding="utf-8")
    assert read_records(path) == a_window(1.0)


@pytest.mark.parametrize(
    "line",
    [
        pytest.param('{"time": 3.0, "endpoint": "fra', id="half-a-line"),
        pytest.param("[1, 2, 3]", id="not-an-object"),
        pytest.param('"fraud"', id="a-string"),
        pytest.param("null", id="null"),
        pytest.param('{"time": 3.0, "endpoint": "fraud"}', id="missing-fields"),
        pytest.param(
            json.dumps({**dataclasses.asdict(record(3.0)), "status": "fine"}), id="unknown-status"
        ),
        pytest.param(
            json.dumps({**dataclasses.asdict(record(3.0)), "window_samples": "many"}),
            id="wrong-type",
        ),
        pytest.param("NOT JSON", id="text"),
    ],
)
def test_a_corrupt_line_is_an_unreadable_sink_naming_file_and_line(
    tmp_path: Path, line: str
) -> None:
    path = tmp_path / "drift.jsonl"
    JsonlSink(path).write(a_window(1.0))
    with path.open("a", encoding="utf-8") as file:
        file.write(line + "\n")

    with pytest.raises(UnreadableSink, match=r"drift\.jsonl:4: not a drift record"):
        read_records(path)


def test_a_field_added_later_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "drift.jsonl"
    line = json.dumps({**dataclasses.asdict(record(3.0)), "colour": "red"})
    path.write_text(line + "\n", encoding="utf-8")
    assert read_records(path) == [record(3.0)]


@pytest.mark.parametrize("suffix", [".jsonl", ".db"])
def test_a_non_finite_value_reads_back_as_nan(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"drift{suffix}"
    sink: Sink = JsonlSink(path) if suffix == ".jsonl" else SqliteSink(path)
    sink.write([record(1.0, statistic="wasserstein", value=math.nan), record(2.0)])
    sink.close()

    first, second = read_records(path)
    assert math.isnan(first.value)
    assert dataclasses.replace(first, value=0.0) == record(1.0, statistic="wasserstein", value=0.0)
    assert second == record(2.0)


def test_a_half_written_last_line_is_an_unreadable_sink(tmp_path: Path) -> None:
    # A writer killed in the middle of a line: no newline at the end of the file.
    path = tmp_path / "drift.jsonl"
    JsonlSink(path).write(a_window(1.0))
    whole = json.dumps(dataclasses.asdict(record(2.0)))
    with path.open("a", encoding="utf-8") as file:
        file.write(whole[: len(whole) // 2])

    with pytest.raises(UnreadableSink, match=r"drift\.jsonl:4:"):
        read_records(path)


def test_a_corrupt_rotated_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "drift.jsonl"
    JsonlSink(path).write(a_window(2.0))
    (tmp_path / "drift.jsonl.1").write_text("{oops\n", encoding="utf-8")

    with pytest.raises(UnreadableSink, match=r"drift\.jsonl\.1:1:"):
        read_records(path)


def test_a_record_with_a_wrong_type_is_an_unreadable_sink(tmp_path: Path) -> None:
    # Valid JSON with every field, but the time is text: read_records sorts by time, and must
    # say which line is wrong rather than fail comparing a string with a float.
    path = tmp_path / "drift.jsonl"
    JsonlSink(path).write(a_window(1.0))
    with path.open("a", encoding="utf-8") as file:
        file.write(json.dumps({**dataclasses.asdict(record(2.0)), "time": "soon"}) + "\n")

    with pytest.raises(UnreadableSink):
        read_records(path)


def test_bytes_that_are_not_utf8_are_an_unreadable_sink(tmp_path: Path) -> None:
    # A corrupt file (the sink itself writes ASCII only): a clear error, not a
    # UnicodeDecodeError traceback.
    path = tmp_path / "drift.jsonl"
    JsonlSink(path).write(a_window(1.0))
    with path.open("ab") as file:
        file.write(b'{"time": \xff\xfe\x00\x81}\n')

    with pytest.raises(UnreadableSink):
        read_records(path)


def test_a_database_is_known_by_its_header_whatever_its_suffix(tmp_path: Path) -> None:
    database = tmp_path / "drift.db"
    sink = SqliteSink(database)
    sink.write(a_window(1.0))
    sink.close()
    misnamed = tmp_path / "drift.out"
    shutil.copy(database, misnamed)

    assert read_records(misnamed) == read_records(database)
    assert len(read_records(misnamed)) == len(a_window(1.0))


@pytest.mark.parametrize(
    ("name", "content"),
    [
        pytest.param("drift.jsonl.bak", None, id="a-backup-copy"),
        pytest.param("drift.jsonl.1.gz", b"compressed", id="a-compressed-rotation"),
    ],
)
def test_files_that_are_not_rotations_are_not_read(
    tmp_path: Path, name: str, content: bytes | None
) -> None:
    # Rotations are PATH.1 ... PATH.N; a copy someone made next to the file (read twice
    # otherwise) or a rotated file compressed by hand (binary) is not one of them.
    path = tmp_path / "drift.jsonl"
    sink = JsonlSink(path, max_bytes=100, backups=5)
    sink.write(a_window(1.0))
    sink.write(a_window(2.0))
    assert (tmp_path / "drift.jsonl.1").exists()
    if content is None:
        shutil.copy(path, tmp_path / name)
    else:
        (tmp_path / name).write_bytes(gzip.compress(content))

    assert read_records(path) == [*a_window(1.0), *a_window(2.0)]


# -- SQLite ------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".db", ".sqlite", ".sqlite3"])
def test_reads_what_the_sqlite_sink_wrote(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"drift{suffix}"
    sink = SqliteSink(path)
    later, earlier = a_window(2.0, version="2"), a_window(1.0)
    sink.write(later)
    sink.write(earlier)
    sink.write(a_window(3.0, endpoint="churn"))
    sink.close()

    assert read_records(path) == [*earlier, *later, *a_window(3.0, endpoint="churn")]
    assert read_records(path, endpoint="churn") == a_window(3.0, endpoint="churn")


def test_reads_the_sqlite_sink_while_it_is_open(tmp_path: Path) -> None:
    path = tmp_path / "drift.db"
    sink = SqliteSink(path)
    try:
        sink.write(a_window(1.0))
        assert read_records(path) == a_window(1.0)
        sink.write(a_window(2.0))
        assert read_records(path) == [*a_window(1.0), *a_window(2.0)]
    finally:
        sink.close()


def test_reads_a_database_in_a_folder_whose_name_has_a_hash(tmp_path: Path) -> None:
    # The database is opened by URI (file:PATH?mode=ro): a '#' or '?' in the path must not
    # cut it short.
    folder = tmp_path / "run#2"
    path = folder / "drift.db"
    sink = SqliteSink(path)
    sink.write(a_window(1.0))
    sink.close()

    assert read_records(path) == a_window(1.0)
    assert sorted(file.name for file in tmp_path.iterdir()) == ["run#2"]


def test_a_missing_file_is_an_unreadable_sink_and_is_not_created(tmp_path: Path) -> None:
    for name in ("drift.jsonl", "drift.db"):
        with pytest.raises(UnreadableSink, match="no such file"):
            read_records(tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_a_db_that_is_not_a_database_is_an_unreadable_sink(tmp_path: Path) -> None:
    path = tmp_path / "drift.db"
    path.write_text("hello, this is text\n" * 100, encoding="utf-8")
    with pytest.raises(UnreadableSink, match="not a drift record"):
        read_records(path)


def test_a_database_without_the_drift_table_is_an_unreadable_sink(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    connection = sqlite3.connect(path)
    try:
        with connection:
            connection.execute("CREATE TABLE things (name TEXT)")
    finally:
        connection.close()
    with pytest.raises(UnreadableSink, match="not a drift database"):
        read_records(path)


# -- latest ------------------------------------------------------------------------------------


def test_latest_gives_each_statistic_of_the_latest_window_per_feature() -> None:
    records = [
        *a_window(3.0),
        record(1.0, value=0.5),
        record(1.0, statistic="ks_pvalue", value=0.5),
        record(2.0, version="2", value=0.2),
        record(2.0, version="2", feature="label", statistic="chi2_pvalue", value=0.9),
        record(1.0, endpoint="churn", value=0.3),
        record(4.0, endpoint="churn", value=0.4),
    ]
    found = latest(records)

    assert set(found) == {
        ("fraud", "1", "INPUT0[0]"),
        ("fraud", "1", "*"),
        ("fraud", "2", "INPUT0[0]"),
        ("fraud", "2", "label"),
        ("churn", "1", "INPUT0[0]"),
    }
    newest = found[("fraud", "1", "INPUT0[0]")]
    # The window at 3.0 had psi and status, not ks_pvalue: the older window's is not mixed in.
    assert set(newest) == {"psi", "status"}
    assert {kept.time for kept in newest.values()} == {3.0}
    assert found[("fraud", "1", "*")]["status"].time == 3.0
    assert found[("fraud", "2", "INPUT0[0]")]["psi"].value == 0.2
    assert found[("fraud", "2", "label")]["chi2_pvalue"].value == 0.9
    assert found[("churn", "1", "INPUT0[0]")]["psi"].value == 0.4
    assert latest([]) == {}


def test_latest_of_records_read_back(tmp_path: Path) -> None:
    path = tmp_path / "drift.jsonl"
    sink = JsonlSink(path)
    for when in (1.0, 2.0, 3.0):
        sink.write([record(when, value=when / 10), record(when, statistic="status", value=0.0)])

    found = latest(read_records(path))
    assert found == {
        ("fraud", "1", "INPUT0[0]"): {
            "psi": record(3.0, value=0.3),
            "status": record(3.0, statistic="status", value=0.0),
        }
    }
