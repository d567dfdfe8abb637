"""Load-test scenarios (loadtests/scenario.py): files validated as a whole with every bad field
named by its path, exactly one of rate and concurrency per phase, unique phase names, actions
inside their phase and with their arguments, drift settings, the data path taken from the
scenario file's folder, and the one-phase scenario the command line makes."""

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from turnout.loadtests.scenario import Scenario, load_scenario, one_phase
from turnout.server.config import ConfigError


def _phase(**overrides: Any) -> dict[str, Any]:
    phase: dict[str, Any] = {"name": "main", "duration_s": 5, "rate": 100, "endpoints": {"mlp": 1}}
    return {**phase, **overrides}


def _write(path: Path, document: Any) -> Path:
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def _problems(path: Path, document: Any) -> list[str]:
    """The problems ``load_scenario`` finds in ``document`` written to ``path``."""
    with pytest.raises(ConfigError) as raised:
        load_scenario(_write(path, document))
    assert raised.value.source == str(path)
    return raised.value.problems


def test_a_valid_scenario_loads_with_its_defaults(tmp_path: Path) -> None:
    scenario = load_scenario(
        _write(
            tmp_path / "scenario.yaml",
            {
                "phases": [
                    _phase(name="steady", duration_s=2.5),
                    _phase(
                        name="canary",
                        duration_s=4,
                        rate=None,
                        concurrency=3,
                        actions=[
                            {
                                "at_s": 4,  # the phase's last moment is still inside it
                                "action": "set_weights",
                                "endpoint": "mlp",
                                "weights": {"1": 50, "2": 50},
                            }
                        ],
                        expect={"share": [{"version": "2", "min": 0.4, "max": 0.6}]},
                    ),
                ]
            },
        )
    )
    assert [phase.name for phase in scenario.phases] == ["steady", "canary"]
    assert scenario.duration_s == 6.5
    steady, canary = scenario.phases
    assert (steady.rate, steady.concurrency, steady.arrival) == (100, None, "poisson")
    assert (canary.rate, canary.concurrency) == (None, 3)
    assert steady.actions == []
    assert steady.drift is None
    assert steady.rewards is None
    assert canary.actions[0].weights == {"1": 50, "2": 50}
    assert canary.expect.share[0].endpoint is None
    assert (scenario.data, scenario.rows_per_request) == (None, 1)


def test_the_shipped_demo_canary_scenario_is_valid() -> None:
    path = Path(__file__).resolve().parents[2] / "loadtests" / "scenarios" / "demo-canary.yaml"
    scenario = load_scenario(path)
    assert [phase.name for phase in scenario.phases] == ["baseline", "canary-50", "drift"]
    assert scenario.duration_s == 60
    assert [action.action for phase in scenario.phases for action in phase.actions] == [
        "set_weights",
        "rollback",
    ]


@pytest.mark.parametrize(
    ("load", "field"),
    [
        pytest.param({"rate": None}, "phases[0]", id="neither"),
        pytest.param({"concurrency": 4}, "phases[0]", id="both"),
    ],
)
def test_a_phase_gives_exactly_one_of_rate_and_concurrency(
    tmp_path: Path, load: dict[str, Any], field: str
) -> None:
    problems = _problems(tmp_path / "s.yaml", {"phases": [_phase(**load)]})
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{field}: "), problems
    assert "either concurrency (closed loop) or rate (open loop)" in problems[0]


def test_every_bad_field_is_named_by_its_path(tmp_path: Path) -> None:
    document = {
        "phases": [
            _phase(rate=-1),
            _phase(name="second", arrival="bursty"),
            _phase(name="third", rate=None, concurrency=0),
            _phase(name="fourth", endpoints={"not a name!": 1}),
            _phase(name="fifth", expect={"share": [{"version": "2", "max": 1.5}]}),
            _phase(name="sixth", colour="blue"),
        ],
        "rows_per_request": 0,
    }
    problems = _problems(tmp_path / "s.yaml", document)
    assert problems == [
        "phases[0].rate: Input should be greater than 0",
        "phases[1].arrival: Input should be 'poisson' or 'fixed'",
        "phases[2].concurrency: Input should be greater than or equal to 1",
        "phases[3].endpoints['not a name!']: must be 1 to 128 letters, digits, '_', '.' or '-', "
        "starting with a letter or digit",
        "phases[4].expect.share[0].max: Input should be less than or equal to 1",
        "phases[5].colour: unknown field",
        "rows_per_request: Input should be greater than or equal to 1",
    ], problems


def test_phase_names_are_unique(tmp_path: Path) -> None:
    problems = _problems(tmp_path / "s.yaml", {"phases": [_phase(), _phase(duration_s=1)]})
    assert problems == ["phase names must be unique"], problems


def test_a_scenario_has_at_least_one_phase(tmp_path: Path) -> None:
    problems = _problems(tmp_path / "s.yaml", {"phases": []})
    assert problems == ["phases: List should have at least 1 item after validation, not 0"]


def test_an_empty_file_has_no_phases(tmp_path: Path) -> None:
    assert _problems(tmp_path / "s.yaml", None) == ["phases: required"]


@pytest.mark.parametrize("document", ["just text", [1, 2]], ids=["text", "list"])
def test_a_file_that_is_not_a_mapping_is_refused(tmp_path: Path, document: Any) -> None:
    assert _problems(tmp_path / "s.yaml", document) == ["the settings must be a mapping"]


def test_an_action_past_its_phase_end_is_refused(tmp_path: Path) -> None:
    action = {"at_s": 5.5, "action": "promote", "endpoint": "mlp"}
    problems = _problems(tmp_path / "s.yaml", {"phases": [_phase(actions=[action])]})
    assert problems == ["phases[0]: an action at 5.5 s is past the phase's end"], problems


@pytest.mark.parametrize(
    ("action", "says"),
    [
        pytest.param({"action": "set_weights"}, "set_weights needs weights", id="no-weights"),
        pytest.param(
            {"action": "set_weights", "weights": {}}, "set_weights needs weights", id="empty"
        ),
        pytest.param({"action": "set_route"}, "set_route needs route", id="no-route"),
    ],
)
def test_an_action_needs_its_arguments(tmp_path: Path, action: dict[str, Any], says: str) -> None:
    actions = [{"endpoint": "mlp", **action}]
    problems = _problems(tmp_path / "s.yaml", {"phases": [_phase(actions=actions)]})
    assert len(problems) == 1, problems
    assert problems[0].startswith("phases[0].actions[0]: "), problems
    assert says in problems[0], problems


def test_an_action_is_one_the_admin_api_knows(tmp_path: Path) -> None:
    actions = [{"endpoint": "mlp", "action": "reboot"}]
    problems = _problems(tmp_path / "s.yaml", {"phases": [_phase(actions=actions)]})
    assert len(problems) == 1, problems
    assert problems[0].startswith("phases[0].actions[0].action: "), problems


def test_negative_weights_are_refused(tmp_path: Path) -> None:
    actions = [{"endpoint": "mlp", "action": "set_weights", "weights": {"1": -1, "2": 1}}]
    problems = _problems(tmp_path / "s.yaml", {"phases": [_phase(actions=actions)]})
    assert problems == [
        "phases[0].actions[0].weights['1']: Input should be greater than or equal to 0"
    ], problems


def test_category_swap_needs_the_values_it_swaps(tmp_path: Path) -> None:
    problems = _problems(tmp_path / "s.yaml", {"phases": [_phase(drift={"kind": "category_swap"})]})
    assert len(problems) == 1, problems
    assert problems[0].startswith("phases[0].drift: "), problems
    assert "category_swap needs swap" in problems[0], problems


def test_drift_settings_are_checked(tmp_path: Path) -> None:
    drift = {"kind": "mean_shift", "features": [-1], "start_s": -2}
    problems = _problems(tmp_path / "s.yaml", {"phases": [_phase(drift=drift)]})
    fields = sorted(problem.split(":")[0] for problem in problems)
    assert fields == ["phases[0].drift.features[0]", "phases[0].drift.start_s"], problems


def test_a_drift_with_swap_loads(tmp_path: Path) -> None:
    drift = {"kind": "category_swap", "swap": [1, 2], "start_s": 1}
    scenario = load_scenario(_write(tmp_path / "s.yaml", {"phases": [_phase(drift=drift)]}))
    assert scenario.phases[0].drift is not None
    assert scenario.phases[0].drift.swap == (1, 2)
    assert scenario.phases[0].drift.start_s == 1


def test_reward_odds_are_probabilities(tmp_path: Path) -> None:
    rewards = {"mlp": {"1": 0.1, "2": 1.2}}
    problems = _problems(tmp_path / "s.yaml", {"phases": [_phase(rewards=rewards)]})
    assert problems == ["phases[0].rewards.mlp['2']: Input should be less than or equal to 1"]


def test_a_relative_data_path_is_taken_from_the_scenario_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "scenarios"
    (folder / "data").mkdir(parents=True)
    np.savez(folder / "data" / "rows.npz", INPUT0=np.zeros((4, 64), np.float32))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not where the scenario is
    scenario = load_scenario(
        _write(folder / "s.yaml", {"data": "data/rows.npz", "phases": [_phase()]})
    )
    assert scenario.data == (folder / "data" / "rows.npz").resolve()


def test_a_missing_data_file_is_named(tmp_path: Path) -> None:
    problems = _problems(tmp_path / "s.yaml", {"data": "missing.npz", "phases": [_phase()]})
    assert problems == ["data: file not found"], problems


def test_a_phase_may_have_data_of_its_own(tmp_path: Path) -> None:
    np.savez(tmp_path / "shifted.npz", INPUT0=np.ones((4, 64), np.float32))
    scenario = load_scenario(
        _write(
            tmp_path / "s.yaml",
            {"phases": [_phase(name="before"), _phase(name="after", data="shifted.npz")]},
        )
    )
    assert scenario.data is None
    assert [phase.data for phase in scenario.phases] == [None, tmp_path / "shifted.npz"]
    problems = _problems(tmp_path / "bad.yaml", {"phases": [_phase(name="after", data="gone.npz")]})
    assert problems == ["phases[0].data: file not found"], problems


def test_a_yaml_syntax_error_says_where(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("phases: [\n  {name: a\n", encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_scenario(path)
    assert len(raised.value.problems) == 1
    assert raised.value.problems[0].startswith("line "), raised.value.problems


def test_the_command_line_makes_one_phase() -> None:
    scenario = one_phase("mlp", None, 250.0, 3.0, 4)
    assert isinstance(scenario, Scenario)
    assert scenario.rows_per_request == 4
    assert scenario.duration_s == 3.0
    (phase,) = scenario.phases
    assert (phase.name, phase.rate, phase.concurrency) == ("main", 250.0, None)
    assert phase.endpoints == {"mlp": 1.0}
    closed = one_phase("mlp", 8, None, 1.0, 1).phases[0]
    assert (closed.rate, closed.concurrency) == (None, 8)


def test_bad_command_line_values_are_a_config_error() -> None:
    with pytest.raises(ConfigError) as raised:
        one_phase("mlp", None, -5.0, 0.0, 1)
    assert raised.value.source == "command line"
    fields = sorted(problem.split(":")[0] for problem in raised.value.problems)
    assert fields == ["phases[0].duration_s", "phases[0].rate"], raised.value.problems
