"""The process: builds the layers from config, serves HTTP and gRPC on one event loop, and shuts
down in order on SIGTERM/SIGINT: readiness 503 and new requests refused, listeners closed,
in-flight requests drained within the grace period, models closed, exit 0. A second signal
exits at once with status 1."""

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import uvicorn

from turnout.models.repository import ModelRepository
from turnout.monitoring.monitor import DriftMonitor
from turnout.monitoring.sinks import GaugeSink, JsonlSink, Sink, SinkWriter, SqliteSink
from turnout.protos import inference_pb2_grpc as pb_grpc
from turnout.protos import turnout_pb2_grpc as turnout_grpc
from turnout.router.router import Router
from turnout.router.state import StateStore
from turnout.server.admin_auth import AdminTokens
from turnout.server.config import Config, ListenConfig
from turnout.server.dataplane import DataPlane
from turnout.server.drift import watch_version
from turnout.server.grpc.feedback import FeedbackServicer
from turnout.server.grpc.servicer import InferenceServicer
from turnout.server.http.admin import OpsEndpoints
from turnout.server.http.app import HttpFrontEnd
from turnout.server.http.protocol import ConnectionLimits, guarded
from turnout.server.metrics import Metrics

log = logging.getLogger(__name__)

EXIT_FORCED = 1
DEFAULT_STATE_DIR = "turnout-state"


class _HttpServer(uvicorn.Server):
    """uvicorn without its own signal handlers: this module owns shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Gateway:
    """One Turnout process: the layers, the two listeners and the shutdown sequence."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        self.repository = ModelRepository(config.version_specs())
        self.metrics.watch(self.repository)
        state_dir = config.state_dir or Path(DEFAULT_STATE_DIR)
        self.store = StateStore(state_dir)
        self.router = Router(
            self.repository,
            config.routes,
            self.store,
            config.feedback.ttl_s,
            config.feedback.max_entries,
        )
        self.metrics.watch_router(self.router)
        self.monitor = DriftMonitor(
            _drift_writers(config, state_dir),
            config.monitoring.queue_size,
            config.monitoring.queue_bytes,
        )
        self.metrics.watch_monitor(self.monitor)
        limits = config.server.limits
        self.plane = DataPlane(
            self.repository, self.router, self.metrics, self.monitor, limits.max_inflight_requests
        )
        tokens = AdminTokens.load(os.environ, config.admin.token_file)
        log.info(
            "admin API %s", "off (no token configured)" if tokens is None else "on, under /admin/"
        )
        ops = OpsEndpoints(self.plane, tokens, config.admin.allowed_origins, config.model_root)
        self._background: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        server = config.server
        self._http_socket = _bind(server.http)
        self.http_port: int = self._http_socket.getsockname()[1]
        connection_limits = ConnectionLimits(
            limits.max_header_bytes,
            limits.max_headers,
            limits.header_timeout_s,
            limits.body_timeout_s,
            limits.max_connections,
        )
        request_limits = limits.request_limits()
        self._http = _HttpServer(
            uvicorn.Config(
                HttpFrontEnd(self.plane, server.max_request_bytes, request_limits, ops).app(),
                http=guarded(connection_limits, self.metrics.http_refusals),
                ws="none",
                timeout_keep_alive=limits.keep_alive_timeout_s,
                lifespan="off",
                # Client addresses are not used, and trusting X-Forwarded-For is a choice for
                # whoever puts a proxy in front, not a default.
                proxy_headers=False,
                log_config=None,
                access_log=False,
                timeout_graceful_shutdown=max(1, int(server.drain_timeout_s)),
            )
        )
        self._grpc = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", server.max_request_bytes),
                ("grpc.max_metadata_size", limits.max_header_bytes),
                ("grpc.absolute_max_metadata_size", limits.max_header_bytes),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=limits.max_concurrent_rpcs,
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(self.plane, request_limits), self._grpc
        )
        turnout_grpc.add_FeedbackServicer_to_server(FeedbackServicer(self.plane), self._grpc)
        self.grpc_port: int = self._grpc.add_insecure_port(f"{server.grpc.host}:{server.grpc.port}")

    def request_stop(self) -> None:
        """Begin the graceful shutdown; a second call forces it."""
        if self._stop.is_set():
            log.warning("second stop signal: exiting now, abandoning requests in flight")
            logging.shutdown()
            # Immediately, without interpreter teardown: runs still inside ONNX Runtime on worker
            # threads would have their sessions destroyed under them, which aborts the process.
            os._exit(EXIT_FORCED)
        else:
            log.info("stop signal: draining (grace %.0f s)", self.config.server.drain_timeout_s)
            self._stop.set()

    async def run(self, ready_file: Path | None = None) -> int:
        """Serve until asked to stop; returns the exit status."""
        await self._grpc.start()
        http_task = asyncio.create_task(self._http.serve(sockets=[self._http_socket]))
        log.info(
            "listening: http %s:%d, grpc %s:%d",
            self.config.server.http.host,
            self.http_port,
            self.config.server.grpc.host,
            self.grpc_port,
        )
        await self.repository.load_all()
        await self.router.restore()
        await self._start_monitoring()
        self._background = asyncio.create_task(self.router.run_background())
        # What exists now (sessions, modules, config) lives as long as the process: keeping it
        # out of the collector's generations makes the collections that requests trigger cheap.
        gc.freeze()
        self.plane.publish_model_states()
        for name in self.repository.names():
            log.info("endpoint %r routes to version %s", name, self.router.resolve(name, None))
        if ready_file is not None:
            _write_ready_file(ready_file, self.http_port, self.grpc_port)
        stopped = asyncio.create_task(self._stop.wait())
        await asyncio.wait({stopped, http_task}, return_when=asyncio.FIRST_COMPLETED)
        await self._drain(http_task)
        return 0

    async def _start_monitoring(self) -> None:
        for entry in self.config.models:
            runner = self.repository.entry(entry.name, entry.version).runner
            if entry.monitoring is not None and runner is not None:
                await watch_version(self.monitor, runner, entry.monitoring)
        self.monitor.start()

    async def _drain(self, http_task: "asyncio.Task[None]") -> None:
        grace = self.config.server.drain_timeout_s
        self.plane.start_draining()
        self._http.should_exit = True
        await asyncio.gather(self._grpc.stop(grace), http_task)
        if not await self.plane.wait_idle(grace):
            log.warning("grace period over with requests still in flight")
        if self._background is not None:
            self._background.cancel()
        await self.router.shadows.stop()
        await self.router.save_bandits()
        await asyncio.to_thread(self.monitor.stop, grace)
        await asyncio.to_thread(self.repository.close)
        log.info("stopped")


def _drift_writers(config: Config, state_dir: Path) -> list[SinkWriter]:
    """The sinks drift records go to: Prometheus gauges and JSONL always, SQLite if given."""
    jsonl = config.monitoring.jsonl
    sinks: list[Sink] = [
        GaugeSink(),
        JsonlSink(jsonl.path or state_dir / "drift.jsonl", jsonl.max_bytes, jsonl.backups),
    ]
    if config.monitoring.sqlite is not None:
        sinks.append(SqliteSink(config.monitoring.sqlite.path))
    return [SinkWriter(sink) for sink in sinks]


def _bind(listen: ListenConfig) -> socket.socket:
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    sock = socket.create_server((listen.host, listen.port), family=family, backlog=2048)
    sock.set_inheritable(True)
    return sock


def _write_ready_file(path: Path, http_port: int, grpc_port: int) -> None:
    """Write the bound ports atomically, so a reader never sees half a file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(
        json.dumps({"http_port": http_port, "grpc_port": grpc_port, "pid": os.getpid()})
    )
    partial.replace(path)


async def serve(config: Config, ready_file: Path | None = None) -> int:
    """Run a gateway until SIGTERM or SIGINT; returns the exit status."""
    gateway = Gateway(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, gateway.request_stop)
    try:
        return await gateway.run(ready_file)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
