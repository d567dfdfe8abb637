"""The drift monitoring part of turnout.yaml (server/monitoring_config.py): ``models[].monitoring``
and the top-level ``monitoring``, read field by field, relative paths taken from the config's
folder, and every invalid value named by its field path with what is wrong, never a traceback."""

import json
from pathlib import Path
from typing import Any

import pytest

from turnout.monitoring.monitor import MonitorSettings
from turnout.monitoring.records import DEFAULT_MIN_WINDOW
from turnout.server.cli import EXIT_USAGE, main
from turnout.server.config import ConfigError, ServerConfig, load_config
from turnout.server.monitoring_config import MiB, ModelMonitoring, MonitoringConfig
from turnout.server.repository_mode import REFERENCE_FILE, SETTINGS_FILE, config_from_repository

MODEL_FILE = "model.onnx"
REFERENCE = "reference.npz"
P_VALUE_ORDER = "warn must be at least alert (lower p-values are worse)"
NOT_BELOW = "Input should be greater than or equal to"


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A folder holding (placeholder) model and reference files: the config checks only that
    they exist."""
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / MODEL_FILE).write_bytes(b"placeholder")
    (folder / REFERENCE).write_bytes(b"placeholder")
    (folder / "reference.csv").write_text("INPUT0[0]\n1.0\n", encoding="utf-8")
    return folder


def entry(monitoring: Any = None, **fields: Any) -> dict[str, Any]:
    """A valid model entry, with ``monitoring`` when given."""
    found = {"name": "mlp", "version": 1, "path": MODEL_FILE, **fields}
    if monitoring is not None:
        found["monitoring"] = monitoring
    return found


def write(folder: Path, data: Any) -> Path:
    path = folder / "turnout.yaml"
    path.write_text(json.dumps(data), encoding="utf-8")  # JSON is YAML
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.source == str(path)
    return caught.value.problems


# -- valid settings ---------------------------------------------------------------------------


def test_monitoring_is_off_unless_given(config_dir: Path) -> None:
    config = load_config(write(config_dir, {"models": [entry()]}))

    assert config.models[0].monitoring is None
    assert config.monitoring == MonitoringConfig()
    assert config.monitoring.jsonl.path is None  # <state_dir>/drift.jsonl
    assert config.monitoring.jsonl.max_bytes == 64 * MiB
    assert config.monitoring.jsonl.backups == 5
    assert config.monitoring.sqlite is None
    assert config.monitoring.queue_size == 10_000


def test_an_empty_monitoring_mapping_takes_the_defaults(config_dir: Path) -> None:
    config = load_config(write(config_dir, {"models": [entry({})]}))

    monitoring = config.models[0].monitoring
    assert monitoring == ModelMonitoring()
    assert monitoring.reference is None
    settings = monitoring.settings()
    defaults = MonitorSettings()
    assert settings.sample_rate == defaults.sample_rate == 1.0
    assert settings.max_samples_per_s == defaults.max_samples_per_s
    assert settings.window_samples == defaults.window_samples == 1000
    assert settings.window_seconds == defaults.window_seconds == 60.0
    assert settings.capture_reference == defaults.capture_reference
    assert settings.thresholds.min_window == DEFAULT_MIN_WINDOW
    bounds = settings.thresholds.bounds
    assert (bounds["psi"].warn, bounds["psi"].alert) == (0.1, 0.25)
    assert bounds["ks_pvalue"].lower_is_worse
    assert bounds["chi2_pvalue"].lower_is_worse
    assert not bounds["psi"].lower_is_worse


def test_every_field_is_read(config_dir: Path) -> None:
    data = {
        "models": [
            entry(
                {
                    "sample_rate": 0.25,
                    "max_samples_per_s": 50,
                    "reference": REFERENCE,
                    "capture_reference": 10,
                    "window": {"samples": 10, "seconds": 0.5},
                    "thresholds": {
                        "psi": {"warn": 0.2, "alert": 0.2},
                        "ks_pvalue": {"warn": 0.05, "alert": 0.01},
                        "chi2_pvalue": {"alert": 0.001},
                        "wasserstein": {"warn": 1.5},
                        "min_window": 1,
                    },
                }
            )
        ],
        "monitoring": {
            "jsonl": {"path": "out/drift.jsonl", "max_bytes": 4096, "backups": 100},
            "sqlite": {"path": "out/drift.db"},
            "queue_size": 1,
        },
    }

    config = load_config(write(config_dir, data))

    monitoring = config.models[0].monitoring
    assert monitoring is not None
    assert monitoring.reference == (config_dir / REFERENCE).resolve()
    settings = monitoring.settings()
    assert settings.sample_rate == 0.25
    assert settings.max_samples_per_s == 50
    assert settings.capture_reference == 10
    assert (settings.window_samples, settings.window_seconds) == (10, 0.5)
    bounds = settings.thresholds.bounds
    assert (bounds["psi"].warn, bounds["psi"].alert) == (0.2, 0.2)
    assert (bounds["ks_pvalue"].warn, bounds["ks_pvalue"].alert) == (0.05, 0.01)
    assert (bounds["chi2_pvalue"].warn, bounds["chi2_pvalue"].alert) == (None, 0.001)
    assert (bounds["wasserstein"].warn, bounds["wasserstein"].alert) == (1.5, None)
    assert settings.thresholds.min_window == 1
    sinks = config.monitoring
    assert sinks.jsonl.path == (config_dir / "out" / "drift.jsonl").resolve()
    assert (sinks.jsonl.max_bytes, sinks.jsonl.backups) == (4096, 100)
    assert sinks.sqlite is not None
    assert sinks.sqlite.path == (config_dir / "out" / "drift.db").resolve()
    assert sinks.queue_size == 1


@pytest.mark.parametrize("name", [REFERENCE, "reference.csv"])
def test_reference_may_be_npz_or_csv(config_dir: Path, name: str) -> None:
    config = load_config(write(config_dir, {"models": [entry({"reference": name})]}))

    monitoring = config.models[0].monitoring
    assert monitoring is not None
    assert monitoring.reference == (config_dir / name).resolve()


@pytest.mark.parametrize("rate", [1, 1.0, 0.001])
def test_sample_rates_in_range(config_dir: Path, rate: float) -> None:
    config = load_config(write(config_dir, {"models": [entry({"sample_rate": rate})]}))

    monitoring = config.models[0].monitoring
    assert monitoring is not None
    assert monitoring.sample_rate == rate


# -- relative paths ---------------------------------------------------------------------------


def test_relative_paths_are_taken_from_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_dir = tmp_path / "deploy" / "config"
    config_dir.mkdir(parents=True)
    (config_dir / MODEL_FILE).write_bytes(b"placeholder")
    shared = tmp_path / "deploy" / "shared"
    shared.mkdir()
    (shared / REFERENCE).write_bytes(b"placeholder")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / REFERENCE).write_bytes(b"a decoy in the working folder")
    monkeypatch.chdir(elsewhere)
    data = {
        "models": [entry({"reference": f"../shared/{REFERENCE}"})],
        "monitoring": {"jsonl": {"path": "drift/d.jsonl"}, "sqlite": {"path": "../db/d.db"}},
    }

    config = load_config(write(config_dir, data))

    monitoring = config.models[0].monitoring
    assert monitoring is not None
    assert monitoring.reference == (shared / REFERENCE).resolve()
    assert config.monitoring.jsonl.path == (config_dir / "drift" / "d.jsonl").resolve()
    assert config.monitoring.sqlite is not None
    assert config.monitoring.sqlite.path == (tmp_path / "deploy" / "db" / "d.db").resolve()
    for path in (monitoring.reference, config.monitoring.jsonl.path):
        assert path.is_absolute()


def test_relative_reference_is_not_taken_from_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / MODEL_FILE).write_bytes(b"placeholder")
    (tmp_path / REFERENCE).write_bytes(b"in the working folder only")
    monkeypatch.chdir(tmp_path)

    assert problems_of(write(config_dir, {"models": [entry({"reference": REFERENCE})]})) == [
        "models[0].monitoring.reference: file not found"
    ]


def test_absolute_paths_are_kept(config_dir: Path, tmp_path: Path) -> None:
    reference = tmp_path / "abs" / REFERENCE
    reference.parent.mkdir()
    reference.write_bytes(b"placeholder")
    db = tmp_path / "abs" / "drift.db"
    data = {
        "models": [entry({"reference": str(reference)})],
        "monitoring": {"sqlite": {"path": str(db)}},
    }

    config = load_config(write(config_dir, data))

    monitoring = config.models[0].monitoring
    assert monitoring is not None
    assert monitoring.reference == reference
    assert config.monitoring.sqlite is not None
    assert config.monitoring.sqlite.path == db


# -- validation errors, each with its field path -----------------------------------------------

MONITORING = "models[0].monitoring"
THRESHOLDS = f"{MONITORING}.thresholds"

INVALID_MODEL_MONITORING = [
    # the reference file
    pytest.param(
        {"reference": "model.onnx"},
        [f"{MONITORING}.reference: must be a .npz or .csv file"],
        id="reference-suffix",
    ),
    pytest.param(
        {"reference": "absent.npz"},
        [f"{MONITORING}.reference: file not found"],
        id="reference-missing",
    ),
    pytest.param(
        {"reference": "folder.npz"},
        [f"{MONITORING}.reference: file not found"],
        id="reference-a-directory",
    ),
    # sampling
    pytest.param(
        {"sample_rate": 0},
        [f"{MONITORING}.sample_rate: Input should be greater than 0"],
        id="sample-rate-0",
    ),
    pytest.param(
        {"sample_rate": -0.5},
        [f"{MONITORING}.sample_rate: Input should be greater than 0"],
        id="sample-rate-negative",
    ),
    pytest.param(
        {"sample_rate": 1.5},
        [f"{MONITORING}.sample_rate: Input should be less than or equal to 1"],
        id="sample-rate-over-1",
    ),
    pytest.param(
        {"sample_rate": "half"},
        [f"{MONITORING}.sample_rate: Input should be a valid number"],
        id="sample-rate-text",
    ),
    pytest.param(
        {"max_samples_per_s": 0},
        [f"{MONITORING}.max_samples_per_s: Input should be greater than 0"],
        id="max-samples-per-s-0",
    ),
    pytest.param(
        {"capture_reference": 9},
        [f"{MONITORING}.capture_reference: {NOT_BELOW} 10"],
        id="capture-reference-too-small",
    ),
    # windows
    pytest.param(
        {"window": {"samples": 9}},
        [f"{MONITORING}.window.samples: {NOT_BELOW} 10"],
        id="window-samples-too-small",
    ),
    pytest.param(
        {"window": {"samples": 0}},
        [f"{MONITORING}.window.samples: {NOT_BELOW} 10"],
        id="window-samples-0",
    ),
    pytest.param(
        {"window": {"samples": 10_000_001}},
        [f"{MONITORING}.window.samples: Input should be less than or equal to 10000000"],
        id="window-samples-too-large",
    ),
    pytest.param(
        {"window": {"seconds": 0}},
        [f"{MONITORING}.window.seconds: Input should be greater than 0"],
        id="window-seconds-0",
    ),
    # thresholds
    pytest.param(
        {"thresholds": {"psi": {"warn": 0.3, "alert": 0.2}}},
        [f"{THRESHOLDS}: psi: warn must not exceed alert"],
        id="psi-warn-over-alert",
    ),
    pytest.param(
        {"thresholds": {"out_of_range_rate": {"warn": 0.5, "alert": 0.1}}},
        [f"{THRESHOLDS}: out_of_range_rate: warn must not exceed alert"],
        id="rate-warn-over-alert",
    ),
    pytest.param(
        {"thresholds": {"ks_pvalue": {"warn": 0.001, "alert": 0.01}}},
        [f"{THRESHOLDS}: ks_pvalue: {P_VALUE_ORDER}"],
        id="ks-pvalue-warn-below-alert",
    ),
    pytest.param(
        {"thresholds": {"chi2_pvalue": {"warn": 0.001, "alert": 0.05}}},
        [f"{THRESHOLDS}: chi2_pvalue: {P_VALUE_ORDER}"],
        id="chi2-pvalue-warn-below-alert",
    ),
    pytest.param(
        {"thresholds": {"ks_pvalue": {"alert": 5}}},
        [f"{THRESHOLDS}: ks_pvalue: a p-value level must be between 0 and 1"],
        id="p-value-level-above-1",
    ),
    pytest.param(
        {"thresholds": {"psi": {"warn": 0.3, "alert": 0.2}, "chi2_pvalue": {"warn": 0}}},
        [
            f"{THRESHOLDS}: psi: warn must not exceed alert; "
            "chi2_pvalue: a p-value level must be between 0 and 1"
        ],
        id="every-threshold-problem-named",
    ),
    pytest.param(
        {"thresholds": {"psi": {"warn": "high"}}},
        [f"{THRESHOLDS}.psi.warn: Input should be a valid number"],
        id="threshold-text",
    ),
    pytest.param(
        {"thresholds": {"min_window": 0}},
        [f"{THRESHOLDS}.min_window: {NOT_BELOW} 1"],
        id="min-window-0",
    ),
    # unknown keys, at every level
    pytest.param({"bogus": 1}, [f"{MONITORING}.bogus: unknown field"], id="unknown-key"),
    pytest.param(
        {"window": {"minutes": 1}},
        [f"{MONITORING}.window.minutes: unknown field"],
        id="unknown-window-key",
    ),
    pytest.param(
        {"thresholds": {"kl_divergence": {"alert": 1}}},
        [f"{THRESHOLDS}.kl_divergence: unknown field"],
        id="unknown-statistic",
    ),
    pytest.param(
        {"thresholds": {"psi": {"critical": 1}}},
        [f"{THRESHOLDS}.psi.critical: unknown field"],
        id="unknown-level",
    ),
    pytest.param(
        {"sample_rate": 0, "window": {"samples": 1}, "reference": "absent.csv"},
        [
            f"{MONITORING}.sample_rate: Input should be greater than 0",
            f"{MONITORING}.reference: file not found",
            f"{MONITORING}.window.samples: {NOT_BELOW} 10",
        ],
        id="all-problems-reported",
    ),
]


@pytest.mark.parametrize(("monitoring", "expected"), INVALID_MODEL_MONITORING)
def test_invalid_model_monitoring_names_the_field(
    config_dir: Path, monitoring: dict[str, Any], expected: list[str]
) -> None:
    (config_dir / "folder.npz").mkdir()

    problems = problems_of(write(config_dir, {"models": [entry(monitoring)]}))

    assert len(problems) == len(expected), problems
    for problem, fragment in zip(problems, expected, strict=True):
        assert problem.startswith(fragment), problems


INVALID_SINKS = [
    pytest.param(
        {"jsonl": {"max_bytes": 4095}},
        [f"monitoring.jsonl.max_bytes: {NOT_BELOW} 4096"],
        id="jsonl-max-bytes",
    ),
    pytest.param(
        {"jsonl": {"backups": 0}},
        [f"monitoring.jsonl.backups: {NOT_BELOW} 1"],
        id="jsonl-backups-0",
    ),
    pytest.param(
        {"jsonl": {"backups": 101}},
        ["monitoring.jsonl.backups: Input should be less than or equal to 100"],
        id="jsonl-backups-too-many",
    ),
    pytest.param({"sqlite": {}}, ["monitoring.sqlite.path: required"], id="sqlite-without-path"),
    pytest.param({"queue_size": 0}, [f"monitoring.queue_size: {NOT_BELOW} 1"], id="queue-size-0"),
    pytest.param({"bogus": 1}, ["monitoring.bogus: unknown field"], id="unknown-key"),
    pytest.param(
        {"jsonl": {"rotate": True}}, ["monitoring.jsonl.rotate: unknown field"], id="unknown-jsonl"
    ),
    pytest.param(
        {"sqlite": {"path": "d.db", "table": "x"}},
        ["monitoring.sqlite.table: unknown field"],
        id="unknown-sqlite",
    ),
]


@pytest.mark.parametrize(("sinks", "expected"), INVALID_SINKS)
def test_invalid_sinks_name_the_field(
    config_dir: Path, sinks: dict[str, Any], expected: list[str]
) -> None:
    problems = problems_of(write(config_dir, {"models": [entry()], "monitoring": sinks}))

    assert len(problems) == len(expected), problems
    for problem, fragment in zip(problems, expected, strict=True):
        assert problem.startswith(fragment), problems


def test_problems_of_several_models_and_the_sinks_are_reported_together(config_dir: Path) -> None:
    data = {
        "models": [
            entry({"sample_rate": 2}),
            entry({"reference": "absent.npz"}, version=2),
        ],
        "monitoring": {"queue_size": 0},
    }

    problems = problems_of(write(config_dir, data))

    assert problems == [
        "models[0].monitoring.sample_rate: Input should be less than or equal to 1",
        "models[1].monitoring.reference: file not found",
        f"monitoring.queue_size: {NOT_BELOW} 1",
    ]


def test_the_command_line_prints_the_problems_without_a_traceback(
    config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(config_dir, {"models": [entry({"sample_rate": 0, "reference": "x.parquet"})]})

    status = main(["serve", "--config", str(path)])

    assert status == EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"turnout: invalid config {path}:",
        f"  {MONITORING}.sample_rate: Input should be greater than 0",
        f"  {MONITORING}.reference: must be a .npz or .csv file",
    ]


# -- repository mode: a model's turnout.yaml and reference.npz ----------------------------------


def _repository_model(root: Path) -> Path:
    model_dir = root / "mlp"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "1" / MODEL_FILE).write_bytes(b"placeholder")
    return model_dir


def test_a_reference_npz_turns_monitoring_on_with_the_defaults(tmp_path: Path) -> None:
    model_dir = _repository_model(tmp_path)
    (model_dir / REFERENCE_FILE).write_bytes(b"placeholder")

    (model,) = config_from_repository(tmp_path, ServerConfig()).models

    assert model.monitoring == ModelMonitoring(reference=(model_dir / REFERENCE_FILE).resolve())


def test_without_a_reference_npz_monitoring_stays_off(tmp_path: Path) -> None:
    _repository_model(tmp_path)

    (model,) = config_from_repository(tmp_path, ServerConfig()).models

    assert model.monitoring is None


def test_a_model_settings_file_takes_paths_from_the_model_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir = _repository_model(tmp_path / "root")
    (model_dir / "data").mkdir()
    (model_dir / "data" / "rows.csv").write_text("INPUT0[0]\n1\n", encoding="utf-8")
    (model_dir / SETTINGS_FILE).write_text(
        "monitoring: {reference: data/rows.csv, sample_rate: 0.5}\n", encoding="utf-8"
    )
    monkeypatch.chdir(tmp_path)

    (model,) = config_from_repository(tmp_path / "root", ServerConfig()).models

    assert model.monitoring is not None
    assert model.monitoring.reference == (model_dir / "data" / "rows.csv").resolve()
    assert model.monitoring.sample_rate == 0.5


def test_invalid_monitoring_in_a_model_settings_file_names_the_field(tmp_path: Path) -> None:
    model_dir = _repository_model(tmp_path)
    settings = model_dir / SETTINGS_FILE
    settings.write_text(
        "monitoring: {sample_rate: 0, thresholds: {psi: {warn: 1, alert: 0.5}}}\n",
        encoding="utf-8",
    )

    with pytest.raises(ConfigError) as caught:
        config_from_repository(tmp_path, ServerConfig())

    assert caught.value.source == str(settings)
    assert caught.value.problems == [
        "monitoring.sample_rate: Input should be greater than 0",
        "monitoring.thresholds: psi: warn must not exceed alert",
    ]
