"""Every decoder rule of mqtt_twisted.packets, each asserting the PacketError it raises.

Spec statement ids ([MQTT-x.y.z-n]) are MQTT 3.1.1 / 5.0 normative statements.
"""

from __future__ import annotations

from typing import Any

import pytest

from mqtt_twisted.packets import (
    MQTT_3_1,
    MQTT_3_1_1,
    MQTT_5,
    Auth,
    Connect,
    Disconnect,
    PacketError,
    PacketTooLarge,
    Parser,
    PingReq,
    Property,
    PubAck,
    PubRel,
    Publish,
    ReasonCode,
    Subscribe,
    SubscriptionRequest,
    UnsupportedProtocolVersion,
    encode,
    encode_varint,
)

MAL = ReasonCode.MALFORMED_PACKET
PROTO = ReasonCode.PROTOCOL_ERROR


def frame(b0: int, body: bytes) -> bytes:
    return bytes([b0]) + encode_varint(len(body)) + body


def s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return len(raw).to_bytes(2, "big") + raw


def connect(
    name: bytes = b"MQTT",
    level: int = 4,
    flags: int = 0x02,
    props: bytes = b"\x00",
    payload: bytes = s("cid"),
) -> bytes:
    body = s(name) + bytes([level, flags]) + b"\x00\x3c"
    if level == 5:
        body += props
    return frame(0x10, body + payload)


def parse(data: bytes, level: int | None = None, **kw: Any) -> list[Any]:
    parser = Parser(level, **kw)
    parser.feed(data)
    out = []
    while (pkt := parser.next_packet()) is not None:
        out.append(pkt)
    return out


def fails(data: bytes, reason: int, level: int | None = None, **kw: Any) -> PacketError:
    with pytest.raises(PacketError) as info:
        parse(data, level, **kw)
    assert info.value.reason_code == reason, info.value
    return info.value


def client(data: bytes, level: int) -> list[Any]:
    return parse(data, level, client_side=True)


def client_fails(data: bytes, reason: int, level: int) -> PacketError:
    return fails(data, reason, level, client_side=True)


# --------------------------------------------------------------------------- errors API


def test_error_classes() -> None:
    e = PacketError("bad")
    assert (e.message, e.reason_code, str(e)) == ("bad", MAL, "bad")
    assert PacketError("x", PROTO).reason_code == PROTO
    assert PacketTooLarge("big").reason_code == 0x95
    assert isinstance(PacketTooLarge("big"), PacketError)
    u = UnsupportedProtocolVersion("v", "MQTT", 9)
    assert (u.reason_code, u.protocol_name, u.protocol_level) == (0x84, "MQTT", 9)
    assert isinstance(u, PacketError)


def test_client_side_parser_needs_protocol_level() -> None:
    with pytest.raises(ValueError):
        Parser(client_side=True)


def test_parser_stays_failed() -> None:
    parser = Parser()
    parser.feed(b"\x00\x00")
    with pytest.raises(PacketError):
        parser.next_packet()
    parser.feed(connect())
    with pytest.raises(PacketError):
        parser.next_packet()


# --------------------------------------------------------------------------- packet types


def test_first_packet_must_be_connect() -> None:  # [MQTT-3.1.0-1]
    fails(b"\xc0\x00", PROTO)
    fails(encode(Publish("t", b"x"), 4), PROTO)
    fails(b"\xf0\x00", PROTO)  # AUTH before CONNECT
    fails(b"\x82", PROTO)  # detected from the first byte alone


def test_second_connect_decodes() -> None:  # the broker rejects it [MQTT-3.1.0-2]
    assert parse(connect() + connect()) == [Connect("cid", keep_alive=60)] * 2


@pytest.mark.parametrize("level", [None, MQTT_3_1_1, MQTT_5])
def test_packet_type_0_is_malformed(level: int | None) -> None:  # spec 2.1.2: reserved
    fails(b"\x00\x00", MAL, level)


@pytest.mark.parametrize("level", [MQTT_3_1, MQTT_3_1_1, MQTT_5])
def test_packet_type_0_is_malformed_client_side(level: int) -> None:
    client_fails(b"\x00\x00", MAL, level)


@pytest.mark.parametrize("b0", [0x20, 0x90, 0xB0, 0xD0])
@pytest.mark.parametrize("level", [MQTT_3_1_1, MQTT_5])
def test_server_only_packets_from_client_are_protocol_errors(b0: int, level: int) -> None:
    # CONNACK, SUBACK, UNSUBACK, PINGRESP are sent by a server only.
    fails(bytes([b0, 0]), PROTO, level)


@pytest.mark.parametrize("level", [MQTT_3_1, MQTT_3_1_1])
def test_auth_in_3x_is_malformed(level: int) -> None:  # type 15 is reserved in 3.x
    fails(b"\xf0\x00", MAL, level)
    client_fails(b"\xf0\x00", MAL, level)


def test_auth_in_5_decodes_both_sides() -> None:
    assert parse(b"\xf0\x00", MQTT_5) == [Auth()]
    assert client(b"\xf0\x02\x18\x00", MQTT_5) == [Auth(0x18)]


@pytest.mark.parametrize("b0", [0x10, 0x82, 0xA2, 0xC0])
@pytest.mark.parametrize("level", [MQTT_3_1_1, MQTT_5])
def test_client_only_packets_from_server_are_protocol_errors(b0: int, level: int) -> None:
    client_fails(bytes([b0, 0]), PROTO, level)


def test_disconnect_from_server_only_in_5() -> None:
    client_fails(b"\xe0\x00", PROTO, MQTT_3_1_1)
    assert client(b"\xe0\x01\x8b", MQTT_5) == [Disconnect(0x8B)]


# --------------------------------------------------------------------------- fixed header


def test_remaining_length_longer_than_4_bytes() -> None:  # [MQTT-1.5.5-1] / spec 2.1.4
    fails(b"\x30\xff\xff\xff\xff", MAL, MQTT_3_1_1)  # no need to see a 5th byte


def test_remaining_length_4_bytes_is_fine() -> None:
    assert parse(b"\x30\xff\xff\xff\x7f", MQTT_3_1_1) == []  # waits for the body


def test_packet_too_large_from_fixed_header_only() -> None:
    err = fails(b"\x30\x80\x01", 0x95, MQTT_3_1_1, max_packet_size=100)
    assert isinstance(err, PacketTooLarge)


def test_packet_too_large_counts_the_fixed_header() -> None:
    pkt = encode(Publish("t", b"x" * 10), 4)  # 2 + 13 bytes
    assert len(parse(pkt, MQTT_3_1_1, max_packet_size=len(pkt))) == 1
    fails(pkt, 0x95, MQTT_3_1_1, max_packet_size=len(pkt) - 1)


def test_packet_too_large_for_connect() -> None:
    fails(connect(payload=s("x" * 300)), 0x95, max_packet_size=64)


@pytest.mark.parametrize(
    "b0",
    [
        0x60,  # PUBREL flags must be 0010 [MQTT-3.6.1-1]
        0x80,  # SUBSCRIBE [MQTT-3.8.1-1]
        0xA0,  # UNSUBSCRIBE [MQTT-3.10.1-1]
        0x63, 0x8A, 0xA6,  # any other value for them
        0x41, 0x52, 0x74, 0xC8, 0xE1,  # all others reserved 0000 [MQTT-2.2.2-1/2]
    ],
)  # fmt: skip
def test_fixed_header_flags(b0: int) -> None:
    fails(bytes([b0, 0]), MAL, MQTT_3_1_1)


def test_connect_fixed_header_flags() -> None:  # [MQTT-2.2.2-2]
    fails(b"\x11" + connect()[1:], MAL)


def test_publish_qos_3_is_malformed() -> None:  # [MQTT-3.3.1-4]
    fails(b"\x36\x05\x00\x01t\x00\x01", MAL, MQTT_3_1_1)
    fails(b"\x36\x05\x00\x01t\x00\x01", MAL, MQTT_5)


def test_publish_qos_0_with_dup_is_malformed() -> None:  # [MQTT-3.3.1-2]
    fails(b"\x38\x03\x00\x01t", MAL, MQTT_3_1_1)


# --------------------------------------------------------------------------- exact body


@pytest.mark.parametrize(
    ("data", "level"),
    [
        (b"\x40\x03\x00\x01\x00", MQTT_3_1_1),  # 3.x PUBACK is exactly 2 bytes
        (b"\x62\x01\x00", MQTT_3_1_1),  # PUBREL missing a byte of its packet id
        (b"\x40\x05\x00\x01\x00\x00\x00", MQTT_5),  # bytes after the properties
        (b"\x40\x04\x00\x01\x00\x05", MQTT_5),  # property length past the packet
        (b"\xe0\x03\x00\x00\x00", MQTT_5),  # DISCONNECT with a trailing byte
        (b"\x82\x07\x00\x01\x00\x03a/b", MQTT_3_1_1),  # filter without options byte
        (b"\x82\x07\x00\x01\x00\x09a/b\x00", MQTT_3_1_1),  # filter past the packet
        (b"\xa2\x05\x00\x01\x00\x01a\x00", MQTT_3_1_1),  # trailing byte in UNSUBSCRIBE
        (b"\x30\x01\x00", MQTT_3_1_1),  # topic length cut
        (b"\x30\x03\x00\x05t", MQTT_3_1_1),  # topic past the packet
        (b"\x32\x04\x00\x01t\x00", MQTT_3_1_1),  # packet id cut
        (b"\x30\x03\x00\x01t", MQTT_5),  # 5.0 PUBLISH without property length
    ],
)
def test_body_must_be_consumed_exactly(data: bytes, level: int) -> None:
    fails(data, MAL, level)


def test_connect_trailing_and_missing_bytes() -> None:
    fails(connect(payload=s("cid") + b"\x00"), MAL)
    fails(connect(flags=0x82), MAL)  # user name flag but no user name
    fails(connect(flags=0x06, payload=s("cid") + s("wt")), MAL)  # no will payload


@pytest.mark.parametrize("level", [MQTT_3_1_1, MQTT_5])
def test_ping_and_disconnect_remaining_length(level: int) -> None:
    fails(b"\xc0\x01\x00", MAL, level)  # PINGREQ: remaining length 0 (spec 3.12.1)
    client_fails(b"\xd0\x01\x00", MAL, level)  # PINGRESP (spec 3.13.1)


def test_3x_disconnect_remaining_length() -> None:  # 3.1.1 spec 3.14.1
    fails(b"\xe0\x01\x00", MAL, MQTT_3_1_1)
    fails(b"\xe0\x01\x00", MAL, MQTT_3_1)


def test_3x_unsuback_is_exactly_2_bytes() -> None:
    client_fails(b"\xb0\x03\x00\x01\x00", MAL, MQTT_3_1_1)


# --------------------------------------------------------------------------- UTF-8 strings


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff",  # invalid byte [MQTT-1.5.3-1]
        b"a\xc3",  # truncated sequence [MQTT-1.5.3-1]
        b"\xc0\xaf",  # overlong encoding [MQTT-1.5.3-1]
        b"\xed\xa0\x80",  # UTF-16 surrogate U+D800 [MQTT-1.5.3-1]
        b"a\x00b",  # U+0000 [MQTT-1.5.3-2]
    ],
)
def test_bad_utf8(raw: bytes) -> None:
    fails(frame(0x30, s(raw) + b"x"), MAL, MQTT_3_1_1)  # topic name
    fails(connect(payload=s(raw)), MAL)  # client identifier
    fails(frame(0x82, b"\x00\x01" + s(raw) + b"\x00"), MAL, MQTT_3_1_1)  # topic filter
    fails(frame(0xA2, b"\x00\x01" + s(raw)), MAL, MQTT_5)  # unsubscribe topic filter
    fails(connect(flags=0x82, payload=s("cid") + s(raw)), MAL)  # user name
    user_prop = b"\x26" + s("k") + s(raw)
    fails(frame(0x40, b"\x00\x01\x00" + encode_varint(len(user_prop)) + user_prop), MAL, MQTT_5)


def test_bom_is_kept() -> None:  # [MQTT-1.5.4-3]
    assert parse(frame(0x30, s("\ufefft") + b"x"), MQTT_3_1_1)[0].topic == "\ufefft"


# --------------------------------------------------------------------------- CONNECT


@pytest.mark.parametrize(
    ("name", "level"),
    [("MQTT", 3), ("MQIsdp", 4), ("MQIsdp", 5), ("MQTT", 6), ("MQTT", 0), ("mqtt", 4), ("", 4)],
)
def test_unsupported_protocol_version(name: str, level: int) -> None:
    # 3.1.1 [MQTT-3.1.2-2] / 5.0 spec 3.1.2.2 -> CONNACK 0x01 / 0x84
    err = fails(connect(name.encode(), level), 0x84)
    assert isinstance(err, UnsupportedProtocolVersion)
    assert (err.protocol_name, err.protocol_level) == (name, level)


def test_unsupported_protocol_version_wins_over_later_malformations() -> None:
    err = fails(frame(0x10, s("MQTT") + b"\x07\xff\xff"), 0x84)
    assert isinstance(err, UnsupportedProtocolVersion)


def test_malformed_before_protocol_level_is_not_unsupported_version() -> None:
    for data in [frame(0x10, b"\x00"), frame(0x10, s("MQTT")), frame(0x10, s(b"\xff\xfe") + b"\x04")]:
        err = fails(data, MAL)
        assert not isinstance(err, UnsupportedProtocolVersion)


@pytest.mark.parametrize("level", [MQTT_3_1_1, MQTT_5])
def test_connect_reserved_flag(level: int) -> None:  # [MQTT-3.1.2-3]
    fails(connect(level=level, flags=0x03), MAL)


@pytest.mark.parametrize(
    "flags",
    [
        0x0A,  # will QoS 1 without will flag [MQTT-3.1.2-11], [MQTT-3.1.2-13]
        0x12,  # will QoS 2 without will flag [MQTT-3.1.2-13]
        0x22,  # will retain without will flag [MQTT-3.1.2-15]
    ],
)
def test_will_flags_without_will(flags: int) -> None:
    fails(connect(flags=flags), MAL)
    fails(connect(level=5, flags=flags), MAL)


def test_will_qos_3() -> None:  # [MQTT-3.1.2-14]
    fails(connect(flags=0x1E, payload=s("cid") + s("wt") + s("wp")), MAL)


@pytest.mark.parametrize("level", [MQTT_3_1, MQTT_3_1_1])
def test_3x_password_without_user_name(level: int) -> None:  # [MQTT-3.1.2-22]
    name = b"MQIsdp" if level == MQTT_3_1 else b"MQTT"
    fails(connect(name, level, flags=0x42, payload=s("cid") + s("pw")), MAL)


def test_5_password_without_user_name_is_fine() -> None:  # 5.0 spec 3.1.2.9
    pkt = parse(connect(level=5, flags=0x42, payload=s("cid") + s("pw")))[0]
    assert (pkt.username, pkt.password) == (None, b"pw")


def test_empty_client_id_decodes() -> None:  # [MQTT-3.1.3-6]: the broker decides
    assert parse(connect(payload=s("")))[0].client_id == ""


def test_connect_sets_protocol_level() -> None:
    parser = Parser()
    parser.feed(connect(level=5))
    assert parser.next_packet().protocol_level == 5
    assert parser.protocol_level == 5


# --------------------------------------------------------------------------- PUBLISH & ids


@pytest.mark.parametrize("level", [MQTT_3_1_1, MQTT_5])
def test_publish_packet_id_0(level: int) -> None:  # [MQTT-2.3.1-1]
    fails(b"\x32\x05\x00\x01t\x00\x00" + (b"\x00" if level == 5 else b""), MAL, level)


def test_publish_qos_0_has_no_packet_id() -> None:  # [MQTT-2.3.1-5]
    assert parse(b"\x30\x05\x00\x01t\x00\x00", MQTT_3_1_1) == [Publish("t", b"\x00\x00")]


def test_publish_wildcard_topic_decodes() -> None:  # topic validation is the broker's job
    assert parse(b"\x30\x05\x00\x03a/#", MQTT_3_1_1) == [Publish("a/#")]


@pytest.mark.parametrize(
    "data",
    [
        b"\x40\x02\x00\x00",  # PUBACK
        b"\x50\x02\x00\x00",  # PUBREC
        b"\x62\x02\x00\x00",  # PUBREL
        b"\x70\x02\x00\x00",  # PUBCOMP
        b"\x82\x06\x00\x00\x00\x01a\x00",  # SUBSCRIBE
        b"\xa2\x05\x00\x00\x00\x01a",  # UNSUBSCRIBE
    ],
)
def test_packet_id_0_is_malformed(data: bytes) -> None:  # [MQTT-2.3.1-1]
    fails(data, MAL, MQTT_3_1_1)


@pytest.mark.parametrize("data", [b"\x90\x03\x00\x00\x00", b"\xb0\x02\x00\x00"])
def test_packet_id_0_is_malformed_client_side(data: bytes) -> None:  # [MQTT-2.3.1-1]
    client_fails(data, MAL, MQTT_3_1_1)


def test_5_ack_short_forms() -> None:  # spec 3.4.2.1 / 3.4.2.2.1
    assert parse(b"\x40\x02\x00\x07", MQTT_5) == [PubAck(7)]
    assert parse(b"\x62\x03\x00\x07\x92", MQTT_5) == [PubRel(7, 0x92)]
    assert parse(b"\x40\x04\x00\x07\x10\x00", MQTT_5) == [PubAck(7, 0x10)]


# --------------------------------------------------------------------------- SUBSCRIBE


@pytest.mark.parametrize("level", [MQTT_3_1_1, MQTT_5])
def test_subscribe_without_filters(level: int) -> None:  # [MQTT-3.8.3-3]
    fails(b"\x82\x02\x00\x01" if level == 4 else b"\x82\x03\x00\x01\x00", PROTO, level)


@pytest.mark.parametrize("opts", [0x04, 0x08, 0x10, 0x40, 0x80, 0x03])
def test_3x_subscribe_qos_byte(opts: int) -> None:  # [MQTT-3-8.3-4]
    fails(frame(0x82, b"\x00\x01" + s("a") + bytes([opts])), MAL, MQTT_3_1_1)


@pytest.mark.parametrize("opts", [0x40, 0x80, 0xC1])
def test_5_subscription_options_reserved_bits(opts: int) -> None:  # [MQTT-3.8.3-5]
    fails(frame(0x82, b"\x00\x01\x00" + s("a") + bytes([opts])), MAL, MQTT_5)


def test_5_subscription_options_qos_3() -> None:
    # 5.0 spec 3.8.3.1: "It is a Protocol Error if the Maximum QoS field has the value 3"
    fails(frame(0x82, b"\x00\x01\x00" + s("a") + b"\x03"), PROTO, MQTT_5)


def test_5_subscription_options_retain_handling_3() -> None:  # spec 3.8.3.1
    fails(frame(0x82, b"\x00\x01\x00" + s("a") + b"\x30"), PROTO, MQTT_5)


def test_5_subscription_options_decoded() -> None:
    pkt = parse(frame(0x82, b"\x00\x01\x00" + s("a") + b"\x2e"), MQTT_5)[0]
    assert pkt == Subscribe(1, [SubscriptionRequest("a", 2, True, True, 2)])


@pytest.mark.parametrize("level", [MQTT_3_1_1, MQTT_5])
def test_unsubscribe_without_filters(level: int) -> None:  # [MQTT-3.10.3-2]
    fails(b"\xa2\x02\x00\x01" if level == 4 else b"\xa2\x03\x00\x01\x00", PROTO, level)


# --------------------------------------------------------------------------- properties


def puback5(props: bytes) -> bytes:
    return frame(0x40, b"\x00\x01\x00" + encode_varint(len(props)) + props)


def publish5(props: bytes) -> bytes:
    return frame(0x30, s("t") + encode_varint(len(props)) + props + b"payload")


def subscribe5(props: bytes) -> bytes:
    return frame(0x82, b"\x00\x01" + encode_varint(len(props)) + props + s("a") + b"\x00")


def test_unknown_property_is_malformed() -> None:  # spec 2.2.2.2
    fails(puback5(b"\x05\x00"), MAL, MQTT_5)
    fails(puback5(b"\x80\x01\x00"), MAL, MQTT_5)  # two-byte identifier 0x80
    fails(publish5(b"\x00"), MAL, MQTT_5)


@pytest.mark.parametrize(
    "data",
    [
        publish5(b"\x11\x00\x00\x00\x01"),  # SESSION_EXPIRY_INTERVAL in PUBLISH
        puback5(b"\x23\x00\x01"),  # TOPIC_ALIAS in PUBACK
        subscribe5(b"\x23\x00\x01"),  # TOPIC_ALIAS in SUBSCRIBE
        connect(level=5, props=b"\x05\x18\x00\x00\x00\x05"),  # WILL_DELAY_INTERVAL in CONNECT
        connect(level=5, props=b"\x02\x24\x01"),  # MAXIMUM_QOS in CONNECT
        b"\xe0\x05\x00\x03\x23\x00\x01",  # TOPIC_ALIAS in DISCONNECT
        frame(0xA2, b"\x00\x01\x02\x1f\x00" + s("a")),  # REASON_STRING in UNSUBSCRIBE
        b"\xf0\x04\x18\x02\x01\x00",  # PAYLOAD_FORMAT_INDICATOR in AUTH
    ],
)
def test_property_not_allowed_is_protocol_error(data: bytes) -> None:
    # Spec 2.2.2.2: a property not allowed in that packet.
    fails(data, PROTO, None if data[0] == 0x10 else MQTT_5)


def test_will_property_not_allowed() -> None:  # TOPIC_ALIAS in will properties
    payload = s("cid") + b"\x03\x23\x00\x01" + s("wt") + s("wp")
    fails(connect(level=5, flags=0x06, payload=payload), PROTO)


def test_connack_property_not_allowed_client_side() -> None:
    client_fails(frame(0x20, b"\x00\x00\x02\x17\x01"), PROTO, MQTT_5)  # REQUEST_PROBLEM_INFO


@pytest.mark.parametrize(
    "data",
    [
        publish5(b"\x23\x00\x01\x23\x00\x02"),  # TOPIC_ALIAS twice
        publish5(b"\x01\x00\x01\x01"),  # PAYLOAD_FORMAT_INDICATOR twice
        puback5(b"\x1f" + s("a") + b"\x1f" + s("b")),  # REASON_STRING twice
        subscribe5(b"\x0b\x01\x0b\x02"),  # SUBSCRIPTION_IDENTIFIER twice in SUBSCRIBE
    ],
)
def test_duplicate_property_is_protocol_error(data: bytes) -> None:  # spec 2.2.2.2
    fails(data, PROTO, MQTT_5)


def test_repeatable_properties() -> None:
    user = b"\x26" + s("k") + s("v1") + b"\x26" + s("k") + s("v2")
    pkt = parse(publish5(b"\x0b\x01\x0b\x80\x01" + user), MQTT_5)[0]
    assert pkt.properties == {
        Property.SUBSCRIPTION_IDENTIFIER: [1, 128],
        Property.USER_PROPERTY: [("k", "v1"), ("k", "v2")],
    }
    assert pkt.payload == b"payload"


def test_property_length_past_packet_is_malformed() -> None:
    fails(frame(0x40, b"\x00\x01\x00\x09\x1f\x00\x01a"), MAL, MQTT_5)
    fails(frame(0x30, s("t") + b"\x0a\x23\x00"), MAL, MQTT_5)


def test_property_value_past_property_length_is_malformed() -> None:
    # property length 3 but the string needs 4 bytes; the payload follows
    fails(frame(0x30, s("t") + b"\x03\x03\x00\x02ab"), MAL, MQTT_5)
    fails(publish5(b"\x02\x00\x00"), MAL, MQTT_5)  # four-byte integer cut short


def test_subscription_identifier_0_is_protocol_error() -> None:  # spec 2.2.2.2 / 3.8.2.1.2
    fails(subscribe5(b"\x0b\x00"), PROTO, MQTT_5)
    fails(publish5(b"\x0b\x00"), PROTO, MQTT_5)


def test_varint_longer_than_4_bytes_is_malformed() -> None:  # [MQTT-1.5.5-1]
    fails(subscribe5(b"\x0b\xff\xff\xff\xff\x01"), MAL, MQTT_5)
    fails(frame(0x40, b"\x00\x01\x00\xff\xff\xff\xff\x01"), MAL, MQTT_5)  # property length


@pytest.mark.parametrize(
    "props",
    [
        b"\x21\x00\x00",  # RECEIVE_MAXIMUM 0 (spec 3.1.2.11.3)
        b"\x27\x00\x00\x00\x00",  # MAXIMUM_PACKET_SIZE 0 (spec 3.1.2.11.4)
        b"\x17\x02",  # REQUEST_PROBLEM_INFORMATION not 0/1 (spec 3.1.2.11.7)
        b"\x19\x02",  # REQUEST_RESPONSE_INFORMATION not 0/1 (spec 3.1.2.11.6)
    ],
)
def test_connect_property_values(props: bytes) -> None:
    fails(connect(level=5, props=bytes([len(props)]) + props), PROTO)


@pytest.mark.parametrize("pid", [0x24, 0x25, 0x28, 0x29, 0x2A])
def test_connack_boolean_property_values(pid: int) -> None:  # spec 3.2.2.3
    client_fails(frame(0x20, bytes([0, 0, 2, pid, 2])), PROTO, MQTT_5)


def test_disconnect_encodes_as_2_bytes_in_3x() -> None:
    assert encode(Disconnect(0x8B, {Property.REASON_STRING: "x"}), MQTT_3_1_1) == b"\xe0\x00"
    assert encode(PingReq(), MQTT_5) == b"\xc0\x00"
