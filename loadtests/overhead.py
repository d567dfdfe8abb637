"""Per-request overhead at concurrency 1: Turnout against ONNX Runtime called in-process and
against the floor of each transport (loadtests/bare.py), measured side by side in one run.

    python -m turnout.loadtests.overhead [--client python|perf_analyzer] [--pa-venv DIR]
                                         [--rounds N] [--requests N] [--json FILE]

The model is the demo's 64 → 256 → 256 → 10 MLP, one row per request, sent as the same bytes
to Turnout and to the floor. With ``--client python`` one client in this process drives every
target, the targets taking turns in rounds so that the machine's noise falls on all alike. With
``--client perf_analyzer`` Triton's perf_analyzer (installed in its own venv, see
BENCHMARKS.md) measures each target once per round. Latencies are client-observed,
microseconds; each figure is the median over rounds.
"""

import contextlib
import statistics
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from turnout.loadtests.harness import (
    Endpoint,
    Figures,
    PerfAnalyzer,
    client_benchmark_main,
    interleaved_latencies,
    machine,
    sample_row,
    served,
    time_calls,
    turnout_command,
    turnout_ports,
    write_demo_model,
)
from turnout.models.providers import CPU
from turnout.models.session import SessionSettings, create_session
from turnout.server.demo import DEMO_MODEL, FEATURES


@contextlib.contextmanager
def _servers(work: Path, model: Path) -> Iterator[list[Endpoint]]:
    """Turnout (model-repository mode) and the two bare servers, all on loopback."""
    ready = work / "turnout.json"
    grpc_port, http_port = work / "bare-grpc.port", work / "bare-http.port"
    bare = [sys.executable, "-m", "turnout.loadtests.bare"]
    with (
        served(turnout_command(model.parent.parent.parent, ready), ready),
        served([*bare, "grpc", str(model), str(grpc_port)], grpc_port),
        served([*bare, "http", str(model), str(http_port)], http_port),
    ):
        turnout_http, turnout_grpc = turnout_ports(ready)
        yield [
            Endpoint("turnout grpc", "grpc", turnout_grpc),
            Endpoint("bare grpc.aio", "grpc", int(grpc_port.read_text())),
            Endpoint("turnout http json", "http", turnout_http),
            Endpoint("bare asgi json", "http", int(http_port.read_text())),
            Endpoint("turnout http binary", "http-binary", turnout_http),
        ]


def _measure_perf_analyzer(
    endpoints: list[Endpoint], rounds: int, venv: Path, work: Path
) -> dict[str, tuple[float, float]]:
    analyzer = PerfAnalyzer(venv, work)
    runs: dict[str, list[Figures]] = {endpoint.name: [] for endpoint in endpoints}
    for _ in range(rounds):
        for endpoint in endpoints:
            address = f"127.0.0.1:{endpoint.port}"
            runs[endpoint.name].append(
                analyzer.measure(DEMO_MODEL, address, endpoint.protocol, 1, FEATURES)
            )
    return {
        name: (
            statistics.median(figures.p50_us for figures in cells),
            statistics.median(figures.p99_us for figures in cells),
        )
        for name, cells in runs.items()
    }


def _in_process(model: Path, requests: int) -> tuple[float, float]:
    session = create_session(model, SessionSettings(), [(CPU, {})], instance_count=1)
    feed = {"INPUT0": sample_row(FEATURES)}
    samples = time_calls(lambda: session.run(None, feed), requests)
    return statistics.median(samples), float(np.percentile(samples, 99))


def run(client: str, rounds: int, requests: int, pa_venv: Path | None) -> dict[str, object]:
    """Measure every target; returns the report."""
    with tempfile.TemporaryDirectory() as work_dir:
        work = Path(work_dir)
        model = write_demo_model(work)
        with _servers(work, model) as endpoints:
            if client == "perf_analyzer":
                if pa_venv is None:
                    raise SystemExit("--client perf_analyzer needs --pa-venv")
                figures = _measure_perf_analyzer(endpoints, rounds, pa_venv, work)
            else:
                figures = interleaved_latencies(endpoints, rounds, requests)
        figures = {"onnxruntime in-process": _in_process(model, requests), **figures}
    results = {
        name: {"p50_us": round(p50, 1), "p99_us": round(p99, 1)}
        for name, (p50, p99) in figures.items()
    }
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "client": client,
        "model": "demo mlp 64-256-256-10 FP32, batch 1",
        "results": results,
        "ratios": {
            "turnout grpc / bare grpc.aio (p50)": _ratio(results, "turnout grpc", "bare grpc.aio"),
            "turnout http json / bare asgi json (p50)": _ratio(
                results, "turnout http json", "bare asgi json"
            ),
        },
    }


def _ratio(results: dict[str, dict[str, float]], turnout: str, floor: str) -> float:
    return round(results[turnout]["p50_us"] / results[floor]["p50_us"], 3)


def _table(report: dict[str, object]) -> str:
    results = report["results"]
    ratios = report["ratios"]
    assert isinstance(results, dict)
    assert isinstance(ratios, dict)
    base = results["onnxruntime in-process"]["p50_us"]
    lines = ["| target | p50 µs | p99 µs | p50 over onnxruntime µs |", "|---|---|---|---|"]
    for name, row in results.items():
        lines.append(f"| {name} | {row['p50_us']} | {row['p99_us']} | {row['p50_us'] - base:.1f} |")
    return "\n".join([*lines, "", *(f"- {name}: {value}" for name, value in ratios.items())])


def main() -> None:
    """Command-line entry point."""
    client_benchmark_main((__doc__ or "").split("\n\n")[0], run, _table)


if __name__ == "__main__":
    main()
