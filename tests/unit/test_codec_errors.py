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
    Publish,
    PubRel,
    Subscribe,
    SubscriptionRequest,
    UnsupportedProtocolVersion,
    encode,
    encode_varint,
)

from .codec_helpers import MAL, PROTO, connect, fails, frame, parse, s  # noqa: F401


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


@pytest.mark.parametrize("level", [MQTT_3_1_1, MQTT_5])
def test_dup_on_pubrel_subscribe_unsubscribe_is_malformed_from_3_1_1_on(level: int) -> None:
    # [MQTT-3.6.1-1], [MQTT-3.8.1-1], [MQTT-3.10.1-1]: the flags are exactly 0010.
    fails(frame(0x6A, b"\x00\x01"), MAL, level)


def test_mqtt_3_1_resends_pubrel_subscribe_unsubscribe_with_dup() -> None:
    """MQTT 3.1 (section 2.1, "DUP"): a client re-sending PUBREL, SUBSCRIBE or UNSUBSCRIBE
    sets DUP; the 3.1.1 fixed-flags rules do not apply to protocol level 3."""
    assert parse(frame(0x6A, b"\x00\x07"), MQTT_3_1) == [PubRel(7)]
    (subscribe,) = parse(frame(0x8A, b"\x00\x02" + s("a/b") + b"\x01"), MQTT_3_1)
    assert subscribe == Subscribe(2, [SubscriptionRequest("a/b", 1)])
    (unsubscribe,) = parse(frame(0xAA, b"\x00\x03" + s("a/b")), MQTT_3_1)
    assert unsubscribe.packet_id == 3 and unsubscribe.topic_filters == ["a/b"]
    fails(frame(0x6B, b"\x00\x01"), MAL, MQTT_3_1)  # other flags stay invalid
    fails(frame(0x60, b"\x00\x01"), MAL, MQTT_3_1)


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
    bad_name = frame(0x10, s(b"\xff\xfe") + b"\x04")
    for data in [frame(0x10, b"\x00"), frame(0x10, s("MQTT")), bad_name]:
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


def test_disconnect_encodes_as_2_bytes_in_3x() -> None:
    assert encode(Disconnect(0x8B, {Property.REASON_STRING: "x"}), MQTT_3_1_1) == b"\xe0\x00"
    assert encode(PingReq(), MQTT_5) == b"\xc0\x00"


def test_owner_may_set_protocol_level() -> None:
    parser = Parser()
    parser.protocol_level = MQTT_5
    parser.feed(b"\xf0\x00\xc0\x00")
    assert parser.next_packet() == Auth()
    parser.protocol_level = MQTT_3_1_1
    assert parser.next_packet() == PingReq()
    parser.feed(b"\xf0\x00")
    with pytest.raises(PacketError) as info:
        parser.next_packet()  # AUTH no longer valid in a 3.1.1 session
    assert info.value.reason_code == MAL
