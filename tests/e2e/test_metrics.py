"""``GET /metrics`` end to end: after successful and failed requests on both protocols the
Prometheus text counts them under the right labels. The shared server's counters only grow, so
every check compares a scrape after the requests with one before."""

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from tests.support.e2e import (
    assert_serving,
    inflight,
    mlp_json_request,
    mlp_rows,
    scrape,
    typed_tensor,
)
from tests.support.polling import wait_for
from tests.support.prometheus import Sample, Scrape
from tests.support.rawhttp import Reply, post_json, request
from tests.support.server import TurnoutProcess
from turnout.protos import inference_pb2 as pb
from turnout.protos import inference_pb2_grpc as pb_grpc

LATENCY_BOUNDS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
)  # fmt: skip
SHARED_VERSIONS = {
    ("mlp", "1"),
    ("mlp", "2"),
    ("all_types", "1"),
    ("strings", "1"),
    ("fixed", "1"),
    ("slow", "1"),
}

# (endpoint, version, protocol, status) -> how many requests of that kind the traffic below
# sends; versions are those that served, "" where none was chosen.
Outcome = tuple[str, str, str, str]


def _http_traffic(server: TurnoutProcess) -> Counter[Outcome]:
    sent: Counter[Outcome] = Counter()
    infer = "/v2/models/mlp/infer"
    for batch in (1, 2, 3):
        assert post_json(server.http_url, infer, mlp_json_request(mlp_rows(batch))).status == 200
        sent["mlp", "2", "http", "success"] += 1
    pinned = "/v2/models/mlp/versions/1/infer"
    assert post_json(server.http_url, pinned, mlp_json_request(mlp_rows(1))).status == 200
    sent["mlp", "1", "http", "success"] += 1
    wrong = mlp_json_request(mlp_rows(1))
    wrong["inputs"][0]["datatype"] = "FP64"
    for _ in range(2):
        assert post_json(server.http_url, infer, wrong).status == 400
        sent["mlp", "2", "http", "invalid_input"] += 1
    missing = "/v2/models/mlp/versions/7/infer"
    assert post_json(server.http_url, missing, mlp_json_request(mlp_rows(1))).status == 404
    sent["mlp", "", "http", "not_found"] += 1
    return sent


def _grpc_traffic(stub: pb_grpc.GRPCInferenceServiceStub) -> Counter[Outcome]:
    sent: Counter[Outcome] = Counter()
    good = [typed_tensor("INPUT0", "FP32", mlp_rows(2))]
    for _ in range(2):
        stub.ModelInfer(pb.ModelInferRequest(model_name="mlp", inputs=good), timeout=10)
        sent["mlp", "2", "grpc", "success"] += 1
    pinned = pb.ModelInferRequest(model_name="mlp", model_version="1", inputs=good)
    stub.ModelInfer(pinned, timeout=10)
    sent["mlp", "1", "grpc", "success"] += 1
    bad = [typed_tensor("INPUT0", "FP32", np.zeros((1, 63), np.float32))]
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(pb.ModelInferRequest(model_name="mlp", inputs=bad), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    sent["mlp", "2", "grpc", "invalid_input"] += 1
    return sent


def _requests(scrape_: Scrape) -> dict[Outcome, float]:
    return {
        (s.labels["endpoint"], s.labels["version"], s.labels["protocol"], s.labels["status"]): (
            s.value
        )
        for s in scrape_.find("turnout_requests_total")
    }


def _histogram(scrape_: Scrape, name: str, **labels: str) -> tuple[list[Sample], float, float]:
    """The buckets (in order), count and sum of one histogram series, checked for shape; no
    buckets and zeros for a series not created yet."""
    buckets = scrape_.find(f"{name}_bucket", **labels)
    if not buckets:
        assert not scrape_.find(f"{name}_count", **labels)
        return [], 0.0, 0.0
    bounds = [sample.labels["le"] for sample in buckets]
    assert bounds == [*(repr(float(b)) for b in LATENCY_BOUNDS), "+Inf"], bounds
    values = [sample.value for sample in buckets]
    assert values == sorted(values), "bucket counts must be cumulative"
    count = scrape_.value(f"{name}_count", **labels)
    total = scrape_.value(f"{name}_sum", **labels)
    assert values[-1] == count
    assert total >= 0
    return buckets, count, total


@pytest.fixture(scope="module")
def traffic(
    server: TurnoutProcess, stub: pb_grpc.GRPCInferenceServiceStub
) -> tuple[Scrape, Scrape, Counter[Outcome]]:
    """A scrape, known traffic on both protocols, and another scrape."""
    before = scrape(server)
    sent = _http_traffic(server) + _grpc_traffic(stub)
    return before, scrape(server), sent


def test_requests_total_counts_every_outcome(
    traffic: tuple[Scrape, Scrape, Counter[Outcome]],
) -> None:
    before, after, sent = traffic
    old, new = _requests(before), _requests(after)
    grown = {key: new[key] - old.get(key, 0.0) for key in new if new[key] != old.get(key, 0.0)}
    assert grown == {key: float(count) for key, count in sent.items()}


def test_requests_total_is_a_counter_with_help(
    traffic: tuple[Scrape, Scrape, Counter[Outcome]],
) -> None:
    _, after, _ = traffic
    assert "# TYPE turnout_requests_total counter" in after.text
    assert "# HELP turnout_requests_total " in after.text
    statuses = {s.labels["status"] for s in after.find("turnout_requests_total")}
    assert {"success", "invalid_input", "not_found", "internal_error", "cancelled"} <= statuses
    assert after.label_values("protocol") == {"http", "grpc"}


@pytest.mark.parametrize(
    ("version", "protocol"),
    [("2", "http"), ("1", "http"), ("", "http"), ("2", "grpc"), ("1", "grpc")],
    ids=["v2-http", "v1-http", "unrouted-http", "v2-grpc", "v1-grpc"],
)
def test_request_duration_histogram(
    traffic: tuple[Scrape, Scrape, Counter[Outcome]], version: str, protocol: str
) -> None:
    before, after, sent = traffic
    labels = {"endpoint": "mlp", "version": version, "protocol": protocol}
    assert "# TYPE turnout_request_duration_seconds histogram" in after.text
    _, count_before, sum_before = _histogram(before, "turnout_request_duration_seconds", **labels)
    buckets, count_after, sum_after = _histogram(
        after, "turnout_request_duration_seconds", **labels
    )
    assert buckets
    expected = sum(n for key, n in sent.items() if key[:3] == ("mlp", version, protocol))
    assert count_after - count_before == expected
    assert sum_after > sum_before


@pytest.mark.parametrize("version", ["1", "2"])
def test_model_run_duration_histogram(
    traffic: tuple[Scrape, Scrape, Counter[Outcome]], version: str
) -> None:
    before, after, sent = traffic
    labels = {"endpoint": "mlp", "version": version}
    assert "# TYPE turnout_model_run_duration_seconds histogram" in after.text
    _, count_before, sum_before = _histogram(before, "turnout_model_run_duration_seconds", **labels)
    buckets, count_after, sum_after = _histogram(
        after, "turnout_model_run_duration_seconds", **labels
    )
    assert buckets
    runs = sum(n for key, n in sent.items() if key[:2] == ("mlp", version) and key[3] == "success")
    assert count_after - count_before == runs
    assert sum_after > sum_before


def test_model_ready_gauge(server: TurnoutProcess) -> None:
    after = scrape(server)
    assert "# TYPE turnout_model_ready gauge" in after.text
    ready = {
        (s.labels["endpoint"], s.labels["version"]): s.value
        for s in after.find("turnout_model_ready")
    }
    assert ready == dict.fromkeys(SHARED_VERSIONS, 1.0)


def test_inflight_gauge_follows_a_slow_request(server: TurnoutProcess, repository: Path) -> None:
    assert inflight(server, "http") == 0
    assert inflight(server, "grpc") == 0
    replies: list[Reply] = []
    body: dict[str, Any] = {
        "inputs": [{"name": "ITERATIONS", "datatype": "INT64", "shape": [1], "data": [200_000]}]
    }
    thread = threading.Thread(
        target=lambda: replies.append(post_json(server.http_url, "/v2/models/slow/infer", body))
    )
    thread.start()
    try:
        wait_for(lambda: inflight(server, "http") == 1, "the slow request counted in flight")
        assert inflight(server, "grpc") == 0
    finally:
        thread.join(30)
    [reply] = replies
    assert reply.status == 200, reply
    assert reply.json()["outputs"][0]["data"] == [200_000]
    assert inflight(server, "http") == 0
    assert "# TYPE turnout_inflight_requests gauge" in scrape(server).text
    assert_serving(server, repository)


def test_process_metrics(server: TurnoutProcess) -> None:
    after = scrape(server)
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds"):
        assert after.value(name) > 0, name


def test_metrics_content_type(server: TurnoutProcess) -> None:
    reply = request(server.http_url, "GET", "/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain")
