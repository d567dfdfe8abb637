"""``turnout serve --model-repository DIR``: a Triton-style repository read as a config.

Each ``DIR/<model>/<version>/model.onnx`` is a model version (versions are positive integers);
an optional ``DIR/<model>/turnout.yaml`` holds that model's settings in the schema of a model
entry of turnout.yaml, without ``name``, ``version`` and ``path``, which the layout gives.
"""

import logging
import re
from pathlib import Path

from turnout.errors import InvalidInput, ModelNotFound, PermissionDenied, quoted
from turnout.schema import NAME_PATTERN, PATTERN_PROBLEMS, VERSION_PATTERN
from turnout.server.config import (
    Config,
    ConfigError,
    ModelEntry,
    ModelSettings,
    ServerConfig,
    read_yaml,
    validate_as,
)
from turnout.server.monitoring_config import ModelMonitoring

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
SETTINGS_FILE = "turnout.yaml"
REFERENCE_FILE = "reference.npz"


def config_from_repository(root: Path, server: ServerConfig) -> Config:
    """A Config serving every model version found under ``root``."""
    if not root.is_dir():
        raise ConfigError(str(root), ["model repository: not a directory"])
    entries: list[ModelEntry] = []
    problems: list[str] = []
    for model_dir in sorted(path for path in root.iterdir() if path.is_dir()):
        if model_dir.name.startswith("."):
            continue
        if not re.fullmatch(NAME_PATTERN, model_dir.name):
            problems.append(
                f"{model_dir.name!r}: a model name must be 1 to 128 letters, digits, '_', '.' "
                "or '-', starting with a letter or digit"
            )
            continue
        entries.extend(_model_versions(model_dir))
    if problems:
        raise ConfigError(str(root), problems)
    if not entries:
        raise ConfigError(str(root), [f"no <model>/<version>/{MODEL_FILE} found"])
    return Config(server=server, models=entries)


def model_settings(model_dir: Path) -> ModelSettings:
    """A model's settings: its turnout.yaml, with drift monitoring turned on against its
    reference.npz when the settings say nothing of monitoring. ConfigError for a bad file."""
    settings_file = model_dir / SETTINGS_FILE
    settings = (
        validate_as(ModelSettings, read_yaml(settings_file), settings_file, model_dir)
        if settings_file.is_file()
        else ModelSettings()
    )
    reference = model_dir / REFERENCE_FILE
    if settings.monitoring is None and reference.is_file():
        settings = settings.model_copy(
            update={"monitoring": ModelMonitoring(reference=reference.resolve())}
        )
    return settings


def _model_versions(model_dir: Path) -> list[ModelEntry]:
    settings = model_settings(model_dir)
    entries = []
    for version_dir in sorted(path for path in model_dir.iterdir() if path.is_dir()):
        if not re.fullmatch(VERSION_PATTERN, version_dir.name):
            continue
        model_file = version_dir / MODEL_FILE
        if not model_file.is_file():
            log.warning("%s: no %s; version skipped", version_dir, MODEL_FILE)
            continue
        entries.append(
            ModelEntry(
                name=model_dir.name,
                version=version_dir.name,
                path=model_file.resolve(),
                **settings.model_dump(),
            )
        )
    return entries


def version_in_root(root: Path, model: str, version: str) -> ModelEntry:
    """The entry of ``root/<model>/<version>/model.onnx``, with that model's settings file.

    InvalidInput for malformed names, PermissionDenied when the files resolve outside ``root``
    (a symbolic link, say), ModelNotFound when there is no such file."""
    if not re.fullmatch(NAME_PATTERN, model):
        raise InvalidInput(f"model name {quoted(model)} {PATTERN_PROBLEMS[NAME_PATTERN]}")
    if not re.fullmatch(VERSION_PATTERN, version):
        raise InvalidInput(f"version {quoted(version)} {PATTERN_PROBLEMS[VERSION_PATTERN]}")
    base = root.resolve()
    model_dir = base / model
    path = (model_dir / version / MODEL_FILE).resolve()
    if not path.is_relative_to(base) or not model_dir.resolve().is_relative_to(base):
        raise PermissionDenied(f"model {quoted(model)} version {version} is outside the model root")
    if not path.is_file():
        raise ModelNotFound(f"no {MODEL_FILE} for model {quoted(model)} version {version}")
    try:
        settings = model_settings(model_dir)
    except ConfigError as error:
        raise InvalidInput(
            f"{SETTINGS_FILE} of model {quoted(model)}: {'; '.join(error.problems)}"
        ) from None
    return ModelEntry(name=model, version=version, path=path, **settings.model_dump())
