"""Compressed edge-agent telemetry made plain again, for a consumer that cannot decompress it.

    python inflate.py BROKER_URL PREFIX [--to PLAIN_PREFIX] [--group GROUP] [--client-id ID]

    python inflate.py mqtt://broker:1883 edge --to plain

Subscribes (MQTT 5, QoS 1, shared subscription ``$share/GROUP/PREFIX/+/telemetry``) and
republishes each message, decompressed, on ``PLAIN_PREFIX/<agent>/telemetry`` (QoS 1), where
``telegraf.conf`` reads it. A message that was plain JSON already is republished as it is. A
message is acknowledged only after the broker acknowledged its plain copy: a bridge that dies
in between gets it again (``--client-id`` fixed, the session kept), so copies are at least once,
which consumers dedupe on (agent, id) anyway.

Telegraf's ``mqtt_consumer`` reads MQTT payloads as they are, with no decompression, so this runs
beside it on the broker's side of the metered link, where bytes are cheap. Needs ``aiomqtt``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import zlib
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

log = logging.getLogger("inflate")

ZLIB = "application/json+zlib"
#: Seconds between reconnection attempts.
RETRY = 1.0
#: A session kept this long while the bridge is away: what arrives meanwhile waits for it.
SESSION_EXPIRY = 3600
#: A message larger than this once decompressed is not telemetry: skipped.
MAX_PLAIN = 64 * 1024 * 1024


def plain(payload: bytes, content_type: str | None) -> bytes:
    """The JSON of one telemetry message; ``ValueError`` when it is neither JSON nor zlib."""
    if content_type == ZLIB or (content_type is None and payload[:1] == b"\x78"):
        inflater = zlib.decompressobj()
        try:
            payload = inflater.decompress(payload, MAX_PLAIN)
        except zlib.error as exc:
            raise ValueError(f"not zlib data ({exc})") from None
        if inflater.unconsumed_tail:
            raise ValueError(f"more than {MAX_PLAIN} bytes once decompressed")
    if payload[:1] != b"{":
        raise ValueError("not a JSON object")
    return payload


def plain_topic(topic: str, to: str) -> str:
    """``edge/gw01/telemetry`` → ``plain/gw01/telemetry``: the agent's id kept."""
    levels = topic.split("/")
    return "/".join([to, *levels[-2:]])


def broker(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise SystemExit(f"inflate: {url!r} is not mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    address: dict[str, Any] = {
        "hostname": parts.hostname,
        "port": parts.port or (8883 if parts.scheme == "mqtts" else 1883),
    }
    if parts.username:
        address |= {"username": parts.username, "password": parts.password}
    if parts.scheme == "mqtts":
        import ssl

        address["tls_context"] = ssl.create_default_context()
    return address


def paho_client(client: aiomqtt.Client) -> paho.Client:
    """The paho client under ``client``, for paho's manual acknowledgement: aiomqtt (2.5) offers
    no option for it, and no public way to its paho client."""
    return client._client  # noqa: SLF001 (see above)


async def bridge(args: argparse.Namespace) -> None:
    topic = f"$share/{args.group}/{args.prefix}/+/telemetry"
    session = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    session.SessionExpiryInterval = SESSION_EXPIRY
    json_format = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    json_format.PayloadFormatIndicator = 1
    client = aiomqtt.Client(
        **broker(args.broker),
        identifier=args.client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        properties=session,
        clean_start=False,
    )
    # aiomqtt (2.5) has no option for it: acknowledge only what was republished (paho's API)
    paho_client(client).manual_ack_set(True)
    while True:
        try:
            async with client:
                await client.subscribe(topic, qos=1)
                log.info("inflating %s into %s/+/telemetry as %s", topic, args.to, args.client_id)
                async for message in client.messages:
                    await forward(client, message, args.to, json_format)
        except aiomqtt.MqttError as exc:
            log.warning("broker: %s; reconnecting in %gs", exc, RETRY)
        await asyncio.sleep(RETRY)


async def forward(
    client: aiomqtt.Client, message: aiomqtt.Message, to: str, json_format: Properties
) -> None:
    payload = message.payload if isinstance(message.payload, bytes) else b""
    kind = getattr(message.properties, "ContentType", None)
    try:
        text = plain(payload, kind)
    except ValueError as exc:
        log.warning("skipped a message on %s: %s", message.topic, exc)
    else:
        await client.publish(plain_topic(str(message.topic), to), text, 1, properties=json_format)
    paho_client(client).ack(message.mid, message.qos)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("broker", help="mqtt://[user:password@]host[:port] or mqtts://...")
    parser.add_argument("prefix", help="the agents' mqtt.topic_prefix, e.g. edge")
    parser.add_argument("--to", default="plain", help="prefix of the plain copies (default plain)")
    parser.add_argument("--group", default="inflate", help="shared subscription group")
    parser.add_argument("--client-id", help="MQTT client id (default inflate-HOST)")
    args = parser.parse_args(argv)
    args.client_id = args.client_id or f"inflate-{socket.gethostname()}"
    if args.to == args.prefix:
        parser.error("--to must differ from PREFIX, or the bridge would read its own copies")
    return args


async def main(args: argparse.Namespace) -> int:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):  # SIGTERM, SIGINT: a clean stop
        await bridge(args)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    raise SystemExit(asyncio.run(main(parse_args())))
