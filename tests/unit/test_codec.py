"""Property tests for mqtt_twisted.packets: round trips, chunking, fast path, fuzzing."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mqtt_twisted.packets import (
    MQTT_3_1,
    MQTT_3_1_1,
    MQTT_5,
    Auth,
    ConnAck,
    ConnackCode,
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
    ReasonCode,
    SubAck,
    Subscribe,
    SubscriptionRequest,
    UnsubAck,
    Unsubscribe,
    Will,
    encode,
    encode_publish_parts,
    encode_varint,
)
from mqtt_twisted.packets.properties import ALLOWED, WILL

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LEVELS = (MQTT_3_1, MQTT_3_1_1, MQTT_5)

# --------------------------------------------------------------------------- strategies

text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12)
binary = st.binary(max_size=24)
packet_ids = st.integers(1, 0xFFFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
zero_one = st.integers(0, 1)
P = Property
# A strategy for every property's value (spec 2.2.2.2), restricted to legal values.
PROPERTY_VALUES: dict[int, st.SearchStrategy[Any]] = {
    P.PAYLOAD_FORMAT_INDICATOR: zero_one,
    P.MESSAGE_EXPIRY_INTERVAL: u32,
    P.CONTENT_TYPE: text,
    P.RESPONSE_TOPIC: text,
    P.CORRELATION_DATA: binary,
    P.SESSION_EXPIRY_INTERVAL: u32,
    P.ASSIGNED_CLIENT_IDENTIFIER: text,
    P.SERVER_KEEP_ALIVE: u16,
    P.AUTHENTICATION_METHOD: text,
    P.AUTHENTICATION_DATA: binary,
    P.REQUEST_PROBLEM_INFORMATION: zero_one,
    P.WILL_DELAY_INTERVAL: u32,
    P.REQUEST_RESPONSE_INFORMATION: zero_one,
    P.RESPONSE_INFORMATION: text,
    P.SERVER_REFERENCE: text,
    P.REASON_STRING: text,
    P.RECEIVE_MAXIMUM: st.integers(1, 0xFFFF),
    P.TOPIC_ALIAS_MAXIMUM: u16,
    P.TOPIC_ALIAS: st.integers(1, 0xFFFF),
    P.MAXIMUM_QOS: zero_one,
    P.RETAIN_AVAILABLE: zero_one,
    P.USER_PROPERTY: st.lists(st.tuples(text, text), min_size=1, max_size=3),
    P.MAXIMUM_PACKET_SIZE: st.integers(1, 0xFFFFFFFF),
    P.WILDCARD_SUBSCRIPTION_AVAILABLE: zero_one,
    P.SUBSCRIPTION_IDENTIFIER_AVAILABLE: zero_one,
    P.SHARED_SUBSCRIPTION_AVAILABLE: zero_one,
}
SUB_ID = st.integers(1, 268_435_455)


def props(where: int, level: int) -> st.SearchStrategy[dict[int, Any]]:
    """Properties allowed in packet type ``where`` (or WILL), {} outside 5.0."""
    if level != MQTT_5:
        return st.just({})
    optional: dict[int, st.SearchStrategy[Any]] = {}
    for pid in sorted(ALLOWED[where]):
        if pid == P.SUBSCRIPTION_IDENTIFIER:
            n = 3 if where == PacketType.PUBLISH else 1
            optional[Property(pid)] = st.lists(SUB_ID, min_size=1, max_size=n)
        else:
            optional[Property(pid)] = PROPERTY_VALUES[pid]
    return st.fixed_dictionaries({}, optional=optional)  # type: ignore[arg-type]


def protocol_name(level: int) -> str:
    return "MQIsdp" if level == MQTT_3_1 else "MQTT"


@st.composite
def connects(draw: Any, level: int) -> Connect:
    will = None
    if draw(st.booleans()):
        will = Will(
            draw(text), draw(binary), draw(st.integers(0, 2)), draw(st.booleans()),
            draw(props(WILL, level)),
        )  # fmt: skip
    username = draw(st.none() | text)
    password = draw(st.none() | binary)
    if level != MQTT_5 and username is None:
        password = None  # [MQTT-3.1.2-22]
    return Connect(
        draw(text), level, protocol_name(level), draw(st.booleans()), draw(u16),
        username, password, will, draw(props(PacketType.CONNECT, level)),
    )  # fmt: skip


@st.composite
def publishes(draw: Any, level: int) -> Publish:
    qos = draw(st.integers(0, 2))
    return Publish(
        draw(text), draw(binary), qos, draw(st.booleans()),
        draw(st.booleans()) if qos else False,
        draw(packet_ids) if qos else None,
        draw(props(PacketType.PUBLISH, level)),
    )  # fmt: skip


ACK_CODES = st.sampled_from([0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x92, 0x97, 0x99])


def acks(cls: type, level: int) -> st.SearchStrategy[Any]:
    if level != MQTT_5:
        return st.builds(cls, packet_ids)
    return st.builds(cls, packet_ids, ACK_CODES, props(cls.type, level))


@st.composite
def subscription_requests(draw: Any, level: int) -> SubscriptionRequest:
    if level != MQTT_5:
        return SubscriptionRequest(draw(text), draw(st.integers(0, 2)))
    return SubscriptionRequest(
        draw(text), draw(st.integers(0, 2)), draw(st.booleans()), draw(st.booleans()),
        draw(st.integers(0, 2)),
    )  # fmt: skip


def subscribes(level: int) -> st.SearchStrategy[Subscribe]:
    return st.builds(
        Subscribe, packet_ids, st.lists(subscription_requests(level), min_size=1, max_size=4),
        props(PacketType.SUBSCRIBE, level),
    )  # fmt: skip


def unsubscribes(level: int) -> st.SearchStrategy[Unsubscribe]:
    return st.builds(
        Unsubscribe, packet_ids, st.lists(text, min_size=1, max_size=4),
        props(PacketType.UNSUBSCRIBE, level),
    )  # fmt: skip


REASONS_5 = st.sampled_from(sorted({int(c) for c in ReasonCode}))


def connacks(level: int) -> st.SearchStrategy[ConnAck]:
    if level == MQTT_5:
        return st.builds(ConnAck, st.booleans(), REASONS_5, props(PacketType.CONNACK, level))
    sp = st.just(False) if level == MQTT_3_1 else st.booleans()
    return st.builds(ConnAck, sp, st.sampled_from(list(ConnackCode)))


def subacks(level: int) -> st.SearchStrategy[SubAck]:
    codes = REASONS_5 if level == MQTT_5 else st.sampled_from([0, 1, 2, 0x80])
    return st.builds(
        SubAck, packet_ids, st.lists(codes, min_size=1, max_size=5),
        props(PacketType.SUBACK, level),
    )  # fmt: skip


def unsubacks(level: int) -> st.SearchStrategy[UnsubAck]:
    if level != MQTT_5:
        return st.builds(UnsubAck, packet_ids)
    return st.builds(
        UnsubAck, packet_ids, st.lists(st.sampled_from([0, 0x11, 0x80, 0x87, 0x8F]), max_size=5),
        props(PacketType.UNSUBACK, level),
    )  # fmt: skip


def disconnects(level: int) -> st.SearchStrategy[Disconnect]:
    if level != MQTT_5:
        return st.just(Disconnect())
    codes = st.sampled_from([0, 4, 0x80, 0x81, 0x82, 0x8B, 0x8E, 0x9C])
    return st.builds(Disconnect, codes, props(PacketType.DISCONNECT, level))


def auths(level: int) -> st.SearchStrategy[Auth]:
    return st.builds(Auth, st.sampled_from([0, 0x18, 0x19]), props(PacketType.AUTH, level))


# (name, strategy factory, levels) for client->server and server->client packets.
CLIENT_PACKETS = [
    ("CONNECT", connects, LEVELS),
    ("PUBLISH", publishes, LEVELS),
    ("PUBACK", lambda lv: acks(PubAck, lv), LEVELS),
    ("PUBREC", lambda lv: acks(PubRec, lv), LEVELS),
    ("PUBREL", lambda lv: acks(PubRel, lv), LEVELS),
    ("PUBCOMP", lambda lv: acks(PubComp, lv), LEVELS),
    ("SUBSCRIBE", subscribes, LEVELS),
    ("UNSUBSCRIBE", unsubscribes, LEVELS),
    ("PINGREQ", lambda lv: st.just(PingReq()), LEVELS),
    ("DISCONNECT", disconnects, LEVELS),
    ("AUTH", auths, (MQTT_5,)),
]
SERVER_PACKETS = [
    ("CONNACK", connacks, LEVELS),
    ("PUBLISH", publishes, LEVELS),
    ("PUBACK", lambda lv: acks(PubAck, lv), LEVELS),
    ("PUBREC", lambda lv: acks(PubRec, lv), LEVELS),
    ("PUBREL", lambda lv: acks(PubRel, lv), LEVELS),
    ("PUBCOMP", lambda lv: acks(PubComp, lv), LEVELS),
    ("SUBACK", subacks, LEVELS),
    ("UNSUBACK", unsubacks, LEVELS),
    ("PINGRESP", lambda lv: st.just(PingResp()), LEVELS),
    ("DISCONNECT", disconnects, (MQTT_5,)),
    ("AUTH", auths, (MQTT_5,)),
]


def client_stream(level: int) -> st.SearchStrategy[list[Any]]:
    """A CONNECT followed by any client->server packets of that level."""
    others = st.one_of(*[f(level) for _, f, lv in CLIENT_PACKETS if level in lv])
    return st.tuples(connects(level), st.lists(others, max_size=8)).map(lambda t: [t[0], *t[1]])


def server_stream(level: int) -> st.SearchStrategy[list[Any]]:
    """Any server->client packets of that level."""
    return st.lists(
        st.one_of(*[f(level) for _, f, lv in SERVER_PACKETS if level in lv]), max_size=8
    )


# --------------------------------------------------------------------------- helpers


def parse_all(parser: Parser, data: bytes) -> list[Any]:
    parser.feed(data)
    out = []
    while (pkt := parser.next_packet()) is not None:
        out.append(pkt)
    return out


def parse_chunked(parser: Parser, chunks: list[bytes]) -> list[Any]:
    out = []
    for chunk in chunks:
        out.extend(parse_all(parser, chunk))
    return out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, prev = [], 0
    for p in points:
        chunks.append(data[prev:p])
        prev = p
    chunks.append(data[prev:])
    return chunks


# --------------------------------------------------------------------------- round trips


# pytest-twisted (installed in this venv) breaks @given combined with
# @pytest.mark.parametrize, so one test function is generated per case instead.


def _roundtrip_test(factory: Any, level: int, client_side: bool) -> Any:
    @SETTINGS
    @given(data=st.data())
    def test(data: Any) -> None:
        pkt = data.draw(factory(level))
        wire = encode(pkt, level)
        if client_side:
            parser = Parser(level, client_side=True)
        else:
            parser = Parser() if isinstance(pkt, Connect) else Parser(level)
        assert parse_all(parser, wire) == [pkt]
        assert parser.protocol_level == level

    return test


for _name, _factory, _levels in CLIENT_PACKETS:
    for _level in _levels:
        globals()[f"test_roundtrip_client_to_server_{_name}_{_level}"] = _roundtrip_test(
            _factory, _level, False
        )
for _name, _factory, _levels in SERVER_PACKETS:
    for _level in _levels:
        globals()[f"test_roundtrip_server_to_client_{_name}_{_level}"] = _roundtrip_test(
            _factory, _level, True
        )


def _per_level(make: Any) -> None:
    """Register ``make(level)`` as ``<name>_<level>`` for each level (replaces ``make``)."""
    for level in LEVELS:
        globals()[f"{make.__name__}_{level}"] = make(level)


@_per_level
def test_stream_bytewise_and_chunked_client_to_server(level: int) -> Any:
    @SETTINGS
    @given(data=st.data())
    def test_stream_bytewise_and_chunked_client_to_server(data: Any) -> None:
        _check_client_stream(level, data)

    return test_stream_bytewise_and_chunked_client_to_server


def _check_client_stream(level: int, data: Any) -> None:
    packets = data.draw(client_stream(level))
    wire = b"".join(encode(p, level) for p in packets)
    assert parse_all(Parser(), wire) == packets
    assert parse_chunked(Parser(), [wire[i : i + 1] for i in range(len(wire))]) == packets
    cuts = data.draw(st.lists(st.integers(0, 10**6), max_size=12))
    assert parse_chunked(Parser(), split(wire, cuts)) == packets


@_per_level
def test_stream_bytewise_and_chunked_server_to_client(level: int) -> Any:
    @SETTINGS
    @given(data=st.data())
    def test_stream_bytewise_and_chunked_server_to_client(data: Any) -> None:
        _check_server_stream(level, data)

    return test_stream_bytewise_and_chunked_server_to_client


def _check_server_stream(level: int, data: Any) -> None:
    packets = data.draw(server_stream(level))
    wire = b"".join(encode(p, level) for p in packets)

    def new() -> Parser:
        return Parser(level, client_side=True)

    assert parse_all(new(), wire) == packets
    assert parse_chunked(new(), [wire[i : i + 1] for i in range(len(wire))]) == packets
    cuts = data.draw(st.lists(st.integers(0, 10**6), max_size=12))
    assert parse_chunked(new(), split(wire, cuts)) == packets


def test_stream_with_bytearray_and_memoryview_chunks() -> None:
    packets = [Connect("c"), Publish("t", b"x" * 300, 1, packet_id=1), PingReq()]
    wire = b"".join(encode(p, 4) for p in packets)
    parser = Parser()
    parser.feed(bytearray(wire[:5]))
    parser.feed(memoryview(wire)[5:200])
    parser.feed(wire[200:])
    assert parse_all(parser, b"") == packets


def test_many_small_packets_in_one_chunk() -> None:
    pkt = Publish("a/b", b"payload", 1, packet_id=9)
    wire = encode(pkt, 4) * 20000
    parser = Parser(4)
    got = parse_all(parser, wire + encode(pkt, 4)[:5])
    assert len(got) == 20000 and got[0] == pkt
    assert parse_all(parser, encode(pkt, 4)[5:]) == [pkt]


def test_large_packet_in_many_chunks() -> None:
    pkt = Publish("big", bytes(range(256)) * 4000, 2, packet_id=3)
    wire = encode(pkt, 5)
    parser = Parser(5)
    out = parse_chunked(parser, [wire[i : i + 1000] for i in range(0, len(wire), 1000)])
    assert out == [pkt]
    assert type(out[0].payload) is bytes


# --------------------------------------------------------------------------- fast path


@_per_level
def test_encode_publish_parts_matches_encode(level: int) -> Any:
    @SETTINGS
    @given(data=st.data())
    def test_encode_publish_parts_matches_encode(data: Any) -> None:
        _check_publish_parts(level, data)

    return test_encode_publish_parts_matches_encode


def _check_publish_parts(level: int, data: Any) -> None:
    pkt = data.draw(publishes(level))
    as_bytes = data.draw(st.booleans())
    topic: str | bytes = pkt.topic.encode() if as_bytes else pkt.topic
    head, tail = encode_publish_parts(
        topic, pkt.payload, pkt.qos, pkt.retain, pkt.dup, pkt.properties, level
    )
    if pkt.qos:
        assert head + pkt.packet_id.to_bytes(2, "big") + tail == encode(pkt, level)
    else:
        assert head + tail == encode(pkt, level)


def test_encode_publish_parts_none_properties_and_large_remaining_length() -> None:
    payload = b"z" * 20000  # remaining length needs a 3-byte varint
    head, tail = encode_publish_parts("t", payload, 1, False, False, None, MQTT_5)
    assert head[:4] == bytes([0x32, 0xA6, 0x9C, 0x01])  # 20006 = 0x26 + 0x1C*128 + 1*16384
    assert head[4:] == b"\x00\x01t"
    assert tail == b"\x00" + payload
    pkt = parse_all(Parser(MQTT_5), head + b"\x00\x05" + tail)[0]
    assert pkt == Publish("t", payload, 1, packet_id=5)


# --------------------------------------------------------------------------- varint


@given(st.integers(0, 268_435_455))
@settings(max_examples=200, deadline=None)
def test_encode_varint_roundtrip(n: int) -> None:
    b = encode_varint(n)
    assert 1 <= len(b) <= 4
    assert all(x & 0x80 for x in b[:-1]) and not b[-1] & 0x80
    assert sum((x & 0x7F) << (7 * i) for i, x in enumerate(b)) == n


@pytest.mark.parametrize(
    ("n", "wire"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16383, b"\xff\x7f"),
        (16384, b"\x80\x80\x01"),
        (2097151, b"\xff\xff\x7f"),
        (2097152, b"\x80\x80\x80\x01"),
        (268435455, b"\xff\xff\xff\x7f"),
    ],
)
def test_encode_varint_spec_table(n: int, wire: bytes) -> None:
    # Spec 1.5.5, Table 1-1 Size of Variable Byte Integer.
    assert encode_varint(n) == wire


@pytest.mark.parametrize("n", [-1, 268_435_456])
def test_encode_varint_out_of_range(n: int) -> None:
    with pytest.raises(PacketError):
        encode_varint(n)


# --------------------------------------------------------------------------- fuzzing


def _fuzz(parser: Parser, chunks: list[bytes]) -> None:
    try:
        for chunk in chunks:
            parser.feed(chunk)
            while parser.next_packet() is not None:
                pass
    except PacketError as e:
        assert not e.message.startswith("internal"), e.message
        assert 0x80 <= int(e.reason_code) <= 0xA2
        with pytest.raises(PacketError):  # stays failed
            parser.next_packet()


FUZZ_SETTINGS = settings(max_examples=200, deadline=None)


@FUZZ_SETTINGS
@given(st.sampled_from([None, MQTT_3_1, MQTT_3_1_1, MQTT_5]), st.binary(max_size=200))
def test_fuzz_arbitrary_bytes_server_side(level: int | None, data: bytes) -> None:
    _fuzz(Parser(level), [data])


@FUZZ_SETTINGS
@given(st.sampled_from(LEVELS), st.binary(max_size=200))
def test_fuzz_arbitrary_bytes_client_side(level: int, data: bytes) -> None:
    _fuzz(Parser(level, client_side=True), [data])


@FUZZ_SETTINGS
@given(st.data())
def test_fuzz_mutated_valid_packets(data: Any) -> None:
    """Valid streams with a few bytes overwritten reach deep decoder paths."""
    level = data.draw(st.sampled_from(LEVELS))
    client_side = data.draw(st.booleans())
    packets = data.draw(server_stream(level) if client_side else client_stream(level))
    wire = bytearray(b"".join(encode(p, level) for p in packets))
    if wire:
        for _ in range(data.draw(st.integers(1, 4))):
            wire[data.draw(st.integers(0, len(wire) - 1))] = data.draw(st.integers(0, 255))
    cuts = data.draw(st.lists(st.integers(0, 10**6), max_size=4))
    parser = Parser(level, client_side=True) if client_side else Parser()
    _fuzz(parser, split(bytes(wire), cuts))


@FUZZ_SETTINGS
@given(st.sampled_from([None, MQTT_3_1_1, MQTT_5]), st.binary(max_size=60))
def test_fuzz_after_valid_connect(level: int | None, data: bytes) -> None:
    lv = level or MQTT_3_1_1
    connect = encode(Connect("c", lv, protocol_name(lv)), lv)
    _fuzz(Parser(level), [connect + data])
