"""Body decoders for every packet type except PUBLISH (inlined in the parser).

Each decoder is ``f(buf, start, end, first_byte, protocol_level) -> packet``
and decodes the variable header and payload in ``buf[start:end]``; the fixed
header was already validated by the parser.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .constants import (
    CONNACK_CODES,
    MQTT_3_1,
    MQTT_5,
    REASON_CODES,
    PacketType,
    ReasonCode,
)
from .errors import UnsupportedProtocolVersion
from .properties import WILL, decode_properties
from .types import (
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    SubscriptionRequest,
    UnsubAck,
    Unsubscribe,
    Will,
)
from .wire import Reader, malformed, protocol_error

Decoder = Callable[[bytes, int, int, int, int], Any]

#: The protocol name / level pairs this codec speaks.
SUPPORTED_PROTOCOLS = frozenset({("MQIsdp", 3), ("MQTT", 4), ("MQTT", 5)})

_SUCCESS = ReasonCode.SUCCESS
T = PacketType


def _reason(code: int) -> int:
    return REASON_CODES.get(code, code)


def _packet_id(r: Reader) -> int:
    pid = r.u16()
    if not pid:
        raise malformed("packet identifier 0")  # [MQTT-2.3.1-1]
    return pid


def decode_connect(buf: bytes, start: int, end: int, b0: int, level: int) -> Connect:
    """CONNECT (spec 3.1). The level used is the packet's own protocol level."""
    r = Reader(buf, start, end)
    name = r.string()
    plevel = r.u8()
    if (name, plevel) not in SUPPORTED_PROTOCOLS:
        # 3.1.1 [MQTT-3.1.2-2] / 5.0 spec 3.1.2.2: unsupported level -> 0x01 / 0x84
        raise UnsupportedProtocolVersion(
            f"unsupported protocol {name!r} level {plevel}", name, plevel
        )
    flags = r.u8()
    if flags & 0x01:
        raise malformed("CONNECT reserved flag is set")  # [MQTT-3.1.2-3]
    will_flag = flags & 0x04
    will_qos = (flags >> 3) & 0x03
    will_retain = bool(flags & 0x20)
    if will_flag:
        if will_qos == 3:
            raise malformed("will QoS 3")  # [MQTT-3.1.2-14]
    elif will_qos or will_retain:
        raise malformed("will QoS/retain set without will flag")  # [MQTT-3.1.2-11/13/15]
    has_user = flags & 0x80
    has_password = flags & 0x40
    v5 = plevel == MQTT_5
    if has_password and not has_user and not v5:
        raise malformed("password flag without user name flag")  # [MQTT-3.1.2-22]
    keep_alive = r.u16()
    props = decode_properties(r, T.CONNECT) if v5 else {}
    client_id = r.string()  # [MQTT-3.1.3-4]; length rules are the broker's job
    will = None
    if will_flag:
        wprops = decode_properties(r, WILL) if v5 else {}
        wtopic = r.string()
        wpayload = r.binary()
        will = Will(wtopic, wpayload, will_qos, will_retain, wprops)
    username = r.string() if has_user else None
    password = r.binary() if has_password else None
    r.finish()
    return Connect(
        client_id, plevel, name, bool(flags & 0x02), keep_alive, username, password, will, props
    )


def decode_connack(buf: bytes, start: int, end: int, b0: int, level: int) -> ConnAck:
    """CONNACK (spec 3.2)."""
    r = Reader(buf, start, end)
    flags = r.u8()
    code = r.u8()
    if level == MQTT_3_1:
        session_present = False  # MQTT 3.1: the first byte is reserved / unused
    else:
        if flags & 0xFE:
            raise malformed("CONNACK reserved flags set")  # spec 3.2.2.1: bits 7-1 are 0
        session_present = bool(flags)
    if level == MQTT_5:
        props = decode_properties(r, T.CONNACK)
        rc: int = REASON_CODES.get(code, code)
    else:
        props = {}
        rc = CONNACK_CODES.get(code, code)
    r.finish()
    return ConnAck(session_present, rc, props)


def _ack(cls: type, ptype: int) -> Decoder:
    def dec(buf: bytes, start: int, end: int, b0: int, level: int) -> Any:
        n = end - start
        if n < 2:
            raise malformed("packet truncated")
        pid = (buf[start] << 8) | buf[start + 1]
        if not pid:
            raise malformed("packet identifier 0")  # [MQTT-2.3.1-1]
        if level == MQTT_5:
            if n == 2:  # spec 3.4.2.1: reason code 0x00 and no properties may be omitted
                return cls(pid, _SUCCESS, {})
            rc = _reason(buf[start + 2])
            if n == 3:  # spec 3.4.2.2.1: remaining length < 4 -> no properties
                return cls(pid, rc, {})
            r = Reader(buf, start + 3, end)
            props = decode_properties(r, ptype)
            r.finish()
            return cls(pid, rc, props)
        if n != 2:
            raise malformed("acknowledgement remaining length must be 2")
        return cls(pid, _SUCCESS, {})

    dec.__name__ = f"decode_{cls.__name__.lower()}"
    return dec


def decode_subscribe(buf: bytes, start: int, end: int, b0: int, level: int) -> Subscribe:
    """SUBSCRIBE (spec 3.8)."""
    r = Reader(buf, start, end)
    pid = _packet_id(r)
    v5 = level == MQTT_5
    props = decode_properties(r, T.SUBSCRIBE) if v5 else {}
    if r.pos == end:
        raise protocol_error("SUBSCRIBE without topic filters")  # [MQTT-3.8.3-3]
    subs = []
    while r.pos < end:
        topic_filter = r.string()
        opts = r.u8()
        qos = opts & 0x03
        if v5:
            if opts & 0xC0:
                raise malformed("reserved subscription option bits set")  # [MQTT-3.8.3-5]
            if qos == 3:
                raise protocol_error("subscription maximum QoS 3")  # spec 3.8.3.1
            rh = (opts >> 4) & 0x03
            if rh == 3:
                raise protocol_error("retain handling 3")  # spec 3.8.3.1
            subs.append(
                SubscriptionRequest(topic_filter, qos, bool(opts & 0x04), bool(opts & 0x08), rh)
            )
        else:
            if opts & 0xFC or qos == 3:
                raise malformed("invalid requested QoS byte")  # [MQTT-3-8.3-4]
            subs.append(SubscriptionRequest(topic_filter, qos))
    return Subscribe(pid, subs, props)


def decode_suback(buf: bytes, start: int, end: int, b0: int, level: int) -> SubAck:
    """SUBACK (spec 3.9)."""
    r = Reader(buf, start, end)
    pid = _packet_id(r)
    props = decode_properties(r, T.SUBACK) if level == MQTT_5 else {}
    return SubAck(pid, list(r.rest()), props)


def decode_unsubscribe(buf: bytes, start: int, end: int, b0: int, level: int) -> Unsubscribe:
    """UNSUBSCRIBE (spec 3.10)."""
    r = Reader(buf, start, end)
    pid = _packet_id(r)
    props = decode_properties(r, T.UNSUBSCRIBE) if level == MQTT_5 else {}
    if r.pos == end:
        raise protocol_error("UNSUBSCRIBE without topic filters")  # [MQTT-3.10.3-2]
    filters = []
    while r.pos < end:
        filters.append(r.string())
    return Unsubscribe(pid, filters, props)


def decode_unsuback(buf: bytes, start: int, end: int, b0: int, level: int) -> UnsubAck:
    """UNSUBACK (spec 3.11); reason codes only in 5.0."""
    r = Reader(buf, start, end)
    pid = _packet_id(r)
    if level == MQTT_5:
        props = decode_properties(r, T.UNSUBACK)
        return UnsubAck(pid, list(r.rest()), props)
    r.finish()
    return UnsubAck(pid, [], {})


def _empty(cls: type) -> Decoder:
    def dec(buf: bytes, start: int, end: int, b0: int, level: int) -> Any:
        if end != start:
            raise malformed(f"{cls.__name__} remaining length must be 0")  # spec 3.12.1 / 3.13.1
        return cls()

    dec.__name__ = f"decode_{cls.__name__.lower()}"
    return dec


def _reason_props(cls: type, ptype: int) -> Decoder:
    def dec(buf: bytes, start: int, end: int, b0: int, level: int) -> Any:
        n = end - start
        if level != MQTT_5:
            if n:
                raise malformed("DISCONNECT remaining length must be 0")  # 3.1.1 spec 3.14.1
            return cls(_SUCCESS, {})
        if n == 0:  # spec 3.14.2.1 / 3.15.2.1: reason 0x00 and no properties omitted
            return cls(_SUCCESS, {})
        rc = _reason(buf[start])
        if n == 1:  # spec 3.14.2.2.1: remaining length < 2 -> property length 0
            return cls(rc, {})
        r = Reader(buf, start + 1, end)
        props = decode_properties(r, ptype)
        r.finish()
        return cls(rc, props)

    dec.__name__ = f"decode_{cls.__name__.lower()}"
    return dec


def _unreachable(buf: bytes, start: int, end: int, b0: int, level: int) -> Any:
    raise malformed(f"reserved packet type {b0 >> 4}")  # spec 2.1.2


#: DECODERS[packet type] -> body decoder; PUBLISH (3) is decoded by the parser.
DECODERS: tuple[Decoder, ...] = (
    _unreachable,
    decode_connect,
    decode_connack,
    _unreachable,
    _ack(PubAck, T.PUBACK),
    _ack(PubRec, T.PUBREC),
    _ack(PubRel, T.PUBREL),
    _ack(PubComp, T.PUBCOMP),
    decode_subscribe,
    decode_suback,
    decode_unsubscribe,
    decode_unsuback,
    _empty(PingReq),
    _empty(PingResp),
    _reason_props(Disconnect, T.DISCONNECT),
    _reason_props(Auth, T.AUTH),
)
