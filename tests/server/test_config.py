"""turnout.yaml: read with the safe loader, validated as a whole, every problem named by its field
path (server/config.py)."""

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from turnout.models.providers import Device
from turnout.models.session import SessionSettings
from turnout.server.config import Config, ConfigError, load_config, read_yaml, validate_config

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
    assert first.device == Device("cuda", 1)
    assert first.tensorrt is True
    assert first.instance_count == 3
    assert first.max_batch_size == 16
    assert first.warmup is False
    assert first.session == SessionSettings(4, 2, "basic", True)
    assert second.device == Device("auto")
    assert second.session == SessionSettings()
    assert third.device == Device("cpu")


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
    assert model.warmup is True
    assert model.session.intra_op_threads == 0
    assert model.session.inter_op_threads == 1
    assert model.session.graph_optimization == "all"
    assert model.session.allow_spinning is False


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
    assert str(config.version_specs()[0].device) == ("cuda:0" if device == "cuda" else device)


@pytest.mark.parametrize("port", [0, 1, 65535])
def test_ports_at_the_edges_are_valid(config_dir: Path, port: int) -> None:
    data = {"server": {"http": {"port": port}, "grpc": {"port": port}}, "models": [entry()]}

    config = load_config(write_yaml(config_dir, data))

    assert config.server.http.port == port
    assert config.server.grpc.port == port


# -- validation errors, each with its field path ------------------------------------------------

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
