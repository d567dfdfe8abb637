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

import argparse
import contextlib
import http.client
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
import numpy as np
import onnx
import orjson

from turnout.loadtests.harness import (
    Figures,
    PerfAnalyzer,
    machine,
    sample_row,
    served,
    turnout_command,
    turnout_ports,
)
from turnout.models.providers import CPU
from turnout.models.session import SessionSettings, create_session
from turnout.protos import inference_pb2 as pb
from turnout.protos import inference_pb2_grpc as pb_grpc
from turnout.server.demo import DEMO_MODEL, FEATURES, build_mlp

Call = Callable[[], object]


@dataclass(frozen=True)
class Endpoint:
    """A server to measure: its name, protocol and address, and whether it is Turnout."""

    name: str
    protocol: str  # "grpc", "http" (JSON tensors) or "http-binary"
    port: int


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


def _python_call(endpoint: Endpoint) -> tuple[Call, Callable[[], None]]:
    """A call sending one inference with Python's own clients, and how to close them."""
    if endpoint.protocol == "grpc":
        channel = grpc.insecure_channel(f"127.0.0.1:{endpoint.port}")
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name=DEMO_MODEL)
        request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, FEATURES])
        request.raw_input_contents.append(sample_row(FEATURES).tobytes())
        return lambda: stub.ModelInfer(request), channel.close
    connection = http.client.HTTPConnection("127.0.0.1", endpoint.port)
    tensor = {"name": "INPUT0", "datatype": "FP32", "shape": [1, FEATURES]}
    headers = {"Content-Type": "application/json"}
    if endpoint.protocol == "http":
        body = orjson.dumps(
            {"inputs": [{**tensor, "data": sample_row(FEATURES).reshape(-1).tolist()}]}
        )
    else:
        raw = sample_row(FEATURES).tobytes()
        header = orjson.dumps(
            {
                "inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}],
                "parameters": {"binary_data_output": True},
            }
        )
        body = header + raw
        headers = {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(header)),
        }

    def call() -> object:
        connection.request("POST", f"/v2/models/{DEMO_MODEL}/infer", body, headers)
        response = connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {data[:200]!r}")
        return data

    return call, connection.close


def _time_calls(call: Call, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - started) / 1000)
    return samples


def _measure_python(
    endpoints: list[Endpoint], rounds: int, requests: int
) -> dict[str, list[float]]:
    calls = {endpoint.name: _python_call(endpoint) for endpoint in endpoints}
    for call, _ in calls.values():
        _time_calls(call, max(200, requests // 10))
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, (call, _) in calls.items():
            samples[name] += _time_calls(call, requests // rounds)
    for _, close in calls.values():
        close()
    return {
        name: [statistics.median(values), float(np.percentile(values, 99))]
        for name, values in samples.items()
    }


def _measure_perf_analyzer(
    endpoints: list[Endpoint], rounds: int, venv: Path, work: Path
) -> dict[str, list[float]]:
    analyzer = PerfAnalyzer(venv, work)
    runs: dict[str, list[Figures]] = {endpoint.name: [] for endpoint in endpoints}
    for _ in range(rounds):
        for endpoint in endpoints:
            address = f"127.0.0.1:{endpoint.port}"
            runs[endpoint.name].append(
                analyzer.measure(DEMO_MODEL, address, endpoint.protocol, 1, FEATURES)
            )
    return {
        name: [
            statistics.median(figures.p50_us for figures in cells),
            statistics.median(figures.p99_us for figures in cells),
        ]
        for name, cells in runs.items()
    }


def _in_process(model: Path, requests: int) -> list[float]:
    session = create_session(model, SessionSettings(), [(CPU, {})], instance_count=1)
    feed = {"INPUT0": sample_row(FEATURES)}
    samples = _time_calls(lambda: session.run(None, feed), requests)
    return [statistics.median(samples), float(np.percentile(samples, 99))]


def run(client: str, rounds: int, requests: int, pa_venv: Path | None) -> dict[str, object]:
    """Measure every target; returns the report."""
    with tempfile.TemporaryDirectory() as work_dir:
        work = Path(work_dir)
        model = work / "models" / DEMO_MODEL / "1" / "model.onnx"
        model.parent.mkdir(parents=True)
        onnx.save(build_mlp(seed=1), model)
        with _servers(work, model) as endpoints:
            if client == "perf_analyzer":
                if pa_venv is None:
                    raise SystemExit("--client perf_analyzer needs --pa-venv")
                figures = _measure_perf_analyzer(endpoints, rounds, pa_venv, work)
            else:
                figures = _measure_python(endpoints, rounds, requests)
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
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--client", choices=["python", "perf_analyzer"], default="python")
    parser.add_argument("--pa-venv", type=Path, help="the venv holding perf_analyzer")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4000, help="per target (python client)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    report = run(args.client, args.rounds, args.requests, args.pa_venv)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(f"{report['date']}, {report['machine']}; {report['model']}; client {report['client']}\n")
    print(_table(report))


if __name__ == "__main__":
    main()
