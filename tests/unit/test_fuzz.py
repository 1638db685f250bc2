"""Hostile input: random and mutated bytes against the codec and a whole in-memory broker.

1. The parser (server and client side, protocol levels 3, 4, 5) is fed random bytes and
   valid packets of every type that were then mutated, structure-aware (remaining lengths,
   property lengths, string lengths, packet ids, flag bytes) and byte by byte (flips,
   inserts, deletes, truncation, duplication), in random chunkings. Only PacketError may
   escape; a failed parser stays failed and takes no more input; it never holds more than
   it was fed nor sits on a complete packet; whatever it accepts re-encodes to itself.
2. A broker (``task.Clock``, ``StringTransport``) is driven by several connections sending
   random, mutated and valid packets, interleaved with clock advances, acknowledgements,
   full socket buffers and dropped sockets. Nothing escapes ``dataReceived`` or a timer;
   everything the broker writes parses for the client's protocol level; its bookkeeping
   stays consistent; every connection ends up closed or still served; a well-behaved
   client is served correctly afterwards; nothing is left behind once all are gone.
3. A long campaign (3,000 hostile connections) leaves memory where it was.

The hypothesis tests are derandomized and use no example database, so CI runs the same
examples every time; seeded random.Random sweeps beside them add longer scenarios. The
bugs this suite found (now fixed) have their own tests at the end.
"""

from __future__ import annotations

import contextlib
import gc
import random
import sys
import tracemalloc
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from twisted.logger import Logger, formatEvent

from mqtt_twisted.broker.journal import Journal
from mqtt_twisted.broker.session import HARD_LIMIT_FACTOR
from mqtt_twisted.inputgate import LINGER_SECONDS
from mqtt_twisted.packets import (
    MQTT_5,
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    PacketError,
    PacketType,
    Parser,
    PingReq,
    PingResp,
    Property,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    SubscriptionRequest,
    UnsubAck,
    Unsubscribe,
    UnsupportedProtocolVersion,
    Will,
    encode,
    encode_varint,
)
from mqtt_twisted.packets.properties import (
    ALLOWED,
    PROPERTY_TYPES,
    T_BIN,
    T_BYTE,
    T_PAIR,
    T_STR,
    T_U16,
    T_U32,
    T_VARINT,
    WILL,
)
from mqtt_twisted.storage import MemoryStore
from mqtt_twisted.topics import parse_shared_subscription, topic_matches

from .harness import FakeClient, connected, make_broker

# pytest-twisted (installed in this venv) breaks @given combined with parametrize: none here.
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=False,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)

T = PacketType
P = Property
LEVELS = (3, 4, 5)
PROTOCOL_NAME = {3: "MQIsdp", 4: "MQTT", 5: "MQTT"}
MAX_VARINT = 268_435_455
ALL_TYPES = tuple(range(1, 16))
CLIENT_TYPES = (1, 3, 4, 5, 6, 7, 8, 10, 12, 14, 15)
SERVER_TYPES = (2, 3, 4, 5, 6, 7, 9, 11, 13, 14, 15)
# what a connected client mostly sends: publishing and subscribing reach the routing code
CLIENT_MIX = (3, 3, 3, 3, 4, 5, 6, 7, 8, 8, 8, 10, 12, 14, 15, 1)


# --------------------------------------------------------------------------- randomness


class Source:
    """Where the random choices come from: hypothesis (shrinkable) or random.Random (fast)."""

    def int(self, lo: int, hi: int) -> int:
        raise NotImplementedError

    def bytes(self, max_size: int) -> bytes:
        raise NotImplementedError

    def note(self, text: str) -> None:
        pass

    def choice(self, seq: Sequence[Any]) -> Any:
        return seq[self.int(0, len(seq) - 1)]

    def chance(self, n: int) -> bool:
        """True one time in ``n`` (shrinks to False)."""
        return self.int(0, n - 1) == n - 1

    def bool(self) -> bool:
        return self.int(0, 1) == 1


class HypoSource(Source):
    def __init__(self, data: Any) -> None:
        self.data = data

    def int(self, lo: int, hi: int) -> int:
        return self.data.draw(st.integers(lo, hi))

    def bytes(self, max_size: int) -> bytes:
        return self.data.draw(st.binary(max_size=max_size))

    def note(self, text: str) -> None:
        note(text)


class RandomSource(Source):
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def int(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def bytes(self, max_size: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, max_size))


# --------------------------------------------------------------------------- valid packets

TEXTS = ("", "a", "t", "a/b", "é", "€/😀", " ", "x" * 100)
TOPICS = ("t", "t", "a/b", "a/b/c", "$SYS/x", "s/é", "a//b", "/", "x" * 200, "", "+", "a/#")
FILTERS = (
    "t", "#", "+", "a/#", "a/+", "+/+", "+/b/#", "$SYS/#", "/#", "$share/g/t", "$share/g/#",
    "$share/h/a/+", "a/#/b", "a+", "", "$share//t", "$share/g", "$share/g/",
)  # fmt: skip
CLIENT_IDS = ("c1", "c2", "c3", "c1", "", "x" * 23, "y" * 24, "é")
# values worth trying per property (0 and 1, limits, what the broker acts on)
PROPERTY_INTS: dict[int, tuple[int, ...]] = {
    P.TOPIC_ALIAS: (0, 1, 2, 3, 11, 0xFFFF),
    P.RECEIVE_MAXIMUM: (0, 1, 2, 3, 0xFFFF),
    P.MAXIMUM_PACKET_SIZE: (0, 1, 8, 20, 40, 100, 1000, 0xFFFFFFFF),
    P.SESSION_EXPIRY_INTERVAL: (0, 1, 3, 100, 0xFFFFFFFF),
    P.MESSAGE_EXPIRY_INTERVAL: (0, 1, 3, 100, 0xFFFFFFFF),
    P.WILL_DELAY_INTERVAL: (0, 1, 3, 0xFFFFFFFF),
    P.TOPIC_ALIAS_MAXIMUM: (0, 1, 2, 0xFFFF),
    P.PAYLOAD_FORMAT_INDICATOR: (0, 1, 2),
    P.SUBSCRIPTION_IDENTIFIER: (0, 1, 2, 127, 128, MAX_VARINT),
}
TYPE_INTS = {
    T_BYTE: (0, 1, 2, 255),
    T_U16: (0, 1, 2, 0xFFFF),
    T_U32: (0, 1, 0xFFFFFFFF),
    T_VARINT: (0, 1, 128, MAX_VARINT),
}
ALL_PROPERTIES = tuple(sorted(PROPERTY_TYPES))
ALLOWED_SORTED = {where: tuple(sorted(pids)) for where, pids in ALLOWED.items()}


def text(s: Source) -> str:
    """A string: from a pool, or random (control characters, U+0000 included)."""
    if s.chance(4):
        return s.bytes(20).decode("utf-8", "ignore")
    return s.choice(TEXTS)


def topic(s: Source) -> str:
    return text(s) if s.chance(8) else s.choice(TOPICS)


def topic_filter(s: Source) -> str:
    return text(s) if s.chance(8) else s.choice(FILTERS)


def payload(s: Source) -> bytes:
    if s.chance(12):
        return b"\xff" * 400  # above the small Maximum Packet Sizes
    return b"" if s.chance(6) else s.bytes(24)


def packet_id(s: Source) -> int:
    return s.int(1, 0xFFFF) if s.chance(8) else s.int(1, 4)


def property_value(s: Source, pid: int) -> Any:
    ptype = PROPERTY_TYPES[pid]
    if ptype == T_PAIR:
        return [(text(s), text(s)) for _ in range(s.int(1, 2))]
    if ptype == T_STR:
        return text(s)
    if ptype == T_BIN:
        return s.bytes(16)
    value = s.choice(PROPERTY_INTS.get(pid) or TYPE_INTS[ptype])
    return [value] if pid == P.SUBSCRIPTION_IDENTIFIER else value


def properties(s: Source, where: int, level: int) -> dict[int, Any]:
    """Up to 3 MQTT 5 properties, mostly allowed in ``where`` (a packet type or WILL)."""
    if level != MQTT_5 or s.bool():
        return {}
    props: dict[int, Any] = {}
    for _ in range(s.int(1, 3)):
        pool = ALL_PROPERTIES if s.chance(10) else ALLOWED_SORTED[where]
        if pool:
            pid = s.choice(pool)
            props[Property(pid)] = property_value(s, pid)
    return props


def gen_connect(s: Source, level: int) -> Connect:
    name, plevel = PROTOCOL_NAME[level], level
    if s.chance(10):
        name, plevel = s.choice((("MQTT", 3), ("MQIsdp", 4), ("MQTT", 6), ("mqtt", 4), ("", 5)))
    will = None
    if s.chance(3):
        will = Will(topic(s), payload(s), s.int(0, 2), s.chance(4), properties(s, WILL, level))
    username = s.choice((None, None, None, "user", ""))
    password = s.choice((None, None, b"pw"))
    if username is None and level != MQTT_5 and not s.chance(10):
        password = None  # [MQTT-3.1.2-22], mostly
    props = properties(s, T.CONNECT, level)
    if P.AUTHENTICATION_METHOD in props and not s.chance(4):
        del props[P.AUTHENTICATION_METHOD]  # refused: keep most connections accepted
    return Connect(
        s.choice(CLIENT_IDS), plevel, name, not s.chance(3), s.choice((0, 0, 0, 1, 10, 65535)),
        username, password, will, props,
    )  # fmt: skip


def gen_packet(s: Source, ptype: int, level: int) -> Any:
    """A packet of ``ptype`` that encodes at ``level`` (not necessarily one the broker likes)."""
    if ptype == T.CONNECT:
        return gen_connect(s, level)
    if ptype == T.CONNACK:
        code = s.choice((0, 0, 1, 2, 5, 0x80, 0x84, 0x87, 0x9C, 255))
        return ConnAck(s.bool(), code, properties(s, T.CONNACK, level))
    if ptype == T.PUBLISH:
        qos = s.int(0, 2)
        return Publish(
            topic(s), payload(s), qos, s.chance(4), qos > 0 and s.chance(4),
            packet_id(s) if qos else None, properties(s, T.PUBLISH, level),
        )  # fmt: skip
    if ptype in (T.PUBACK, T.PUBREC, T.PUBREL, T.PUBCOMP):
        cls = {T.PUBACK: PubAck, T.PUBREC: PubRec, T.PUBREL: PubRel, T.PUBCOMP: PubComp}[ptype]
        code = s.choice((0, 0, 0, 0x10, 0x80, 0x92, 0x97))
        return cls(packet_id(s), code, properties(s, ptype, level))
    if ptype == T.SUBSCRIBE:
        requests = [
            SubscriptionRequest(topic_filter(s), s.int(0, 2), s.chance(4), s.chance(4), s.int(0, 2))
            for _ in range(0 if s.chance(20) else s.int(1, 3))
        ]
        return Subscribe(packet_id(s), requests, properties(s, T.SUBSCRIBE, level))
    if ptype == T.SUBACK:
        codes = [s.choice((0, 1, 2, 0x80, 0x87, 0x8F)) for _ in range(s.int(1, 3))]
        return SubAck(packet_id(s), codes, properties(s, T.SUBACK, level))
    if ptype == T.UNSUBSCRIBE:
        filters = [topic_filter(s) for _ in range(0 if s.chance(20) else s.int(1, 3))]
        return Unsubscribe(packet_id(s), filters, properties(s, T.UNSUBSCRIBE, level))
    if ptype == T.UNSUBACK:
        codes = [s.choice((0, 0x11, 0x80)) for _ in range(s.int(0, 3))] if level == MQTT_5 else []
        return UnsubAck(packet_id(s), codes, properties(s, T.UNSUBACK, level))
    if ptype == T.PINGREQ:
        return PingReq()
    if ptype == T.PINGRESP:
        return PingResp()
    if ptype == T.DISCONNECT:
        code = s.choice((0, 0, 4, 0x80, 0x81, 0x8E))
        return Disconnect(code, properties(s, T.DISCONNECT, level))
    return Auth(s.choice((0, 0x18, 0x19)), properties(s, T.AUTH, level))


# --------------------------------------------------------------------------- mutations


def _varint_at(buf: bytes, p: int) -> tuple[int, int]:
    """(value, end offset) of the variable byte integer at ``p`` (at most 4 bytes)."""
    value = shift = 0
    start = p
    while True:
        b = buf[p]
        p += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80 or p - start >= 4:
            return value, p
        shift += 7


class _Layout:
    """Walks one encoded packet, noting (kind, offset, size) of its fields."""

    def __init__(self, pkt: bytes) -> None:
        self.pkt = pkt
        self.p = 0
        self.fields: list[tuple[str, int, int]] = []

    def field(self, kind: str, size: int) -> None:
        if self.p + size > len(self.pkt):
            raise IndexError("truncated")
        self.fields.append((kind, self.p, size))
        self.p += size

    def u8(self) -> int:
        value = self.pkt[self.p]
        self.field("byte", 1)
        return value

    def u16(self) -> int:
        value = int.from_bytes(self.pkt[self.p : self.p + 2], "big")
        self.field("u16", 2)
        return value

    def varint(self) -> int:
        value, end = _varint_at(self.pkt, self.p)
        self.field("varint", end - self.p)
        return value

    def string(self) -> None:  # strings and binary data alike
        length = self.u16()  # (not `self.p += self.u16()`: that adds to the old self.p)
        self.p += length

    def properties(self) -> None:
        stop = self.varint() + self.p
        while self.p < stop:
            ptype = PROPERTY_TYPES[self.u8()]
            if ptype == T_BYTE:
                self.u8()
            elif ptype == T_U16:
                self.u16()
            elif ptype == T_U32:
                self.field("u32", 4)
            elif ptype == T_VARINT:
                self.varint()
            elif ptype == T_PAIR:
                self.string()
                self.string()
            else:
                self.string()

    def walk(self, level: int) -> None:
        pkt, v5 = self.pkt, level == MQTT_5
        ptype = self.u8() >> 4
        end = self.varint() + self.p
        if ptype == T.CONNECT:
            self.string()
            self.u8()
            flags = self.u8()
            self.u16()
            if v5:
                self.properties()
            self.string()
            if flags & 0x04:
                if v5:
                    self.properties()
                self.string()
                self.string()
            if flags & 0x80:
                self.string()
            if flags & 0x40:
                self.string()
        elif ptype == T.CONNACK:
            self.u8()
            self.u8()
            if v5:
                self.properties()
        elif ptype == T.PUBLISH:
            self.string()
            if pkt[0] & 0x06:
                self.u16()
            if v5:
                self.properties()
        elif ptype in (T.PUBACK, T.PUBREC, T.PUBREL, T.PUBCOMP):
            self.u16()
            if self.p < end:
                self.u8()
            if self.p < end:
                self.properties()
        elif ptype in (T.SUBSCRIBE, T.SUBACK, T.UNSUBSCRIBE, T.UNSUBACK):
            self.u16()
            if v5:
                self.properties()
            while self.p < end:
                if ptype in (T.SUBSCRIBE, T.UNSUBSCRIBE):
                    self.string()
                if ptype != T.UNSUBSCRIBE:
                    self.u8()
        elif ptype in (T.DISCONNECT, T.AUTH):
            if self.p < end:
                self.u8()
            if self.p < end:
                self.properties()


def layout(pkt: bytes, level: int) -> list[tuple[str, int, int]]:
    """The fields of one encoded packet; for a damaged one, those found before the damage."""
    walker = _Layout(pkt)
    with contextlib.suppress(IndexError, KeyError):
        walker.walk(level)
    return walker.fields


def mutate_field(s: Source, pkt: bytes, level: int) -> bytes:
    """Change one field: a remaining length, property length, string length, id, flag byte."""
    fields = layout(pkt, level)
    if not fields:
        return pkt
    kind, off, size = s.choice(fields)
    old = pkt[off : off + size]
    if kind == "varint":
        value = _varint_at(old, 0)[0]
        value = s.choice(
            (value - 1, value + 1, value + s.int(2, 500), value - s.int(2, 500), 0, 1, 127, 128,
             16383, 16384, 2_097_152, MAX_VARINT, s.int(0, MAX_VARINT))
        )  # fmt: skip
        new = encode_varint(min(max(value, 0), MAX_VARINT))
        style = s.int(0, 5)
        if style == 1 and len(new) < 4:
            new = new[:-1] + bytes((new[-1] | 0x80, 0))  # same value, not minimally encoded
        elif style == 2:
            new = b"\xff\xff\xff\xff\x7f"  # five bytes
        elif style == 3:
            new = bytes(b | 0x80 for b in new)  # never terminated
    elif kind == "u16":
        value = int.from_bytes(old, "big")
        value = s.choice(
            (0, 1, value - 1, value + 1, value + s.int(2, 300), 0x7FFF, 0x8000, 0xFFFF,
             s.int(0, 0xFFFF))
        )  # fmt: skip
        new = (value % 0x10000).to_bytes(2, "big")
    elif kind == "u32":
        new = s.choice((b"\0\0\0\0", b"\0\0\0\x01", b"\xff\xff\xff\xff", s.bytes(4).ljust(4, b"?")))
    else:
        b = old[0]
        new = bytes((s.choice((b ^ (1 << s.int(0, 7)), s.int(0, 255), 0, 0xFF, b ^ 0x80)),))
    return pkt[:off] + new + pkt[off + size :]


def mutate_bytes(s: Source, wire: bytes) -> bytes:
    """Flip, overwrite, insert, delete, duplicate, truncate or append bytes."""
    n = len(wire)
    i = s.int(0, n)
    op = s.int(0, 6)
    if n and op <= 1:
        i = min(i, n - 1)
        new = wire[i] ^ (1 << s.int(0, 7)) if op == 0 else s.int(0, 255)
        return wire[:i] + bytes((new,)) + wire[i + 1 :]
    if op == 2:
        return wire[:i] + s.bytes(8) + wire[i:]
    if op == 3:
        return wire[:i] + wire[i + s.int(1, 16) :]
    if op == 4:
        return wire[:i] + wire[i : i + s.int(1, 32)] + wire[i:]
    if op == 5:
        return wire[:i]
    return wire + s.bytes(16)


def mutate(s: Source, packets: list[bytes], level: int) -> bytes:
    """1 to 3 mutations, two thirds of them structure-aware, of a stream of packets."""
    packets = list(packets)
    for _ in range(s.int(1, 3)):
        if packets and not s.chance(3):
            i = s.int(0, len(packets) - 1)
            packets[i] = mutate_field(s, packets[i], level)
        else:
            packets = [mutate_bytes(s, b"".join(packets))]
    return b"".join(packets)


def chunked(s: Source, data: bytes) -> list[bytes]:
    """``data`` cut in pieces: whole, byte by byte, or at random points."""
    mode = s.int(0, 3)
    if mode == 0 or len(data) < 2:
        return [data]
    if mode == 1 and len(data) <= 300:
        return [data[i : i + 1] for i in range(len(data))]
    cuts = sorted({s.int(1, len(data) - 1) for _ in range(s.int(1, 6))})
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


# --------------------------------------------------------------------------- 1. the parser


def assert_no_complete_packet_left(parser: Parser) -> None:
    """A parser that returned None holds at most the beginning of one packet."""
    rest = bytes(parser._buf[parser._pos :])
    if len(rest) < 2:
        return
    for i in range(1, min(len(rest), 5)):
        if not rest[i] & 0x80:
            total = i + 1 + _varint_at(rest, 1)[0]
            assert len(rest) < total, f"a complete packet is left in the parser: {rest!r}"
            return


def ends_mid_packet(parser: Parser) -> bool:
    """Whether the bytes a parser holds end in an incomplete packet (complete ones before
    it may be waiting too: a held connection's)."""
    buf, i = bytes(parser._buf), parser._pos
    while i < len(buf):
        header = buf[i + 1 : i + 5]
        ends = [n for n, b in enumerate(header) if not b & 0x80]
        if not ends:
            return True
        total = 2 + ends[0] + _varint_at(buf, i + 1)[0]
        if i + total > len(buf):
            return True
        i += total
    return False


def assert_reencodes(packet: Any, level: int | None, client_side: bool) -> None:
    """What the parser accepted is a valid packet: it encodes to bytes that decode to it."""
    if isinstance(packet, Connect):
        level = packet.protocol_level
        parser = Parser(level, client_side=True) if client_side else Parser()
    else:
        assert level is not None
        parser = Parser(level, client_side=client_side)
    parser.feed(encode(packet, level))
    assert parser.next_packet() == packet
    assert parser.next_packet() is None


def run_parser(parser: Parser, chunks: list[bytes]) -> tuple[list[Any], PacketError | None]:
    """Feed ``chunks`` one by one, draining packets after each; check the invariants."""
    packets: list[Any] = []
    error: PacketError | None = None
    for chunk in chunks:
        held = parser.buffered
        parser.feed(chunk)
        if error is not None:  # a failed parser stays failed and takes no more input
            assert parser.buffered == held
            with pytest.raises(PacketError) as again:
                parser.next_packet()
            assert again.value.reason_code == error.reason_code
            continue
        assert parser.buffered == held + len(chunk)
        try:
            while True:
                level = parser.protocol_level
                packet = parser.next_packet()
                if packet is None:
                    break
                packets.append(packet)
                assert_reencodes(packet, level, parser.client_side)
        except PacketError as e:  # the only exception allowed out
            error = e
            assert not e.message.startswith("internal"), f"decoder bug caught by the net: {e!r}"
            assert 0x80 <= int(e.reason_code) <= 0xA2, e
            for _ in range(2):
                with pytest.raises(PacketError):
                    parser.next_packet()
        else:
            assert_no_complete_packet_left(parser)
        # never more than it was given: what it held, plus this chunk
        assert len(parser._buf) <= held + len(chunk)
    return packets, error


def new_parser(s: Source, level: int, client_side: bool, connected: bool) -> Parser:
    limit = s.choice((1, 2, 5, 64, 1000)) if s.chance(6) else None
    if client_side:
        return Parser(level, limit, client_side=True)
    return Parser(level if connected else None, limit)


@settings(FUZZ, max_examples=400)
@given(st.data())
def test_parser_random_bytes(data: Any) -> None:
    """Random bytes, alone or after a valid CONNECT, on either side and at every level."""
    s = HypoSource(data)
    level = s.choice(LEVELS)
    client_side = s.bool()
    raw = s.bytes(300)
    after_connect = not client_side and s.bool()
    if after_connect:
        raw = encode(gen_connect(s, level), level) + raw
    parser = new_parser(s, level, client_side, connected=not after_connect and s.bool())
    run_parser(parser, chunked(s, raw))


@settings(FUZZ, max_examples=500)
@given(st.data())
def test_parser_mutated_packets(data: Any) -> None:
    """Streams of valid packets (a few of the wrong direction), mutated, in random chunks."""
    s = HypoSource(data)
    level = s.choice(LEVELS)
    client_side = s.bool()
    packets = []
    if not client_side and not s.chance(4):
        packets.append(gen_connect(s, level))
    # without a CONNECT first, a server-side parser is mostly past it already
    connected = not packets and not s.chance(4)
    for _ in range(s.int(0 if packets else 1, 4)):
        ptype = (
            s.choice(ALL_TYPES)
            if s.chance(8)
            else s.choice(SERVER_TYPES if client_side else CLIENT_TYPES)
        )
        packets.append(gen_packet(s, ptype, level))
    wire = mutate(s, [encode(p, level) for p in packets], level)
    run_parser(new_parser(s, level, client_side, connected), chunked(s, wire))


def test_parser_every_type_every_level_mutated() -> None:
    """Each packet type at each level, to each side, mutated 80 times (fixed seed): mutants
    of the packets a side may receive are both accepted and refused, so the mutations
    reach the decoders rather than stopping at the fixed header."""
    s = RandomSource(20240611)
    outcomes: Counter[tuple[int, int, bool, bool]] = Counter()
    for level in LEVELS:
        for ptype in ALL_TYPES:
            for client_side in (False, True):
                for _ in range(80):
                    wire = mutate(s, [encode(gen_packet(s, ptype, level), level)], level)
                    if client_side:
                        parser = Parser(level, client_side=True)
                    else:
                        parser = Parser(None if ptype == T.CONNECT else level)
                    packets, error = run_parser(parser, chunked(s, wire))
                    outcomes[(level, ptype, client_side, error is None)] += 1
    for level in LEVELS:
        for client_side, types in ((False, CLIENT_TYPES), (True, SERVER_TYPES)):
            for ptype in types:
                if ptype == T.AUTH and level != MQTT_5:
                    continue
                if ptype == T.DISCONNECT and client_side and level != MQTT_5:
                    continue
                key = (level, ptype, client_side)
                assert outcomes[(*key, True)] and outcomes[(*key, False)], (key, outcomes)


# --------------------------------------------------------------------------- 2. a broker


@contextlib.contextmanager
def watched_logs() -> Iterator[list[str]]:
    """Route the mqtt_twisted loggers to an observer that formats every event (as a log
    file would) and keeps those that fail to format or carry a caught exception.

    (Unobserved, Twisted buffers up to 64k events until logging begins: that would look
    like memory growth in the campaign.)"""
    problems: list[str] = []

    def observe(event: dict) -> None:
        line = formatEvent(event)
        if line.startswith("Unable to format event"):
            problems.append(line)
        failure = event.get("log_failure")
        if failure is not None:
            problems.append(f"{line}\n{failure.getTraceback()}")

    patched = []
    for name, module in list(sys.modules.items()):
        log = getattr(module, "log", None)
        if name.startswith("mqtt_twisted") and isinstance(log, Logger):
            patched.append((module, log))
            module.log = Logger(namespace=log.namespace, observer=observe)  # type: ignore[attr-defined]
    try:
        yield problems
    finally:
        for module, log in patched:
            module.log = log  # type: ignore[attr-defined]


class Conn:
    """One connection as its client sees it: what it sent, read, and still owes."""

    def __init__(self, world: World, level: int) -> None:
        self.world = world
        self.client = FakeClient(world.broker, level)
        self.protocol = self.client.protocol
        self.transport = self.client.transport
        self.level = level
        self.number = world.opened
        self.lost = False
        self.sent_connect = False
        self.reader: Parser | None = None
        #: acknowledgements the client owes the broker (PUBACK, PUBREC, PUBREL, PUBCOMP)
        self.owed: list[Any] = []
        self.inbox: list[Any] = []
        self.pingresps = 0

    def __repr__(self) -> str:
        p = self.protocol
        return (
            f"<conn {self.number} level {self.level}: lost {self.lost}, closing "
            f"{self.transport.disconnecting}, ended {p._ended}, session {p.session!r}, "
            f"held by {getattr(p._input, 'held_by', None)}, buffered {p._parser.buffered}>"
        )

    @property
    def closed(self) -> bool:
        return self.lost or self.transport.disconnecting

    def send(self, data: bytes, chunks: list[bytes] | None = None) -> None:
        for chunk in chunks or [data]:
            if self.lost:
                return
            self.protocol.dataReceived(chunk)

    def send_packet(self, packet: Any) -> None:
        self.send(encode(packet, self.protocol.protocol_level))

    def read(self) -> list[Any]:
        """Parse what the broker wrote, as a client of the negotiated level would."""
        data = self.transport.value()
        if not data:
            return []
        self.transport.clear()
        level = self.protocol.protocol_level
        if self.reader is None:
            self.reader = Parser(level, client_side=True)
        self.reader.feed(data)
        out = []
        try:
            while (packet := self.reader.next_packet()) is not None:
                out.append(packet)
        except PacketError as e:
            message = f"{self}: the broker wrote what a client cannot parse: {e!r}"
            raise AssertionError(message) from e
        limit = self.protocol.max_packet_size
        for packet in out:
            if isinstance(packet, Publish):
                if limit is not None:  # [MQTT-3.1.2-24]
                    assert len(encode(packet, level)) <= limit, (self, packet)
                if packet.qos == 1:
                    self.owed.append(PubAck(packet.packet_id))
                elif packet.qos == 2:
                    self.owed.append(PubRec(packet.packet_id))
            elif isinstance(packet, PubRec) and packet.reason_code < 0x80:
                self.owed.append(PubRel(packet.packet_id))
            elif isinstance(packet, PubRel):
                self.owed.append(PubComp(packet.packet_id))
            elif isinstance(packet, PingResp):
                self.pingresps += 1
        if self.world.keep_inbox:
            self.inbox.extend(out)
        return out

    def acknowledge(self) -> None:
        owed, self.owed = self.owed, []
        for packet in owed:
            self.send_packet(packet)

    def toggle_pause(self) -> None:
        """The client stops (or resumes) reading: its socket buffer fills (or drains)."""
        if self.transport.producer is self.protocol:  # registered until the broker closes it
            if self.protocol.paused:
                self.protocol.resumeProducing()
            else:
                self.protocol.pauseProducing()

    def lose(self) -> None:
        if not self.lost:
            self.lost = True
            self.transport.connected = False
            self.protocol.connectionLost(None)


class World:
    """A broker and the connections driving it, with the bookkeeping the checks need."""

    MAX_LIVE = 6

    def __init__(self, broker: Any, clock: Any, track: bool = True) -> None:
        self.broker = broker
        self.clock = clock
        self.conns: list[Conn] = []
        self.opened = 0
        self.track = track
        self.keep_inbox = track
        self.accepted_ids: set[str] = set()
        #: publishing connections -> their session
        self.publishers: dict[int, Any] = {}
        #: per session: 1 + the most shared subscriptions it had (routes a message may take)
        self.routes: dict[Any, int] = {}
        if track:
            self._instrument()

    def _instrument(self) -> None:
        broker = self.broker
        publish = broker.publish

        def counted_publish(message: Any, origin: Any = None) -> bool:
            if origin is not None:
                self.publishers[id(origin.connection)] = origin
            return publish(message, origin)

        broker.publish = counted_publish

    # -- actions --------------------------------------------------------------------------

    def live(self) -> list[Conn]:
        return [c for c in self.conns if not c.lost]

    def open(self, level: int) -> Conn:
        self.opened += 1
        conn = Conn(self, level)
        self.conns.append(conn)
        return conn

    def hostile_bytes(self, s: Source, conn: Conn) -> bytes:
        """Random bytes, or a few packets (a CONNECT first if none was sent), maybe mutated."""
        if s.chance(12):
            return s.bytes(48)
        protocol = conn.protocol
        level = protocol.protocol_level if protocol.session is not None else conn.level
        encoded = []
        if not conn.sent_connect and not s.chance(6):
            encoded.append(encode(gen_connect(s, conn.level), conn.level))
            conn.sent_connect = True
        if s.chance(5):  # a burst to a popular topic: fills queues, holds publishers
            name, qos, first = s.choice(("t", "a/b", "t")), s.int(0, 2), s.int(1, 1000)
            for i in range(s.int(5, 40)):
                burst = Publish(name, b"%d" % i, qos, packet_id=first + i if qos else None)
                encoded.append(encode(burst, level))
            return b"".join(encoded)
        for _ in range(s.int(0 if encoded else 1, 3)):
            ptype = s.choice(ALL_TYPES) if s.chance(10) else s.choice(CLIENT_MIX)
            at = s.choice(LEVELS) if s.chance(16) else level
            encoded.append(encode(gen_packet(s, ptype, at), at))
        if s.chance(4):
            return mutate(s, encoded, level)
        return b"".join(encoded)

    def send(self, s: Source, conn: Conn) -> None:
        data = self.hostile_bytes(s, conn)
        s.note(f"conn {conn.number} <- {data!r}")
        conn.send(data, chunked(s, data))

    def step(self, s: Source) -> None:
        """One random action."""
        live = self.live()
        action = s.int(0, 15)
        if not live or (action == 0 and len(live) < self.MAX_LIVE):
            level = s.choice(LEVELS)
            s.note(f"open conn {self.opened + 1} (level {level})")
            self.open(level)
        elif action <= 7:
            self.send(s, s.choice(live))
        elif action <= 9:
            conn = s.choice(live)
            s.note(f"conn {conn.number} acknowledges {conn.owed}")
            conn.acknowledge()
        elif action <= 11:
            seconds = s.choice((0, 0.05, 0.3, 1.0, 2.5, 12.0, 100.0))
            s.note(f"clock + {seconds}")
            self.clock.advance(seconds)
        elif action == 12:
            conn = s.choice(live)
            s.note(f"conn {conn.number} toggles its socket buffer full / drained")
            conn.toggle_pause()
        elif action >= 14:
            self.fan_in(s, s.choice(live), s.choice(live))
        else:
            conn = s.choice(live)
            s.note(f"conn {conn.number} loses its socket")
            conn.lose()
        self.after_step(s)

    def fan_in(self, s: Source, subscriber: Conn, publisher: Conn) -> None:
        """One connection subscribes to "t", another (or the same) publishes a burst to it:
        queues fill, the publisher is held, the subscriber may turn slow."""
        qos = s.int(0, 2)
        s.note(f"conn {subscriber.number} subscribes to t (QoS {qos}), {publisher.number} bursts")
        for conn, data in (
            (subscriber, Subscribe(packet_id(s), [SubscriptionRequest("t", qos)])),
            (publisher, Publish("t", b"burst", s.int(0, 2), packet_id=0)),
        ):
            if conn.lost or conn.protocol.session is None:
                return
            if isinstance(data, Publish):
                first = s.int(1, 1000)
                packets = [
                    Publish("t", b"%d" % i, data.qos, packet_id=first + i if data.qos else None)
                    for i in range(s.int(5, 40))
                ]
            else:
                packets = [data]
            level = conn.protocol.protocol_level
            wire = b"".join(encode(packet, level) for packet in packets)
            conn.send(wire, chunked(s, wire))

    def after_step(self, s: Source | None = None) -> None:
        """Read every output; a connection the broker closed is lost (as the reactor would,
        sometimes only later: then the broker's abort timer runs)."""
        for conn in self.conns:
            if conn.lost:
                continue
            conn.read()
            if conn.transport.disconnecting and (s is None or not s.chance(4)):
                conn.lose()
            session = conn.protocol.session
            if session is not None and self.track:
                self.accepted_ids.add(session.client_id)
        if self.track:
            for session in self.broker.sessions.values():
                shared = sum(f.startswith("$share/") for f in session.subscriptions)
                self.routes[session] = max(self.routes.get(session, 1), 1 + shared)

    def advance(self, seconds: float, step: float = 0.05) -> None:
        """Let time pass in small steps, as a running reactor would."""
        for _ in range(max(1, round(seconds / step))):
            self.clock.advance(step)
            self.after_step()

    def prune(self) -> None:
        self.conns = [c for c in self.conns if not c.lost]

    # -- checks ---------------------------------------------------------------------------

    def queue_bound(self, session: Any) -> int:
        """Twice the queue limit (room for messages nobody can be held back for: wills,
        retained messages, a client's own), plus one message per other publisher and route
        while it is full (the README's promise)."""
        others = sum(1 for origin in self.publishers.values() if origin is not session)
        routes = self.routes.get(session, 1)
        high = self.broker.config.queue_high_water
        return high * HARD_LIMIT_FACTOR + others * routes

    def check(self) -> None:
        broker, stats = self.broker, self.broker.stats
        sessions = list(broker.sessions.values())
        if self.track:
            assert set(broker.sessions) <= self.accepted_ids
            for session in sessions:
                assert len(session.queue) <= self.queue_bound(session), session
        items = [(s, m) for s in sessions for m in (*s.queue, *s.inflight.values())]
        assert stats.stored_messages == len(items)
        assert stats.stored_bytes == sum(len(m.message.payload) for _, m in items)
        assert stats.clients_slow == sum(s.slow for s in sessions)
        live = self.live()
        open_protocols = {id(c.protocol) for c in live if not c.protocol._ended}
        attached = [s for s in sessions if s.connection is not None]
        assert broker.connected == len(attached)
        for session in attached:  # no session is left attached to a closed connection
            assert id(session.connection) in open_protocols, session
            assert session.connection.session is session
        for session in sessions:
            if session.flow is not None:
                assert all(id(r) in open_protocols for r in session.flow.holding), session
        held = [c for c in live if c.protocol._input is not None and c.protocol._input.held_by]
        assert stats.connections_held == len(held)
        assert stats.listener_connections.get("unit", 0) == len(live)
        known = {id(s) for s in sessions}
        assert all(id(key) in known for _, key, _ in broker.subscriptions.filters())
        groups = broker.shared.groups.values()
        assert all(id(member) in known for group in groups for member in group.members)

    def check_served(self) -> None:
        """Every connection is closed, or still served: it answers PINGREQ (perhaps only
        once the subscribers holding it back let go), or it is in the middle of a packet
        and waits for the rest; one that never got through CONNECT is closed by the
        connect timeout."""
        config = self.broker.config
        self.advance(LINGER_SECONDS + 0.5)  # closing connections finish lingering
        pinged = {}
        for conn in self.live():
            protocol = conn.protocol
            if protocol.session is None or protocol._ended or ends_mid_packet(protocol._parser):
                continue
            pinged[conn] = conn.pingresps
            conn.send(b"\xc0\x00")
        self.after_step()

        def waiting(conn: Conn) -> bool:
            return not conn.closed and conn.pingresps == pinged[conn]

        for _ in range(round(self.patience() / 0.05)):
            if not any(waiting(c) for c in pinged):
                break
            self.advance(0.05)
        assert not [c for c in pinged if waiting(c)], "connections neither closed nor served"
        self.advance(config.connect_timeout + LINGER_SECONDS + 0.5)
        for conn in self.conns:
            assert conn.closed or conn.protocol.session is not None, conn

    def patience(self) -> float:
        """Seconds within which a connection must be answered or closed: each full
        subscriber may hold it for its grace time in turn; a closing one lingers first."""
        grace = self.broker.config.slow_client_grace
        return (grace + 0.5) * (len(self.broker.sessions) + 2) + LINGER_SECONDS

    def wait_for(self, condition: Any, what: str) -> None:
        for _ in range(round(self.patience() / 0.05)):
            if condition():
                return
            self.advance(0.05)
        assert condition(), what

    def check_good_clients(self, s: Source) -> None:
        """A well-behaved subscriber and publisher: connect, subscribe, QoS 0/1/2 through."""
        max_qos = self.broker.config.max_qos
        sub, pub = self.open(s.choice(LEVELS)), self.open(s.choice(LEVELS))
        for conn, client_id in ((sub, "good-sub"), (pub, "good-pub")):
            conn.send(encode(Connect(client_id, conn.level, PROTOCOL_NAME[conn.level]), conn.level))
            self.wait_for(lambda c=conn: c.inbox, "no CONNACK")
            (connack,) = conn.inbox
            assert isinstance(connack, ConnAck) and connack.return_code == 0, connack
            conn.inbox.clear()
        sub.send_packet(Subscribe(7, [SubscriptionRequest("good/topic", 2)]))
        self.wait_for(lambda: sub.inbox, "no SUBACK")
        assert sub.inbox == [SubAck(7, [min(2, max_qos)])], sub.inbox
        sub.inbox.clear()
        for qos in range(max_qos + 1):
            pub.send_packet(Publish("good/topic", b"good %d" % qos, qos, packet_id=qos or None))

        def delivered() -> bool:
            sub.acknowledge()
            pub.acknowledge()
            received = [p for p in sub.inbox if isinstance(p, Publish)]
            completed = [p for p in pub.inbox if isinstance(p, PubAck | PubComp)]
            return len(received) == max_qos + 1 and len(completed) == max_qos

        self.wait_for(delivered, f"not delivered: sub got {sub.inbox}, pub got {pub.inbox}")
        received = [p for p in sub.inbox if isinstance(p, Publish)]
        assert [(p.payload, p.qos) for p in received] == [
            (b"good %d" % q, q) for q in range(max_qos + 1)
        ]

        def completed() -> bool:
            sub.acknowledge()
            sessions = self.broker.sessions
            return not sessions["good-sub"].inflight and not sessions["good-pub"].awaiting_pubrel

        self.wait_for(completed, "QoS 2 flows not completed")
        assert not sub.closed and not pub.closed

    def check_nothing_left(self) -> None:
        """Once every connection is gone and every expiry passed: no connection state, no
        timer, only sessions that never expire."""
        for conn in self.conns:
            conn.lose()
        for _ in range(3):
            self.clock.advance(10**10)
        broker = self.broker
        assert broker.connected == 0
        assert not self.clock.getDelayedCalls(), self.clock.getDelayedCalls()
        for session in broker.sessions.values():
            assert session.expiry_interval is None, session
            assert broker.config.persistent_client_expiration is None
            assert session.connection is None and session.flow is None and not session.slow
        assert broker.stats.connections_held == 0
        assert broker.stats.listener_connections.get("unit", 0) == 0
        self.check()


def broker_config(s: Source) -> dict[str, Any]:
    return {
        "max_queued_messages": s.choice((1, 3, 10)),
        "max_inflight_messages": s.choice((1, 2, 20)),
        "max_queued_bytes": s.choice((0, 0, 100)),
        "slow_client_grace": s.choice((0.0, 0.2, 1.0)),
        "max_packet_size": s.choice((300, 5000, 2_000_000)),
        "max_qos": s.choice((2, 2, 1, 0)),
        "retain_available": not s.chance(4),
        "allow_zero_length_clientid": not s.chance(4),
        "max_keepalive": s.choice((65535, 65535, 60)),
        "connect_timeout": s.choice((10.0, 1.0)),
        "persistent_client_expiration": s.choice((None, 5.0)),
        "max_topic_alias": s.choice((10, 0, 2)),
        "max_topic_alias_broker": s.choice((10, 0, 1)),
    }


def check_store(broker: Any, store: MemoryStore) -> None:
    """What the store holds once the journal committed is exactly the durable part of the
    live broker: every persistent session with its subscriptions, its QoS 1/2 messages
    (queued, or in flight with packet id and PUBREL state) and incoming QoS 2 ids; no row
    of an ended session; no message nobody refers to; the retained messages."""
    broker.journal._commit()  # the batch of this step (MemoryStore commits at once)
    referenced = {d.message_id for d in store.deliveries.values()}
    assert set(store.messages) == referenced, "orphan or missing message rows"
    snap = store.load()
    persistent = {cid: x for cid, x in broker.sessions.items() if x.journal is not None}
    assert set(snap.sessions) == set(persistent)
    for cid, session in persistent.items():
        stored_subs = {
            r.topic_filter: (r.qos, r.no_local, r.retain_as_published, r.retain_handling)
            + (r.subscription_id,)
            for r in snap.subscriptions.get(cid, [])
        }
        assert stored_subs == {f: attrs.astuple(o) for f, o in session.subscriptions.items()}
        assert snap.inbound.get(cid, set()) == session.awaiting_pubrel, cid
        live = {
            item.seq: (item.message.payload, item.qos, None, False)
            for item in session.queue
            if item.qos
        }
        for packet_id, entry in session.inflight.items():
            live[entry.seq] = (entry.message.payload, entry.qos, packet_id, entry.released)
        assert 0 not in live, "a QoS 1/2 message of a persistent session not stored"
        stored = {
            d.seq: (snap.messages[d.message_id].payload, d.qos, d.packet_id, d.released)
            for d in snap.deliveries.get(cid, [])
        }
        assert stored == live, cid
    assert {r.topic for r in snap.retained} == {t for t, _ in broker.retained.match("#")}


def hostile_scenario(s: Source, steps: int, persistent: bool = False) -> None:
    """A broker with a random configuration, ``steps`` random actions (each followed by
    the bookkeeping checks), then: all closed or served, good clients served, nothing left.
    ``persistent``: with a store, whose contents are checked against the broker too."""
    config = broker_config(s)
    s.note(f"config {config}")
    broker, clock = make_broker(**config)
    store = MemoryStore()
    if persistent:
        broker.journal = Journal(store, clock)
    world = World(broker, clock)

    def check() -> None:
        world.check()
        if persistent:
            check_store(broker, store)

    with watched_logs() as problems:
        for _ in range(s.int(1, steps)):
            world.step(s)
            check()
        world.check_served()
        check()
        world.check_good_clients(s)
        check()
        world.check_nothing_left()
        check()
    assert not problems, problems


@settings(FUZZ, max_examples=300)
@given(st.data())
def test_broker_survives_hostile_connections(data: Any) -> None:
    """Shrinkable: a failure is reported as a short script of actions (see its notes)."""
    hostile_scenario(HypoSource(data), 30)


@settings(FUZZ, max_examples=150)
@given(st.data())
def test_store_matches_the_broker_under_hostile_connections(data: Any) -> None:
    """The same hostile scenarios with a store: after every step the store holds exactly
    the broker's durable state (see check_store)."""
    hostile_scenario(HypoSource(data), 30, persistent=True)


def test_store_matches_the_broker_under_hostile_connections_seeded() -> None:
    for seed in range(150):
        try:
            hostile_scenario(RandomSource(seed), 60, persistent=True)
        except Exception as e:
            raise AssertionError(f"seed {seed}: {e}") from e


def test_broker_survives_hostile_connections_seeded() -> None:
    """Longer scenarios from fixed seeds: more of them reach full queues and held
    publishers than hypothesis's (smaller) examples do. A failing seed replays with
    ``hostile_scenario(RandomSource(seed), 60)``."""
    for seed in range(400):
        try:
            hostile_scenario(RandomSource(seed), 60)
        except Exception as e:
            raise AssertionError(f"seed {seed}: {e}") from e


# --------------------------------------------------------------------------- 3. memory


def campaign(world: World, s: Source, connections: int) -> None:
    """``connections`` hostile connections, each sending a few random packets, at most 12
    open at once, with acknowledgements, full buffers and time passing in between."""
    for n in range(connections):
        conn = world.open(s.choice(LEVELS))
        for _ in range(s.int(1, 4)):
            world.send(s, conn)
            if s.chance(3):
                other = s.choice(world.live() or [conn])
                action = s.int(0, 3)
                if action == 0:
                    other.acknowledge()
                elif action == 1:
                    other.toggle_pause()
                else:
                    world.clock.advance(s.choice((0, 0.05, 0.5, 3.0)))
            world.after_step(s)
        live = world.live()
        if len(live) > 12 or s.chance(3):
            s.choice(live or [conn]).lose()
        world.prune()
        if n % 250 == 0:
            world.check()


def test_memory_after_hostile_campaign_is_back_where_it_was() -> None:
    """3,000 hostile connections: afterwards (clients dropped, sessions expired, garbage
    collected) the broker holds no more than 2 MiB more than before."""
    broker, clock = make_broker(
        persistent_client_expiration=30.0,
        max_queued_messages=10,
        max_inflight_messages=5,
        slow_client_grace=0.5,
        connect_timeout=5.0,
    )
    world = World(broker, clock, track=False)

    def settle() -> None:
        for conn in world.conns:
            conn.lose()
        world.prune()
        for _ in range(3):
            clock.advance(100)
        gc.collect()

    with watched_logs() as problems:
        campaign(world, RandomSource(1), 300)  # warm up: lazily built caches, interned names
        settle()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            campaign(world, RandomSource(2), 3000)
            settle()
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
    assert not problems, problems[:3]
    assert world.opened == 3300
    assert broker.sessions == {} and broker.connected == 0
    assert not clock.getDelayedCalls()
    assert broker.stats.stored_messages == 0 and broker.stats.stored_bytes == 0
    assert len(broker.subscriptions) == 0 and not broker.shared.groups
    assert after - before < 2 * 1024 * 1024, f"{(after - before) / 1024:.0f} KiB more"


# ----------------------------------------------------- bugs this suite found (fixed)

# A Reason String quotes the client's text with repr(): 16,400 control characters become
# 65,600, more than an MQTT string holds (65,535 bytes), and encoding it raises.
LONG_REPR = "\x01" * 16_400


def test_v5_violation_quoting_long_client_text_closes_cleanly() -> None:
    broker, clock = make_broker()
    client = connected(broker, "victim", level=5)
    client.send(Publish("+" + LONG_REPR))  # a wildcard in a topic name: DISCONNECT 0x90
    assert client.closes_after_linger(clock)


def test_v5_violation_quoting_long_client_text_does_not_leak_the_session() -> None:
    broker, clock = make_broker()
    client = connected(broker, "victim", level=5)
    with contextlib.suppress(PacketError):  # Twisted would log it and drop the connection
        client.send(Publish("+" + LONG_REPR))
    client.lose()
    assert broker.connected == 0
    assert "victim" not in broker.sessions


def test_unsupported_protocol_with_long_name_is_refused_cleanly() -> None:
    broker, clock = make_broker()
    client = FakeClient(broker, level=5)
    client.send(Connect("c", 5, LONG_REPR))
    assert client.closes_after_linger(clock)


def test_own_messages_do_not_grow_a_queue_without_bound() -> None:
    broker, clock = make_broker(max_queued_messages=4, max_inflight_messages=1)
    client = connected(broker, "loop")
    client.send(Subscribe(1, [SubscriptionRequest("t", 1)]))
    next_id = 1
    for _ in range(50):  # 2 s: 20 PUBLISHes to itself, then it acknowledges what it got
        for _ in range(20):
            client.send(Publish("t", b"x", qos=1, packet_id=next_id))
            next_id += 1
        clock.advance(0.04)
        for packet in client.received():
            if isinstance(packet, Publish):
                client.send(PubAck(packet.packet_id))
    # nobody can be held back for its own messages: they may use a second limit's worth of
    # room (HARD_LIMIT_FACTOR), then they are dropped (was about 950)
    assert len(broker.sessions["loop"].queue) <= 2 * 4


def test_resubscribing_does_not_grow_a_queue_past_its_limit() -> None:
    broker, clock = make_broker(max_queued_messages=4)
    publisher = connected(broker, "p")
    for i in range(50):
        publisher.send(Publish(f"r/{i}", b"x", retain=True))
    client = connected(broker, "s")
    client.protocol.pauseProducing()  # its socket buffer is full
    for i in range(20):
        client.send(Subscribe(i + 1, [SubscriptionRequest("r/#", 0)]))
    assert len(broker.sessions["s"].queue) <= 2 * 4  # was 1000


def test_second_connect_with_unsupported_version_is_a_protocol_error() -> None:
    broker, clock = make_broker()
    watcher = connected(broker, "watcher")
    watcher.send(Subscribe(1, [SubscriptionRequest("will", 0)]))
    watcher.received()
    client = connected(broker, "c", level=5, will=Will("will", b"gone"))
    client.send_bytes(encode(Connect("c", 6, "MQTT"), 5))
    out = client.transport.value()
    assert out[:1] == b"\xe0" and out[2] == 0x82, out  # DISCONNECT 0x82 (was a CONNACK)
    assert client.closes_after_linger(clock)
    assert [p.payload for p in watcher.received()] == [b"gone"]
