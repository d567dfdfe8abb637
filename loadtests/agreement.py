"""Does ``turnout loadtest`` measure what Triton's perf_analyzer measures? Both drive the same
Turnout (the demo MLP, one version, over gRPC or HTTP with binary tensors), taking turns, in
rounds:

- at a fixed request rate below capacity (perf_analyzer ``--request-rate-range R:R
  --request-distribution constant``; the load test ``arrival: fixed`` at R), comparing
  throughput and p50 latency;
- at saturation (``--concurrency-range C:C``; the load test ``--concurrency C``), comparing
  throughput, and what each client spent of the shared CPU.

    python -m turnout.loadtests.agreement --pa-venv DIR [--protocol grpc|http-binary]
                                          [--rate R] [--concurrency C] [--duration S]
                                          [--rounds N] [--json FILE]

Each figure is the median over rounds; the ratios are load test / perf_analyzer.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from turnout.loadtests.harness import (
    PerfAnalyzer,
    machine,
    served,
    turnout_command,
    turnout_ports,
    write_demo_model,
)
from turnout.server.demo import DEMO_MODEL, FEATURES


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _perf_analyzer(
    analyzer: PerfAnalyzer,
    protocol: str,
    address: str,
    concurrency: int,
    rate: float | None,
    window_ms: int,
) -> dict[str, float]:
    before, started = _children_cpu(), time.perf_counter()
    figures = analyzer.measure(
        DEMO_MODEL, address, protocol, concurrency, FEATURES, window_ms, request_rate=rate
    )
    return {
        "throughput_rps": figures.throughput,
        "p50_ms": figures.p50_us / 1000,
        "p99_ms": figures.p99_us / 1000,
        # Over its whole run, its stability trials included.
        "client_cores": (_children_cpu() - before) / (time.perf_counter() - started),
    }


def _loadtest(
    work: Path,
    protocol: str,
    address: str,
    concurrency: int,
    rate: float | None,
    duration_s: float,
) -> dict[str, float]:
    phase: dict[str, Any] = {"name": "main", "duration_s": duration_s, "endpoints": {"mlp": 1}}
    if rate is None:
        phase["concurrency"] = concurrency
    else:
        phase |= {"rate": rate, "arrival": "fixed"}
    scenario = work / "scenario.yaml"
    scenario.write_text(yaml.safe_dump({"phases": [phase]}))
    report = work / "loadtest-report"
    finished = subprocess.run(
        [sys.executable, "-m", "turnout", "loadtest", "--target",
         f"{'grpc' if protocol == 'grpc' else 'http'}://{address}", "--protocol", protocol,
         "--scenario", str(scenario), "--report", str(report), "--quiet", "--processes", "1"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if finished.returncode != 0:
        raise RuntimeError(f"turnout loadtest failed:\n{finished.stdout}{finished.stderr}")
    figures = json.loads((report / "report.json").read_text())
    return {
        "throughput_rps": figures["throughput_rps"],
        "p50_ms": figures["latency_ms"]["p50"],
        "p99_ms": figures["latency_ms"]["p99"],
        "client_cores": figures["client"]["cores_used"],
    }


def run(
    pa_venv: Path, protocol: str, rate: float, concurrency: int, duration_s: float, rounds: int
) -> dict[str, Any]:
    """Measure both clients in both modes; returns the report."""
    cells: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as work_dir:
        work = Path(work_dir)
        model = write_demo_model(work)
        ready = work / "turnout.json"
        analyzer = PerfAnalyzer(pa_venv, work)
        window_ms = int(duration_s * 1000)
        with served(turnout_command(model.parent.parent.parent, ready), ready):
            http_port, grpc_port = turnout_ports(ready)
            address = f"127.0.0.1:{grpc_port if protocol == 'grpc' else http_port}"
            for _ in range(rounds):
                for mode, mode_rate in (("fixed rate", rate), ("saturation", None)):
                    cells.setdefault(f"perf_analyzer, {mode}", []).append(
                        _perf_analyzer(
                            analyzer, protocol, address, concurrency, mode_rate, window_ms
                        )
                    )
                    cells.setdefault(f"turnout loadtest, {mode}", []).append(
                        _loadtest(work, protocol, address, concurrency, mode_rate, duration_s)
                    )
    results = {
        name: {
            figure: round(statistics.median(run[figure] for run in runs), 3) for figure in runs[0]
        }
        for name, runs in cells.items()
    }
    ratios = {}
    for mode in ("fixed rate", "saturation"):
        ours, theirs = results[f"turnout loadtest, {mode}"], results[f"perf_analyzer, {mode}"]
        for figure in ("throughput_rps", "p50_ms"):
            ratios[f"{mode}: {figure} loadtest / perf_analyzer"] = round(
                ours[figure] / theirs[figure], 3
            )
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "model": f"demo mlp 64-256-256-10 FP32, batch 1, {protocol}",
        "settings": {"rate": rate, "concurrency": concurrency, "duration_s": duration_s},
        "results": results,
        "ratios": ratios,
    }


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--pa-venv", type=Path, required=True, help="the venv of perf_analyzer")
    parser.add_argument("--protocol", choices=["grpc", "http-binary"], default="grpc")
    parser.add_argument("--rate", type=float, default=300.0, help="requests/s of the fixed rate")
    parser.add_argument("--concurrency", type=int, default=16, help="callers at saturation")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    report = run(
        args.pa_venv, args.protocol, args.rate, args.concurrency, args.duration, args.rounds
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(f"{report['date']}, {report['machine']}; {report['model']}; {report['settings']}\n")
    print("| client, mode | req/s | p50 ms | p99 ms | client cores |\n|---|---|---|---|---|")
    for name, row in report["results"].items():
        print(
            f"| {name} | {row['throughput_rps']} | {row['p50_ms']} | {row['p99_ms']} "
            f"| {row['client_cores']} |"
        )
    print()
    for name, value in report["ratios"].items():
        print(f"- {name}: {value}")


if __name__ == "__main__":
    main()
