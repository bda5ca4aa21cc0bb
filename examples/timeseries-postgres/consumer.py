"""edge-agent telemetry from MQTT into PostgreSQL, as a member of a consumer group.

    python consumer.py BROKER_URL PREFIX GROUP DSN [--client-id ID] [--session-expiry SECONDS]

    python consumer.py mqtt://broker:1883 edge pg "host=db dbname=telemetry user=ingest"

Subscribes (MQTT 5, QoS 1) to the shared subscription ``$share/GROUP/PREFIX/+/telemetry``: run
it several times with the same GROUP and the broker hands each message to one of them. Each
message's readings (one row per point of each sample, see ``schema.sql``) are inserted in one
transaction with ``ON CONFLICT DO NOTHING``: a message delivered twice changes nothing.

The message is acknowledged (PUBACK) only once its transaction is committed, so one that was
not stored is not acknowledged: the broker sends it again on the next connection of this client
if the session outlived the disconnection (``--client-id`` fixed, ``--session-expiry`` > 0).

A payload that is not telemetry is logged on one line, acknowledged and skipped. On SIGTERM or
SIGINT it logs its totals and exits 0. Needs ``aiomqtt`` and ``psycopg`` (3).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import sys
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt
import paho.mqtt.client as paho
import psycopg
from edge_telemetry import BadPayload, Row, readings  # beside this file: stdlib only
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

log = logging.getLogger("timeseries-postgres")

INSERT = (
    "INSERT INTO readings (agent, device, id, ts, point, value, text_value, unsynced)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
)
#: Seconds between reconnection attempts after losing the broker or the database.
RETRY = 2.0


@dataclass
class Totals:
    messages: int = 0
    inserted: int = 0
    duplicates: int = 0
    skipped: int = 0

    def __str__(self) -> str:
        return (
            f"{self.messages} messages, {self.inserted} rows inserted, "
            f"{self.duplicates} already there, {self.skipped} messages skipped"
        )


def broker_address(url: str) -> dict[str, Any]:
    """aiomqtt ``Client`` arguments from ``mqtt://[user:password@]host[:port]`` (or mqtts)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"broker URL {url!r} is not mqtt://host[:port] or mqtts://host[:port]")
    args: dict[str, Any] = {
        "hostname": parts.hostname,
        "port": parts.port or (8883 if parts.scheme == "mqtts" else 1883),
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
    }
    if parts.scheme == "mqtts":
        args["tls_context"] = ssl.create_default_context()
    return args


async def store(db: psycopg.AsyncConnection[Any], rows: list[Row]) -> int:
    """Insert one message's rows in one transaction; the number that were new."""
    async with db.transaction(), db.cursor() as cursor:
        await cursor.executemany(INSERT, rows, returning=False)
        return max(cursor.rowcount, 0)


def paho_client(client: aiomqtt.Client) -> paho.Client:
    """The paho client under ``client``, for paho's manual acknowledgement: aiomqtt (2.5) offers
    no option for it, and no public way to its paho client."""
    return client._client  # noqa: SLF001 (see above)


async def consume(args: argparse.Namespace, totals: Totals) -> None:
    topic = f"$share/{args.group}/{args.prefix}/+/telemetry"
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = args.session_expiry
    client = aiomqtt.Client(
        **broker_address(args.broker),
        identifier=args.client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        properties=properties,
        # resume the session (and get what it missed) when it reconnects with the same id
        clean_start=not args.session_expiry,
    )
    # aiomqtt (2.5) has no option for it: acknowledge only what is committed (paho's own API)
    paho_client(client).manual_ack_set(True)
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(args.dsn) as db, client:
                await client.subscribe(topic, qos=1)
                log.info("subscribed to %s as %s", topic, args.client_id)
                async for message in client.messages:
                    totals.messages += 1
                    payload = message.payload
                    try:
                        if not isinstance(payload, bytes):
                            raise BadPayload("empty")
                        kind = getattr(message.properties, "ContentType", None)
                        rows = readings(str(message.topic), payload, kind)
                        new = await store(db, rows)
                    except (BadPayload, psycopg.DataError) as exc:
                        # DataError: what Postgres refuses in a value (a NUL in a string...);
                        # the transaction was rolled back
                        totals.skipped += 1
                        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc
                        log.warning("skipped a message on %s: %s", message.topic, reason)
                    else:
                        totals.inserted += new
                        totals.duplicates += len(rows) - new
                    paho_client(client).ack(message.mid, message.qos)
        except aiomqtt.MqttError as exc:
            log.warning("broker: %s; reconnecting in %gs", exc, RETRY)
        except psycopg.OperationalError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.warning("database: %s; reconnecting in %gs", first, RETRY)
        await asyncio.sleep(RETRY)


async def main(args: argparse.Namespace) -> int:
    totals = Totals()
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await consume(args, totals)
    except asyncio.CancelledError:
        pass
    except psycopg.Error as exc:  # not the connection: a schema or permission problem
        log.error("database: %s", str(exc).strip().splitlines()[0])
        return 1
    finally:
        log.info("stopped: %s", totals)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("broker", help="mqtt://[user:password@]host[:port] or mqtts://...")
    parser.add_argument("prefix", help="the agents' mqtt.topic_prefix, e.g. edge")
    parser.add_argument("group", help="shared subscription group: consumers that share the work")
    parser.add_argument("dsn", help='PostgreSQL connection string, e.g. "dbname=telemetry"')
    parser.add_argument(
        "--client-id",
        help="MQTT client id, unique in the group (default: GROUP-host-pid)",
    )
    parser.add_argument(
        "--session-expiry",
        type=int,
        default=0,
        help="seconds the broker keeps this client's session (and its unacknowledged messages) "
        "after a disconnection; use with a fixed --client-id (default 0: none)",
    )
    args = parser.parse_args(argv)
    if args.client_id is None:
        args.client_id = f"{args.group}-{socket.gethostname()}-{os.getpid()}"
    return args


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    arguments = parse_args()
    try:
        broker_address(arguments.broker)
    except ValueError as error:
        sys.exit(f"consumer.py: {error}")
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(main(arguments)))
