"""One client's session: its subscriptions and the QoS state of messages to and from it.

Knows nothing of transports: it writes through the :class:`SessionConnection`
it is attached to, and keeps its state while detached (persistent sessions).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

import attrs
from twisted.logger import Logger

from mqtt_twisted.broker.message import Message

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

    from mqtt_twisted.broker.config import BrokerConfig
    from mqtt_twisted.broker.stats import BrokerStats
    from mqtt_twisted.packets import Will

log = Logger()

MAX_PACKET_ID = 65535
#: queue entries: message, QoS, retain flag, subscription identifiers, shared group (or None)
QueueItem = tuple[Message, int, bool, tuple[int, ...], Any]


class SessionConnection(Protocol):
    """What a session needs of the connection it is attached to."""

    protocol_level: int
    #: True while the transport's buffer is full (slow reader)
    paused: bool
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


class Session:
    """State of one client id, connected or not."""

    __slots__ = (
        "client_id",
        "expiry_interval",
        "subscriptions",
        "connection",
        "inflight",
        "queue",
        "awaiting_pubrel",
        "expiry_call",
        "delayed_will",
        "will_call",
        "dropped",
        "_dropping",
        "_next_id",
        "_stats",
        "_clock",
        "_max_window",
        "_window",
        "_max_queued",
    )

    def __init__(
        self,
        client_id: str,
        expiry_interval: float | None,
        config: BrokerConfig,
        stats: BrokerStats,
        clock: IReactorTime,
    ) -> None:
        self.client_id = client_id
        #: seconds the session outlives its connection: 0 = ends with it, None = never
        self.expiry_interval = expiry_interval
        self.subscriptions: dict[str, SubscriptionOptions] = {}
        self.connection: SessionConnection | None = None
        #: outgoing QoS 1/2 messages by packet id, in the order they were sent
        self.inflight: dict[int, Inflight] = {}
        #: messages waiting for the in-flight window or for the client to come back
        self.queue: deque[QueueItem] = deque()
        #: incoming QoS 2 packet ids delivered but not yet released (PUBREL)
        self.awaiting_pubrel: set[int] = set()
        #: pending removal of a disconnected persistent session
        self.expiry_call: IDelayedCall | None = None
        #: a will waiting for its Will Delay Interval (MQTT 5)
        self.delayed_will: Will | None = None
        self.will_call: IDelayedCall | None = None
        self.dropped = 0
        self._dropping = False
        self._next_id = 1
        self._stats = stats
        self._clock = clock
        self._max_window = config.max_inflight_messages or MAX_PACKET_ID
        self._window = self._max_window
        self._max_queued = config.max_queued_messages

    def __repr__(self) -> str:
        return f"<Session {self.client_id!r}>"

    # -- delivery ----------------------------------------------------------------

    def deliver(
        self,
        message: Message,
        qos: int,
        retain: bool,
        subscription_ids: tuple[int, ...] = (),
        group: Any = None,
    ) -> None:
        """Send ``message`` at ``qos`` now if the client can take it, else queue it."""
        conn = self.connection
        if qos == 0:
            if conn is None:
                return  # QoS 0 is not kept for offline clients
            if not conn.paused and not self.queue:
                self._send_qos0(conn, message, retain, subscription_ids)
                return
        elif conn is not None and not self.queue and len(self.inflight) < self._window:
            self._send_new(conn, message, qos, retain, subscription_ids, group)
            return
        self._enqueue((message, qos, retain, subscription_ids, group))

    def _send_qos0(
        self,
        conn: SessionConnection,
        message: Message,
        retain: bool,
        subscription_ids: tuple[int, ...],
    ) -> None:
        parts = conn.encode_publish(message, 0, retain, subscription_ids, False)
        if parts is None:
            self._drop_oversized()
            return
        conn.write_publish(parts[0], None, b"")
        stats = self._stats
        stats.publish_sent += 1
        stats.publish_bytes_sent += len(message.payload)

    def _send_new(
        self,
        conn: SessionConnection,
        message: Message,
        qos: int,
        retain: bool,
        subscription_ids: tuple[int, ...],
        group: Any,
    ) -> None:
        parts = conn.encode_publish(message, qos, retain, subscription_ids, False)
        if parts is None:
            self._drop_oversized()
            return
        packet_id = self._allocate_packet_id()
        self.inflight[packet_id] = Inflight(message, qos, retain, subscription_ids, group)
        conn.write_publish(parts[0], packet_id, parts[1])
        stats = self._stats
        stats.publish_sent += 1
        stats.publish_bytes_sent += len(message.payload)

    def _drop_oversized(self) -> None:
        """Larger than the client's Maximum Packet Size: dropped for it [MQTT-3.1.2-25]."""
        self.dropped += 1
        self._stats.publish_dropped += 1

    def _enqueue(self, item: QueueItem) -> None:
        if self._max_queued and len(self.queue) >= self._max_queued:
            self.dropped += 1
            self._stats.publish_dropped += 1
            if not self._dropping:
                self._dropping = True
                log.warn(
                    "queue of client {client_id} is full ({limit} messages): dropping messages",
                    client_id=self.client_id,
                    limit=self._max_queued,
                )
            return
        self.queue.append(item)

    def drain(self) -> None:
        """Move queued messages to the client while its window and buffer allow, in order."""
        conn = self.connection
        queue = self.queue
        if conn is None:
            return
        now = None
        while queue:
            message, qos, retain, subscription_ids, group = queue[0]
            if message.expires_at is not None:
                if now is None:
                    now = self._clock.seconds()
                if message.expired(now):  # never delivered once expired [MQTT-3.3.2-5]
                    queue.popleft()
                    continue
            if qos == 0:
                if conn.paused:
                    break
                queue.popleft()
                self._send_qos0(conn, message, retain, subscription_ids)
            else:
                if len(self.inflight) >= self._window:
                    break
                queue.popleft()
                self._send_new(conn, message, qos, retain, subscription_ids, group)
        if self._dropping and len(queue) < self._max_queued:
            self._dropping = False

    def _allocate_packet_id(self) -> int:
        """The next packet id not in flight (never reuses one still unacknowledged)."""
        packet_id = self._next_id
        inflight = self.inflight
        while packet_id in inflight:
            packet_id = packet_id % MAX_PACKET_ID + 1
        self._next_id = packet_id % MAX_PACKET_ID + 1
        return packet_id

    # -- acknowledgements from the client ------------------------------------------

    def puback(self, packet_id: int) -> bool:
        """PUBACK for a QoS 1 message; False if no such message was in flight."""
        entry = self.inflight.get(packet_id)
        if entry is None or entry.qos != 1:
            return False
        del self.inflight[packet_id]
        if self.queue:
            self.drain()
        return True

    def pubrec(self, packet_id: int, failed: bool = False) -> bool:
        """PUBREC for a QoS 2 message: answer PUBREL; False if unknown.

        A PUBREC with a reason code of 0x80 or more (MQTT 5, section 4.3.3) ends the delivery."""
        entry = self.inflight.get(packet_id)
        if entry is None or entry.qos != 2:
            return False
        if failed:
            del self.inflight[packet_id]
            if self.queue:
                self.drain()
            return True
        entry.released = True
        if self.connection is not None:
            self.connection.write_pubrel(packet_id)
        return True

    def pubcomp(self, packet_id: int) -> bool:
        """PUBCOMP ends a QoS 2 delivery; False if unknown."""
        entry = self.inflight.get(packet_id)
        if entry is None or entry.qos != 2 or not entry.released:
            return False
        del self.inflight[packet_id]
        if self.queue:
            self.drain()
        return True

    # -- connection changes -----------------------------------------------------------

    def attach(self, conn: SessionConnection) -> None:
        """A connection took this session: resend what is unacknowledged, then the queue."""
        self.connection = conn
        self._window = min(self._max_window, conn.receive_maximum)  # [MQTT-3.3.4-9]
        if self.expiry_call is not None:
            if self.expiry_call.active():
                self.expiry_call.cancel()
            self.expiry_call = None
        for packet_id, entry in self.inflight.items():  # [MQTT-4.4.0-1], in order [MQTT-4.6.0-1]
            if entry.released:
                conn.write_pubrel(packet_id)
            else:
                parts = conn.encode_publish(
                    entry.message, entry.qos, entry.retain, entry.subscription_ids, True
                )
                if parts is not None:
                    conn.write_publish(parts[0], packet_id, parts[1])
        self.drain()

    def detach(self) -> list[tuple[Message, int, bool, Any]]:
        """The connection ended. QoS 0 messages waiting for a slow reader are dropped.

        Returns the messages sent for shared subscriptions and not yet received by the
        client (queued, or in flight without PUBREC): the broker gives them to another
        member of their group. They are removed from this session.
        """
        self.connection = None
        handover: list[tuple[Message, int, bool, Any]] = []
        if any(item[1] == 0 or item[4] is not None for item in self.queue):
            kept: deque[QueueItem] = deque()
            for item in self.queue:
                if item[4] is not None:
                    handover.append((item[0], item[1], item[2], item[4]))
                elif item[1]:
                    kept.append(item)
                else:
                    self._stats.publish_dropped += 1
            self.queue = kept
        for packet_id, entry in list(self.inflight.items()):
            if entry.group is not None and not entry.released:
                del self.inflight[packet_id]
                handover.append((entry.message, entry.qos, entry.retain, entry.group))
        return handover
