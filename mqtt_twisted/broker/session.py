"""One client's session: its subscriptions and the QoS state of messages to and from it.

Knows nothing of transports: it writes through the :class:`SessionConnection`
it is attached to, and keeps its state while detached (persistent sessions).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from mqtt_twisted.broker.entries import (
    Handover,
    Inflight,
    Publisher,
    Queued,
    SessionConnection,
    SubscriptionOptions,
)
from mqtt_twisted.broker.flow import FlowWatch, SessionFlow
from mqtt_twisted.broker.hooks import ClientIdentity
from mqtt_twisted.broker.message import Message

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

    from mqtt_twisted.broker.config import BrokerConfig
    from mqtt_twisted.broker.journal import Journal
    from mqtt_twisted.broker.stats import BrokerStats
    from mqtt_twisted.packets import Will

log = Logger()

MAX_PACKET_ID = 65535
#: a held publisher is read again once the queue that held it drains to this share of its
#: limit (the high-water mark is the limit). Close to it: a subscriber limited by its
#: in-flight window drains slowly, and the publisher should be read again soon (measured
#: with bench/ flood-qos1: 50 % gave 26-32k msg/s, 90 % about 40k).
LOW_WATER_PERCENT = 90
#: messages nobody can be held back for (wills, $SYS, retained messages on SUBSCRIBE, a
#: client's own messages) may fill a connected client's queue up to this many times its
#: limit before they are dropped
HARD_LIMIT_FACTOR = 2


class Session(SessionFlow):
    """State of one client id, connected or not.

    Flow control (see README, "Flow control"): while connected, a session whose queue
    reaches the high-water mark holds back the connections that publish to it (their input
    is paused, so TCP slows their clients) until the queue drains to the low-water mark. If
    it stays full for ``slow_client_grace`` seconds the client counts as slow: the
    publishers are released, and what does not fit in its queue is dropped and counted
    until its queue is empty again (those methods: :class:`SessionFlow`). Offline sessions
    drop what does not fit at once.
    """

    __slots__ = (
        "client_id", "expiry_interval", "subscriptions", "connection", "inflight", "queue",
        "awaiting_pubrel", "expiry_call", "delayed_will", "will_call", "dropped",
        "identity", "_next_id", "_stats", "_clock", "_config",
        "_max_window", "_window", "_queued_bytes", "_inflight_bytes", "_high", "_high_bytes",
        "_low", "_low_bytes", "_limit", "journal", "_seq", "_stored_seq", "protocol_level",
    )  # fmt: skip

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
        self.queue: deque[Queued] = deque()
        #: incoming QoS 2 packet ids delivered but not yet released (PUBREL)
        self.awaiting_pubrel: set[int] = set()
        #: pending removal of a disconnected persistent session
        self.expiry_call: IDelayedCall | None = None
        #: a will waiting for its Will Delay Interval (MQTT 5)
        self.delayed_will: Will | None = None
        self.will_call: IDelayedCall | None = None
        #: messages this client should have had and did not get
        self.dropped = 0
        #: past its grace time with a full queue: drops instead of holding publishers
        self.slow = False
        #: while connected and behind: whom it holds back, how long it made the broker wait
        self.flow: FlowWatch | None = None
        #: who its client is (from its latest CONNECT; kept while it is away)
        self.identity: ClientIdentity = ClientIdentity(client_id)
        #: where its changes are recorded while it is persistent and the broker has a store
        self.journal: Journal | None = None
        #: the protocol level of its latest connection (recorded with it)
        self.protocol_level = 4
        self._seq = 0
        #: the highest ``seq`` another writer gave a delivery this session holds
        self._stored_seq = 0
        self._dropping = False
        self._next_id = 1
        self._stats = stats
        self._clock = clock
        self._config = config
        self._max_window = config.max_inflight_messages or MAX_PACKET_ID
        self._window = self._max_window
        self._queued_bytes = 0
        self._inflight_bytes = 0
        self._high = config.queue_high_water
        #: --max-queued-messages: where an offline or slow client's queue drops (0: never)
        self._limit = config.max_queued_messages
        self._high_bytes = config.max_queued_bytes
        self._low = self._high * LOW_WATER_PERCENT // 100
        self._low_bytes = self._high_bytes * LOW_WATER_PERCENT // 100

    def __repr__(self) -> str:
        return f"<Session {self.client_id!r}>"

    @property
    def queued_bytes(self) -> int:
        """Payload bytes of the queued messages."""
        return self._queued_bytes

    # -- delivery ----------------------------------------------------------------

    def deliver(
        self,
        message: Message,
        qos: int,
        retain: bool,
        subscription_ids: tuple[int, ...] = (),
        group: Any = None,
        origin: Publisher | None = None,
    ) -> None:
        """Send ``message`` at ``qos`` now if the client can take it, else queue it.

        ``origin`` is the publisher's session: its connection is held back while this
        session's queue is full (see the class docstring)."""
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
        self._enqueue(Queued(message, qos, retain, subscription_ids, group), origin)

    def deliver_stored(
        self,
        message: Message,
        qos: int,
        retain: bool,
        subscription_ids: tuple[int, ...],
        seq: int,
        origin: Publisher | None = None,
    ) -> None:
        """A QoS 1/2 delivery the store already holds as ``seq`` (in a cluster, written by
        the publisher's node): sent or queued like any other, never recorded again.

        Its writers give ``seq`` in ascending order, so one at or below the highest this
        session holds is here already (loaded with the session): it is skipped."""
        if seq <= self._stored_seq:
            return
        self._stored_seq = seq
        conn = self.connection
        if conn is not None and not self.queue and len(self.inflight) < self._window:
            self._send_new(conn, message, qos, retain, subscription_ids, None, seq)
            return
        self._enqueue(Queued(message, qos, retain, subscription_ids, None, seq), origin)

    def holds_stored_up_to(self, seq: int) -> None:
        """Deliveries up to ``seq`` given by another writer are in this session (it was
        loaded from a store that had counted that far): ``deliver_stored`` skips them."""
        if seq > self._stored_seq:
            self._stored_seq = seq

    def reserve_seqs(self, below: int) -> None:
        """Deliveries this session records itself get a ``seq`` of at least ``below``
        (smaller ones are given by someone else: see ``deliver_stored``)."""
        if self._seq < below:
            self._seq = below

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
        conn.write_publish(parts[0], None, parts[1])
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
        seq: int = 0,
    ) -> None:
        parts = conn.encode_publish(message, qos, retain, subscription_ids, False)
        journal = self.journal
        if parts is None:
            if seq and journal is not None:
                journal.remove_delivery(self.client_id, seq, message)
            self._drop_oversized()
            return
        packet_id = self._allocate_packet_id()
        if journal is not None:
            new = not seq
            if new:
                seq = self._seq = self._seq + 1
            journal.save_delivery(
                self.client_id, seq, message, qos, retain, subscription_ids, packet_id, new=new
            )
            if qos == 2:  # exactly once: never sent under a packet id the store may forget
                conn.await_commit()
        self.inflight[packet_id] = Inflight(
            message, qos, retain, subscription_ids, group, False, self._clock.seconds(), seq
        )
        size = len(message.payload)
        self._inflight_bytes += size
        stats = self._stats
        stats.stored_messages += 1
        stats.stored_bytes += size
        conn.write_publish(parts[0], packet_id, parts[1])
        stats.publish_sent += 1
        stats.publish_bytes_sent += size

    def _drop_oversized(self) -> None:
        """Larger than the client's Maximum Packet Size: dropped for it [MQTT-3.1.2-25]."""
        self.dropped += 1
        self._stats.publish_dropped += 1

    def _full(self, size: int, factor: int = 1) -> bool:
        """Whether a message of ``size`` payload bytes does not fit in the queue (of
        ``factor`` times its limit)."""
        queue = self.queue
        if len(queue) >= self._high * factor:
            return True
        high_bytes = self._high_bytes * factor
        return bool(high_bytes and queue) and self._queued_bytes + size > high_bytes

    def _over_limit(self, size: int, factor: int = 1) -> bool:
        """Whether a message of ``size`` payload bytes exceeds --max-queued-messages /
        --max-queued-bytes (``factor`` times them); 0 is no limit."""
        limit = self._limit
        if limit and len(self.queue) >= limit * factor:
            return True
        high_bytes = self._high_bytes * factor
        return bool(high_bytes and self.queue) and self._queued_bytes + size > high_bytes

    def _enqueue(self, item: Queued, origin: Publisher | None) -> None:
        size = len(item.message.payload)
        if self._full(size):
            if self.connection is None:
                if self._over_limit(size):
                    self._drop(item)  # offline: bounded by dropping
                    return
                self._push(item)
                return
            if origin is None or origin is self:
                # Nobody to hold back: a will, $SYS, retained messages on SUBSCRIBE, or its
                # own messages (whose acknowledgements share its input). They may use a
                # second limit's worth of room, then they are dropped: bounded all the same.
                if self._over_limit(size, HARD_LIMIT_FACTOR):
                    self._drop(item)
                    return
                self._push(item)
                return
            if not self.slow:
                # Connected and within its grace time: keep the message and hold back its
                # publisher, so the queue exceeds the limit by at most one message per
                # publisher.
                self._hold(origin)
            if self.slow and self._over_limit(size):
                self._drop(item)
                return
        self._push(item)

    def _push(self, item: Queued) -> None:
        journal = self.journal
        if journal is not None and item.qos and not item.seq:
            seq = self._seq = self._seq + 1
            item = item._replace(seq=seq)
            journal.save_delivery(
                self.client_id,
                seq,
                item.message,
                item.qos,
                item.retain,
                item.subscription_ids,
                None,
                new=True,
            )
        self.queue.append(item)
        size = len(item.message.payload)
        self._queued_bytes += size
        stats = self._stats
        stats.stored_messages += 1
        stats.stored_bytes += size

    def _pop(self) -> Queued:
        item = self.queue.popleft()
        size = len(item.message.payload)
        self._queued_bytes -= size
        stats = self._stats
        stats.stored_messages -= 1
        stats.stored_bytes -= size
        return item

    def _drop(self, item: Queued | None = None) -> None:
        if item is not None and item.seq and self.journal is not None:  # stored already
            self.journal.remove_delivery(self.client_id, item.seq, item.message)
        self.dropped += 1
        self._stats.publish_dropped += 1
        if not self._dropping:
            self._dropping = True
            log.warn(
                "queue of client {client_id} is full ({limit} messages, {size} bytes): "
                "dropping messages ({dropped} dropped for it so far)",
                client_id=self.client_id,
                limit=len(self.queue),
                size=self._queued_bytes,
                dropped=self.dropped,
            )

    def drain(self) -> None:
        """Move queued messages to the client while its window and buffer allow, in order."""
        conn = self.connection
        queue = self.queue
        if conn is None:
            return
        now = None
        while queue:
            message, qos, retain, subscription_ids, group, seq = queue[0]
            if message.expires_at is not None:
                if now is None:
                    now = self._clock.seconds()
                if message.expired(now):  # never delivered once expired [MQTT-3.3.2-5]
                    self._pop()
                    if seq and self.journal is not None:
                        self.journal.remove_delivery(self.client_id, seq, message)
                    continue
            if qos == 0:
                if conn.paused:
                    break
                self._pop()
                self._send_qos0(conn, message, retain, subscription_ids)
            else:
                if len(self.inflight) >= self._window:
                    break
                self._pop()
                self._send_new(conn, message, qos, retain, subscription_ids, group, seq)
        if len(queue) <= self._low and (
            not self._high_bytes or self._queued_bytes <= self._low_bytes
        ):
            if not queue and (self.slow or self.flow is not None):
                self._caught_up()
            else:
                flow = self.flow
                if flow is not None and flow.holding:
                    flow.release(self)
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

    def _acknowledged(self, packet_id: int, entry: Inflight) -> None:
        del self.inflight[packet_id]
        if entry.seq and self.journal is not None:
            self.journal.remove_delivery(self.client_id, entry.seq, entry.message)
        size = len(entry.message.payload)
        self._inflight_bytes -= size
        stats = self._stats
        stats.stored_messages -= 1
        stats.stored_bytes -= size
        if self.queue:
            self.drain()

    def puback(self, packet_id: int) -> bool:
        """PUBACK for a QoS 1 message; False if no such message was in flight."""
        entry = self.inflight.get(packet_id)
        if entry is None or entry.qos != 1:
            return False
        self._acknowledged(packet_id, entry)
        return True

    def pubrec(self, packet_id: int, failed: bool = False) -> bool:
        """PUBREC for a QoS 2 message: answer PUBREL; False if unknown.

        A PUBREC with a reason code of 0x80 or more (MQTT 5, section 4.3.3) ends the delivery."""
        entry = self.inflight.get(packet_id)
        if entry is None or entry.qos != 2:
            return False
        if failed:
            self._acknowledged(packet_id, entry)
            return True
        entry.released = True
        conn = self.connection
        journal = self.journal
        if entry.seq and journal is not None:
            message = entry.message
            journal.save_delivery(
                self.client_id,
                entry.seq,
                message,
                2,
                entry.retain,
                entry.subscription_ids,
                packet_id,
                released=True,
            )
            if conn is not None:  # never PUBREL what the store may still resend as PUBLISH
                conn.await_commit()
        if conn is not None:
            conn.write_pubrel(packet_id)
        return True

    def pubcomp(self, packet_id: int) -> bool:
        """PUBCOMP ends a QoS 2 delivery; False if unknown."""
        entry = self.inflight.get(packet_id)
        if entry is None or entry.qos != 2 or not entry.released:
            return False
        self._acknowledged(packet_id, entry)
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
        if self.journal is not None and self.inflight:
            conn.await_commit()  # resent under packet ids the store must know
        for packet_id, entry in self.inflight.items():  # [MQTT-4.4.0-1], in order [MQTT-4.6.0-1]
            if entry.released:
                conn.write_pubrel(packet_id)
            else:
                entry.sent_at = self._clock.seconds()
                parts = conn.encode_publish(
                    entry.message, entry.qos, entry.retain, entry.subscription_ids, True
                )
                if parts is not None:
                    conn.write_publish(parts[0], packet_id, parts[1])
        self.drain()

    def detach(self) -> list[Handover]:
        """The connection ended. QoS 0 messages waiting for a slow reader are dropped.

        Returns the messages sent for shared subscriptions and not yet received by the
        client (queued, or in flight without PUBREC): the broker gives them to another
        member of their group. They are removed from this session.
        """
        self.connection = None
        self._end_flow_control()
        handover: list[Handover] = []
        if any(item.qos == 0 or item.group is not None for item in self.queue):
            kept: deque[Queued] = deque()
            while self.queue:
                item = self._pop()
                if item.group is not None:
                    if item.seq and self.journal is not None:
                        self.journal.remove_delivery(self.client_id, item.seq, item.message)
                    handover.append(Handover(item.message, item.group))
                elif item.qos:
                    kept.append(item)
                else:
                    self.dropped += 1
                    self._stats.publish_dropped += 1
            for item in kept:
                self._push(item)
        for packet_id, entry in list(self.inflight.items()):
            if entry.group is not None and not entry.released:
                self._acknowledged(packet_id, entry)
                handover.append(Handover(entry.message, entry.group))
        return handover

    def clear(self) -> None:
        """The session ends: what it held is no longer stored."""
        self._end_flow_control()
        stats = self._stats
        stats.stored_messages -= len(self.queue) + len(self.inflight)
        stats.stored_bytes -= self._queued_bytes + self._inflight_bytes
        journal = self.journal
        if journal is not None:  # the broker purges its rows; the messages lose a reference
            for item in self.queue:
                if item.seq:
                    journal.release(item.message)
            for entry in self.inflight.values():
                if entry.seq:
                    journal.release(entry.message)
        self.queue.clear()
        self.inflight.clear()
        self._queued_bytes = self._inflight_bytes = 0

    # -- incoming QoS 2 ---------------------------------------------------------------

    def expect_pubrel(self, packet_id: int) -> None:
        """An incoming QoS 2 message was delivered: its id waits for PUBREL (exactly once)."""
        self.awaiting_pubrel.add(packet_id)
        if self.journal is not None:
            self.journal.add_inbound(self.client_id, packet_id)

    def pubrel(self, packet_id: int) -> bool:
        """PUBREL (or a refused QoS 2 PUBLISH) frees ``packet_id``; False if unknown."""
        awaiting = self.awaiting_pubrel
        if packet_id not in awaiting:
            return False
        awaiting.discard(packet_id)
        if self.journal is not None:
            self.journal.remove_inbound(self.client_id, packet_id)
        return True

    # -- restoring from a store -----------------------------------------------------------

    def restore_delivery(self, item: Queued, packet_id: int | None, released: bool) -> None:
        """At start-up: a stored delivery goes back in flight (with its packet id) or in
        the queue, in stored order."""
        if item.seq > self._seq:
            self._seq = item.seq
        if packet_id is None:
            self._push(item)
            return
        self.inflight[packet_id] = Inflight(
            item.message,
            item.qos,
            item.retain,
            item.subscription_ids,
            item.group,
            released,
            self._clock.seconds(),
            item.seq,
        )
        size = len(item.message.payload)
        self._inflight_bytes += size
        self._stats.stored_messages += 1
        self._stats.stored_bytes += size
        if packet_id >= self._next_id:
            self._next_id = packet_id % MAX_PACKET_ID + 1
