"""The broker: sessions by client id, subscription routing, retained messages, wills."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from time import perf_counter

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mqtt_twisted.broker.config import BrokerConfig
from mqtt_twisted.broker.message import Message
from mqtt_twisted.broker.session import Session, SessionConnection, SubscriptionOptions
from mqtt_twisted.broker.stats import BrokerStats
from mqtt_twisted.broker.store import MemoryRetainedStore, RetainedStore
from mqtt_twisted.packets import SubscriptionRequest, Will
from mqtt_twisted.topics import SubscriptionTree, validate_topic_filter

log = Logger()

SUBACK_FAILURE = 0x80
#: one PUBLISH in this many is timed for the metrics histogram
PUBLISH_SAMPLE_EVERY = 64
UNSUBACK_NO_SUBSCRIPTION = 0x11


class Broker:
    """Routes messages between sessions. Transport-free: connections attach to sessions.

    ``clock`` is an ``IReactorTime`` (the reactor, or ``task.Clock`` in tests).
    """

    def __init__(
        self,
        clock: IReactorTime,
        config: BrokerConfig | None = None,
        retained: RetainedStore | None = None,
    ) -> None:
        self.clock = clock
        self.config = config or BrokerConfig()
        self.retained: RetainedStore = retained if retained is not None else MemoryRetainedStore()
        self.stats = BrokerStats()
        self.sessions: dict[str, Session] = {}
        self.subscriptions: SubscriptionTree[Session, SubscriptionOptions] = SubscriptionTree()
        self.connected = 0
        self.started = clock.seconds()
        #: called with the seconds one sampled PUBLISH took to route (set by /metrics)
        self.publish_timer: Callable[[float], None] | None = None

    # -- sessions -------------------------------------------------------------------

    def open_session(
        self, client_id: str, clean_session: bool, conn: SessionConnection
    ) -> tuple[Session, bool]:
        """Find or make the session of ``client_id`` for a new connection.

        Returns the session and whether it was already present. An existing
        connection with the same client id is closed first [MQTT-3.1.4-2]. The
        caller sends CONNACK, then calls ``session.attach(conn)``.
        """
        self.stats.connections_total += 1
        session = self.sessions.get(client_id)
        if session is not None and session.connection is not None:
            session.connection.take_over()  # ends in session_closed(), synchronously
            session = self.sessions.get(client_id)
        if session is not None and clean_session:  # [MQTT-3.1.2-6]
            self._discard(session)
            session = None
        present = session is not None
        if session is None:
            session = Session(client_id, clean_session, self.config, self.stats)
            self.sessions[client_id] = session
        self.connected += 1
        if self.connected > self.stats.clients_maximum:
            self.stats.clients_maximum = self.connected
        return session, present

    def session_closed(self, session: Session, conn: SessionConnection, will: Will | None) -> None:
        """``conn`` ended; publish ``will`` if given, keep or drop the session."""
        if session.connection is conn:
            self.connected -= 1
            session.detach()
            if session.clean_session:
                self._discard(session)
            elif self.config.persistent_client_expiration is not None:
                session.expiry_call = self.clock.callLater(
                    self.config.persistent_client_expiration, self._expire, session
                )
        if will is not None:
            self.publish(Message(will.topic, will.payload, will.qos, will.retain, will.properties))

    def _discard(self, session: Session) -> None:
        for topic_filter in session.subscriptions:
            self.subscriptions.remove(topic_filter, session)
        session.subscriptions.clear()
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
        call = session.expiry_call
        if call is not None and call.active():
            call.cancel()
        session.expiry_call = None

    def _expire(self, session: Session) -> None:
        session.expiry_call = None
        self.stats.clients_expired += 1
        log.info(
            "session of client {client_id} expired after {seconds:g} s offline",
            client_id=session.client_id,
            seconds=self.config.persistent_client_expiration,
        )
        self._discard(session)

    # -- routing --------------------------------------------------------------------

    def publish(self, message: Message, origin: Session | None = None) -> None:
        """A message from a client (or its will): count it and route it."""
        stats = self.stats
        stats.publish_received += 1
        stats.publish_bytes_received += len(message.payload)
        if stats.publish_received % PUBLISH_SAMPLE_EVERY or self.publish_timer is None:
            self.route(message, origin)
            return
        started = perf_counter()
        self.route(message, origin)
        self.publish_timer(perf_counter() - started)

    def route(self, message: Message, origin: Session | None = None) -> None:
        """Store (if retained) and deliver ``message`` to every matching subscription."""
        if message.retain:
            if message.payload:
                self.retained.set(message.topic, message)
            else:  # [MQTT-3.3.1-10], [MQTT-3.3.1-11]
                self.retained.discard(message.topic)
        matches = self.subscriptions.match(message.topic)
        if not matches:
            return
        msg_qos = message.qos
        if len(matches) == 1:
            for session, opts in matches[0].items():
                if opts.no_local and session is origin:
                    continue
                session.deliver(
                    message,
                    msg_qos if msg_qos < opts.qos else opts.qos,
                    message.retain and opts.retain_as_published,
                )
            return
        # Overlapping subscriptions of one client: one copy at the highest QoS [MQTT-3.3.5-1]
        best: dict[Session, SubscriptionOptions] = {}
        for subscribers in matches:
            for session, opts in subscribers.items():
                if opts.no_local and session is origin:
                    continue
                seen = best.get(session)
                if seen is None or opts.qos > seen.qos:
                    best[session] = opts
        for session, opts in best.items():
            session.deliver(
                message,
                msg_qos if msg_qos < opts.qos else opts.qos,
                message.retain and opts.retain_as_published,
            )

    def subscribe(self, session: Session, requests: Sequence[SubscriptionRequest]) -> list[int]:
        """Add subscriptions; returns one SUBACK code per request (granted QoS or 0x80)."""
        codes = []
        max_qos = self.config.max_qos
        for request in requests:
            topic_filter = request.topic_filter
            if not validate_topic_filter(topic_filter):
                codes.append(SUBACK_FAILURE)
                continue
            qos = request.qos if request.qos < max_qos else max_qos  # [MQTT-3.9.3-2]
            opts = SubscriptionOptions(
                qos, request.no_local, request.retain_as_published, request.retain_handling
            )
            session.subscriptions[topic_filter] = opts  # replaces an existing one [MQTT-3.8.4-3]
            self.subscriptions.add(topic_filter, session, opts)
            codes.append(qos)
        return codes

    def send_retained(
        self,
        session: Session,
        requests: Sequence[SubscriptionRequest],
        codes: Sequence[int],
        existed: Sequence[bool],
    ) -> None:
        """After SUBACK: send the retained messages each granted subscription matches."""
        for request, code, was_there in zip(requests, codes, existed):
            if code >= SUBACK_FAILURE or request.retain_handling == 2:
                continue
            if request.retain_handling == 1 and was_there:
                continue
            for _topic, message in self.retained.match(request.topic_filter):
                qos = message.qos if message.qos < code else code
                session.deliver(message, qos, True)  # [MQTT-3.3.1-8]

    def unsubscribe(self, session: Session, topic_filters: Sequence[str]) -> list[int]:
        """Remove subscriptions; returns a code per filter (0 or 0x11 no subscription existed)."""
        codes = []
        for topic_filter in topic_filters:
            if session.subscriptions.pop(topic_filter, None) is not None:
                self.subscriptions.remove(topic_filter, session)
                codes.append(0)
            else:
                codes.append(UNSUBACK_NO_SUBSCRIPTION)
        return codes
