"""Shared fixtures: the test model repository and a real server serving it."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.onnx_models import write_repository
from tests.support.server import TurnoutProcess


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Triton-style repository holding every test model."""
    return write_repository(tmp_path_factory.mktemp("repository"))


@pytest.fixture(scope="session")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TurnoutProcess]:
    """One ``turnout serve --model-repository`` shared by the end-to-end tests."""
    with TurnoutProcess(
        ["--model-repository", str(repository)], tmp_path_factory.mktemp("server")
    ) as process:
        yield process
        status = process.stop()
        assert status == 0, process.logs()
        assert "Traceback" not in process.logs(), process.logs()
