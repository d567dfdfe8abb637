"""Reading drift records back from a sink, for ``turnout drift report``."""

import glob
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from turnout.monitoring.records import FIELDS, DriftRecord

SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
SQLITE_MAGIC = b"SQLite format 3\x00"


class UnreadableSink(ValueError):
    """The sink path is not a drift JSONL file or database."""


def read_records(path: Path, endpoint: str | None = None) -> list[DriftRecord]:
    """Every record of a JSONL sink (rotated files included, oldest first) or an SQLite sink,
    in time order; only ``endpoint``'s when given."""
    if not path.exists():
        raise UnreadableSink(f"{path}: no such file")
    records = list(_sqlite(path) if _is_sqlite(path) else _jsonl(path))
    if endpoint is not None:
        records = [record for record in records if record.endpoint == endpoint]
    return sorted(records, key=lambda record: record.time)


def latest(records: list[DriftRecord]) -> dict[tuple[str, str, str], dict[str, DriftRecord]]:
    """By (endpoint, version, feature): each statistic's record from the latest window (the
    records of one window share its end time)."""
    found: dict[tuple[str, str, str], dict[str, DriftRecord]] = {}
    for record in sorted(records, key=lambda record: record.time):
        key = (record.endpoint, record.version, record.feature)
        statistics = found.get(key)
        if statistics is None or next(iter(statistics.values())).time < record.time:
            statistics = found[key] = {}
        statistics[record.statistic] = record
    return found


def _is_sqlite(path: Path) -> bool:
    """Whether ``path`` is an SQLite database (by its header, whatever its name; an empty
    file by its suffix)."""
    try:
        with path.open("rb") as file:
            header = file.read(len(SQLITE_MAGIC))
    except OSError as error:
        raise UnreadableSink(f"{path}: cannot be read ({error.strerror})") from None
    return header == SQLITE_MAGIC or (not header and path.suffix in SQLITE_SUFFIXES)


def _jsonl(path: Path) -> Iterator[DriftRecord]:
    """The records of ``PATH.N`` … ``PATH.1`` (the rotated files, oldest first), then PATH."""
    rotated = sorted(
        (
            file
            for file in path.parent.glob(f"{glob.escape(path.name)}.*")
            if file.name[len(path.name) + 1 :].isdigit()
        ),
        key=lambda file: int(file.name[len(path.name) + 1 :]),
        reverse=True,
    )
    for file in [*rotated, path]:
        try:
            with file.open("rb") as lines:
                for number, line in enumerate(lines, 1):
                    if not line.strip():
                        continue
                    try:
                        fields = json.loads(line)
                        yield DriftRecord.from_row([fields[name] for name in FIELDS])
                    except (ValueError, TypeError, KeyError) as error:
                        raise UnreadableSink(
                            f"{file}:{number}: not a drift record ({error})"
                        ) from None
        except OSError as error:
            raise UnreadableSink(f"{file}: cannot be read ({error.strerror})") from None


def _sqlite(path: Path) -> Iterator[DriftRecord]:
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            rows = connection.execute(
                "SELECT time, endpoint, version, feature, statistic, value, status, "
                "window_samples, window_start FROM drift ORDER BY time"
            ).fetchall()
        finally:
            connection.close()
    except sqlite3.Error as error:
        raise UnreadableSink(f"{path}: not a drift database ({error})") from None
    for row in rows:
        try:
            yield DriftRecord.from_row(row)
        except (ValueError, TypeError) as error:
            raise UnreadableSink(f"{path}: not a drift record ({error})") from None
