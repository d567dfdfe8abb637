"""turnout.yaml: the one config schema, loaded safely and validated with errors that name the
field path (``models[1].path: file not found``)."""

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    Discriminator,
    Field,
    StrictInt,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from turnout.models.cache import CacheSettings
from turnout.models.loader import InstanceGroup, VersionSpec
from turnout.models.providers import Device
from turnout.models.session import SessionSettings
from turnout.router.specs import RouteConfig
from turnout.schema import NAME_PATTERN, VERSION_PATTERN, Strict, describe_errors, version_text
from turnout.server.monitoring_config import ModelMonitoring, MonitoringConfig, resolve_path
from turnout.server.tensors import RequestLimits

KiB = 1024
MiB = 1024 * 1024
_Schema = TypeVar("_Schema", bound=BaseModel)


class ConfigError(Exception):
    """The config cannot be used; ``problems`` are ``field.path: what is wrong`` lines."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(problems))
        self.source = source
        self.problems = problems


def existing_file(value: Path, info: ValidationInfo) -> Path:
    """``value`` resolved against the config file's folder; ValueError unless it is a file."""
    base = (info.context or {}).get("base_dir")
    path = value if value.is_absolute() or base is None else Path(base) / value
    if not path.is_file():
        raise ValueError("file not found")
    return path.resolve()


class TlsConfig(Strict):
    """TLS on every listener; with ``client_ca_file``, mutual TLS: clients must present a
    certificate that CA signed."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None

    @field_validator("cert_file", "key_file", "client_ca_file")
    @classmethod
    def _files_exist(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else existing_file(value, info)


class ListenConfig(Strict):
    """A listening address; port 0 asks the OS for a free port."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)]


class LimitsConfig(Strict):
    """What one client may ask of the process; every bound is on by default."""

    max_header_bytes: Annotated[int, Field(ge=1 * KiB, le=16 * MiB)] = 16 * KiB
    max_headers: Annotated[int, Field(ge=8, le=10_000)] = 100
    header_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    body_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    keep_alive_timeout_s: Annotated[int, Field(ge=1)] = 5
    max_connections: Annotated[int, Field(ge=1)] = 1000
    max_concurrent_rpcs: Annotated[int, Field(ge=1)] = 1000
    max_pending_rpcs: Annotated[int, Field(ge=1)] = 256
    max_inflight_requests: Annotated[int, Field(ge=1)] = 4096
    max_loop_lag_ms: Annotated[float, Field(gt=0)] | None = 250.0
    max_tensors: Annotated[int, Field(ge=1)] = 256
    max_tensor_elements: Annotated[int, Field(ge=1, le=1 << 40)] = 1 << 28
    max_string_bytes: Annotated[int, Field(ge=1)] = 1 * MiB

    def request_limits(self) -> RequestLimits:
        """The decoders' share of the limits."""
        return RequestLimits(self.max_tensors, self.max_tensor_elements, self.max_string_bytes)


class ServerConfig(Strict):
    """Listeners and limits of the process."""

    http: ListenConfig = ListenConfig(port=8000)
    grpc: ListenConfig = ListenConfig(port=8001)
    max_request_bytes: Annotated[int, Field(gt=0)] = 64 * MiB
    drain_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    limits: LimitsConfig = LimitsConfig()
    tls: TlsConfig | None = None


class SessionConfig(Strict):
    """ONNX Runtime session options."""

    intra_op_threads: Annotated[int, Field(ge=0)] = 0
    inter_op_threads: Annotated[int, Field(ge=1)] = 1
    graph_optimization: Literal["disabled", "basic", "extended", "all"] = "all"
    allow_spinning: bool = False


_INSTANCE_COUNT = "count"
_INSTANCE_GROUPS = "groups"


def _instances_form(value: Any) -> str:
    """Which form ``instances`` takes, so errors come from that form alone."""
    return _INSTANCE_GROUPS if isinstance(value, list) else _INSTANCE_COUNT


class InstanceGroupConfig(Strict):
    """Triton-style instances: ``count`` on the CPU, or ``count`` on each GPU of ``gpus``."""

    kind: Literal["cpu", "gpu"]
    count: Annotated[int, Field(ge=1, le=64)] = 1
    gpus: Annotated[list[Annotated[int, Field(ge=0, le=999)]], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _gpus_for_gpu(self) -> "InstanceGroupConfig":
        if self.kind == "cpu" and self.gpus is not None:
            raise ValueError("gpus applies to kind gpu only")
        return self

    def groups(self) -> list[InstanceGroup]:
        """The models layer's instance groups."""
        if self.kind == "cpu":
            return [InstanceGroup(Device("cpu"), self.count)]
        return [InstanceGroup(Device("cuda", gpu), self.count) for gpu in self.gpus or [0]]


class DynamicBatchingConfig(Strict):
    """Triton's dynamic batcher: on by default wherever the model has a batch dimension."""

    enabled: bool = True
    max_queue_delay_us: Annotated[int, Field(ge=0, le=10_000_000)] = 0
    preferred_batch_sizes: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list)


class CacheConfig(Strict):
    """The result cache of a version (off unless given)."""

    max_bytes: Annotated[int, Field(gt=0)]
    ttl_s: Annotated[float, Field(gt=0)] = 300.0


class ModelSettings(Strict):
    """How one model version is run; in model-repository mode, the whole of a model's
    ``turnout.yaml``."""

    device: str = "auto"
    tensorrt: bool = False
    instances: Annotated[
        Annotated[StrictInt, Field(ge=1, le=64), Tag(_INSTANCE_COUNT)]
        | Annotated[list[InstanceGroupConfig], Field(min_length=1), Tag(_INSTANCE_GROUPS)],
        Discriminator(_instances_form),
    ] = 1
    max_batch_size: Annotated[int, Field(ge=0)] | None = None
    dynamic_batching: DynamicBatchingConfig = DynamicBatchingConfig()
    max_queue_size: Annotated[int, Field(ge=1, le=1_000_000)] = 512
    timeout_ms: Annotated[float, Field(gt=0)] | None = None
    run_timeout_s: Annotated[float, Field(gt=0)] | None = 60.0
    cache: CacheConfig | None = None
    io_binding: Literal["auto", "on", "off"] = "auto"

    @field_validator("io_binding", mode="before")
    @classmethod
    def _on_off(cls, value: Any) -> Any:
        # YAML reads a bare on/off as a boolean.
        if isinstance(value, bool):
            return "on" if value else "off"
        return value

    warmup: bool = True
    session: SessionConfig = SessionConfig()
    monitoring: ModelMonitoring | None = None

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        Device.parse(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "ModelSettings":
        if isinstance(self.instances, list) and self.device != "auto":
            raise ValueError(
                "device applies when instances is a number; "
                "with instance groups, each group gives its kind (and gpus)"
            )
        preferred = self.dynamic_batching.preferred_batch_sizes
        if self.max_batch_size is not None and any(s > self.max_batch_size for s in preferred):
            raise ValueError(
                "dynamic_batching.preferred_batch_sizes must not exceed max_batch_size "
                f"({self.max_batch_size})"
            )
        return self

    def version_spec(self, name: str, version: str, path: Path) -> VersionSpec:
        """The models layer's description of this version."""
        session = self.session
        batching = self.dynamic_batching
        if isinstance(self.instances, int):
            groups = [InstanceGroup(Device.parse(self.device), self.instances)]
        else:
            groups = [group for config in self.instances for group in config.groups()]
        return VersionSpec(
            name=name,
            version=version,
            path=path,
            instance_groups=tuple(groups),
            tensorrt=self.tensorrt,
            session=SessionSettings(
                session.intra_op_threads,
                session.inter_op_threads,
                session.graph_optimization,
                session.allow_spinning,
            ),
            max_batch_size=self.max_batch_size,
            dynamic_batching=batching.enabled,
            max_queue_delay_s=batching.max_queue_delay_us / 1e6,
            preferred_batch_sizes=tuple(sorted(set(batching.preferred_batch_sizes))),
            max_queue_size=self.max_queue_size,
            timeout_s=self.timeout_ms / 1000 if self.timeout_ms is not None else None,
            run_timeout_s=self.run_timeout_s,
            cache=CacheSettings(self.cache.max_bytes, self.cache.ttl_s) if self.cache else None,
            io_binding=self.io_binding,
            warmup=self.warmup,
        )


class ModelEntry(ModelSettings):
    """One model version of the main config."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    version: Annotated[str, Field(pattern=VERSION_PATTERN)]
    path: Path

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> str:
        return version_text(value)

    @field_validator("path")
    @classmethod
    def _path_exists(cls, value: Path, info: ValidationInfo) -> Path:
        return existing_file(value, info)

    def spec(self) -> VersionSpec:
        """The models layer's description of this version."""
        return self.version_spec(self.name, self.version, self.path)


class AdminConfig(Strict):
    """The admin API: on when a token is configured (this file, or TURNOUT_ADMIN_TOKEN)."""

    token_file: Path | None = None
    allowed_origins: list[str] = Field(default_factory=list)

    listen: ListenConfig | None = None

    @field_validator("token_file")
    @classmethod
    def _token_file_exists(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else existing_file(value, info)


class FeedbackConfig(Strict):
    """How long served request ids are remembered for rewards."""

    ttl_s: Annotated[float, Field(gt=0)] = 3600.0
    max_entries: Annotated[int, Field(ge=1, le=10_000_000)] = 100_000


class Config(Strict):
    """The whole of turnout.yaml."""

    server: ServerConfig = ServerConfig()
    models: Annotated[list[ModelEntry], Field(min_length=1)]
    routes: dict[str, RouteConfig] = Field(default_factory=dict)
    admin: AdminConfig = AdminConfig()
    feedback: FeedbackConfig = FeedbackConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    state_dir: Path | None = None
    model_root: Path | None = None

    @field_validator("state_dir", "model_root")
    @classmethod
    def _relative_to_config(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return resolve_path(value, info)

    @model_validator(mode="after")
    def _consistent(self) -> "Config":
        seen: dict[tuple[str, str], int] = {}
        for index, entry in enumerate(self.models):
            key = (entry.name, entry.version)
            if key in seen:
                raise ValueError(
                    f"models[{index}]: {entry.name} version {entry.version} "
                    f"is already models[{seen[key]}]"
                )
            seen[key] = index
        for endpoint, route in self.routes.items():
            versions = {version for name, version in seen if name == endpoint}
            if not versions:
                raise ValueError(f"routes.{endpoint}: no model of that name is configured")
            for version in sorted(route.versions() - versions, key=int):
                raise ValueError(f"routes.{endpoint}: model {endpoint} has no version {version}")
        return self

    def version_specs(self) -> list[VersionSpec]:
        """Every configured model version, for the repository."""
        return [entry.spec() for entry in self.models]


def load_config(path: Path) -> Config:
    """Read and validate a config file; raises ConfigError naming each bad field."""
    return validate_config(read_yaml(path), path, base_dir=path.parent)


def read_yaml(path: Path) -> Any:
    """Parse a YAML file with the safe loader; raises ConfigError for I/O and syntax errors."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), ["cannot read: not UTF-8 text"]) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(str(path), [f"{where}{problem}"]) from None


def validate_config(data: Any, source: Path, base_dir: Path) -> Config:
    """Validate parsed YAML as a Config; relative model paths are taken from ``base_dir``."""
    return validate_as(Config, data, source, base_dir)


def validate_as(schema: type[_Schema], data: Any, source: Path, base_dir: Path) -> _Schema:
    """Validate ``data`` against ``schema``, turning pydantic's errors into a ConfigError."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problem = (
            "the config must be a mapping with a 'models' list"
            if schema is Config
            else "the settings must be a mapping"
        )
        raise ConfigError(str(source), [problem])
    try:
        return schema.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(
            str(source),
            describe_errors(exc, {"instances": (_INSTANCE_COUNT, _INSTANCE_GROUPS)}),
        ) from None
