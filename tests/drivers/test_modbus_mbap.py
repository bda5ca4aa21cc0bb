"""The Modbus TCP client's frames and answers, against pymodbus's own encoding of the same PDUs,
and its connection against a server of the test's own (the driver's tests run it against the
simulator: tests/drivers/test_modbus_driver.py, test_modbus_answer_faults.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.framer import FramerSocket
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu.bit_message import (
    ReadCoilsRequest,
    ReadCoilsResponse,
    ReadDiscreteInputsRequest,
    WriteMultipleCoilsRequest,
    WriteMultipleCoilsResponse,
    WriteSingleCoilRequest,
    WriteSingleCoilResponse,
)
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadHoldingRegistersResponse,
    ReadInputRegistersRequest,
    WriteMultipleRegistersRequest,
    WriteMultipleRegistersResponse,
    WriteSingleRegisterRequest,
    WriteSingleRegisterResponse,
)

from agent.api import BusConfig, BusError, DeviceConfig, DeviceError
from agent.testkit import run
from drivers.modbus import ModbusDriver
from drivers.modbus.mbap import (
    MAX_NO_RESPONSES,
    Garbled,
    MbapClient,
    NoAnswer,
    parse_answer,
    read_request,
    write_request,
)
from drivers.modbus.schema import ModbusPoint

FRAMER = FramerSocket(DecodePDU(False))


def pdu_of(message: ModbusPDU) -> bytes:
    """The PDU pymodbus sends for ``message``: its frame without the MBAP header."""
    return FRAMER.buildFrame(message)[7:]


@given(address=st.integers(0, 0xFFFF), count=st.integers(1, 125))
def test_reads_are_the_pdus_pymodbus_sends(address: int, count: int) -> None:
    for function, request in (
        (3, ReadHoldingRegistersRequest),
        (4, ReadInputRegistersRequest),
        (1, ReadCoilsRequest),
        (2, ReadDiscreteInputsRequest),
    ):
        assert read_request(function, address, count) == pdu_of(
            request(address=address, count=count)
        )


@given(
    address=st.integers(0, 0xFFFF),
    registers=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=123),
    bits=st.lists(st.booleans(), min_size=1, max_size=1968),
)
def test_writes_are_the_pdus_pymodbus_sends(
    address: int, registers: list[int], bits: list[bool]
) -> None:
    expected = {
        (5, (bits[0],)): WriteSingleCoilRequest(address=address, bits=[bits[0]]),
        (6, (registers[0],)): WriteSingleRegisterRequest(address=address, registers=[registers[0]]),
        (15, tuple(bits)): WriteMultipleCoilsRequest(address=address, bits=bits),
        (16, tuple(registers)): WriteMultipleRegistersRequest(address=address, registers=registers),
    }
    for (function, values), request in expected.items():
        assert write_request(function, address, list(values)) == pdu_of(request)


@pytest.mark.parametrize(
    ("function", "address", "count"),
    [(3, 0, 0), (3, 0, 126), (4, 65536, 1), (1, 0, 2001), (2, -1, 1)],
)
def test_a_read_beyond_the_protocol_is_refused_before_sending(
    function: int, address: int, count: int
) -> None:
    with pytest.raises(ValueError, match="out of range"):
        read_request(function, address, count)


def test_a_write_beyond_the_protocol_is_refused_before_sending() -> None:
    with pytest.raises(ValueError, match=r"count 124 is out of range 1\.\.123"):
        write_request(16, 0, [0] * 124)
    with pytest.raises(ValueError, match="value 65536 is out of range"):
        write_request(6, 0, [65536])


@given(
    registers=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=125),
    bits=st.lists(st.booleans(), min_size=1, max_size=2000),
    address=st.integers(0, 0xFFFF),
)
def test_answers_read_as_pymodbus_reads_them(
    registers: list[int], bits: list[bool], address: int
) -> None:
    answer = parse_answer(1, 5, pdu_of(ReadHoldingRegistersResponse(registers=registers)))
    assert (answer.function_code, list(answer.registers), answer.dev_id) == (3, registers, 1)
    answer = parse_answer(1, 5, pdu_of(ReadCoilsResponse(bits=bits)))
    assert list(answer.bits[: len(bits)]) == bits
    assert len(answer.bits) % 8 == 0  # padded to whole bytes, as pymodbus has them
    coil = parse_answer(1, 5, pdu_of(WriteSingleCoilResponse(address=address, bits=[bits[0]])))
    assert (coil.address, list(coil.bits)) == (address, [bits[0]])
    one = parse_answer(
        1, 5, pdu_of(WriteSingleRegisterResponse(address=address, registers=registers[:1]))
    )
    assert (one.address, list(one.registers)) == (address, registers[:1])
    many = parse_answer(1, 5, pdu_of(WriteMultipleCoilsResponse(address=address, count=len(bits))))
    assert (many.function_code, many.address, many.count) == (15, address, len(bits))
    regs = parse_answer(1, 5, pdu_of(WriteMultipleRegistersResponse(address=address, count=7)))
    assert (regs.function_code, regs.address, regs.count) == (16, address, 7)


def test_an_exception_answer_carries_its_code() -> None:
    answer = parse_answer(3, 9, pdu_of(ExceptionResponse(3, exception_code=2)))
    assert answer.isError()
    assert (answer.function_code, answer.exception_code) == (0x83, 2)


def test_a_function_never_asked_for_is_left_to_the_caller() -> None:
    assert parse_answer(1, 1, b"\x73\x01\x02").function_code == 0x73


@pytest.mark.parametrize(
    "pdu",
    [
        b"",
        b"\x03",
        b"\x03\x04\x00\x01",  # 4 bytes announced, 2 there
        b"\x83",  # an exception without its code
        b"\x06\x00\x01\x00",  # a write's echo cut short
    ],
)
def test_an_answer_that_makes_no_sense_is_garbled(pdu: bytes) -> None:
    with pytest.raises(Garbled):
        parse_answer(1, 1, pdu)
    assert DecodePDU(False).decode(pdu) is None  # pymodbus could not decode it either


@pytest.mark.parametrize(
    "pdu",
    [
        b"\x03\x02\x00\x07\xff\xff",  # padded past its byte count
        b"\x03\x03\x00\x01\x02",  # an odd byte count
        b"\x04\x04\x00\x01\x00\x02",
        b"\x01\x05\x01",  # a byte count that is wrong: bits are read from what is there
        b"\x02\x01\x03\x00",
        b"\x05\x00\x01\x00\x01",  # a coil's echo that is neither FF00 nor 0
        b"\x06\x00\x01\x12\x34\x00",
        b"\x0f\x00\x01\x00\x08",
        b"\x10\x00\x01\x00\x02\x00",
        b"\x83\x02\x00",  # an exception with a byte more
    ],
)
def test_answers_are_taken_as_leniently_as_pymodbus_takes_them(pdu: bytes) -> None:
    """Devices in the field were read with pymodbus's decoders: what they took is taken."""
    theirs = DecodePDU(False).decode(pdu)
    assert theirs is not None
    ours = parse_answer(1, 1, pdu)
    fields = ("function_code", "exception_code", "address", "count")
    assert [getattr(ours, f) for f in fields] == [getattr(theirs, f) for f in fields]
    assert (list(ours.registers), list(ours.bits)) == (list(theirs.registers), list(theirs.bits))


# --- the connection ------------------------------------------------------------------------

Answerer = Callable[[bytes], bytes]


@asynccontextmanager
async def server(answer: Answerer) -> AsyncIterator[int]:
    """A TCP server on 127.0.0.1 that writes ``answer(request frame)`` for each request."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                frame = await reader.readexactly(12)
                writer.write(answer(frame))
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    listening = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield listening.sockets[0].getsockname()[1]
    finally:
        listening.close()


def answering(frame: bytes, unit: int | None = None, tid: int | None = None) -> bytes:
    """The answer of one register, 7, to a read of one register in ``frame``."""
    head = (frame[:2] if tid is None else tid.to_bytes(2, "big")) + b"\x00\x00\x00\x05"
    return head + bytes([frame[6] if unit is None else unit]) + b"\x03\x02\x00\x07"


@asynccontextmanager
async def client(
    port: int, silence: int = MAX_NO_RESPONSES
) -> AsyncIterator[tuple[MbapClient, list[bool]]]:
    lost: list[bool] = []
    modbus = MbapClient(lambda sending, data: data, lost.append, silence)
    await modbus.connect("127.0.0.1", port, 1.0)
    try:
        yield modbus, lost
    finally:
        modbus.close()


def test_answers_to_other_requests_or_units_are_not_taken() -> None:
    """A stale transaction id, then another unit with ours, then ours: only ours is taken."""

    def answer(frame: bytes) -> bytes:
        tid = int.from_bytes(frame[:2], "big")
        return answering(frame, tid=tid + 7) + answering(frame, unit=9) + answering(frame)

    async def body() -> None:
        async with server(answer) as port, client(port) as (modbus, _):
            for _ in range(3):
                got = await modbus.transact(1, read_request(3, 0, 1), 1.0)
                assert got is not None
                assert (got.dev_id, list(got.registers)) == (1, [7])

    run(body(), timeout=10)


def nonsense(frame: bytes) -> bytes:
    """A well-framed answer that no decoder can read: 9 register bytes announced, 1 there."""
    return frame[:4] + b"\x00\x04" + frame[6:7] + b"\x03\x09\x00"


@pytest.mark.parametrize(
    ("answer", "error"),
    [(lambda frame: b"", NoAnswer), (nonsense, Garbled)],
    ids=["silence", "nonsense"],
)
def test_the_connection_closes_after_the_fifth_request_in_a_row_without_an_answer(
    answer: Answerer, error: type[Exception]
) -> None:
    """Silence, or answers that make no sense (which pymodbus dropped, letting the request time
    out): five in a row look like a half-open link."""

    async def body() -> None:
        async with server(answer) as port, client(port) as (modbus, lost):
            for _ in range(4):
                with pytest.raises(error):
                    await modbus.transact(1, read_request(3, 0, 1), 0.05)
                assert modbus.connected
            with pytest.raises(error):
                await modbus.transact(1, read_request(3, 0, 1), 0.05)
            assert not modbus.connected
            assert lost == [False]  # said once
            assert await modbus.transact(1, read_request(3, 0, 1), 0.05) is None

    run(body(), timeout=10)


def test_an_answer_in_between_keeps_the_connection_and_silence_can_be_tolerated() -> None:
    silent = {"on": True}

    def answer(frame: bytes) -> bytes:
        return b"" if silent["on"] else answering(frame)

    async def body() -> None:
        async with server(answer) as port, client(port) as (modbus, _):
            for _ in range(3):
                for _ in range(4):
                    with pytest.raises(NoAnswer):
                        await modbus.transact(1, read_request(3, 0, 1), 0.05)
                silent["on"] = False
                assert await modbus.transact(1, read_request(3, 0, 1), 1.0) is not None
                silent["on"] = True
            assert modbus.connected
        async with server(answer) as port, client(port, silence=1 << 30) as (modbus, _):
            for _ in range(8):
                with pytest.raises(NoAnswer):
                    await modbus.transact(1, read_request(3, 0, 1), 0.02)
            assert modbus.connected

    run(body(), timeout=20)


def test_a_connection_lost_during_a_request_ends_it_at_once() -> None:
    def hang_up(frame: bytes) -> bytes:
        raise ConnectionResetError

    async def body() -> None:
        async with server(hang_up) as port, client(port) as (modbus, lost):
            started = asyncio.get_running_loop().time()
            assert await modbus.transact(1, read_request(3, 0, 1), 5.0) is None
            assert asyncio.get_running_loop().time() - started < 5.0
            assert (modbus.connected, lost) == (False, [False])

    run(body(), timeout=10)


def test_a_flood_is_no_answer_and_does_not_cost_the_next_request() -> None:
    floods = [b"\xff" * 5000]

    def answer(frame: bytes) -> bytes:
        return floods.pop() if floods else answering(frame)

    async def body() -> None:
        async with server(answer) as port, client(port) as (modbus, _):
            with pytest.raises(NoAnswer):
                await modbus.transact(1, read_request(3, 0, 1), 0.2)
            got = await modbus.transact(1, read_request(3, 0, 1), 1.0)
            assert got is not None
            assert list(got.registers) == [7]

    run(body(), timeout=10)


def test_each_request_has_its_own_timeout_however_the_one_before_ended() -> None:
    """One timer watches the requests: a request answered at once leaves it set for its own
    (long) timeout; the next, unanswered, must still end at its own, shorter one (the bound is
    generous: it tells 0.05 s from the 5 s that was left of the timer)."""
    answers = [True]

    def answer(frame: bytes) -> bytes:
        return answering(frame) if answers and answers.pop() else b""

    async def body() -> None:
        async with server(answer) as port, client(port) as (modbus, _):
            loop = asyncio.get_running_loop()
            assert await modbus.transact(1, read_request(3, 0, 1), 5.0) is not None
            for timeout in (0.05, 0.2, 0.05):
                started = loop.time()
                with pytest.raises(NoAnswer):
                    await modbus.transact(1, read_request(3, 0, 1), timeout)
                assert timeout <= loop.time() - started < 2.5

    run(body(), timeout=10)


def test_an_answer_with_transaction_id_0_is_taken_as_pymodbus_takes_it() -> None:
    """Some gateways and meters answer every request with transaction id 0."""

    async def body() -> None:
        async with (
            server(lambda frame: answering(frame, tid=0)) as port,
            client(port) as (
                modbus,
                _,
            ),
        ):
            for _ in range(3):
                got = await modbus.transact(1, read_request(3, 0, 1), 1.0)
                assert got is not None
                assert list(got.registers) == [7]

    run(body(), timeout=10)


def test_an_exception_whose_length_leaves_out_its_code_is_taken() -> None:
    """pymodbus's quirk, kept: an MBAP length of 2 (unit, function) with the code after it."""

    def answer(frame: bytes) -> bytes:
        return frame[:4] + b"\x00\x02" + frame[6:7] + b"\x83\x02"

    async def body() -> None:
        async with server(answer) as port, client(port) as (modbus, _):
            got = await modbus.transact(1, read_request(3, 0, 1), 1.0)
            assert got is not None
            assert (got.function_code, got.exception_code) == (0x83, 2)

    run(body(), timeout=10)


def test_a_connect_cancelled_is_cancelled_and_leaves_nothing_open() -> None:
    async def body() -> None:
        async with server(answering) as port:
            lost: list[bool] = []
            modbus = MbapClient(lambda sending, data: data, lost.append)
            connecting = asyncio.ensure_future(modbus.connect("127.0.0.1", port, 5.0))
            await asyncio.sleep(0)
            connecting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await connecting
            assert not modbus.connected

    run(body(), timeout=10)


def test_the_driver_reads_a_unit_answering_only_nonsense_as_it_read_a_dead_one() -> None:
    """Four polls fail (garbled), the fifth finds the connection closed for silence: BusError,
    worded as for a unit that does not answer at all."""

    async def body() -> None:
        async with server(nonsense) as port:
            bus = BusConfig("field", "modbus-tcp", host="127.0.0.1", port=port, timeout=1.0)
            level = ModbusPoint("level", table="holding", address=0, type="uint16")
            meter = DeviceConfig("meter", "field", "modbus", 1.0, unit=1, points=(level,))
            async with ModbusDriver(bus) as driver:
                for _ in range(4):
                    with pytest.raises(DeviceError, match="the answer makes no sense"):
                        await driver.read(meter)
                with pytest.raises(BusError, match="lost: no response while reading device meter"):
                    await driver.read(meter)
            assert driver.counters["meter"] == {"garbled": 4, "bus": 1}

    run(body(), timeout=10)
