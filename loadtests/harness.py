"""What the benchmarks share: starting servers on loopback, and driving Triton's perf_analyzer
(installed in a venv of its own, see BENCHMARKS.md) and reading its figures."""

import contextlib
import csv
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

START_TIMEOUT_S = 120.0


@contextlib.contextmanager
def served(args: list[str], port_file: Path) -> Iterator[None]:
    """Run a server until the block ends; it is ready once it has written ``port_file``."""
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not port_file.exists() or not port_file.read_text():
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
    ) -> Figures:
        """Run one cell. ``protocol`` is ``grpc``, ``grpc-stream``, ``http`` (JSON tensors) or
        ``http-binary``."""
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
                "--input-data", str(data), "--concurrency-range", f"{concurrency}:{concurrency}",
                "--measurement-interval", str(window_ms), "--max-trials", "10",
                "--stability-percentage", "100", "-f", str(report)]  # fmt: skip
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
