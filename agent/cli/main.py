"""``edge-agent``: the command line (README.md, "Command line").

Every mistake a person can make ends in one line naming the thing and the fix, and an exit code:
0 fine, 1 runtime failure, 2 bad arguments or configuration, or a buffer written by a newer
edge-agent (a downgrade): what only a person can fix, so systemd does not restart on it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from ..config import Config, builtin_templates, load_config
from ..config.push import finish_interrupted
from ..errors import AgentError, ConfigError, DeviceError, Problem
from ..service.logs import setup_logging
from ..store.formats import NewerFormat
from . import tools

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
    check = command("check", "validate the configuration and print every problem")
    check.add_argument("--plan", action="store_true", help="also print each device's requests")
    read = command("read", "poll one device now and print what it read")
    read.add_argument("device")
    read.add_argument("points", nargs="*", metavar="POINT", help="only these points")
    read.add_argument("--json", action="store_true", help="print JSON instead of a table")
    scan = command("scan", "probe a bus for the devices that answer, in its driver's terms")
    scan.add_argument("bus")
    scan.add_argument(
        "--units",
        default=None,
        help="what to try, in the bus driver's terms: Modbus ids (default 1-247), SDI-12 "
        "addresses (default all), DL/T 645 or IEC 62056-21 meter addresses",
    )
    scan.add_argument(
        "--driver",
        default=None,
        help="the driver to scan with, on a serial bus without devices yet (sdi12, dlt645, "
        "iec62056)",
    )
    simulate = command(
        "simulate", "serve the configured devices as simulated ones (Modbus slaves, SDI-12 sensors)"
    )
    where = simulate.add_mutually_exclusive_group()
    where.add_argument(
        "--tcp", metavar="HOST:PORT", help="serve the buses on HOST:PORT, PORT+1, … instead"
    )
    where.add_argument(
        "--pty", action="store_true", help="serve each bus on a pseudo-terminal (prints its path)"
    )
    write = command("write", "set a writable point now, with a command's checks, and read it back")
    write.add_argument("device")
    write.add_argument("point")
    write.add_argument("value", help="true/false, a number, or text")
    status = command("status", "ask the running agent for its links, devices and buffer")
    status.add_argument("--json", action="store_true", help="print JSON instead of a summary")
    buffer = command("buffer", "inspect or empty the local buffer")
    buffer.add_argument("action", choices=("stats", "export", "purge"))
    templates = command("templates", "list the device templates, or show one")
    templates.add_argument("name", nargs="?")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``edge-agent`` command; returns the exit code."""
    args = _parser().parse_args(argv)
    # Readings, the buffer, the status socket: the agent's alone, also outside systemd's UMask=.
    os.umask(os.umask(0o077) | 0o077)
    if args.command in ("run", "simulate"):
        # A SIGTERM while starting up is a clean stop too; the event loop installs its own handler.
        signal.signal(signal.SIGTERM, _interrupt)
    hangups: list[int] = []
    if args.command == "run":
        # A SIGHUP while starting up (Python's default would end the process) is a reload asked
        # for: noted here, done once the agent runs.
        signal.signal(signal.SIGHUP, lambda signum, frame: hangups.append(signum))
    path: Path = args.config or default_config_path()
    if args.command == "check":
        return _check(path, args.plan)
    if args.command == "templates":
        return _templates(path, args.name)
    if args.command == "run" and not _finish_push(path):
        return EXIT_FAILED
    config = _load(path)
    if config is None:
        return EXIT_INVALID
    setup_logging(config.agent.log_level)
    try:
        return _dispatch(args, config, hangups)
    except KeyboardInterrupt:
        return EXIT_OK
    except tools.UsageError as exc:
        print(f"edge-agent {args.command}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except NewerFormat as exc:  # restarting cannot help: the newer version, or a person, can
        log.error("%s", exc)
        return EXIT_INVALID
    except AgentError as exc:
        log.error("%s", exc)
        return EXIT_FAILED


def _dispatch(args: argparse.Namespace, config: Config, hangups: Sequence[int] = ()) -> int:
    if args.command == "run":
        from ..service.app import run_until_signalled

        asyncio.run(run_until_signalled(config, hangups))
    elif args.command == "read":
        device = tools.find_device(config, args.device)
        try:
            poll, show = asyncio.run(tools.read_device(config, args.device, args.points))
        except DeviceError as exc:
            print(f"edge-agent read: {exc}", file=sys.stderr)
            for frame in exc.frames:  # what the slave really sent
                print(f"  frame: {frame}", file=sys.stderr)
            return EXIT_FAILED
        tools.print_poll(device, poll, args.points, args.json, show=show)
        return EXIT_FAILED if poll.errors else EXIT_OK
    elif args.command == "write":
        return _write(config, args.device, args.point, args.value)
    elif args.command == "status":
        from ..service.status import status_command

        return status_command(config.agent.data_dir, args.json, sys.stdout)
    elif args.command == "buffer":
        return tools.buffer_command(config, args.action)
    elif args.command == "scan":
        from .scan import scan_command

        asyncio.run(scan_command(config, tools.find_bus(config, args.bus), args.units, args.driver))
    elif args.command == "simulate":
        from .simulate import serve_simulation

        return serve_simulation(config, args.tcp, args.pty)
    return EXIT_OK


def _write(config: Config, device: str, point: str, text: str) -> int:
    from ..uplink.commands import CommandRefused, value_from_text, write_now

    try:
        value = asyncio.run(write_now(config, device, point, value_from_text(text)))
    except (CommandRefused, DeviceError) as exc:
        print(f"edge-agent write: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{device}.{point} = {json.dumps(value)} (read back)")
    return EXIT_OK


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _print_problems(problems: Sequence[Problem]) -> None:
    for problem in sorted(problems, key=lambda p: (p.file, p.line)):
        print(problem, file=sys.stderr)


def _finish_push(path: Path) -> bool:
    """A pushed configuration that a stop interrupted is written whole (or its rollback is)
    before it is read: the files are all old or all new. False when that cannot be done."""
    try:
        said = finish_interrupted(path)
    except (OSError, ValueError) as exc:
        print(
            f"edge-agent run: a pushed configuration could not be finished: {exc}", file=sys.stderr
        )
        return False
    if said is not None:
        print(f"edge-agent run: {said}", file=sys.stderr)
    return True


def _load(path: Path) -> Config | None:
    try:
        config, warnings = load_config(path)
    except ConfigError as exc:
        _print_problems(exc.problems)
        print(f"{path}: invalid configuration; run `edge-agent check -c {path}`", file=sys.stderr)
        return None
    _print_problems(warnings)
    return config


def _check(path: Path, plan: bool) -> int:
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
    if plan:
        print("\n".join(tools.plan_lines(config)))
    return EXIT_OK


def _templates(path: Path, name: str | None) -> int:
    """Built-in templates, and the user's when the configuration can be read."""
    try:
        templates = load_config(path)[0].templates if path.exists() else builtin_templates()
    except ConfigError:
        print(f"{path} is invalid: showing the built-in templates only", file=sys.stderr)
        templates = tuple(builtin_templates())
    if name is None:
        print("\n".join(tools.template_lines(templates)))
        return EXIT_OK
    try:
        print("\n".join(tools.template_detail(tools.find_template(templates, name))))
    except tools.UsageError as exc:
        print(f"edge-agent templates: {exc}", file=sys.stderr)
        return EXIT_INVALID
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
