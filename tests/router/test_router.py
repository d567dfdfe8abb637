"""The router: which model version serves a request (router/router.py), over a repository of real
ONNX models loaded on the CPU."""

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.support.onnx_models import write_model
from turnout.errors import InvalidInput, ModelNotFound, ModelNotReady
from turnout.models.loader import InstanceGroup, VersionSpec
from turnout.models.providers import CPU, Device
from turnout.models.repository import ModelRepository
from turnout.router.router import Router
from turnout.router.types import InferenceRequest, InferenceResponse
from turnout.server.demo import build_mlp

FEATURES = 4
FEED = {"INPUT0": np.linspace(-2, 2, 3 * FEATURES, dtype=np.float32).reshape(3, FEATURES)}


def mlp_file(root: Path, name: str, version: str) -> Path:
    return write_model(
        build_mlp(int(version), features=FEATURES, hidden=8, classes=3),
        root / name / version / "model.onnx",
    )


def direct(path: Path) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=[CPU])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, FEED), strict=True))


class Models:
    """A loaded repository: ``mlp`` versions 2, 10 and 1 (in that order), ``single`` version 5,
    and ``broken`` version 1 (loads) and 2 (garbage)."""

    def __init__(self, root: Path) -> None:
        self.paths = {
            ("mlp", "2"): mlp_file(root, "mlp", "2"),
            ("mlp", "10"): mlp_file(root, "mlp", "10"),
            ("mlp", "1"): mlp_file(root, "mlp", "1"),
            ("single", "5"): mlp_file(root, "single", "5"),
            ("broken", "1"): mlp_file(root, "broken", "1"),
            ("broken", "2"): root / "broken" / "2" / "model.onnx",
        }
        self.paths["broken", "2"].parent.mkdir(parents=True)
        self.paths["broken", "2"].write_bytes(b"garbage")
        self.repository = ModelRepository(
            VersionSpec(name, version, path, (InstanceGroup(Device("cpu"), 1),))
            for (name, version), path in self.paths.items()
        )
        asyncio.run(self.repository.load_all())
        self.router = Router(self.repository)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Models]:
    loaded = Models(tmp_path_factory.mktemp("router-models"))
    yield loaded
    loaded.repository.close()


def request(
    endpoint: str, version: str | None = None, requested_outputs: tuple[str, ...] | None = None
) -> InferenceRequest:
    return InferenceRequest(
        endpoint, dict(FEED), version=version, requested_outputs=requested_outputs
    )


ROUTES = [
    pytest.param("mlp", None, "10", id="highest-numerically"),
    pytest.param("mlp", "", "10", id="empty-pin-routes"),
    pytest.param("mlp", "1", "1", id="pinned-lowest"),
    pytest.param("mlp", "2", "2", id="pinned-middle"),
    pytest.param("mlp", "10", "10", id="pinned-highest"),
    pytest.param("single", None, "5", id="single-version"),
    pytest.param("broken", None, "2", id="highest-even-if-failed"),
    pytest.param("broken", "1", "1", id="pinned-around-failure"),
]


@pytest.mark.parametrize(("endpoint", "version", "expected"), ROUTES)
def test_resolve(models: Models, endpoint: str, version: str | None, expected: str) -> None:
    assert models.router.resolve(endpoint, version) == expected


@pytest.mark.parametrize(("endpoint", "version", "expected"), ROUTES)
def test_choose(models: Models, endpoint: str, version: str | None, expected: str) -> None:
    assert models.router.choose(request(endpoint, version)) == expected


NOT_FOUND = [
    pytest.param("nope", None, "unknown model 'nope'", id="unknown-endpoint"),
    pytest.param("nope", "1", "unknown model 'nope'", id="unknown-endpoint-pinned"),
    pytest.param("mlp", "3", "model 'mlp' has no version '3'", id="unknown-version"),
    pytest.param("mlp", "010", "model 'mlp' has no version '010'", id="zero-padded-version"),
    pytest.param("single", "1", "model 'single' has no version '1'", id="other-models-version"),
    pytest.param("Mlp", None, "unknown model 'Mlp'", id="case-matters"),
    pytest.param("e" * 1000, None, "unknown model '" + "e" * 64 + "…'", id="huge-endpoint"),
]


@pytest.mark.parametrize(("endpoint", "version", "message"), NOT_FOUND)
def test_unknown_endpoint_or_version(
    models: Models, endpoint: str, version: str | None, message: str
) -> None:
    with pytest.raises(ModelNotFound) as resolved:
        models.router.resolve(endpoint, version)
    with pytest.raises(ModelNotFound) as chosen:
        models.router.choose(request(endpoint, version))

    assert resolved.value.message == message
    assert chosen.value.message == message


@pytest.mark.parametrize(
    ("endpoint", "version"),
    [
        pytest.param("mlp", None, id="routed"),
        pytest.param("mlp", "1", id="pinned-1"),
        pytest.param("mlp", "2", id="pinned-2"),
        pytest.param("single", None, id="single"),
        pytest.param("broken", "1", id="pinned-around-failure"),
    ],
)
def test_run_returns_the_served_version(models: Models, endpoint: str, version: str | None) -> None:
    inference = request(endpoint, version)
    chosen = models.router.choose(inference)

    response = asyncio.run(models.router.run(inference, chosen))

    assert isinstance(response, InferenceResponse)
    assert response.endpoint == endpoint
    assert response.version == chosen
    expected = direct(models.paths[endpoint, chosen])
    assert list(response.outputs) == ["OUTPUT0", "LABEL"]
    np.testing.assert_allclose(response.outputs["OUTPUT0"], expected["OUTPUT0"], rtol=1e-5)
    np.testing.assert_array_equal(response.outputs["LABEL"], expected["LABEL"])
    assert response.stats.rows == 3


def test_pinned_versions_give_their_own_answers(models: Models) -> None:
    async def both() -> tuple[InferenceResponse, InferenceResponse]:
        return await asyncio.gather(
            models.router.run(request("mlp", "1"), "1"),
            models.router.run(request("mlp", "10"), "10"),
        )

    one, ten = asyncio.run(both())

    assert (one.version, ten.version) == ("1", "10")
    assert not np.allclose(one.outputs["OUTPUT0"], ten.outputs["OUTPUT0"])


def test_run_passes_requested_outputs(models: Models) -> None:
    inference = request("mlp", requested_outputs=("LABEL",))

    response = asyncio.run(models.router.run(inference, models.router.choose(inference)))

    assert list(response.outputs) == ["LABEL"]


def test_run_on_a_failed_version_is_not_ready(models: Models) -> None:
    inference = request("broken")

    with pytest.raises(ModelNotReady) as caught:
        asyncio.run(models.router.run(inference, models.router.choose(inference)))

    assert caught.value.message == (
        "model 'broken' version 2 is unavailable (failed to load: InvalidProtobuf)"
    )


def test_run_refuses_input_that_does_not_fit(models: Models) -> None:
    inference = InferenceRequest("mlp", {"INPUT0": np.zeros((1, 9), np.float32)})

    with pytest.raises(InvalidInput, match=r"expected shape \[-1, 4\], got \[1, 9\]"):
        asyncio.run(models.router.run(inference, models.router.choose(inference)))


def test_run_on_an_unknown_endpoint(models: Models) -> None:
    with pytest.raises(ModelNotFound, match=r"^unknown model 'nope'$"):
        asyncio.run(models.router.run(request("nope"), "1"))
