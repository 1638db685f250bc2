"""MQTT 5.0 property decoding rules of mqtt_twisted.packets (spec 2.2.2)."""

from __future__ import annotations

import pytest

from mqtt_twisted.packets import (
    MQTT_5,
    PacketError,
    Property,
    encode_varint,
)

from .codec_helpers import MAL, PROTO, connect, fails, frame, parse, s  # noqa: F401


def client_fails(data: bytes, reason: int, level: int) -> PacketError:
    return fails(data, reason, level, client_side=True)


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
def test_property_not_allowed_is_malformed(data: bytes) -> None:
    # MQTT 5.0 section 2.2.2.2: a property not valid in its packet type makes the packet
    # malformed (0x81), not a protocol error.
    fails(data, MAL, None if data[0] == 0x10 else MQTT_5)


def test_will_property_not_allowed() -> None:  # TOPIC_ALIAS in will properties
    payload = s("cid") + b"\x03\x23\x00\x01" + s("wt") + s("wp")
    fails(connect(level=5, flags=0x06, payload=payload), MAL)


def test_connack_property_not_allowed_client_side() -> None:
    client_fails(frame(0x20, b"\x00\x00\x02\x17\x01"), MAL, MQTT_5)  # REQUEST_PROBLEM_INFO


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


# --------------------------------------------------------------------------- spec table

ALL = {
    "CONNECT", "CONNACK", "PUBLISH", "WILL", "PUBACK", "PUBREC", "PUBREL", "PUBCOMP",
    "SUBSCRIBE", "SUBACK", "UNSUBSCRIBE", "UNSUBACK", "DISCONNECT", "AUTH",
}  # fmt: skip
MESSAGE = {"PUBLISH", "WILL"}
# MQTT 5.0 spec 2.2.2.2 table: property id -> (value bytes, packets allowed in).
SPEC_TABLE: dict[int, tuple[bytes, set[str]]] = {
    0x01: (b"\x01", MESSAGE),  # Payload Format Indicator
    0x02: (b"\x00\x00\x00\x01", MESSAGE),  # Message Expiry Interval
    0x03: (s("x"), MESSAGE),  # Content Type
    0x08: (s("x"), MESSAGE),  # Response Topic
    0x09: (s(b"x"), MESSAGE),  # Correlation Data
    0x0B: (b"\x01", {"PUBLISH", "SUBSCRIBE"}),  # Subscription Identifier
    0x11: (b"\x00\x00\x00\x01", {"CONNECT", "CONNACK", "DISCONNECT"}),  # Session Expiry
    0x12: (s("x"), {"CONNACK"}),  # Assigned Client Identifier
    0x13: (b"\x00\x01", {"CONNACK"}),  # Server Keep Alive
    0x15: (s("x"), {"CONNECT", "CONNACK", "AUTH"}),  # Authentication Method
    0x16: (s(b"x"), {"CONNECT", "CONNACK", "AUTH"}),  # Authentication Data
    0x17: (b"\x01", {"CONNECT"}),  # Request Problem Information
    0x18: (b"\x00\x00\x00\x01", {"WILL"}),  # Will Delay Interval
    0x19: (b"\x01", {"CONNECT"}),  # Request Response Information
    0x1A: (s("x"), {"CONNACK"}),  # Response Information
    0x1C: (s("x"), {"CONNACK", "DISCONNECT"}),  # Server Reference
    0x1F: (
        s("x"),
        {
            "CONNACK",
            "PUBACK",
            "PUBREC",
            "PUBREL",
            "PUBCOMP",
            "SUBACK",
            "UNSUBACK",
            "DISCONNECT",
            "AUTH",
        },
    ),  # Reason String  # fmt: skip
    0x21: (b"\x00\x01", {"CONNECT", "CONNACK"}),  # Receive Maximum
    0x22: (b"\x00\x01", {"CONNECT", "CONNACK"}),  # Topic Alias Maximum
    0x23: (b"\x00\x01", {"PUBLISH"}),  # Topic Alias
    0x24: (b"\x01", {"CONNACK"}),  # Maximum QoS
    0x25: (b"\x01", {"CONNACK"}),  # Retain Available
    0x26: (s("k") + s("v"), ALL),  # User Property
    0x27: (b"\x00\x00\x00\x01", {"CONNECT", "CONNACK"}),  # Maximum Packet Size
    0x28: (b"\x01", {"CONNACK"}),  # Wildcard Subscription Available
    0x29: (b"\x01", {"CONNACK"}),  # Subscription Identifier Available
    0x2A: (b"\x01", {"CONNACK"}),  # Shared Subscription Available
}


def _with_props(where: str, lp: bytes) -> tuple[bytes, bool]:
    """A 5.0 packet of kind ``where`` carrying properties ``lp``; True if client side."""
    wire = {
        "CONNECT": lambda: connect(level=5, props=lp),
        "WILL": lambda: connect(level=5, flags=0x06, payload=s("cid") + lp + s("wt") + s("wp")),
        "CONNACK": lambda: frame(0x20, b"\x00\x00" + lp),
        "PUBLISH": lambda: frame(0x30, s("t") + lp + b"x"),
        "PUBACK": lambda: frame(0x40, b"\x00\x01\x00" + lp),
        "PUBREC": lambda: frame(0x50, b"\x00\x01\x00" + lp),
        "PUBREL": lambda: frame(0x62, b"\x00\x01\x00" + lp),
        "PUBCOMP": lambda: frame(0x70, b"\x00\x01\x00" + lp),
        "SUBSCRIBE": lambda: frame(0x82, b"\x00\x01" + lp + s("a") + b"\x00"),
        "SUBACK": lambda: frame(0x90, b"\x00\x01" + lp + b"\x00"),
        "UNSUBSCRIBE": lambda: frame(0xA2, b"\x00\x01" + lp + s("a")),
        "UNSUBACK": lambda: frame(0xB0, b"\x00\x01" + lp + b"\x00"),
        "DISCONNECT": lambda: frame(0xE0, b"\x00" + lp),
        "AUTH": lambda: frame(0xF0, b"\x00" + lp),
    }[where]()
    return wire, where in {"CONNACK", "SUBACK", "UNSUBACK"}


@pytest.mark.parametrize("where", sorted(ALL))
def test_allowed_properties_match_spec_table(where: str) -> None:
    """Each property decodes where the spec table allows it, else Malformed Packet (2.2.2.2)."""
    for pid, (value, allowed) in SPEC_TABLE.items():
        prop = bytes([pid]) + value
        wire, client_side = _with_props(where, encode_varint(len(prop)) + prop)
        level = MQTT_5 if client_side or where not in ("CONNECT", "WILL") else None
        if where in allowed:
            (pkt,) = parse(wire, level, client_side=client_side)
            props = pkt.will.properties if where == "WILL" else pkt.properties
            assert list(props) == [pid], (where, hex(pid))
        else:
            fails(wire, MAL, level, client_side=client_side)


def test_spec_table_covers_every_property() -> None:
    assert set(SPEC_TABLE) == {int(p) for p in Property}
