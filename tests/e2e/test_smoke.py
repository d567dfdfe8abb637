"""The server starts from a model repository and answers health checks."""

from tests.support.server import TurnoutProcess


def test_live_and_ready(server: TurnoutProcess) -> None:
    assert server.get("/v2/health/live")[0] == 200
    assert server.get("/v2/health/ready")[0] == 200
