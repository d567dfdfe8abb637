"""What drift monitoring costs the caller: the same Turnout serving the demo MLP with monitoring
off (twice: the second is the control that shows the noise between two identical servers), on
with the default per-second cap, and on for every request, measured side by side.

    python -m turnout.loadtests.drift_overhead [--client python|perf_analyzer] [--pa-venv DIR]
                                               [--rounds N] [--requests N] [--json FILE]

Four Turnout processes (one per setting) serve the same model on loopback. With ``--client
python`` one gRPC client sends one row at a time to each in turn, in rounds, so the machine's
noise falls on all alike (latency at concurrency 1). With ``--client perf_analyzer`` Triton's
perf_analyzer measures each at concurrency 1 and 16 once per round (latency and throughput).
Each figure is the median over rounds. The monitors' own counters, read from /metrics at the
end, show how many requests each sampled and how many windows it compared.
"""

import contextlib
import statistics
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from turnout.loadtests.harness import (
    Endpoint,
    Figures,
    PerfAnalyzer,
    client_benchmark_main,
    interleaved_latencies,
    machine,
    served,
    turnout_ports,
    write_demo_model,
)
from turnout.server.demo import DEMO_MODEL, FEATURES, REFERENCE_SEED, reference_inputs

SETTINGS: dict[str, dict[str, Any] | None] = {
    "monitoring off": None,
    # A second server like the first: how far two identical servers differ in one run.
    "monitoring off (control)": None,
    "monitoring on, default cap (100/s)": {"sample_rate": 1.0},
    "monitoring on, every request": {"sample_rate": 1.0, "max_samples_per_s": 1_000_000},
}
CONCURRENCIES = (1, 16)


def _config(work: Path, name: str, monitoring: dict[str, Any] | None) -> Path:
    model: dict[str, Any] = {"name": DEMO_MODEL, "version": 1, "path": "models/mlp/1/model.onnx"}
    if monitoring is not None:
        model["monitoring"] = {**monitoring, "reference": "models/mlp/reference.npz"}
    config = {
        "server": {"http": {"port": 0}, "grpc": {"port": 0}},
        "models": [model],
        "monitoring": {"jsonl": {"path": f"drift-{name}.jsonl"}},
        "state_dir": f"state-{name}",
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def _servers(work: Path) -> Iterator[dict[str, Endpoint]]:
    with contextlib.ExitStack() as stack:
        endpoints = {}
        for index, (label, monitoring) in enumerate(SETTINGS.items()):
            config = _config(work, f"s{index}", monitoring)
            ready = work / f"s{index}.ready"
            command = [
                sys.executable, "-m", "turnout", "--log-level", "warning", "serve",
                "--config", str(config), "--ready-file", str(ready),
            ]  # fmt: skip
            stack.enter_context(served(command, ready))
            http_port, grpc_port = turnout_ports(ready)
            endpoints[label] = Endpoint(label, "grpc", grpc_port)
            endpoints[label + " (http)"] = Endpoint(label, "http", http_port)
        yield endpoints


def _drift_counters(http_port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        for name in ("turnout_drift_samples_total", "turnout_drift_windows_total"):
            if line.startswith(name + "{"):
                found[name] = found.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        if line.startswith("turnout_drift_samples_skipped_total{") and "rate_cap" in line:
            found["rate_capped"] = float(line.rsplit(" ", 1)[1])
    return found


def _python(endpoints: list[Endpoint], rounds: int, requests: int) -> dict[str, dict[str, float]]:
    return {
        name: {"c1_p50_us": round(p50, 1), "c1_p99_us": round(p99, 1)}
        for name, (p50, p99) in interleaved_latencies(endpoints, rounds, requests).items()
    }


def _perf_analyzer(
    endpoints: list[Endpoint], rounds: int, venv: Path, work: Path
) -> dict[str, dict[str, float]]:
    analyzer = PerfAnalyzer(venv, work)
    cells: dict[tuple[str, int], list[Figures]] = {}
    for _ in range(rounds):
        for concurrency in CONCURRENCIES:
            for endpoint in endpoints:
                address = f"127.0.0.1:{endpoint.port}"
                figures = analyzer.measure(DEMO_MODEL, address, "grpc", concurrency, FEATURES)
                cells.setdefault((endpoint.name, concurrency), []).append(figures)
    results: dict[str, dict[str, float]] = {endpoint.name: {} for endpoint in endpoints}
    for (name, concurrency), runs in cells.items():
        results[name] |= {
            f"c{concurrency}_p50_us": statistics.median(run.p50_us for run in runs),
            f"c{concurrency}_p99_us": statistics.median(run.p99_us for run in runs),
            f"c{concurrency}_rps": round(statistics.median(run.throughput for run in runs), 1),
        }
    return results


def run(client: str, rounds: int, requests: int, pa_venv: Path | None) -> dict[str, object]:
    """Measure each setting; returns the report."""
    with tempfile.TemporaryDirectory() as work_dir:
        work = Path(work_dir)
        model = write_demo_model(work)
        reference = reference_inputs(seed=REFERENCE_SEED)
        np.savez(model.parent.parent / "reference.npz", INPUT0=reference)
        with _servers(work) as every:
            grpc_endpoints = [every[label] for label in SETTINGS]
            if client == "perf_analyzer":
                if pa_venv is None:
                    raise SystemExit("--client perf_analyzer needs --pa-venv")
                results = _perf_analyzer(grpc_endpoints, rounds, pa_venv, work)
            else:
                results = _python(grpc_endpoints, rounds, requests)
            for label in SETTINGS:
                results[label] |= _drift_counters(every[label + " (http)"].port)
    off = results["monitoring off"]
    ratios = {
        f"{label} / off ({figure})": round(row[figure] / off[figure], 3)
        for label, row in results.items()
        if label != "monitoring off"
        for figure in row
        if figure.endswith(("_p50_us", "_p99_us", "_rps"))
    }
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "client": client,
        "model": "demo mlp 64-256-256-10 FP32, batch 1, gRPC",
        "results": results,
        "ratios": ratios,
    }


def _table(report: dict[str, Any]) -> str:
    results: dict[str, dict[str, float]] = report["results"]
    columns = sorted({figure for row in results.values() for figure in row})
    lines = ["| setting | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for label, row in results.items():
        lines.append(f"| {label} | " + " | ".join(f"{row.get(c, '-')}" for c in columns) + " |")
    ratios = [f"- {name}: {value}" for name, value in report["ratios"].items()]
    return "\n".join([*lines, "", *ratios])


def main() -> None:
    """Command-line entry point."""
    client_benchmark_main((__doc__ or "").split("\n\n")[0], run, _table)


if __name__ == "__main__":
    main()
