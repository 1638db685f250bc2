"""MQTT 5.0 properties (spec 2.2.2): type table, per-packet allowed table, codec.

Decoded properties are a ``dict`` keyed by :class:`Property` members, with
ints for integer properties, str for UTF-8 strings, bytes for binary data,
``list[tuple[str, str]]`` for USER_PROPERTY and ``list[int]`` for
SUBSCRIPTION_IDENTIFIER.
"""

from __future__ import annotations

from typing import Any

from .constants import PROPERTIES, PacketType, Property
from .errors import PacketError
from .wire import (
    BYTE,
    Reader,
    encode_binary,
    encode_string,
    encode_varint,
    malformed,
    protocol_error,
)

# Property value data types (spec 2.2.2.2).
T_BYTE, T_U16, T_U32, T_VARINT, T_STR, T_BIN, T_PAIR = range(7)

P = Property
PROPERTY_TYPES: dict[int, int] = {
    P.PAYLOAD_FORMAT_INDICATOR: T_BYTE,
    P.MESSAGE_EXPIRY_INTERVAL: T_U32,
    P.CONTENT_TYPE: T_STR,
    P.RESPONSE_TOPIC: T_STR,
    P.CORRELATION_DATA: T_BIN,
    P.SUBSCRIPTION_IDENTIFIER: T_VARINT,
    P.SESSION_EXPIRY_INTERVAL: T_U32,
    P.ASSIGNED_CLIENT_IDENTIFIER: T_STR,
    P.SERVER_KEEP_ALIVE: T_U16,
    P.AUTHENTICATION_METHOD: T_STR,
    P.AUTHENTICATION_DATA: T_BIN,
    P.REQUEST_PROBLEM_INFORMATION: T_BYTE,
    P.WILL_DELAY_INTERVAL: T_U32,
    P.REQUEST_RESPONSE_INFORMATION: T_BYTE,
    P.RESPONSE_INFORMATION: T_STR,
    P.SERVER_REFERENCE: T_STR,
    P.REASON_STRING: T_STR,
    P.RECEIVE_MAXIMUM: T_U16,
    P.TOPIC_ALIAS_MAXIMUM: T_U16,
    P.TOPIC_ALIAS: T_U16,
    P.MAXIMUM_QOS: T_BYTE,
    P.RETAIN_AVAILABLE: T_BYTE,
    P.USER_PROPERTY: T_PAIR,
    P.MAXIMUM_PACKET_SIZE: T_U32,
    P.WILDCARD_SUBSCRIPTION_AVAILABLE: T_BYTE,
    P.SUBSCRIPTION_IDENTIFIER_AVAILABLE: T_BYTE,
    P.SHARED_SUBSCRIPTION_AVAILABLE: T_BYTE,
}

#: Pseudo packet type used as the key of the will properties in ALLOWED.
WILL = 0

T = PacketType
_ACKS = (T.PUBACK, T.PUBREC, T.PUBREL, T.PUBCOMP)
_ALL = (WILL, *T)

# Which packets may carry each property: the table of spec 2.2.2.2.
_WHERE: dict[int, tuple[int, ...]] = {
    P.PAYLOAD_FORMAT_INDICATOR: (T.PUBLISH, WILL),
    P.MESSAGE_EXPIRY_INTERVAL: (T.PUBLISH, WILL),
    P.CONTENT_TYPE: (T.PUBLISH, WILL),
    P.RESPONSE_TOPIC: (T.PUBLISH, WILL),
    P.CORRELATION_DATA: (T.PUBLISH, WILL),
    P.SUBSCRIPTION_IDENTIFIER: (T.PUBLISH, T.SUBSCRIBE),
    P.SESSION_EXPIRY_INTERVAL: (T.CONNECT, T.CONNACK, T.DISCONNECT),
    P.ASSIGNED_CLIENT_IDENTIFIER: (T.CONNACK,),
    P.SERVER_KEEP_ALIVE: (T.CONNACK,),
    P.AUTHENTICATION_METHOD: (T.CONNECT, T.CONNACK, T.AUTH),
    P.AUTHENTICATION_DATA: (T.CONNECT, T.CONNACK, T.AUTH),
    P.REQUEST_PROBLEM_INFORMATION: (T.CONNECT,),
    P.WILL_DELAY_INTERVAL: (WILL,),
    P.REQUEST_RESPONSE_INFORMATION: (T.CONNECT,),
    P.RESPONSE_INFORMATION: (T.CONNACK,),
    P.SERVER_REFERENCE: (T.CONNACK, T.DISCONNECT),
    P.REASON_STRING: (T.CONNACK, *_ACKS, T.SUBACK, T.UNSUBACK, T.DISCONNECT, T.AUTH),
    P.RECEIVE_MAXIMUM: (T.CONNECT, T.CONNACK),
    P.TOPIC_ALIAS_MAXIMUM: (T.CONNECT, T.CONNACK),
    P.TOPIC_ALIAS: (T.PUBLISH,),
    P.MAXIMUM_QOS: (T.CONNACK,),
    P.RETAIN_AVAILABLE: (T.CONNACK,),
    P.USER_PROPERTY: tuple(t for t in _ALL if t not in (T.PINGREQ, T.PINGRESP)),
    P.MAXIMUM_PACKET_SIZE: (T.CONNECT, T.CONNACK),
    P.WILDCARD_SUBSCRIPTION_AVAILABLE: (T.CONNACK,),
    P.SUBSCRIPTION_IDENTIFIER_AVAILABLE: (T.CONNACK,),
    P.SHARED_SUBSCRIPTION_AVAILABLE: (T.CONNACK,),
}

#: ALLOWED[packet type or WILL] = frozenset of property ids allowed there.
ALLOWED: dict[int, frozenset[int]] = {
    t: frozenset(int(p) for p, where in _WHERE.items() if t in where) for t in _ALL
}

# Properties whose value must be 0 or 1, or non-zero; other values are a
# Protocol Error (spec 3.1.2.11, 3.2.2.3, 3.8.2.1.2).
_ZERO_OR_ONE = frozenset(
    {
        P.REQUEST_PROBLEM_INFORMATION,
        P.REQUEST_RESPONSE_INFORMATION,
        P.MAXIMUM_QOS,
        P.RETAIN_AVAILABLE,
        P.WILDCARD_SUBSCRIPTION_AVAILABLE,
        P.SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        P.SHARED_SUBSCRIPTION_AVAILABLE,
    }
)
_NON_ZERO = frozenset({P.SUBSCRIPTION_IDENTIFIER, P.RECEIVE_MAXIMUM, P.MAXIMUM_PACKET_SIZE})

_USER = int(P.USER_PROPERTY)
_SUB_ID = int(P.SUBSCRIPTION_IDENTIFIER)
_PUBLISH = int(T.PUBLISH)


def decode_properties(r: Reader, packet_type: int) -> dict[int, Any]:
    """Read a property length and the properties that follow (spec 2.2.2).

    ``packet_type`` is a PacketType value, or WILL for will properties.
    """
    length = r.varint()
    if not length:
        return {}
    start = r.pos
    end = start + length
    if end > r.end:
        raise malformed("property length exceeds the packet")
    allowed = ALLOWED[packet_type]
    sub = Reader(r.buf, start, end)
    props: dict[int, Any] = {}
    while sub.pos < end:
        pid = sub.u8()  # every defined identifier fits a one-byte varint
        ptype = PROPERTY_TYPES.get(pid)
        if ptype is None:
            raise malformed(f"unknown property identifier 0x{pid:02X}")
        if pid not in allowed:
            # A property not valid in its packet type makes it malformed (MQTT 5.0, 2.2.2.2).
            raise malformed(f"property 0x{pid:02X} not allowed in packet type {packet_type}")
        if ptype == T_BYTE:
            value: Any = sub.u8()
        elif ptype == T_STR:
            value = sub.string()
        elif ptype == T_U32:
            value = sub.u32()
        elif ptype == T_U16:
            value = sub.u16()
        elif ptype == T_VARINT:
            value = sub.varint()
        elif ptype == T_BIN:
            value = sub.binary()
        else:  # T_PAIR
            value = (sub.string(), sub.string())
        key = PROPERTIES[pid]
        if pid == _USER:
            lst = props.get(key)
            if lst is None:
                props[key] = [value]
            else:
                lst.append(value)
            continue
        if pid in _NON_ZERO and value == 0:
            # [MQTT-3.3.4-6]/3.8.2.1.2 (Subscription Identifier), 3.1.2.11.3, 3.1.2.11.4
            raise protocol_error(f"property 0x{pid:02X} must not be 0")
        if pid in _ZERO_OR_ONE and value > 1:
            raise protocol_error(f"property 0x{pid:02X} must be 0 or 1")
        if pid == _SUB_ID:
            lst = props.get(key)
            if lst is None:
                props[key] = [value]
            elif packet_type == _PUBLISH:
                lst.append(value)
            else:
                raise protocol_error("duplicate subscription identifier")
            continue
        if key in props:
            raise protocol_error(f"duplicate property 0x{pid:02X}")  # spec 2.2.2.2
        props[key] = value
    r.pos = end
    return props


def _encode_value(ptype: int, value: Any) -> bytes:
    if ptype == T_BYTE:
        return BYTE[value]
    if ptype == T_STR:
        return encode_string(value)
    if ptype == T_U32:
        return int(value).to_bytes(4, "big")
    if ptype == T_U16:
        return int(value).to_bytes(2, "big")
    if ptype == T_VARINT:
        return encode_varint(value)
    if ptype == T_BIN:
        return encode_binary(value)
    k, v = value
    return encode_string(k) + encode_string(v)


def encode_properties(props: dict[int, Any] | None) -> bytes:
    """Encode properties with their leading property length (spec 2.2.2).

    None values are skipped; USER_PROPERTY takes a list of (name, value) pairs
    and SUBSCRIPTION_IDENTIFIER a list of ints (a bare int is accepted too).
    """
    if not props:
        return b"\x00"
    parts: list[bytes] = []
    for pid, value in props.items():
        if value is None:
            continue
        ptype = PROPERTY_TYPES.get(pid)
        if ptype is None:
            raise PacketError(f"unknown property identifier {pid!r}")
        ident = BYTE[pid]
        if ptype == T_PAIR or (ptype == T_VARINT and not isinstance(value, int)):
            for item in value:
                parts.append(ident)
                parts.append(_encode_value(ptype, item))
        else:
            parts.append(ident)
            parts.append(_encode_value(ptype, value))
    body = b"".join(parts)
    return encode_varint(len(body)) + body
