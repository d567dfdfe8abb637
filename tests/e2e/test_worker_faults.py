"""A hung model run end to end (BAD_INPUTS row 22): a run past the version's ``run_timeout_s``
fails only its own requests (500 / INTERNAL, naming the timeout), the instance is replaced and
the version serves again, and other models are served throughout."""

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.support.batching_models import slow_echo
from tests.support.e2e import assert_serving, scrape, write_config
from tests.support.onnx_models import write_model
from tests.support.polling import wait_for
from tests.support.scheduling import InThread, http_echo, triton_grpc_echo
from tests.support.server import TurnoutProcess

RUN_TIMEOUT_S = 1.0
ENDLESS_STEPS = 500_000_000
SLACK_S = 10.0


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TurnoutProcess]:
    root = tmp_path_factory.mktemp("worker_faults")
    write_model(slow_echo(), root / "slow_echo.onnx")
    config = write_config(
        root / "turnout.yaml",
        {
            "models": [
                {"name": "mlp", "version": 1, "path": str(repository / "mlp/1/model.onnx")},
                {
                    "name": "echo",
                    "version": 1,
                    "path": "slow_echo.onnx",
                    "device": "cpu",
                    "run_timeout_s": RUN_TIMEOUT_S,
                },
            ]
        },
    )
    with TurnoutProcess(["--config", str(config)], root / "run") as process:
        yield process
        assert process.stop() == 0, process.logs()
        assert "Traceback" not in process.logs(), process.logs()


def internal_errors(server: TurnoutProcess, protocol: str) -> float:
    return scrape(server).value(
        "turnout_requests_total",
        endpoint="echo",
        version="1",
        protocol=protocol,
        status="internal_error",
    )


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_hung_run_fails_fast_the_instance_is_replaced_and_others_are_served(
    server: TurnoutProcess, repository: Path, protocol: str
) -> None:
    before = internal_errors(server, protocol)
    endless = np.array([[ENDLESS_STEPS]], dtype=np.int64)
    send = http_echo if protocol == "http" else triton_grpc_echo
    started = time.monotonic()
    hung = InThread(lambda: send(server, "echo", endless))
    assert_serving(server, repository, version="1")
    outcome = hung.result()
    assert time.monotonic() - started < RUN_TIMEOUT_S + SLACK_S
    assert outcome.code == ("500" if protocol == "http" else "INTERNAL"), outcome
    assert f"did not finish within {RUN_TIMEOUT_S:g} s" in outcome.message
    assert internal_errors(server, protocol) == before + 1
    wait_for(lambda: server.get("/v2/models/echo/ready")[0] == 200, "echo ready again")
    assert server.get("/v2/health/ready")[0] == 200
    served = send(server, "echo", np.array([[3, 4]], dtype=np.int64))
    assert served.values is not None, served
    np.testing.assert_array_equal(served.values, [[3, 4]])
    logs = server.logs()
    assert "passed the hard timeout" in logs
    assert "replaced" in logs
