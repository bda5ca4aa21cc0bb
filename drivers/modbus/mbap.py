"""Modbus TCP on one connection: MBAP frames (transaction id, protocol 0, length, unit) around
the PDUs of the functions the driver uses, on a lean ``asyncio.Protocol``.

pymodbus's client costs more per request than the rest of a poll together (its transaction
manager awaits each answer with ``wait_for``, its decoder formats every answer for a debug line
that is never shown, and the driver had to run each call in a task of its own because pymodbus
can swallow a cancellation). Here a request is one write (or a share of one, pipelined), one
future, and no timer of its own. What pymodbus does that the driver relies on is kept: the
``trace_packet`` hook sees every frame sent and the whole receive buffer each time bytes arrive,
and what it returns is what is read (the driver skips the tail of a late answer there); the
receive buffer starts empty at each request sent while none is under way; an answer carrying
another transaction id or unit id is not taken; the connection is closed at the request in a row
without an answer that comes after ``max_no_responses`` (a half-open link).
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from pymodbus.pdu import ModbusPDU

#: The header of an MBAP frame: transaction id, protocol id (0), length (unit + PDU), unit.
_HEADER = struct.Struct(">HHHB")
#: Read functions (coils, discrete inputs, holding, input registers) and write functions.
READS = frozenset({1, 2, 3, 4})
WRITE_COIL, WRITE_REGISTER, WRITE_COILS, WRITE_REGISTERS = 5, 6, 15, 16
#: The most each request may carry, as the protocol sets it.
MAX_READ = {1: 2000, 2: 2000, 3: 125, 4: 125}
MAX_WRITE_COILS, MAX_WRITE_REGISTERS = 1968, 123
_ON = 0xFF00  # FC 5's value for a coil switched on
#: Requests in a row without an answer that a connection survives: the next one closes it
#: (pymodbus's rule, retries + 3 with retries 0, which closes at the fifth).
MAX_NO_RESPONSES = 4


class Garbled(Exception):
    """An answer to the request, framed right, whose PDU makes no sense."""


def read_request(function: int, address: int, count: int) -> bytes:
    """The PDU reading ``count`` registers or bits from ``address``; ValueError beyond the
    protocol's limits (nothing is sent)."""
    _check("address", address, 0, 0xFFFF)
    _check("count", count, 1, MAX_READ[function])
    return struct.pack(">BHH", function, address, count)


def write_request(function: int, address: int, values: Sequence[int] | Sequence[bool]) -> bytes:
    """The PDU writing ``values`` from ``address`` (FC 5, 6, 15 or 16)."""
    _check("address", address, 0, 0xFFFF)
    if function == WRITE_COIL:
        return struct.pack(">BHH", function, address, _ON if values[0] else 0)
    if function == WRITE_REGISTER:
        _check("value", int(values[0]), 0, 0xFFFF)
        return struct.pack(">BHH", function, address, int(values[0]))
    if function == WRITE_COILS:
        _check("count", len(values), 1, MAX_WRITE_COILS)
        packed = bytearray((len(values) + 7) // 8)
        for index, value in enumerate(values):
            if value:
                packed[index // 8] |= 1 << (index % 8)
        return struct.pack(">BHHB", function, address, len(values), len(packed)) + packed
    _check("count", len(values), 1, MAX_WRITE_REGISTERS)
    registers = [int(v) for v in values]
    for value in registers:
        _check("value", value, 0, 0xFFFF)
    head = struct.pack(">BHHB", function, address, len(registers), 2 * len(registers))
    return head + struct.pack(f">{len(registers)}H", *registers)


def _check(what: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ValueError(f"{what} {value} is out of range {low}..{high}")


def parse_answer(unit: int, tid: int, pdu: bytes) -> ModbusPDU:
    """The answer ``pdu`` (function code first) as pymodbus's own responses carry it: registers
    or bits of a read, address and value or count of a write, the code of an exception.

    As lenient as pymodbus's decoders, which devices in the field were read with: bytes past
    what the answer needs are ignored, a read of bits ignores its byte count, a read of
    registers takes ``byte count // 2`` of them, a coil's echo is on for any value but 0; the
    driver checks the count it asked for. ``Garbled`` where pymodbus could not decode either.
    """
    if not pdu:
        raise Garbled("an empty answer")
    function = pdu[0]
    answer = ModbusPDU(dev_id=unit, transaction_id=tid)
    answer.function_code = function
    if function & 0x80:
        if len(pdu) < 2:
            raise Garbled("an exception answer without its code")
        answer.exception_code = pdu[1]
        return answer
    if function in (1, 2):
        answer.bits = [bool(byte >> bit & 1) for byte in pdu[2:] for bit in range(8)]
        return answer
    if function in (3, 4):
        if len(pdu) < 2 or pdu[1] >= len(pdu) - 1:
            raise Garbled(f"an answer to function {function} of {len(pdu)} bytes")
        count = pdu[1] // 2
        answer.registers = list(struct.unpack_from(f">{count}H", pdu, 2))
        return answer
    if function in (WRITE_COIL, WRITE_REGISTER, WRITE_COILS, WRITE_REGISTERS):
        if len(pdu) < 5:
            raise Garbled(f"an answer to function {function} of {len(pdu)} bytes")
        answer.address, value = struct.unpack_from(">HH", pdu, 1)
        if function == WRITE_COIL:
            answer.bits = [bool(value)]
        elif function == WRITE_REGISTER:
            answer.registers = [value]
        else:
            answer.count = value
        return answer
    return answer  # a function never asked for: the driver says so


class NoAnswer(Exception):
    """No answer to the request was taken within the timeout."""


@dataclass(slots=True)
class _Pending:
    """A request sent and not yet answered."""

    unit: int
    answer: asyncio.Future[ModbusPDU | None]
    sent: float  # loop time
    deadline: float


class MbapClient(asyncio.Protocol):
    """One Modbus TCP connection, with up to ``window`` requests under way at once (the caller
    keeps to it; 1, the default, is one transaction at a time).

    With a window, the requests asked for in one turn of the event loop go out in one write,
    and each answer is matched to its request by transaction id, whatever the order they come
    back in: Modbus TCP allows it, for servers that take several requests at once (most PLCs and
    gateways queue them; a server that cannot would answer one and drop the rest).

    ``trace_packet(sending, data)`` sees each frame sent and the receive buffer at each arrival
    (from each answer taken on, when several came in one read), and returns what of the buffer
    to read; ``trace_connect(False)`` is called once when the connection is lost or closed for
    silence.
    """

    def __init__(
        self,
        trace_packet: Callable[[bool, bytes], bytes],
        trace_connect: Callable[[bool], None],
        max_no_responses: int = MAX_NO_RESPONSES,
        window: int = 1,
    ) -> None:
        self._trace_packet = trace_packet
        self._trace_connect = trace_connect
        self.max_no_responses = max_no_responses
        self.window = window
        self._max_buffer = MAX_BUFFER * window  # the answers under way may come in one read
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._tid = 0
        #: The requests under way by transaction id, oldest first.
        self._pending: dict[int, _Pending] = {}
        self._outgoing: list[bytes] = []  # frames of this loop turn, for one write
        self._silent = 0  # requests in a row that got no answer
        self._silent_at = -math.inf  # loop time the last of them was counted
        #: The one timer that watches the requests' deadlines: re-armed only when it fires
        #: early, not set and cancelled for every request.
        self._watchdog: asyncio.TimerHandle | None = None

    @property
    def connected(self) -> bool:
        return self._transport is not None

    async def connect(self, host: str, port: int, timeout: float) -> None:
        """Open the connection; OSError (TimeoutError after ``timeout``) when it cannot be.

        Not ``asyncio.wait_for``: before Python 3.12 it can swallow a cancellation that comes
        as the connection is made."""
        loop = asyncio.get_running_loop()
        connecting = asyncio.ensure_future(loop.create_connection(lambda: self, host, port))
        connecting.add_done_callback(_seen)
        try:
            done, _ = await asyncio.wait({connecting}, timeout=timeout)
        except asyncio.CancelledError:
            await self._abandon(connecting)
            raise
        if not done:
            await self._abandon(connecting)
            raise TimeoutError(f"no connection within {timeout:g} s")
        connecting.result()  # its OSError, if it failed

    async def _abandon(self, connecting: asyncio.Future[Any]) -> None:
        connecting.cancel()
        await asyncio.wait({connecting})
        self.close()  # if it was made all the same

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._gone()

    def close(self) -> None:
        """Close the connection; the requests under way end as if it had dropped."""
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.abort()
            self._end_requests()

    def _gone(self) -> None:
        self._transport = None
        self._end_requests()
        self._trace_connect(False)

    def _end_requests(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._outgoing.clear()
        for pending in self._pending.values():
            if not pending.answer.done():
                pending.answer.set_result(None)

    async def transact(self, unit: int, pdu: bytes, timeout: float) -> ModbusPDU | None:
        """Send ``pdu`` to ``unit``; its answer, or None when the connection went meanwhile.

        ``NoAnswer`` when none was taken within ``timeout`` (the connection closed first when
        that made too many in a row); ``Garbled`` when the answer makes no sense.
        """
        transport = self._transport
        if transport is None:
            return None
        loop = asyncio.get_running_loop()
        if not self._pending:
            self._buffer = b""  # what came between requests is no answer to this one
        self._tid = tid = self._tid % 65000 + 1
        answer: asyncio.Future[ModbusPDU | None] = loop.create_future()
        now = loop.time()
        pending = self._pending[tid] = _Pending(unit, answer, now, now + timeout)
        try:
            self._send(transport, _HEADER.pack(tid, 0, len(pdu) + 1, unit) + pdu)
            self._watch_until(pending.deadline)
            result = await answer
        except (NoAnswer, Garbled):
            self._no_response(pending)
            raise
        finally:
            del self._pending[tid]
        if result is not None:
            self._silent = 0
        return result

    def _send(self, transport: asyncio.Transport, frame: bytes) -> None:
        frame = self._trace_packet(True, frame)
        if self.window == 1:
            transport.write(frame)
            return
        self._outgoing.append(frame)
        if len(self._outgoing) == 1:  # the first of this turn: the rest join it
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        if self._transport is not None and self._outgoing:
            self._transport.write(b"".join(self._outgoing))
        self._outgoing.clear()

    def _watch_until(self, deadline: float) -> None:
        if self._watchdog is not None and self._watchdog.when() > deadline:
            self._watchdog.cancel()  # set for a later deadline than this request's
            self._watchdog = None
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().call_at(deadline, self._watch)

    def _watch(self) -> None:
        """The watchdog: ends the requests that are due, then waits for the next deadline."""
        self._watchdog = None
        now = asyncio.get_running_loop().time()
        waiting = [p for p in self._pending.values() if not p.answer.done()]
        for pending in waiting:
            if now >= pending.deadline:
                pending.answer.set_exception(NoAnswer())
        later = [p.deadline for p in waiting if now < p.deadline]
        if later:
            self._watch_until(min(later))

    def _no_response(self, request: _Pending) -> None:
        """Count a request without an answer; close the connection at one too many in a row.
        Requests under way together count once: a server that stalls for a moment leaves a
        whole pipeline unanswered, which is one silence, not a half-open link."""
        if request.sent < self._silent_at:
            return  # sent before the last one counted ended: the same silence
        self._silent += 1
        self._silent_at = asyncio.get_running_loop().time()
        if self._silent > self.max_no_responses and self._transport is not None:
            self._transport.abort()
            self._gone()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > self._max_buffer:  # a flood: no answers are that long
            self._buffer = b""
            return
        buffer = self._trace_packet(False, self._buffer)
        pipelined = self.window > 1
        while self._waiting():
            frame, misframed, buffer = _next_frame(buffer, self._pending if pipelined else None)
            if not frame:
                break  # no frame start (pymodbus waits here too), or the rest is on its way
            taken = self._take(frame, misframed)
            if (taken or pipelined) and buffer and self._waiting():
                buffer = self._trace_packet(False, buffer)  # the next answer's, on its own
        self._buffer = buffer

    def _waiting(self) -> bool:
        return any(not p.answer.done() for p in self._pending.values())

    def _take(self, frame: bytes, misframed: bool = False) -> bool:
        """Settle the request ``frame`` answers; False if none (the trace has noted why).
        ``misframed``: its length field does not fit its PDU (pipelined answers must fit)."""
        tid, _, length, unit = _HEADER.unpack_from(frame)
        pending = self._pending.get(tid) if tid else self._oldest(unit)
        if pending is None or pending.answer.done() or (pending.unit and unit != pending.unit):
            return False
        if misframed:
            pending.answer.set_exception(
                Garbled(f"its length field says {length} bytes, its PDU {len(frame) - 6}")
            )
            return True
        try:
            pending.answer.set_result(parse_answer(unit, tid, frame[7:]))
        except Garbled as exc:
            pending.answer.set_exception(exc)
        return True

    def _oldest(self, unit: int) -> _Pending | None:
        """The request an answer with transaction id 0 is taken for, as pymodbus takes it (some
        gateways and meters answer every request with it): the oldest under way to its unit."""
        for pending in self._pending.values():
            if not pending.answer.done() and (not pending.unit or pending.unit == unit):
                return pending
        return None


def _next_frame(
    buffer: bytes, under_way: Collection[int] | None = None
) -> tuple[bytes, bool, bytes]:
    """The whole MBAP frame at the start of ``buffer``, whether it is misframed, and the rest;
    no frame (b"") while it is incomplete or ``buffer`` starts with no frame.

    One request at a time, the length field says where the frame ends, as pymodbus reads it
    (an answer padded past its PDU is taken). Pipelined (``under_way``: the transaction ids of
    the requests under way), the next answer may follow in the same read: the end is taken from
    the PDU itself where its function says it, and a frame shorter than it says (the next
    answer's header found in its last bytes) is cut there. Either way a length field that lies
    costs its own request (misframed), not the next answer its bytes.
    """
    if len(buffer) < _HEADER.size:
        return b"", False, buffer
    _, protocol, length, _ = _HEADER.unpack_from(buffer)
    if protocol:
        return b"", False, buffer
    end = 6 + length
    exact = under_way is not None
    pdu_end = _pdu_end(buffer) if exact else None
    misframed = pdu_end is not None and pdu_end != end
    # An exception whose length leaves out its code: pymodbus takes it (when nothing follows).
    short_exception = pdu_end == 9 if exact else len(buffer) == 9
    if length == 2 and short_exception:
        end, misframed = 9, False
    elif misframed and pdu_end is not None:
        end = pdu_end
    if len(buffer) < end:
        return b"", False, buffer
    if under_way and (cut := _cut_short(buffer, end, under_way)):
        return buffer[:cut], True, buffer[cut:]
    return buffer[:end], misframed, buffer[end:]


def _cut_short(buffer: bytes, end: int, under_way: Collection[int]) -> int:
    """Where a frame ending at ``end`` really ends when it came short of its length and took
    the first bytes of the next answer: the header of a request under way starting in its last
    three bytes, while what follows ``end`` starts no answer. 0: it ends at ``end``."""
    if len(buffer) == end or _starts_answer(buffer[end:], under_way):
        return 0
    for cut in range(end - 1, max(end - 4, 8), -1):
        if _starts_answer(buffer[cut:], under_way):
            return cut
    return 0


def _starts_answer(data: bytes, under_way: Collection[int]) -> bool:
    """Whether ``data`` starts like the answer to a request under way (or one with id 0)."""
    if len(data) < 4:
        return False
    tid = int.from_bytes(data[:2], "big")
    return data[2:4] == b"\x00\x00" and (tid == 0 or tid in under_way)


def _pdu_end(buffer: bytes) -> int | None:
    """Where the answer at the start of ``buffer`` ends by its PDU (function code, byte count);
    None when that cannot be told yet, or the function is not one of the driver's."""
    if len(buffer) < 8:
        return None
    function = buffer[7]
    if function & 0x80:
        return 9
    if function in READS:
        return 9 + buffer[8] if len(buffer) >= 9 else None
    if function in (WRITE_COIL, WRITE_REGISTER, WRITE_COILS, WRITE_REGISTERS):
        return 12
    return None


#: The most bytes kept per request under way while waiting for answers (an MBAP frame is at
#: most 260).
MAX_BUFFER = 1024


def _seen(task: asyncio.Future[Any]) -> None:
    """Mark an abandoned connect's exception as seen, so that asyncio does not log it."""
    if not task.cancelled():
        task.exception()
