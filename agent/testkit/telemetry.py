"""A subscriber for plain tests: collects what the agent publishes, on the kit's loop, and lets the
test thread wait for samples, points and health states, with timeouts. It stays subscribed
through a broker outage (a persistent session, reconnecting), so a test sees every sample."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import zlib
from collections.abc import Callable
from contextlib import suppress
from typing import Any, NamedTuple

import aiomqtt

from agent.aio import cancel_and_wait
from agent.uplink.wire import decode_telemetry

from .aio import KitLoop

_ids = itertools.count(1)
#: paho's complaints while the test's broker is away are the test's business, not stderr's.
_QUIET = logging.getLogger(f"{__name__}.mqtt")
_QUIET.addHandler(logging.NullHandler())
_UNSET: Any = object()


class Message(NamedTuple):
    topic: str
    payload: Any  # the decoded JSON, or the text when it is not JSON
    retained: bool


class Telemetry:
    """Subscribed to ``topic`` (default: everything) on the broker at ``host:port``.

    ``samples(device)``, ``wait_sample(device, point, value=…)``, ``wait_samples(count)``,
    ``health()``, ``wait_health(device, state)``; ``messages`` holds everything received.
    """

    def __init__(self, kit: KitLoop, host: str, port: int, topic: str = "#") -> None:
        self.kit = kit
        self.host = host
        self.port = port
        self.topic = topic
        self.client_id = f"edge-agent-testkit-{next(_ids)}"
        self.messages: list[Message] = []
        self.connections = 0  # how often it (re)connected
        self._changed = threading.Condition()
        self._task: asyncio.Task[None] | None = None

    def start(self, timeout: float = 10.0) -> Telemetry:
        """Subscribe; returns once subscribed, so that nothing published afterwards is missed."""
        if self._task is None:
            self._task = self.kit.call(self._spawn())
            self._wait(lambda: self.connections > 0, timeout, "no connection to the broker")
        return self

    def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            self.kit.call(cancel_and_wait(task))

    # What arrived so far.

    def payloads(self, suffix: str) -> list[Any]:
        """The payloads of the topics ending with ``/suffix`` (e.g. ``telemetry``, ``health``)."""
        with self._changed:
            return [m.payload for m in self.messages if m.topic.endswith("/" + suffix)]

    def samples(self, device: str | None = None, point: str | None = None) -> list[dict[str, Any]]:
        """Every telemetry sample so far (of ``device``, having ``point``), in arrival order."""
        return [
            sample
            for batch in self.payloads("telemetry")
            if isinstance(batch, dict)
            for sample in batch.get("samples", ())
            if (device is None or sample.get("device") == device)
            and (point is None or point in sample.get("values", {}))
        ]

    def values(self, device: str, point: str) -> list[Any]:
        """The values of ``point`` of ``device`` received so far, in arrival order."""
        return [s["values"][point] for s in self.samples(device, point)]

    def health(self) -> dict[str, Any] | None:
        """The latest ``health`` payload, if any."""
        reports = self.payloads("health")
        return reports[-1] if reports else None

    # Waiting, from the test's thread.

    def wait_for(self, predicate: Callable[[Telemetry], bool], timeout: float = 15.0) -> None:
        """Wait until ``predicate(self)`` holds; ``TimeoutError`` names what was seen."""
        self._wait(lambda: predicate(self), timeout, "condition not met")

    def wait_samples(
        self, count: int, device: str | None = None, timeout: float = 15.0
    ) -> list[dict[str, Any]]:
        """Wait for ``count`` samples (of ``device``) in all; returns all of them."""
        self._wait(lambda: len(self.samples(device)) >= count, timeout, f"{count} samples")
        return self.samples(device)

    def wait_sample(
        self,
        device: str,
        point: str | None = None,
        value: Any = _UNSET,
        *,
        where: Callable[[Any], bool] | None = None,
        timeout: float = 15.0,
    ) -> dict[str, Any]:
        """The first sample of ``device`` (with ``point``; whose value ``== value``, or for which
        ``where(value)`` holds) received so far or within ``timeout`` s. ``value`` may be a
        ``pytest.approx``. ``TimeoutError`` shows the values seen."""

        def match(sample: dict[str, Any]) -> bool:
            if point is None:
                return True
            got = sample["values"][point]
            return (value is _UNSET or got == value) and (where is None or where(got))

        def found() -> dict[str, Any] | None:
            return next((s for s in self.samples(device, point) if match(s)), None)

        what = f"a sample of {device}" + (f" with {point}" if point else "")
        if value is not _UNSET:
            what += f" == {value!r}"

        def seen() -> str:
            if point is None:
                return f"{len(self.samples())} samples of any device"
            return f"values of {device}.{point}: {self.values(device, point)[-10:]}"

        self._wait(lambda: found() is not None, timeout, what, seen)
        sample = found()
        assert sample is not None
        return sample

    def wait_health(
        self, device: str, state: str = "failing", timeout: float = 30.0
    ) -> dict[str, Any]:
        """Wait for a ``health`` report giving ``device`` the ``state`` (``ok`` or ``failing``);
        returns the device's part of it. Mind the agent's ``mqtt.health_interval``."""

        def report() -> dict[str, Any] | None:
            latest = self.health()
            devices = latest.get("devices", {}) if isinstance(latest, dict) else {}
            entry = devices.get(device)
            return entry if isinstance(entry, dict) and entry.get("state") == state else None

        self._wait(lambda: report() is not None, timeout, f"health: {device} {state}")
        entry = report()
        assert entry is not None
        return entry

    def _wait(
        self,
        condition: Callable[[], bool],
        timeout: float,
        what: str,
        seen: Callable[[], str] | None = None,
    ) -> None:
        with self._changed:
            if self._changed.wait_for(condition, timeout):
                return
        topics = sorted({m.topic for m in self.messages})
        detail = seen() if seen else f"topics seen: {topics}"
        raise TimeoutError(f"{what}: not within {timeout}s; {detail}")

    # On the kit's loop.

    async def _spawn(self) -> asyncio.Task[None]:
        return asyncio.create_task(self._run(), name=f"testkit telemetry {self.client_id}")

    async def _run(self) -> None:
        while True:
            client = aiomqtt.Client(
                self.host, self.port, identifier=self.client_id, clean_session=False, logger=_QUIET
            )
            try:
                with suppress(aiomqtt.MqttError):
                    async with client:
                        await client.subscribe(self.topic, qos=1)
                        with self._changed:
                            self.connections += 1
                            self._changed.notify_all()
                        async for message in client.messages:
                            self._add(message)
            finally:
                # What the client took (and acknowledged: the broker counts it delivered) but
                # had not handed over when the link went: aiomqtt offers no public way to it.
                queue = client._queue  # noqa: SLF001 (the private queue, as said above)
                while not queue.empty():
                    self._add(queue.get_nowait())
                # the reason it went is ours to know, not "Future exception was never retrieved"
                gone = getattr(client, "_disconnected", None)
                if isinstance(gone, asyncio.Future) and gone.done() and not gone.cancelled():
                    gone.exception()
            await asyncio.sleep(0.1)  # the broker is away: try again soon

    def _add(self, message: aiomqtt.Message) -> None:
        raw = message.payload
        data = bytes(raw) if isinstance(raw, bytes | bytearray) else str(raw).encode()
        try:
            payload: Any = decode_telemetry(data)  # plain or compressed JSON
        except (ValueError, zlib.error):
            payload = data.decode(errors="replace")
        with self._changed:
            self.messages.append(Message(str(message.topic), payload, bool(message.retain)))
            self._changed.notify_all()
