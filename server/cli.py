"""The ``turnout`` command line."""

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import uvloop

from turnout import __version__
from turnout.loadtests import loadtest
from turnout.server import drift_cli, routes_cli
from turnout.server.app import serve
from turnout.server.config import Config, ConfigError, ListenConfig, ServerConfig, load_config
from turnout.server.demo import write_demo
from turnout.server.repository_mode import config_from_repository

EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``turnout`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        status: int = args.command(args)
    except BrokenPipeError:
        # The reader went away (``| head``): stop writing, quietly.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - replaces stdout until exit
        return 0
    except ConfigError as error:
        print(f"turnout: invalid config {error.source}:", file=sys.stderr)
        for problem in error.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_USAGE
    return status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="turnout", description="A model-serving gateway.")
    parser.add_argument("--version", action="version", version=f"turnout {__version__}")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="write a runnable example into DIR")
    demo.add_argument("directory", type=Path, metavar="DIR")
    demo.set_defaults(command=_demo)

    serve = commands.add_parser("serve", help="serve models until SIGTERM/SIGINT")
    source = serve.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, metavar="FILE", help="a turnout.yaml")
    source.add_argument(
        "--model-repository",
        type=Path,
        metavar="DIR",
        help="serve DIR/<model>/<version>/model.onnx without a config file",
    )
    serve.add_argument("--http-port", type=int, metavar="N", help="overrides the config")
    serve.add_argument("--grpc-port", type=int, metavar="N", help="overrides the config")
    serve.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="where routes changed at run time, bandit statistics and the audit log are kept "
        "(default: the config's state_dir, else ./turnout-state)",
    )
    serve.add_argument(
        "--ready-file",
        type=Path,
        metavar="FILE",
        help="once models are loaded, write the bound ports here as JSON",
    )
    serve.set_defaults(command=_serve)
    routes_cli.add_commands(commands)
    drift_cli.add_commands(commands)
    loadtest.add_commands(commands)
    return parser


def _demo(args: argparse.Namespace) -> int:
    config = write_demo(args.directory)
    print(f"wrote the demo; serve it with: turnout serve --config {config}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    if args.config is not None:
        config = load_config(args.config)
    else:
        config = config_from_repository(args.model_repository, ServerConfig())
        config = config.model_copy(update={"model_root": args.model_repository.resolve()})
    config = _with_ports(config, args.http_port, args.grpc_port)
    if args.state_dir is not None:
        config = config.model_copy(update={"state_dir": args.state_dir.resolve()})
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(serve(config, args.ready_file))


def _with_ports(config: Config, http_port: int | None, grpc_port: int | None) -> Config:
    server = config.server
    for flag, port in (("--http-port", http_port), ("--grpc-port", grpc_port)):
        if port is not None and not 0 <= port <= 65535:
            raise ConfigError(flag, [f"{port} is not a port number (0 to 65535)"])
    if http_port is not None:
        server = server.model_copy(
            update={"http": ListenConfig(host=server.http.host, port=http_port)}
        )
    if grpc_port is not None:
        server = server.model_copy(
            update={"grpc": ListenConfig(host=server.grpc.host, port=grpc_port)}
        )
    return config.model_copy(update={"server": server})
