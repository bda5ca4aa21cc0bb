"""``edge-agent``: the command line (SPEC §2).

Every mistake a person can make ends in one line naming the thing and the fix, and an exit code:
0 fine, 1 runtime failure, 2 bad arguments or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .config import Config, load_config
from .errors import AgentError, ConfigError, Problem

log = logging.getLogger("agent")

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2
CONFIG_SEARCH = (Path("/etc/edge-agent/config.toml"), Path("config.toml"))


def default_config_path() -> Path:
    """``$EDGE_AGENT_CONFIG``, then /etc/edge-agent/config.toml, then ./config.toml."""
    if env := os.environ.get("EDGE_AGENT_CONFIG"):
        return Path(env)
    return next((p for p in CONFIG_SEARCH if p.exists()), CONFIG_SEARCH[-1])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="Poll field devices, buffer readings, forward them over MQTT.",
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("-c", "--config", type=Path, help="config file (default: see README)")
        return sub

    command("run", "run the agent in the foreground (systemd runs this)")
    command("check", "validate the configuration and print every problem")
    simulate = command("simulate", "serve every configured Modbus device as a simulated slave")
    simulate.add_argument(
        "--tcp", metavar="HOST:PORT", help="serve all devices on this address instead of each bus's"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``edge-agent`` command; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.command in ("run", "simulate"):
        # A SIGTERM while starting up is a clean stop too; the event loop installs its own handler.
        signal.signal(signal.SIGTERM, _interrupt)
    path: Path = args.config or default_config_path()
    if args.command == "check":
        return _check(path)
    config = _load(path)
    if config is None:
        return EXIT_INVALID
    _setup_logging(config.agent.log_level)
    try:
        if args.command == "run":
            from .app import run_until_signalled

            asyncio.run(run_until_signalled(config))
        elif args.command == "simulate":
            return _simulate(config, args.tcp)
    except KeyboardInterrupt:
        return EXIT_OK
    except AgentError as exc:
        log.error("%s", exc)
        return EXIT_FAILED
    return EXIT_OK


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _print_problems(problems: Sequence[Problem]) -> None:
    for problem in sorted(problems, key=lambda p: (p.file, p.line)):
        print(problem, file=sys.stderr)


def _load(path: Path) -> Config | None:
    try:
        config, warnings = load_config(path)
    except ConfigError as exc:
        _print_problems(exc.problems)
        print(f"{path}: invalid configuration; run `edge-agent check -c {path}`", file=sys.stderr)
        return None
    _print_problems(warnings)
    return config


def _check(path: Path) -> int:
    try:
        config, warnings = load_config(path)
    except ConfigError as exc:
        _print_problems(exc.problems)
        errors = sum(not p.warning for p in exc.problems)
        print(f"{path}: {errors} problem(s)", file=sys.stderr)
        return EXIT_INVALID
    _print_problems(warnings)
    points = sum(len(d.points) for d in config.devices)
    print(
        f"{path}: ok ({len(config.buses)} bus(es), {len(config.devices)} device(s), "
        f"{points} point(s), {len(warnings)} warning(s))"
    )
    return EXIT_OK


def _simulate(config: Config, tcp: str | None) -> int:
    from .simulate import serve_simulation

    return serve_simulation(config, tcp)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Library chatter is not the technician's business: pymodbus logs every failed connect and
    # every unanswered request (with a hex dump), which our transition logs say once instead.
    if level != "debug":
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
        logging.getLogger("aiomqtt").setLevel(logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
