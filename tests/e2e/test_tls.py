"""TLS and mutual TLS end to end, with certificates made by trustme for this run (BAD_INPUTS row
37), and the admin API on a listener of its own. HTTPS and gRPC over TLS serve Triton's clients;
plaintext to a TLS port gets nothing served; with a client CA configured, a client without a
certificate fails the handshake over both protocols; unloadable certificates stop the start with
a clear error."""

import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import trustme
from tritonclient.utils import InferenceServerException

from tests.support.e2e import mlp_json_request, mlp_reference, mlp_rows, write_config
from tests.support.routing import ADMIN_TOKEN, admin_env, bearer
from tests.support.server import TurnoutProcess
from turnout.protos import inference_pb2 as pb
from turnout.protos import inference_pb2_grpc as pb_grpc

HOST = "127.0.0.1"
TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Certificates:
    """A CA, the server's certificate and key, and a client's, as PEM files."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    folder = tmp_path_factory.mktemp("certificates")
    authority = trustme.CA()
    server = authority.issue_cert(HOST, "localhost")
    client = authority.issue_cert("turnout-test-client")
    paths = Certificates(
        folder / "ca.pem",
        folder / "server.pem",
        folder / "server.key",
        folder / "client.pem",
        folder / "client.key",
    )
    authority.cert_pem.write_to_path(str(paths.ca))
    server.cert_chain_pems[0].write_to_path(str(paths.server_cert))
    server.private_key_pem.write_to_path(str(paths.server_key))
    client.cert_chain_pems[0].write_to_path(str(paths.client_cert))
    client.private_key_pem.write_to_path(str(paths.client_key))
    return paths


def tls_server(
    repository: Path, workdir: Path, tls: dict[str, str], admin: Mapping[str, object] | None = None
) -> TurnoutProcess:
    config = write_config(
        workdir / "turnout.yaml",
        {
            "server": {"tls": tls},
            "models": [{"name": "mlp", "version": 1, "path": str(repository / "mlp/1/model.onnx")}],
            **({"admin": admin} if admin else {}),
        },
    )
    return TurnoutProcess(["--config", str(config)], workdir / "run", env=admin_env())


@pytest.fixture(scope="module")
def server(
    repository: Path, certificates: Certificates, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TurnoutProcess]:
    """TLS on both listeners; no client certificate asked for."""
    tls = {"cert_file": str(certificates.server_cert), "key_file": str(certificates.server_key)}
    with tls_server(repository, tmp_path_factory.mktemp("tls"), tls) as process:
        yield process
        assert process.stop() == 0, process.logs()


@pytest.fixture(scope="module")
def mutual(
    repository: Path, certificates: Certificates, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TurnoutProcess]:
    """Mutual TLS: clients must present a certificate the test CA signed."""
    tls = {
        "cert_file": str(certificates.server_cert),
        "key_file": str(certificates.server_key),
        "client_ca_file": str(certificates.ca),
    }
    with tls_server(repository, tmp_path_factory.mktemp("mtls"), tls) as process:
        yield process
        assert process.stop() == 0, process.logs()


def client_context(certificates: Certificates, with_certificate: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certificates.ca))
    if with_certificate:
        context.load_cert_chain(certificates.client_cert, certificates.client_key)
    return context


def https_infer(port: int, context: ssl.SSLContext, repository: Path) -> None:
    """A good inference over HTTPS, answered as ONNX Runtime answers."""
    rows = mlp_rows(2, seed=5)
    connection = http.client.HTTPSConnection(HOST, port, context=context, timeout=TIMEOUT_S)
    try:
        body = json.dumps(mlp_json_request(rows))
        connection.request(
            "POST", "/v2/models/mlp/infer", body, {"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        assert response.status == 200
        document = json.loads(response.read())
    finally:
        connection.close()
    outputs = {
        out["name"]: np.asarray(out["data"]).reshape(out["shape"]) for out in document["outputs"]
    }
    expected = mlp_reference(repository, "1", rows)
    np.testing.assert_allclose(outputs["OUTPUT0"], expected["OUTPUT0"], rtol=1e-5, atol=1e-7)


def grpc_infer(
    process: TurnoutProcess, certificates: Certificates, repository: Path, client_certificate: bool
) -> None:
    """A good inference with Triton's gRPC client over TLS."""
    keys = (
        {
            "private_key": str(certificates.client_key),
            "certificate_chain": str(certificates.client_cert),
        }
        if client_certificate
        else {}
    )
    client = grpcclient.InferenceServerClient(
        process.grpc_url, ssl=True, root_certificates=str(certificates.ca), **keys
    )
    try:
        rows = mlp_rows(3, seed=6)
        tensor = grpcclient.InferInput("INPUT0", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)
        result = client.infer("mlp", [tensor], client_timeout=TIMEOUT_S)
    finally:
        client.close()
    expected = mlp_reference(repository, "1", rows)
    np.testing.assert_allclose(
        result.as_numpy("OUTPUT0"), expected["OUTPUT0"], rtol=1e-5, atol=1e-7
    )


# --- TLS --------------------------------------------------------------------------------------


def test_https_serves_a_client_that_trusts_the_ca(
    server: TurnoutProcess, certificates: Certificates, repository: Path
) -> None:
    https_infer(server.http_port, client_context(certificates, False), repository)


def test_grpc_over_tls_serves_tritons_client(
    server: TurnoutProcess, certificates: Certificates, repository: Path
) -> None:
    grpc_infer(server, certificates, repository, client_certificate=False)


def test_plaintext_http_to_the_tls_port_is_not_served(
    server: TurnoutProcess, certificates: Certificates, repository: Path
) -> None:
    with socket.create_connection((HOST, server.http_port), timeout=TIMEOUT_S) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    assert b"HTTP/1.1 200" not in answer
    assert b"live" not in answer
    https_infer(server.http_port, client_context(certificates, False), repository)


def test_plaintext_grpc_to_the_tls_port_is_not_served(
    server: TurnoutProcess, certificates: Certificates, repository: Path
) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.ServerLive(pb.ServerLiveRequest(), timeout=5)
    assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
    grpc_infer(server, certificates, repository, client_certificate=False)


def test_a_client_that_does_not_trust_the_certificate_refuses_it(server: TurnoutProcess) -> None:
    connection = http.client.HTTPSConnection(
        HOST, server.http_port, context=ssl.create_default_context(), timeout=TIMEOUT_S
    )
    with pytest.raises(ssl.SSLCertVerificationError):
        connection.request("GET", "/v2/health/live")
    connection.close()


# --- mutual TLS -------------------------------------------------------------------------------


def test_mutual_tls_serves_clients_with_a_certificate(
    mutual: TurnoutProcess, certificates: Certificates, repository: Path
) -> None:
    https_infer(mutual.http_port, client_context(certificates, True), repository)
    grpc_infer(mutual, certificates, repository, client_certificate=True)


def test_mutual_tls_refuses_a_grpc_client_without_a_certificate(
    mutual: TurnoutProcess, certificates: Certificates, repository: Path
) -> None:
    client = grpcclient.InferenceServerClient(
        mutual.grpc_url, ssl=True, root_certificates=str(certificates.ca)
    )
    try:
        with pytest.raises(InferenceServerException) as raised:
            client.is_server_live(client_timeout=5)
    finally:
        client.close()
    assert raised.value.status() == "StatusCode.UNAVAILABLE"
    grpc_infer(mutual, certificates, repository, client_certificate=True)


def test_mutual_tls_refuses_an_https_client_without_a_certificate(
    mutual: TurnoutProcess, certificates: Certificates, repository: Path
) -> None:
    connection = http.client.HTTPSConnection(
        HOST, mutual.http_port, context=client_context(certificates, False), timeout=TIMEOUT_S
    )
    refused = (ssl.SSLError, ConnectionResetError, http.client.RemoteDisconnected)

    def exchange() -> None:
        connection.request("GET", "/v2/health/live")
        # TLS 1.3 finishes the client's side of the handshake first: the refusal arrives with
        # the first read.
        connection.getresponse()

    try:
        with pytest.raises(refused):
            exchange()
    finally:
        connection.close()
    https_infer(mutual.http_port, client_context(certificates, True), repository)


# --- bad certificates -------------------------------------------------------------------------


def test_a_certificate_that_cannot_be_loaded_stops_the_start_with_a_clear_error(
    repository: Path, certificates: Certificates, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    config = write_config(
        tmp_path / "turnout.yaml",
        {
            "server": {
                "tls": {"cert_file": str(garbage), "key_file": str(certificates.server_key)}
            },
            "models": [{"name": "mlp", "version": 1, "path": str(repository / "mlp/1/model.onnx")}],
        },
    )
    done = subprocess.run(
        [sys.executable, "-m", "turnout", "serve", "--config", str(config)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert done.returncode == 2, done
    assert "invalid config server.tls:\n  cannot load the certificates: not a PEM" in done.stderr
    assert "Traceback" not in done.stderr


# --- the admin API on its own listener --------------------------------------------------------


def test_the_admin_api_can_move_to_a_listener_of_its_own(
    repository: Path, certificates: Certificates, tmp_path: Path
) -> None:
    tls = {"cert_file": str(certificates.server_cert), "key_file": str(certificates.server_key)}
    admin = {"listen": {"host": HOST, "port": 0}}
    with tls_server(repository, tmp_path, tls, admin) as process:
        admin_port = json.loads((tmp_path / "run" / "ready.json").read_text())["admin_port"]
        assert admin_port not in (process.http_port, process.grpc_port)
        context = client_context(certificates, False)
        headers = bearer(ADMIN_TOKEN)

        def get(port: int, path: str) -> int:
            connection = http.client.HTTPSConnection(HOST, port, context=context, timeout=TIMEOUT_S)
            try:
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
                response.read()
                return response.status
            finally:
                connection.close()

        assert get(admin_port, "/admin/routes") == 200
        assert get(process.http_port, "/admin/routes") == 404
        assert get(admin_port, "/v2/health/live") == 404
        assert get(process.http_port, "/v2/health/live") == 200
        https_infer(process.http_port, context, repository)
        assert process.stop() == 0, process.logs()
