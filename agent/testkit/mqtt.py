"""A subscriber that awaits what the agent publishes, with timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import Any

import aiomqtt

from agent.aio import cancel_and_wait
from agent.uplink.wire import decode_telemetry


class Subscriber:
    """Subscribed to ``topic`` on a broker; collects decoded JSON messages as they arrive.

    With ``session`` (a client id), the broker keeps the subscription and queues QoS 1 messages
    while the subscriber is away, so a test can disconnect and come back without missing any.
    """

    def __init__(self, host: str, port: int, topic: str, session: str | None = None) -> None:
        #: The aiomqtt client it subscribes with; a test may publish through it too.
        self.client = aiomqtt.Client(
            host,
            port,
            identifier=session or f"test-sub-{id(self)}",
            clean_session=session is None,
        )
        self.topic = topic
        self.messages: list[tuple[str, Any, bool]] = []  # topic, payload, retained
        self._arrived = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Subscriber:
        await self.client.__aenter__()
        await self.client.subscribe(self.topic, qos=1)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._reader:
            await cancel_and_wait(self._reader)
        await self.client.__aexit__(t, e, tb)
        # paho acknowledged what it queued before we left: the broker will not send it again,
        # so it is recorded rather than dropped with the queue.
        queue = self.client._queue  # noqa: SLF001 (aiomqtt has no public way to its queue)
        while not queue.empty():
            self._record(queue.get_nowait())

    async def _read(self) -> None:
        async for message in self.client.messages:
            self._record(message)

    def _record(self, message: aiomqtt.Message) -> None:
        payload = message.payload
        raw = bytes(payload) if isinstance(payload, bytes | bytearray) else str(payload).encode()
        self.messages.append((str(message.topic), decode_telemetry(raw), bool(message.retain)))
        self._arrived.set()

    async def wait_for(
        self, predicate: Callable[[list[tuple[str, Any, bool]]], bool], timeout: float = 15.0
    ) -> list[tuple[str, Any, bool]]:
        """Wait until ``predicate(messages)`` holds; ``TimeoutError`` names what was seen."""

        async def until() -> None:
            while not predicate(self.messages):
                self._arrived.clear()
                await self._arrived.wait()

        try:
            await asyncio.wait_for(until(), timeout)
        except asyncio.TimeoutError:
            seen = [t for t, _, _ in self.messages]
            raise TimeoutError(f"condition not met in {timeout}s; topics seen: {seen}") from None
        return self.messages

    def payloads(self, suffix: str) -> list[Any]:
        return [p for t, p, _ in self.messages if t.endswith("/" + suffix)]

    def samples(self, device: str | None = None) -> list[dict[str, Any]]:
        """Every telemetry sample received so far (of ``device`` when given), in arrival order."""
        return [
            s
            for batch in self.payloads("telemetry")
            for s in batch["samples"]
            if device is None or s["device"] == device
        ]

    async def wait_samples(
        self, count: int, device: str | None = None, timeout: float = 15.0
    ) -> list[dict[str, Any]]:
        await self.wait_for(lambda _: len(self.samples(device)) >= count, timeout)
        return self.samples(device)
