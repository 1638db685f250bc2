"""What nodes tell each other through Redis, as bytes. Pure: no I/O.

* A :class:`Forward` goes on the channel of the node that has matching subscriptions: the
  message, whether its plain subscriptions get it, and the shared groups it was given to.
* A :class:`RouteEvent` goes on the cluster channel when a node's first subscription on a
  filter appears or its last one goes (``S``/``U``), or when it rewrote all of its routes
  (``Y``). Each node numbers its events; a gap means "read my routes again".
* A :class:`RetainedEvent` goes on the cluster channel when a retained message is set or
  cleared, numbered cluster-wide for the same reason.
* A :class:`Kick` tells the node that held a client id that another node took it.

Messages travel with their remaining expiry as wall-clock time (nodes share the clock of
the machine or of NTP); properties in the MQTT 5 encoding.
"""

from __future__ import annotations

import math
import struct
from typing import NamedTuple

from mqtt_twisted.broker.message import Message
from mqtt_twisted.packets.properties import decode_properties, encode_properties
from mqtt_twisted.packets.wire import Reader

FORWARD = b"M"
ROUTE_ADDED = b"S"
ROUTE_REMOVED = b"U"
ROUTES_REWRITTEN = b"Y"
RETAINED = b"R"
KICK = b"K"
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
    """Another node claimed ``client_id`` with a newer ``epoch``."""

    client_id: str
    epoch: int


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


def pack_kick(kick: Kick) -> bytes:
    return KICK + str(kick.epoch).encode() + SEP + kick.client_id.encode()


def unpack_kick(data: bytes) -> Kick:
    epoch, client_id = data[1:].split(SEP, 1)
    return Kick(client_id.decode(), int(epoch))
