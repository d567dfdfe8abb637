"""The views both transports report (server/model_views.py): Triton's model configuration of a
version, with one instance group per placed group and the dynamic batcher's settings."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.onnx_models import write_model
from turnout.errors import ModelNotReady
from turnout.models.datatypes import DATATYPES
from turnout.models.loader import InstanceGroup, VersionSpec, load_version
from turnout.models.providers import CPU, Device
from turnout.models.repository import VersionEntry
from turnout.models.runner import ModelRunner
from turnout.models.scheduler import BatchPolicy
from turnout.models.types import (
    ModelSignature,
    PlacedGroup,
    Placement,
    TensorSpec,
    VersionState,
)
from turnout.server.demo import build_mlp
from turnout.server.model_views import config_view

CUDA = "CUDAExecutionProvider"
CPU_GROUP = PlacedGroup("cpu", 0, 2, (CPU,))


def signature(max_batch_size: int) -> ModelSignature:
    batch = (-1,) if max_batch_size else ()
    return ModelSignature(
        name="mlp",
        version="3",
        platform="onnxruntime_onnx",
        inputs=(TensorSpec("INPUT0", DATATYPES["FP32"], (*batch, 8)),),
        outputs=(TensorSpec("LABEL", DATATYPES["INT64"], batch),),
        max_batch_size=max_batch_size,
    )


def entry(
    groups: tuple[PlacedGroup, ...] = (CPU_GROUP,),
    max_batch_size: int = 16,
    policy: BatchPolicy | None = None,
) -> VersionEntry:
    """A loaded version (its runner has no instances: the views never run it)."""
    runner = ModelRunner(
        signature(max_batch_size),
        Placement(groups),
        [],
        policy or BatchPolicy(max_batch_size=max_batch_size),
    )
    spec = VersionSpec("mlp", "3", Path("models/mlp/3/model.onnx"))
    return VersionEntry(spec, VersionState.READY, "", runner)


def test_config_view_of_a_batching_cpu_version() -> None:
    view = config_view("mlp", entry())

    assert view == {
        "name": "mlp",
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "max_batch_size": 16,
        "input": [
            {"name": "INPUT0", "data_type": "TYPE_FP32", "format": "FORMAT_NONE", "dims": [8]}
        ],
        "output": [{"name": "LABEL", "data_type": "TYPE_INT64", "dims": []}],
        "instance_group": [{"name": "mlp_3_0", "kind": "KIND_CPU", "count": 2}],
        "dynamic_batching": {"preferred_batch_size": [], "max_queue_delay_microseconds": 0},
        "default_model_filename": "model.onnx",
        "response_cache": {"enable": False},
        "parameters": {"version": {"string_value": "3"}},
    }


GROUPS = [
    pytest.param(
        (CPU_GROUP,),
        [{"name": "alias_3_0", "kind": "KIND_CPU", "count": 2}],
        id="cpu",
    ),
    pytest.param(
        (PlacedGroup("gpu", 1, 3, (CUDA, CPU)),),
        [{"name": "alias_3_0", "kind": "KIND_GPU", "count": 3, "gpus": [1]}],
        id="gpu",
    ),
    pytest.param(
        (
            PlacedGroup("gpu", 0, 2, (CUDA, CPU)),
            PlacedGroup("gpu", 2, 2, (CUDA, CPU)),
            PlacedGroup("cpu", 0, 1, (CPU,)),
            PlacedGroup("cpu", 0, 4, (CPU,)),
        ),
        [
            {"name": "alias_3_0", "kind": "KIND_GPU", "count": 2, "gpus": [0]},
            {"name": "alias_3_1", "kind": "KIND_GPU", "count": 2, "gpus": [2]},
            {"name": "alias_3_2", "kind": "KIND_CPU", "count": 1},
            {"name": "alias_3_3", "kind": "KIND_CPU", "count": 4},
        ],
        id="one-per-placed-group-in-order",
    ),
]


@pytest.mark.parametrize(("groups", "expected"), GROUPS)
def test_instance_groups_are_named_by_endpoint_version_and_index(
    groups: tuple[PlacedGroup, ...], expected: list[dict[str, Any]]
) -> None:
    assert config_view("alias", entry(groups))["instance_group"] == expected


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        pytest.param(
            BatchPolicy(16),
            {"preferred_batch_size": [], "max_queue_delay_microseconds": 0},
            id="defaults",
        ),
        pytest.param(
            BatchPolicy(16, 0.0005, (4, 8, 16)),
            {"preferred_batch_size": [4, 8, 16], "max_queue_delay_microseconds": 500},
            id="preferred-and-delay",
        ),
        pytest.param(
            BatchPolicy(16, 10.0),
            {"preferred_batch_size": [], "max_queue_delay_microseconds": 10_000_000},
            id="ten-seconds",
        ),
        pytest.param(
            BatchPolicy(16, 0.000_123_4),
            {"preferred_batch_size": [], "max_queue_delay_microseconds": 123},
            id="whole-microseconds",
        ),
    ],
)
def test_dynamic_batching_section_of_a_batching_version(
    policy: BatchPolicy, expected: dict[str, Any]
) -> None:
    view = config_view("mlp", entry(policy=policy))

    assert view["dynamic_batching"] == expected
    assert view["max_batch_size"] == 16


@pytest.mark.parametrize(
    ("max_batch_size", "policy"),
    [
        pytest.param(0, BatchPolicy(0), id="no-batch-dimension"),
        pytest.param(16, BatchPolicy(0), id="batching-turned-off"),
    ],
)
def test_no_dynamic_batching_section_when_the_version_does_not_batch(
    max_batch_size: int, policy: BatchPolicy
) -> None:
    view = config_view("mlp", entry(max_batch_size=max_batch_size, policy=policy))

    assert "dynamic_batching" not in view
    # A request may still carry up to max_batch_size rows of its own.
    assert view["max_batch_size"] == max_batch_size


def test_config_view_of_a_version_that_is_not_loaded() -> None:
    spec = VersionSpec("mlp", "3", Path("models/mlp/3/model.onnx"))

    with pytest.raises(ModelNotReady) as caught:
        config_view("mlp", VersionEntry(spec, VersionState.UNAVAILABLE, "failed", None))

    assert caught.value.message == "model 'mlp' version 3 is not loaded"


# -- from a loaded version --------------------------------------------------------------------


@pytest.fixture
def loaded(tmp_path: Path) -> Iterator[VersionEntry]:
    """``mlp`` version 4 on two CPU groups (1 and 2 instances), batching up to 8 rows and
    aiming for 2 or 4 after waiting up to 300 µs."""
    path = write_model(build_mlp(4, features=4, hidden=8, classes=3), tmp_path / "model.onnx")
    spec = VersionSpec(
        "mlp",
        "4",
        path,
        (InstanceGroup(Device("cpu"), 1), InstanceGroup(Device("cpu"), 2)),
        max_batch_size=8,
        max_queue_delay_s=0.0003,
        preferred_batch_sizes=(2, 4),
    )
    runner = load_version(spec)
    yield VersionEntry(spec, VersionState.READY, "", runner)
    runner.close()


def test_config_view_of_a_loaded_version(loaded: VersionEntry) -> None:
    view = config_view("classifier", loaded)

    assert view["max_batch_size"] == 8
    assert view["instance_group"] == [
        {"name": "classifier_4_0", "kind": "KIND_CPU", "count": 1},
        {"name": "classifier_4_1", "kind": "KIND_CPU", "count": 2},
    ]
    assert view["dynamic_batching"] == {
        "preferred_batch_size": [2, 4],
        "max_queue_delay_microseconds": 300,
    }
