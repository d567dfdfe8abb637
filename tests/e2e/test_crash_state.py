"""kill -9 in the middle of route changes and drift writes (BAD_INPUTS row 32): what is on disk
afterwards is the old state or the new one, never a torn file, and a restart serves with it."""

import http.client
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import yaml

from tests.support.e2e import json_outputs, mlp_json_request, mlp_reference
from tests.support.polling import wait_for
from tests.support.rawhttp import post_json
from tests.support.routing import Admin, admin_env
from tests.support.server import TurnoutProcess

ROUTES = (
    {"policy": "canary", "weights": {"1": 90.0, "2": 10.0}},
    {"policy": "canary", "weights": {"1": 10.0, "2": 90.0}},
)
ROWS_PER_REQUEST = 50
# Route changes and drift writes go on this long before the kill.
KILL_AFTER_S = 1.0


def demo_config(folder: Path) -> Path:
    """The demo, with drift windows small enough to be written several times a second."""
    subprocess.run(
        [sys.executable, "-m", "turnout", "demo", str(folder)], check=True, capture_output=True
    )
    path = folder / "turnout.yaml"
    config = yaml.safe_load(path.read_text())
    for model in config["models"]:
        model["monitoring"]["window"] = {"samples": 50, "seconds": 1}
    path.write_text(yaml.safe_dump(config))
    return path


def keep_busy(server: TurnoutProcess, stop: threading.Event, accepted: list[object]) -> None:
    """Change the route back and forth and send inference (sampled for drift) until ``stop``."""
    admin = Admin(server)
    rows = np.random.default_rng(7).standard_normal((ROWS_PER_REQUEST, 64)).astype(np.float32)
    turn = 0
    while not stop.is_set():
        try:
            reply = admin.call("PUT", "/admin/routes/mlp", ROUTES[turn % 2])
            if reply.status == 200:
                accepted.append(ROUTES[turn % 2])
            post_json(server.http_url, "/v2/models/mlp/infer", mlp_json_request(rows))
        except (OSError, http.client.HTTPException):
            return  # the server was killed, perhaps halfway through an answer
        turn += 1


def test_kill_9_during_route_changes_and_drift_writes_leaves_no_torn_state(
    tmp_path: Path,
) -> None:
    config = demo_config(tmp_path / "demo")
    state = tmp_path / "demo" / "state"
    monitoring = tmp_path / "demo" / "monitoring"
    workdir = tmp_path / "run"
    accepted: list[object] = []
    with TurnoutProcess(
        ["--config", str(config), "--state-dir", str(state)], workdir, env=admin_env()
    ) as server:
        stop = threading.Event()
        busy = [threading.Thread(target=keep_busy, args=(server, stop, accepted)) for _ in range(2)]
        for thread in busy:
            thread.start()
        wait_for(lambda: len(accepted) >= 10, "route changes under way")
        wait_for((monitoring / "drift.jsonl").exists, "drift records written")
        time.sleep(KILL_AFTER_S)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(30)
        stop.set()
        for thread in busy:
            thread.join(30)

    routes = json.loads((state / "routes.json").read_text())
    assert routes["mlp"]["route"] in ROUTES, routes
    audit = (state / "audit.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in audit[:-1]), "only the last line may be torn"
    records = (monitoring / "drift.jsonl").read_text().splitlines()
    assert records
    assert all(json.loads(line) for line in records[:-1]), "only the last line may be torn"
    with sqlite3.connect(monitoring / "drift.db") as database:
        assert database.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    with TurnoutProcess(
        ["--config", str(config), "--state-dir", str(state)], tmp_path / "again", env=admin_env()
    ) as restarted:
        assert Admin(restarted).route("mlp")["route"] == routes["mlp"]["route"]
        rows = np.random.default_rng(8).standard_normal((2, 64)).astype(np.float32)
        reply = post_json(
            restarted.http_url, "/v2/models/mlp/versions/1/infer", mlp_json_request(rows)
        )
        assert reply.status == 200, reply
        expected = mlp_reference(tmp_path / "demo" / "models", "1", rows)
        np.testing.assert_allclose(
            json_outputs(reply.json())["OUTPUT0"], expected["OUTPUT0"], rtol=1e-5, atol=1e-6
        )
        assert restarted.stop() == 0, restarted.logs()
        assert "Traceback" not in restarted.logs(), restarted.logs()
