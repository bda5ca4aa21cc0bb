"""Modbus frames as they cross the wire: the ring of the last frames per device (what a
technician sees when a slave answers garbage), RTU frame lengths and CRCs, and what came back
during a request judged before pymodbus reads it (the late answer of another request, a frame
from another unit, a stale transaction id)."""

from __future__ import annotations

import collections
from collections.abc import Collection

from pymodbus.exceptions import NotImplementedException
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU

#: Raw frames kept per device for error reports.
FRAME_RING_SIZE = 8


_REQUEST_DECODER = DecodePDU(True)


_RESPONSE_DECODER = DecodePDU(False)


class FrameRing:
    """The last frames sent to and received from one device, each with what was wrong with the
    exchange it ended, if anything (for error reports)."""

    def __init__(self, size: int = FRAME_RING_SIZE) -> None:
        self._frames: collections.deque[tuple[bool, bytes, str]] = collections.deque(maxlen=size)

    def add(self, sending: bool, data: bytes) -> None:
        if not sending and self._frames:
            last_sending, last, _ = self._frames[-1]
            # pymodbus hands its whole receive buffer to the trace hook each time bytes arrive:
            # a buffer that grew is the same frame, more of it.
            if not last_sending and data.startswith(last):
                self._frames[-1] = (False, bytes(data), "")
                return
        self._frames.append((sending, bytes(data), ""))

    def note(self, fault: str) -> None:
        """What was wrong, on the last frame: the request unanswered, the answer refused."""
        if self._frames:
            sending, data, _ = self._frames[-1]
            self._frames[-1] = (sending, data, fault)

    def lines(self) -> tuple[str, ...]:
        return tuple(
            f"{'sent' if sending else 'received'} {data.hex(' ')}"
            + (f"  <- {fault}" if fault else "")
            for sending, data, fault in self._frames
        )


def rtu_frame_size(frame: bytes, *, request: bool = False) -> int | None:
    """How long the RTU frame at the start of ``frame`` is, by pymodbus's own rules.

    0 when more bytes are needed to tell, None when the function code is not one pymodbus knows.
    ``request`` picks the request layouts (what a slave receives) instead of the responses.
    """
    if len(frame) < 2:
        return 0
    decoder = _REQUEST_DECODER if request else _RESPONSE_DECODER
    try:
        pdu = decoder.lookupPduClass(frame)
        return None if pdu is None else pdu.calculateRtuFrameSize(frame)
    except (NotImplementedException, IndexError):
        return None


def rtu_crc_ok(frame: bytes) -> bool:
    """Whether the last two bytes of ``frame`` are the CRC of the others."""
    return len(frame) >= 4 and FramerRTU.check_CRC(frame[:-2], int.from_bytes(frame[-2:], "big"))


def inspect_rtu(buffer: bytes, unit: int) -> tuple[str, str]:
    """What is wrong with an RTU answer buffer: (category, cause), or ("", "") if nothing."""
    size = rtu_frame_size(buffer)
    if size is None:
        return "garbled", f"garbled answer (function code {buffer[1]} makes no sense)"
    if size == 0 or len(buffer) < size:
        expected = f" of {size}" if size else ""
        return "garbled", f"truncated answer ({len(buffer)}{expected} bytes)"
    frame = buffer[:size]
    if not rtu_crc_ok(frame):
        return "crc", "the answer failed its CRC check (noise, or wrong baud rate or parity?)"
    if frame[0] != unit:
        return "wrong_unit", f"an answer came from unit {frame[0]} instead (not taken)"
    return "", ""


def inspect_mbap(buffer: bytes, unit: int, tid: int) -> tuple[str, str]:
    """What is wrong with a Modbus TCP answer buffer: (category, cause), or ("", ""). An answer
    carrying transaction id 0 is taken for any request (as pymodbus takes it)."""
    if len(buffer) >= 2 and (got := int.from_bytes(buffer[:2], "big")) not in (tid, 0):
        return "out_of_step", f"an answer carried transaction id {got} instead of {tid} (not taken)"
    if len(buffer) < 8 or len(buffer) < 6 + int.from_bytes(buffer[4:6], "big"):
        return "garbled", f"truncated answer ({len(buffer)} bytes)"
    if buffer[6] != unit:
        return "wrong_unit", f"an answer came from unit {buffer[6]} instead (not taken)"
    return "", ""


def skip_stale_bytes(buffer: bytes, tids: Collection[int]) -> bytes:
    """A Modbus TCP receive buffer from the answer to one of the transactions ``tids`` (more
    than one on a pipelined link) on, when other bytes came first (the rest of a late answer
    to an earlier request): frames are read only from the start of the buffer, and would wait
    behind them until the request timed out."""
    if buffer[2:4] == b"\x00\x00" and int.from_bytes(buffer[:2], "big") in tids:
        return buffer  # the answer to one of them comes first: most often
    headers = [tid.to_bytes(2, "big") + b"\x00\x00" for tid in tids]  # its id, protocol 0
    if any(header.startswith(buffer[:4]) for header in headers):
        return buffer
    starts = [start for header in headers if (start := buffer.find(header)) > 0]
    return buffer[min(starts) :] if starts else buffer


def skip_to_rtu_frame(buffer: bytes, unit: int) -> bytes:
    """An RTU receive buffer from the first whole frame of ``unit`` (its CRC good) on; empty
    until one is there. pymodbus's RTU framer takes a buffer for one frame: a late answer from
    another unit, or the tail of one, in front of ours would make it drop ours with it."""
    if not unit:  # a broadcast: nothing answers it
        return buffer
    for start in range(len(buffer)):
        if buffer[start] != unit:
            continue
        size = rtu_frame_size(buffer[start:])
        if size and len(buffer) - start >= size and rtu_crc_ok(buffer[start : start + size]):
            return buffer[start:]
    return b""
