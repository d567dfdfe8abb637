"""``--model-repository DIR``: a Triton-style layout read as a config
(server/repository_mode.py)."""

import logging
from pathlib import Path

import pytest

from turnout.models.cache import CacheSettings
from turnout.models.loader import InstanceGroup, VersionSpec
from turnout.models.providers import Device
from turnout.server.config import ConfigError, ListenConfig, ServerConfig
from turnout.server.repository_mode import MODEL_FILE, SETTINGS_FILE, config_from_repository

NAME_RULE = (
    "a model name must be 1 to 128 letters, digits, '_', '.' or '-', "
    "starting with a letter or digit"
)


def add_version(root: Path, model: str, version: str) -> Path:
    """A (placeholder) model file at ``root/model/version/model.onnx``; only its existence
    matters here."""
    path = root / model / version / MODEL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"placeholder")
    return path


def write_settings(root: Path, model: str, text: str) -> Path:
    path = root / model / SETTINGS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def found(root: Path) -> set[tuple[str, str]]:
    config = config_from_repository(root, ServerConfig())
    return {(entry.name, entry.version) for entry in config.models}


def only_spec(root: Path) -> VersionSpec:
    (spec,) = config_from_repository(root, ServerConfig()).version_specs()
    return spec


AUTO_ONCE = (InstanceGroup(Device("auto"), 1),)


def refused(root: Path) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        config_from_repository(root, ServerConfig())
    return caught.value


def test_layout_is_discovered(tmp_path: Path) -> None:
    paths = {
        ("mlp", "1"): add_version(tmp_path, "mlp", "1"),
        ("mlp", "2"): add_version(tmp_path, "mlp", "2"),
        ("mlp", "10"): add_version(tmp_path, "mlp", "10"),
        ("other.model_v-2", "3"): add_version(tmp_path, "other.model_v-2", "3"),
    }

    config = config_from_repository(tmp_path, ServerConfig())

    assert {(e.name, e.version): e.path for e in config.models} == {
        key: path.resolve() for key, path in paths.items()
    }
    assert all(entry.path.is_absolute() for entry in config.models)
    assert len(config.models) == 4


def test_server_settings_are_passed_through(tmp_path: Path) -> None:
    add_version(tmp_path, "mlp", "1")
    server = ServerConfig(http=ListenConfig(port=0), grpc=ListenConfig(port=0))

    config = config_from_repository(tmp_path, server)

    assert config.server == server


def test_models_without_settings_get_the_defaults(tmp_path: Path) -> None:
    add_version(tmp_path, "mlp", "1")

    (spec,) = config_from_repository(tmp_path, ServerConfig()).version_specs()

    assert spec.instance_groups == AUTO_ONCE
    assert spec.max_batch_size is None
    assert spec.warmup is True
    assert spec.tensorrt is False
    assert spec.dynamic_batching is True
    assert spec.max_queue_delay_s == 0
    assert spec.preferred_batch_sizes == ()
    assert spec.max_queue_size == 512
    assert spec.timeout_s is None
    assert spec.cache is None
    assert spec.io_binding == "auto"


@pytest.mark.parametrize(
    "folder",
    [
        pytest.param("latest", id="word"),
        pytest.param("0", id="zero"),
        pytest.param("01", id="leading-zero"),
        pytest.param("v1", id="prefixed"),
        pytest.param("1.0", id="decimal"),
        pytest.param("-1", id="negative"),
        pytest.param(".1", id="hidden"),
        pytest.param("1" * 20, id="twenty-digits"),
    ],
)
def test_non_numeric_version_folders_are_ignored(tmp_path: Path, folder: str) -> None:
    add_version(tmp_path, "mlp", "1")
    add_version(tmp_path, "mlp", folder)

    assert found(tmp_path) == {("mlp", "1")}


def test_version_folder_without_model_file_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    add_version(tmp_path, "mlp", "1")
    (tmp_path / "mlp" / "2").mkdir()
    (tmp_path / "mlp" / "3" / "model.pt").parent.mkdir()
    (tmp_path / "mlp" / "3" / "model.pt").write_bytes(b"not onnx")
    (tmp_path / "mlp" / "4" / MODEL_FILE).mkdir(parents=True)  # a folder, not a file

    with caplog.at_level(logging.WARNING, logger="turnout.server.repository_mode"):
        assert found(tmp_path) == {("mlp", "1")}

    skipped = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert skipped == [
        f"{tmp_path / 'mlp' / version}: no {MODEL_FILE}; version skipped" for version in "234"
    ]


def test_files_beside_models_and_versions_are_ignored(tmp_path: Path) -> None:
    add_version(tmp_path, "mlp", "1")
    (tmp_path / "README.md").write_text("not a model", encoding="utf-8")
    (tmp_path / "not a model.txt").write_text("x", encoding="utf-8")
    (tmp_path / "mlp" / MODEL_FILE).write_bytes(b"model file outside a version folder")
    (tmp_path / "mlp" / "reference.npz").write_bytes(b"x")
    (tmp_path / "mlp" / "2").write_bytes(b"a file named like a version")

    assert found(tmp_path) == {("mlp", "1")}


@pytest.mark.parametrize(
    "folder",
    [
        pytest.param(".git", id="git"),
        pytest.param(".hidden model", id="invalid-name"),
        pytest.param(".mlp", id="valid-after-dot"),
    ],
)
def test_hidden_folders_are_skipped(tmp_path: Path, folder: str) -> None:
    add_version(tmp_path, "mlp", "1")
    add_version(tmp_path, folder, "1")

    assert found(tmp_path) == {("mlp", "1")}


def test_folder_without_versions_adds_nothing(tmp_path: Path) -> None:
    add_version(tmp_path, "mlp", "1")
    (tmp_path / "docs" / "images").mkdir(parents=True)

    assert found(tmp_path) == {("mlp", "1")}


# -- per-model settings ------------------------------------------------------------------------


def test_model_settings_apply_to_every_version_of_that_model_only(tmp_path: Path) -> None:
    add_version(tmp_path, "mlp", "1")
    add_version(tmp_path, "mlp", "2")
    add_version(tmp_path, "plain", "1")
    write_settings(
        tmp_path,
        "mlp",
        "device: cpu\n"
        "tensorrt: true\n"
        "instances: 3\n"
        "max_batch_size: 8\n"
        "warmup: false\n"
        "session: {intra_op_threads: 2, inter_op_threads: 3, graph_optimization: basic,"
        " allow_spinning: true}\n",
    )

    specs = {
        (s.name, s.version): s
        for s in config_from_repository(tmp_path, ServerConfig()).version_specs()
    }

    for version in ("1", "2"):
        spec = specs["mlp", version]
        assert spec.instance_groups == (InstanceGroup(Device("cpu"), 3),)
        assert spec.tensorrt is True
        assert spec.max_batch_size == 8
        assert spec.warmup is False
        assert spec.session.intra_op_threads == 2
        assert spec.session.inter_op_threads == 3
        assert spec.session.graph_optimization == "basic"
        assert spec.session.allow_spinning is True
    plain = specs["plain", "1"]
    assert plain.instance_groups == AUTO_ONCE
    assert plain.warmup is True


def test_empty_settings_file_gives_the_defaults(tmp_path: Path) -> None:
    add_version(tmp_path, "mlp", "1")
    write_settings(tmp_path, "mlp", "# nothing set\n")

    (spec,) = config_from_repository(tmp_path, ServerConfig()).version_specs()

    assert spec.instance_groups == AUTO_ONCE


def test_instance_groups_in_settings_expand_per_gpu_for_every_version(tmp_path: Path) -> None:
    add_version(tmp_path, "mlp", "1")
    add_version(tmp_path, "mlp", "2")
    add_version(tmp_path, "plain", "1")
    write_settings(
        tmp_path,
        "mlp",
        "instances:\n"
        "  - {kind: cpu, count: 2}\n"
        "  - {kind: gpu, count: 3, gpus: [0, 2]}\n"
        "  - {kind: gpu}\n",
    )

    specs = {
        (s.name, s.version): s
        for s in config_from_repository(tmp_path, ServerConfig()).version_specs()
    }

    expected = (
        InstanceGroup(Device("cpu"), 2),
        InstanceGroup(Device("cuda", 0), 3),
        InstanceGroup(Device("cuda", 2), 3),
        InstanceGroup(Device("cuda", 0), 1),
    )
    assert specs["mlp", "1"].instance_groups == expected
    assert specs["mlp", "2"].instance_groups == expected
    assert specs["plain", "1"].instance_groups == AUTO_ONCE


def test_batching_queue_timeout_cache_and_binding_settings(tmp_path: Path) -> None:
    add_version(tmp_path, "mlp", "1")
    write_settings(
        tmp_path,
        "mlp",
        "max_batch_size: 16\n"
        "dynamic_batching: {max_queue_delay_us: 2500, preferred_batch_sizes: [16, 4, 8, 4]}\n"
        "max_queue_size: 9\n"
        "timeout_ms: 40\n"
        "cache: {max_bytes: 2048, ttl_s: 12.5}\n"
        "io_binding: 'on'\n",
    )

    spec = only_spec(tmp_path)

    assert spec.max_batch_size == 16
    assert spec.dynamic_batching is True
    assert spec.max_queue_delay_s == 0.0025
    assert spec.preferred_batch_sizes == (4, 8, 16)
    assert spec.max_queue_size == 9
    assert spec.timeout_s == 0.04
    assert spec.cache == CacheSettings(2048, 12.5)
    assert spec.io_binding == "on"


def test_dynamic_batching_can_be_turned_off(tmp_path: Path) -> None:
    add_version(tmp_path, "mlp", "1")
    write_settings(tmp_path, "mlp", "dynamic_batching: {enabled: false}\n")

    spec = only_spec(tmp_path)

    assert spec.dynamic_batching is False
    assert (spec.max_queue_delay_s, spec.preferred_batch_sizes) == (0, ())


@pytest.mark.parametrize("io_binding", ["auto", "on", "off"])
def test_io_binding_values_in_settings(tmp_path: Path, io_binding: str) -> None:
    add_version(tmp_path, "mlp", "1")
    write_settings(tmp_path, "mlp", f"io_binding: '{io_binding}'\n")

    assert only_spec(tmp_path).io_binding == io_binding


@pytest.mark.parametrize("io_binding", ["on", "off"])
def test_io_binding_unquoted_in_settings(tmp_path: Path, io_binding: str) -> None:
    """As the README writes it (``io_binding: auto | on | off``), although YAML 1.1 reads a bare
    ``on`` or ``off`` as a boolean."""
    add_version(tmp_path, "mlp", "1")
    write_settings(tmp_path, "mlp", f"io_binding: {io_binding}\n")

    assert only_spec(tmp_path).io_binding == io_binding


INVALID_SETTINGS = [
    pytest.param("device: gpu\n", ["device: must be auto, cpu, cuda or cuda:N"], id="device"),
    pytest.param(
        "instances: 0\n",
        ["instances: Input should be greater than or equal to 1"],
        id="instances",
    ),
    pytest.param(
        "instances: true\n", ["instances: Input should be a valid integer"], id="instances-true"
    ),
    pytest.param(
        "instances: [{kind: cpu, gpus: [0]}]\n",
        ["instances[0]: gpus applies to kind gpu only"],
        id="cpu-group-with-gpus",
    ),
    pytest.param(
        "instances: [{kind: gpu}, {kind: tpu}]\n",
        ["instances[1].kind: Input should be 'cpu' or 'gpu'"],
        id="group-kind",
    ),
    pytest.param(
        "instances: [{kind: gpu, count: 65}]\n",
        ["instances[0].count: Input should be less than or equal to 64"],
        id="group-count",
    ),
    pytest.param(
        "device: cuda:1\ninstances: [{kind: gpu, gpus: [1]}]\n",
        [
            "device applies when instances is a number; "
            "with instance groups, each group gives its kind (and gpus)"
        ],
        id="device-with-groups",
    ),
    pytest.param(
        "max_batch_size: 4\ndynamic_batching: {preferred_batch_sizes: [2, 8]}\n",
        ["dynamic_batching.preferred_batch_sizes must not exceed max_batch_size (4)"],
        id="preferred-above-max-batch-size",
    ),
    pytest.param(
        "dynamic_batching: {max_queue_delay_us: -1}\n",
        ["dynamic_batching.max_queue_delay_us: Input should be greater than or equal to 0"],
        id="delay-negative",
    ),
    pytest.param(
        "max_queue_size: 0\n",
        ["max_queue_size: Input should be greater than or equal to 1"],
        id="max-queue-size-0",
    ),
    pytest.param(
        "max_queue_size: 1000001\n",
        ["max_queue_size: Input should be less than or equal to 1000000"],
        id="max-queue-size-over-a-million",
    ),
    pytest.param("timeout_ms: 0\n", ["timeout_ms: Input should be greater than 0"], id="timeout-0"),
    pytest.param(
        "cache: {ttl_s: 5}\n", ["cache.max_bytes: required"], id="cache-without-max-bytes"
    ),
    pytest.param(
        "io_binding: always\n",
        ["io_binding: Input should be 'auto', 'on' or 'off'"],
        id="io-binding",
    ),
    pytest.param(
        "session: {graph_optimization: max}\n",
        ["session.graph_optimization: Input should be 'disabled', 'basic', 'extended' or 'all'"],
        id="session-field",
    ),
    pytest.param("bogus: 1\n", ["bogus: unknown field"], id="unknown-field"),
    pytest.param("name: other\n", ["name: unknown field"], id="name-refused"),
    pytest.param("version: 2\n", ["version: unknown field"], id="version-refused"),
    pytest.param("path: elsewhere.onnx\n", ["path: unknown field"], id="path-refused"),
    pytest.param(
        "device: gpu\ninstances: 65\nname: x\n",
        [
            "device: must be auto, cpu, cuda or cuda:N",
            "instances: Input should be less than or equal to 64",
            "name: unknown field",
        ],
        id="every-problem",
    ),
    pytest.param(
        "device: [cpu\n",
        ["line 2, column 1: expected ',' or ']', but got '<stream end>'"],
        id="yaml-syntax",
    ),
    pytest.param(
        '!!python/object/apply:os.system ["echo hi"]\n',
        [
            "line 1, column 1: could not determine a constructor for the tag "
            "'tag:yaml.org,2002:python/object/apply:os.system'"
        ],
        id="python-tag",
    ),
]


@pytest.mark.parametrize(("text", "expected"), INVALID_SETTINGS)
def test_invalid_settings_name_the_file_and_field(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    add_version(tmp_path, "mlp", "1")
    settings = write_settings(tmp_path, "mlp", text)

    error = refused(tmp_path)

    assert error.source == str(settings)
    assert error.problems == expected
    assert str(error) == f"{settings}: " + "; ".join(expected)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("- device: cpu\n", id="list"),
        pytest.param("cpu\n", id="string"),
    ],
)
def test_settings_that_are_not_a_mapping_say_so(tmp_path: Path, text: str) -> None:
    add_version(tmp_path, "mlp", "1")
    settings = write_settings(tmp_path, "mlp", text)

    error = refused(tmp_path)

    assert error.source == str(settings)
    (problem,) = error.problems
    assert "must be a mapping" in problem
    # A model's settings file has no 'models' list; the message must not ask for one.
    assert "'models'" not in problem


# -- bad layouts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "folder",
    [
        pytest.param("my model", id="space"),
        pytest.param("-mlp", id="leading-dash"),
        pytest.param("_mlp", id="leading-underscore"),
        pytest.param("a" * 129, id="too-long"),
        pytest.param("modèle", id="non-ascii"),
    ],
)
def test_bad_model_folder_name_is_reported(tmp_path: Path, folder: str) -> None:
    add_version(tmp_path, "mlp", "1")
    add_version(tmp_path, folder, "1")

    error = refused(tmp_path)

    assert error.source == str(tmp_path)
    assert error.problems == [f"{folder!r}: {NAME_RULE}"]


def test_every_bad_model_folder_name_is_reported(tmp_path: Path) -> None:
    add_version(tmp_path, "good", "1")
    add_version(tmp_path, "bad one", "1")
    add_version(tmp_path, "-bad", "1")

    assert refused(tmp_path).problems == [f"'-bad': {NAME_RULE}", f"'bad one': {NAME_RULE}"]


@pytest.mark.parametrize(
    "layout",
    [
        pytest.param((), id="empty"),
        pytest.param(("mlp/",), id="model-without-versions"),
        pytest.param(("mlp/1/",), id="version-without-model-file"),
        pytest.param(("mlp/latest/model.onnx",), id="only-non-numeric-versions"),
        pytest.param((".hidden/1/model.onnx",), id="only-hidden"),
        pytest.param(("model.onnx",), id="model-file-at-root"),
    ],
)
def test_repository_without_models_is_refused(tmp_path: Path, layout: tuple[str, ...]) -> None:
    for item in layout:
        path = tmp_path / item
        if item.endswith("/"):
            path.mkdir(parents=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"placeholder")

    error = refused(tmp_path)

    assert error.source == str(tmp_path)
    assert error.problems == [f"no <model>/<version>/{MODEL_FILE} found"]


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_repository_that_is_not_a_directory_is_refused(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "repository"
    if kind == "file":
        root.write_text("x", encoding="utf-8")

    error = refused(root)

    assert error.source == str(root)
    assert error.problems == ["model repository: not a directory"]
