"""``turnout drift report``: the latest drift status per endpoint, version and feature, read from
a sink, and optionally a plot of each statistic over time with its thresholds."""

import argparse
import sys
from pathlib import Path

from turnout.monitoring.records import DEFAULT_BOUNDS, STATUS_FEATURE, DriftRecord
from turnout.monitoring.report import UnreadableSink, latest, read_records

SHOWN = ("psi", "ks_pvalue", "chi2_pvalue", "out_of_range_rate")
PLOTTED = ("psi", "ks_pvalue", "chi2_pvalue", "js_distance", "wasserstein", "out_of_range_rate")
PLOTTED_FEATURES = 8


def add_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``drift report`` to the CLI."""
    drift = commands.add_parser("drift", help="read drift monitoring records")
    actions = drift.add_subparsers(required=True, metavar="ACTION")
    report = actions.add_parser("report", help="latest status per feature, and a plot")
    report.add_argument("--sink", type=Path, required=True, help="a drift .jsonl file or .db")
    report.add_argument("--endpoint", help="only this endpoint")
    report.add_argument("--plot", type=Path, metavar="FILE.png", help="also draw the history")
    report.set_defaults(command=run)


def run(args: argparse.Namespace) -> int:
    """Print the report (and draw the plot)."""
    try:
        records = read_records(args.sink, args.endpoint)
    except UnreadableSink as error:
        print(f"turnout drift: {error}", file=sys.stderr)
        return 1
    if not records:
        print("no drift records yet")
        return 0
    _print_table(records)
    if args.plot is not None:
        try:
            _plot(records, args.plot)
        except OSError as error:
            print(f"turnout drift: cannot write {args.plot}: {error.strerror}", file=sys.stderr)
            return 1
        print(f"\nplot written to {args.plot}")
    return 0


def _print_table(records: list[DriftRecord]) -> None:
    rows = latest(records)
    print(f"{'endpoint':<16} {'version':>7} {'feature':<16} {'status':<6} {'window':>7}  "
          + "  ".join(f"{name:>17}" for name in SHOWN))  # fmt: skip
    ordered = sorted(rows, key=lambda key: (key[0], int(key[1]), key[2] != STATUS_FEATURE, key[2]))
    for endpoint, version, feature in ordered:
        statistics = rows[(endpoint, version, feature)]
        status = statistics.get("status")
        cells = [
            f"{statistics[name].value:>17.4g}" if name in statistics else f"{'-':>17}"
            for name in SHOWN
        ]
        print(
            f"{endpoint:<16} {version:>7} {feature:<16} {status.status if status else '-':<6} "
            f"{status.window_samples if status else 0:>7}  " + "  ".join(cells)
        )


def _plot(records: list[DriftRecord], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - only when a plot is asked for; it is slow to import

    matplotlib.use("Agg")
    from matplotlib import pyplot  # noqa: PLC0415

    statistics = [name for name in PLOTTED if any(r.statistic == name for r in records)]
    versions = sorted({(r.endpoint, r.version) for r in records})
    figure, axes = pyplot.subplots(
        len(statistics), len(versions), figsize=(6 * len(versions), 3 * len(statistics)),
        squeeze=False,
    )  # fmt: skip
    for column, (endpoint, version) in enumerate(versions):
        mine = [r for r in records if (r.endpoint, r.version) == (endpoint, version)]
        features = _worst_features(mine)
        for row, statistic in enumerate(statistics):
            axis = axes[row][column]
            start = min(r.time for r in mine)
            for feature in features:
                points = [r for r in mine if r.feature == feature and r.statistic == statistic]
                if points:
                    axis.plot([(p.time - start) / 60 for p in points], [p.value for p in points],
                              marker=".", label=feature)  # fmt: skip
            bound = DEFAULT_BOUNDS.get(statistic)
            for level, colour in (("warn", "orange"), ("alert", "red")):
                limit = getattr(bound, level) if bound else None
                if limit is not None:
                    axis.axhline(limit, color=colour, linestyle="--", linewidth=1, label=level)
            axis.set_title(f"{endpoint} v{version}: {statistic}", fontsize=9)
            axis.set_xlabel("minutes")
            axis.legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def _worst_features(records: list[DriftRecord]) -> list[str]:
    """The features that reached the worst statuses, most worrying first."""
    level: dict[str, float] = {}
    for record in records:
        if record.statistic == "status" and record.feature != STATUS_FEATURE:
            level[record.feature] = max(level.get(record.feature, 0.0), record.value)
    return sorted(level, key=lambda feature: -level[feature])[:PLOTTED_FEATURES]
