"""``turnout loadtest`` end to end: the real command, run as a subprocess, against a real server
serving ``turnout demo``'s canary (mlp, versions 1 and 2 at 90/10, drift monitored), extended
with an endpoint whose drift windows are small and a bandit endpoint.

- Closed loop over gRPC and open loop over HTTP (JSON and binary tensors): figures that hang
  together, counts that match the server's own, a timeline of one entry per second, a
  self-contained HTML page; a fixed arrival rate sends rate x duration requests.
- A weight change in the middle of a run: the assertions of each phase hold, the split follows.
- A failing assertion exits 1 and still writes the report; a refused action is reported.
- Two load processes: their requests add up in one report.
- Drift injected into the inputs makes the server's drift monitor alert.
- Rewards sent for a bandit endpoint reach its statistics.
- Usage errors exit 2 with one clear message and no traceback.

Runs are short (2 to 5 s) and slow (at most a few hundred requests per second): this checks what
the tool does, not how fast anything is.
"""

import json
import math
import os
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.support.e2e import scrape, write_config
from tests.support.polling import wait_for
from tests.support.routing import ADMIN_TOKEN, TOKEN_VARIABLE, Admin, admin_env
from tests.support.server import TurnoutProcess
from turnout.server.demo import write_demo

DEMO = "mlp"
DRIFTING = "drifting"
BANDIT = "bandit"
DEMO_WEIGHTS = {"1": 90, "2": 10}
# The drifting endpoint's windows: small, closed on size only, with thresholds that a window of
# the reference's own rows never reaches (see tests/e2e/test_drift.py) and a shift of three
# standard deviations far exceeds.
DRIFT_WINDOW = 200
DRIFT_THRESHOLDS = {
    "psi": {"warn": 0.5, "alert": 1.0},
    "ks_pvalue": {"alert": 1e-6},
    "chi2_pvalue": {"alert": 1e-6},
}
OVERALL = "*"
# How far a fixed-rate run's request count may be from rate x duration: the last request due at
# the very end may or may not fit, and nothing else.
FIXED_RATE_TOLERANCE = 0.02
# How much earlier than due an open loop may send a request (uvloop's timers are coarse).
EARLY_S = 0.01
RUN_TIMEOUT_S = 90.0
USAGE_TIMEOUT_S = 60.0
LATENCY_KEYS = ("p50", "p90", "p99", "p999", "max")
URL = re.compile(r"https?://[^\s\"'<>&)]+")


# --- the server -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This file's server's folder: the demo in ``demo/``, the server's run in ``run/``."""
    return tmp_path_factory.mktemp("loadtest")


@pytest.fixture(scope="module")
def drift_sink(root: Path) -> Path:
    """The demo's JSONL drift sink (monitoring/drift.jsonl beside its turnout.yaml)."""
    return root / "demo" / "monitoring" / "drift.jsonl"


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[TurnoutProcess]:
    """The demo's server with the admin API on, plus a drifting and a bandit endpoint."""
    demo_config = write_demo(root / "demo")
    config = yaml.safe_load(demo_config.read_text(encoding="utf-8"))
    assert config["routes"][DEMO] == {"policy": "canary", "weights": DEMO_WEIGHTS}
    mlp = {version: f"models/{DEMO}/{version}/model.onnx" for version in ("1", "2")}
    config["models"] += [
        {
            "name": DRIFTING,
            "version": 1,
            "path": mlp["1"],
            "monitoring": {
                "sample_rate": 1.0,
                "max_samples_per_s": 100_000,
                "reference": f"models/{DEMO}/reference.npz",
                "window": {"samples": DRIFT_WINDOW, "seconds": 3600},
                "thresholds": DRIFT_THRESHOLDS,
            },
        },
        *({"name": BANDIT, "version": int(version), "path": path} for version, path in mlp.items()),
    ]
    config["routes"][BANDIT] = {"policy": "bandit", "algorithm": "thompson", "arms": ["1", "2"]}
    path = write_config(root / "demo" / "turnout-loadtest.yaml", config)
    with TurnoutProcess(["--config", str(path)], root / "run", env=admin_env()) as process:
        yield process
        assert process.stop() == 0, process.logs()
        assert "Traceback" not in process.logs(), process.logs()


@pytest.fixture(scope="module")
def admin(server: TurnoutProcess) -> Admin:
    """The admin client of this file's server."""
    return Admin(server)


def _grpc(server: TurnoutProcess) -> str:
    return f"grpc://{server.grpc_url}"


def _http(server: TurnoutProcess) -> str:
    return f"http://{server.http_url}"


def _served(server: TurnoutProcess, endpoint: str = DEMO) -> Counter[str]:
    """Requests of ``endpoint`` the server has answered successfully so far, by version."""
    served: Counter[str] = Counter()
    for sample in scrape(server).find("turnout_requests_total", endpoint=endpoint):
        if sample.labels["status"] == "success":
            served[sample.labels["version"]] += int(sample.value)
    return served


# --- running the command --------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One finished ``turnout loadtest``."""

    returncode: int
    stdout: str
    stderr: str
    folder: Path

    @property
    def report(self) -> dict[str, Any]:
        """report.json."""
        loaded: dict[str, Any] = json.loads((self.folder / "report.json").read_text())
        return loaded

    @property
    def html(self) -> str:
        """report.html."""
        return (self.folder / "report.html").read_text(encoding="utf-8")

    def __str__(self) -> str:
        return f"exit {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def _environment(token: str | None = None) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if key != TOKEN_VARIABLE}
    if token is not None:
        environment[TOKEN_VARIABLE] = token
    return environment


def _command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "turnout", "loadtest", *args]


def _loadtest(args: list[str], folder: Path, token: str | None = None, quiet: bool = True) -> Run:
    """Run ``turnout loadtest ARGS --report FOLDER [--quiet]`` to its end."""
    done = subprocess.run(
        _command([*args, "--report", str(folder), *(["--quiet"] if quiet else [])]),
        capture_output=True,
        text=True,
        env=_environment(token),
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr, folder)


def _scenario(path: Path, phases: list[dict[str, Any]], **settings: Any) -> Path:
    """A scenario file (JSON is YAML)."""
    path.write_text(json.dumps({"phases": phases, **settings}), encoding="utf-8")
    return path


# --- what every good report shows -----------------------------------------------------------------


def _assert_sound(run: Run, endpoint: str = DEMO) -> dict[str, Any]:
    """A run that passed, with figures that hang together; returns its report."""
    assert run.returncode == 0, run
    assert "Traceback" not in run.stderr, run
    assert "Task exception" not in run.stderr, run
    report = run.report
    assert report["passed"] is True, report
    requests = report["requests"]
    assert requests > 0, report
    assert report["throughput_rps"] > 0
    assert report["throughput_rps"] == pytest.approx(requests / report["duration_s"], abs=0.01)
    _assert_latency_ordered(report["latency_ms"])
    assert report["errors"] == {}, report["errors"]
    assert report["error_rate"] == 0.0
    # Without errors, the successful answers are all the answers.
    assert report["success_latency_ms"] == report["latency_ms"]
    assert list(report["requests_per_version"]) == [endpoint], report["requests_per_version"]
    assert sum(report["requests_per_version"][endpoint].values()) == requests
    # the phases add up to the whole
    assert sum(phase["requests"] for phase in report["phases"]) == requests
    for phase in report["phases"]:
        _assert_latency_ordered(phase["latency_ms"])
    # one timeline entry per second of the run, adding up to the whole too
    timeline = report["timeline"]
    seconds = math.ceil(report["duration_s"])
    assert [entry["t"] for entry in timeline] == [float(t) for t in range(seconds)], timeline
    assert sum(entry["requests"] for entry in timeline) == requests
    for entry in timeline:
        assert entry["requests"] > 0, entry
        assert entry["errors"] == 0, entry
        assert sum(entry["versions"].values()) == entry["requests"], entry
        assert set(entry["versions"]) <= {f"{endpoint}/1", f"{endpoint}/2"}, entry
        latency = entry["latency_ms"]
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"], entry
        assert latency["max"] <= report["latency_ms"]["max"] + 1e-3, entry  # rounded there
    assert f"{requests} requests in" in run.stdout, run
    _assert_html(run)
    return report


def _assert_latency_ordered(latency: dict[str, float]) -> None:
    values = [latency[key] for key in LATENCY_KEYS]
    assert values[0] > 0, latency
    assert values == sorted(values), latency
    assert 0 < latency["mean"] <= latency["max"], latency


def _assert_html(run: Run) -> None:
    """report.html: a whole page, with its plot inline and nothing fetched from elsewhere."""
    page = run.html
    report = run.report
    assert page.startswith("<!DOCTYPE html>"), page[:200]
    assert page.rstrip().endswith("</html>"), page[-200:]
    assert len(page) > 5_000, page
    assert 'src="data:image/png;base64,' in page
    # the only URL on the page is the target's, shown as text: no script, style sheet, font or
    # image comes from anywhere else
    assert set(URL.findall(page)) <= {report["target"]}, set(URL.findall(page))
    assert not re.search(r"<(script|link|iframe|object|embed)\b", page, re.IGNORECASE)
    assert not re.search(r"(src|href)\s*=\s*(?![\"']?(data:|#))", page, re.IGNORECASE)
    assert "@import" not in page
    assert "url(" not in page
    assert ("PASS" if report["passed"] else "FAIL") in page
    assert f"{report['requests']:d}" in page


def _assert_counted_like_the_server(
    report: dict[str, Any], before: Counter[str], after: Counter[str], endpoint: str = DEMO
) -> None:
    """Every request the server answered during the run is in the report, on its version."""
    served = dict(after - before)
    assert report["requests_per_version"][endpoint] == served, (report, served)


def _is_whole_ms(value_ms: float) -> bool:
    microseconds = value_ms * 1000.0
    return abs(microseconds - 1000.0 * round(value_ms)) < 0.5


# --- closed and open loop -------------------------------------------------------------------------


def test_closed_loop_over_grpc(server: TurnoutProcess, tmp_path: Path) -> None:
    before = _served(server)
    run = _loadtest(
        ["--target", _grpc(server), "--endpoint", DEMO, "--concurrency", "2", "--duration", "3"],
        tmp_path / "report",
        quiet=False,
    )
    report = _assert_sound(run)
    # the progress line, once a second (a line each when stderr is not a terminal)
    progress = re.findall(r"^\[ +(\d)/3 s\] main: (\d+) req/s, p50 .* errors 0 ", run.stderr, re.M)
    assert progress, run
    for second, requests in progress:  # answers that come after it are not in it
        assert 0 < int(requests) <= report["timeline"][int(second) - 1]["requests"], progress
    _assert_counted_like_the_server(report, before, _served(server))
    assert (report["mode"], report["protocol"], report["processes"]) == ("closed", "grpc", 1)
    assert report["target"] == _grpc(server)
    assert report["endpoints"] == [DEMO]
    assert report["actions"] == []
    assert report["rewards"] == {}
    (phase,) = report["phases"]
    assert (phase["name"], phase["start_s"], phase["end_s"]) == ("main", 0.0, 3.0)
    assert phase["assertions"] == []
    # both versions of the canary served (10 % of hundreds of requests is never none)
    assert set(report["requests_per_version"][DEMO]) == {"1", "2"}
    # Latencies are measured finer than the millisecond: the slowest request of each second
    # is not a whole number of milliseconds (by chance, one in a thousand is).
    maxima = [entry["latency_ms"]["max"] for entry in report["timeline"]]
    maxima.append(report["latency_ms"]["max"])
    assert not all(_is_whole_ms(value) for value in maxima), (
        f"every latency is a whole number of milliseconds: {maxima}"
    )


@pytest.mark.parametrize("protocol", ["http", "http-binary"])
def test_open_loop_at_a_fixed_rate_over_http(
    server: TurnoutProcess, tmp_path: Path, protocol: str
) -> None:
    rate, duration = 150, 3
    scenario = _scenario(
        tmp_path / "open.yaml",
        [
            {
                "name": "steady",
                "duration_s": duration,
                "rate": rate,
                "arrival": "fixed",
                "endpoints": {DEMO: 1},
            }
        ],
    )
    before = _served(server)
    run = _loadtest(
        ["--target", _http(server), "--protocol", protocol, "--scenario", str(scenario)],
        tmp_path / "report",
    )
    report = _assert_sound(run)
    assert (report["mode"], report["protocol"]) == ("open", protocol)
    assert report["requests"] == pytest.approx(rate * duration, rel=FIXED_RATE_TOLERANCE)
    for entry in report["timeline"]:  # fixed arrivals: the same count every second
        assert entry["requests"] == pytest.approx(rate, abs=2), report["timeline"]
    _assert_counted_like_the_server(report, before, _served(server))


# --- ops actions ----------------------------------------------------------------------------------


def test_a_weight_change_mid_run_moves_the_traffic(
    server: TurnoutProcess, admin: Admin, tmp_path: Path
) -> None:
    rate = 150
    scenario = _scenario(
        tmp_path / "switch.yaml",
        [
            {
                "name": "canary",
                "duration_s": 2,
                "rate": rate,
                "arrival": "fixed",
                "endpoints": {DEMO: 1},
                # 300 requests at 10 %: 30 +- 5.2, these bounds are 4 sigma out or more
                "expect": {"share": [{"version": "2", "min": 0.02, "max": 0.2}]},
            },
            {
                "name": "switched",
                "duration_s": 3,
                "rate": rate,
                "arrival": "fixed",
                "endpoints": {DEMO: 1},
                "actions": [
                    {
                        "at_s": 0,
                        "action": "set_weights",
                        "endpoint": DEMO,
                        "weights": {"1": 0, "2": 100},
                    }
                ],
                # the requests sent while the change is on its way may still go to version 1
                # (how many depends on how busy the machine is; counted exactly below)
                "expect": {
                    "share": [{"version": "2", "min": 0.8}],
                    "error_rate_below": 0.001,
                },
            },
        ],
    )
    try:
        run = _loadtest(
            [
                "--target",
                _grpc(server),
                "--admin",
                _http(server),
                "--scenario",
                str(scenario),
            ],
            tmp_path / "report",
            token=ADMIN_TOKEN,  # from the environment
        )
        report = _assert_sound(run)
        route = admin.route(DEMO)
    finally:
        admin.set_route(DEMO, {"policy": "canary", "weights": DEMO_WEIGHTS})
    assert route["route"]["weights"] == {"1": 0, "2": 100}, route
    assert report["mode"] == "scenario"
    (action,) = report["actions"]
    assert action["ok"] is True, action
    assert action["status"] == 200
    assert action["error"] is None
    assert (action["phase"], action["action"], action["endpoint"]) == (
        "switched",
        "set_weights",
        DEMO,
    )
    assert action["detail"] == {"weights": {"1": 0, "2": 100}}
    assert 2.0 <= action["t"] < 3.0, action  # at the second phase's start, done in well under 1 s
    canary, switched = report["phases"]
    assert (canary["start_s"], canary["end_s"], switched["start_s"], switched["end_s"]) == (
        0.0,
        2.0,
        2.0,
        5.0,
    )
    for phase in (canary, switched):
        assert phase["assertions"], phase
        assert all(check["passed"] for check in phase["assertions"]), phase["assertions"]
    assert canary["requests_per_version"][DEMO].keys() == {"1", "2"}
    # Version 1 served only requests due before the change was done (or just after: an open
    # loop may send a request a little before it is due).
    answered = switched["requests_per_version"][DEMO]
    sent_before_change = rate * (action["t"] - switched["start_s"] + EARLY_S) + 1
    assert answered.get("1", 0) <= sent_before_change, (answered, action)
    # The timeline: both versions before the change; only the new one once it was done.
    for entry in report["timeline"]:
        if entry["t"] + 1 <= action["t"]:
            assert f"{DEMO}/1" in entry["versions"], entry
        if entry["t"] >= action["t"]:
            assert list(entry["versions"]) == [f"{DEMO}/2"], entry
    assert sum(entry["t"] >= action["t"] for entry in report["timeline"]) >= 2
    page = run.html
    assert "set_weights" in page
    assert "switched" in page


def test_a_failing_assertion_exits_1_and_still_writes_the_report(
    server: TurnoutProcess, admin: Admin, tmp_path: Path
) -> None:
    route_before = admin.route(DEMO)["route"]
    scenario = _scenario(
        tmp_path / "failing.yaml",
        [
            {
                "name": "strict",
                "duration_s": 2,
                "rate": 100,
                "arrival": "fixed",
                "endpoints": {DEMO: 1},
                # a refused action is reported, not fatal: version 9 does not exist
                "actions": [
                    {"action": "set_weights", "endpoint": DEMO, "weights": {"1": 1, "9": 1}}
                ],
                "expect": {
                    "p99_ms_below": 0.001,  # one microsecond: never
                    "error_rate_below": 0.5,  # holds
                    # 200 requests at 90/10: at most 2 on version 2 is 5 sigma out
                    "share": [{"version": "1", "min": 0.99}],
                },
            },
            {
                "name": "lenient",
                "duration_s": 1,
                "rate": 100,
                "arrival": "fixed",
                "endpoints": {DEMO: 1},
                "expect": {"error_rate_below": 0.5, "p99_ms_below": 60_000},
            },
        ],
    )
    run = _loadtest(
        ["--target", _http(server), "--token", ADMIN_TOKEN, "--scenario", str(scenario)],
        tmp_path / "report",
    )
    assert run.returncode == 1, run
    assert "Traceback" not in run.stderr, run
    report = run.report
    assert report["passed"] is False
    assert report["requests"] > 0
    strict, lenient = report["phases"]
    checks = {check["check"]: check for check in strict["assertions"]}
    assert checks.keys() == {
        "p99_ms < 0.001",
        "error_rate < 0.5",
        "share of mlp version 1 in [0.99, 1.0]",
    }, checks
    assert checks["p99_ms < 0.001"]["passed"] is False
    assert checks["p99_ms < 0.001"]["value"] == strict["latency_ms"]["p99"]
    assert checks["error_rate < 0.5"]["passed"] is True
    assert checks["error_rate < 0.5"]["value"] == 0.0
    share = checks["share of mlp version 1 in [0.99, 1.0]"]
    assert share["passed"] is False
    version_1 = strict["requests_per_version"][DEMO]["1"]
    assert share["value"] == pytest.approx(version_1 / strict["requests"], abs=1e-4)
    assert all(check["passed"] for check in lenient["assertions"]), lenient["assertions"]
    assert len(lenient["assertions"]) == 2
    # the refused action: reported with the server's answer, and nothing changed
    (action,) = report["actions"]
    assert action["ok"] is False, action
    assert action["status"] == 400, action
    assert action["error"], action
    assert admin.route(DEMO)["route"] == route_before
    # what the terminal shows
    assert "[strict] p99_ms < 0.001:" in run.stdout, run
    assert "FAILED" in run.stdout, run
    assert "[strict] error_rate < 0.5: 0.0 ok" in run.stdout, run
    assert "action set_weights mlp refused" in run.stdout, run
    page = run.html
    assert 'class="check fail"' in page
    assert 'class="check pass"' in page
    _assert_html(run)


# --- several load processes -----------------------------------------------------------------------


def test_two_processes_add_up_to_one_report(server: TurnoutProcess, tmp_path: Path) -> None:
    rate, duration = 160, 3
    scenario = _scenario(
        tmp_path / "two.yaml",
        [
            {
                "name": "shared",
                "duration_s": duration,
                "rate": rate,
                "arrival": "fixed",
                "endpoints": {DEMO: 1},
            }
        ],
    )
    before = _served(server)
    run = _loadtest(
        ["--target", _grpc(server), "--scenario", str(scenario), "--processes", "2"],
        tmp_path / "report",
    )
    report = _assert_sound(run)
    assert report["processes"] == 2
    # each process sends half the rate; together, the whole
    assert report["requests"] == pytest.approx(rate * duration, rel=FIXED_RATE_TOLERANCE)
    for entry in report["timeline"]:
        assert entry["requests"] == pytest.approx(rate, abs=3), report["timeline"]
    _assert_counted_like_the_server(report, before, _served(server))
    # the client's CPU time counts both load processes and the coordinator
    assert report["client"]["cpu_seconds"] > 0


# --- drift ----------------------------------------------------------------------------------------


def _jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a JSONL sink."""
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def _windows(sink: Path) -> list[dict[str, Any]]:
    """The drifting endpoint's overall status records, one per closed window, oldest first."""
    records = [
        record
        for record in _jsonl(sink)
        if record["endpoint"] == DRIFTING
        and record["feature"] == OVERALL
        and record["statistic"] == "status"
    ]
    return sorted(records, key=lambda record: record["time"])


def test_injected_drift_makes_the_server_alert(
    server: TurnoutProcess, drift_sink: Path, tmp_path: Path
) -> None:
    rate, duration, drift_start, rows_per_request = 200, 3, 1.0, 2
    scenario = _scenario(
        tmp_path / "drift.yaml",
        [
            {
                "name": "drifting",
                "duration_s": duration,
                "rate": rate,
                "arrival": "fixed",
                "endpoints": {DRIFTING: 1},
                "drift": {"kind": "mean_shift", "amount": 3, "start_s": drift_start},
            }
        ],
        rows_per_request=rows_per_request,
    )
    assert _windows(drift_sink) == []
    run = _loadtest(["--target", _grpc(server), "--scenario", str(scenario)], tmp_path / "report")
    report = _assert_sound(run, endpoint=DRIFTING)
    rows = rows_per_request * report["requests"]
    # The rows sent before drift_start are the reference's own (two windows of them), every
    # later one is shifted: those windows are ok, every later one alerts.
    steady = int(rate * drift_start) * rows_per_request // DRIFT_WINDOW
    closed = rows // DRIFT_WINDOW
    assert (steady, closed) == (2, 5), report["requests"]
    windows = wait_for(
        lambda: (found := _windows(drift_sink)) and len(found) >= closed and found,
        f"{closed} drift windows of {DRIFTING}",
        timeout_s=30,
    )
    assert len(windows) == closed, windows
    statuses = [window["status"] for window in windows]
    assert statuses == ["ok"] * steady + ["alert"] * (closed - steady), statuses
    assert all(window["window_samples"] == DRIFT_WINDOW for window in windows), windows
    scraped = scrape(server)
    labels = {"endpoint": DRIFTING, "version": "1"}
    # every request was sampled, with its rows_per_request rows (the windows count rows: five
    # closed windows of 200 take more than 599 rows)
    assert scraped.value("turnout_drift_samples_total", **labels) == report["requests"]
    assert scraped.value("turnout_drift_status", **labels, feature=OVERALL) == 2
    # the mean shift moves every input column; each one alerts
    assert scraped.value("turnout_drift_status", **labels, feature="INPUT0[0]") == 2
    assert scraped.value("turnout_drift_status", **labels, feature="INPUT0[63]") == 2


# --- rewards --------------------------------------------------------------------------------------


def test_rewards_reach_the_bandit(server: TurnoutProcess, admin: Admin, tmp_path: Path) -> None:
    before = admin.route(BANDIT)["bandit"]
    assert all(arm["rewards"] == 0 for arm in before.values()), before
    scenario = _scenario(
        tmp_path / "bandit.yaml",
        [
            {
                "name": "learning",
                "duration_s": 3,
                "rate": 80,
                "arrival": "fixed",
                "endpoints": {BANDIT: 1},
                "rewards": {BANDIT: {"1": 0.1, "2": 0.9}},
            }
        ],
    )
    run = _loadtest(["--target", _http(server), "--scenario", str(scenario)], tmp_path / "report")
    report = _assert_sound(run, endpoint=BANDIT)
    # every answered request earned a reward (0 or 1), and every reward was taken
    assert report["rewards"] == {"sent": report["requests"]}, report["rewards"]
    stats = wait_for(
        lambda: (
            (found := admin.route(BANDIT)["bandit"])
            and sum(arm["rewards"] for arm in found.values()) == report["requests"]
            and found
        ),
        "the bandit to count every reward",
        timeout_s=10,
    )
    assert set(stats) == {"1", "2"}, stats
    pulls = {arm: stats[arm]["pulls"] for arm in stats}
    assert pulls == report["requests_per_version"][BANDIT] | {
        arm: 0 for arm in stats if arm not in report["requests_per_version"][BANDIT]
    }, (pulls, report["requests_per_version"])
    for arm in stats.values():
        assert arm["rewards"] == arm["pulls"], stats
        assert 0 <= arm["total"] <= arm["rewards"], stats
    # 0.9 against 0.1 over 240 requests: thompson plays version 2 far more often
    assert pulls["2"] > pulls["1"], stats
    scraped = scrape(server)
    rewarded = sum(
        scraped.value("turnout_bandit_rewards_total", endpoint=BANDIT, arm=arm) for arm in stats
    )
    assert rewarded == report["requests"]
    assert "rewards" in run.html


# --- usage errors ---------------------------------------------------------------------------------


def _closed_port() -> int:
    """A loopback port nothing listens on (just released by this process)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@dataclass(frozen=True)
class Usage:
    """A command line that cannot run, and what the one line it prints must contain."""

    args: list[str]
    says: str
    lines: int = 1  # a scenario's problems come one per line after a heading line


def _usage_cases(server: TurnoutProcess, folder: Path) -> dict[str, Usage]:
    folder.mkdir(parents=True, exist_ok=True)
    closed = _closed_port()
    invalid = _scenario(
        folder / "invalid.yaml",
        [{"name": "a", "duration_s": 2, "rate": -3, "endpoints": {DEMO: 1}}],
    )
    with_actions = _scenario(
        folder / "actions.yaml",
        [
            {
                "name": "a",
                "duration_s": 2,
                "rate": 5,
                "endpoints": {DEMO: 1},
                "actions": [{"action": "rollback", "endpoint": DEMO}],
            }
        ],
    )
    wrong_rows = folder / "wrong.npz"
    np.savez(wrong_rows, INPUT0=np.zeros((10, 3), np.float32))
    not_a_folder = folder / "a-file"
    not_a_folder.write_text("not a folder")
    grpc_target = ["--target", _grpc(server)]
    return {
        "bad-scheme": Usage(
            ["--target", "ftp://127.0.0.1:80", "--endpoint", DEMO, "--rate", "5"],
            "--target 'ftp://127.0.0.1:80': expected grpc://HOST:PORT or http://HOST:PORT",
        ),
        "no-port": Usage(
            ["--target", "http://127.0.0.1", "--endpoint", DEMO, "--rate", "5"],
            "expected grpc://HOST:PORT or http://HOST:PORT",
        ),
        "unreachable-grpc": Usage(
            ["--target", f"grpc://127.0.0.1:{closed}", "--endpoint", DEMO, "--rate", "5"],
            f"127.0.0.1:{closed}",
        ),
        "unreachable-http": Usage(
            ["--target", f"http://127.0.0.1:{closed}", "--endpoint", DEMO, "--rate", "5"],
            f"http://127.0.0.1:{closed}: cannot be reached",
        ),
        "unknown-endpoint-grpc": Usage(
            [*grpc_target, "--endpoint", "nope", "--rate", "5"], "endpoint 'nope'"
        ),
        "unknown-endpoint-http": Usage(
            ["--target", _http(server), "--endpoint", "nope", "--rate", "5"],
            "endpoint 'nope': HTTP 404",
        ),
        "no-load": Usage(
            [*grpc_target, "--endpoint", DEMO], "give --concurrency N or --rate R (or a --scenario)"
        ),
        "no-endpoint": Usage([*grpc_target, "--rate", "5"], "give --endpoint E"),
        "bad-duration": Usage(
            [*grpc_target, "--endpoint", DEMO, "--rate", "5", "--duration", "0"],
            "phases[0].duration_s: Input should be greater than 0",
            lines=2,
        ),
        "invalid-scenario": Usage(
            [*grpc_target, "--scenario", str(invalid)],
            "phases[0].rate: Input should be greater than 0",
            lines=2,
        ),
        "missing-scenario": Usage(
            [*grpc_target, "--scenario", str(folder / "missing.yaml")], "cannot read", lines=2
        ),
        "actions-without-admin": Usage(
            [*grpc_target, "--scenario", str(with_actions)],
            "the scenario has ops actions: give --admin http://HOST:PORT",
        ),
        "protocol-mismatch": Usage(
            [*grpc_target, "--endpoint", DEMO, "--rate", "5", "--protocol", "http-binary"],
            "--protocol http-binary does not fit the target",
        ),
        "rows-of-another-shape": Usage(
            [*grpc_target, "--endpoint", DEMO, "--rate", "5", "--data", str(wrong_rows)],
            "INPUT0 has rows of shape [3], the model takes [64]",
        ),
        "negative-processes": Usage(
            [*grpc_target, "--endpoint", DEMO, "--rate", "5", "--processes", "-1"],
            "--processes",
        ),
        "report-is-a-file": Usage(
            [
                *grpc_target,
                *("--endpoint", DEMO, "--rate", "5", "--duration", "1"),
                *("--report", str(not_a_folder)),
            ],
            str(not_a_folder),
        ),
    }


@pytest.fixture(scope="module")
def usage_runs(
    server: TurnoutProcess, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Usage, Run]]:
    """Every usage case, run at once (each is a separate process that fails early)."""
    folder = tmp_path_factory.mktemp("usage")
    cases = _usage_cases(server, folder)
    started = {}
    for name, case in cases.items():
        report = folder / f"report-{name}"
        args = case.args if "--report" in case.args else [*case.args, "--report", str(report)]
        started[name] = (
            subprocess.Popen(
                _command([*args, "--quiet"]),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=_environment(),
            ),
            report,
        )
    deadline = time.monotonic() + USAGE_TIMEOUT_S
    runs = {}
    for name, (process, report) in started.items():
        try:
            stdout, stderr = process.communicate(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        runs[name] = (cases[name], Run(process.returncode, stdout, stderr, report))
    return runs


USAGE_CASES = [
    "bad-scheme",
    "no-port",
    "unreachable-grpc",
    "unreachable-http",
    "unknown-endpoint-grpc",
    "unknown-endpoint-http",
    "no-load",
    "no-endpoint",
    "bad-duration",
    "invalid-scenario",
    "missing-scenario",
    "actions-without-admin",
    "protocol-mismatch",
    "rows-of-another-shape",
    "negative-processes",
    "report-is-a-file",
]


@pytest.mark.parametrize("name", USAGE_CASES)
def test_usage_errors_exit_2_with_one_message(
    usage_runs: dict[str, tuple[Usage, Run]], name: str
) -> None:
    case, run = usage_runs[name]
    assert run.returncode == 2, run
    assert "Traceback" not in run.stderr, run
    assert run.stdout == "", run
    lines = run.stderr.splitlines()
    assert len(lines) == case.lines, run
    assert lines[0].startswith("turnout loadtest: "), run
    assert case.says in run.stderr, run
    if "--report" not in case.args:
        assert not run.folder.exists(), run  # nothing written


def test_every_usage_case_is_checked(server: TurnoutProcess, tmp_path: Path) -> None:
    assert sorted(_usage_cases(server, tmp_path)) == sorted(USAGE_CASES)
