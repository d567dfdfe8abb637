"""Clients of the shared server, and a second small server, for the end-to-end tests."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.support.e2e import SMALL_MAX_REQUEST_BYTES, write_config
from tests.support.e2e_models import write_extra_models
from tests.support.server import TurnoutProcess
from turnout.protos import inference_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def http_client(server: TurnoutProcess) -> Iterator[Any]:
    """Triton's HTTP client of the shared server."""
    client = httpclient.InferenceServerClient(server.http_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc_client(server: TurnoutProcess) -> Iterator[Any]:
    """Triton's gRPC client of the shared server."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def stub(server: TurnoutProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    """Turnout's own generated stub on a plain gRPC channel to the shared server."""
    with grpc.insecure_channel(server.grpc_url) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="session")
def small_server(
    repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TurnoutProcess]:
    """A second server, from a config file: a 4 KiB request cap, and besides mlp version 1 and
    strings the models the shared repository lacks (see tests/support/e2e_models.py)."""
    workdir = tmp_path_factory.mktemp("small_server")
    extra = write_extra_models(workdir / "models")
    models = [
        {"name": "mlp", "version": 1, "path": str(repository / "mlp" / "1" / "model.onnx")},
        {"name": "strings", "version": 1, "path": str(repository / "strings" / "1" / "model.onnx")},
        *({"name": name, "version": 1, "path": str(path)} for name, path in extra.items()),
    ]
    config = write_config(
        workdir / "turnout.yaml",
        {"server": {"max_request_bytes": SMALL_MAX_REQUEST_BYTES}, "models": models},
    )
    with TurnoutProcess(["--config", str(config)], workdir) as process:
        yield process
        assert process.stop() == 0, process.logs()


@pytest.fixture(scope="module")
def small_stub(small_server: TurnoutProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    """Turnout's stub on a channel to the small server."""
    with grpc.insecure_channel(small_server.grpc_url) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)
