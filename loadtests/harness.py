"""What the benchmarks share: starting servers on loopback, and driving Triton's perf_analyzer
(installed in a venv of its own, see BENCHMARKS.md) and reading its figures."""

import argparse
import contextlib
import csv
import http.client
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import orjson
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from turnout.protos import inference_pb2 as pb
from turnout.protos import inference_pb2_grpc as pb_grpc
from turnout.server.demo import DEMO_MODEL, FEATURES, build_mlp

START_TIMEOUT_S = 120.0

Call = Callable[[], object]


@contextlib.contextmanager
def served(args: list[str], port_file: Path) -> Iterator[None]:
    """Run a server until the block ends; it is ready once it has written ``port_file``."""
    with served_when(args, lambda: port_file.exists() and bool(port_file.read_text())):
        yield


@contextlib.contextmanager
def served_when(
    args: list[str], ready: Callable[[], bool], cwd: Path | None = None
) -> Iterator[None]:
    """Run a server (in ``cwd``) until the block ends; it is ready once ``ready()`` is true."""
    process = subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{' '.join(args)} did not start")
            time.sleep(0.05)
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def turnout_command(repository: Path, ready_file: Path) -> list[str]:
    """``turnout serve`` on a model repository, on free ports, quiet."""
    return [
        sys.executable, "-m", "turnout", "--log-level", "warning", "serve",
        "--model-repository", str(repository), "--http-port", "0", "--grpc-port", "0",
        "--ready-file", str(ready_file), "--state-dir", str(ready_file.parent / "state"),
    ]  # fmt: skip


def turnout_ports(ready_file: Path) -> tuple[int, int]:
    """The HTTP and gRPC ports a started Turnout reported."""
    ports = json.loads(ready_file.read_text())
    return int(ports["http_port"]), int(ports["grpc_port"])


def write_demo_model(work: Path) -> Path:
    """The demo's MLP (version 1's weights) as ``work/models/mlp/1/model.onnx``, a one-model
    repository under ``work/models``; returns the model's path."""
    model = work / "models" / DEMO_MODEL / "1" / "model.onnx"
    model.parent.mkdir(parents=True)
    onnx.save(build_mlp(seed=1), model)
    return model


def sample_row(features: int) -> np.ndarray:
    """One deterministic input row."""
    return np.random.default_rng(0).standard_normal((1, features)).astype(np.float32)


def machine() -> str:
    """A one-line description of the machine and the software measured."""
    return (
        f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, "
        f"Python {platform.python_version()}, onnxruntime {ort.__version__}"
    )


@dataclass(frozen=True)
class Figures:
    """What perf_analyzer measured at one concurrency."""

    throughput: float
    p50_us: float
    p99_us: float


class PerfAnalyzer:
    """Triton's perf_analyzer from the venv it was installed in."""

    def __init__(self, venv: Path, work: Path) -> None:
        self._binary = venv / "bin" / "perf_analyzer"
        cuda_lib = next(venv.glob("lib/python3*/site-packages/nvidia/cuda_runtime/lib"), None)
        if not self._binary.exists() or cuda_lib is None:
            raise SystemExit(f"no perf_analyzer in {venv}; see BENCHMARKS.md to install it")
        self._environment = {**os.environ, "LD_LIBRARY_PATH": str(cuda_lib)}
        self._work = work

    def measure(
        self,
        model: str,
        address: str,
        protocol: str,
        concurrency: int,
        features: int,
        window_ms: int = 2000,
        request_rate: float | None = None,
    ) -> Figures:
        """Run one cell. ``protocol`` is ``grpc``, ``grpc-stream``, ``http`` (JSON tensors) or
        ``http-binary``. With ``request_rate``, requests are sent at that constant rate
        (open loop) instead of by ``concurrency`` callers."""
        data = self._work / f"input-{features}.json"
        if not data.exists():
            content = sample_row(features).reshape(-1).tolist()
            data.write_text(
                json.dumps({"data": [{"INPUT0": {"content": content, "shape": [features]}}]})
            )
        report = self._work / "perf_analyzer.csv"
        report.unlink(missing_ok=True)
        args = [str(self._binary), "-m", model, "-u", address,
                "-i", "grpc" if protocol.startswith("grpc") else "http",
                "--input-data", str(data), "--measurement-interval", str(window_ms),
                "--max-trials", "10", "--stability-percentage", "100",
                "-f", str(report)]  # fmt: skip
        if request_rate is None:
            args += ["--concurrency-range", f"{concurrency}:{concurrency}"]
        else:
            rate = f"{request_rate:g}"
            args += ["--request-rate-range", f"{rate}:{rate}", "--request-distribution", "constant"]
        if protocol == "grpc-stream":
            args.append("--streaming")
        if protocol == "http":
            args += ["--input-tensor-format", "json", "--output-tensor-format", "json"]
        finished = subprocess.run(
            args, env=self._environment, capture_output=True, text=True, timeout=600, check=False
        )
        if finished.returncode != 0 or not report.exists():
            raise RuntimeError(
                f"perf_analyzer on {address} ({protocol}) failed:\n"
                f"{finished.stdout}{finished.stderr}"
            )
        with report.open() as rows:
            row = next(csv.DictReader(rows))
        return Figures(
            float(row["Inferences/Second"]), float(row["p50 latency"]), float(row["p99 latency"])
        )


@dataclass(frozen=True)
class Endpoint:
    """A server to measure: its name, protocol and address, and whether it is Turnout."""

    name: str
    protocol: str  # "grpc", "http" (JSON tensors) or "http-binary"
    port: int


def python_call(endpoint: Endpoint) -> tuple[Call, Callable[[], None]]:
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


def time_calls(call: Call, count: int) -> list[float]:
    """Client-observed latencies of ``count`` calls one after another, microseconds."""
    samples = []
    for _ in range(count):
        started = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - started) / 1000)
    return samples


def interleaved_latencies(
    endpoints: list[Endpoint], rounds: int, requests: int
) -> dict[str, tuple[float, float]]:
    """p50 and p99 (µs) of ``requests`` one-at-a-time calls to each endpoint, the endpoints
    taking turns over ``rounds`` rounds after a warm-up, so that noise falls on all alike."""
    calls = {endpoint.name: python_call(endpoint) for endpoint in endpoints}
    for call, _ in calls.values():
        time_calls(call, max(200, requests // 10))
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, (call, _) in calls.items():
            samples[name] += time_calls(call, requests // rounds)
    for _, close in calls.values():
        close()
    return {
        name: (statistics.median(values), float(np.percentile(values, 99)))
        for name, values in samples.items()
    }


def client_benchmark_main(
    description: str,
    run: Callable[[str, int, int, Path | None], dict[str, Any]],
    table: Callable[[dict[str, Any]], str],
) -> None:
    """The command line of a benchmark driven by Python's clients or perf_analyzer."""
    parser = argparse.ArgumentParser(description=description)
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
    print(table(report))


def turnout_pid(ready_file: Path) -> int:
    """The process id a started Turnout reported."""
    return int(json.loads(ready_file.read_text())["pid"])


def resident_kib(pid: int) -> int:
    """A process's resident set size (VmRSS), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"process {pid} reports no VmRSS")


def metric_samples(http_port: int, timeout_s: float = 10.0) -> list[Sample]:
    """Every sample a server's ``GET /metrics`` exports (counters under their ``_total`` name)."""
    url = f"http://127.0.0.1:{http_port}/metrics"
    with urllib.request.urlopen(url, timeout=timeout_s) as answer:
        text = answer.read().decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]
