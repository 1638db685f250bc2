"""Hand-written wire bytes (laid out as in the MQTT 3.1.1 / 5.0 spec figures), both ways."""

from __future__ import annotations

from typing import Any

import pytest

from mqtt_twisted.packets import (
    MQTT_3_1,
    MQTT_3_1_1,
    MQTT_5,
    Auth,
    ConnAck,
    ConnackCode,
    Connect,
    Disconnect,
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
)

P = Property


def h(text: str) -> bytes:
    """Bytes from hex with spaces and 'quoted ascii' runs."""
    out = bytearray()
    parts = text.split("'")
    for i, part in enumerate(parts):
        if i % 2:
            out += part.encode()
        else:
            out += bytes.fromhex(part)
    return bytes(out)


def parse(data: bytes, level: int | None, client_side: bool = False) -> list[Any]:
    parser = Parser(level, client_side=client_side)
    parser.feed(data)
    out = []
    while (pkt := parser.next_packet()) is not None:
        out.append(pkt)
    return out


# (packet, level, wire, direction) -- "c2s" parsed server side, "s2c" client side.
CASES = [
    # CONNECT 3.1: protocol name MQIsdp, level 3, clean session, keep alive 60.
    (
        Connect("client", MQTT_3_1, "MQIsdp", True, 60),
        MQTT_3_1,
        h("10 14 0006'MQIsdp' 03 02 003c 0006'client'"),
        "c2s",
    ),
    # CONNECT 3.1.1: flags 0xCE = user name, password, will QoS 1, will flag, clean session
    # (3.1.1 spec figure 3.6 uses the same flags), keep alive 10.
    (
        Connect("cid", MQTT_3_1_1, "MQTT", True, 10, "user", b"pass", Will("w/t", b"bye", 1)),
        MQTT_3_1_1,
        h("10 25 0004'MQTT' 04 ce 000a 0003'cid' 0003'w/t' 0003'bye' 0004'user' 0004'pass'"),
        "c2s",
    ),
    # CONNECT 3.1.1: no clean session, will retain QoS 2, no credentials.
    (
        Connect("", MQTT_3_1_1, "MQTT", False, 0, will=Will("t", b"", 2, True)),
        MQTT_3_1_1,
        h("10 11 0004'MQTT' 04 34 0000 0000 0001't' 0000"),
        "c2s",
    ),
    # CONNECT 5.0 (5.0 spec figure 3-8 style): session expiry interval 10.
    (
        Connect(
            "cid",
            MQTT_5,
            "MQTT",
            True,
            10,
            "user",
            b"pass",
            None,
            {P.SESSION_EXPIRY_INTERVAL: 10},
        ),  # fmt: skip
        MQTT_5,
        h("10 21 0004'MQTT' 05 c2 000a 05 11 0000000a 0003'cid' 0004'user' 0004'pass'"),
        "c2s",
    ),
    # CONNECT 5.0 with will properties and user properties.
    (
        Connect(
            "c",
            MQTT_5,
            "MQTT",
            True,
            60,
            None,
            None,
            Will("w", b"x", 0, False, {P.WILL_DELAY_INTERVAL: 5, P.CONTENT_TYPE: "t"}),
            {P.RECEIVE_MAXIMUM: 20, P.USER_PROPERTY: [("a", "b")]},
        ),  # fmt: skip
        MQTT_5,
        h(
            "10 28 0004'MQTT' 05 06 003c 0a 21 0014 26 0001'a' 0001'b' 0001'c'"
            " 09 18 00000005 03 0001't' 0001'w' 0001'x'"
        ),  # fmt: skip
        "c2s",
    ),
    # CONNACK
    (ConnAck(True, ConnackCode.ACCEPTED), MQTT_3_1_1, h("20 02 01 00"), "s2c"),
    (ConnAck(False, ConnackCode.NOT_AUTHORIZED), MQTT_3_1, h("20 02 00 05"), "s2c"),
    (ConnAck(False, ConnackCode.UNACCEPTABLE_PROTOCOL_VERSION), 4, h("20 02 00 01"), "s2c"),
    (ConnAck(False, ReasonCode.SUCCESS), MQTT_5, h("20 03 00 00 00"), "s2c"),
    (
        ConnAck(
            True, 0, {P.MAXIMUM_QOS: 1, P.RETAIN_AVAILABLE: 0, P.ASSIGNED_CLIENT_IDENTIFIER: "id"}
        ),
        MQTT_5,
        h("20 0c 01 00 09 24 01 25 00 12 0002'id'"),
        "s2c",
    ),
    (ConnAck(False, ReasonCode.UNSUPPORTED_PROTOCOL_VERSION), MQTT_5, h("20 03 00 84 00"), "s2c"),
    # PUBLISH (3.1.1 spec 3.3.2.3 example: topic a/b, packet id 10)
    (Publish("a/b", b"hi", 1, False, False, 10), MQTT_3_1_1, h("32 09 0003'a/b' 000a 'hi'"), "c2s"),
    (Publish("a/b", b"", 0, True), MQTT_3_1_1, h("31 05 0003'a/b'"), "c2s"),
    (Publish("a", b"x", 2, False, True, 0xFFFF), MQTT_3_1, h("3c 06 0001'a' ffff 'x'"), "s2c"),
    (Publish("a/b", b"hi", 0), MQTT_5, h("30 08 0003'a/b' 00 'hi'"), "c2s"),
    (
        Publish(
            "a", b"p", 1, False, False, 1, {P.TOPIC_ALIAS: 3, P.SUBSCRIPTION_IDENTIFIER: [2, 300]}
        ),
        MQTT_5,
        h("32 0f 0001'a' 0001 08 23 0003 0b 02 0b ac02 'p'"),
        "s2c",
    ),
    # PUBACK / PUBREC / PUBREL / PUBCOMP
    (PubAck(10), MQTT_3_1_1, h("40 02 000a"), "c2s"),
    (PubRec(10), MQTT_3_1_1, h("50 02 000a"), "s2c"),
    (PubRel(10), MQTT_3_1_1, h("62 02 000a"), "c2s"),
    (PubComp(10), MQTT_3_1_1, h("70 02 000a"), "s2c"),
    (PubAck(10), MQTT_5, h("40 02 000a"), "c2s"),
    (PubAck(10, ReasonCode.NO_MATCHING_SUBSCRIBERS), MQTT_5, h("40 03 000a 10"), "s2c"),
    (PubRel(10, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND), MQTT_5, h("62 03 000a 92"), "c2s"),
    (PubComp(10, 0, {P.REASON_STRING: ""}), MQTT_5, h("70 07 000a 00 03 1f 0000"), "s2c"),
    # SUBSCRIBE (3.1.1 spec 3.8.3 example: a/b QoS 1, c/d QoS 2)
    (
        Subscribe(10, [SubscriptionRequest("a/b", 1), SubscriptionRequest("c/d", 2)]),
        MQTT_3_1_1,
        h("82 0e 000a 0003'a/b' 01 0003'c/d' 02"),
        "c2s",
    ),
    (
        Subscribe(
            1, [SubscriptionRequest("a", 1, True, True, 2)], {P.SUBSCRIPTION_IDENTIFIER: [5]}
        ),
        MQTT_5,
        h("82 09 0001 02 0b 05 0001'a' 2d"),
        "c2s",
    ),
    # SUBACK (3.1.1 spec 3.9.3 example: QoS 0, QoS 2, failure)
    (SubAck(10, [0, 2, 0x80]), MQTT_3_1_1, h("90 05 000a 00 02 80"), "s2c"),
    (SubAck(10, [1, 0x8F]), MQTT_5, h("90 05 000a 00 01 8f"), "s2c"),
    # UNSUBSCRIBE (3.1.1 spec 3.10.3 example)
    (Unsubscribe(10, ["a/b", "c/d"]), MQTT_3_1_1, h("a2 0c 000a 0003'a/b' 0003'c/d'"), "c2s"),
    (Unsubscribe(10, ["a"]), MQTT_5, h("a2 06 000a 00 0001'a'"), "c2s"),
    # UNSUBACK
    (UnsubAck(10), MQTT_3_1_1, h("b0 02 000a"), "s2c"),
    (UnsubAck(10, [0x00, 0x11]), MQTT_5, h("b0 05 000a 00 00 11"), "s2c"),
    # PINGREQ / PINGRESP / DISCONNECT / AUTH
    (PingReq(), MQTT_3_1_1, h("c0 00"), "c2s"),
    (PingResp(), MQTT_3_1_1, h("d0 00"), "s2c"),
    (Disconnect(), MQTT_3_1_1, h("e0 00"), "c2s"),
    (Disconnect(), MQTT_5, h("e0 00"), "c2s"),
    (Disconnect(ReasonCode.DISCONNECT_WITH_WILL), MQTT_5, h("e0 01 04"), "c2s"),
    (
        Disconnect(ReasonCode.SERVER_SHUTTING_DOWN, {P.REASON_STRING: "bye"}),
        MQTT_5,
        h("e0 08 8b 06 1f 0003'bye'"),
        "s2c",
    ),
    (Auth(), MQTT_5, h("f0 00"), "c2s"),
    (
        Auth(
            ReasonCode.CONTINUE_AUTHENTICATION,
            {P.AUTHENTICATION_METHOD: "m", P.AUTHENTICATION_DATA: b"\x01"},
        ),
        MQTT_5,
        h("f0 0a 18 08 15 0001'm' 16 0001 01"),
        "s2c",
    ),
]


@pytest.mark.parametrize(
    ("packet", "level", "wire", "direction"),
    CASES,
    ids=[f"{type(c[0]).__name__}-{c[1]}-{i}" for i, c in enumerate(CASES)],
)
def test_known_bytes(packet: Any, level: int, wire: bytes, direction: str) -> None:
    assert encode(packet, level).hex(" ") == wire.hex(" ")
    if direction == "c2s":
        parsed = parse(wire, None if isinstance(packet, Connect) else level)
    else:
        parsed = parse(wire, level, client_side=True)
    assert parsed == [packet]


def test_3x_encoding_drops_5_only_fields() -> None:
    props = {P.REASON_STRING: "r"}
    assert encode(PubAck(1, 0x80, props), MQTT_3_1_1) == h("40 02 0001")
    assert encode(UnsubAck(1, [0x11], props), MQTT_3_1_1) == h("b0 02 0001")
    assert encode(Publish("t", b"", 0, properties={P.TOPIC_ALIAS: 1}), 4) == h("30 03 0001't'")
    assert encode(Disconnect(0x04, props), MQTT_3_1) == h("e0 00")


def test_decoded_codes_are_enums() -> None:
    assert parse(h("20 02 00 05"), MQTT_3_1_1, True)[0].return_code is ConnackCode.NOT_AUTHORIZED
    assert parse(h("20 03 00 87 00"), MQTT_5, True)[0].return_code is ReasonCode.NOT_AUTHORIZED
    assert type(parse(h("40 03 000a 10"), MQTT_5)[0].reason_code) is ReasonCode


def test_decoded_property_keys_are_property_members() -> None:
    pkt = parse(h("32 0f 0001'a' 0001 08 23 0003 0b 02 0b ac02 'p'"), MQTT_5)[0]
    assert all(type(k) is Property for k in pkt.properties)


@pytest.mark.parametrize("rl", [127, 128, 16383, 16384, 2_097_151, 2_097_152])
@pytest.mark.parametrize("level", [MQTT_3_1_1, MQTT_5])
def test_publish_remaining_length_boundaries(rl: int, level: int) -> None:
    # Spec 1.5.5 Table 1-1: 1/2/3/4-byte remaining lengths around each boundary.
    topic = b"t/x"
    props = b"\x00" if level == MQTT_5 else b""
    payload = b"p" * (rl - 2 - len(topic) - 2 - len(props))
    varint = bytearray()
    n = rl
    while True:
        varint.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            break
    wire = b"\x34" + bytes(varint) + b"\x00\x03" + topic + b"\x12\x34" + props + payload
    pkt = Publish("t/x", payload, 2, False, False, 0x1234)
    assert encode(pkt, level) == wire
    head, tail = encode_publish_parts(topic, payload, 2, False, False, {}, level)
    assert head + b"\x12\x34" + tail == wire
    assert parse(wire, level) == [pkt]
