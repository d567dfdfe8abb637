"""The model repository: versions, their states and their runners (models/repository.py), with
real ONNX models loaded on the CPU."""

import asyncio
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.support.onnx_models import fixed_shape, write_model
from turnout.errors import ModelNotFound, ModelNotReady
from turnout.models.loader import InstanceGroup, VersionSpec
from turnout.models.providers import Device
from turnout.models.repository import ModelRepository, version_order
from turnout.models.runner import ModelRunner
from turnout.models.types import ModelRequest, VersionState
from turnout.server.demo import build_mlp

FEATURES = 4


def mlp_file(root: Path, name: str, version: str) -> Path:
    return write_model(
        build_mlp(int(version), features=FEATURES, hidden=8, classes=3),
        root / name / version / "model.onnx",
    )


def spec(
    name: str, version: str, path: Path, instance_count: int = 1, max_batch_size: int | None = None
) -> VersionSpec:
    return VersionSpec(
        name,
        version,
        path,
        (InstanceGroup(Device("cpu"), instance_count),),
        max_batch_size=max_batch_size,
    )


def thread_names() -> set[str]:
    return {thread.name for thread in threading.enumerate() if thread.is_alive()}


@pytest.fixture
def repository(tmp_path: Path) -> Iterator[ModelRepository]:
    """mlp versions 10, 2 and 1 (given in that order), a model ``other`` version 1, and mlp
    version 3 whose file is garbage; loaded."""
    garbage = tmp_path / "mlp" / "3" / "model.onnx"
    garbage.parent.mkdir(parents=True)
    garbage.write_bytes(b"this is not an ONNX model")
    repo = ModelRepository(
        [
            spec("mlp", "10", mlp_file(tmp_path, "mlp", "10")),
            spec("mlp", "2", mlp_file(tmp_path, "mlp", "2")),
            spec("other", "1", mlp_file(tmp_path, "other", "1")),
            spec("mlp", "3", garbage),
            spec("mlp", "1", mlp_file(tmp_path, "mlp", "1")),
        ]
    )
    asyncio.run(repo.load_all())
    yield repo
    repo.close()


@pytest.mark.parametrize(
    ("versions", "expected"),
    [
        pytest.param(["10", "2", "1"], ["1", "2", "10"], id="numeric-not-lexical"),
        pytest.param(["9", "10", "100", "11"], ["9", "10", "11", "100"], id="widths"),
        pytest.param(["1"], ["1"], id="single"),
        pytest.param(["20", "3"], ["3", "20"], id="two"),
    ],
)
def test_version_order(versions: list[str], expected: list[str]) -> None:
    assert sorted(versions, key=version_order) == expected


def test_versions_are_sorted_numerically(repository: ModelRepository) -> None:
    assert repository.versions("mlp") == ["1", "2", "3", "10"]
    assert repository.versions("mlp")[-1] == "10"
    assert repository.versions("other") == ["1"]


def test_names_keep_config_order(repository: ModelRepository) -> None:
    assert repository.names() == ["mlp", "other"]


def test_entries_cover_every_version(repository: ModelRepository) -> None:
    assert sorted((e.spec.name, e.spec.version) for e in repository.entries()) == [
        ("mlp", "1"),
        ("mlp", "10"),
        ("mlp", "2"),
        ("mlp", "3"),
        ("other", "1"),
    ]


@pytest.mark.parametrize(
    ("name", "version", "message"),
    [
        pytest.param("nope", "1", "unknown model 'nope'", id="unknown-model"),
        pytest.param("mlp", "7", "model 'mlp' has no version '7'", id="unknown-version"),
        pytest.param("mlp", "01", "model 'mlp' has no version '01'", id="leading-zero"),
        pytest.param("MLP", "1", "unknown model 'MLP'", id="case-matters"),
        pytest.param("x" * 500, "1", "unknown model '" + "x" * 64 + "…'", id="huge-name"),
        pytest.param(
            "mlp", "9" * 500, "model 'mlp' has no version '" + "9" * 64 + "…'", id="huge-version"
        ),
    ],
)
def test_unknown_model_or_version(
    repository: ModelRepository, name: str, version: str, message: str
) -> None:
    with pytest.raises(ModelNotFound) as from_entry:
        repository.entry(name, version)
    with pytest.raises(ModelNotFound) as from_runner:
        repository.runner(name, version)

    assert from_entry.value.message == message
    assert from_runner.value.message == message


def test_versions_of_unknown_model(repository: ModelRepository) -> None:
    with pytest.raises(ModelNotFound, match=r"^unknown model 'nope'$"):
        repository.versions("nope")


@pytest.mark.parametrize("version", ["1", "2", "10"])
def test_loaded_versions_are_ready_and_run(repository: ModelRepository, version: str) -> None:
    entry = repository.entry("mlp", version)
    runner = repository.runner("mlp", version)

    response = asyncio.run(
        runner.infer(ModelRequest({"INPUT0": np.ones((2, FEATURES), np.float32)}))
    )

    assert entry.state is VersionState.READY
    assert entry.reason == ""
    assert isinstance(runner, ModelRunner)
    assert runner.signature.name == "mlp"
    assert runner.signature.version == version
    assert response.outputs["OUTPUT0"].shape == (2, 3)


def test_versions_are_distinct_models(repository: ModelRepository) -> None:
    feed = {"INPUT0": np.linspace(-1, 1, 2 * FEATURES, dtype=np.float32).reshape(2, FEATURES)}

    one = asyncio.run(repository.runner("mlp", "1").infer(ModelRequest(feed)))
    two = asyncio.run(repository.runner("mlp", "2").infer(ModelRequest(feed)))

    assert not np.allclose(one.outputs["OUTPUT0"], two.outputs["OUTPUT0"])


def test_garbage_version_is_unavailable_with_a_reason(repository: ModelRepository) -> None:
    entry = repository.entry("mlp", "3")

    assert entry.state is VersionState.UNAVAILABLE
    assert entry.reason == "failed to load; the server log says why"
    assert entry.runner is None
    with pytest.raises(ModelNotReady) as caught:
        repository.runner("mlp", "3")
    assert caught.value.message == (
        "model 'mlp' version 3 is unavailable (failed to load; the server log says why)"
    )


def test_one_failed_version_leaves_the_others_ready_but_the_repository_not(
    repository: ModelRepository,
) -> None:
    states = {(e.spec.name, e.spec.version): e.state for e in repository.entries()}

    assert states == {
        ("mlp", "1"): VersionState.READY,
        ("mlp", "2"): VersionState.READY,
        ("mlp", "3"): VersionState.UNAVAILABLE,
        ("mlp", "10"): VersionState.READY,
        ("other", "1"): VersionState.READY,
    }
    assert repository.is_ready() is False


def test_failure_is_logged_with_the_label(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    missing = tmp_path / "absent" / "model.onnx"
    repo = ModelRepository([spec("ghost", "4", missing)])

    with caplog.at_level(logging.ERROR, logger="turnout.models.repository"):
        asyncio.run(repo.load_all())

    entry = repo.entry("ghost", "4")
    assert entry.state is VersionState.UNAVAILABLE
    assert entry.reason == "failed to load; the server log says why"
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    assert record.getMessage().startswith(
        f"model 'ghost' version 4 failed to load from {missing}: "
    )


def test_unsupported_model_is_unavailable(tmp_path: Path) -> None:
    path = write_model(fixed_shape(), tmp_path / "fixed" / "1" / "model.onnx")
    repo = ModelRepository([spec("fixed", "1", path, max_batch_size=4)])

    asyncio.run(repo.load_all())

    assert repo.entry("fixed", "1").state is VersionState.UNAVAILABLE
    assert repo.entry("fixed", "1").reason == "failed to load; the server log says why"
    assert repo.is_ready() is False


def test_before_loading_every_version_is_loading(tmp_path: Path) -> None:
    repo = ModelRepository([spec("mlp", "1", tmp_path / "never-read.onnx")])

    assert repo.entry("mlp", "1").state is VersionState.LOADING
    assert repo.is_ready() is False
    with pytest.raises(ModelNotReady, match=r"^model 'mlp' version 1 is loading$"):
        repo.runner("mlp", "1")


def test_all_ready_repository_is_ready(tmp_path: Path) -> None:
    repo = ModelRepository(
        [
            spec("mlp", "1", mlp_file(tmp_path, "mlp", "1")),
            spec("mlp", "2", mlp_file(tmp_path, "mlp", "2")),
        ]
    )
    try:
        asyncio.run(repo.load_all())

        assert repo.is_ready() is True
    finally:
        repo.close()


def test_close_stops_the_instances(tmp_path: Path) -> None:
    repo = ModelRepository(
        [
            spec("closing", "1", mlp_file(tmp_path, "closing", "1"), instance_count=2),
            spec("closing", "2", tmp_path / "absent.onnx"),
        ]
    )
    asyncio.run(repo.load_all())
    threads = {"ort-closing-1-0", "ort-closing-1-1"}
    assert threads <= thread_names()

    repo.close()

    assert not threads & thread_names()
    loaded = repo.entry("closing", "1")
    assert loaded.state is VersionState.UNLOADING
    assert loaded.runner is None
    assert repo.entry("closing", "2").state is VersionState.UNAVAILABLE
    assert repo.is_ready() is False
    with pytest.raises(ModelNotReady, match=r"^model 'closing' version 1 is unloading$"):
        repo.runner("closing", "1")
