"""The router: which model version serves a request (router/router.py), over a repository of real
ONNX models loaded on the CPU: the pass-through routing of pinned and unpinned requests, then the
traffic policies (choose and run for each), route changes (validation, promote, rollback),
persistence and audit, feedback, shadow traffic and following the repository."""

import asyncio
import datetime
import json
import logging
import math
import random
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.support.onnx_models import write_model
from turnout.errors import AlreadyRecorded, InvalidInput, ModelNotFound, ModelNotReady
from turnout.models.loader import InstanceGroup, VersionSpec
from turnout.models.providers import CPU, Device
from turnout.models.repository import ModelRepository
from turnout.models.runner import ModelRunner
from turnout.models.types import ModelRequest, ModelResponse
from turnout.router import router as router_module
from turnout.router.router import Router
from turnout.router.specs import RouteConfig, parse_route
from turnout.router.state import AUDIT_FILE, BANDITS_FILE, ROUTES_FILE, StateStore
from turnout.router.types import InferenceRequest, InferenceResponse
from turnout.server.demo import build_mlp, finish_model

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
    pytest.param("broken", None, "1", id="highest-ready-skips-a-failed-one"),
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
    inference = request("broken", "2")

    with pytest.raises(ModelNotReady) as caught:
        asyncio.run(models.router.run(inference, models.router.choose(inference)))

    assert caught.value.message == (
        "model 'broken' version 2 is unavailable (failed to load; the server log says why)"
    )


def test_run_refuses_input_that_does_not_fit(models: Models) -> None:
    inference = InferenceRequest("mlp", {"INPUT0": np.zeros((1, 9), np.float32)})

    with pytest.raises(InvalidInput, match=r"expected shape \[-1, 4\], got \[1, 9\]"):
        asyncio.run(models.router.run(inference, models.router.choose(inference)))


def test_run_on_an_unknown_endpoint(models: Models) -> None:
    with pytest.raises(ModelNotFound, match=r"^unknown model 'nope'$"):
        asyncio.run(models.router.run(request("nope"), "1"))


# -- traffic policies on a real repository ---------------------------------------------------

_T = TypeVar("_T")
CPU_ONLY = (InstanceGroup(Device("cpu"), 1),)
WHO = "tester"


def refusing_classifier() -> onnx.ModelProto:
    """Looks like the small classifier (``INPUT0`` [batch, features] FP32 → ``OUTPUT0``,
    ``LABEL``) but its weight takes one feature more than the others: ONNX Runtime refuses every
    input of the others' width at run time, after the runner's checks have passed."""
    weight = numpy_helper.from_array(np.ones((FEATURES + 1, 3), np.float32), "W")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["INPUT0", "W"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["OUTPUT0"], axis=1),
            helper.make_node("ArgMax", ["OUTPUT0"], ["LABEL"], axis=1, keepdims=0),
        ],
        "refusing",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", "features"])],
        [
            helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("LABEL", TensorProto.INT64, ["batch"]),
        ],
        [weight],
    )
    return finish_model(graph)


class Traffic:
    """A loaded repository for the traffic policies: ``ab`` versions 1 and 2 (the classifier
    with two seeds); ``flaky`` version 1 (loads) and 2 (garbage, so never ready); ``shadowed``
    version 1 (the primary), 2 (another seed), 3 (a copy of 1) and 4 (refused by ONNX Runtime at
    run time)."""

    def __init__(self, root: Path) -> None:
        self.paths = {
            ("ab", "1"): mlp_file(root, "ab", "1"),
            ("ab", "2"): mlp_file(root, "ab", "2"),
            ("flaky", "1"): mlp_file(root, "flaky", "1"),
            ("shadowed", "1"): mlp_file(root, "shadowed", "1"),
            ("shadowed", "2"): mlp_file(root, "shadowed", "2"),
            ("shadowed", "3"): write_model(
                build_mlp(1, features=FEATURES, hidden=8, classes=3),
                root / "shadowed" / "3" / "model.onnx",
            ),
            ("shadowed", "4"): write_model(
                refusing_classifier(), root / "shadowed" / "4" / "model.onnx"
            ),
        }
        garbage = root / "flaky" / "2" / "model.onnx"
        garbage.parent.mkdir(parents=True)
        garbage.write_bytes(b"garbage")
        specs = [
            VersionSpec(name, version, path, CPU_ONLY, warmup=(name, version) != ("shadowed", "4"))
            for (name, version), path in self.paths.items()
        ]
        specs.append(VersionSpec("flaky", "2", garbage, CPU_ONLY))
        self.repository = ModelRepository(specs)
        asyncio.run(self.repository.load_all())
        self.expected = {
            key: direct(path) for key, path in self.paths.items() if key != ("shadowed", "4")
        }

    def router(self, store: StateStore | None = None, seed: int = 1, **kwargs: Any) -> Router:
        return Router(
            self.repository,
            store=store,
            rng=random.Random(seed),  # noqa: S311 - a test's fixed seed
            **kwargs,
        )


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traffic]:
    loaded = Traffic(tmp_path_factory.mktemp("traffic-models"))
    yield loaded
    loaded.repository.close()


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / "state")


def run(scenario: Callable[[], Awaitable[_T]]) -> _T:
    """Run an async test body on a fresh event loop, bounded so that a hang fails fast."""

    async def bounded() -> _T:
        return await asyncio.wait_for(scenario(), timeout=60)

    return asyncio.run(bounded())


def routed(endpoint: str, routing_key: str | None = None, request_id: str = "") -> InferenceRequest:
    return InferenceRequest(endpoint, dict(FEED), routing_key=routing_key, request_id=request_id)


def set_route(router: Router, endpoint: str, document: Any, who: str = WHO) -> dict[str, Any]:
    return run(lambda: router.set_route(endpoint, document, who))


async def serve(router: Router, inference: InferenceRequest) -> InferenceResponse:
    return await router.run(inference, router.choose(inference))


def check_outputs(traffic: Traffic, response: InferenceResponse) -> None:
    expected = traffic.expected[response.endpoint, response.version]
    np.testing.assert_allclose(response.outputs["OUTPUT0"], expected["OUTPUT0"], rtol=1e-5)
    np.testing.assert_array_equal(response.outputs["LABEL"], expected["LABEL"])


def within_five_sigma(count: int, total: int, share: float) -> bool:
    return abs(count - total * share) <= 5 * math.sqrt(total * share * (1 - share))


def files(store: StateStore) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(store.directory.iterdir())}


CHOICES = 4000
POLICIES = [
    pytest.param({"policy": "latest"}, {"2": 1.0}, id="latest"),
    pytest.param({"policy": "fixed", "version": "1"}, {"1": 1.0}, id="fixed"),
    pytest.param(
        {"policy": "canary", "weights": {"1": 90, "2": 10}}, {"1": 0.9, "2": 0.1}, id="canary"
    ),
    pytest.param(
        {"policy": "canary", "weights": {"1": 0, "2": 5}}, {"2": 1.0}, id="canary-all-on-2"
    ),
    pytest.param({"policy": "blue_green", "live": "1", "staged": "2"}, {"1": 1.0}, id="blue-green"),
    pytest.param(
        {"policy": "bandit", "algorithm": "thompson", "arms": ["1", "2"]},
        {"1": 0.5, "2": 0.5},
        id="bandit-thompson-untrained",
    ),
    pytest.param(
        {"policy": "bandit", "algorithm": "ucb1", "arms": ["2", "1"]},
        {"1": 0.5, "2": 0.5},
        id="bandit-ucb1-untrained",
    ),
    pytest.param(
        {"policy": "rollout", "stable": "1", "canary": "2", "steps": [20, 100]},
        {"1": 0.8, "2": 0.2},
        id="rollout-first-step",
    ),
]


@pytest.mark.parametrize(("document", "shares"), POLICIES)
def test_each_policy_chooses_by_its_rule(
    traffic: Traffic, document: dict[str, Any], shares: dict[str, float]
) -> None:
    router = traffic.router()
    set_route(router, "ab", document)

    chosen = Counter(router.choose(routed("ab")) for _ in range(CHOICES))

    assert set(chosen) == set(shares), chosen
    for version, share in shares.items():
        assert within_five_sigma(chosen[version], CHOICES, share), (version, chosen)


@pytest.mark.parametrize(("document", "shares"), POLICIES)
def test_each_policy_runs_the_version_it_chose(
    traffic: Traffic, document: dict[str, Any], shares: dict[str, float]
) -> None:
    router = traffic.router()

    async def scenario() -> list[InferenceResponse]:
        await router.set_route("ab", document, WHO)
        return [await serve(router, routed("ab", request_id=f"r{n}")) for n in range(12)]

    responses = run(scenario)

    for number, response in enumerate(responses):
        assert response.endpoint == "ab"
        assert response.version in shares
        assert response.request_id == f"r{number}"
        check_outputs(traffic, response)


def test_a_pinned_request_bypasses_the_route(traffic: Traffic) -> None:
    router = traffic.router()
    set_route(router, "ab", {"policy": "fixed", "version": "1"})
    pinned = InferenceRequest("ab", dict(FEED), version="2")

    response = run(lambda: serve(router, pinned))

    assert response.version == "2"
    check_outputs(traffic, response)


def test_a_canary_is_sticky_per_routing_key(traffic: Traffic) -> None:
    router = traffic.router()
    set_route(router, "ab", {"policy": "canary", "weights": {"1": 70, "2": 30}})
    keys = [f"user-{n}" for n in range(CHOICES)]

    first = [router.choose(routed("ab", key)) for key in keys]
    again = [router.choose(routed("ab", key)) for key in keys]
    fresh = traffic.router(seed=99)  # another router, another generator: the same keys' versions
    set_route(fresh, "ab", {"policy": "canary", "weights": {"1": 70, "2": 30}})

    assert again == first
    assert [fresh.choose(routed("ab", key)) for key in keys] == first
    assert within_five_sigma(first.count("2"), CHOICES, 0.3)
    response = run(lambda: serve(router, routed("ab", "user-7")))
    assert response.version == first[7]


def test_resolve_names_the_primary_version(traffic: Traffic) -> None:
    router = traffic.router()
    primaries = []
    for document in (
        {"policy": "latest"},
        {"policy": "fixed", "version": "1"},
        {"policy": "canary", "weights": {"1": 90, "2": 10}},
        {"policy": "canary", "weights": {"1": 40, "2": 60}},
        {"policy": "blue_green", "live": "1", "staged": "2"},
        {"policy": "rollout", "stable": "1", "canary": "2"},
        {"policy": "bandit", "arms": ["2", "1"]},
    ):
        set_route(router, "ab", document)
        primaries.append(router.resolve("ab", None))

    assert primaries == ["2", "1", "1", "2", "1", "1", "2"]


# -- changing routes -------------------------------------------------------------------------

CANARY = {"policy": "canary", "weights": {"1": 90, "2": 10}}
CANARY_DOCUMENT = {"policy": "canary", "weights": {"1": 90.0, "2": 10.0}}

REFUSED_ROUTES = [
    pytest.param(
        "ab",
        {"policy": "fixed", "version": "7"},
        "version: model 'ab' has no version '7'",
        id="unknown-version",
    ),
    pytest.param(
        "ab",
        {"policy": "canary", "weights": {"1": 50, "7": 50}},
        "weights.7: model 'ab' has no version '7'",
        id="unknown-version-among-weights",
    ),
    pytest.param(
        "ab",
        {"policy": "fixed", "version": "1", "shadow": {"version": "9"}},
        "shadow.version: model 'ab' has no version '9'",
        id="unknown-shadow-version",
    ),
    pytest.param(
        "ab",
        {"policy": "bandit", "arms": ["1", "2", "3"]},
        "arms[2]: model 'ab' has no version '3'",
        id="unknown-arm",
    ),
    pytest.param(
        "flaky",
        {"policy": "fixed", "version": "2"},
        "version: model 'flaky' version 2 is not ready",
        id="not-ready",
    ),
    pytest.param(
        "flaky",
        {"policy": "blue_green", "live": "1", "staged": "2"},
        "staged: model 'flaky' version 2 is not ready",
        id="staged-not-ready",
    ),
    pytest.param(
        "flaky",
        {"policy": "latest", "shadow": {"version": "2"}},
        "shadow.version: model 'flaky' version 2 is not ready",
        id="shadow-not-ready",
    ),
    pytest.param("ab", {"policy": "canary"}, "weights: required by policy canary", id="malformed"),
    pytest.param(
        "ab",
        {"policy": "blue_green", "live": "1", "staged": "1"},
        "staged: must differ from live",
        id="invalid",
    ),
    pytest.param("ab", "canary", "route: must be an object with a 'policy'", id="not-an-object"),
    pytest.param(
        "ab", {"policy": "latest", "colour": 1}, "colour: unknown field", id="unknown-key"
    ),
]


@pytest.mark.parametrize(("endpoint", "document", "message"), REFUSED_ROUTES)
def test_a_refused_route_changes_nothing(
    traffic: Traffic, store: StateStore, endpoint: str, document: Any, message: str
) -> None:
    router = traffic.router(store)
    set_route(router, endpoint, {"policy": "fixed", "version": "1"})
    before = (router.describe_all(), files(store), dict(router.routes()))

    with pytest.raises(InvalidInput) as caught:
        set_route(router, endpoint, document)

    assert caught.value.message == message
    assert (router.describe_all(), files(store), dict(router.routes())) == before
    assert {router.choose(routed(endpoint)) for _ in range(50)} == {"1"}


def test_a_route_for_an_unknown_endpoint_is_not_found(traffic: Traffic, store: StateStore) -> None:
    router = traffic.router(store)

    with pytest.raises(ModelNotFound, match=r"^unknown model 'nope'$"):
        set_route(router, "nope", {"policy": "latest"})

    assert "nope" not in router.routes()
    assert files(store) == {}


def test_a_route_change_is_saved_and_audited(traffic: Traffic, store: StateStore) -> None:
    router = traffic.router(store)

    described = set_route(router, "ab", CANARY, who="alice")

    assert described == {"endpoint": "ab", "route": CANARY_DOCUMENT}
    saved = json.loads((store.directory / ROUTES_FILE).read_text(encoding="utf-8"))
    assert saved["ab"] == {"route": CANARY_DOCUMENT, "history": [{"policy": "latest"}]}
    (entry,) = run(lambda: router.audit(10))
    assert entry["who"] == "alice"
    assert entry["action"] == "set"
    assert entry["endpoint"] == "ab"
    assert entry["old"] == {"policy": "latest"}
    assert entry["new"] == CANARY_DOCUMENT
    when = datetime.datetime.fromisoformat(entry["time"])
    assert when.tzinfo is not None
    assert abs(datetime.datetime.now(datetime.UTC) - when) < datetime.timedelta(minutes=5)


PROMOTIONS = [
    pytest.param(
        {"policy": "blue_green", "live": "1", "staged": "2"},
        {"policy": "blue_green", "live": "2", "staged": "1"},
        {"2"},
        id="blue-green-swaps",
    ),
    pytest.param(
        CANARY,
        {"policy": "canary", "weights": {"1": 0.0, "2": 100.0}},
        {"2"},
        id="canary-newest-gets-everything",
    ),
    pytest.param(
        {"policy": "canary", "weights": {"2": 90, "1": 10}},
        {"policy": "canary", "weights": {"2": 100.0, "1": 0.0}},
        {"2"},
        id="canary-newest-even-if-major",
    ),
    pytest.param(
        {"policy": "rollout", "stable": "1", "canary": "2", "steps": [10, 100]},
        {"policy": "fixed", "version": "2"},
        {"2"},
        id="rollout-fixed-on-canary",
    ),
    pytest.param(
        {"policy": "rollout", "stable": "2", "canary": "1"},
        {"policy": "fixed", "version": "1"},
        {"1"},
        id="rollout-to-a-lower-version",
    ),
]


@pytest.mark.parametrize(("document", "promoted", "serving"), PROMOTIONS)
def test_promote(
    traffic: Traffic,
    store: StateStore,
    document: dict[str, Any],
    promoted: dict[str, Any],
    serving: set[str],
) -> None:
    router = traffic.router(store)
    before = set_route(router, "ab", document)["route"]

    described = run(lambda: router.promote("ab", "bob"))

    assert described["route"] == promoted
    assert {router.choose(routed("ab")) for _ in range(200)} == serving
    entry = run(lambda: router.audit(1))[0]
    assert (entry["who"], entry["action"], entry["old"], entry["new"]) == (
        "bob",
        "promote",
        before,
        promoted,
    )
    # and a rollback undoes the promotion
    assert run(lambda: router.rollback("ab", "bob"))["route"] == before


def test_promote_keeps_the_shadow(traffic: Traffic) -> None:
    router = traffic.router()
    set_route(
        router,
        "shadowed",
        {
            "policy": "blue_green",
            "live": "1",
            "staged": "2",
            "shadow": {"version": "3", "rate": 0.5},
        },
    )

    described = run(lambda: router.promote("shadowed", WHO))

    assert described["route"] == {
        "policy": "blue_green",
        "live": "2",
        "staged": "1",
        "shadow": {"version": "3", "rate": 0.5, "max_inflight": 64},
    }


@pytest.mark.parametrize(
    ("document", "message"),
    [
        pytest.param({"policy": "latest"}, "a latest route has nothing to promote", id="latest"),
        pytest.param(
            {"policy": "fixed", "version": "1"}, "a fixed route has nothing to promote", id="fixed"
        ),
        pytest.param(
            {"policy": "blue_green", "live": "1"},
            "nothing is staged to promote",
            id="nothing-staged",
        ),
    ],
)
def test_promote_refused(
    traffic: Traffic, store: StateStore, document: dict[str, Any], message: str
) -> None:
    router = traffic.router(store)
    set_route(router, "ab", document)
    before = (router.describe_all(), files(store))

    with pytest.raises(InvalidInput) as caught:
        run(lambda: router.promote("ab", WHO))

    assert caught.value.message == message
    assert (router.describe_all(), files(store)) == before


def train(
    traffic: Traffic, router: Router, endpoint: str, pays: dict[str, float], requests: int = 40
) -> Counter[str]:
    """Serve ``requests`` routed requests and reward each one: ``pays[version]``."""

    async def scenario() -> Counter[str]:
        served: Counter[str] = Counter()
        for number in range(requests):
            response = await serve(router, routed(endpoint, request_id=f"train-{number}"))
            check_outputs(traffic, response)
            served[response.version] += 1
            assert router.feedback(endpoint, response.request_id, pays[response.version]) == (
                response.version
            )
        return served

    return run(scenario)


def test_promote_a_bandit_fixes_its_best_arm(traffic: Traffic, store: StateStore) -> None:
    router = traffic.router(store)
    set_route(router, "ab", {"policy": "bandit", "algorithm": "ucb1", "arms": ["1", "2"]})
    train(traffic, router, "ab", {"1": 0.0, "2": 1.0})
    estimates = {arm: stats["estimate"] for arm, stats in router.describe("ab")["bandit"].items()}
    assert estimates == {"1": 0.0, "2": 1.0}

    described = run(lambda: router.promote("ab", WHO))

    assert described["route"] == {"policy": "fixed", "version": "2"}
    assert {router.choose(routed("ab")) for _ in range(100)} == {"2"}


def test_rollback_goes_back_one_change_at_a_time(traffic: Traffic, store: StateStore) -> None:
    router = traffic.router(store)
    set_route(router, "ab", {"policy": "fixed", "version": "1"})
    set_route(router, "ab", CANARY)
    set_route(router, "ab", {"policy": "blue_green", "live": "2", "staged": "1"})

    undone = [run(lambda: router.rollback("ab", "carol"))["route"] for _ in range(3)]

    assert undone == [CANARY_DOCUMENT, {"policy": "fixed", "version": "1"}, {"policy": "latest"}]
    with pytest.raises(InvalidInput, match=r"^endpoint 'ab' has no earlier route$"):
        run(lambda: router.rollback("ab", "carol"))
    entries = run(lambda: router.audit(10))
    assert [entry["action"] for entry in entries] == ["set"] * 3 + ["rollback"] * 3
    assert [entry["who"] for entry in entries[3:]] == ["carol"] * 3
    assert entries[3]["old"]["policy"] == "blue_green"
    assert entries[3]["new"] == CANARY_DOCUMENT
    saved = json.loads((store.directory / ROUTES_FILE).read_text(encoding="utf-8"))
    assert saved["ab"] == {"route": {"policy": "latest"}, "history": []}


def test_rollback_with_no_history_is_refused(traffic: Traffic, store: StateStore) -> None:
    router = traffic.router(store)

    with pytest.raises(InvalidInput) as caught:
        run(lambda: router.rollback("ab", WHO))

    assert caught.value.message == "endpoint 'ab' has no earlier route"
    assert files(store) == {}


def test_rollback_of_a_running_rollout(traffic: Traffic, store: StateStore) -> None:
    router = traffic.router(store)
    set_route(router, "ab", CANARY)
    rollout = set_route(
        router, "ab", {"policy": "rollout", "stable": "1", "canary": "2", "steps": [50, 100]}
    )["route"]
    assert within_five_sigma(
        Counter(router.choose(routed("ab")) for _ in range(CHOICES))["2"], CHOICES, 0.5
    )

    described = run(lambda: router.rollback("ab", "dave"))

    assert described["route"] == rollout, "the route stays a rollout, rolled back"
    assert described["rollout"] == {
        "status": "rolled_back",
        "step": 0,
        "percent": 0.0,
        "reason": "rolled back by hand",
    }
    assert router.rollbacks == {"ab": 1}
    assert {router.choose(routed("ab")) for _ in range(500)} == {"1"}
    entry = run(lambda: router.audit(1))[0]
    assert (entry["who"], entry["action"], entry["old"], entry["new"], entry["reason"]) == (
        "dave",
        "rollback",
        rollout,
        None,
        "rolled back by hand",
    )
    saved = json.loads((store.directory / ROUTES_FILE).read_text(encoding="utf-8"))
    assert saved["ab"]["rollout"] == {
        "step": 0,
        "status": "rolled_back",
        "reason": "rolled back by hand",
    }

    # A rollout no longer running is undone like any other route.
    assert run(lambda: router.rollback("ab", "dave"))["route"] == CANARY_DOCUMENT


def test_promote_a_rollout_after_it_was_rolled_back(traffic: Traffic) -> None:
    router = traffic.router()
    set_route(router, "ab", {"policy": "rollout", "stable": "1", "canary": "2"})
    run(lambda: router.rollback("ab", WHO))

    assert run(lambda: router.promote("ab", WHO))["route"] == {"policy": "fixed", "version": "2"}


def test_rollback_of_a_bandit_promotion_keeps_what_it_learned(traffic: Traffic) -> None:
    router = traffic.router()
    set_route(router, "ab", {"policy": "bandit", "algorithm": "ucb1", "arms": ["1", "2"]})
    train(traffic, router, "ab", {"1": 0.0, "2": 1.0})
    learned = router.describe("ab")["bandit"]
    run(lambda: router.promote("ab", WHO))

    described = run(lambda: router.rollback("ab", WHO))

    assert described["route"]["policy"] == "bandit"
    assert described["bandit"] == learned


# -- persistence -----------------------------------------------------------------------------


def test_routes_history_and_bandit_stats_survive_a_restart(
    traffic: Traffic, store: StateStore
) -> None:
    before = traffic.router(store)
    set_route(before, "ab", CANARY)
    bandit = {"policy": "bandit", "algorithm": "thompson", "arms": ["1", "2"]}
    set_route(before, "ab", bandit)
    set_route(before, "shadowed", {"policy": "fixed", "version": "2", "shadow": {"version": "3"}})
    train(traffic, before, "ab", {"1": 1.0, "2": 0.0})
    run(before.save_bandits)

    after = Router(traffic.repository, store=StateStore(store.directory))
    assert after.describe("ab")["route"] == {"policy": "latest"}, "nothing applied before restore"
    run(after.restore)

    assert after.describe_all() == before.describe_all()
    assert after.describe("ab")["bandit"]["1"]["rewards"] > 0
    assert json.loads((store.directory / BANDITS_FILE).read_text(encoding="utf-8"))["ab"] == (
        before.routes()["ab"].bandit.snapshot()  # type: ignore[union-attr]
    )
    # the history came back too
    assert run(lambda: after.rollback("ab", WHO))["route"] == CANARY_DOCUMENT
    assert run(lambda: after.rollback("ab", WHO))["route"] == {"policy": "latest"}


def test_a_rollout_state_survives_a_restart(traffic: Traffic, store: StateStore) -> None:
    before = traffic.router(store)
    set_route(before, "ab", {"policy": "rollout", "stable": "1", "canary": "2"})
    run(lambda: before.rollback("ab", WHO))

    after = traffic.router(StateStore(store.directory))
    run(after.restore)

    assert after.describe("ab")["rollout"] == {
        "status": "rolled_back",
        "step": 0,
        "percent": 0.0,
        "reason": "rolled back by hand",
    }
    assert {after.choose(routed("ab")) for _ in range(200)} == {"1"}


@pytest.mark.parametrize(
    "saved",
    [
        pytest.param(
            {"route": {"policy": "fixed", "version": "7"}, "history": []}, id="version-gone"
        ),
        pytest.param(
            {"route": {"policy": "fixed", "version": "2"}, "history": [{"policy": "canary"}]},
            id="bad-history",
        ),
        pytest.param({"route": {"policy": "fixed"}, "history": []}, id="malformed-route"),
        pytest.param({"history": []}, id="no-route"),
        pytest.param({"route": "fixed"}, id="route-not-an-object"),
        pytest.param(
            {
                "route": {"policy": "rollout", "stable": "1", "canary": "2"},
                "rollout": {"status": "running"},
            },
            id="rollout-without-step",
        ),
    ],
)
def test_a_saved_route_that_no_longer_applies_falls_back_to_the_config(
    traffic: Traffic, store: StateStore, caplog: pytest.LogCaptureFixture, saved: dict[str, Any]
) -> None:
    store.save_routes(
        {"ab": saved, "shadowed": {"route": {"policy": "fixed", "version": "3"}, "history": []}}
    )
    configured = {"ab": RouteConfig(policy="fixed", version="1")}
    router = traffic.router(store, routes=configured)

    with caplog.at_level(logging.ERROR, logger="turnout.router.router"):
        run(router.restore)

    assert router.describe("ab")["route"] == {"policy": "fixed", "version": "1"}
    assert router.describe("shadowed")["route"] == {"policy": "fixed", "version": "3"}
    (record,) = [r for r in caplog.records if r.name == "turnout.router.router"]
    assert record.getMessage().startswith("saved state of 'ab' not applied (")
    assert record.getMessage().endswith("); using the config's")


def test_restore_without_saved_state_keeps_the_config(traffic: Traffic, store: StateStore) -> None:
    configured = {"ab": parse_route(CANARY)}
    router = traffic.router(store, routes=configured)

    run(router.restore)

    assert router.describe("ab")["route"] == CANARY_DOCUMENT
    assert router.describe("shadowed")["route"] == {"policy": "latest"}


def test_saved_bandit_stats_apply_to_a_configured_bandit(
    traffic: Traffic, store: StateStore
) -> None:
    stats = {"pulls": 10, "rewards": 8, "total": 6.0, "total_squares": 6.0}
    store.save_bandits({"ab": {"2": stats, "9": stats}})
    configured = {"ab": parse_route({"policy": "bandit", "arms": ["1", "2"]})}
    router = traffic.router(store, routes=configured)

    run(router.restore)

    assert router.describe("ab")["bandit"] == {
        "1": {"pulls": 0, "rewards": 0, "total": 0.0, "total_squares": 0.0, "estimate": 0.0},
        "2": {**stats, "estimate": 0.75},
    }


def test_a_router_without_a_store_keeps_nothing(traffic: Traffic) -> None:
    router = traffic.router()
    set_route(router, "ab", CANARY)
    run(router.restore)

    assert run(lambda: router.audit(10)) == []
    run(router.save_bandits)
    assert router.describe("ab")["route"] == CANARY_DOCUMENT


def test_the_audit_log_lists_every_change(traffic: Traffic, store: StateStore) -> None:
    router = traffic.router(store)
    set_route(router, "ab", {"policy": "blue_green", "live": "1", "staged": "2"}, who="alice")
    run(lambda: router.promote("ab", "bob"))
    run(lambda: router.rollback("ab", "carol"))

    entries = run(lambda: router.audit(10))

    assert [(e["who"], e["action"], e["endpoint"], e["old"], e["new"]) for e in entries] == [
        (
            "alice",
            "set",
            "ab",
            {"policy": "latest"},
            {"policy": "blue_green", "live": "1", "staged": "2"},
        ),
        (
            "bob",
            "promote",
            "ab",
            {"policy": "blue_green", "live": "1", "staged": "2"},
            {"policy": "blue_green", "live": "2", "staged": "1"},
        ),
        (
            "carol",
            "rollback",
            "ab",
            {"policy": "blue_green", "live": "2", "staged": "1"},
            {"policy": "blue_green", "live": "1", "staged": "2"},
        ),
    ]
    assert run(lambda: router.audit(1)) == entries[-1:]
    lines = (store.directory / AUDIT_FILE).read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == entries


# -- feedback --------------------------------------------------------------------------------

BANDIT = {"policy": "bandit", "algorithm": "thompson", "arms": ["1", "2"]}


def test_feedback_credits_the_arm_and_the_ledger(traffic: Traffic) -> None:
    router = traffic.router()
    set_route(router, "ab", BANDIT)
    response = run(lambda: serve(router, routed("ab", request_id="req-1")))

    version = router.feedback("ab", "req-1", 1.0)

    assert version == response.version
    arm = router.describe("ab")["bandit"][version]
    assert (arm["pulls"], arm["rewards"], arm["total"], arm["estimate"]) == (1, 1, 1.0, 1.0)
    rewards = router.ledger.account("ab", version).rewards
    assert (rewards.count, rewards.total) == (1, 1.0)
    with pytest.raises(AlreadyRecorded, match=r"^request 'req-1' already has a reward$"):
        router.feedback("ab", "req-1", 1.0)
    assert router.describe("ab")["bandit"][version]["rewards"] == 1


@pytest.mark.parametrize(
    ("reward", "message"),
    [
        pytest.param(0.5, "this route takes rewards of 0 or 1", id="not-binary"),
        pytest.param(math.nan, "reward must be a finite number", id="nan"),
        pytest.param(-math.inf, "reward must be a finite number", id="infinite"),
    ],
)
def test_a_refused_reward_leaves_the_request_open(
    traffic: Traffic, reward: float, message: str
) -> None:
    router = traffic.router()
    set_route(router, "ab", BANDIT)
    response = run(lambda: serve(router, routed("ab", request_id="req-1")))

    with pytest.raises(InvalidInput) as caught:
        router.feedback("ab", "req-1", reward)

    assert caught.value.message == message
    assert router.describe("ab")["bandit"][response.version]["rewards"] == 0
    assert router.ledger.account("ab", response.version).rewards.count == 0
    assert router.feedback("ab", "req-1", 0.0) == response.version, "the id is still open"


def test_feedback_for_an_unknown_request(traffic: Traffic) -> None:
    router = traffic.router(feedback_ttl_s=60)
    set_route(router, "ab", BANDIT)

    with pytest.raises(ModelNotFound) as caught:
        router.feedback("ab", "never-served", 1.0)

    assert caught.value.message == (
        "no recent request 'never-served' on endpoint 'ab' (ids are remembered for 60 s)"
    )
    with pytest.raises(ModelNotFound, match=r"^unknown model 'nope'$"):
        router.feedback("nope", "never-served", 1.0)


def test_feedback_on_a_route_without_a_bandit_goes_to_the_ledger(traffic: Traffic) -> None:
    router = traffic.router()
    set_route(router, "ab", CANARY)
    response = run(lambda: serve(router, routed("ab", request_id="req-1")))

    assert router.feedback("ab", "req-1", 0.25) == response.version

    rewards = router.ledger.account("ab", response.version).rewards
    assert (rewards.count, rewards.total, rewards.binary) == (1, 0.25, False)
    assert "bandit" not in router.describe("ab")


def test_feedback_for_a_pinned_request_credits_the_pinned_arm(traffic: Traffic) -> None:
    router = traffic.router()
    set_route(router, "ab", BANDIT)
    pinned = InferenceRequest("ab", dict(FEED), version="2", request_id="pinned")
    run(lambda: serve(router, pinned))

    assert router.feedback("ab", "pinned", 1.0) == "2"
    assert router.describe("ab")["bandit"]["2"]["rewards"] == 1


def test_a_bandit_route_gives_a_request_an_id(traffic: Traffic) -> None:
    router = traffic.router()
    set_route(router, "ab", BANDIT)
    inference = routed("ab")

    response = run(lambda: serve(router, inference))

    assert re.fullmatch(r"[0-9a-f]{32}", inference.request_id)
    assert response.request_id == inference.request_id
    assert router.feedback("ab", response.request_id, 1.0) == response.version
    ids = set()
    for _ in range(100):
        another = routed("ab")
        router.choose(another)
        ids.add(another.request_id)
    assert len(ids) == 100, "ids repeat"


def test_a_bandit_route_keeps_a_given_id(traffic: Traffic) -> None:
    router = traffic.router()
    set_route(router, "ab", BANDIT)
    inference = routed("ab", request_id="mine")

    router.choose(inference)

    assert inference.request_id == "mine"


@pytest.mark.parametrize(
    "document",
    [
        pytest.param({"policy": "latest"}, id="latest"),
        pytest.param(CANARY, id="canary"),
        pytest.param({"policy": "rollout", "stable": "1", "canary": "2"}, id="rollout"),
    ],
)
def test_other_routes_give_no_id(traffic: Traffic, document: dict[str, Any]) -> None:
    router = traffic.router()
    set_route(router, "ab", document)
    inference = routed("ab")

    response = run(lambda: serve(router, inference))

    assert inference.request_id == response.request_id == ""


def test_rewards_steer_a_bandit_route(traffic: Traffic) -> None:
    router = traffic.router(seed=4)
    set_route(router, "ab", BANDIT)
    train(traffic, router, "ab", {"1": 0.0, "2": 1.0}, requests=60)

    chosen = Counter(router.choose(routed("ab")) for _ in range(1000))

    assert chosen["2"] >= 900, chosen
    assert router.resolve("ab", None) == "2"


def test_finished_requests_are_accounted(traffic: Traffic) -> None:
    router = traffic.router()
    for status in ("success", "success", "internal_error", "overloaded", "deadline_exceeded"):
        router.finished("ab", "1", 0.01, status)
    for status in ("invalid_input", "not_found", "cancelled", "payload_too_large"):
        router.finished("ab", "1", 0.01, status)

    account = router.ledger.account("ab", "1")

    assert (account.requests, account.errors) == (5, 3)


def test_report_covers_the_routes_versions(traffic: Traffic) -> None:
    router = traffic.router()
    set_route(router, "ab", BANDIT)
    train(traffic, router, "ab", {"1": 0.0, "2": 1.0})
    for version in ("1", "2"):
        for _ in range(10):
            router.finished("ab", version, 0.01, "success")

    report = router.report("ab")

    assert list(report["versions"]) == ["1", "2"]
    assert report["versions"]["2"]["rewards"]["mean"] == 1.0
    assert report["comparisons"][0]["versions"] == ["1", "2"]


# -- shadow traffic --------------------------------------------------------------------------


def shadow_route(version: str, **shadow: Any) -> dict[str, Any]:
    return {"policy": "fixed", "version": "1", "shadow": {"version": version, **shadow}}


def test_a_shadow_is_compared_with_the_primary(traffic: Traffic) -> None:
    router = traffic.router()
    set_route(router, "shadowed", shadow_route("2"))

    async def scenario() -> InferenceResponse:
        response = await serve(router, routed("shadowed", request_id="cmp"))
        await router.shadows.drain()
        return response

    response = run(scenario)

    assert response.version == "1"
    check_outputs(traffic, response)
    counters = router.shadows.counters["shadowed", "2"]
    assert (counters.mirrored, counters.dropped, counters.errors, counters.compared) == (1, 0, 0, 1)
    primary, shadow = traffic.expected["shadowed", "1"], traffic.expected["shadowed", "2"]
    probabilities = float(
        np.max(np.abs(primary["OUTPUT0"].astype(np.float64) - shadow["OUTPUT0"].astype(np.float64)))
    )
    labels = float(np.max(np.abs(primary["LABEL"] - shadow["LABEL"])))
    agreed = np.argmax(primary["OUTPUT0"], axis=-1) == np.argmax(shadow["OUTPUT0"], axis=-1)
    (record,) = counters.records
    assert record["request_id"] == "cmp"
    assert set(record["outputs"]) == {"OUTPUT0", "LABEL"}
    assert record["outputs"]["OUTPUT0"]["max_abs_diff"] == pytest.approx(probabilities, rel=1e-5)
    assert record["outputs"]["OUTPUT0"]["top1_agreement"] == pytest.approx(float(agreed.mean()))
    assert record["outputs"]["LABEL"] == {"max_abs_diff": labels}
    assert (counters.top1_rows, counters.top1_agreed) == (3, int(agreed.sum()))
    assert sum(counters.max_abs_diff.counts) == 1
    assert counters.max_abs_diff.total == pytest.approx(max(probabilities, labels), rel=1e-5)
    assert router.describe("shadowed")["shadow"] == {
        "mirrored": 1,
        "dropped": 0,
        "errors": 0,
        "compared": 1,
        "recent": [record],
    }


def test_an_identical_shadow_agrees_exactly(traffic: Traffic) -> None:
    router = traffic.router()
    set_route(router, "shadowed", shadow_route("3"))

    async def scenario() -> None:
        for number in range(5):
            await serve(router, routed("shadowed", request_id=str(number)))
        await router.shadows.drain()

    run(scenario)

    counters = router.shadows.counters["shadowed", "3"]
    assert (counters.mirrored, counters.compared, counters.errors) == (5, 5, 0)
    assert (counters.top1_rows, counters.top1_agreed) == (15, 15)
    assert counters.max_abs_diff.total == 0.0
    for record in counters.records:
        assert record["outputs"]["OUTPUT0"] == {"max_abs_diff": 0.0, "top1_agreement": 1.0}
    assert [record["request_id"] for record in counters.records] == ["0", "1", "2", "3", "4"]


def test_a_failing_shadow_does_not_touch_the_primary(traffic: Traffic) -> None:
    router = traffic.router()
    set_route(router, "shadowed", shadow_route("4"))

    async def scenario() -> list[InferenceResponse]:
        responses = [await serve(router, routed("shadowed")) for _ in range(3)]
        await router.shadows.drain()
        return responses

    responses = run(scenario)

    for response in responses:
        assert response.version == "1"
        check_outputs(traffic, response)
    counters = router.shadows.counters["shadowed", "4"]
    assert (counters.mirrored, counters.errors, counters.compared) == (3, 3, 0)
    assert list(counters.records) == []
    assert router.describe("shadowed")["shadow"]["errors"] == 3


class Gate:
    """Holds every run of one model version until opened: a shadow as slow as the test wants."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, runner: ModelRunner) -> None:
        self._infer = runner.infer
        self.opened = asyncio.Event()
        self.waiting = 0
        monkeypatch.setattr(runner, "infer", self.infer)

    async def infer(self, request: ModelRequest) -> ModelResponse:
        self.waiting += 1
        await self.opened.wait()
        response: ModelResponse = await self._infer(request)
        return response


def test_a_slow_shadow_is_not_waited_for(traffic: Traffic, monkeypatch: pytest.MonkeyPatch) -> None:
    router = traffic.router()
    set_route(router, "shadowed", shadow_route("2", max_inflight=1))
    counters_key = ("shadowed", "2")

    async def scenario() -> None:
        gate = Gate(monkeypatch, traffic.repository.runner("shadowed", "2"))
        first = await serve(router, routed("shadowed"))
        await wait_until(lambda: gate.waiting == 1, "the shadow copy held at the gate")
        # The primary answered while its shadow is held: nothing was waited for.
        assert first.version == "1"
        check_outputs(traffic, first)
        counters = router.shadows.counters[counters_key]
        assert (counters.mirrored, counters.compared) == (1, 0)

        second = await serve(router, routed("shadowed"))  # its copy would exceed max_inflight
        check_outputs(traffic, second)
        assert (counters.mirrored, counters.dropped) == (1, 1)

        gate.opened.set()
        await router.shadows.drain()
        assert (counters.mirrored, counters.dropped, counters.compared, counters.errors) == (
            1,
            1,
            1,
            0,
        )
        assert gate.waiting == 1

        third = await serve(router, routed("shadowed"))  # room again once the copy finished
        await router.shadows.drain()
        check_outputs(traffic, third)
        assert (counters.mirrored, counters.compared) == (2, 2)

    run(scenario)
    assert router.describe("shadowed")["shadow"]["dropped"] == 1


def test_pinned_requests_are_not_mirrored(traffic: Traffic) -> None:
    router = traffic.router()
    set_route(router, "shadowed", shadow_route("2"))

    async def scenario() -> None:
        await serve(router, InferenceRequest("shadowed", dict(FEED), version="1"))
        await router.shadows.drain()

    run(scenario)

    assert router.shadows.counters == {}
    assert "shadow" not in router.describe("shadowed")


def test_a_shadow_of_the_chosen_version_is_not_mirrored(traffic: Traffic) -> None:
    router = traffic.router()
    set_route(
        router,
        "shadowed",
        {"policy": "canary", "weights": {"1": 50, "3": 50}, "shadow": {"version": "3"}},
    )

    async def scenario() -> Counter[str]:
        served = Counter([(await serve(router, routed("shadowed"))).version for _ in range(40)])
        await router.shadows.drain()
        return served

    served = run(scenario)

    assert router.shadows.counters["shadowed", "3"].mirrored == served["1"]


@pytest.mark.parametrize(
    ("rate", "share"),
    [
        pytest.param(0.0, 0.0, id="never"),
        pytest.param(0.3, 0.3, id="30-percent"),
        pytest.param(1.0, 1.0, id="always"),
    ],
)
def test_the_shadow_rate_samples_requests(traffic: Traffic, rate: float, share: float) -> None:
    router = traffic.router(seed=6)
    set_route(router, "shadowed", shadow_route("3", rate=rate))
    requests = 300

    async def scenario() -> None:
        for _ in range(requests):
            await serve(router, routed("shadowed"))
        await router.shadows.drain()

    run(scenario)

    counters = router.shadows.counters.get(("shadowed", "3"))
    sampled = 0 if counters is None else counters.mirrored + counters.dropped
    if share in (0.0, 1.0):
        assert sampled == requests * share
    else:
        assert within_five_sigma(sampled, requests, share), sampled


# -- following the repository ----------------------------------------------------------------


def test_refresh_follows_the_latest_version(tmp_path: Path) -> None:
    paths = {version: mlp_file(tmp_path, "grow", version) for version in ("1", "2", "3")}
    repository = ModelRepository([VersionSpec("grow", "1", paths["1"], CPU_ONLY)])
    asyncio.run(repository.load_all())
    router = Router(repository, routes={}, rng=random.Random(1))  # noqa: S311 - fixed seed
    seen: list[tuple[str, set[str]]] = []

    def note() -> None:
        seen.append((router.choose(routed("grow")), router.versions_in_use("grow")))

    async def scenario() -> None:
        note()
        await repository.load(VersionSpec("grow", "3", paths["3"], CPU_ONLY))
        note()  # not followed before refresh
        router.refresh("grow")
        note()
        await repository.load(VersionSpec("grow", "2", paths["2"], CPU_ONLY))
        router.refresh("grow")
        note()  # 3 is still the highest
        await repository.unload("grow", "3")
        router.refresh("grow")
        note()
        response = await serve(router, routed("grow"))
        assert response.version == "2"
        await repository.unload("grow", "2")
        await repository.unload("grow", "1")
        router.refresh("grow")

    try:
        run(scenario)
    finally:
        repository.close()

    assert seen == [
        ("1", {"1"}),
        ("1", {"1"}),
        ("3", {"3"}),
        ("3", {"3"}),
        ("2", {"2"}),
    ]
    assert "grow" not in router.routes()
    assert router.versions_in_use("grow") == set()
    with pytest.raises(ModelNotFound, match=r"^unknown model 'grow'$"):
        router.choose(routed("grow"))


def test_refresh_keeps_the_route_and_its_state(tmp_path: Path) -> None:
    paths = {version: mlp_file(tmp_path, "grow", version) for version in ("1", "2", "3")}
    repository = ModelRepository(
        [VersionSpec("grow", version, paths[version], CPU_ONLY) for version in ("1", "2")]
    )
    asyncio.run(repository.load_all())
    router = Router(repository, rng=random.Random(2))  # noqa: S311 - fixed seed

    async def scenario() -> dict[str, Any]:
        await router.set_route("grow", {"policy": "bandit", "arms": ["1", "2"]}, WHO)
        for number in range(6):
            response = await serve(router, routed("grow", request_id=str(number)))
            router.feedback("grow", response.request_id, 1.0)
        learned = router.describe("grow")
        await repository.load(VersionSpec("grow", "3", paths["3"], CPU_ONLY))
        router.refresh("grow")
        return learned

    try:
        learned = run(scenario)
    finally:
        repository.close()

    assert router.describe("grow") == learned
    assert router.versions_in_use("grow") == {"1", "2"}


def test_a_model_loaded_at_run_time_gets_the_latest_route(tmp_path: Path) -> None:
    first = mlp_file(tmp_path, "one", "1")
    later = mlp_file(tmp_path, "later", "4")
    repository = ModelRepository([VersionSpec("one", "1", first, CPU_ONLY)])
    asyncio.run(repository.load_all())
    router = Router(repository)

    async def scenario() -> InferenceResponse:
        await repository.load(VersionSpec("later", "4", later, CPU_ONLY))
        router.refresh("later")
        return await serve(router, routed("later"))

    try:
        response = run(scenario)
    finally:
        repository.close()

    assert response.version == "4"
    assert router.describe("later")["route"] == {"policy": "latest"}


@pytest.mark.parametrize(
    ("document", "versions"),
    [
        pytest.param({"policy": "latest"}, {"2"}, id="latest"),
        pytest.param({"policy": "fixed", "version": "1"}, {"1"}, id="fixed"),
        pytest.param(CANARY, {"1", "2"}, id="canary"),
        pytest.param(
            {"policy": "canary", "weights": {"1": 0, "2": 1}}, {"1", "2"}, id="canary-zero"
        ),
        pytest.param({"policy": "blue_green", "live": "2"}, {"2"}, id="blue-green"),
        pytest.param({"policy": "blue_green", "live": "2", "staged": "1"}, {"1", "2"}, id="staged"),
        pytest.param(BANDIT, {"1", "2"}, id="bandit"),
        pytest.param({"policy": "rollout", "stable": "1", "canary": "2"}, {"1", "2"}, id="rollout"),
        pytest.param(
            {"policy": "fixed", "version": "1", "shadow": {"version": "2"}}, {"1", "2"}, id="shadow"
        ),
        pytest.param(
            {"policy": "latest", "shadow": {"version": "1"}}, {"1", "2"}, id="latest-and-shadow"
        ),
    ],
)
def test_versions_in_use(traffic: Traffic, document: dict[str, Any], versions: set[str]) -> None:
    router = traffic.router()
    set_route(router, "ab", document)

    assert router.versions_in_use("ab") == versions


def test_versions_in_use_of_an_unknown_endpoint(traffic: Traffic) -> None:
    assert traffic.router().versions_in_use("nope") == set()


# -- the guarded rollout in the background ---------------------------------------------------


def wait_until(probe: Callable[[], bool], what: str, timeout_s: float = 10.0) -> Awaitable[None]:
    async def waiting() -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not probe():
            assert loop.time() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.01)

    return waiting()


FAST_ROLLOUT = {
    "policy": "rollout",
    "stable": "1",
    "canary": "2",
    "steps": [10, 100],
    "step_interval_s": 0.01,
    "min_requests": 5,
}


def test_the_background_advances_and_completes_a_healthy_rollout(
    traffic: Traffic, store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(router_module, "BACKGROUND_TICK_S", 0.01)
    router = traffic.router(store)

    def status() -> dict[str, Any]:
        described: dict[str, Any] = router.describe("ab")["rollout"]
        return described

    async def scenario() -> None:
        await router.set_route("ab", FAST_ROLLOUT, WHO)
        background = asyncio.create_task(router.run_background())
        try:
            for step in (1, 2):
                for version in ("1", "2"):
                    for _ in range(5):
                        router.finished("ab", version, 0.001, "success")
                if step == 1:
                    await wait_until(lambda: status()["step"] == 1, "the rollout's second step")
                else:
                    await wait_until(lambda: status()["status"] == "completed", "completion")
        finally:
            background.cancel()

    run(scenario)

    assert status() == {
        "status": "completed",
        "step": 1,
        "percent": 100.0,
        "reason": "every step passed",
    }
    assert {router.choose(routed("ab")) for _ in range(100)} == {"2"}
    entries = run(lambda: router.audit(10))
    assert [(e["who"], e["action"], e["new"]) for e in entries[1:]] == [
        ("rollout", "advance", {"percent": 100.0, "step": 1}),
        ("rollout", "complete", {"percent": 100.0, "step": 1}),
    ]
    saved = json.loads((store.directory / ROUTES_FILE).read_text(encoding="utf-8"))
    assert saved["ab"]["rollout"]["status"] == "completed"


def test_the_background_rolls_back_a_failing_canary(
    traffic: Traffic, store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(router_module, "BACKGROUND_TICK_S", 0.01)
    router = traffic.router(store)

    async def scenario() -> None:
        await router.set_route("ab", FAST_ROLLOUT, WHO)
        background = asyncio.create_task(router.run_background())
        try:
            for _ in range(5):
                router.finished("ab", "1", 0.001, "success")
                router.finished("ab", "2", 0.001, "internal_error")
            await wait_until(
                lambda: router.describe("ab")["rollout"]["status"] == "rolled_back", "rollback"
            )
        finally:
            background.cancel()

    run(scenario)

    rollout = router.describe("ab")["rollout"]
    assert rollout["percent"] == 0.0
    assert rollout["reason"].startswith("canary error rate 100.00% exceeds the stable's 0.00%")
    assert router.rollbacks == {"ab": 1}
    assert {router.choose(routed("ab")) for _ in range(100)} == {"1"}
    entry = run(lambda: router.audit(1))[0]
    assert (entry["who"], entry["action"]) == ("rollout", "rollback")
