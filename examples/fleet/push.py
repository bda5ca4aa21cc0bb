"""Push one configuration to edge-agent gateways over MQTT and say how each one took it.

    python push.py --broker mqtt://broker.lan:1883 config.toml --include conf.d/pumps.toml gw-1 gw-2

The protocol is docs/remote.md ("Pushing a configuration"). Exit status: 0 when every gateway
confirmed the push (or runs it already), 1 otherwise, 2 for a mistake in the command line.
Needs paho-mqtt 2.x and a broker that speaks MQTT 5.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple, NoReturn
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

FINAL = ("confirmed", "unchanged", "refused", "rolled_back", "superseded")
OK = ("confirmed", "unchanged")
CONNECT_TIMEOUT = 15.0
TIMEOUT_HELP = "how long to wait for the answers (default 180: above confirm_within)"
INCLUDE_HELP = "an included file, relative to CONFIG's folder (one --include per file)"


class UsageError(Exception):
    """A mistake in the command line or its files: said in one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


class Broker(NamedTuple):
    url: str  # as given, without user info: safe to print
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(prog="push.py", description="Push a configuration to edge-agent gateways.")
    p.add_argument("--broker", required=True, metavar="URL", help="mqtt[s]://HOST[:PORT]")
    p.add_argument("--username", metavar="USER")
    p.add_argument("--password-file", type=Path, metavar="FILE", help="holds the password")
    p.add_argument("--prefix", default="edge", help="the gateways' [mqtt] topic_prefix")
    p.add_argument("--timeout", type=float, default=180.0, metavar="SECONDS", help=TIMEOUT_HELP)
    p.add_argument("--id", help="the push's id (default: push-<UTC time>-<random>)")
    p.add_argument("--ttl", type=int, metavar="SECONDS", help="how old it may be on arrival")
    p.add_argument(
        "--remote-off", action="store_true", help="allow one that turns [remote] config off"
    )
    p.add_argument("--include", action="append", default=[], metavar="PATH", help=INCLUDE_HELP)
    p.add_argument("config", type=Path, metavar="CONFIG.toml")
    p.add_argument("gateways", nargs="+", metavar="GATEWAY_ID")
    args = p.parse_args(argv)
    if not 0 < args.timeout < 86400 or (args.ttl is not None and args.ttl <= 0):
        p.error("--timeout (below a day) and --ttl must be above 0")
    if bad := [gw for gw in args.gateways if not gw or any(c in gw for c in "/+#")]:
        p.error(f"gateway id {bad[0]!r} cannot be one level of a topic")
    if not args.prefix or "+" in args.prefix or "#" in args.prefix:
        p.error("--prefix must be a topic without wildcards")
    if args.id is not None and not 1 <= len(args.id) <= 128:
        p.error("--id must have 1 to 128 characters")
    return args


def broker_of(args: argparse.Namespace) -> Broker:
    try:
        parts = urlsplit(args.broker)
        port = parts.port
    except ValueError:
        raise UsageError("--broker is not a valid URL: write mqtt://HOST:PORT") from None
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise UsageError("--broker must look like mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    if parts.username is not None:  # a URL shows in `ps` and in the shell's history
        raise UsageError("--broker: give the user with --username, the password in a file")
    if args.password_file is not None and args.username is None:
        raise UsageError("--password-file needs --username")
    password = None
    if args.password_file is not None:
        password = read_text(args.password_file).strip()  # stripped, as the agent reads one
        if not password:
            raise UsageError(f"{args.password_file} is empty")
    tls = parts.scheme == "mqtts"
    port = port or (8883 if tls else 1883)
    return Broker(args.broker, parts.hostname, port, tls, args.username, password)


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise UsageError(f"{path}: cannot be read: {why}") from None


def include_problem(name: str) -> str | None:
    """The gateway's own rule for a pushed file's name, said here before anything is sent."""
    if name.startswith("/") or "\\" in name:
        return "must be a path relative to CONFIG's folder, with / between folders"
    if any(part in ("", ".", "..") or part.startswith(".") for part in name.split("/")):
        return "must stay below CONFIG's folder (no '..', '.', hidden or empty parts)"
    return None if name.endswith(".toml") else "must be a .toml file"


def build_push(args: argparse.Namespace, push_id: str) -> dict[str, Any]:
    """The payload without its ``ts``, which is stamped as each copy is sent."""
    push: dict[str, Any] = {"id": push_id, "config": read_text(args.config)}
    files = {}
    for given in args.include:
        name = given.removeprefix("./")  # as shell completion writes it
        if problem := include_problem(name):
            raise UsageError(f"--include {given}: {problem}")
        files[name] = read_text(args.config.parent / name)
    optional = {"files": files, "ttl": args.ttl, "remote_off": args.remote_off}
    return push | {key: value for key, value in optional.items() if value}


def expiry(packet: int, seconds: int) -> Properties:
    props = Properties(packet)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = seconds
    return props


class Fleet:
    """One MQTT 5 client for the run. paho's network thread runs the callbacks, which record
    what arrives under ``changed``; the main thread waits on it. The main thread never calls
    paho while it holds ``changed``: the two threads never take the locks in opposite orders."""

    def __init__(self, prefix: str, gateways: list[str], push_id: str) -> None:
        self.prefix, self.gateways, self.push_id = prefix, gateways, push_id
        self.replies = {f"{prefix}/{gw}/config/reply": gw for gw in gateways}
        self.statuses = {f"{prefix}/{gw}/status": gw for gw in gateways}
        self.changed = threading.Condition()
        self.connack: ReasonCode | None = None
        self.refused = False
        self.suback: list[ReasonCode] | None = None
        self.answers: dict[str, dict[str, Any]] = {}
        self.status: dict[str, str] = {}
        client_id = f"fleet-push-{secrets.token_hex(4)}"
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id, protocol=mqtt.MQTTv5)
        self.client.on_connect, self.client.on_subscribe = self._on_connect, self._on_subscribe
        self.client.on_message = self._on_message

    def connect(self, broker: Broker, timeout: float) -> None:
        """Connected and subscribed (before anything is sent), or ``ConnectionError``."""
        if broker.tls:
            self.client.tls_set()  # the system's certificate authorities
        if broker.username is not None:
            self.client.username_pw_set(broker.username, broker.password)
        # A session that outlives a dropped connection: the broker keeps the replies for us.
        props = expiry(PacketTypes.CONNECT, int(timeout) + 60)
        try:
            self.client.connect(broker.host, broker.port, keepalive=30, properties=props)
        except OSError as exc:
            raise ConnectionError(f"cannot connect to {broker.url}: {exc}") from None
        self.client.loop_start()  # paho reconnects by itself from here on
        if not self.wait(lambda: self.suback is not None or self.refused, CONNECT_TIMEOUT):
            raise ConnectionError(f"{broker.url} did not answer within {CONNECT_TIMEOUT:g} s")
        if self.refused:
            raise ConnectionError(f"{broker.url} refused the connection: {self.connack}")
        if denied := [str(rc) for rc in self.suback or [] if rc.is_failure]:  # an ACL
            raise ConnectionError(f"{broker.url} refused the subscriptions: {denied[0]}")

    def push(self, payload: dict[str, Any]) -> None:
        for gw in self.gateways:
            body = json.dumps({**payload, "ts": int(time.time() * 1000)})
            self.client.publish(f"{self.prefix}/{gw}/config/set", body, qos=1)

    def wait(self, done: Callable[[], bool], timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(done, timeout)

    def all_answered(self) -> bool:
        return all(gw in self.answers for gw in self.gateways)

    def close(self) -> None:
        # Expiry 0: the broker forgets our session now, not when it would have expired.
        self.client.disconnect(properties=expiry(PacketTypes.DISCONNECT, 0))
        self.client.loop_stop()

    def _on_connect(
        self, c: mqtt.Client, _: Any, f: mqtt.ConnectFlags, rc: ReasonCode, *p: Any
    ) -> None:
        with self.changed:
            self.connack, self.refused = rc, rc.is_failure
            self.changed.notify_all()
        if not rc.is_failure and not f.session_present:  # a kept session keeps its topics
            c.subscribe([(topic, 1) for topic in [*self.replies, *self.statuses]])

    def _on_subscribe(
        self, c: mqtt.Client, _: Any, mid: int, rcs: list[ReasonCode], *p: Any
    ) -> None:
        with self.changed:
            self.suback = rcs
            self.changed.notify_all()

    def _on_message(self, c: mqtt.Client, _: Any, message: mqtt.MQTTMessage) -> None:
        try:
            data = json.loads(message.payload)
        except ValueError:
            return  # not a gateway's: nothing to say about it
        if not isinstance(data, dict):
            return
        with self.changed:
            if gw := self.statuses.get(message.topic):
                self.status[gw] = str(data.get("state"))
            gw = self.replies.get(message.topic)
            # Only this push's final answer counts: an earlier push's replies are not ours.
            if gw and data.get("id") == self.push_id and data.get("state") in FINAL:
                self.answers.setdefault(gw, data)
            self.changed.notify_all()


def one_line(value: object) -> str:  # a gateway's text: one line each, whatever it holds
    return " ".join(str(value).split())


def report(gw: str, fleet: Fleet, timeout: float) -> list[str]:
    answer = fleet.answers.get(gw)
    if answer is None:
        seen = fleet.status.get(gw)
        why = f"status: {seen}" if seen else "no status seen: check the id and --prefix"
        return [f"{gw}: no answer within {timeout:g} s ({why})"]
    state, error = answer["state"], one_line(answer.get("error", ""))
    if state in OK:
        return [f"{gw}: {state} {one_line(answer.get('hash', ''))}".rstrip()]
    problems = answer.get("problems")
    extra = [f"  {one_line(p)}" for p in problems] if isinstance(problems, list) else []
    said = state.replace("_", " ")
    return [f"{gw}: {said}: {error}" if error else f"{gw}: {said}", *extra]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    gateways = list(dict.fromkeys(args.gateways))  # each one pushed to once, in the order given
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    push_id = args.id or f"push-{stamp}-{secrets.token_hex(3)}"  # unique per run
    try:
        broker = broker_of(args)
        payload = build_push(args, push_id)
    except UsageError as exc:
        print(f"push.py: {exc}", file=sys.stderr)
        return 2
    # The id on stderr (it is in the gateways' logs): stdout is one line per gateway.
    print(f"push.py: pushing {push_id} to {len(gateways)} gateway(s)", file=sys.stderr)
    fleet = Fleet(args.prefix, gateways, push_id)
    try:
        fleet.connect(broker, args.timeout)
        fleet.push(payload)
        fleet.wait(fleet.all_answered, args.timeout)
    except ConnectionError as exc:
        print(f"push.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        fleet.close()
    for gw in gateways:
        print("\n".join(report(gw, fleet, args.timeout)))
    return 0 if all(fleet.answers.get(gw, {}).get("state") in OK for gw in gateways) else 1


if __name__ == "__main__":
    sys.exit(main())
