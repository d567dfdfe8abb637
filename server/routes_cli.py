"""``turnout routes …``: read and change a running server's routes through its admin API."""

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from turnout.server.admin_auth import TOKEN_VARIABLE

DEFAULT_URL = "http://127.0.0.1:8000"
EXIT_REFUSED = 1


def add_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``routes`` and its subcommands to the CLI."""
    routes = commands.add_parser("routes", help="read and change a running server's routes")
    routes.add_argument("--url", default=DEFAULT_URL, help=f"the server (default {DEFAULT_URL})")
    routes.add_argument(
        "--token", help=f"the admin token (default: the {TOKEN_VARIABLE} environment variable)"
    )
    routes.set_defaults(command=run)
    actions = routes.add_subparsers(required=True, metavar="ACTION")
    actions.add_parser("list", help="every endpoint's route").set_defaults(action=_list)
    for name, handler, text in (
        ("get", _get, "an endpoint's route and live state"),
        ("promote", _promote, "send all traffic to the route's candidate"),
        ("rollback", _rollback, "undo the last change (or roll a rollout back)"),
        ("report", _report, "the A/B readout: traffic, errors, latency, rewards, verdicts"),
    ):
        parser = actions.add_parser(name, help=text)
        parser.add_argument("endpoint")
        parser.set_defaults(action=handler)
    change = actions.add_parser(
        "set",
        help="replace a route",
        description="Examples: set mlp canary 1=90 2=10 | set mlp blue_green live=1 staged=2 | "
        "set mlp bandit algorithm=thompson arms=1,2 | set mlp fixed version=2 | "
        'set mlp --json \'{"policy": "canary", "weights": {"1": 50, "2": 50}}\'',
    )
    change.add_argument("endpoint")
    change.add_argument(
        "policy", nargs="?", help="latest, fixed, canary, blue_green, bandit, rollout"
    )
    change.add_argument("fields", nargs="*", metavar="KEY=VALUE")
    change.add_argument("--json", help="the whole route as JSON instead")
    change.set_defaults(action=_set)
    audit = actions.add_parser("audit", help="the latest changes")
    audit.add_argument("--limit", type=int, default=50)
    audit.set_defaults(action=_audit)


def run(args: argparse.Namespace) -> int:
    """Carry out ``turnout routes ACTION``."""
    token = args.token or os.environ.get(TOKEN_VARIABLE)
    if not token:
        print(f"turnout routes: give --token or set {TOKEN_VARIABLE}", file=sys.stderr)
        return 2
    try:
        status: int = args.action(_Admin(args.url, token), args)
    except _Refused as refused:
        print(f"turnout routes: {refused}", file=sys.stderr)
        return EXIT_REFUSED
    return status


class _Refused(Exception):
    """The server said no (or could not be reached)."""


class _Admin:
    def __init__(self, url: str, token: str) -> None:
        self._url = url.rstrip("/")
        self._token = token

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 - the URL is the operator's own server
            self._url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:  # noqa: S310
                return json.load(reply)
        except urllib.error.HTTPError as error:
            try:
                message = json.load(error).get("error", error.reason)
            except ValueError:
                message = error.reason
            raise _Refused(f"{error.code}: {message}") from None
        except urllib.error.URLError as error:
            raise _Refused(f"cannot reach {self._url}: {error.reason}") from None


def _quote(endpoint: str) -> str:
    return urllib.parse.quote(endpoint, safe="")


def _show(document: Any) -> int:
    print(json.dumps(document, indent=2, sort_keys=True))
    return 0


def _list(admin: _Admin, args: argparse.Namespace) -> int:
    return _show(admin.call("GET", "/admin/routes"))


def _get(admin: _Admin, args: argparse.Namespace) -> int:
    return _show(admin.call("GET", f"/admin/routes/{_quote(args.endpoint)}"))


def _promote(admin: _Admin, args: argparse.Namespace) -> int:
    return _show(admin.call("POST", f"/admin/routes/{_quote(args.endpoint)}/promote"))


def _rollback(admin: _Admin, args: argparse.Namespace) -> int:
    return _show(admin.call("POST", f"/admin/routes/{_quote(args.endpoint)}/rollback"))


def _audit(admin: _Admin, args: argparse.Namespace) -> int:
    return _show(admin.call("GET", f"/admin/audit?limit={args.limit}"))


def _set(admin: _Admin, args: argparse.Namespace) -> int:
    if args.json is not None:
        try:
            route = json.loads(args.json)
        except ValueError as error:
            raise _Refused(f"--json is not valid JSON: {error}") from None
    elif args.policy is None:
        raise _Refused("give a policy (and its fields) or --json")
    else:
        route = _route_from_fields(args.policy, args.fields)
    return _show(admin.call("PUT", f"/admin/routes/{_quote(args.endpoint)}", route))


def _route_from_fields(policy: str, fields: list[str]) -> dict[str, Any]:
    route: dict[str, Any] = {"policy": policy}
    for field in fields:
        key, separator, value = field.partition("=")
        if not separator:
            raise _Refused(f"{field!r}: expected KEY=VALUE")
        if policy == "canary":
            route.setdefault("weights", {})[key] = _scalar(value)
        elif key in ("arms", "steps"):
            route[key] = [_scalar(item) for item in value.split(",")]
        else:
            route[key] = _scalar(value)
    return route


def _scalar(text: str) -> int | float | str:
    """A field's value as the JSON the admin API takes: a number when it reads as one."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def _report(admin: _Admin, args: argparse.Namespace) -> int:
    report = admin.call("GET", f"/admin/routes/{_quote(args.endpoint)}/report")
    print(f"endpoint {report['endpoint']}")
    print(f"{'version':>8} {'requests':>9} {'errors':>7} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'rewards':>8} {'mean':>7}  95% interval")  # fmt: skip
    for version, row in report["versions"].items():
        latency, rewards = row["latency_ms"], row["rewards"]
        interval = rewards["interval_95"]
        print(
            f"{version:>8} {row['requests']:>9} {row['errors']:>7} "
            f"{_number(latency['p50']):>8} {_number(latency['p99']):>8} "
            f"{rewards['count']:>8} {_number(rewards['mean']):>7}  "
            + (f"{interval[0]:.3f} .. {interval[1]:.3f}" if interval else "-")
        )
    for comparison in report["comparisons"]:
        first, second = comparison["versions"]
        print(f"\n{first} vs {second}")
        print(f"  rewards:    {comparison['reward']['verdict']}")
        print(f"  error rate: {comparison['error_rate']['verdict']}")
    return 0


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
