"""The HTML report (loadtests/html_report.py): a realistic report and degenerate ones render as one
self-contained page holding the figures, the actions and the failed assertions, with every string
from the report escaped and the plots as valid inline PNGs."""

import base64
import copy
import re
from typing import Any

import numpy as np
import pytest

from turnout.loadtests.html_report import render

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HOSTILE = "<script>alert(1)</script>"


def _second(t: int, rng: np.random.Generator, canary_share: float) -> dict[str, Any]:
    requests = int(rng.integers(380, 420))
    canary = int(requests * canary_share)
    p50 = float(rng.uniform(1.0, 1.4))
    return {
        "t": float(t),
        "requests": requests,
        "rps": float(requests),
        "errors": 3 if t == 17 else 0,
        "latency_ms": {"p50": p50, "p90": p50 * 1.6, "p99": p50 * 3.5, "max": p50 * 6},
        "versions": {"mlp/1": requests - canary, "mlp/2": canary},
    }


def _realistic_report() -> dict[str, Any]:
    rng = np.random.default_rng(1)
    timeline = [_second(t, rng, 0.0 if t < 10 else 0.5) for t in range(30)]
    timeline[25]["requests"] = 0  # a stalled second: no latency to show
    phase_figures = {
        "requests": 6000,
        "throughput_rps": 400.0,
        "latency_ms": {"p50": 1.2, "p90": 2.0, "p99": 4.5, "p999": 9.1, "max": 20.3, "mean": 1.4},
        "errors": {},
        "error_rate": 0.0,
        "requests_per_version": {"mlp": {"1": 4500, "2": 1500}},
    }
    return {
        "tool": "turnout loadtest",
        "started": "2026-11-27T21:00:00+00:00",
        "target": "grpc://127.0.0.1:8001",
        "protocol": "grpc",
        "endpoints": ["mlp"],
        "mode": "scenario",
        "processes": 2,
        "duration_s": 30.1,
        "requests": 12000,
        "throughput_rps": 398.7,
        "latency_ms": {"p50": 1.2, "p90": 2.0, "p99": 4.5, "p999": 9.1, "max": 20.3, "mean": 1.4},
        "errors": {"UNAVAILABLE": 3, "503": 2},
        "error_rate": 0.0004,
        "requests_per_version": {"mlp": {"1": 9000, "2": 3000}},
        "timeline": timeline,
        "actions": [
            {
                "t": 10.0,
                "phase": "canary",
                "action": "set_weights",
                "endpoint": "mlp",
                "detail": {"weights": {"1": 50, "2": 50}},
                "ok": True,
                "status": 200,
                "error": None,
            },
            {
                "t": 20.0,
                "phase": "canary",
                "action": "promote",
                "endpoint": "mlp",
                "detail": {"version": "3"},
                "ok": False,
                "status": 404,
                "error": "version 3 of mlp is not loaded",
            },
        ],
        "phases": [
            {
                "name": "baseline",
                "start_s": 0.0,
                "end_s": 10.0,
                **phase_figures,
                "assertions": [{"check": "p99_ms < 50", "value": 4.5, "passed": True}],
            },
            {
                "name": "canary",
                "start_s": 10.0,
                "end_s": 30.0,
                **phase_figures,
                "errors": {"UNAVAILABLE": 3},
                "error_rate": 0.0005,
                "assertions": [{"check": "error_rate < 0.0001", "value": 0.0005, "passed": False}],
            },
        ],
        "passed": False,
        "client": {"cpu_seconds": 12.3, "cores_used": 0.41},
    }


def _images(page: str) -> list[bytes]:
    sources = re.findall(r'src="([^"]*)"', page)
    prefix = "data:image/png;base64,"
    assert all(source.startswith(prefix) for source in sources), "only inline PNGs"
    return [base64.b64decode(source.removeprefix(prefix), validate=True) for source in sources]


def _assert_one_self_contained_document(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<html") == page.count("</html>") == 1
    assert "http://" not in page
    assert "https://" not in page
    assert "<script" not in page


def test_realistic_report() -> None:
    page = render(_realistic_report())
    _assert_one_self_contained_document(page)
    for figure in ("grpc://127.0.0.1:8001", "398.7 req/s", "1.200 ms", "4.500 ms", "9.100 ms",
                   "20.300 ms", "0.040 %", "UNAVAILABLE", "9000 (75.0 %)", "FAIL"):  # fmt: skip
        assert figure in page, figure
    assert "set_weights" in page
    assert "version 3 of mlp is not loaded" in page
    assert re.search(r'class="check fail">FAIL <code>error_rate &lt; 0.0001</code>', page)
    assert re.search(r'class="check pass">PASS <code>p99_ms &lt; 50</code>', page)
    images = _images(page)
    assert len(images) == 1
    assert all(image.startswith(PNG_SIGNATURE) for image in images)


def test_passing_report_says_pass() -> None:
    report = _realistic_report()
    report["passed"] = True
    assert '<span class="verdict pass">PASS</span>' in render(report)


@pytest.mark.parametrize(
    "report",
    [
        {},
        {"tool": "turnout loadtest", "target": "grpc://127.0.0.1:8001", "duration_s": 0.0,
         "requests": 0, "throughput_rps": 0.0, "latency_ms": dict.fromkeys(
             ("p50", "p90", "p99", "p999", "max", "mean"), 0.0),
         "errors": {}, "error_rate": 0.0, "requests_per_version": {}, "timeline": [],
         "actions": [], "phases": [], "passed": True, "client": {}},
        {"target": "grpc://127.0.0.1:8001", "duration_s": 1.0, "requests": 0,
         "timeline": [{"t": 0.0, "requests": 0, "rps": 0.0, "errors": 0,
                       "latency_ms": {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0},
                       "versions": {}}],
         "phases": [{"name": "only", "start_s": 0.0, "end_s": 1.0, "assertions": []}]},
    ],
    ids=["empty", "zero-requests", "one-second"],
)  # fmt: skip
def test_degenerate_reports_render(report: dict[str, Any]) -> None:
    page = render(report)
    _assert_one_self_contained_document(page)
    assert all(image.startswith(PNG_SIGNATURE) for image in _images(page))


def test_one_second_with_traffic_plots() -> None:
    report = _realistic_report()
    report["timeline"] = report["timeline"][:1]
    report["duration_s"] = 1.0
    report["actions"] = []
    images = _images(render(report))
    assert len(images) == 1
    assert images[0].startswith(PNG_SIGNATURE)


def test_strings_from_the_report_are_escaped() -> None:
    report = copy.deepcopy(_realistic_report())
    report["target"] = f"http://{HOSTILE}:8000"
    report["endpoints"] = [HOSTILE]
    report["errors"] = {HOSTILE: 1}
    report["requests_per_version"] = {HOSTILE: {HOSTILE: 5}}
    for second in report["timeline"]:
        second["versions"] = {f"{HOSTILE}/$1$": 1, f"{HOSTILE}/2": 1}  # $ would start mathtext
    report["actions"][1].update(endpoint=HOSTILE, error=HOSTILE, detail={HOSTILE: HOSTILE})
    report["phases"][1].update(name=HOSTILE)
    report["phases"][1]["assertions"][0]["check"] = HOSTILE
    page = render(report)
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # the http:// target is shown as text, but nothing is loaded from anywhere
    assert "href=" not in page
    assert all(image.startswith(PNG_SIGNATURE) for image in _images(page))
