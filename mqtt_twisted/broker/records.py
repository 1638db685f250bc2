"""What the broker keeps in a store, as plain records, and the interface a store implements.

The broker core records changes as they happen (see :mod:`mqtt_twisted.broker.journal`)
into a :class:`Batch`; a :class:`StoreBackend` commits batches (one transaction each) and
hands everything back as a :class:`Snapshot` when the broker starts. Records carry clock
times (``reactor.seconds()``, i.e. wall-clock seconds in production), so expiry survives a
restart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import attrs

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from mqtt_twisted.broker.message import Message

#: the schema of what is stored; a store records it and refuses a newer one
SCHEMA_VERSION = 1


class WillRecord(NamedTuple):
    """A will waiting for its Will Delay Interval (MQTT 5) in a disconnected session."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    #: MQTT 5 will properties (Property -> value), Will Delay Interval left out
    properties: dict[int, Any]
    #: clock time at which it is published unless the client comes back
    publish_at: float


class SessionRecord(NamedTuple):
    """A persistent session (one whose Session Expiry Interval is not 0)."""

    client_id: str
    protocol_level: int
    #: seconds it outlives its connection; None = never expires
    expiry_interval: float | None
    username: str | None
    #: clock time its connection ended; None while connected (after a crash: "at start-up")
    disconnected_at: float | None
    will: WillRecord | None = None


class SubscriptionRecord(NamedTuple):
    """One subscription of a persistent session, with the options it was made with."""

    client_id: str
    topic_filter: str
    qos: int
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0
    subscription_id: int | None = None


class MessageRecord(NamedTuple):
    """An application message that one or more deliveries refer to (stored once)."""

    message_id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    #: MQTT 5 PUBLISH properties as forwarded (Property -> value)
    properties: dict[int, Any]
    #: clock time after which it must not be delivered (Message Expiry); None = never
    expires_at: float | None

    @classmethod
    def of(cls, message_id: int, message: Message) -> MessageRecord:
        """The record of ``message``, stored as ``message_id``."""
        return cls(
            message_id,
            message.topic,
            message.payload,
            message.qos,
            message.retain,
            message.properties,
            message.expires_at,
        )


class DeliveryRecord(NamedTuple):
    """A QoS 1/2 message owed to a persistent session: queued, or in flight."""

    client_id: str
    #: order of the session's deliveries (ascending = the order they are sent in)
    seq: int
    message_id: int
    qos: int
    retain: bool
    subscription_ids: tuple[int, ...]
    #: the packet id it was sent with; None while still queued
    packet_id: int | None
    #: QoS 2: PUBREC received and PUBREL sent
    released: bool = False


class RetainedRecord(NamedTuple):
    """The retained message of one topic."""

    topic: str
    payload: bytes
    qos: int
    properties: dict[int, Any]
    expires_at: float | None


class InboundKey(NamedTuple):
    """An incoming QoS 2 packet id delivered and not yet released by PUBREL."""

    client_id: str
    packet_id: int


@attrs.define
class Snapshot:
    """Everything a store holds, as the broker loads it at start-up."""

    sessions: dict[str, SessionRecord] = attrs.Factory(dict)
    #: by client id
    subscriptions: dict[str, list[SubscriptionRecord]] = attrs.Factory(dict)
    messages: dict[int, MessageRecord] = attrs.Factory(dict)
    #: by client id, each list in ascending ``seq``
    deliveries: dict[str, list[DeliveryRecord]] = attrs.Factory(dict)
    #: incoming QoS 2 packet ids awaiting PUBREL, by client id
    inbound: dict[str, set[int]] = attrs.Factory(dict)
    retained: list[RetainedRecord] = attrs.Factory(list)
    #: broker totals that survive a restart (e.g. "clients_maximum")
    totals: dict[str, int] = attrs.Factory(dict)


@attrs.define
class Batch:
    """Changes to commit in one transaction. Applied in this order: ``purged`` client ids
    lose every stored row (session, subscriptions, deliveries, inbound ids) first, then
    each mapping is applied: a record is inserted or replaced, None deletes the key."""

    purged: set[str] = attrs.Factory(set)
    sessions: dict[str, SessionRecord | None] = attrs.Factory(dict)
    #: key (client id, topic filter)
    subscriptions: dict[tuple[str, str], SubscriptionRecord | None] = attrs.Factory(dict)
    messages: dict[int, MessageRecord | None] = attrs.Factory(dict)
    #: key (client id, seq)
    deliveries: dict[tuple[str, int], DeliveryRecord | None] = attrs.Factory(dict)
    #: True: add the id, False: remove it
    inbound: dict[InboundKey, bool] = attrs.Factory(dict)
    retained: dict[str, RetainedRecord | None] = attrs.Factory(dict)
    totals: dict[str, int] = attrs.Factory(dict)

    def __bool__(self) -> bool:
        return bool(
            self.purged
            or self.sessions
            or self.subscriptions
            or self.messages
            or self.deliveries
            or self.inbound
            or self.retained
            or self.totals
        )

    def changes(self) -> int:
        """How many rows this batch writes or deletes (purges count one each)."""
        return (
            len(self.purged)
            + len(self.sessions)
            + len(self.subscriptions)
            + len(self.messages)
            + len(self.deliveries)
            + len(self.inbound)
            + len(self.retained)
            + len(self.totals)
        )


class StoreError(Exception):
    """A store cannot be opened or used; the message is one line for the operator."""


class StoreBackend(Protocol):
    """Where committed state lives: :class:`~mqtt_twisted.storage.memory.MemoryStore` or
    :class:`~mqtt_twisted.storage.sqlite.SQLiteStore`."""

    #: for the log: "memory", "sqlite:/path/file.sqlite (synchronous full)"
    description: str

    def load(self) -> Snapshot:
        """Everything committed so far (called once, before any listener opens)."""

    def commit(self, batch: Batch) -> Deferred[None]:
        """Apply ``batch`` atomically; the Deferred fires once it is durable. Commits are
        called one at a time (the next only after the previous one fired)."""

    def close(self) -> Deferred[None]:
        """Release the store (after the last commit fired)."""
