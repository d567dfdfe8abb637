"""turnout.yaml: read with the safe loader, validated as a whole, every problem named by its field
path (server/config.py)."""

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from turnout.models.cache import CacheSettings
from turnout.models.loader import InstanceGroup
from turnout.models.providers import Device
from turnout.models.session import SessionSettings
from turnout.server.config import Config, ConfigError, load_config, read_yaml, validate_config
from turnout.server.tensors import RequestLimits

MODEL_FILE = "model.onnx"
NAME_RULE = "must be 1 to 128 letters, digits, '_', '.' or '-', starting with a letter or digit"
DEVICE_RULE = "must be auto, cpu, cuda or cuda:N"
NOT_A_MAPPING = "the config must be a mapping with a 'models' list"


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A folder holding a (placeholder) model file; the config only checks that it exists."""
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / MODEL_FILE).write_bytes(b"placeholder")
    return folder


def entry(**fields: Any) -> dict[str, Any]:
    """A valid model entry with ``fields`` added or replaced."""
    return {"name": "mlp", "version": 1, "path": MODEL_FILE, **fields}


def write_yaml(folder: Path, data: Any, name: str = "turnout.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def write_text(folder: Path, text: str, name: str = "turnout.yaml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.source == str(path)
    assert str(caught.value) == f"{path}: " + "; ".join(caught.value.problems)
    return caught.value.problems


# -- valid configs ----------------------------------------------------------------------------

FULL_CONFIG = f"""\
server:
  http: {{host: 0.0.0.0, port: 9000}}
  grpc: {{host: 127.0.0.2, port: 0}}
  max_request_bytes: 1024
  drain_timeout_s: 2.5
models:
  - name: mlp
    version: 1
    path: {MODEL_FILE}
    device: cuda:1
    tensorrt: true
    instances: 3
    max_batch_size: 16
    dynamic_batching: {{enabled: false, max_queue_delay_us: 1500, preferred_batch_sizes: [8, 4]}}
    max_queue_size: 32
    timeout_ms: 250
    cache: {{max_bytes: 4096, ttl_s: 60}}
    io_binding: "off"
    warmup: false
    session:
      intra_op_threads: 4
      inter_op_threads: 2
      graph_optimization: basic
      allow_spinning: true
  - name: mlp
    version: "2"
    path: {MODEL_FILE}
  - name: Other_model.v-2
    version: 10
    path: {MODEL_FILE}
    device: cpu
"""


def test_full_config_is_read_field_by_field(config_dir: Path) -> None:
    config = load_config(write_text(config_dir, FULL_CONFIG))

    assert config.server.http.host == "0.0.0.0"
    assert config.server.http.port == 9000
    assert config.server.grpc.host == "127.0.0.2"
    assert config.server.grpc.port == 0
    assert config.server.max_request_bytes == 1024
    assert config.server.drain_timeout_s == 2.5
    assert [(m.name, m.version) for m in config.models] == [
        ("mlp", "1"),
        ("mlp", "2"),
        ("Other_model.v-2", "10"),
    ]
    first = config.models[0]
    assert first.device == "cuda:1"
    assert first.tensorrt is True
    assert first.instances == 3
    assert first.max_batch_size == 16
    assert first.dynamic_batching.enabled is False
    assert first.dynamic_batching.max_queue_delay_us == 1500
    assert first.dynamic_batching.preferred_batch_sizes == [8, 4]
    assert first.max_queue_size == 32
    assert first.timeout_ms == 250
    assert first.cache is not None
    assert (first.cache.max_bytes, first.cache.ttl_s) == (4096, 60)
    assert first.io_binding == "off"
    assert first.warmup is False
    assert first.session.intra_op_threads == 4
    assert first.session.inter_op_threads == 2
    assert first.session.graph_optimization == "basic"
    assert first.session.allow_spinning is True
    assert first.path == (config_dir / MODEL_FILE).resolve()


def test_full_config_gives_version_specs(config_dir: Path) -> None:
    specs = load_config(write_text(config_dir, FULL_CONFIG)).version_specs()

    assert [(s.name, s.version) for s in specs] == [
        ("mlp", "1"),
        ("mlp", "2"),
        ("Other_model.v-2", "10"),
    ]
    first, second, third = specs
    assert first.path == (config_dir / MODEL_FILE).resolve()
    assert first.instance_groups == (InstanceGroup(Device("cuda", 1), 3),)
    assert first.tensorrt is True
    assert first.max_batch_size == 16
    assert first.dynamic_batching is False
    assert first.max_queue_delay_s == 0.0015
    assert first.preferred_batch_sizes == (4, 8)
    assert first.max_queue_size == 32
    assert first.timeout_s == 0.25
    assert first.cache == CacheSettings(4096, 60)
    assert first.io_binding == "off"
    assert first.warmup is False
    assert first.session == SessionSettings(4, 2, "basic", True)
    assert second.instance_groups == (InstanceGroup(Device("auto"), 1),)
    assert second.session == SessionSettings()
    assert third.instance_groups == (InstanceGroup(Device("cpu"), 1),)


def test_defaults_match_the_readme(config_dir: Path) -> None:
    config = load_config(write_yaml(config_dir, {"models": [entry()]}))

    assert (config.server.http.host, config.server.http.port) == ("127.0.0.1", 8000)
    assert (config.server.grpc.host, config.server.grpc.port) == ("127.0.0.1", 8001)
    assert config.server.max_request_bytes == 64 * 1024 * 1024
    assert config.server.drain_timeout_s == 30
    (model,) = config.models
    assert model.device == "auto"
    assert model.tensorrt is False
    assert model.instances == 1
    assert model.max_batch_size is None
    assert model.dynamic_batching.enabled is True
    assert model.dynamic_batching.max_queue_delay_us == 0
    assert model.dynamic_batching.preferred_batch_sizes == []
    assert model.max_queue_size == 512
    assert model.timeout_ms is None
    assert model.cache is None
    assert model.io_binding == "auto"
    assert model.warmup is True
    assert model.session.intra_op_threads == 0
    assert model.session.inter_op_threads == 1
    assert model.session.graph_optimization == "all"
    assert model.session.allow_spinning is False
    (spec,) = config.version_specs()
    assert spec.instance_groups == (InstanceGroup(Device("auto"), 1),)
    assert spec.dynamic_batching is True
    assert spec.max_queue_delay_s == 0
    assert spec.preferred_batch_sizes == ()
    assert spec.max_queue_size == 512
    assert spec.timeout_s is None
    assert spec.cache is None
    assert spec.io_binding == "auto"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        pytest.param(1, "1", id="int"),
        pytest.param("1", "1", id="string"),
        pytest.param(10, "10", id="int-two-digits"),
        pytest.param("10", "10", id="string-two-digits"),
        pytest.param(10**18, str(10**18), id="nineteen-digits"),
    ],
)
def test_version_is_given_as_int_or_string(config_dir: Path, given: Any, expected: str) -> None:
    config = load_config(write_yaml(config_dir, {"models": [entry(version=given)]}))

    assert config.models[0].version == expected
    assert config.version_specs()[0].version == expected


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("m", id="one-char"),
        pytest.param("0model", id="leading-digit"),
        pytest.param("a.b_c-d", id="punctuation"),
        pytest.param("a" * 128, id="128-chars"),
    ],
)
def test_valid_names(config_dir: Path, name: str) -> None:
    config = load_config(write_yaml(config_dir, {"models": [entry(name=name)]}))

    assert config.models[0].name == name


@pytest.mark.parametrize(
    "device",
    ["auto", "cpu", "cuda", "cuda:0", "cuda:7"],
)
def test_valid_devices(config_dir: Path, device: str) -> None:
    config = load_config(write_yaml(config_dir, {"models": [entry(device=device)]}))

    assert config.models[0].device == device
    (group,) = config.version_specs()[0].instance_groups
    assert str(group.device) == ("cuda:0" if device == "cuda" else device)
    assert group.count == 1


CPU = Device("cpu")


def gpu(index: int) -> Device:
    return Device("cuda", index)


VALID_INSTANCES = [
    pytest.param(1, (InstanceGroup(Device("auto"), 1),), id="count-1"),
    pytest.param(64, (InstanceGroup(Device("auto"), 64),), id="count-64"),
    pytest.param([{"kind": "cpu"}], (InstanceGroup(CPU, 1),), id="cpu-group-default-count"),
    pytest.param([{"kind": "cpu", "count": 4}], (InstanceGroup(CPU, 4),), id="cpu-group"),
    pytest.param([{"kind": "gpu"}], (InstanceGroup(gpu(0), 1),), id="gpu-group-default-gpu"),
    pytest.param(
        [{"kind": "gpu", "count": 2, "gpus": [3]}], (InstanceGroup(gpu(3), 2),), id="gpu-group"
    ),
    pytest.param(
        [{"kind": "gpu", "count": 2, "gpus": [0, 1, 3]}],
        (InstanceGroup(gpu(0), 2), InstanceGroup(gpu(1), 2), InstanceGroup(gpu(3), 2)),
        id="one-group-per-gpu-listed",
    ),
    pytest.param(
        [{"kind": "cpu", "count": 2}, {"kind": "gpu", "gpus": [1]}, {"kind": "cpu", "count": 64}],
        (InstanceGroup(CPU, 2), InstanceGroup(gpu(1), 1), InstanceGroup(CPU, 64)),
        id="mixed-in-order",
    ),
]


@pytest.mark.parametrize(("instances", "expected"), VALID_INSTANCES)
def test_valid_instances_give_instance_groups(
    config_dir: Path, instances: Any, expected: tuple[InstanceGroup, ...]
) -> None:
    config = load_config(write_yaml(config_dir, {"models": [entry(instances=instances)]}))

    assert config.version_specs()[0].instance_groups == expected


@pytest.mark.parametrize("device", ["cpu", "cuda:1"])
def test_instance_count_runs_on_the_device(config_dir: Path, device: str) -> None:
    data = {"models": [entry(device=device, instances=5)]}

    (spec,) = load_config(write_yaml(config_dir, data)).version_specs()

    assert spec.instance_groups == (InstanceGroup(Device.parse(device), 5),)


def test_device_auto_may_stand_beside_instance_groups(config_dir: Path) -> None:
    data = {"models": [entry(device="auto", instances=[{"kind": "cpu", "count": 2}])]}

    (spec,) = load_config(write_yaml(config_dir, data)).version_specs()

    assert spec.instance_groups == (InstanceGroup(CPU, 2),)


VALID_BATCHING = [
    pytest.param({}, None, (True, 0.0, ()), id="defaults"),
    pytest.param({"enabled": False}, None, (False, 0.0, ()), id="off"),
    pytest.param({"max_queue_delay_us": 250}, None, (True, 0.00025, ()), id="delay"),
    pytest.param(
        {"max_queue_delay_us": 10_000_000}, None, (True, 10.0, ()), id="delay-at-the-limit"
    ),
    pytest.param(
        {"preferred_batch_sizes": [16, 4, 16, 8]},
        None,
        (True, 0.0, (4, 8, 16)),
        id="preferred-sorted-once-each",
    ),
    pytest.param(
        {"preferred_batch_sizes": [4, 8]}, 8, (True, 0.0, (4, 8)), id="preferred-up-to-max"
    ),
    pytest.param(
        {"enabled": False, "max_queue_delay_us": 100, "preferred_batch_sizes": [2]},
        None,
        (False, 0.0001, (2,)),
        id="off-keeps-the-rest",
    ),
]


@pytest.mark.parametrize(("batching", "max_batch_size", "expected"), VALID_BATCHING)
def test_dynamic_batching_settings(
    config_dir: Path,
    batching: dict[str, Any],
    max_batch_size: int | None,
    expected: tuple[bool, float, tuple[int, ...]],
) -> None:
    data = {"models": [entry(dynamic_batching=batching, max_batch_size=max_batch_size)]}

    (spec,) = load_config(write_yaml(config_dir, data)).version_specs()

    assert (spec.dynamic_batching, spec.max_queue_delay_s, spec.preferred_batch_sizes) == expected
    assert spec.max_batch_size == max_batch_size


@pytest.mark.parametrize(
    ("timeout_ms", "timeout_s"),
    [
        pytest.param(None, None, id="none"),
        pytest.param(250, 0.25, id="int"),
        pytest.param(1.5, 0.0015, id="fraction"),
        pytest.param(60_000, 60.0, id="a-minute"),
    ],
)
def test_timeout_ms_becomes_timeout_s(
    config_dir: Path, timeout_ms: float | None, timeout_s: float | None
) -> None:
    (spec,) = load_config(
        write_yaml(config_dir, {"models": [entry(timeout_ms=timeout_ms)]})
    ).version_specs()

    assert spec.timeout_s == timeout_s


@pytest.mark.parametrize(
    ("cache", "expected"),
    [
        pytest.param(None, None, id="off"),
        pytest.param({"max_bytes": 1}, CacheSettings(1, 300.0), id="default-ttl"),
        pytest.param(
            {"max_bytes": 64 * 1024 * 1024, "ttl_s": 0.5},
            CacheSettings(64 * 1024 * 1024, 0.5),
            id="both",
        ),
    ],
)
def test_cache_settings(
    config_dir: Path, cache: dict[str, Any] | None, expected: CacheSettings | None
) -> None:
    (spec,) = load_config(write_yaml(config_dir, {"models": [entry(cache=cache)]})).version_specs()

    assert spec.cache == expected


@pytest.mark.parametrize("io_binding", ["auto", "on", "off"])
def test_io_binding_values(config_dir: Path, io_binding: str) -> None:
    config = load_config(write_yaml(config_dir, {"models": [entry(io_binding=io_binding)]}))

    assert config.models[0].io_binding == io_binding
    assert config.version_specs()[0].io_binding == io_binding


@pytest.mark.parametrize("io_binding", ["on", "off"])
def test_io_binding_may_be_written_unquoted(config_dir: Path, io_binding: str) -> None:
    """The README documents ``io_binding: auto | on | off``; YAML 1.1 (PyYAML's safe loader)
    reads a bare ``on`` or ``off`` as a boolean, which must still mean that setting."""
    text = f"models:\n  - {{name: mlp, version: 1, path: {MODEL_FILE}, io_binding: {io_binding}}}\n"

    config = load_config(write_text(config_dir, text))

    assert config.version_specs()[0].io_binding == io_binding


@pytest.mark.parametrize("size", [1, 1_000_000])
def test_max_queue_size_at_the_edges_is_valid(config_dir: Path, size: int) -> None:
    config = load_config(write_yaml(config_dir, {"models": [entry(max_queue_size=size)]}))

    assert config.version_specs()[0].max_queue_size == size


@pytest.mark.parametrize("port", [0, 1, 65535])
def test_ports_at_the_edges_are_valid(config_dir: Path, port: int) -> None:
    data = {"server": {"http": {"port": port}, "grpc": {"port": port}}, "models": [entry()]}

    config = load_config(write_yaml(config_dir, data))

    assert config.server.http.port == port
    assert config.server.grpc.port == port


# -- validation errors, each with its field path ------------------------------------------------

GROUP_IS_CPU_ONLY = "gpus applies to kind gpu only"
DEVICE_WITH_GROUPS = (
    "device applies when instances is a number; "
    "with instance groups, each group gives its kind (and gpus)"
)
NOT_AN_INT = "Input should be a valid integer"


def preferred_over(limit: int) -> str:
    return f"dynamic_batching.preferred_batch_sizes must not exceed max_batch_size ({limit})"


# instance groups, dynamic batching, queue, timeout, cache and I/O binding
INVALID_NEW_SETTINGS = [
    pytest.param(
        {"models": [entry(instances=True)]},
        [f"models[0].instances: {NOT_AN_INT}"],
        id="instances-true",
    ),
    pytest.param(
        {"models": [entry(instances="2")]},
        [f"models[0].instances: {NOT_AN_INT}"],
        id="instances-string",
    ),
    pytest.param(
        {"models": [entry(instances=2.0)]},
        [f"models[0].instances: {NOT_AN_INT}"],
        id="instances-float",
    ),
    pytest.param(
        {"models": [entry(instances={"kind": "cpu"})]},
        [f"models[0].instances: {NOT_AN_INT}"],
        id="instances-a-single-group-not-in-a-list",
    ),
    pytest.param(
        {"models": [entry(instances=[])]},
        ["models[0].instances: List should have at least 1 item"],
        id="instances-no-groups",
    ),
    pytest.param(
        {"models": [entry(instances=[{"kind": "tpu"}])]},
        ["models[0].instances[0].kind: Input should be 'cpu' or 'gpu'"],
        id="group-kind",
    ),
    pytest.param(
        {"models": [entry(instances=[{"count": 2}])]},
        ["models[0].instances[0].kind: required"],
        id="group-without-kind",
    ),
    pytest.param(
        {"models": [entry(instances=[{"kind": "cpu", "gpus": [0]}])]},
        [f"models[0].instances[0]: {GROUP_IS_CPU_ONLY}"],
        id="cpu-group-with-gpus",
    ),
    pytest.param(
        {"models": [entry(instances=[{"kind": "cpu"}, {"kind": "gpu", "gpus": []}])]},
        ["models[0].instances[1].gpus: List should have at least 1 item after validation, not 0"],
        id="second-group-with-empty-gpus",
    ),
    pytest.param(
        {"models": [entry(device="cpu", instances=[{"kind": "cpu"}])]},
        [f"models[0]: {DEVICE_WITH_GROUPS}"],
        id="device-with-groups",
    ),
    pytest.param(
        {"models": [entry(device="cuda:1", instances=[{"kind": "gpu", "gpus": [1]}])]},
        [f"models[0]: {DEVICE_WITH_GROUPS}"],
        id="cuda-device-with-gpu-groups",
    ),
    pytest.param(
        {"models": [entry(instances=[{"kind": "gpu", "count": 0}])]},
        ["models[0].instances[0].count: Input should be greater than or equal to 1"],
        id="group-count-0",
    ),
    pytest.param(
        {"models": [entry(instances=[{"kind": "cpu", "count": 65}])]},
        ["models[0].instances[0].count: Input should be less than or equal to 64"],
        id="group-count-65",
    ),
    pytest.param(
        {"models": [entry(instances=[{"kind": "gpu", "gpus": [0, -1]}])]},
        ["models[0].instances[0].gpus[1]: Input should be greater than or equal to 0"],
        id="gpu-negative",
    ),
    pytest.param(
        {"models": [entry(instances=[{"kind": "gpu", "gpus": [1000]}])]},
        ["models[0].instances[0].gpus[0]: Input should be less than or equal to 999"],
        id="gpu-1000",
    ),
    pytest.param(
        {"models": [entry(instances=[{"kind": "gpu", "device": 1}])]},
        ["models[0].instances[0].device: unknown field"],
        id="unknown-group-field",
    ),
    pytest.param(
        {"models": [entry(max_batch_size=8, dynamic_batching={"preferred_batch_sizes": [4, 16]})]},
        [f"models[0]: {preferred_over(8)}"],
        id="preferred-above-max-batch-size",
    ),
    pytest.param(
        {"models": [entry(max_batch_size=0, dynamic_batching={"preferred_batch_sizes": [1]})]},
        [f"models[0]: {preferred_over(0)}"],
        id="preferred-without-batch-dimension",
    ),
    pytest.param(
        {"models": [entry(dynamic_batching={"preferred_batch_sizes": [0]})]},
        [
            "models[0].dynamic_batching.preferred_batch_sizes[0]: "
            "Input should be greater than or equal to 1"
        ],
        id="preferred-0",
    ),
    pytest.param(
        {"models": [entry(dynamic_batching={"max_queue_delay_us": -1})]},
        [
            "models[0].dynamic_batching.max_queue_delay_us: "
            "Input should be greater than or equal to 0"
        ],
        id="delay-negative",
    ),
    pytest.param(
        {"models": [entry(dynamic_batching={"max_queue_delay_us": 10_000_001})]},
        [
            "models[0].dynamic_batching.max_queue_delay_us: "
            "Input should be less than or equal to 10000000"
        ],
        id="delay-over-ten-seconds",
    ),
    pytest.param(
        {"models": [entry(dynamic_batching={"enabled": "maybe"})]},
        ["models[0].dynamic_batching.enabled: Input should be a valid boolean"],
        id="batching-enabled-not-a-boolean",
    ),
    pytest.param(
        {"models": [entry(dynamic_batching={"max_batch_size": 8})]},
        ["models[0].dynamic_batching.max_batch_size: unknown field"],
        id="unknown-batching-field",
    ),
    pytest.param(
        {"models": [entry(max_queue_size=0)]},
        ["models[0].max_queue_size: Input should be greater than or equal to 1"],
        id="max-queue-size-0",
    ),
    pytest.param(
        {"models": [entry(max_queue_size=1_000_001)]},
        ["models[0].max_queue_size: Input should be less than or equal to 1000000"],
        id="max-queue-size-over-a-million",
    ),
    pytest.param(
        {"models": [entry(timeout_ms=0)]},
        ["models[0].timeout_ms: Input should be greater than 0"],
        id="timeout-0",
    ),
    pytest.param(
        {"models": [entry(timeout_ms=-5)]},
        ["models[0].timeout_ms: Input should be greater than 0"],
        id="timeout-negative",
    ),
    pytest.param(
        {"models": [entry(cache={})]},
        ["models[0].cache.max_bytes: required"],
        id="cache-without-max-bytes",
    ),
    pytest.param(
        {"models": [entry(cache={"max_bytes": 0})]},
        ["models[0].cache.max_bytes: Input should be greater than 0"],
        id="cache-max-bytes-0",
    ),
    pytest.param(
        {"models": [entry(cache={"max_bytes": 1024, "ttl_s": 0})]},
        ["models[0].cache.ttl_s: Input should be greater than 0"],
        id="cache-ttl-0",
    ),
    pytest.param(
        {"models": [entry(cache={"max_bytes": 1024, "entries": 5})]},
        ["models[0].cache.entries: unknown field"],
        id="unknown-cache-field",
    ),
    pytest.param(
        {"models": [entry(io_binding="yes")]},
        ["models[0].io_binding: Input should be 'auto', 'on' or 'off'"],
        id="io-binding",
    ),
]

INVALID_CONFIGS = [
    # unknown keys
    pytest.param(
        {"models": [entry(bogus=1)]}, ["models[0].bogus: unknown field"], id="unknown-model-field"
    ),
    pytest.param(
        {"models": [entry(), entry(version=2, bogus=1)]},
        ["models[1].bogus: unknown field"],
        id="unknown-field-second-model",
    ),
    pytest.param({"models": [entry()], "extra": 1}, ["extra: unknown field"], id="unknown-top"),
    pytest.param(
        {"server": {"https": {"port": 1}}, "models": [entry()]},
        ["server.https: unknown field"],
        id="unknown-server-field",
    ),
    pytest.param(
        {"server": {"http": {"address": "x", "port": 1}}, "models": [entry()]},
        ["server.http.address: unknown field"],
        id="unknown-listen-field",
    ),
    pytest.param(
        {"models": [entry(session={"threads": 2})]},
        ["models[0].session.threads: unknown field"],
        id="unknown-session-field",
    ),
    pytest.param(
        {"models": [entry(**{"a b": 1})]},
        ["models[0]['a b']: unknown field"],
        id="unknown-field-not-an-identifier",
    ),
    # missing and misplaced model files
    pytest.param(
        {"models": [entry(), entry(version=2, path="missing.onnx")]},
        ["models[1].path: file not found"],
        id="path-not-found",
    ),
    pytest.param({"models": [entry(path=".")]}, ["models[0].path: file not found"], id="path-dir"),
    pytest.param(
        {"models": [{}]},
        ["models[0].name: required", "models[0].version: required", "models[0].path: required"],
        id="required-fields",
    ),
    # devices
    pytest.param(
        {"models": [entry(device="gpu")]}, [f"models[0].device: {DEVICE_RULE}"], id="device-gpu"
    ),
    pytest.param(
        {"models": [entry(device="CUDA")]}, [f"models[0].device: {DEVICE_RULE}"], id="device-case"
    ),
    pytest.param(
        {"models": [entry(device="cuda:")]}, [f"models[0].device: {DEVICE_RULE}"], id="no-index"
    ),
    pytest.param(
        {"models": [entry(device="cuda:x")]}, [f"models[0].device: {DEVICE_RULE}"], id="index-x"
    ),
    pytest.param(
        {"models": [entry(device="cuda:-1")]},
        [f"models[0].device: {DEVICE_RULE}"],
        id="negative-index",
    ),
    pytest.param(
        {"models": [entry(device="cpu:0")]}, [f"models[0].device: {DEVICE_RULE}"], id="cpu-index"
    ),
    pytest.param(
        {"models": [entry(device=" cpu")]}, [f"models[0].device: {DEVICE_RULE}"], id="whitespace"
    ),
    pytest.param(
        {"models": [entry(device=0)]},
        ["models[0].device: Input should be a valid string"],
        id="device-not-a-string",
    ),
    # versions
    pytest.param(
        {"models": [entry(version=0)]},
        ["models[0].version: must be a positive integer"],
        id="version-0",
    ),
    pytest.param(
        {"models": [entry(version="0")]},
        ["models[0].version: must be a positive integer"],
        id="version-string-0",
    ),
    pytest.param(
        {"models": [entry(version=-1)]},
        ["models[0].version: must be a positive integer"],
        id="version-negative",
    ),
    pytest.param(
        {"models": [entry(version="01")]},
        ["models[0].version: must be a positive integer"],
        id="version-leading-zero",
    ),
    pytest.param(
        {"models": [entry(version="v1")]},
        ["models[0].version: must be a positive integer"],
        id="version-word",
    ),
    pytest.param(
        {"models": [entry(version="1.5")]},
        ["models[0].version: must be a positive integer"],
        id="version-decimal-string",
    ),
    pytest.param(
        {"models": [entry(version=10**19)]},
        ["models[0].version: must be a positive integer"],
        id="version-twenty-digits",
    ),
    pytest.param(
        {"models": [entry(version=1.5)]},
        ["models[0].version: must be a positive integer"],
        id="version-float",
    ),
    pytest.param(
        {"models": [entry(version=True)]},
        ["models[0].version: must be a positive integer"],
        id="version-bool",
    ),
    # names
    pytest.param(
        {"models": [entry(name="-mlp")]}, [f"models[0].name: {NAME_RULE}"], id="name-leading-dash"
    ),
    pytest.param({"models": [entry(name="")]}, [f"models[0].name: {NAME_RULE}"], id="name-empty"),
    pytest.param(
        {"models": [entry(name="a" * 129)]}, [f"models[0].name: {NAME_RULE}"], id="name-129-chars"
    ),
    pytest.param(
        {"models": [entry(name="my model")]}, [f"models[0].name: {NAME_RULE}"], id="name-space"
    ),
    pytest.param(
        {"models": [entry(name="a/b")]}, [f"models[0].name: {NAME_RULE}"], id="name-slash"
    ),
    pytest.param(
        {"models": [entry(name="modèle")]}, [f"models[0].name: {NAME_RULE}"], id="name-non-ascii"
    ),
    pytest.param(
        {"models": [entry(name=5)]},
        ["models[0].name: Input should be a valid string"],
        id="name-not-a-string",
    ),
    # duplicates
    pytest.param(
        {"models": [entry(), entry(version="1")]},
        ["models[1]: mlp version 1 is already models[0]"],
        id="duplicate-int-and-string",
    ),
    pytest.param(
        {"models": [entry(), entry(version=2), entry(name="b"), entry(version=2)]},
        ["models[3]: mlp version 2 is already models[1]"],
        id="duplicate-later",
    ),
    # ports and server limits
    pytest.param(
        {"server": {"http": {"port": 65536}}, "models": [entry()]},
        ["server.http.port: Input should be less than or equal to 65535"],
        id="http-port-too-large",
    ),
    pytest.param(
        {"server": {"grpc": {"port": -1}}, "models": [entry()]},
        ["server.grpc.port: Input should be greater than or equal to 0"],
        id="grpc-port-negative",
    ),
    pytest.param(
        {"server": {"http": {}}, "models": [entry()]},
        ["server.http.port: required"],
        id="listen-without-port",
    ),
    pytest.param(
        {"server": {"max_request_bytes": 0, "drain_timeout_s": 0}, "models": [entry()]},
        [
            "server.max_request_bytes: Input should be greater than 0",
            "server.drain_timeout_s: Input should be greater than 0",
        ],
        id="server-limits",
    ),
    # model settings
    pytest.param(
        {"models": [entry(instances=0)]},
        ["models[0].instances: Input should be greater than or equal to 1"],
        id="instances-0",
    ),
    pytest.param(
        {"models": [entry(instances=65)]},
        ["models[0].instances: Input should be less than or equal to 64"],
        id="instances-65",
    ),
    *INVALID_NEW_SETTINGS,
    pytest.param(
        {"models": [entry(max_batch_size=-1)]},
        ["models[0].max_batch_size: Input should be greater than or equal to 0"],
        id="max-batch-size-negative",
    ),
    pytest.param(
        {"models": [entry(session={"graph_optimization": "max"})]},
        [
            "models[0].session.graph_optimization: "
            "Input should be 'disabled', 'basic', 'extended' or 'all'"
        ],
        id="graph-optimization",
    ),
    pytest.param(
        {"models": [entry(session={"inter_op_threads": 0, "intra_op_threads": -1})]},
        [
            "models[0].session.intra_op_threads: Input should be greater than or equal to 0",
            "models[0].session.inter_op_threads: Input should be greater than or equal to 1",
        ],
        id="session-threads",
    ),
    # the shape of the document
    pytest.param({"models": []}, ["models: List should have at least 1 item"], id="models-empty"),
    pytest.param({}, ["models: required"], id="models-missing"),
    pytest.param(None, ["models: required"], id="empty-document"),
    pytest.param({"models": {"mlp": 1}}, ["models: Input should be a valid list"], id="models-map"),
    pytest.param([entry()], [NOT_A_MAPPING], id="top-level-list"),
    pytest.param("models", [NOT_A_MAPPING], id="top-level-string"),
    pytest.param(42, [NOT_A_MAPPING], id="top-level-int"),
    # every problem at once
    pytest.param(
        {"models": [entry(device="gpu", version=0, path="missing.onnx"), entry(name="-x")]},
        [
            f"models[0].device: {DEVICE_RULE}",
            "models[0].version: must be a positive integer",
            "models[0].path: file not found",
            f"models[1].name: {NAME_RULE}",
        ],
        id="all-problems-reported",
    ),
]


@pytest.mark.parametrize(("data", "expected"), INVALID_CONFIGS)
def test_invalid_config_names_each_field(config_dir: Path, data: Any, expected: list[str]) -> None:
    problems = problems_of(write_yaml(config_dir, data))

    assert len(problems) == len(expected), problems
    for problem, fragment in zip(problems, expected, strict=True):
        assert problem.startswith(fragment), problems


def test_validate_config_takes_parsed_data(config_dir: Path) -> None:
    source = config_dir / "inline.yaml"

    config = validate_config({"models": [entry()]}, source, base_dir=config_dir)
    with pytest.raises(ConfigError) as caught:
        validate_config({"models": [entry(bogus=1)]}, source, base_dir=config_dir)

    assert isinstance(config, Config)
    assert caught.value.source == str(source)
    assert caught.value.problems == ["models[0].bogus: unknown field"]


# -- reading the file --------------------------------------------------------------------------

YAML_SYNTAX_ERRORS = [
    pytest.param(
        "models:\n  - name: mlp\n    version: [1\n",
        "line 4, column 1: expected ',' or ']', but got '<stream end>'",
        id="unclosed-flow-sequence",
    ),
    pytest.param(
        "models:\n  - name: mlp\n   version: 1\n",
        "line 3, column 4: expected <block end>, but found '<block mapping start>'",
        id="bad-indentation",
    ),
    pytest.param(
        "models:\n\t- name: mlp\n",
        "line 2, column 1: found character '\\t' that cannot start any token",
        id="tab",
    ),
]


@pytest.mark.parametrize(("text", "expected"), YAML_SYNTAX_ERRORS)
def test_yaml_syntax_error_names_line_and_column(
    config_dir: Path, text: str, expected: str
) -> None:
    assert problems_of(write_text(config_dir, text)) == [expected]


PYTHON_TAGS = [
    pytest.param(
        '!!python/object/apply:os.system ["echo hi"]\n',
        "line 1, column 1: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/object/apply:os.system'",
        id="object-apply",
    ),
    pytest.param(
        'models:\n  - name: !!python/object/apply:os.system ["echo hi"]\n',
        "line 2, column 11: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/object/apply:os.system'",
        id="object-apply-nested",
    ),
    pytest.param(
        "!!python/name:os.system\n",
        "line 1, column 1: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/name:os.system'",
        id="name",
    ),
    pytest.param(
        "!!python/object/new:subprocess.Popen [[echo, hi]]\n",
        "line 1, column 1: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/object/new:subprocess.Popen'",
        id="object-new",
    ),
]


@pytest.mark.parametrize(("text", "expected"), PYTHON_TAGS)
def test_python_tags_are_refused_without_running_anything(
    config_dir: Path, capfd: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    assert problems_of(write_text(config_dir, text)) == [expected]
    out, err = capfd.readouterr()
    assert "hi" not in out
    assert "hi" not in err


def test_python_tag_side_effect_does_not_happen(config_dir: Path) -> None:
    marker = config_dir / "created-by-yaml"
    path = write_text(config_dir, f"!!python/object/apply:os.mkdir [{str(marker)!r}]\n")

    with pytest.raises(ConfigError) as caught:
        read_yaml(path)

    assert not marker.exists()
    assert caught.value.problems == [
        "line 1, column 1: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/object/apply:os.mkdir'"
    ]


def test_missing_file_cannot_be_read(tmp_path: Path) -> None:
    assert problems_of(tmp_path / "absent.yaml") == ["cannot read: No such file or directory"]


def test_directory_cannot_be_read(tmp_path: Path) -> None:
    assert problems_of(tmp_path) == ["cannot read: Is a directory"]


def test_non_utf8_file_cannot_be_read(tmp_path: Path) -> None:
    path = tmp_path / "turnout.yaml"
    path.write_bytes(b"models:\n  - name: \xff\xfe\n")

    assert problems_of(path) == ["cannot read: not UTF-8 text"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_file_without_read_permission_cannot_be_read(config_dir: Path) -> None:
    path = write_yaml(config_dir, {"models": [entry()]})
    path.chmod(0)

    assert problems_of(path) == ["cannot read: Permission denied"]


# -- relative paths ---------------------------------------------------------------------------


def test_relative_paths_are_taken_from_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_dir = tmp_path / "deploy" / "config"
    (config_dir / "models" / "mlp" / "1").mkdir(parents=True)
    (config_dir / "models" / "mlp" / "1" / MODEL_FILE).write_bytes(b"one")
    (tmp_path / "deploy" / "shared").mkdir()
    (tmp_path / "deploy" / "shared" / MODEL_FILE).write_bytes(b"two")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    data = {
        "models": [
            entry(path=f"models/mlp/1/{MODEL_FILE}"),
            entry(version=2, path=f"../shared/{MODEL_FILE}"),
        ]
    }

    config = load_config(write_yaml(config_dir, data))

    assert [m.path for m in config.models] == [
        (config_dir / "models" / "mlp" / "1" / MODEL_FILE).resolve(),
        (tmp_path / "deploy" / "shared" / MODEL_FILE).resolve(),
    ]
    assert all(m.path.is_absolute() for m in config.models)


def test_relative_path_is_not_taken_from_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (tmp_path / MODEL_FILE).write_bytes(b"in the working folder only")
    monkeypatch.chdir(tmp_path)

    assert problems_of(write_yaml(config_dir, {"models": [entry()]})) == [
        "models[0].path: file not found"
    ]


def test_relative_config_path_gives_absolute_model_paths(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_yaml(config_dir, {"models": [entry()]})
    monkeypatch.chdir(config_dir.parent)

    config = load_config(Path(config_dir.name) / "turnout.yaml")

    assert config.models[0].path == (config_dir / MODEL_FILE).resolve()
    assert config.models[0].path.is_absolute()


def test_absolute_path_is_kept(config_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "abs" / MODEL_FILE
    model.parent.mkdir()
    model.write_bytes(b"x")

    config = load_config(write_yaml(config_dir, {"models": [entry(path=str(model))]}))

    assert config.models[0].path == model.resolve()


def test_limits_default_to_the_readme(config_dir: Path) -> None:
    limits = load_config(write_yaml(config_dir, {"models": [entry()]})).server.limits

    assert limits.max_header_bytes == 16 * 1024
    assert limits.max_headers == 100
    assert limits.header_timeout_s == 10
    assert limits.body_timeout_s == 60
    assert limits.keep_alive_timeout_s == 5
    assert limits.max_connections == 1000
    assert limits.max_concurrent_rpcs == 1000
    assert limits.max_inflight_requests == 4096
    assert limits.max_loop_lag_ms == 250
    assert limits.max_pending_rpcs == 256
    assert limits.max_tensors == 256
    assert limits.max_tensor_elements == 1 << 28
    assert limits.max_string_bytes == 1024 * 1024
    assert limits.request_limits() == RequestLimits(256, 1 << 28, 1024 * 1024)


def test_limits_are_read_field_by_field(config_dir: Path) -> None:
    given = {
        "max_header_bytes": 4096,
        "max_headers": 30,
        "header_timeout_s": 1.5,
        "body_timeout_s": 7,
        "keep_alive_timeout_s": 2,
        "max_connections": 10,
        "max_concurrent_rpcs": 20,
        "max_inflight_requests": 30,
        "max_loop_lag_ms": 12.5,
        "max_pending_rpcs": 40,
        "max_tensors": 3,
        "max_tensor_elements": 99,
        "max_string_bytes": 12,
    }
    data = {"server": {"limits": given}, "models": [entry()]}
    limits = load_config(write_yaml(config_dir, data)).server.limits

    assert limits.model_dump() == given
    assert limits.request_limits() == RequestLimits(3, 99, 12)


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("max_header_bytes", 1023, "greater than or equal to 1024"),
        ("max_headers", 7, "greater than or equal to 8"),
        ("header_timeout_s", 0, "greater than 0"),
        ("body_timeout_s", -1, "greater than 0"),
        ("keep_alive_timeout_s", 0, "greater than or equal to 1"),
        ("max_connections", 0, "greater than or equal to 1"),
        ("max_concurrent_rpcs", 0, "greater than or equal to 1"),
        ("max_inflight_requests", 0, "greater than or equal to 1"),
        ("max_loop_lag_ms", 0, "greater than 0"),
        ("max_pending_rpcs", 0, "greater than or equal to 1"),
        ("max_tensors", 0, "greater than or equal to 1"),
        ("max_tensor_elements", (1 << 40) + 1, "less than or equal to 1099511627776"),
        ("max_string_bytes", 0, "greater than or equal to 1"),
        ("max_connection", 5, "unknown field"),
    ],
)
def test_invalid_limits_name_their_field(
    config_dir: Path, field: str, value: Any, problem: str
) -> None:
    data = {"server": {"limits": {field: value}}, "models": [entry()]}
    (found,) = problems_of(write_yaml(config_dir, data))
    assert found.startswith(f"server.limits.{field}: "), found
    assert problem in found, found


def test_tls_files_are_resolved_from_the_config_folder(config_dir: Path) -> None:
    for name in ("server.pem", "server.key", "ca.pem"):
        (config_dir / name).write_text("PEM")
    tls = {"cert_file": "server.pem", "key_file": "server.key", "client_ca_file": "ca.pem"}
    data = {"server": {"tls": tls}, "models": [entry()]}
    config = load_config(write_yaml(config_dir, data))

    assert config.server.tls is not None
    assert config.server.tls.cert_file == (config_dir / "server.pem").resolve()
    assert config.server.tls.key_file == (config_dir / "server.key").resolve()
    assert config.server.tls.client_ca_file == (config_dir / "ca.pem").resolve()


def test_tls_is_off_and_the_admin_api_on_the_http_port_by_default(config_dir: Path) -> None:
    config = load_config(write_yaml(config_dir, {"models": [entry()]}))

    assert config.server.tls is None
    assert config.admin.listen is None


@pytest.mark.parametrize(
    ("tls", "expected"),
    [
        (
            {"cert_file": "missing.pem", "key_file": MODEL_FILE},
            "server.tls.cert_file: file not found",
        ),
        (
            {"cert_file": MODEL_FILE, "key_file": "missing.key"},
            "server.tls.key_file: file not found",
        ),
        ({"cert_file": MODEL_FILE}, "server.tls.key_file: required"),
        (
            {"cert_file": MODEL_FILE, "key_file": MODEL_FILE, "client_ca_file": "nope.pem"},
            "server.tls.client_ca_file: file not found",
        ),
    ],
)
def test_invalid_tls_names_its_field(config_dir: Path, tls: dict[str, str], expected: str) -> None:
    data = {"server": {"tls": tls}, "models": [entry()]}
    assert problems_of(write_yaml(config_dir, data)) == [expected]


def test_the_admin_listener_is_read(config_dir: Path) -> None:
    data = {"admin": {"listen": {"host": "127.0.0.1", "port": 9100}}, "models": [entry()]}
    listen = load_config(write_yaml(config_dir, data)).admin.listen

    assert listen is not None
    assert (listen.host, listen.port) == ("127.0.0.1", 9100)
