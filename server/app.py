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
import ssl
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import uvicorn
from starlette.types import ASGIApp

from turnout.models.repository import ModelRepository
from turnout.monitoring.monitor import DriftMonitor
from turnout.monitoring.sinks import GaugeSink, JsonlSink, Sink, SinkWriter, SqliteSink
from turnout.protos import inference_pb2_grpc as pb_grpc
from turnout.protos import turnout_pb2_grpc as turnout_grpc
from turnout.router.router import Router
from turnout.router.state import StateStore
from turnout.server.admin_auth import AdminTokens
from turnout.server.config import Config, ConfigError, ListenConfig, ServerConfig, TlsConfig
from turnout.server.dataplane import DataPlane
from turnout.server.drift import watch_version
from turnout.server.grpc.feedback import FeedbackServicer
from turnout.server.grpc.registration import add_service
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
            self.repository,
            self.router,
            self.metrics,
            self.monitor,
            limits.max_inflight_requests,
            limits.max_loop_lag_ms / 1000 if limits.max_loop_lag_ms is not None else None,
        )
        self.metrics.watch_loop_lag(self.plane.loop_lag)
        tokens = AdminTokens.load(os.environ, config.admin.token_file)
        log.info(
            "admin API %s", "off (no token configured)" if tokens is None else "on, under /admin/"
        )
        ops = OpsEndpoints(self.plane, tokens, config.admin.allowed_origins, config.model_root)
        self._background: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        server = config.server
        tls = server.tls
        if tls is not None:
            check_tls(tls)
        request_limits = limits.request_limits()
        front = HttpFrontEnd(self.plane, server.max_request_bytes, request_limits, ops)
        admin_listen = config.admin.listen
        refusals = self.metrics.http_refusals
        self._listeners = [
            HttpListener(server, front.app(admin_listen is None), server.http, refusals)
        ]
        if admin_listen is not None:
            self._listeners.append(HttpListener(server, front.admin_app(), admin_listen, refusals))
            log.info("admin API on its own listener, %s:%d", admin_listen.host, admin_listen.port)
        self.http_port: int = self._listeners[0].port
        self.admin_port: int | None = self._listeners[1].port if admin_listen else None
        self._grpc = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", server.max_request_bytes),
                ("grpc.max_metadata_size", limits.max_header_bytes),
                ("grpc.absolute_max_metadata_size", limits.max_header_bytes),
                ("grpc.so_reuseport", 0),
                # grpc.aio takes calls from gRPC's core one per turn of the event loop; past
                # this many waiting there, the core refuses new ones itself (CANCELLED), which
                # bounds how long an admitted call can have waited.
                ("grpc.server.max_pending_requests", limits.max_pending_rpcs),
                ("grpc.server.max_pending_requests_hard_limit", limits.max_pending_rpcs),
            ],
            maximum_concurrent_rpcs=limits.max_concurrent_rpcs,
        )
        add_service(
            self._grpc,
            pb_grpc.add_GRPCInferenceServiceServicer_to_server,
            InferenceServicer(self.plane, request_limits),
        )
        add_service(
            self._grpc, turnout_grpc.add_FeedbackServicer_to_server, FeedbackServicer(self.plane)
        )
        grpc_address = f"{server.grpc.host}:{server.grpc.port}"
        self.grpc_port: int = (
            self._grpc.add_insecure_port(grpc_address)
            if tls is None
            else self._grpc.add_secure_port(grpc_address, grpc_credentials(tls))
        )

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
        http_tasks = [asyncio.create_task(listener.serve()) for listener in self._listeners]
        log.info(
            "listening: http%s %s:%d, grpc%s %s:%d",
            "s" if self.config.server.tls else "",
            self.config.server.http.host,
            self.http_port,
            "+tls" if self.config.server.tls else "",
            self.config.server.grpc.host,
            self.grpc_port,
        )
        await self.repository.load_all()
        await self.router.restore()
        await self._start_monitoring()
        self._background = [
            asyncio.create_task(self.router.run_background()),
            asyncio.create_task(self.plane.loop_lag.run()),
        ]
        # What exists now (sessions, modules, config) lives as long as the process: keeping it
        # out of the collector's generations makes the collections that requests trigger cheap.
        gc.freeze()
        self.plane.publish_model_states()
        for name in self.repository.names():
            log.info("endpoint %r routes to version %s", name, self.router.resolve(name, None))
        if ready_file is not None:
            _write_ready_file(ready_file, self.http_port, self.grpc_port, self.admin_port)
        stopped = asyncio.create_task(self._stop.wait())
        await asyncio.wait({stopped, *http_tasks}, return_when=asyncio.FIRST_COMPLETED)
        await self._drain(http_tasks)
        return 0

    async def _start_monitoring(self) -> None:
        for entry in self.config.models:
            runner = self.repository.entry(entry.name, entry.version).runner
            if entry.monitoring is not None and runner is not None:
                await watch_version(self.monitor, runner, entry.monitoring)
        self.monitor.start()

    async def _drain(self, http_tasks: "list[asyncio.Task[None]]") -> None:
        grace = self.config.server.drain_timeout_s
        self.plane.start_draining()
        for listener in self._listeners:
            listener.server.should_exit = True
        await asyncio.gather(self._grpc.stop(grace), *http_tasks)
        if not await self.plane.wait_idle(grace):
            log.warning("grace period over with requests still in flight")
        for task in self._background:
            task.cancel()
        await self.router.shadows.stop()
        await self.router.save_bandits()
        await asyncio.to_thread(self.monitor.stop, grace)
        await asyncio.to_thread(self.repository.close)
        log.info("stopped")


class HttpListener:
    """One HTTP listener: its bound socket and the uvicorn server on it, within the limits and
    with the TLS settings of ``server``."""

    def __init__(
        self,
        server: ServerConfig,
        app: ASGIApp,
        listen: ListenConfig,
        refusals: "Counter[str]",
    ) -> None:
        limits = server.limits
        self.socket = _bind(listen)
        self.port: int = self.socket.getsockname()[1]
        tls = server.tls
        connection_limits = ConnectionLimits(
            limits.max_header_bytes,
            limits.max_headers,
            limits.header_timeout_s,
            limits.body_timeout_s,
            limits.max_connections,
        )
        self.server = _HttpServer(
            uvicorn.Config(
                app,
                http=guarded(connection_limits, refusals),
                ws="none",
                timeout_keep_alive=limits.keep_alive_timeout_s,
                lifespan="off",
                # Client addresses are not used, and trusting X-Forwarded-For is a choice for
                # whoever puts a proxy in front, not a default.
                proxy_headers=False,
                log_config=None,
                access_log=False,
                timeout_graceful_shutdown=max(1, int(server.drain_timeout_s)),
                ssl_certfile=tls.cert_file if tls else None,
                ssl_keyfile=tls.key_file if tls else None,
                ssl_ca_certs=str(tls.client_ca_file) if tls and tls.client_ca_file else None,
                ssl_cert_reqs=ssl.CERT_REQUIRED if tls and tls.client_ca_file else ssl.CERT_NONE,
            )
        )

    async def serve(self) -> None:
        """Serve until the server is told to exit."""
        await self.server.serve(sockets=[self.socket])


def check_tls(tls: TlsConfig) -> None:
    """ConfigError unless the certificate, key and client CA can be loaded."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.client_ca_file is not None:
            context.load_verify_locations(tls.client_ca_file)
    except ssl.SSLError as error:
        problem = f"not a PEM certificate and its key, or a PEM CA ({error.reason})"
        raise ConfigError("server.tls", [f"cannot load the certificates: {problem}"]) from None
    except OSError as error:
        problem = error.strerror or str(error)
        raise ConfigError("server.tls", [f"cannot load the certificates: {problem}"]) from None


def grpc_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    """gRPC's server credentials for ``tls``; clients need a certificate when a client CA is
    given (mutual TLS)."""
    client_ca = tls.client_ca_file.read_bytes() if tls.client_ca_file else None
    return grpc.ssl_server_credentials(
        [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


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


def _write_ready_file(path: Path, http_port: int, grpc_port: int, admin_port: int | None) -> None:
    """Write the bound ports atomically, so a reader never sees half a file."""
    ports = {"http_port": http_port, "grpc_port": grpc_port, "pid": os.getpid()}
    if admin_port is not None:
        ports["admin_port"] = admin_port
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(ports))
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
