"""One client's session: its subscriptions and the QoS state of messages to and from it.

Knows nothing of transports: it writes through the :class:`SessionConnection`
it is attached to, and keeps its state while detached (persistent sessions).
"""
from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Protocol

import attrs
from twisted.logger import Logger

from mqtt_twisted.broker.message import Message

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

    from mqtt_twisted.broker.config import BrokerConfig
    from mqtt_twisted.broker.stats import BrokerStats
    from mqtt_twisted.packets import Will

log = Logger()

MAX_PACKET_ID = 65535


class SessionConnection(Protocol):
    """What a session needs of the connection it is attached to."""

    protocol_level: int
    #: True while the transport's buffer is full (slow reader)
    paused: bool

    def write_publish(self, head: bytes, packet_id: int | None, tail: bytes) -> None:
        """Write one encoded PUBLISH (packet id between head and tail when given)."""

    def write_pubrel(self, packet_id: int) -> None:
        """Write a PUBREL."""

    def take_over(self) -> None:
        """Close this connection because another one took its client id."""


@attrs.define(eq=False)
class SubscriptionOptions:
    """What a client asked for when it subscribed to one filter."""

    qos: int
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0


@attrs.define(eq=False)
class Inflight:
    """An outgoing QoS 1/2 message not yet fully acknowledged."""

    message: Message
    qos: int
    retain: bool
    #: QoS 2: PUBREC received and PUBREL sent, waiting for PUBCOMP
    released: bool = False


class Session:
    """State of one client id, connected or not."""

    def __init__(
        self, client_id: str, clean_session: bool, config: BrokerConfig, stats: BrokerStats
    ) -> None:
        self.client_id = client_id
        self.clean_session = clean_session
        self.subscriptions: dict[str, SubscriptionOptions] = {}
        self.connection: SessionConnection | None = None
        self.will: Will | None = None
        #: outgoing QoS 1/2 messages by packet id, in the order they were sent
        self.inflight: dict[int, Inflight] = {}
        #: messages waiting for the in-flight window or for the client to come back
        self.queue: deque[tuple[Message, int, bool]] = deque()
        #: incoming QoS 2 packet ids delivered but not yet released (PUBREL)
        self.awaiting_pubrel: set[int] = set()
        #: pending removal of a disconnected persistent session
        self.expiry_call: IDelayedCall | None = None
        self.dropped = 0
        self._dropping = False
        self._next_id = 1
        self._stats = stats
        self._max_inflight = config.max_inflight_messages or MAX_PACKET_ID
        self._max_queued = config.max_queued_messages

    def __repr__(self) -> str:
        return f"<Session {self.client_id!r}>"

    # -- delivery ----------------------------------------------------------------

    def deliver(self, message: Message, qos: int, retain: bool) -> None:
        """Send ``message`` at ``qos`` now if the client can take it, else queue it."""
        conn = self.connection
        if qos == 0:
            if conn is None:
                return  # QoS 0 is not kept for offline clients
            if not conn.paused and not self.queue:
                conn.write_publish(message.parts(conn.protocol_level, 0, retain)[0], None, b"")
                self._count_sent(message)
                return
        elif conn is not None and not self.queue and len(self.inflight) < self._max_inflight:
            self._send_new(conn, message, qos, retain)
            return
        self._enqueue(message, qos, retain)

    def _send_new(self, conn: SessionConnection, message: Message, qos: int, retain: bool) -> None:
        packet_id = self._allocate_packet_id()
        self.inflight[packet_id] = Inflight(message, qos, retain)
        head, tail = message.parts(conn.protocol_level, qos, retain)
        conn.write_publish(head, packet_id, tail)
        self._count_sent(message)

    def _count_sent(self, message: Message) -> None:
        stats = self._stats
        stats.publish_sent += 1
        stats.publish_bytes_sent += len(message.payload)

    def _enqueue(self, message: Message, qos: int, retain: bool) -> None:
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
        self.queue.append((message, qos, retain))

    def drain(self) -> None:
        """Move queued messages to the client while its window and buffer allow, in order."""
        conn = self.connection
        queue = self.queue
        if conn is None:
            return
        while queue:
            message, qos, retain = queue[0]
            if qos == 0:
                if conn.paused:
                    break
                queue.popleft()
                conn.write_publish(message.parts(conn.protocol_level, 0, retain)[0], None, b"")
                self._count_sent(message)
            else:
                if len(self.inflight) >= self._max_inflight:
                    break
                queue.popleft()
                self._send_new(conn, message, qos, retain)
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

    def pubrec(self, packet_id: int) -> bool:
        """PUBREC for a QoS 2 message: answer PUBREL; False if unknown."""
        entry = self.inflight.get(packet_id)
        if entry is None or entry.qos != 2:
            return False
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
        if self.expiry_call is not None:
            if self.expiry_call.active():
                self.expiry_call.cancel()
            self.expiry_call = None
        level = conn.protocol_level
        for packet_id, entry in self.inflight.items():  # [MQTT-4.4.0-1], in order [MQTT-4.6.0-1]
            if entry.released:
                conn.write_pubrel(packet_id)
            else:
                head, tail = entry.message.dup_parts(level, entry.qos, entry.retain)
                conn.write_publish(head, packet_id, tail)
        self.drain()

    def detach(self) -> None:
        """The connection ended; QoS 0 messages waiting for a slow reader are dropped."""
        self.connection = None
        if any(qos == 0 for _, qos, _ in self.queue):
            kept = [item for item in self.queue if item[1]]
            self._stats.publish_dropped += len(self.queue) - len(kept)
            self.queue = deque(kept)
