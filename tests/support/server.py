"""A real ``turnout serve`` process on ephemeral loopback ports."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

START_TIMEOUT_S = 60.0


class TurnoutProcess:
    """Starts ``python -m turnout serve ARGS`` and waits until it has loaded its models.

    ``program`` replaces ``python -m turnout`` (for example with the ``turnout`` console script).
    Run-time state goes to ``workdir/state`` unless ``args`` name a ``--state-dir``; ``env``
    replaces the environment (TURNOUT_ADMIN_TOKEN is never inherited).
    """

    def __init__(
        self,
        args: list[str],
        workdir: Path,
        program: Sequence[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        if "--state-dir" not in args:
            args = [*args, "--state-dir", str(workdir / "state")]
        environment = dict(os.environ if env is None else env)
        if env is None:
            environment.pop("TURNOUT_ADMIN_TOKEN", None)
        self.log_path = workdir / "turnout.log"
        ready_file = workdir / "ready.json"
        ready_file.unlink(missing_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    *(program or (sys.executable, "-m", "turnout")),
                    "serve",
                    *args,
                    "--http-port",
                    "0",
                    "--grpc-port",
                    "0",
                    "--ready-file",
                    str(ready_file),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                self.process.wait()
                raise RuntimeError(f"turnout did not start:\n{self.logs()}")
            time.sleep(0.05)
        ports = json.loads(ready_file.read_text())
        self.http_port: int = ports["http_port"]
        self.grpc_port: int = ports["grpc_port"]

    @property
    def http_url(self) -> str:
        """``host:port`` of the HTTP listener, as tritonclient wants it."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """``host:port`` of the gRPC listener."""
        return f"127.0.0.1:{self.grpc_port}"

    def logs(self) -> str:
        """Everything the process has written so far."""
        return self.log_path.read_text(errors="replace")

    def get(self, path: str) -> tuple[int, bytes]:
        """A plain HTTP GET: status and body, whatever the status."""
        try:
            with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=10) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        """Send ``sig`` and return the exit status (killing it if it overstays)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise
        return self.process.returncode

    def __enter__(self) -> "TurnoutProcess":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
