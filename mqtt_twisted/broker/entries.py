"""What a session holds: queued and in-flight messages, subscription options, and what it
needs of the connection it is attached to."""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import attrs

from mqtt_twisted.broker.message import Message


class Queued(NamedTuple):
    """A message waiting in a session's queue, with what its delivery needs."""

    message: Message
    qos: int
    retain: bool
    subscription_ids: tuple[int, ...]
    #: the shared subscription group it was picked for (None: an ordinary subscription)
    group: Any
    #: its place in the store's deliveries of this session (0: not stored)
    seq: int = 0


class Publisher(Protocol):
    """Whoever published a message, as the sessions it goes to see it: a session, or (in a
    cluster) the other nodes' publishers. A full session holds ``connection``'s input."""

    @property
    def connection(self) -> Any: ...


class Handover(NamedTuple):
    """A shared-subscription message a closing session gives back to its group."""

    message: Message
    group: Any


class SessionConnection(Protocol):
    """What a session needs of the connection it is attached to."""

    protocol_level: int
    #: True while the transport's buffer is full (slow reader), and since when
    paused: bool
    paused_at: float
    #: the client's Receive Maximum (65535 when it sent none)
    receive_maximum: int

    def encode_publish(
        self,
        message: Message,
        qos: int,
        retain: bool,
        subscription_ids: tuple[int, ...],
        dup: bool,
    ) -> tuple[bytes, bytes] | None:
        """(head, tail) of ``message`` for this client, or None if it exceeds its Maximum Packet Size."""

    def write_publish(self, head: bytes, packet_id: int | None, tail: bytes) -> None:
        """Write one encoded PUBLISH (packet id between head and tail when given)."""

    def write_pubrel(self, packet_id: int) -> None:
        """Write a PUBREL."""

    def take_over(self) -> None:
        """Close this connection because another one took its client id."""

    def shut_down(self) -> None:
        """Close this connection because the broker is stopping."""

    def hold_input(self, by: object) -> None:
        """Stop reading this connection's input until ``by`` releases it."""

    def release_input(self, by: object) -> None:
        """``by`` no longer needs this connection to wait."""

    def await_commit(self) -> None:
        """What is written from now on waits until what was recorded so far is committed."""


@attrs.define(eq=False)
class SubscriptionOptions:
    """What a client asked for when it subscribed to one filter."""

    qos: int
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0
    subscription_id: int | None = None


@attrs.define(eq=False)
class Inflight:
    """An outgoing QoS 1/2 message not yet fully acknowledged."""

    message: Message
    qos: int
    retain: bool
    subscription_ids: tuple[int, ...] = ()
    #: the shared subscription group it was sent for, if any
    group: Any = None
    #: QoS 2: PUBREC received and PUBREL sent, waiting for PUBCOMP
    released: bool = False
    #: clock time it was (last) sent
    sent_at: float = 0.0
    #: its place in the store's deliveries of this session (0: not stored)
    seq: int = 0
