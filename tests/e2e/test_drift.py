"""Drift monitoring end to end: real servers with monitored models, real tritonclient traffic over
HTTP and gRPC, and the records read back from the JSONL file, the SQLite table ``drift``,
``/metrics`` and ``turnout drift report``.

- Shifted traffic alerts; traffic drawn from the reference stays ok (one module-scoped server,
  whose sinks the report tests read too); a per-second cap below one still samples.
- ``turnout drift report`` reads both sinks, filters, plots, and fails cleanly.
- A sink that fails or blocks never touches the requests, and shutdown still ends, saying what
  it could not write; windows close on time as well as on size; the JSONL file rotates.
- Without a usable reference file, one is captured from traffic (strings, no batch dimension).
- SIGTERM in the middle of load loses no sampled row.
- Repository mode turns monitoring on for a model with a ``reference.npz``, and only for it, also
  for a version loaded at run time; an unloaded version leaves no drift series.
"""

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.support.e2e import run_onnx, scrape, write_config
from tests.support.onnx_models import echo_strings, fixed_shape, write_model
from tests.support.polling import wait_for
from tests.support.prometheus import Scrape
from tests.support.routing import Admin, admin_env
from tests.support.server import TurnoutProcess
from turnout.server.cli import main
from turnout.server.demo import build_mlp, reference_inputs

# The drifting and steady endpoints' traffic: each client thread sends REQUESTS requests of
# ROWS_PER_REQUEST rows to each endpoint; windows close every WINDOW rows (never on time).
CLIENTS = ("http", "grpc", "http", "grpc")
REQUESTS = 50
ROWS_PER_REQUEST = 4
WINDOW = 200
ROWS = len(CLIENTS) * REQUESTS * ROWS_PER_REQUEST
WINDOWS = ROWS // WINDOW
SHIFT = 3.0
HOUR_S = 3600.0
# Thresholds loose enough that a window of 200 rows taken from the reference never warns by
# chance (a numeric feature's PSI over 10 bins of 200 values is about 0.05 +- 0.02, and there are
# 75 features), and still far below what a shift of three units gives (a PSI of several,
# p-values of zero).
THRESHOLDS = {
    "psi": {"warn": 0.5, "alert": 1.0},
    "ks_pvalue": {"alert": 1e-6},
    "chi2_pvalue": {"alert": 1e-6},
}
FEATURES = {*(f"INPUT0[{i}]" for i in range(64)), *(f"OUTPUT0[{i}]" for i in range(10)), "LABEL"}
OVERALL = "*"
DEADLINE_S = 30.0
CLIENT_TIMEOUT_S = 30.0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The monitoring defaults that apply when only a reference is given (repository mode).
DEFAULT_WINDOW = 1000
DEFAULT_MAX_SAMPLES_PER_S = 100
UNWRITTEN = re.compile(r"drift sink (\w+): (\d+) records not written by the shutdown deadline")


# --- helpers --------------------------------------------------------------------------------------


def _reference() -> np.ndarray:
    return reference_inputs(seed=7)


def _write_model_and_reference(directory: Path) -> tuple[Path, Path]:
    """The demo classifier and its reference rows, in ``directory``."""
    model = write_model(build_mlp(seed=1), directory / "model.onnx")
    reference = directory / "reference.npz"
    np.savez(reference, INPUT0=_reference())
    return model, reference


def _monitoring(**overrides: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "sample_rate": 1.0,
        "max_samples_per_s": 100_000,
        "reference": "reference.npz",
        "window": {"samples": WINDOW, "seconds": HOUR_S},
    }
    return {**settings, **overrides}


class Client:
    """One of Triton's clients (its own connection), for one thread."""

    def __init__(self, protocol: str, server: TurnoutProcess) -> None:
        self.protocol = protocol
        self._http = (
            httpclient.InferenceServerClient(server.http_url, network_timeout=CLIENT_TIMEOUT_S)
            if protocol == "http"
            else None
        )
        self._grpc = (
            grpcclient.InferenceServerClient(server.grpc_url) if protocol == "grpc" else None
        )

    def infer(self, endpoint: str, rows: np.ndarray, version: str = "") -> dict[str, np.ndarray]:
        """OUTPUT0 and LABEL of ``rows``; raises what the client raises when it fails."""
        if self._http is not None:
            tensor = httpclient.InferInput("INPUT0", list(rows.shape), "FP32")
            tensor.set_data_from_numpy(rows, binary_data=True)
            result = self._http.infer(endpoint, [tensor], model_version=version)
        else:
            assert self._grpc is not None
            tensor = grpcclient.InferInput("INPUT0", list(rows.shape), "FP32")
            tensor.set_data_from_numpy(rows)
            result = self._grpc.infer(
                endpoint, [tensor], model_version=version, client_timeout=CLIENT_TIMEOUT_S
            )
        return {name: result.as_numpy(name) for name in ("OUTPUT0", "LABEL")}

    def close(self) -> None:
        """Close the connection."""
        for client in (self._http, self._grpc):
            if client is not None:
                client.close()


def _assert_answer(answer: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    np.testing.assert_allclose(answer["OUTPUT0"], expected["OUTPUT0"], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(answer["LABEL"], expected["LABEL"])


def _jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL sink (complete lines only: the writer may be mid-batch; none
    while the file is absent, which it is between a rotation and the next write)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def _sqlite(path: Path) -> list[dict[str, Any]]:
    """The rows of the table ``drift`` (none while the table does not exist yet)."""
    if not path.is_file():
        return []
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    connection.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in connection.execute("SELECT * FROM drift ORDER BY time")]
    except sqlite3.OperationalError as error:
        if "no such table" in str(error):
            return []
        raise
    finally:
        connection.close()


def _overall(records: list[dict[str, Any]], endpoint: str) -> list[dict[str, Any]]:
    """The overall status records (one per window) of ``endpoint``."""
    return [
        record
        for record in records
        if record["endpoint"] == endpoint
        and record["feature"] == OVERALL
        and record["statistic"] == "status"
    ]


def _key(record: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(record[name] for name in sorted(record))


def _drift_samples(scraped: Scrape, **labels: str) -> list[str]:
    """The lines of every ``turnout_drift_*`` sample whose labels include ``labels``."""
    return [
        f"{sample.name}{dict(sample.labels)}"
        for sample in scraped.samples
        if sample.name.startswith("turnout_drift")
        and all(sample.labels.get(key) == value for key, value in labels.items())
    ]


def _report(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "turnout", "drift", "report", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _table(stdout: str) -> dict[tuple[str, str, str], tuple[str, int]]:
    """The report's rows: (endpoint, version, feature) to (status, window samples)."""
    lines = stdout.splitlines()
    assert lines[0].split()[:5] == ["endpoint", "version", "feature", "status", "window"], stdout
    rows = {}
    for line in lines[1:]:
        if not line.strip():
            break  # the plot's note follows a blank line
        endpoint, version, feature, status, window, *_ = line.split()
        rows[(endpoint, version, feature)] = (status, int(window))
    return rows


def _latest_statuses(records: list[dict[str, Any]]) -> dict[tuple[str, str, str], tuple[str, int]]:
    """What the report must say: each feature's status in its latest window."""
    latest: dict[tuple[str, str, str], dict[str, Any]] = {}
    for record in records:
        if record["statistic"] != "status":
            continue
        key = (record["endpoint"], record["version"], record["feature"])
        if key not in latest or latest[key]["time"] <= record["time"]:
            latest[key] = record
    return {key: (record["status"], record["window_samples"]) for key, record in latest.items()}


def _stop_and_read_log(process: TurnoutProcess, timeout_s: float = DEADLINE_S) -> tuple[int, str]:
    status = process.stop(timeout_s=timeout_s)
    return status, process.logs()


# --- shifted and steady traffic on one server -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Drifted:
    """The server that took the drifting and steady traffic, and its sinks."""

    server: TurnoutProcess
    jsonl: Path
    db: Path
    workdir: Path


def _drive(server: TurnoutProcess, model: Path) -> None:
    """Every client thread sends its share of the rows, shifted to ``drifting`` and as they are
    to ``steady``, and checks each answer against ONNX Runtime."""
    rows = _reference()[:ROWS]
    shifted = rows + np.float32(SHIFT)
    expected = {
        "steady": run_onnx(model, {"INPUT0": rows}),
        "drifting": run_onnx(model, {"INPUT0": shifted}),
    }
    sent = {"steady": rows, "drifting": shifted}

    def work(index: int) -> int:
        client = Client(CLIENTS[index], server)
        answered = 0
        try:
            for request in range(REQUESTS):
                start = (index * REQUESTS + request) * ROWS_PER_REQUEST
                part = slice(start, start + ROWS_PER_REQUEST)
                for endpoint in ("drifting", "steady"):
                    answer = client.infer(endpoint, sent[endpoint][part])
                    _assert_answer(answer, {k: v[part] for k, v in expected[endpoint].items()})
                    answered += 1
        finally:
            client.close()
        return answered

    with ThreadPoolExecutor(len(CLIENTS)) as pool:
        answered = list(pool.map(work, range(len(CLIENTS))))
    assert answered == [2 * REQUESTS] * len(CLIENTS)


@pytest.fixture(scope="module")
def drifted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drifted]:
    """A server with two monitored endpoints of one classifier, ``drifting`` (sent reference
    rows shifted by SHIFT) and ``steady`` (sent reference rows), after all their windows have
    reached every sink. Sink paths are relative to the config file."""
    workdir = tmp_path_factory.mktemp("drifted")
    model, _ = _write_model_and_reference(workdir)
    monitoring = _monitoring(thresholds=THRESHOLDS)
    config = write_config(
        workdir / "turnout.yaml",
        {
            "server": {"drain_timeout_s": 5},
            "models": [
                *(
                    {"name": name, "version": 1, "path": "model.onnx", "monitoring": monitoring}
                    for name in ("drifting", "steady")
                ),
                {
                    "name": "sparse",
                    "version": 1,
                    "path": "model.onnx",
                    "monitoring": _monitoring(max_samples_per_s=SPARSE_PER_S),
                },
            ],
            "monitoring": {
                "jsonl": {"path": "sinks/drift.jsonl"},
                "sqlite": {"path": "sinks/drift.db"},
            },
        },
    )
    jsonl, db = workdir / "sinks" / "drift.jsonl", workdir / "sinks" / "drift.db"
    with TurnoutProcess(["--config", str(config)], workdir / "process") as server:
        _drive(server, model)

        def complete() -> bool:
            scraped = scrape(server)
            return all(
                len(_overall(_jsonl(jsonl), name)) == WINDOWS
                and len(_overall(_sqlite(db), name)) == WINDOWS
                and scraped.value("turnout_drift_windows_total", endpoint=name, version="1")
                == WINDOWS
                for name in ("drifting", "steady")
            )

        wait_for(complete, "every window in every sink", DEADLINE_S)
        yield Drifted(server, jsonl, db, workdir)
        status, logs = _stop_and_read_log(server)
        assert status == 0, logs
        assert "Traceback" not in logs, logs
        assert "not written" not in logs, logs


def test_shifted_inputs_alert_in_the_jsonl_file(drifted: Drifted) -> None:
    records = _jsonl(drifted.jsonl)

    overall = _overall(records, "drifting")
    assert [record["status"] for record in overall] == ["alert"] * WINDOWS
    assert [record["window_samples"] for record in overall] == [WINDOW] * WINDOWS
    assert all(record["version"] == "1" for record in overall)
    alerted = {
        record["feature"]
        for record in records
        if record["endpoint"] == "drifting" and record["status"] == "alert"
    }
    # every input feature moved by three units: each of them alerts
    assert {f"INPUT0[{i}]" for i in range(64)} <= alerted
    psi = [
        record["value"]
        for record in records
        if record["endpoint"] == "drifting"
        and record["feature"] == "INPUT0[3]"
        and record["statistic"] == "psi"
    ]
    assert len(psi) == WINDOWS
    assert min(psi) > THRESHOLDS["psi"]["alert"]


def test_shifted_inputs_alert_in_the_sqlite_table(drifted: Drifted) -> None:
    connection = sqlite3.connect(f"file:{drifted.db}?mode=ro", uri=True)
    try:
        overall = connection.execute(
            "SELECT status, window_samples FROM drift "
            "WHERE endpoint = 'drifting' AND feature = '*' AND statistic = 'status'"
        ).fetchall()
        alerted = {
            feature
            for (feature,) in connection.execute(
                "SELECT DISTINCT feature FROM drift "
                "WHERE endpoint = 'drifting' AND version = '1' AND status = 'alert'"
            )
        }
        features = {
            feature
            for (feature,) in connection.execute(
                "SELECT DISTINCT feature FROM drift WHERE endpoint = 'drifting'"
            )
        }
    finally:
        connection.close()

    assert overall == [("alert", WINDOW)] * WINDOWS
    assert "INPUT0[3]" in alerted
    assert OVERALL in alerted
    assert features == {*FEATURES, OVERALL}


def test_reference_inputs_stay_ok(drifted: Drifted) -> None:
    records = _jsonl(drifted.jsonl)

    overall = _overall(records, "steady")
    assert [record["status"] for record in overall] == ["ok"] * WINDOWS
    assert [record["window_samples"] for record in overall] == [WINDOW] * WINDOWS
    steady = [record for record in records if record["endpoint"] == "steady"]
    assert {record["feature"] for record in steady} == {*FEATURES, OVERALL}
    assert {record["status"] for record in steady} == {"ok"}


def test_jsonl_and_sqlite_hold_the_same_records(drifted: Drifted) -> None:
    from_jsonl = sorted(_key(record) for record in _jsonl(drifted.jsonl))
    from_sqlite = sorted(_key(record) for record in _sqlite(drifted.db))

    assert from_jsonl == from_sqlite
    # one record per statistic of every feature, and the overall status, in every window
    assert len(from_jsonl) > 2 * WINDOWS * len(FEATURES)


def test_metrics_expose_drift_statistics_and_status(drifted: Drifted) -> None:
    scraped = scrape(drifted.server)

    for endpoint in ("drifting", "steady"):
        version = {"endpoint": endpoint, "version": "1"}
        assert scraped.value("turnout_drift_samples_total", **version) == len(CLIENTS) * REQUESTS
        assert scraped.value("turnout_drift_windows_total", **version) == WINDOWS
        assert (
            scraped.value("turnout_drift_samples_skipped_total", **version, reason="rate_cap") == 0
        )
        features = {
            sample.labels["feature"] for sample in scraped.find("turnout_drift_value", **version)
        }
        assert features == FEATURES
        statistics = {
            sample.labels["statistic"]
            for sample in scraped.find("turnout_drift_value", **version, feature="INPUT0[3]")
        }
        assert {"psi", "ks_statistic", "ks_pvalue", "js_distance", "wasserstein"} <= statistics
        assert {"chi2_pvalue", "psi"} <= {
            sample.labels["statistic"]
            for sample in scraped.find("turnout_drift_value", **version, feature="LABEL")
        }
    drifting = {"endpoint": "drifting", "version": "1"}
    assert scraped.value("turnout_drift_status", **drifting, feature=OVERALL) == 2
    assert scraped.value("turnout_drift_status", **drifting, feature="INPUT0[3]") == 2
    assert (
        scraped.value("turnout_drift_value", **drifting, feature="INPUT0[3]", statistic="psi")
        > THRESHOLDS["psi"]["alert"]
    )
    assert (
        scraped.value("turnout_drift_value", **drifting, feature="INPUT0[3]", statistic="ks_pvalue")
        < THRESHOLDS["ks_pvalue"]["alert"]
    )
    steady = {"endpoint": "steady", "version": "1"}
    assert scraped.value("turnout_drift_status", **steady, feature=OVERALL) == 0
    assert {sample.value for sample in scraped.find("turnout_drift_status", **steady)} == {0.0}
    for sink in ("jsonl", "sqlite", "prometheus"):
        assert scraped.value("turnout_drift_sink_errors_total", sink=sink) == 0
        assert scraped.value("turnout_drift_records_dropped_total", sink=sink) == 0


SPARSE_PER_S = 0.5  # one sampled request every two seconds
SPARSE_REQUESTS = 30
SPARSE_GAP_S = 0.1


def test_a_cap_below_one_sample_per_second_still_samples(drifted: Drifted) -> None:
    """``max_samples_per_s: 0.5`` (the config takes any cap above 0) samples a request every two
    seconds, the first at once; requests are sent for three seconds at most."""
    client = Client("http", drifted.server)
    sparse = {"endpoint": "sparse", "version": "1"}
    rows = _reference()[:ROWS_PER_REQUEST]
    sampled = 0.0
    try:
        for _ in range(SPARSE_REQUESTS):
            client.infer("sparse", rows)
            sampled = scrape(drifted.server).value("turnout_drift_samples_total", **sparse)
            if sampled:
                break
            time.sleep(SPARSE_GAP_S)
    finally:
        client.close()

    skipped = scrape(drifted.server).value(
        "turnout_drift_samples_skipped_total", **sparse, reason="rate_cap"
    )
    assert sampled >= 1, f"no request sampled; {skipped:.0f} skipped over the cap"


# --- turnout drift report, on the sinks of the server above ---------------------------------------


@pytest.mark.parametrize("sink", ["jsonl", "db"])
def test_report_lists_the_latest_status_of_every_feature(drifted: Drifted, sink: str) -> None:
    path = drifted.jsonl if sink == "jsonl" else drifted.db

    done = _report("--sink", str(path))

    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    table = _table(done.stdout)
    assert table == _latest_statuses(_jsonl(drifted.jsonl))
    assert table[("drifting", "1", OVERALL)] == ("alert", WINDOW)
    assert table[("drifting", "1", "INPUT0[3]")] == ("alert", WINDOW)
    assert table[("steady", "1", OVERALL)] == ("ok", WINDOW)
    assert {key[2] for key in table} == {*FEATURES, OVERALL}


def test_report_filters_by_endpoint(drifted: Drifted) -> None:
    done = _report("--sink", str(drifted.db), "--endpoint", "steady")

    assert done.returncode == 0, done.stderr
    table = _table(done.stdout)
    assert {key[0] for key in table} == {"steady"}
    assert {status for status, _ in table.values()} == {"ok"}
    assert len(table) == len(FEATURES) + 1


def test_report_of_an_endpoint_without_records(drifted: Drifted) -> None:
    done = _report("--sink", str(drifted.jsonl), "--endpoint", "nobody")

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "no drift records yet"


def test_report_plots_the_history(drifted: Drifted, tmp_path: Path) -> None:
    plot = tmp_path / "drift.png"

    done = _report("--sink", str(drifted.jsonl), "--endpoint", "drifting", "--plot", str(plot))

    assert done.returncode == 0, done.stderr
    assert f"plot written to {plot}" in done.stdout
    assert plot.read_bytes()[:8] == PNG_SIGNATURE
    assert plot.stat().st_size > 1000


def test_report_plot_into_a_missing_folder_fails_cleanly(drifted: Drifted, tmp_path: Path) -> None:
    plot = tmp_path / "absent" / "drift.png"

    done = _report("--sink", str(drifted.db), "--endpoint", "steady", "--plot", str(plot))

    assert done.returncode != 0, done
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("turnout drift: "), done.stderr
    assert not plot.exists()


def _directory(tmp_path: Path) -> Path:
    path = tmp_path / "sinks.jsonl"
    path.mkdir()
    return path


def _text(name: str, content: bytes) -> Callable[[Path], Path]:
    def write(tmp_path: Path) -> Path:
        path = tmp_path / name
        path.write_bytes(content)
        return path

    return write


def _database_without_drift(tmp_path: Path) -> Path:
    path = tmp_path / "other.db"
    connection = sqlite3.connect(path)
    with connection:
        connection.execute("CREATE TABLE other (x INTEGER)")
    connection.close()
    return path


def test_report_of_a_missing_sink_fails_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "absent.jsonl"

    done = _report("--sink", str(path))

    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr == f"turnout drift: {path}: no such file\n"
    assert done.stdout == ""


# The other unreadable sinks run the same command line in this process (a subprocess each would
# cost a second): a traceback there is an exception escaping main().
UNREADABLE_SINKS = [
    pytest.param(lambda tmp_path: tmp_path / "absent.db", "no such file", id="missing-db"),
    pytest.param(_directory, "", id="directory"),
    pytest.param(_text("notes.jsonl", b"hello\n"), "not a drift record", id="not-json"),
    pytest.param(_text("list.jsonl", b"[1, 2]\n"), "not a drift record", id="json-not-a-record"),
    pytest.param(_text("binary.jsonl", b"\xff\xfe\x00garbage\n"), "", id="not-utf8"),
    pytest.param(_text("garbage.db", b"not sqlite at all" * 100), "not a drift", id="db-garbage"),
    pytest.param(_database_without_drift, "not a drift database", id="db-without-table"),
]


@pytest.mark.parametrize(("make", "expected"), UNREADABLE_SINKS)
def test_report_of_an_unreadable_sink_fails_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: Callable[[Path], Path], expected: str
) -> None:
    path = make(tmp_path)

    status = main(["drift", "report", "--sink", str(path)])

    assert status != 0
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"turnout drift: {path}"), err
    assert expected in lines[0], err


# --- sinks that fail or block -------------------------------------------------------------------

FEW_WINDOW = 20  # the smallest windows the config allows are 10 rows
FEW_REQUESTS = 10


def _serve_small_windows(
    workdir: Path,
    sinks: dict[str, Any],
    drain_timeout_s: float,
    windows: dict[str, dict[str, float]] | None = None,
) -> tuple[TurnoutProcess, Path]:
    """A server of the classifier as ``mlp`` (windows of FEW_WINDOW rows), or as each endpoint
    of ``windows`` with its window settings."""
    model, _ = _write_model_and_reference(workdir)
    windows = windows or {"mlp": {"samples": FEW_WINDOW, "seconds": HOUR_S}}
    config = write_config(
        workdir / "turnout.yaml",
        {
            "server": {"drain_timeout_s": drain_timeout_s},
            "models": [
                {
                    "name": name,
                    "version": 1,
                    "path": "model.onnx",
                    "monitoring": _monitoring(window=window),
                }
                for name, window in windows.items()
            ],
            "monitoring": sinks,
        },
    )
    return TurnoutProcess(["--config", str(config)], workdir / "process"), model


def _send_rounds(server: TurnoutProcess, model: Path, first: int, endpoint: str = "mlp") -> int:
    """FEW_REQUESTS requests of ROWS_PER_REQUEST reference rows, over HTTP and gRPC by turns,
    each answered with ONNX Runtime's outputs; the rows sent."""
    rows = _reference()
    clients = [Client("http", server), Client("grpc", server)]
    try:
        for request in range(FEW_REQUESTS):
            start = (first + request) * ROWS_PER_REQUEST
            part = rows[start : start + ROWS_PER_REQUEST]
            answer = clients[request % 2].infer(endpoint, part)
            _assert_answer(answer, run_onnx(model, {"INPUT0": part}))
    finally:
        for client in clients:
            client.close()
    return FEW_REQUESTS * ROWS_PER_REQUEST


def _jsonl_rotated(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL sink and of its rotated files ``PATH.1`` … ``PATH.N``."""
    rotated = sorted(path.parent.glob(f"{path.name}.*"), key=lambda file: int(file.suffix[1:]))
    return [record for file in [*reversed(rotated), path] for record in _jsonl(file)]


def _rows_in(records: list[dict[str, Any]], endpoint: str) -> int:
    return sum(record["window_samples"] for record in _overall(records, endpoint))


def test_a_failing_sink_leaves_the_server_serving(tmp_path: Path) -> None:
    """SQLite fails on every write; the JSONL sink (rotated past 4 KiB, so about every batch)
    still gets every window, of ``mlp`` (closed by size) and of ``timed`` (closed by time)."""
    not_a_database = tmp_path / "drift.db"
    not_a_database.mkdir()  # SQLite cannot open a directory: every write fails
    jsonl = tmp_path / "drift.jsonl"
    server, model = _serve_small_windows(
        tmp_path,
        {
            "jsonl": {"path": str(jsonl), "max_bytes": 4096, "backups": 100},
            "sqlite": {"path": str(not_a_database)},
        },
        2,
        {
            "mlp": {"samples": FEW_WINDOW, "seconds": HOUR_S},
            "timed": {"samples": 1_000_000, "seconds": 0.5},
        },
    )
    with server:
        rows = _send_rounds(server, model, first=0)
        wait_for(
            lambda: _rows_in(_jsonl_rotated(jsonl), "mlp") == rows,
            "the JSONL sink's records",
            DEADLINE_S,
        )

        def sqlite_errors() -> float:
            return scrape(server).value("turnout_drift_sink_errors_total", sink="sqlite")

        first = wait_for(lambda: sqlite_errors() or None, "an SQLite sink error", DEADLINE_S)
        wait_for(lambda: sqlite_errors() > first, "the SQLite sink retrying", DEADLINE_S)

        rows += _send_rounds(server, model, first=FEW_REQUESTS)
        timed = _send_rounds(server, model, first=0, endpoint="timed")
        wait_for(
            lambda: (
                _rows_in(_jsonl_rotated(jsonl), "mlp") == rows
                and _rows_in(_jsonl_rotated(jsonl), "timed") == timed
            ),
            "the JSONL sink's later records, and the timed windows",
            DEADLINE_S,
        )
        assert server.get("/v2/health/live")[0] == 200
        assert server.get("/v2/health/ready")[0] == 200
        scraped = scrape(server)
        assert scraped.value("turnout_drift_sink_errors_total", sink="jsonl") == 0
        assert scraped.value("turnout_drift_records_dropped_total", sink="sqlite") == 0
        assert scraped.value("turnout_drift_windows_total", endpoint="mlp", version="1") == (
            rows // FEW_WINDOW
        )
        assert not_a_database.is_dir()
        assert list(tmp_path.glob("drift.jsonl.*")), "the JSONL file was never rotated"

        status, logs = _stop_and_read_log(server)

    assert status == 0, logs
    assert "drift sink sqlite failed" in logs
    assert "Traceback" not in logs, logs
    unwritten = dict(UNWRITTEN.findall(logs))
    assert set(unwritten) == {"sqlite"}, logs
    records = _jsonl_rotated(jsonl)
    assert _rows_in(records, "mlp") == rows
    assert _rows_in(records, "timed") == timed
    # nothing written twice, across the rotated files
    assert len({_key(record) for record in records}) == len(records)


def test_a_blocked_sink_leaves_the_server_serving_and_stopping(tmp_path: Path) -> None:
    fifo = tmp_path / "drift.jsonl"
    os.mkfifo(fifo)  # nobody reads it: opening it to append blocks for ever
    db = tmp_path / "drift.db"
    server, model = _serve_small_windows(
        tmp_path, {"jsonl": {"path": str(fifo)}, "sqlite": {"path": str(db)}}, 3
    )
    with server:
        rows = _send_rounds(server, model, first=0)
        rows += _send_rounds(server, model, first=FEW_REQUESTS)
        wait_for(
            lambda: len(_overall(_sqlite(db), "mlp")) == rows // FEW_WINDOW,
            "the SQLite sink's records",
            DEADLINE_S,
        )
        assert server.get("/v2/health/live")[0] == 200
        scraped = scrape(server)
        assert scraped.value("turnout_drift_sink_errors_total", sink="jsonl") == 0
        assert scraped.value("turnout_drift_windows_total", endpoint="mlp", version="1") == (
            rows // FEW_WINDOW
        )

        status, logs = _stop_and_read_log(server)

    assert status == 0, logs
    assert "stopped" in logs
    assert "Traceback" not in logs, logs
    unwritten = {sink: int(count) for sink, count in UNWRITTEN.findall(logs)}
    assert set(unwritten) == {"jsonl"}, logs
    assert len(_overall(_sqlite(db), "mlp")) == rows // FEW_WINDOW


def test_the_unwritten_count_includes_the_batch_stuck_in_the_sink(tmp_path: Path) -> None:
    """Every record the blocked JSONL sink was handed is lost at shutdown, and the log line says
    how many: all of them (the SQLite sink got the same records)."""
    fifo = tmp_path / "drift.jsonl"
    os.mkfifo(fifo)
    db = tmp_path / "drift.db"
    server, model = _serve_small_windows(
        tmp_path, {"jsonl": {"path": str(fifo)}, "sqlite": {"path": str(db)}}, 3
    )
    with server:
        rows = _send_rounds(server, model, first=0)
        wait_for(
            lambda: len(_overall(_sqlite(db), "mlp")) == rows // FEW_WINDOW,
            "the SQLite sink's records",
            DEADLINE_S,
        )
        status, logs = _stop_and_read_log(server)

    assert status == 0, logs
    unwritten = {sink: int(count) for sink, count in UNWRITTEN.findall(logs)}
    assert unwritten == {"jsonl": len(_sqlite(db))}, logs


CAPTURE = 10  # live rows that become the reference; as many make a window


def test_references_are_captured_from_traffic(tmp_path: Path) -> None:
    """Without a usable reference file the first CAPTURE live rows become the reference: for a
    STRING model (categorical features), a model without a batch dimension (one row a request,
    the mean over the last axis per feature), and a model whose .npz lacks its input (logged)."""
    strings = write_model(echo_strings(), tmp_path / "strings.onnx")
    fixed = write_model(fixed_shape(), tmp_path / "fixed.onnx")
    write_model(build_mlp(seed=1), tmp_path / "mlp.onnx")
    np.savez(tmp_path / "wrong.npz", OTHER=_reference())
    monitoring = {"capture_reference": CAPTURE, "window": {"samples": CAPTURE, "seconds": HOUR_S}}
    config = write_config(
        tmp_path / "turnout.yaml",
        {
            "models": [
                {"name": "strings", "version": 1, "path": str(strings), "monitoring": monitoring},
                {"name": "fixed", "version": 1, "path": str(fixed), "monitoring": monitoring},
                {
                    "name": "badref",
                    "version": 1,
                    "path": "mlp.onnx",
                    "monitoring": {**monitoring, "reference": "wrong.npz"},
                },
            ]
        },
    )
    jsonl = tmp_path / "process" / "state" / "drift.jsonl"
    words = np.array([b"alpha", b"beta", b"gamma", b"delta"], dtype=np.object_)
    with TurnoutProcess(["--config", str(config)], tmp_path / "process") as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        mlp = Client("http", server)
        try:
            for request in range(2 * CAPTURE):
                text = grpcclient.InferInput("TEXT", [2], "BYTES")
                text.set_data_from_numpy(words[[request % 4, (request + 1) % 4]])
                client.infer("strings", [text], client_timeout=CLIENT_TIMEOUT_S)
                x = grpcclient.InferInput("X", [2, 3], "FP32")
                x.set_data_from_numpy(np.full((2, 3), request % 5, dtype=np.float32))
                client.infer("fixed", [x], client_timeout=CLIENT_TIMEOUT_S)
                mlp.infer("badref", _reference()[request : request + 1])
        finally:
            client.close()
            mlp.close()

        def windows() -> dict[str, list[dict[str, Any]]] | None:
            records = _jsonl(jsonl)
            found = {name: _overall(records, name) for name in ("strings", "fixed", "badref")}
            return found if all(found.values()) else None

        overall = wait_for(windows, "a window of every model", DEADLINE_S)
        records = _jsonl(jsonl)
        status, logs = _stop_and_read_log(server)

    assert status == 0, logs
    assert "Traceback" not in logs, logs
    assert "drift reference of 'badref' version 1 not used" in logs
    # two rows a request of strings; one row a request of fixed and badref
    assert overall["strings"][0]["window_samples"] == CAPTURE
    assert overall["fixed"][0]["window_samples"] == CAPTURE
    assert overall["badref"][0]["window_samples"] == CAPTURE

    def statistics(endpoint: str, feature: str) -> set[str]:
        return {
            r["statistic"]
            for r in records
            if r["endpoint"] == endpoint and r["feature"] == feature and r["statistic"] != "status"
        }

    assert {r["feature"] for r in records if r["endpoint"] == "strings"} == {"TEXT", "ECHO", "*"}
    assert {"chi2_pvalue", "psi"} <= statistics("strings", "TEXT")
    assert "ks_pvalue" not in statistics("strings", "TEXT")
    assert {r["feature"] for r in records if r["endpoint"] == "fixed"} == {
        "X[0]",
        "X[1]",
        "Y[0]",
        "Y[1]",
        "*",
    }
    assert {"ks_pvalue", "psi", "wasserstein"} <= statistics("fixed", "X[0]")
    assert {r["feature"] for r in records if r["endpoint"] == "badref"} == {*FEATURES, OVERALL}


# --- SIGTERM in the middle of sampling ------------------------------------------------------------

STOP_AFTER = 100  # answered requests before SIGTERM
PER_CLIENT = 150  # the most requests a client thread sends


def test_sigterm_during_sampling_loses_no_accepted_record(tmp_path: Path) -> None:
    _write_model_and_reference(tmp_path)
    jsonl, db = tmp_path / "drift.jsonl", tmp_path / "drift.db"
    config = write_config(
        tmp_path / "turnout.yaml",
        {
            "models": [
                {
                    "name": "mlp",
                    "version": 1,
                    "path": "model.onnx",
                    # no window closes before shutdown: every record is written by it
                    "monitoring": _monitoring(
                        max_samples_per_s=1_000_000,
                        window={"samples": 1_000_000, "seconds": HOUR_S},
                    ),
                }
            ],
            "monitoring": {"jsonl": {"path": str(jsonl)}, "sqlite": {"path": str(db)}},
        },
    )
    rows = _reference()
    lock = threading.Lock()
    counts = {"sent": 0, "answered": 0}

    with TurnoutProcess(["--config", str(config)], tmp_path / "process") as server:

        def work(index: int) -> None:
            client = Client(CLIENTS[index], server)
            try:
                for request in range(PER_CLIENT):
                    row = rows[(index * PER_CLIENT + request) % len(rows)][np.newaxis, :]
                    with lock:
                        counts["sent"] += 1
                    try:
                        client.infer("mlp", row)
                    except Exception:  # refused or cut off by the shutdown: stop sending
                        return
                    with lock:
                        counts["answered"] += 1
            finally:
                client.close()

        threads = [
            threading.Thread(target=work, args=(index,), daemon=True)
            for index in range(len(CLIENTS))
        ]
        for thread in threads:
            thread.start()
        wait_for(lambda: counts["answered"] >= STOP_AFTER, "answered requests", DEADLINE_S)
        assert not jsonl.exists() or _jsonl(jsonl) == []
        server.process.send_signal(signal.SIGTERM)
        status = server.process.wait(DEADLINE_S)
        for thread in threads:
            thread.join(DEADLINE_S)
            assert not thread.is_alive()
        logs = server.logs()

    assert status == 0, logs
    assert "Traceback" not in logs, logs
    assert "not written" not in logs, logs
    lines = jsonl.read_text(encoding="utf-8").splitlines(keepends=True)
    assert lines
    assert all(line.endswith("\n") for line in lines)
    records = [json.loads(line) for line in lines]
    from_jsonl = sum(record["window_samples"] for record in _overall(records, "mlp"))
    from_sqlite = sum(record["window_samples"] for record in _overall(_sqlite(db), "mlp"))
    assert from_jsonl == from_sqlite
    assert counts["answered"] <= from_jsonl <= counts["sent"], counts
    # the load was cut by the shutdown, not finished before it
    assert counts["answered"] < len(CLIENTS) * PER_CLIENT, counts
    assert sorted(_key(record) for record in records) == sorted(
        _key(record) for record in _sqlite(db)
    )


# --- repository mode ------------------------------------------------------------------------------


def test_repository_mode_monitors_models_with_a_reference(tmp_path: Path) -> None:
    root = tmp_path / "models"
    watched = root / "watched"
    write_model(build_mlp(seed=1), watched / "1" / "model.onnx")
    np.savez(watched / "reference.npz", INPUT0=_reference())
    write_model(build_mlp(seed=2), root / "plain" / "1" / "model.onnx")
    rows = _reference()[:DEFAULT_WINDOW]
    per_request = 50  # within the classifier's batch size; 20 requests fill a default window
    requests = DEFAULT_WINDOW // per_request
    assert requests < DEFAULT_MAX_SAMPLES_PER_S  # none is over the per-second cap

    workdir = tmp_path / "process"
    jsonl = workdir / "state" / "drift.jsonl"
    with TurnoutProcess(["--model-repository", str(root)], workdir, env=admin_env()) as server:

        def send(endpoint: str, version: str = "") -> None:
            client = Client("http", server)
            try:
                for start in range(0, len(rows), per_request):
                    client.infer(endpoint, rows[start : start + per_request], version)
            finally:
                client.close()

        send("watched")
        send("plain")
        overall = wait_for(
            lambda: _overall(_jsonl(jsonl), "watched") or None,
            "a window of the watched model in the default JSONL sink",
            DEADLINE_S,
        )
        assert [(r["version"], r["window_samples"]) for r in overall] == [("1", DEFAULT_WINDOW)]
        scraped = scrape(server)
        assert scraped.value("turnout_drift_samples_total", endpoint="watched", version="1") == (
            requests
        )
        assert {s.labels["feature"] for s in scraped.find("turnout_drift_status")} == {
            *FEATURES,
            OVERALL,
        }
        assert _drift_samples(scraped, endpoint="plain") == []
        assert {record["endpoint"] for record in _jsonl(jsonl)} == {"watched"}

        # a version loaded through the repository API is watched against the same reference
        write_model(build_mlp(seed=3), watched / "2" / "model.onnx")
        reply = Admin(server).load("watched", "2")
        assert reply.status == 200, reply
        send("watched", version="2")
        wait_for(
            lambda: [r for r in _overall(_jsonl(jsonl), "watched") if r["version"] == "2"] or None,
            "a window of the loaded version",
            DEADLINE_S,
        )
        scraped = scrape(server)
        assert scraped.value("turnout_drift_samples_total", endpoint="watched", version="2") == (
            requests
        )
        assert _drift_samples(scraped, endpoint="plain") == []

        status, logs = _stop_and_read_log(server)

    assert status == 0, logs
    assert "Traceback" not in logs, logs


def test_an_unloaded_version_leaves_no_drift_series(tmp_path: Path) -> None:
    """Like ``turnout_model_ready``, the drift series of a version go when it is unloaded: a
    stale ``turnout_drift_status`` of 2 would keep an alert firing for a version that is gone."""
    root = tmp_path / "models"
    for version, seed in (("1", 1), ("2", 2)):
        write_model(build_mlp(seed=seed), root / "watched" / version / "model.onnx")
    np.savez(root / "watched" / "reference.npz", INPUT0=_reference())
    rows = _reference()[:DEFAULT_WINDOW] + np.float32(SHIFT)  # drifted: version 1 alerts
    workdir = tmp_path / "process"
    jsonl = workdir / "state" / "drift.jsonl"
    with TurnoutProcess(["--model-repository", str(root)], workdir, env=admin_env()) as server:
        client = Client("grpc", server)
        try:
            for start in range(0, len(rows), 50):
                client.infer("watched", rows[start : start + 50], version="1")
        finally:
            client.close()
        wait_for(
            lambda: _overall(_jsonl(jsonl), "watched") or None,
            "a window of version 1",
            DEADLINE_S,
        )
        version_1 = {"endpoint": "watched", "version": "1"}
        wait_for(
            lambda: scrape(server).value("turnout_drift_status", **version_1, feature=OVERALL) == 2,
            "version 1's alert on /metrics",
            DEADLINE_S,
        )

        reply = Admin(server).unload("watched", "1")
        assert reply.status == 200, reply
        scraped = scrape(server)
        assert scraped.find("turnout_model_ready", **version_1) == []
        assert _drift_samples(scraped, **version_1) == []

        status, logs = _stop_and_read_log(server)

    assert status == 0, logs
    assert "Traceback" not in logs, logs
