"""``turnout loadtest``: drive a running server with a scenario of timed phases, steer it through
the admin API mid-run, and report what it did (report.json, report.html).

The load comes from one or more worker processes (loadtests/generator.py) started together;
this process prepares their inputs, runs the ops actions on time, prints a progress line, merges
their histograms (exactly: they share bucket boundaries) and judges each phase's assertions.
Exit status: 0 when every assertion held, 1 when one failed, 2 when the run could not be made
(bad options or scenario, target unreachable, a worker failed).
"""

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import queue
import sys
import time
import urllib.parse
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from turnout.loadtests.clients import Target
    from turnout.loadtests.generator import Plan, Tally
    from turnout.loadtests.scenario import ActionConfig, PhaseConfig, Scenario

START_DELAY_S = 1.5  # from planning to second 0: time for the workers to start and connect
RATE_PER_PROCESS = 1500.0  # requests per second one process sends comfortably (open loop)
CONCURRENCY_PER_PROCESS = 64  # callers per process (closed loop)
WORKER_GRACE_S = 60.0  # how long after the planned end the workers may take to finish
ADMIN_TIMEOUT_S = 10.0
LATE_S = 35  # no answer comes later than this after its second (calls time out at 30 s)
MAX_PROCESSES = 64


def add_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``loadtest`` to the CLI."""
    parser = commands.add_parser(
        "loadtest",
        help="drive a running server and report",
        description="Drive a running server with load (and ops actions) and write a report.",
    )
    parser.add_argument("--target", required=True, help="grpc://HOST:PORT or http://HOST:PORT")
    parser.add_argument("--endpoint", help="the endpoint to call (or the scenario's endpoints)")
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--concurrency", type=int, help="closed loop: callers in flight")
    load.add_argument("--rate", type=float, help="open loop: requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds (default 10)")
    parser.add_argument("--scenario", type=Path, help="a scenario YAML file (phases)")
    parser.add_argument("--report", type=Path, required=True, help="folder for report.json/html")
    parser.add_argument(
        "--protocol",
        choices=["grpc", "http", "http-binary"],
        help="default: grpc for grpc:// targets, http (JSON tensors) for http://",
    )
    parser.add_argument("--processes", type=int, help="load processes (default: as needed)")
    parser.add_argument("--data", type=Path, help="an .npz of input rows keyed by input name")
    parser.add_argument("--rows-per-request", type=int, default=1, help="rows in each request")
    parser.add_argument("--admin", help="the admin API's base URL (default: the http target)")
    parser.add_argument("--token", help="admin token (default: $TURNOUT_ADMIN_TOKEN)")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.set_defaults(command=run_command)


def run_command(args: argparse.Namespace) -> int:
    """Run the load test the options describe."""
    from turnout.loadtests.clients import Target, UsageError  # noqa: PLC0415 - heavy imports
    from turnout.server.config import ConfigError  # noqa: PLC0415

    try:
        target = Target.parse(args.target)
        scenario = _scenario(args)
        protocol = args.protocol or ("grpc" if target.scheme == "grpc" else "http")
        if protocol.startswith("http") != (target.scheme == "http"):
            raise UsageError(f"--protocol {protocol} does not fit the target {target}")
        admin = args.admin or (f"http://{target.address}" if target.scheme == "http" else None)
        if admin is not None:
            _check_admin_url(admin)
        if admin is None and any(phase.actions for phase in scenario.phases):
            raise UsageError("the scenario has ops actions: give --admin http://HOST:PORT")
        token = args.token or os.environ.get("TURNOUT_ADMIN_TOKEN")
        if args.processes is not None and not 1 <= args.processes <= MAX_PROCESSES:
            raise UsageError(f"--processes must be between 1 and {MAX_PROCESSES}")
        _check_report_folder(args.report)
        report = asyncio.run(
            _run(target, protocol, scenario, args.processes, args.data, admin, token, args.quiet)
        )
    except ConfigError as error:
        print(f"turnout loadtest: invalid scenario {error.source}:", file=sys.stderr)
        for problem in error.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    except UsageError as error:
        print(f"turnout loadtest: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nturnout loadtest: interrupted, no report written", file=sys.stderr)
        return 130
    _write(report, args.report)
    _print_summary(report, args.report)
    return 0 if report["passed"] else 1


def _check_admin_url(url: str) -> None:
    from turnout.loadtests.clients import UsageError  # noqa: PLC0415

    try:
        parts = urllib.parse.urlsplit(url)
        usable = parts.scheme in ("http", "https") and parts.hostname and parts.port is not None
    except ValueError:  # a port that is not a number, an unclosed [IPv6
        usable = False
    if not usable:
        raise UsageError(f"--admin {url!r}: expected http://HOST:PORT")


def _check_report_folder(folder: Path) -> None:
    """Make sure the report can be written before spending a run on it (creating nothing
    yet: a run that cannot be made leaves no trace)."""
    from turnout.loadtests.clients import UsageError  # noqa: PLC0415

    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--report {folder}: {existing} is not a folder that can be written")


def _scenario(args: argparse.Namespace) -> "Scenario":
    from turnout.loadtests.clients import UsageError  # noqa: PLC0415
    from turnout.loadtests.scenario import load_scenario, one_phase  # noqa: PLC0415

    if args.scenario is not None:
        scenario = load_scenario(args.scenario)
        if args.endpoint is not None:
            phases = [
                phase
                if phase.endpoints
                else phase.model_copy(update={"endpoints": {args.endpoint: 1.0}})
                for phase in scenario.phases
            ]
            scenario = scenario.model_copy(update={"phases": phases})
        if any(not phase.endpoints for phase in scenario.phases):
            raise UsageError("a phase names no endpoints: give --endpoint E")
        return scenario
    if args.endpoint is None:
        raise UsageError("give --endpoint E (or a --scenario naming its endpoints)")
    if args.concurrency is None and args.rate is None:
        raise UsageError("give --concurrency N or --rate R (or a --scenario)")
    return one_phase(
        args.endpoint, args.concurrency, args.rate, args.duration, args.rows_per_request
    )


async def _run(
    target: "Target",
    protocol: str,
    scenario: "Scenario",
    processes: int | None,
    data: Path | None,
    admin: str | None,
    token: str | None,
    quiet: bool,
) -> dict[str, Any]:
    from turnout.loadtests.generator import worker_main  # noqa: PLC0415

    count = processes or _processes_needed(scenario)
    plans = await _plans(target, protocol, scenario, count, data)
    context = multiprocessing.get_context("spawn")
    messages: multiprocessing.Queue[Any] = context.Queue()
    workers = [context.Process(target=worker_main, args=(plan, messages)) for plan in plans]
    started = datetime.now(UTC)
    for worker in workers:
        worker.start()
    start_at = plans[0].start_at
    cpu_start = time.process_time()
    actions = asyncio.create_task(_act(scenario, start_at, admin, token))
    try:
        results, timeline = await _collect(messages, workers, scenario, start_at, quiet)
    finally:
        for worker in workers:
            worker.join(5)
            if worker.is_alive():
                worker.kill()
    done_actions = await actions
    # CPU spent while the load ran (imports and preparation left out), of every process.
    cpu = sum(result["cpu_seconds"] for result in results) + time.process_time() - cpu_start
    return _report(target, protocol, scenario, count, started, results, timeline, done_actions, cpu)


def _processes_needed(scenario: "Scenario") -> int:
    needed = 1
    for phase in scenario.phases:
        if phase.rate is not None:
            needed = max(needed, math.ceil(phase.rate / RATE_PER_PROCESS))
        if phase.concurrency is not None:
            needed = max(needed, math.ceil(phase.concurrency / CONCURRENCY_PER_PROCESS))
    return min(needed, os.cpu_count() or 1)


async def _plans(
    target: "Target", protocol: str, scenario: "Scenario", count: int, data: Path | None
) -> list["Plan"]:
    from turnout.loadtests.clients import input_specs  # noqa: PLC0415
    from turnout.loadtests.data import load_rows, requests, with_drift  # noqa: PLC0415
    from turnout.loadtests.generator import PhasePlan, Plan  # noqa: PLC0415

    endpoints = sorted({name for phase in scenario.phases for name in phase.endpoints or {}})
    specs = {endpoint: await input_specs(protocol, target, endpoint) for endpoint in endpoints}
    batched = {
        endpoint: all(spec.shape and spec.shape[0] == -1 for spec in found)
        for endpoint, found in specs.items()
    }
    default = {name: load_rows(specs[name], data or scenario.data) for name in endpoints}
    size = scenario.rows_per_request
    plain = {"": {name: requests(default[name], size, batched[name]) for name in endpoints}}
    drifted = {}
    for phase in scenario.phases:
        names = list(phase.endpoints or {})
        rows = default
        if phase.data is not None:
            rows = {name: load_rows(specs[name], phase.data) for name in names}
            plain[phase.name] = {name: requests(rows[name], size, batched[name]) for name in names}
        if phase.drift is not None:
            drifted[phase.name] = {
                name: requests(with_drift(rows[name], phase.drift), size, batched[name])
                for name in names
            }
    start_at = time.time() + START_DELAY_S + 0.5 * count
    plans = []
    for index in range(count):
        phases = []
        offset = 0.0
        for phase in scenario.phases:
            phases.append(
                PhasePlan(
                    name=phase.name,
                    start_s=offset,
                    duration_s=phase.duration_s,
                    concurrency=_share(phase.concurrency or 0, index, count),
                    rate=(phase.rate or 0.0) / count,
                    poisson=phase.arrival == "poisson",
                    mix=list((phase.endpoints or {}).items()),
                    drift_start_s=phase.drift.start_s if phase.drift else None,
                    routing_keys=phase.routing_keys,
                    rewards=phase.rewards or {},
                )
            )
            offset += phase.duration_s
        plans.append(Plan(index, target, protocol, start_at, phases, plain, drifted))
    return plans


def _share(total: int, index: int, count: int) -> int:
    """Process ``index``'s part of ``total`` callers (the parts add up to it)."""
    return total // count + (1 if index < total % count else 0)


class _Timeline:
    """The run second by second, added up over the processes as they hand seconds over. A
    second is cut down to its figures once no answer can still come for it, so a long run
    holds a few dozen histograms, not one per second."""

    def __init__(self, processes: int) -> None:
        self.open: dict[int, Tally] = {}
        self.closed: dict[int, dict[str, Any]] = {}
        self.reached = [0] * processes  # the second each process has handed over up to

    def add(self, index: int, reached: int, seconds: dict[int, dict[str, Any]]) -> int | None:
        """Take a process's seconds; returns a second now complete for the live line."""
        from turnout.loadtests.generator import Tally  # noqa: PLC0415

        shown = min(self.reached)
        for second, found in seconds.items():
            tally = Tally.from_dict(found)
            if second in self.closed:
                _add_counts(self.closed[second], tally)
            else:
                self.open.setdefault(second, Tally()).merge(tally)
        self.reached[index] = max(self.reached[index], reached)
        for second in [second for second in self.open if second < min(self.reached) - LATE_S]:
            self.closed[second] = _second(second, self.open.pop(second))
        complete = min(self.reached) - 1
        return complete if complete >= shown and complete in self.open else None

    def entries(self, duration_s: float) -> list[dict[str, Any]]:
        """One entry per second of the run."""
        from turnout.loadtests.generator import Tally  # noqa: PLC0415

        return [
            self.closed.get(second) or _second(second, self.open.get(second, Tally()))
            for second in range(math.ceil(duration_s))
        ]


def _second(second: int, tally: "Tally") -> dict[str, Any]:
    latency = tally.latency.percentiles_ms()
    return {
        "t": float(second),
        "requests": tally.requests,
        "rps": float(tally.requests),
        "errors": sum(tally.errors.values()),
        "not_sent": tally.not_sent,
        "latency_ms": {name: round(latency[name], 4) for name in ("p50", "p90", "p99", "max")},
        "versions": dict(sorted(tally.versions.items())),
    }


def _add_counts(entry: dict[str, Any], tally: "Tally") -> None:
    """An answer later than any call may take (it cannot happen): counted, not timed."""
    entry["requests"] += tally.requests
    entry["rps"] += tally.requests
    entry["errors"] += sum(tally.errors.values())
    entry["not_sent"] += tally.not_sent
    for key, count in tally.versions.items():
        entry["versions"][key] = entry["versions"].get(key, 0) + count


async def _collect(
    messages: "multiprocessing.Queue[Any]",
    workers: "Sequence[multiprocessing.process.BaseProcess]",
    scenario: "Scenario",
    start_at: float,
    quiet: bool,
) -> tuple[list[dict[str, Any]], _Timeline]:
    from turnout.loadtests.clients import UsageError  # noqa: PLC0415

    loop = asyncio.get_running_loop()
    deadline = start_at + scenario.duration_s + WORKER_GRACE_S
    results: dict[int, dict[str, Any]] = {}
    timeline = _Timeline(len(workers))
    while len(results) < len(workers):
        try:
            kind, index, payload = await loop.run_in_executor(None, messages.get, True, 0.5)
        except queue.Empty:
            for index, worker in enumerate(workers):
                if index not in results and worker.exitcode is not None:
                    raise UsageError(
                        f"load process {index} died (exit status {worker.exitcode})"
                    ) from None
            if time.time() > deadline:
                raise UsageError("the load processes did not finish in time") from None
            continue
        if kind == "failed":
            raise UsageError(f"load process {index} failed: {payload}")
        if kind == "done":
            results[index] = payload
            timeline.add(index, 1 << 30, payload["seconds"])
            continue
        reached, seconds = payload
        complete = timeline.add(index, reached, seconds)
        if not quiet and complete is not None:
            _progress(timeline.open[complete], complete, scenario)
    if not quiet:
        print(file=sys.stderr)
    return [results[index] for index in sorted(results)], timeline


def _progress(tally: "Tally", second: int, scenario: "Scenario") -> None:
    phase = _phase_at(scenario, second)
    latency = tally.latency.percentiles_ms()
    errors = sum(tally.errors.values())
    versions = sum(tally.versions.values()) or 1
    split = " ".join(
        f"{name} {100 * n / versions:.0f}%" for name, n in sorted(tally.versions.items())
    )
    line = (
        f"[{second + 1:>4.0f}/{scenario.duration_s:.0f} s] {phase}: {tally.requests} req/s, "
        f"p50 {latency['p50']:.2f} ms, p99 {latency['p99']:.2f} ms, errors {errors}  {split}"
    )
    end = "\r" if sys.stderr.isatty() else "\n"
    print(line.ljust(100), end=end, file=sys.stderr, flush=True)


def _phase_at(scenario: "Scenario", second: float) -> str:
    offset = 0.0
    for phase in scenario.phases:
        offset += phase.duration_s
        if second < offset:
            return phase.name
    return scenario.phases[-1].name


async def _act(
    scenario: "Scenario", start_at: float, admin: str | None, token: str | None
) -> list[dict[str, Any]]:
    """Run every phase's ops actions at their moments; what each did."""
    done = []
    offset = 0.0
    timed = []
    for phase in scenario.phases:
        timed += [(offset + action.at_s, phase.name, action) for action in phase.actions]
        offset += phase.duration_s
    for moment, phase_name, action in sorted(timed, key=lambda item: item[0]):
        await asyncio.sleep(max(start_at + moment - time.time(), 0))
        result = await asyncio.to_thread(_admin_call, admin or "", token, action)
        done.append(
            {
                "t": round(time.time() - start_at, 3),
                "phase": phase_name,
                "action": action.action,
                "endpoint": action.endpoint,
                "detail": _detail(action),
                **result,
            }
        )
    return done


def _detail(action: "ActionConfig") -> dict[str, Any]:
    if action.weights is not None:
        return {"weights": action.weights}
    if action.route is not None:
        return {"route": action.route}
    return {}


def _admin_call(admin: str, token: str | None, action: "ActionConfig") -> dict[str, Any]:
    """One admin API call; never raises (a refused action is reported, not fatal)."""
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    path = f"/admin/routes/{urllib.parse.quote(action.endpoint, safe='')}"
    body: dict[str, Any] | None = None
    method = "POST"
    if action.action == "set_weights":
        method, body = "PUT", {"policy": "canary", "weights": action.weights}
    elif action.action == "set_route":
        method, body = "PUT", action.route
    else:
        path += f"/{action.action}"
    request = urllib.request.Request(  # noqa: S310 - the admin URL the user gave
        admin.rstrip("/") + path,
        data=json.dumps(body or {}).encode(),
        method=method,
        headers={"Content-Type": "application/json"}
        | ({"Authorization": f"Bearer {token}"} if token else {}),
    )
    try:
        with urllib.request.urlopen(request, timeout=ADMIN_TIMEOUT_S) as answer:  # noqa: S310
            return {"ok": True, "status": answer.status, "error": None}
    except urllib.error.HTTPError as error:
        text = error.read().decode(errors="replace")[:500]
        return {"ok": False, "status": error.code, "error": text}
    except (urllib.error.URLError, OSError, ValueError) as error:
        return {"ok": False, "status": None, "error": str(error)}


def _report(
    target: "Target",
    protocol: str,
    scenario: "Scenario",
    processes: int,
    started: datetime,
    results: list[dict[str, Any]],
    timeline: _Timeline,
    actions: list[dict[str, Any]],
    cpu_seconds: float,
) -> dict[str, Any]:
    from turnout.loadtests.generator import Tally  # noqa: PLC0415

    phases: dict[str, Tally] = {phase.name: Tally() for phase in scenario.phases}
    rewards: Counter[str] = Counter()
    for result in results:
        for name, tally in result["phases"].items():
            phases[name].merge(Tally.from_dict(tally))
        rewards.update(result["rewards"])
    total = Tally()
    for tally in phases.values():
        total.merge(tally)
    duration = scenario.duration_s
    phase_reports = []
    offset = 0.0
    for phase in scenario.phases:
        figures = _figures(phases[phase.name], phase.duration_s)
        figures["assertions"] = _judge(phase, figures)
        phase_reports.append(
            {"name": phase.name, "start_s": offset, "end_s": offset + phase.duration_s, **figures}
        )
        offset += phase.duration_s
    passed = all(check["passed"] for phase in phase_reports for check in phase["assertions"])
    return {
        "tool": "turnout loadtest",
        "started": started.isoformat(timespec="seconds"),
        "target": str(target),
        "protocol": protocol,
        "endpoints": sorted({name for phase in scenario.phases for name in phase.endpoints or {}}),
        "mode": _mode(scenario),
        "processes": processes,
        "duration_s": duration,
        **_figures(total, duration),
        "timeline": timeline.entries(duration),
        "actions": actions,
        "phases": phase_reports,
        "rewards": dict(rewards),
        "passed": passed,
        "client": {
            "cpu_seconds": round(cpu_seconds, 2),
            "cores_used": round(cpu_seconds / duration, 3),
        },
    }


def _mode(scenario: "Scenario") -> str:
    if len(scenario.phases) > 1:
        return "scenario"
    return "closed" if scenario.phases[0].concurrency is not None else "open"


def _figures(tally: "Tally", duration_s: float) -> dict[str, Any]:
    errors = sum(tally.errors.values()) + tally.not_sent
    due = tally.requests + tally.not_sent
    per_version: dict[str, dict[str, int]] = {}
    for key, count in sorted(tally.versions.items()):
        endpoint, _, version = key.rpartition("/")
        per_version.setdefault(endpoint, {})[version] = count
    return {
        "requests": tally.requests,
        "throughput_rps": round(tally.requests / duration_s, 2),
        "latency_ms": {
            name: round(value, 4) for name, value in tally.latency.percentiles_ms().items()
        },
        "success_latency_ms": {
            name: round(value, 4) for name, value in tally.success_latency.percentiles_ms().items()
        },
        "errors": dict(sorted(tally.errors.items())),
        "not_sent": tally.not_sent,
        "error_rate": round(errors / due, 6) if due else 0.0,
        "requests_per_version": per_version,
    }


def _judge(phase: "PhaseConfig", figures: dict[str, Any]) -> list[dict[str, Any]]:
    expect = phase.expect
    checks: list[dict[str, Any]] = []
    answered = figures["requests"] > 0

    def check(text: str, value: float | None, passed: bool) -> None:
        checks.append({"check": text, "value": value, "passed": passed and answered})

    latency = figures["latency_ms"]
    limits = (
        ("p50_ms", latency["p50"], expect.p50_ms_below, "<"),
        ("p99_ms", latency["p99"], expect.p99_ms_below, "<"),
        ("error_rate", figures["error_rate"], expect.error_rate_below, "<"),
        ("throughput_rps", figures["throughput_rps"], expect.throughput_rps_above, ">"),
    )
    for name, value, limit, sign in limits:
        if limit is not None:
            check(f"{name} {sign} {limit}", value, value < limit if sign == "<" else value > limit)
    for share in expect.share:
        endpoint = share.endpoint or next(iter(phase.endpoints or {}), "")
        served = figures["requests_per_version"].get(endpoint, {})
        total = sum(served.values())
        value = served.get(share.version, 0) / total if total else 0.0
        check(
            f"share of {endpoint} version {share.version} in [{share.min}, {share.max}]",
            round(value, 4),
            total > 0 and share.min <= value <= share.max,
        )
    return checks


def _write(report: dict[str, Any], folder: Path) -> None:
    from turnout.loadtests.html_report import render  # noqa: PLC0415

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (folder / "report.html").write_text(render(report), encoding="utf-8")


def _print_summary(report: dict[str, Any], folder: Path) -> None:
    latency = report["latency_ms"]
    print(
        f"{report['requests']} requests in {report['duration_s']:.0f} s: "
        f"{report['throughput_rps']:.1f} req/s; latency ms p50 {latency['p50']:.3f} "
        f"p90 {latency['p90']:.3f} p99 {latency['p99']:.3f} p99.9 {latency['p999']:.3f} "
        f"max {latency['max']:.3f}; error rate {report['error_rate']:.4f} {report['errors']}"
    )
    for endpoint, versions in report["requests_per_version"].items():
        answered = sum(versions.values()) or 1
        split = ", ".join(f"{v}: {100 * n / answered:.1f}%" for v, n in versions.items())
        print(f"  {endpoint}: {split}")
    for phase in report["phases"]:
        for check in phase["assertions"]:
            verdict = "ok" if check["passed"] else "FAILED"
            print(f"  [{phase['name']}] {check['check']}: {check['value']} {verdict}")
    for action in report["actions"]:
        if not action["ok"]:
            print(f"  action {action['action']} {action['endpoint']} refused: {action['error']}")
    print(f"report: {folder / 'report.json'}, {folder / 'report.html'}")
