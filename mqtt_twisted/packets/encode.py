"""Packet encoders: ``encode()`` for any packet, ``encode_publish_parts()`` for the hot path.

Encoders validate only what they need to produce valid bytes; they are fed by
the broker, not by the network.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from .constants import MQTT_5
from .errors import PacketError, PacketTooLarge
from .properties import encode_properties
from .types import (
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
)
from .wire import BYTE, MAX_VARINT, VARINT_SMALL, encode_binary, encode_string, encode_varint

__all__ = ["encode", "encode_publish_parts", "encode_varint"]

# First byte, one-byte remaining length, topic length: the common PUBLISH head.
_HEAD1 = struct.Struct(">BBH").pack
# The same with a two-byte remaining length.
_HEAD2 = struct.Struct(">BBBH").pack


def _frame(first_byte: int, body: bytes) -> bytes:
    """Prefix ``body`` with the fixed header (spec 2.1.1)."""
    n = len(body)
    if n < 16384:
        return BYTE[first_byte] + VARINT_SMALL[n] + body
    if n > MAX_VARINT:
        raise PacketTooLarge(f"remaining length {n} exceeds the MQTT maximum")
    return BYTE[first_byte] + encode_varint(n) + body


def encode_publish_parts(
    topic: str | bytes,
    payload: bytes,
    qos: int,
    retain: bool,
    dup: bool,
    properties: dict[int, Any] | None,
    protocol_level: int,
) -> tuple[bytes, bytes]:
    """Encode a PUBLISH around its packet id: returns ``(head, tail)``.

    The packet is ``head + packet_id.to_bytes(2, "big") + tail`` when qos > 0
    and ``head + tail`` when qos == 0. ``topic`` may be pre-encoded UTF-8.
    """
    if topic.__class__ is str:
        topic = topic.encode()
    if protocol_level == 5:
        tail = (encode_properties(properties) if properties else b"\x00") + payload
    elif payload.__class__ is bytes:
        tail = payload
    else:
        tail = bytes(payload)
    tl = len(topic)
    rl = tl + len(tail) + (4 if qos else 2)
    b0 = 0x30 | (qos << 1) | (1 if retain else 0) | (8 if dup else 0)
    if rl < 128:  # implies tl < 128
        return _HEAD1(b0, rl, tl) + topic, tail  # type: ignore[operator]
    if rl < 16384 and tl <= 0xFFFF:
        return _HEAD2(b0, (rl & 0x7F) | 0x80, rl >> 7, tl) + topic, tail  # type: ignore
    if tl > 0xFFFF:
        raise PacketError("topic longer than 65535 bytes")
    if rl > MAX_VARINT:
        raise PacketTooLarge(f"remaining length {rl} exceeds the MQTT maximum")
    return BYTE[b0] + encode_varint(rl) + tl.to_bytes(2, "big") + topic, tail  # type: ignore


def _publish(p: Publish, level: int) -> bytes:
    head, tail = encode_publish_parts(
        p.topic, p.payload, p.qos, p.retain, p.dup, p.properties, level
    )
    if p.qos:
        if not p.packet_id:
            raise PacketError("PUBLISH with QoS > 0 needs a packet id")  # [MQTT-2.3.1-1]
        return head + p.packet_id.to_bytes(2, "big") + tail
    return head + tail


def _connect(p: Connect, level: int) -> bytes:
    v5 = level == MQTT_5
    flags = 0x02 if p.clean_start else 0
    will = p.will
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    if p.username is not None:
        flags |= 0x80
    if p.password is not None:
        flags |= 0x40
    parts = [
        encode_string(p.protocol_name),
        BYTE[p.protocol_level],
        BYTE[flags],
        p.keep_alive.to_bytes(2, "big"),
    ]
    if v5:
        parts.append(encode_properties(p.properties))
    parts.append(encode_string(p.client_id))
    if will is not None:
        if v5:
            parts.append(encode_properties(will.properties))
        parts.append(encode_string(will.topic))
        parts.append(encode_binary(will.payload))
    if p.username is not None:
        parts.append(encode_string(p.username))
    if p.password is not None:
        parts.append(encode_binary(p.password))
    return _frame(0x10, b"".join(parts))


def _connack(p: ConnAck, level: int) -> bytes:
    if level == MQTT_5:
        body = (
            (b"\x01" if p.session_present else b"\x00")
            + BYTE[p.return_code]
            + encode_properties(p.properties)
        )
        return _frame(0x20, body)
    # MQTT 3.1 has no session present flag: its first byte is reserved.
    sp = 1 if (p.session_present and level != 3) else 0
    return bytes((0x20, 2, sp, p.return_code))


def _ack(first_byte: int) -> Callable[[Any, int], bytes]:
    def enc(p: Any, level: int) -> bytes:
        pid = p.packet_id.to_bytes(2, "big")
        if level == MQTT_5:
            if p.properties:
                body = pid + BYTE[p.reason_code] + encode_properties(p.properties)
                return _frame(first_byte, body)
            if p.reason_code:  # spec 3.4.2.2: no property length when remaining length < 4
                return BYTE[first_byte] + b"\x03" + pid + BYTE[p.reason_code]
        return BYTE[first_byte] + b"\x02" + pid

    return enc


def _subscribe(p: Subscribe, level: int) -> bytes:
    parts = [p.packet_id.to_bytes(2, "big")]
    v5 = level == MQTT_5
    if v5:
        parts.append(encode_properties(p.properties))
    for s in p.subscriptions:
        parts.append(encode_string(s.topic_filter))
        opts = s.qos
        if v5:
            if s.no_local:
                opts |= 0x04
            if s.retain_as_published:
                opts |= 0x08
            opts |= s.retain_handling << 4
        parts.append(BYTE[opts])
    return _frame(0x82, b"".join(parts))


def _suback(p: SubAck, level: int) -> bytes:
    head = p.packet_id.to_bytes(2, "big")
    if level == MQTT_5:
        head += encode_properties(p.properties)
    return _frame(0x90, head + bytes(p.reason_codes))


def _unsubscribe(p: Unsubscribe, level: int) -> bytes:
    parts = [p.packet_id.to_bytes(2, "big")]
    if level == MQTT_5:
        parts.append(encode_properties(p.properties))
    for f in p.topic_filters:
        parts.append(encode_string(f))
    return _frame(0xA2, b"".join(parts))


def _unsuback(p: UnsubAck, level: int) -> bytes:
    pid = p.packet_id.to_bytes(2, "big")
    if level == MQTT_5:
        return _frame(0xB0, pid + encode_properties(p.properties) + bytes(p.reason_codes))
    return b"\xb0\x02" + pid


def _pingreq(p: PingReq, level: int) -> bytes:
    return b"\xc0\x00"


def _pingresp(p: PingResp, level: int) -> bytes:
    return b"\xd0\x00"


def _disconnect(p: Disconnect, level: int) -> bytes:
    if level != MQTT_5:
        return b"\xe0\x00"
    if p.properties:
        return _frame(0xE0, BYTE[p.reason_code] + encode_properties(p.properties))
    if p.reason_code:  # spec 3.14.2.2.1: property length 0 when remaining length < 2
        return b"\xe0\x01" + BYTE[p.reason_code]
    return b"\xe0\x00"


def _auth(p: Auth, level: int) -> bytes:
    if not p.properties and not p.reason_code:
        return b"\xf0\x00"  # spec 3.15.2.1
    return _frame(0xF0, BYTE[p.reason_code] + encode_properties(p.properties))


_ENCODERS: dict[type, Callable[[Any, int], bytes]] = {
    Publish: _publish,
    Connect: _connect,
    ConnAck: _connack,
    PubAck: _ack(0x40),
    PubRec: _ack(0x50),
    PubRel: _ack(0x62),
    PubComp: _ack(0x70),
    Subscribe: _subscribe,
    SubAck: _suback,
    Unsubscribe: _unsubscribe,
    UnsubAck: _unsuback,
    PingReq: _pingreq,
    PingResp: _pingresp,
    Disconnect: _disconnect,
    Auth: _auth,
}


def encode(packet: Any, protocol_level: int) -> bytes:
    """Encode ``packet`` in the wire format of ``protocol_level`` (3, 4 or 5).

    In 3.x, properties and reason codes are dropped where the wire format has
    none. CONNECT's level byte and name come from the packet's own fields.
    """
    enc = _ENCODERS.get(packet.__class__)
    if enc is None:
        raise PacketError(f"cannot encode {packet!r}")
    try:
        return enc(packet, protocol_level)
    except (ValueError, OverflowError, IndexError) as e:
        # UnicodeEncodeError (lone surrogates), out-of-range ints, etc.
        raise PacketError(f"cannot encode {type(packet).__name__}: {e}") from e
