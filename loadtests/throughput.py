"""Throughput under concurrency: Turnout with dynamic batching on and off, the bare transports,
optionally MLServer, and ONNX Runtime in-process at the batch sizes Turnout's batcher formed,
side by side in one run.

    python -m turnout.loadtests.throughput --pa-venv .venv-pa [--mlserver-venv .venv-mls]
                                           [--concurrency 1,4,16,64] [--window-ms 2000]
                                           [--json FILE]

Two models: the demo's 64 → 256 → 256 → 10 MLP ("mlp", overhead-bound) and a
512 → 2048 → 2048 → 512 MLP ("big", compute-bound). Triton's perf_analyzer sends batch-1
requests at each concurrency over gRPC (unary and streaming) and HTTP (JSON tensors).
With ``--mlserver-venv``, MLServer from that venv serves "mlp" through the runtime in
mlserver_runtime.py (ONNX Runtime in the server process), measured over gRPC and HTTP.
"""

import argparse
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx

from turnout.loadtests.harness import (
    PerfAnalyzer,
    machine,
    sample_row,
    served,
    served_when,
    turnout_command,
    turnout_ports,
)
from turnout.models.providers import CPU
from turnout.models.session import SessionSettings, create_session
from turnout.protos import inference_pb2 as pb
from turnout.protos import inference_pb2_grpc as pb_grpc
from turnout.server.demo import build_mlp

MODELS = {"mlp": (64, 256, 10), "big": (512, 2048, 512)}
BATCHING_OFF = "dynamic_batching: {enabled: false}\n"
MLSERVER_RUNTIME = Path(__file__).with_name("mlserver_runtime.py")
# 0 runs the model in MLServer's server process, on its event loop: the in-process Python model
# of issue 3, in one process as Turnout is. MLServer's default, 1, is not one process: it hands
# every request over IPC to an inference pool of one worker process (whose workers, with uvloop
# >= 0.22 as in .venv-mls, die at start: SeldonIO/MLServer#2286).
MLSERVER_PARALLEL_WORKERS = 0


@dataclass(frozen=True)
class Cell:
    """One measured configuration."""

    model: str
    target: str
    protocol: str
    concurrency: int
    throughput: float
    p50_us: float
    p99_us: float
    average_batch: float | None


@dataclass(frozen=True)
class Report:
    """Every cell of one run, and ONNX Runtime alone on the big model by batch size."""

    date: str
    machine: str
    client: str
    cells: list[Cell]
    in_process_rows_per_second: dict[int, float]
    mlserver: str | None


def _write_repository(root: Path, batching: bool) -> None:
    for name, (features, hidden, classes) in MODELS.items():
        path = root / name / "1" / "model.onnx"
        path.parent.mkdir(parents=True)
        onnx.save(build_mlp(seed=1, features=features, hidden=hidden, classes=classes), path)
        if not batching:
            (root / name / "turnout.yaml").write_text(BATCHING_OFF)


def _counts(http_port: int, model: str) -> tuple[int, int]:
    """(inference_count, execution_count) from Turnout's statistics extension."""
    url = f"http://127.0.0.1:{http_port}/v2/models/{model}/stats"
    with urllib.request.urlopen(url, timeout=10) as reply:
        (stats,) = json.load(reply)["model_stats"]
    return int(stats["inference_count"]), int(stats["execution_count"])


def _in_process_rows_per_second(model: Path, features: int, batch: int) -> float:
    """Rows per second ONNX Runtime alone achieves on batches of ``batch`` rows."""
    session = create_session(model, SessionSettings(), [(CPU, {})], instance_count=1)
    feed = {"INPUT0": np.repeat(sample_row(features), batch, axis=0)}
    for _ in range(20):
        session.run(None, feed)
    runs = 0
    started = time.perf_counter()
    while time.perf_counter() - started < 2.0:
        session.run(None, feed)
        runs += 1
    return runs * batch / (time.perf_counter() - started)


def _free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free when asked."""
    with contextlib.ExitStack() as stack:
        listeners = [
            stack.enter_context(socket.create_server(("127.0.0.1", 0))) for _ in range(count)
        ]
        return [listener.getsockname()[1] for listener in listeners]


def _mlserver_settings(http_port: int, grpc_port: int, metrics_port: int) -> dict[str, Any]:
    """MLServer's ``settings.json``."""
    return {
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "parallel_workers": MLSERVER_PARALLEL_WORKERS,
        # Turnout runs at log level warning here; MLServer's default, debug on, writes an access
        # log line for every request, over HTTP and gRPC.
        "debug": False,
    }


def _mlserver_ready(http_port: int, grpc_port: int) -> bool:
    """Whether MLServer and its model answer ready over HTTP, and its gRPC server answers."""
    for path in ("health/ready", "models/mlp/ready"):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/{path}", timeout=1):
                pass
        except OSError:  # refused while it starts; HTTPError (not ready) is an OSError too
            return False
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        try:
            reply = pb_grpc.GRPCInferenceServiceStub(channel).ServerReady(
                pb.ServerReadyRequest(), timeout=1
            )
        except grpc.RpcError:
            return False
    return bool(reply.ready)


def _mlserver_description(venv: Path) -> str:
    script = "import mlserver, onnxruntime; print(mlserver.__version__, onnxruntime.__version__)"
    found = subprocess.run(
        [str(venv / "bin" / "python"), "-c", script], capture_output=True, text=True, check=True
    )
    mlserver_version, onnxruntime_version = found.stdout.split()
    return (
        f"MLServer {mlserver_version} (onnxruntime {onnxruntime_version}), "
        f"parallel_workers {MLSERVER_PARALLEL_WORKERS}"
    )


@contextlib.contextmanager
def _mlserver(venv: Path | None, work: Path, model: Path) -> Iterator[dict[str, int]]:
    """MLServer from ``venv`` serving ``model`` as "mlp" until the block ends: its ports by
    protocol, none without a venv."""
    if venv is None:
        yield {}
        return
    http_port, grpc_port, metrics_port = _free_ports(3)
    root = work / "mlserver"
    (root / "mlp").mkdir(parents=True)
    (root / "settings.json").write_text(
        json.dumps(_mlserver_settings(http_port, grpc_port, metrics_port))
    )
    (root / "mlp" / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "mlp",
                "implementation": "mlserver_runtime.OnnxRuntimeModel",
                "parameters": {"uri": str(model)},
            }
        )
    )
    # MLServer puts the folder it serves on sys.path, so a copy there is importable without
    # PYTHONPATH, which, pointed at loadtests/, would let its modules shadow MLServer's imports.
    runtime = shutil.copy(MLSERVER_RUNTIME, root)
    # Run as a script, the runtime adds the gRPC ModelConfig method perf_analyzer needs before
    # it hands over to MLServer's own command line (what bin/mlserver runs).
    command = [str(venv.absolute() / "bin" / "python"), str(runtime), "start", str(root)]
    with served_when(command, lambda: _mlserver_ready(http_port, grpc_port), cwd=root):
        yield {"grpc": grpc_port, "http": http_port}


def run(
    pa_venv: Path, concurrencies: list[int], window_ms: int, mlserver_venv: Path | None = None
) -> Report:
    """Measure every cell (MLServer's too with its venv); returns the report."""
    cells: list[Cell] = []
    with tempfile.TemporaryDirectory() as work_dir:
        work = Path(work_dir)
        on, off = work / "batching-on", work / "batching-off"
        _write_repository(on, batching=True)
        _write_repository(off, batching=False)
        small = on / "mlp" / "1" / "model.onnx"
        ready_on, ready_off = work / "on.json", work / "off.json"
        grpc_port, http_port = work / "bare-grpc.port", work / "bare-http.port"
        bare = [sys.executable, "-m", "turnout.loadtests.bare"]
        analyzer = PerfAnalyzer(pa_venv, work)
        with (
            served(turnout_command(on, ready_on), ready_on),
            served(turnout_command(off, ready_off), ready_off),
            served([*bare, "grpc", str(small), str(grpc_port)], grpc_port),
            served([*bare, "http", str(small), str(http_port)], http_port),
            _mlserver(mlserver_venv, work, small) as mlserver_ports,
        ):
            turnout = {
                "batching on": turnout_ports(ready_on),
                "batching off": turnout_ports(ready_off),
            }
            bare_grpc = int(grpc_port.read_text())
            ports = {
                ("bare", "grpc"): bare_grpc,
                ("bare", "grpc-stream"): bare_grpc,
                ("bare", "http"): int(http_port.read_text()),
            }
            ports |= {("mlserver", protocol): port for protocol, port in mlserver_ports.items()}
            plan: list[tuple[str, str, str]] = [
                ("mlp", "batching on", "grpc"),
                ("mlp", "batching on", "grpc-stream"),
                ("mlp", "batching on", "http"),
                ("mlp", "batching off", "grpc"),
                ("mlp", "batching off", "http"),
                ("mlp", "bare", "grpc"),
                ("mlp", "bare", "grpc-stream"),
                ("mlp", "bare", "http"),
                *(("mlp", "mlserver", protocol) for protocol in mlserver_ports),
                ("big", "batching on", "grpc"),
                ("big", "batching off", "grpc"),
            ]
            for concurrency in concurrencies:
                for model, target, protocol in plan:
                    features = MODELS[model][0]
                    if target not in turnout:
                        port = ports[target, protocol]
                        figures = analyzer.measure(
                            model, f"127.0.0.1:{port}", protocol, concurrency, features, window_ms
                        )
                        batch = None
                    else:
                        http, grpc = turnout[target]
                        port = grpc if protocol.startswith("grpc") else http
                        before = _counts(http, model)
                        figures = analyzer.measure(
                            model, f"127.0.0.1:{port}", protocol, concurrency, features, window_ms
                        )
                        after = _counts(http, model)
                        executions = after[1] - before[1]
                        batch = (after[0] - before[0]) / executions if executions else None
                    cells.append(
                        Cell(
                            model,
                            target,
                            protocol,
                            concurrency,
                            figures.throughput,
                            figures.p50_us,
                            figures.p99_us,
                            batch,
                        )
                    )
        big = on / "big" / "1" / "model.onnx"
        formed = {1} | {
            max(1, round(cell.average_batch))
            for cell in cells
            if cell.model == "big" and cell.average_batch
        }
        in_process = {
            size: _in_process_rows_per_second(big, MODELS["big"][0], size)
            for size in sorted(formed)
        }
    return Report(
        date=datetime.now(UTC).isoformat(timespec="seconds"),
        machine=machine(),
        client="perf_analyzer (tritonclient 2.51.0), batch-1 requests, on the same cores",
        cells=cells,
        in_process_rows_per_second=in_process,
        mlserver=_mlserver_description(mlserver_venv) if mlserver_venv else None,
    )


def _table(report: Report) -> str:
    lines = []
    for model in MODELS:
        lines += [
            f"\n{model}:\n",
            "| target | protocol | concurrency | req/s | p50 µs | p99 µs | avg batch |",
            "|---|---|---|---|---|---|---|",
        ]
        for cell in report.cells:
            if cell.model != model:
                continue
            batch = f"{cell.average_batch:.1f}" if cell.average_batch else ""
            lines.append(
                f"| {cell.target} | {cell.protocol} | {cell.concurrency} | {cell.throughput:.0f} "
                f"| {cell.p50_us:.0f} | {cell.p99_us:.0f} | {batch} |"
            )
    lines += ["\nonnxruntime in-process, big model, rows/s by batch size:\n"]
    lines += [
        f"- batch {size}: {rate:.0f}" for size, rate in report.in_process_rows_per_second.items()
    ]
    return "\n".join(lines)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--pa-venv", type=Path, required=True, help="the venv of perf_analyzer")
    parser.add_argument(
        "--mlserver-venv", type=Path, help="also measure MLServer, installed in this venv"
    )
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--window-ms", type=int, default=2000)
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    concurrencies = [int(value) for value in args.concurrency.split(",")]
    report = run(args.pa_venv, concurrencies, args.window_ms, args.mlserver_venv)
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2))
    print(f"{report.date}, {report.machine}; {report.client}")
    if report.mlserver:
        print(report.mlserver)
    print(_table(report))


if __name__ == "__main__":
    main()
