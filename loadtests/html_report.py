"""The load test's report (what ``report.json`` holds) as one self-contained HTML page: a verdict,
the run's figures, plots over time with the ops actions and phases marked, and the phases with
their assertions and the actions as tables.

Every string from the report is escaped: endpoint names, versions, error codes and messages come
from the network. The plots are PNGs inline as base64, drawn with matplotlib's Agg canvas on a
``Figure`` of their own (no pyplot, so no global backend or figure state is touched).
"""

import base64
import html
import io
import json
import math
from typing import Any

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; color: #222; max-width: 1200px; margin: 1em auto;
       padding: 0 1em; }
h1 { font-size: 1.4em; margin: 0.2em 0; } h2 { font-size: 1.15em; margin: 1.2em 0 0.4em; }
.verdict { display: inline-block; padding: 0.1em 0.6em; border-radius: 4px; color: #fff;
           font-weight: bold; margin-left: 0.4em; }
.verdict.pass { background: #2e7d32; } .verdict.fail { background: #c62828; }
.verdict.none { background: #757575; }
.meta { color: #555; margin: 0.2em 0; }
table { border-collapse: collapse; margin: 0.3em 0; }
th, td { border: 1px solid #ddd; padding: 0.2em 0.5em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.fail td, div.fail { background: #fdecea; } div.pass { background: #edf7ed; }
div.check { padding: 0 0.3em; white-space: nowrap; }
img { max-width: 100%; } .empty { color: #777; font-style: italic; }
code { font-size: 0.9em; }
"""

_LATENCY_SHOWN = (("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p999", "p99.9"))
_LATENCY_PLOTTED = ("p50", "p90", "p99", "max")
_NOTHING = "-"


def render(report: dict[str, Any]) -> str:
    """The HTML page of a load-test report; missing or empty fields are shown as such."""
    title = f"turnout loadtest: {report.get('target', '')}"
    body = "\n".join(
        [_header(report), _summary(report), _plots(report), _phases(report), _actions(report)]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def _header(report: dict[str, Any]) -> str:
    passed = report.get("passed")
    verdict, style = (
        ("PASS", "pass") if passed is True else ("FAIL", "fail") if passed is False
        else ("NO VERDICT", "none")
    )  # fmt: skip
    endpoints = ", ".join(str(name) for name in report.get("endpoints") or [])
    client = report.get("client") or {}
    facts = [
        ("target", report.get("target")),
        ("protocol", report.get("protocol")),
        ("endpoints", endpoints or None),
        ("mode", report.get("mode")),
        ("processes", report.get("processes")),
        ("started", report.get("started")),
        ("duration", f"{_number(report.get('duration_s'), '.1f')} s"),
        ("client CPU", f"{_number(client.get('cpu_seconds'), '.1f')} s"),
        ("client cores", _number(client.get("cores_used"), ".2f")),
    ]
    listed = " · ".join(
        f"{_e(name)} <b>{_e(_NOTHING if value is None else value)}</b>" for name, value in facts
    )
    return (
        f"<header><h1>{_e(report.get('tool', 'turnout loadtest'))}"
        f'<span class="verdict {style}">{verdict}</span></h1>'
        f'<p class="meta">{listed}</p></header>'
    )


def _summary(report: dict[str, Any]) -> str:
    latency = report.get("latency_ms") or {}
    rows = [
        ("requests", _number(report.get("requests"), "d")),
        ("throughput", f"{_number(report.get('throughput_rps'), '.1f')} req/s"),
        *((f"latency {label}", _ms(latency.get(key))) for key, label in _LATENCY_SHOWN),
        ("latency max", _ms(latency.get("max"))),
        ("latency mean", _ms(latency.get("mean"))),
        ("error rate", _percent(report.get("error_rate"))),
    ]
    cells = "".join(
        f'<tr><th>{_e(name)}</th><td class="n">{_e(value)}</td></tr>' for name, value in rows
    )
    cells += f"<tr><th>errors by code</th><td>{_counts(report.get('errors'))}</td></tr>"
    if report.get("rewards"):
        cells += f"<tr><th>rewards</th><td>{_counts(report['rewards'])}</td></tr>"
    cells += (
        "<tr><th>requests per version</th>"
        f"<td>{_versions(report.get('requests_per_version'))}</td></tr>"
    )
    return f"<h2>Summary</h2><table>{cells}</table>"


def _plots(report: dict[str, Any]) -> str:
    timeline = [second for second in report.get("timeline") or [] if _is_number(second.get("t"))]
    if not timeline:
        return '<h2>Over time</h2><p class="empty">no timeline recorded</p>'
    png = _timeline_png(report, timeline)
    return (
        '<h2>Over time</h2><img alt="latency, throughput and version shares per second" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
    )


def _phases(report: dict[str, Any]) -> str:
    phases = report.get("phases") or []
    if not phases:
        return '<h2>Phases</h2><p class="empty">no phases</p>'
    header = (
        "phase", "from s", "to s", "requests", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms",
        "error rate", "errors", "versions", "assertions",
    )  # fmt: skip
    rows = []
    for phase in phases:
        latency = phase.get("latency_ms") or {}
        checks = phase.get("assertions") or []
        failed = any(not check.get("passed") for check in checks)
        numbers = [
            _number(phase.get("requests"), "d"),
            _number(phase.get("throughput_rps"), ".1f"),
            *(_number(latency.get(key), ".3f") for key in ("p50", "p99", "p999", "max")),
            _percent(phase.get("error_rate")),
        ]
        rows.append(
            f"{_row_start(failed)}<td>{_e(phase.get('name', ''))}</td>"
            f'<td class="n">{_number(phase.get("start_s"), ".1f")}</td>'
            f'<td class="n">{_number(phase.get("end_s"), ".1f")}</td>'
            + "".join(f'<td class="n">{_e(value)}</td>' for value in numbers)
            + f"<td>{_counts(phase.get('errors'))}</td>"
            f"<td>{_versions(phase.get('requests_per_version'))}</td>"
            f"<td>{''.join(_check(check) for check in checks) or _NOTHING}</td></tr>"
        )
    head = "".join(f"<th>{_e(name)}</th>" for name in header)
    return f"<h2>Phases</h2><table><tr>{head}</tr>{''.join(rows)}</table>"


def _check(check: dict[str, Any]) -> str:
    passed = bool(check.get("passed"))
    value = check.get("value")
    shown = _NOTHING if value is None else value
    return (
        f'<div class="check {"pass" if passed else "fail"}">{"PASS" if passed else "FAIL"} '
        f"<code>{_e(check.get('check', ''))}</code> (value {_e(shown)})</div>"
    )


def _actions(report: dict[str, Any]) -> str:
    actions = report.get("actions") or []
    if not actions:
        return '<h2>Actions</h2><p class="empty">no actions</p>'
    header = ("#", "t s", "phase", "action", "endpoint", "detail", "result", "error")
    rows = []
    for number, action in enumerate(actions, start=1):
        ok = bool(action.get("ok"))
        status = action.get("status")
        result = f"{'ok' if ok else 'FAILED'}{'' if status is None else f' ({status})'}"
        detail = action.get("detail")
        cells = [
            _e(number),
            _e(_number(action.get("t"), ".1f")),
            _e(action.get("phase", "")),
            _e(action.get("action", "")),
            _e(action.get("endpoint", "")),
            f"<code>{_e(json.dumps(detail, sort_keys=True, default=str))}</code>" if detail else "",
            _e(result),
            _e(action.get("error") or ""),
        ]
        rows.append(_row_start(not ok) + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    head = "".join(f"<th>{_e(name)}</th>" for name in header)
    return f"<h2>Actions</h2><table><tr>{head}</tr>{''.join(rows)}</table>"


def _row_start(failed: bool) -> str:
    return '<tr class="fail">' if failed else "<tr>"


def _counts(counts: Any) -> str:
    """Error codes (or other names) with their counts, the largest first."""
    if not counts:
        return _NOTHING
    ordered = sorted(counts.items(), key=lambda item: (-item[1], str(item[0])))
    return "<br>".join(f"<code>{_e(name)}</code> {_e(count)}" for name, count in ordered)


def _versions(per_endpoint: Any) -> str:
    lines = []
    for endpoint, versions in (per_endpoint or {}).items():
        answered = sum(versions.values())
        split = ", ".join(
            f"v{_e(version)} {_e(count)} ({100 * count / answered if answered else 0:.1f} %)"
            for version, count in versions.items()
        )
        lines.append(f"<b>{_e(endpoint)}</b>: {split or _NOTHING}")
    return "<br>".join(lines) or _NOTHING


def _timeline_png(report: dict[str, Any], timeline: list[dict[str, Any]]) -> bytes:
    """Latency, throughput and each endpoint's version shares per second, one panel each, with
    the phases shaded and the actions drawn as numbered vertical lines (numbers as in the table)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 - slow import
    from matplotlib.figure import Figure  # noqa: PLC0415
    from matplotlib.ticker import LogFormatter  # noqa: PLC0415

    starts = [float(second["t"]) for second in timeline]
    duration: Any = report.get("duration_s")
    end = float(duration) if _is_number(duration) and duration > starts[-1] else starts[-1] + 1.0
    # each second is drawn as a flat step over [t, next t); the last step ends at the run's end
    edges = [*starts, end]
    answered = [second.get("requests", 0) > 0 for second in timeline]
    endpoints = sorted(
        {key.rpartition("/")[0] for second in timeline for key in second.get("versions") or {}}
    )

    figure = Figure(figsize=(11, 2.4 * (2 + len(endpoints)) + 0.8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2 + len(endpoints), 1, sharex=True, squeeze=False)[:, 0]

    latency_axes = axes[0]
    positive = False
    for key in _LATENCY_PLOTTED:
        values = [
            float((second.get("latency_ms") or {}).get(key, math.nan)) if seen else math.nan
            for second, seen in zip(timeline, answered, strict=True)
        ]
        latency_axes.plot(edges, [*values, values[-1]], drawstyle="steps-post", label=key)
        positive = positive or any(value > 0 for value in values)
    if positive:  # a log scale with nothing positive to show only warns
        latency_axes.set_yscale("log")
        # plain numbers (2, 5, 10) rather than the default 2x10^0
        latency_axes.yaxis.set_major_formatter(LogFormatter())
        latency_axes.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))
    latency_axes.set_ylabel("latency ms")
    latency_axes.legend(loc="upper left", fontsize=8, ncol=len(_LATENCY_PLOTTED))

    throughput_axes = axes[1]
    rates = [float(second.get("rps", second.get("requests", 0))) for second in timeline]
    lines = throughput_axes.plot(edges, [*rates, rates[-1]], drawstyle="steps-post", label="req/s")
    throughput_axes.set_ylabel("req/s")
    throughput_axes.set_ylim(bottom=0)
    errors = [float(second.get("errors", 0)) for second in timeline]
    if any(errors):  # on an axis of their own: a few errors would be flat against thousands req/s
        error_axes = throughput_axes.twinx()
        lines += error_axes.plot(
            edges, [*errors, errors[-1]], drawstyle="steps-post", color="tab:red", label="errors/s"
        )
        error_axes.set_ylabel("errors/s", color="tab:red")
        error_axes.set_ylim(bottom=0)
    throughput_axes.legend(handles=lines, loc="upper left", fontsize=8)

    for endpoint, share_axes in zip(endpoints, axes[2:], strict=True):
        _draw_shares(share_axes, endpoint, timeline, edges)

    for panel in axes:
        _mark_phases_and_actions(panel, report, end, labelled=panel is axes[0])
    axes[-1].set_xlim(0.0, end)
    axes[-1].set_xlabel("seconds since start")
    buffer = io.BytesIO()
    # no Software chunk: it would carry matplotlib's URL into a page meant to hold none
    figure.savefig(buffer, format="png", dpi=90, metadata={"Software": None})
    return buffer.getvalue()


def _draw_shares(
    share_axes: Any, endpoint: str, timeline: list[dict[str, Any]], edges: list[float]
) -> None:
    """One endpoint's answers per version, stacked as percentages of its answers each second."""
    counts: list[dict[str, int]] = []  # per second: version -> answers
    for second in timeline:
        mine = {}
        for key, count in (second.get("versions") or {}).items():
            named, _, version = key.rpartition("/")  # "endpoint/version"
            if named == endpoint:
                mine[version] = count
        counts.append(mine)
    versions = sorted({version for second in counts for version in second}, key=_version_order)
    totals = [sum(second.values()) for second in counts]
    shares = []
    for version in versions:
        row = [
            100 * second.get(version, 0) / total if total else 0.0
            for second, total in zip(counts, totals, strict=True)
        ]
        shares.append([*row, row[-1]])
    share_axes.stackplot(
        edges, shares, labels=[_plain(f"v{version}") for version in versions], step="post"
    )
    share_axes.set_ylim(0, 100)
    share_axes.set_ylabel(_plain(f"{endpoint} %"))
    share_axes.legend(loc="upper left", fontsize=8, ncol=min(len(versions), 8))


def _mark_phases_and_actions(
    panel: Any, report: dict[str, Any], end: float, *, labelled: bool
) -> None:
    """Shade every other phase and draw each action up to ``end``; name them on the top panel
    only. (A label beyond ``end`` would squeeze the panels to make room for it.)"""
    phases = [
        phase
        for phase in report.get("phases") or []
        if _is_number(phase.get("start_s"))
        and _is_number(phase.get("end_s"))
        and phase["start_s"] < end
    ]
    for index, phase in enumerate(phases):
        start, end = float(phase["start_s"]), float(phase["end_s"])
        if index % 2:
            panel.axvspan(start, end, color="0.5", alpha=0.12, linewidth=0)
        if index:
            panel.axvline(start, color="0.4", linewidth=0.8)
        if labelled and len(phases) > 1:
            name = _plain(str(phase.get("name", "")))
            panel.text(
                start,
                1.01,
                name,
                transform=panel.get_xaxis_transform(),
                fontsize=8,
                style="italic",
                va="bottom",
            )
    for number, action in enumerate(report.get("actions") or [], start=1):
        if not (_is_number(action.get("t")) and 0 <= action["t"] <= end):
            continue
        color = "tab:purple" if action.get("ok") else "tab:red"
        panel.axvline(float(action["t"]), color=color, linestyle="--", linewidth=1)
        if labelled:
            failed = "" if action.get("ok") else " (failed)"
            label = f"#{number} {action.get('action', '')} {action.get('endpoint', '')}{failed}"
            panel.text(
                float(action["t"]),
                0.98,
                _plain(label),
                transform=panel.get_xaxis_transform(),
                rotation=90,
                fontsize=7,
                color=color,
                ha="right",
                va="top",
            )


def _version_order(version: str) -> tuple[bool, int, str]:
    """Numbered versions in numeric order (2 before 10), then any others by name."""
    return (not version.isdigit(), int(version) if version.isdigit() else 0, version)


def _plain(text: str) -> str:
    """Text matplotlib shows as it is: an unescaped ``$`` would start mathtext."""
    return text.replace("$", r"\$")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _number(value: Any, spec: str) -> str:
    if not _is_number(value):
        return _NOTHING
    return format(int(value) if spec == "d" else value, spec)


def _ms(value: Any) -> str:
    return f"{_number(value, '.3f')} ms"


def _percent(rate: Any) -> str:
    return f"{_number(100 * rate, '.3f')} %" if _is_number(rate) else _NOTHING


def _e(value: Any) -> str:
    return html.escape(str(value))
