"""Soak (BAD_INPUTS.md row 23): twice the sustainable load for minutes, then back to normal. What
the server should do: keep the p99 of the requests it admits bounded, refuse and count the rest,
drain its queue, and give its memory back.

    python -m turnout.loadtests.soak [--protocol grpc|http|http-binary] [--concurrency N]
                                     [--saturation-s S] [--warmup-s S] [--overload-s S]
                                     [--normal-s S] [--idle-s S] [--max-queue-size N]
                                     [--out FILE]

One Turnout serves the demo MLP (one version, ``max_queue_size`` as given) on loopback; every
load comes from ``turnout loadtest``. A closed-loop run at ``--concurrency`` measures the
sustainable rate (answers per second); a warm-up at half that rate follows and, after
``--idle-s`` idle, the baseline memory (VmRSS). The soak is one scenario of two open-loop
phases: "overload" at twice the sustainable rate, then "normal" at half of it. While it runs,
the server's memory, queue depth and requests in flight are sampled every second. Afterwards:
whether the queue drained, the memory at once and after ``--idle-s`` idle, and the server's own
counters over the soak. The JSON report (``--out``) adds the one-second samples and the
soak's timeline.

Latencies are the load test's: from the moment each request was due to its answer; "admitted"
ones are those of the successful answers (the report's ``success_latency_ms``), "all answers"
include the refusals. On a small machine the load processes share
the cores with the server; the CPU they used is reported.
"""

import argparse
import json
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from turnout.loadtests.harness import (
    machine,
    metric_samples,
    resident_kib,
    served,
    turnout_command,
    turnout_pid,
    turnout_ports,
    write_demo_model,
)
from turnout.server.demo import DEMO_MODEL

OVERLOAD_FACTOR = 2.0
NORMAL_FACTOR = 0.5
MAX_PHASE_S = 3600.0
SAMPLE_S = 1.0
# Short, so that a front end too busy to answer /metrics leaves a gap rather than stalling the
# memory samples.
SAMPLE_SCRAPE_TIMEOUT_S = 2.0
DRAIN_TIMEOUT_S = 30.0
# On top of the planned duration: the load test's start-up and the last answers' grace (its
# calls time out at 30 s).
LOADTEST_SLACK_S = 180.0
# gRPC's code and HTTP's status for a refusal because the server is full.
REFUSAL_CODES = ("RESOURCE_EXHAUSTED", "503")
# A second of the normal phase counts as calm when nothing failed in it and its p99 is within
# this factor of the warm-up's typical second (the median of its one-second p99s, so that a
# start-up second of the load test's own does not set it): one-second figures on a shared VM
# swing that much.
CALM_P99_FACTOR = 2.0
# The normal phase is back to normal at the first of this many calm seconds in a row; a lone
# calm second in the backlog's tail, or a lone slow one from a neighbour, must not decide it.
RECOVERED_AFTER_CALM_S = 5
KIB_PER_MIB = 1024


def _loadtest(
    work: Path, name: str, target: str, protocol: str, load: list[str], duration_s: float
) -> dict[str, Any]:
    """Run ``turnout loadtest`` with ``load`` (its load options or a scenario); its report."""
    folder = work / name
    finished = subprocess.run(
        [sys.executable, "-m", "turnout", "loadtest", "--target", target, "--protocol", protocol,
         *load, "--report", str(folder), "--quiet"],
        capture_output=True, text=True, timeout=duration_s + LOADTEST_SLACK_S, check=False,
    )  # fmt: skip
    if finished.returncode != 0:
        raise RuntimeError(f"turnout loadtest ({name}) failed:\n{finished.stdout}{finished.stderr}")
    report: dict[str, Any] = json.loads((folder / "report.json").read_text())
    return report


def _phase(report: dict[str, Any], name: str) -> dict[str, Any]:
    """One phase's figures from a load test report: what was offered, admitted, refused."""
    found = next(phase for phase in report["phases"] if phase["name"] == name)
    duration = found["end_s"] - found["start_s"]
    errors: dict[str, int] = found["errors"]
    admitted = sum(
        n for versions in found["requests_per_version"].values() for n in versions.values()
    )
    seconds = _seconds(report, found)
    latency = found["success_latency_ms"]
    return {
        "duration_s": duration,
        "offered_rps": round((found["requests"] + found["not_sent"]) / duration, 1),
        "admitted": admitted,
        "admitted_rps": round(admitted / duration, 1),
        "refused": sum(errors.get(code, 0) for code in REFUSAL_CODES),
        "other_errors": {code: n for code, n in errors.items() if code not in REFUSAL_CODES},
        "not_sent": found["not_sent"],
        "admitted_latency_ms": {figure: latency[figure] for figure in ("p50", "p99", "max")},
        "all_answers_p99_ms": found["latency_ms"]["p99"],
        "worst_second_p99_ms": max((second["latency_ms"]["p99"] for second in seconds), default=0),
    }


def _seconds(report: dict[str, Any], phase: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's timeline entries of one phase."""
    return [
        second for second in report["timeline"] if phase["start_s"] <= second["t"] < phase["end_s"]
    ]


def _recovery(seconds: list[dict[str, Any]], limit_ms: float) -> dict[str, Any]:
    """When a phase got back to normal (see RECOVERED_AFTER_CALM_S), in seconds into it (None:
    not by its end), and how many of its seconds from then on were not calm."""
    calm = [
        second["errors"] == 0
        and second["not_sent"] == 0
        and second["latency_ms"]["p99"] <= limit_ms
        for second in seconds
    ]
    back = next(
        (
            start
            for start in range(len(calm) - RECOVERED_AFTER_CALM_S + 1)
            if all(calm[start : start + RECOVERED_AFTER_CALM_S])
        ),
        None,
    )
    return {
        "p99_limit_ms": limit_ms,
        "back_after_s": back,
        "slow_seconds_after": None if back is None else calm[back:].count(False),
    }


def _server_state(http_port: int, timeout_s: float = 10.0) -> dict[str, Any]:
    """What the server's /metrics says about its load: gauges now, counters so far."""
    samples = metric_samples(http_port, timeout_s)

    def total(name: str) -> float:
        return sum(sample.value for sample in samples if sample.name == name)

    def by(name: str, label: str) -> dict[str, float]:
        found: dict[str, float] = {}
        for sample in samples:
            if sample.name == name:
                key = sample.labels[label]
                found[key] = found.get(key, 0.0) + sample.value
        return found

    return {
        "queue_depth": total("turnout_queue_depth"),
        "inflight": total("turnout_inflight_requests"),
        "queue_rejected": total("turnout_queue_rejected_total"),
        "queue_expired": total("turnout_queue_expired_total"),
        "queue_abandoned": total("turnout_queue_abandoned_total"),
        "requests_by_status": by("turnout_requests_total", "status"),
        "http_refusals": by("turnout_http_refusals_total", "reason"),
    }


def _counted_since(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The counters' increase from ``before`` to ``after`` (what was zero both times left out)."""
    counted: dict[str, Any] = {}
    for name in ("queue_rejected", "queue_expired", "queue_abandoned"):
        counted[name] = after[name] - before[name]
    for name in ("requests_by_status", "http_refusals"):
        increase = {key: value - before[name].get(key, 0.0) for key, value in after[name].items()}
        counted[name] = {key: value for key, value in increase.items() if value}
    return counted


def _drain(http_port: int) -> tuple[bool, float, dict[str, Any]]:
    """Wait for an empty queue and nothing in flight: whether it came, after how long, and the
    server's state then."""
    started = time.monotonic()
    while True:
        state = _server_state(http_port)
        waited = round(time.monotonic() - started, 2)
        if state["queue_depth"] == 0 and state["inflight"] == 0:
            return True, waited, state
        if waited > DRAIN_TIMEOUT_S:
            return False, waited, state
        time.sleep(0.1)


class _Sampler:
    """The server's memory, queue depth and requests in flight every SAMPLE_S, in a thread, while
    the block runs; ``t_s`` counts from the block's start, a few seconds before the load test's
    second 0 (its processes start and connect first)."""

    def __init__(self, pid: int, http_port: int) -> None:
        self.samples: list[dict[str, float | None]] = []
        self._pid = pid
        self._http_port = http_port
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "_Sampler":
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.wait(SAMPLE_S):
            sample: dict[str, float | None] = {
                "t_s": round(time.monotonic() - started, 1),
                "rss_kib": resident_kib(self._pid),
                "queue_depth": None,
                "inflight": None,
            }
            try:
                state = _server_state(self._http_port, SAMPLE_SCRAPE_TIMEOUT_S)
            except OSError:
                pass  # the front end did not answer in time: the gap in the samples shows it
            else:
                sample["queue_depth"] = state["queue_depth"]
                sample["inflight"] = state["inflight"]
            self.samples.append(sample)


def _peak(samples: list[dict[str, float | None]], figure: str) -> float | None:
    values = [value for sample in samples if (value := sample[figure]) is not None]
    return max(values, default=None)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure the sustainable rate, warm up, soak, and look at the server; returns the report."""
    protocol: str = args.protocol
    with tempfile.TemporaryDirectory() as work_dir:
        work = Path(work_dir)
        model = write_demo_model(work)
        (model.parent.parent / "turnout.yaml").write_text(
            yaml.safe_dump({"max_queue_size": args.max_queue_size})
        )
        ready = work / "turnout.json"
        with served(turnout_command(work / "models", ready), ready):
            http_port, grpc_port = turnout_ports(ready)
            pid = turnout_pid(ready)
            target = (
                f"grpc://127.0.0.1:{grpc_port}"
                if protocol == "grpc"
                else f"http://127.0.0.1:{http_port}"
            )

            def loadtest(name: str, load: list[str], duration_s: float) -> dict[str, Any]:
                return _loadtest(work, name, target, protocol, load, duration_s)

            saturation = loadtest(
                "saturation",
                ["--endpoint", DEMO_MODEL, "--concurrency", str(args.concurrency),
                 "--duration", str(args.saturation_s)],
                args.saturation_s,
            )  # fmt: skip
            sustainable = _phase(saturation, "main")["admitted_rps"]
            if sustainable <= 0:
                raise RuntimeError(f"the saturation run got no answers: {saturation['errors']}")
            overload_rps = round(OVERLOAD_FACTOR * sustainable, 1)
            normal_rps = round(NORMAL_FACTOR * sustainable, 1)
            warmup = loadtest(
                "warmup",
                ["--endpoint", DEMO_MODEL, "--rate", str(normal_rps),
                 "--duration", str(args.warmup_s)],
                args.warmup_s,
            )  # fmt: skip
            time.sleep(args.idle_s)
            baseline_kib = resident_kib(pid)
            before = _server_state(http_port)
            scenario = work / "soak.yaml"
            scenario.write_text(
                yaml.safe_dump(
                    {
                        "phases": [
                            {"name": "overload", "duration_s": args.overload_s,
                             "rate": overload_rps, "endpoints": {DEMO_MODEL: 1.0}},
                            {"name": "normal", "duration_s": args.normal_s,
                             "rate": normal_rps, "endpoints": {DEMO_MODEL: 1.0}},
                        ]
                    }
                )
            )  # fmt: skip
            with _Sampler(pid, http_port) as sampler:
                soak = loadtest(
                    "soak", ["--scenario", str(scenario)], args.overload_s + args.normal_s
                )
            at_end_kib = resident_kib(pid)
            drained, drain_wait_s, at_drain = _drain(http_port)
            time.sleep(args.idle_s)
            after_idle_kib = resident_kib(pid)
            after = _server_state(http_port)

    phases = {
        "saturation": _phase(saturation, "main"),
        "warm-up": _phase(warmup, "main"),
        "overload": _phase(soak, "overload"),
        "normal": _phase(soak, "normal"),
    }
    normal = next(phase for phase in soak["phases"] if phase["name"] == "normal")
    typical_ms = statistics.median(
        second["latency_ms"]["p99"] for second in _seconds(warmup, warmup["phases"][0])
    )
    samples = sampler.samples
    peak_kib = max([at_end_kib, *(int(s["rss_kib"] or 0) for s in samples)])
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "platform": platform.platform(),
        "command": shlex.join(["python", "-m", "turnout.loadtests.soak", *sys.argv[1:]]),
        "model": f"demo mlp 64-256-256-10 FP32, batch 1, {protocol}",
        "settings": {
            "protocol": protocol,
            "concurrency": args.concurrency,
            "saturation_s": args.saturation_s,
            "warmup_s": args.warmup_s,
            "overload_s": args.overload_s,
            "normal_s": args.normal_s,
            "idle_s": args.idle_s,
            "max_queue_size": args.max_queue_size,
        },
        "sustainable_rps": sustainable,
        "rates_rps": {"overload": overload_rps, "normal": normal_rps},
        "phases": phases,
        "recovery": {
            "warmup_typical_second_p99_ms": typical_ms,
            **_recovery(_seconds(soak, normal), round(CALM_P99_FACTOR * typical_ms, 3)),
        },
        "client_cores": {
            "saturation": saturation["client"]["cores_used"],
            "warm-up": warmup["client"]["cores_used"],
            "soak": soak["client"]["cores_used"],
        },
        "memory_kib": {
            "baseline": baseline_kib,
            "peak": peak_kib,
            "at_end": at_end_kib,
            "after_idle": after_idle_kib,
            "after_idle_over_baseline": round(after_idle_kib / baseline_kib, 3),
        },
        "queue": {
            "peak_depth_sampled": _peak(samples, "queue_depth"),
            "peak_inflight_sampled": _peak(samples, "inflight"),
            "samples_unanswered": sum(1 for sample in samples if sample["queue_depth"] is None),
            "drained": drained,
            "drain_wait_s": drain_wait_s,
            "depth_after": at_drain["queue_depth"],
            "inflight_after": at_drain["inflight"],
        },
        "server_counted_during_soak": _counted_since(before, after),
        "samples": samples,
        "timeline": [
            {
                "t_s": second["t"],
                "requests": second["requests"],
                "errors": second["errors"],
                "p50_ms": second["latency_ms"]["p50"],
                "p99_ms": second["latency_ms"]["p99"],
            }
            for second in soak["timeline"]
        ],
    }


def _mib(kib: float) -> str:
    return f"{kib / KIB_PER_MIB:.1f} MiB"


def _print(report: dict[str, Any]) -> None:
    rates = report["rates_rps"]
    settings = report["settings"]
    print(f"{report['date']}, {report['machine']}; {report['model']}")
    print(f"{report['command']}\n")
    print(
        f"sustainable {report['sustainable_rps']} req/s (closed loop, concurrency "
        f"{settings['concurrency']}); overload {rates['overload']} req/s for "
        f"{settings['overload_s']:g} s, then normal {rates['normal']} req/s for "
        f"{settings['normal_s']:g} s; max_queue_size {settings['max_queue_size']}\n"
    )
    print(
        "| phase | s | offered req/s | admitted req/s | refused | other errors | not sent "
        "| admitted p50 ms | admitted p99 ms | admitted max ms | all answers p99 ms "
        "| worst 1-s p99 ms |"
    )
    print("|---" * 12 + "|")
    for name, phase in report["phases"].items():
        latency = phase["admitted_latency_ms"]
        others = ", ".join(f"{code} {n}" for code, n in phase["other_errors"].items()) or "0"
        print(
            f"| {name} | {phase['duration_s']:g} | {phase['offered_rps']} "
            f"| {phase['admitted_rps']} | {phase['refused']} | {others} | {phase['not_sent']} "
            f"| {latency['p50']} | {latency['p99']} | {latency['max']} "
            f"| {phase['all_answers_p99_ms']} | {phase['worst_second_p99_ms']} |"
        )
    recovery = report["recovery"]
    back = recovery["back_after_s"]
    print(
        f"\n- normal phase back to normal ({RECOVERED_AFTER_CALM_S} s in a row without errors, "
        f"each second's p99 within {recovery['p99_limit_ms']} ms, {CALM_P99_FACTOR:g}x the "
        f"warm-up's typical {recovery['warmup_typical_second_p99_ms']} ms): "
        + (
            f"{back} s into it; {recovery['slow_seconds_after']} later seconds over the limit "
            "or with errors"
            if back is not None
            else "not by its end"
        )
    )
    memory = report["memory_kib"]
    print(
        f"- memory (VmRSS): baseline {_mib(memory['baseline'])}, peak {_mib(memory['peak'])}, "
        f"at the end {_mib(memory['at_end'])}, after {settings['idle_s']:g} s idle "
        f"{_mib(memory['after_idle'])} ({memory['after_idle_over_baseline']}x baseline)"
    )
    queue = report["queue"]
    print(
        f"- queue: deepest sampled {queue['peak_depth_sampled']}, most in flight "
        f"{queue['peak_inflight_sampled']} ({queue['samples_unanswered']} samples unanswered); "
        + (
            f"drained {queue['drain_wait_s']} s after the load test ended"
            if queue["drained"]
            else f"NOT drained after {queue['drain_wait_s']} s"
        )
        + f" (depth {queue['depth_after']}, in flight {queue['inflight_after']})"
    )
    counted = report["server_counted_during_soak"]
    print(
        f"- server's counters over the soak: queue rejected {counted['queue_rejected']:g}, "
        f"expired {counted['queue_expired']:g}, abandoned {counted['queue_abandoned']:g}; "
        f"requests by status {counted['requests_by_status']}; "
        f"HTTP refusals {counted['http_refusals']}"
    )
    cores = ", ".join(f"{name} {value}" for name, value in report["client_cores"].items())
    print(f"- load processes' CPU, cores: {cores}")


def _phase_seconds(text: str) -> float:
    seconds = float(text)
    if not 0 < seconds <= MAX_PHASE_S:
        raise argparse.ArgumentTypeError(f"between 0 and {MAX_PHASE_S:g} seconds")
    return seconds


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--protocol", choices=["grpc", "http", "http-binary"], default="grpc")
    parser.add_argument("--concurrency", type=int, default=16, help="callers at saturation")
    parser.add_argument("--saturation-s", type=_phase_seconds, default=15.0)
    parser.add_argument("--warmup-s", type=_phase_seconds, default=10.0)
    parser.add_argument("--overload-s", type=_phase_seconds, default=120.0)
    parser.add_argument("--normal-s", type=_phase_seconds, default=60.0)
    parser.add_argument("--idle-s", type=float, default=5.0, help="idle before each memory read")
    parser.add_argument("--max-queue-size", type=int, default=512, help="the version's queue")
    parser.add_argument("--out", type=Path, help="also write the report here (JSON)")
    args = parser.parse_args()
    report = run(args)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    _print(report)


if __name__ == "__main__":
    main()
