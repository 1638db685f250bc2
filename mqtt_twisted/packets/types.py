"""Packet classes (plain attrs data holders, one per MQTT control packet type).

Properties are a plain ``dict`` keyed by :class:`Property` values (an empty dict
when there are none); see the package docstring for the value types.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from .constants import PacketType

__all__ = [
    "Will",
    "Connect",
    "ConnAck",
    "Publish",
    "PubAck",
    "PubRec",
    "PubRel",
    "PubComp",
    "SubscriptionRequest",
    "Subscribe",
    "SubAck",
    "Unsubscribe",
    "UnsubAck",
    "PingReq",
    "PingResp",
    "Disconnect",
    "Auth",
    "Packet",
]

Properties = dict[int, Any]


@attrs.define(slots=True, eq=True)
class Will:
    """The will message carried in a CONNECT."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: Properties = attrs.Factory(dict)


@attrs.define(slots=True, eq=True)
class Connect:
    """CONNECT (client to server)."""

    type: ClassVar[PacketType] = PacketType.CONNECT

    client_id: str
    protocol_level: int = 4
    protocol_name: str = "MQTT"
    clean_start: bool = True
    keep_alive: int = 0
    username: str | None = None
    password: bytes | None = None
    will: Will | None = None
    properties: Properties = attrs.Factory(dict)


@attrs.define(slots=True, eq=True)
class ConnAck:
    """CONNACK; ``return_code`` is a ConnackCode (3.x) or ReasonCode (5.0)."""

    type: ClassVar[PacketType] = PacketType.CONNACK

    session_present: bool = False
    return_code: int = 0
    properties: Properties = attrs.Factory(dict)


@attrs.define(slots=True, eq=True)
class Publish:
    """PUBLISH; ``packet_id`` is None for QoS 0."""

    type: ClassVar[PacketType] = PacketType.PUBLISH

    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None
    properties: Properties = attrs.Factory(dict)
    #: a 3.1/3.1.1 PUBLISH without retain or DUP as received: the bytes before its packet
    #: id (QoS 0: before the payload) and the payload (the same object as ``payload``).
    #: A 3.x subscriber at the same QoS gets them as they are: no encoding
    raw: tuple[bytes, bytes] | None = attrs.field(default=None, eq=False, repr=False)


@attrs.define(slots=True, eq=True)
class PubAck:
    """PUBACK (QoS 1 acknowledgement)."""

    type: ClassVar[PacketType] = PacketType.PUBACK

    packet_id: int
    reason_code: int = 0
    properties: Properties = attrs.Factory(dict)


@attrs.define(slots=True, eq=True)
class PubRec:
    """PUBREC (QoS 2, part 1)."""

    type: ClassVar[PacketType] = PacketType.PUBREC

    packet_id: int
    reason_code: int = 0
    properties: Properties = attrs.Factory(dict)


@attrs.define(slots=True, eq=True)
class PubRel:
    """PUBREL (QoS 2, part 2)."""

    type: ClassVar[PacketType] = PacketType.PUBREL

    packet_id: int
    reason_code: int = 0
    properties: Properties = attrs.Factory(dict)


@attrs.define(slots=True, eq=True)
class PubComp:
    """PUBCOMP (QoS 2, part 3)."""

    type: ClassVar[PacketType] = PacketType.PUBCOMP

    packet_id: int
    reason_code: int = 0
    properties: Properties = attrs.Factory(dict)


@attrs.define(slots=True, eq=True)
class SubscriptionRequest:
    """One topic filter and its subscription options in a SUBSCRIBE."""

    topic_filter: str
    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0


@attrs.define(slots=True, eq=True)
class Subscribe:
    """SUBSCRIBE (client to server)."""

    type: ClassVar[PacketType] = PacketType.SUBSCRIBE

    packet_id: int
    subscriptions: list[SubscriptionRequest]
    properties: Properties = attrs.Factory(dict)


@attrs.define(slots=True, eq=True)
class SubAck:
    """SUBACK; 3.x reason codes are granted QoS 0/1/2 or 0x80 (failure)."""

    type: ClassVar[PacketType] = PacketType.SUBACK

    packet_id: int
    reason_codes: list[int]
    properties: Properties = attrs.Factory(dict)


@attrs.define(slots=True, eq=True)
class Unsubscribe:
    """UNSUBSCRIBE (client to server)."""

    type: ClassVar[PacketType] = PacketType.UNSUBSCRIBE

    packet_id: int
    topic_filters: list[str]
    properties: Properties = attrs.Factory(dict)


@attrs.define(slots=True, eq=True)
class UnsubAck:
    """UNSUBACK; reason codes exist on the wire only in 5.0."""

    type: ClassVar[PacketType] = PacketType.UNSUBACK

    packet_id: int
    reason_codes: list[int] = attrs.Factory(list)
    properties: Properties = attrs.Factory(dict)


@attrs.define(slots=True, eq=True)
class PingReq:
    """PINGREQ (client to server)."""

    type: ClassVar[PacketType] = PacketType.PINGREQ


@attrs.define(slots=True, eq=True)
class PingResp:
    """PINGRESP (server to client)."""

    type: ClassVar[PacketType] = PacketType.PINGRESP


@attrs.define(slots=True, eq=True)
class Disconnect:
    """DISCONNECT (reason code and properties exist only in 5.0)."""

    type: ClassVar[PacketType] = PacketType.DISCONNECT

    reason_code: int = 0
    properties: Properties = attrs.Factory(dict)


@attrs.define(slots=True, eq=True)
class Auth:
    """AUTH (5.0 only)."""

    type: ClassVar[PacketType] = PacketType.AUTH

    reason_code: int = 0
    properties: Properties = attrs.Factory(dict)


#: Any packet class instance.
Packet = (
    Connect
    | ConnAck
    | Publish
    | PubAck
    | PubRec
    | PubRel
    | PubComp
    | Subscribe
    | SubAck
    | Unsubscribe
    | UnsubAck
    | PingReq
    | PingResp
    | Disconnect
    | Auth
)
