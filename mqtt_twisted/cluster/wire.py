"""What nodes tell each other through Redis, as bytes. Pure: no I/O.

* A :class:`Forward` goes on the channel of the node that has matching subscriptions: the
  message, whether its plain subscriptions get it, and the shared groups it was given to.
* A :class:`RouteEvent` goes on the cluster channel when a node's first subscription on a
  filter appears or its last one goes (``S``/``U``), or when it rewrote all of its routes
  (``Y``). Each node numbers its events; a gap means "read my routes again".
* A :class:`RetainedEvent` goes on the cluster channel when a retained message is set or
  cleared, numbered cluster-wide for the same reason.
* A :class:`Kick` tells the node that held a client id that another node took it; that
  node answers ``released`` once what it held of the session is in Redis.
* A doorbell tells a persistent session's node about a delivery a publisher's node stored
  in the session's hash (``B seq cid delivery``; seq 0: QoS 0, not stored).
* A session route event announces a persistent session's subscription (``P``), numbered
  cluster-wide like retained events.

Messages travel with their remaining expiry as wall-clock time (nodes share the clock of
the machine or of NTP); properties in the MQTT 5 encoding.
"""

from __future__ import annotations

import math
import struct
from typing import NamedTuple

from mqtt_twisted.broker.entries import SubscriptionOptions
from mqtt_twisted.broker.message import Message
from mqtt_twisted.packets.properties import decode_properties, encode_properties
from mqtt_twisted.packets.wire import Reader

FORWARD = b"M"
ROUTE_ADDED = b"S"
ROUTE_REMOVED = b"U"
ROUTES_REWRITTEN = b"Y"
RETAINED = b"R"
KICK = b"K"
RELEASED = b"D"
DOORBELL = b"B"
SESSION_ROUTE = b"P"
SESSION_UNROUTE = b"p"
#: separates the fields of events written by Redis scripts (never in MQTT strings
#: [MQTT-1.5.4-2] nor in node ids)
SEP = b"\x00"
_HEAD = struct.Struct("!Bd")  # flags, expires_at (NaN: never)
_NAN = math.nan
PUBLISH = 3  # the packet type whose properties a message carries


class Forward(NamedTuple):
    """A message for another node's local subscribers."""

    message: Message
    #: its plain (non-shared) subscriptions get it
    plain: bool
    #: ``$share/NAME/FILTER`` groups that node is to give it to (one member each)
    groups: tuple[str, ...]


class RouteEvent(NamedTuple):
    """A change of one node's routes, numbered per node."""

    kind: bytes
    node: str
    seq: int
    topic_filter: str


class RetainedEvent(NamedTuple):
    """A retained message set (``message``) or cleared (None), numbered cluster-wide."""

    seq: int
    topic: str
    message: Message | None


class Kick(NamedTuple):
    """Node ``claimant`` claimed ``client_id`` with a newer ``epoch``."""

    client_id: str
    epoch: int
    claimant: str


class Delivery(NamedTuple):
    """A message owed to a persistent session, as its hash and doorbells hold it."""

    message: Message
    qos: int
    retain: bool
    subscription_ids: tuple[int, ...]


class Doorbell(NamedTuple):
    """A delivery for a session of this node (``seq`` 0: QoS 0, not stored)."""

    client_id: str
    seq: int
    delivery: Delivery


class SessionRouteEvent(NamedTuple):
    """A persistent session's subscription set (``options``) or removed (None)."""

    seq: int
    client_id: str
    topic_filter: str
    options: SubscriptionOptions | None


def pack_message(message: Message) -> bytes:
    """A message as bytes: flags, expiry, topic, properties, payload."""
    topic = message.topic.encode()
    flags = message.qos | (4 if message.retain else 0)
    expires = message.expires_at
    return b"".join(
        (
            _HEAD.pack(flags, _NAN if expires is None else expires),
            len(topic).to_bytes(2, "big"),
            topic,
            encode_properties(message.properties),
            message.payload,
        )
    )


def unpack_message(data: bytes, start: int = 0) -> Message:
    """The inverse of :func:`pack_message` (from ``start``)."""
    flags, expires = _HEAD.unpack_from(data, start)
    at = start + _HEAD.size
    size = int.from_bytes(data[at : at + 2], "big")
    at += 2
    topic = data[at : at + size].decode()
    reader = Reader(data, at + size, len(data))
    properties = decode_properties(reader, PUBLISH)
    return Message(
        topic,
        data[reader.pos :],
        flags & 3,
        bool(flags & 4),
        properties,
        None if math.isnan(expires) else expires,
    )


def pack_forward(forward: Forward) -> bytes:
    """A :class:`Forward` for a node's channel."""
    groups = SEP.join(group.encode() for group in forward.groups)
    head = (b"P" if forward.plain else b"-") + len(groups).to_bytes(4, "big") + groups
    return FORWARD + head + pack_message(forward.message)


def unpack_forward(data: bytes) -> Forward:
    """The inverse of :func:`pack_forward` (``data`` starts with ``M``)."""
    plain = data[1:2] == b"P"
    size = int.from_bytes(data[2:6], "big")
    groups = data[6 : 6 + size]
    names = tuple(group.decode() for group in groups.split(SEP)) if groups else ()
    return Forward(unpack_message(data, 6 + size), plain, names)


def unpack_route_event(data: bytes) -> RouteEvent:
    """``KIND seq SEP node SEP filter``, as the route script publishes it."""
    seq, node, topic_filter = data[1:].split(SEP, 2)
    return RouteEvent(data[:1], node.decode(), int(seq), topic_filter.decode())


def pack_retained_value(message: Message | None) -> bytes:
    """What the retained hash and events hold for a topic (empty: cleared)."""
    return b"" if message is None else pack_message(message)


def unpack_retained_event(data: bytes) -> RetainedEvent:
    """``R seq SEP topic SEP packed-message-or-nothing``, as the retain script publishes it."""
    seq, topic, value = data[1:].split(SEP, 2)
    return RetainedEvent(int(seq), topic.decode(), unpack_message(value) if value else None)


def unpack_kick(data: bytes) -> Kick:
    """``K epoch SEP client-id SEP claimant``, as the claim script publishes it."""
    epoch, client_id, claimant = data[1:].split(SEP, 2)
    return Kick(client_id.decode(), int(epoch), claimant.decode())


def pack_released(client_id: str, epoch: int) -> bytes:
    return RELEASED + str(epoch).encode() + SEP + client_id.encode()


def unpack_released(data: bytes) -> tuple[str, int]:
    epoch, client_id = data[1:].split(SEP, 1)
    return client_id.decode(), int(epoch)


def pack_delivery_head(qos: int, retain: bool, subscription_ids: tuple[int, ...]) -> bytes:
    """What precedes the packed message of a stored delivery: QoS, retain, subscription ids."""
    ids = b"".join(i.to_bytes(4, "big") for i in subscription_ids)
    return bytes((qos, retain, len(subscription_ids))) + ids


def unpack_delivery(data: bytes, start: int = 0) -> Delivery:
    qos, retain, count = data[start : start + 3]
    at = start + 3
    ids = tuple(int.from_bytes(data[at + 4 * i : at + 4 * i + 4], "big") for i in range(count))
    return Delivery(unpack_message(data, at + 4 * count), qos, bool(retain), ids)


def unpack_doorbell(data: bytes) -> Doorbell:
    """``B seq SEP client-id SEP delivery``, as the enqueue script publishes it."""
    seq, client_id, _ = data[1:].split(SEP, 2)
    start = 1 + len(seq) + 1 + len(client_id) + 1
    return Doorbell(client_id.decode(), int(seq), unpack_delivery(data, start))


def pack_options(options: SubscriptionOptions) -> bytes:
    flags = options.qos | options.no_local << 2 | options.retain_as_published << 3
    flags |= options.retain_handling << 4
    return bytes((flags,)) + (options.subscription_id or 0).to_bytes(4, "big")


def unpack_options(data: bytes) -> SubscriptionOptions:
    flags = data[0]
    sid = int.from_bytes(data[1:5], "big")
    return SubscriptionOptions(
        flags & 3, bool(flags & 4), bool(flags & 8), (flags >> 4) & 3, sid or None
    )


def unpack_session_route_event(data: bytes) -> SessionRouteEvent:
    """``P seq SEP client-id SEP options(5 bytes) filter`` (set) or ``p seq SEP client-id SEP
    filter`` (removed), as the session route script publishes them."""
    seq, client_id, rest = data[1:].split(SEP, 2)
    options = None
    if data[:1] == SESSION_ROUTE:
        options, rest = unpack_options(rest[:5]), rest[5:]
    return SessionRouteEvent(int(seq), client_id.decode(), rest.decode(), options)
