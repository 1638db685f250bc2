"""The broker: sessions by client id, subscription routing, retained messages, wills."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from time import perf_counter
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mqtt_twisted.broker.clusterlink import LOCAL_SEQ_BASE, ClusterLink
from mqtt_twisted.broker.config import BrokerConfig
from mqtt_twisted.broker.entries import Handover, SessionConnection, SubscriptionOptions
from mqtt_twisted.broker.hooks import ClientIdentity, Hooks
from mqtt_twisted.broker.journal import Journal
from mqtt_twisted.broker.limits import ConnectionRate, LimitLog
from mqtt_twisted.broker.message import Message
from mqtt_twisted.broker.records import SessionRecord, SubscriptionRecord, WillRecord
from mqtt_twisted.broker.session import Session
from mqtt_twisted.broker.shared import SharedSubscriptions
from mqtt_twisted.broker.stats import BrokerStats
from mqtt_twisted.broker.store import MemoryRetainedStore, RetainedStore
from mqtt_twisted.packets import Property, SubscriptionRequest, Will
from mqtt_twisted.topics import SubscriptionTree, validate_topic_filter

log = Logger()

SUBACK_FAILURE = 0x80
SUBACK_NOT_AUTHORIZED = 0x87
SUBACK_QUOTA_EXCEEDED = 0x97
#: one PUBLISH in this many is timed for the metrics histogram
PUBLISH_SAMPLE_EVERY = 64
UNSUBACK_NO_SUBSCRIPTION = 0x11
SHARE_PREFIX = "$share/"
WILL_DELAY = Property.WILL_DELAY_INTERVAL
MESSAGE_EXPIRY = Property.MESSAGE_EXPIRY_INTERVAL


class Broker:
    """Routes messages between sessions. Transport-free: connections attach to sessions.

    ``clock`` is an ``IReactorTime`` (the reactor, or ``task.Clock`` in tests).
    """

    def __init__(
        self,
        clock: IReactorTime,
        config: BrokerConfig | None = None,
        retained: RetainedStore | None = None,
        hooks: Hooks | None = None,
        journal: Journal | None = None,
    ) -> None:
        self.clock = clock
        #: where durable changes are recorded (None: nothing survives a restart)
        self.journal = journal
        #: authentication, authorisation, storage (see broker/hooks.py)
        self.hooks: Hooks = hooks if hooks is not None else Hooks()
        self.config = config or BrokerConfig()
        self.retained: RetainedStore = retained if retained is not None else MemoryRetainedStore()
        self.stats = BrokerStats()
        #: exceeded limits, logged once per burst
        self.limits = LimitLog()
        self.connection_rate = ConnectionRate(self.config.max_connection_rate)
        self.sessions: dict[str, Session] = {}
        self.subscriptions: SubscriptionTree[Session, SubscriptionOptions] = SubscriptionTree()
        self.shared = SharedSubscriptions()
        self.connected = 0
        #: False once the broker is shutting down: new connections are refused
        self.accepting = True
        self.started = clock.seconds()
        #: called with the seconds one sampled PUBLISH took to route (set by /metrics)
        self.publish_timer: Callable[[float], None] | None = None
        #: the other nodes when running as a cluster (None: this process is the broker)
        self.cluster: ClusterLink | None = None

    # -- the cluster ------------------------------------------------------------------

    def claim(self, client_id: str, will: Will | None) -> Deferred[int] | None:
        """In a cluster: take ``client_id`` from whichever node has it (None: no cluster)."""
        cluster = self.cluster
        if cluster is None:
            return None
        return cluster.claim(client_id, None if will is None else self.will_message(will))

    def deliver_forwarded(
        self, message: Message, plain: bool, groups: Sequence[str], origin: Any = None
    ) -> None:
        """A message another node routed here: to the local subscriptions it matches
        (``plain``) and to one member of each of ``groups`` (``$share/NAME/FILTER``).
        ``origin`` stands for its publisher (a full subscriber holds it back)."""
        self.stats.cluster_received += 1
        if plain:
            matches = self.subscriptions.match(message.topic)
            if matches:
                self._deliver_merged(message, matches, origin)
        for share_filter in groups:
            group = self.shared.group(share_filter)
            if group is None or not self.deliver_shared(group, message, origin):
                self.stats.publish_dropped += 1

    def apply_retained(self, topic: str, message: Message | None) -> None:
        """The cluster's retained message on ``topic`` is now ``message`` (None: none)."""
        if message is None:
            self.retained.discard(topic)
        else:
            self.retained.set(topic, message)

    # -- sessions -------------------------------------------------------------------

    def open_session(
        self,
        client_id: str,
        clean_start: bool,
        expiry_interval: float | None,
        identity: ClientIdentity | None = None,
        protocol_level: int = 4,
    ) -> tuple[Session, bool]:
        """Find or make the session of ``client_id`` for a new connection.

        ``expiry_interval``: seconds the session outlives the connection (0: it ends with
        it; None: never). Returns the session and whether it was already present. An
        existing connection with the same client id is closed first [MQTT-3.1.4-2]. The
        caller sends CONNACK, then calls ``session.attach(connection)``.
        """
        self.stats.connections_total += 1
        session = self.sessions.get(client_id)
        if session is not None and session.connection is not None:
            session.connection.take_over()  # ends in session_closed(), synchronously
            session = self.sessions.get(client_id)
        if session is not None and clean_start:  # [MQTT-3.1.2-6], [MQTT-3.1.2-4]
            self._discard(session)
            session = None
        present = session is not None
        if session is None:
            session = Session(client_id, expiry_interval, self.config, self.stats, self.clock)
            self.sessions[client_id] = session
        else:
            session.expiry_interval = expiry_interval
            self._cancel_delayed_will(session)  # back in time: no will [MQTT-3.1.3-9]
        if identity is not None:
            session.identity = identity
        if self.cluster is not None and not present and expiry_interval != 0:
            session.reserve_seqs(LOCAL_SEQ_BASE)  # below: given by publishers' nodes
        session.protocol_level = protocol_level
        journal = self.journal
        if journal is not None and (expiry_interval != 0 or session.journal is not None):
            session.journal = journal
            self._save_session(session, None)
        self.connected += 1
        if self.connected > self.stats.clients_maximum:
            self.stats.clients_maximum = self.connected
            if journal is not None:
                journal.save_total("clients_maximum", self.connected)
        return session, present

    def _save_session(self, session: Session, disconnected_at: float | None) -> None:
        """Record a persistent session (and a will waiting for its delay)."""
        journal = session.journal
        if journal is None:
            return
        will = session.delayed_will
        will_record = None
        if will is not None and session.will_call is not None:
            will_record = WillRecord(
                will.topic,
                will.payload,
                will.qos,
                will.retain,
                will.properties,
                session.will_call.getTime(),
            )
        journal.save_session(
            SessionRecord(
                session.client_id,
                session.protocol_level,
                session.expiry_interval,
                session.identity.username,
                disconnected_at,
                will_record,
            )
        )

    def shutdown(self) -> None:
        """Refuse new connections and close every open one (no wills: the client did not fail)."""
        self.accepting = False
        self.drop_clients()

    def drop_clients(self) -> None:
        """Close every open connection as ``shutdown`` does, but go on accepting."""
        for session in list(self.sessions.values()):
            if session.connection is not None:
                session.connection.shut_down()

    def moved(self, client_id: str) -> None:
        """Another node of the cluster took ``client_id``: its connection here is taken
        over [MQTT-3.1.4-3] and its session here ends."""
        session = self.sessions.get(client_id)
        if session is not None and session.connection is not None:
            session.connection.take_over()  # ends in session_closed(), synchronously
        session = self.sessions.get(client_id)
        if session is None:
            return
        if session.journal is None:
            self._discard(session)
            return
        # Persistent: the store keeps it for the node that took it; it only leaves here.
        for topic_filter in session.subscriptions:
            self.remove_subscription(session, topic_filter, moving=True)
        session.subscriptions.clear()
        session.clear()
        del self.sessions[client_id]
        for call in (session.expiry_call, session.will_call):
            if call is not None and call.active():
                call.cancel()
        session.expiry_call = session.will_call = session.delayed_will = None

    def session_closed(self, session: Session, conn: SessionConnection, will: Will | None) -> None:
        """``conn`` ended; publish ``will`` (now or after its delay), keep or drop the session."""
        handover: list[Handover] = []
        if session.connection is conn:
            if self.cluster is not None:
                self.cluster.disconnected(session.client_id)
            self.connected -= 1
            handover = session.detach()
            expiry = session.expiry_interval
            delay = will.properties.get(WILL_DELAY, 0) if will is not None else 0
            if delay and expiry != 0:
                session.delayed_will = will
                session.will_call = self.clock.callLater(delay, self._publish_delayed_will, session)
                will = None
            if expiry == 0:
                self._discard(session)
            else:
                limit = self.config.persistent_client_expiration
                if expiry is not None and (limit is None or expiry < limit):
                    limit = expiry
                if limit is not None:
                    session.expiry_call = self.clock.callLater(limit, self._expire, session)
                self._save_session(session, self.clock.seconds())
        if will is not None:
            self.publish(self.will_message(will))
        cluster = self.cluster
        for item in handover:
            group = item.group
            if (
                cluster is not None
                and not group.connected()
                and cluster.hand_over(group, item.message)
            ):
                continue  # to a member on another node
            if not self.deliver_shared(group, item.message):
                self.stats.publish_dropped += 1

    def will_message(self, will: Will) -> Message:
        """The message a will publishes: its properties without Will Delay Interval."""
        properties = will.properties
        if properties:
            properties = {k: v for k, v in properties.items() if k != WILL_DELAY}
        return Message(
            will.topic,
            will.payload,
            will.qos,
            will.retain,
            properties,
            self.expiry_time(properties),
        )

    def expiry_time(self, properties: dict) -> float | None:
        """Clock time at which a message with these properties expires (None: never)."""
        interval = properties.get(MESSAGE_EXPIRY) if properties else None
        return self.clock.seconds() + interval if interval else None

    def _publish_delayed_will(self, session: Session) -> None:
        will, session.delayed_will, session.will_call = session.delayed_will, None, None
        if will is not None:
            if self.sessions.get(session.client_id) is session:
                self._save_session(session, self.clock.seconds())  # no will left to wait
            self.publish(self.will_message(will))

    def _cancel_delayed_will(self, session: Session) -> None:
        if session.will_call is not None and session.will_call.active():
            session.will_call.cancel()
        session.will_call = None
        session.delayed_will = None

    def _discard(self, session: Session) -> None:
        """End a session: subscriptions go, a delayed will is published now."""
        for topic_filter in session.subscriptions:
            self.remove_subscription(session, topic_filter)
        session.subscriptions.clear()
        session.clear()
        if self.cluster is not None:
            self.cluster.session_ended(session.client_id)
        if session.journal is not None:
            session.journal.purge(session.client_id)
            session.journal = None
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
        call = session.expiry_call
        if call is not None and call.active():
            call.cancel()
        session.expiry_call = None
        if session.delayed_will is not None:  # the session ended before the delay [MQTT-3.1.3-9]
            will = session.delayed_will
            self._cancel_delayed_will(session)
            self.publish(self.will_message(will))

    def _expire(self, session: Session) -> None:
        session.expiry_call = None
        self.stats.clients_expired += 1
        log.info(
            "session of client {client_id} expired",
            client_id=session.client_id,
        )
        self._discard(session)

    # -- routing --------------------------------------------------------------------

    def publish(self, message: Message, origin: Session | None = None) -> bool:
        """A message from a client (or its will): count it and route it.

        Returns whether any subscription matched it."""
        stats = self.stats
        stats.publish_received += 1
        stats.publish_bytes_received += len(message.payload)
        if stats.publish_received % PUBLISH_SAMPLE_EVERY or self.publish_timer is None:
            return self.route(message, origin)
        started = perf_counter()
        matched = self.route(message, origin)
        self.publish_timer(perf_counter() - started)
        return matched

    def route(self, message: Message, origin: Session | None = None) -> bool:
        """Store (if retained) and deliver ``message`` to every matching subscription.

        Returns whether any subscription matched."""
        if message.retain:
            journal = self.journal
            if journal is not None and message.topic.startswith("$SYS"):
                journal = None  # the broker's own figures are published afresh after a restart
            if message.payload:
                self.retained.set(message.topic, message)
                if journal is not None:
                    journal.save_retained(message)
            elif self.retained.discard(message.topic) and journal is not None:
                journal.remove_retained(message.topic)  # [MQTT-3.3.1-10], [MQTT-3.3.1-11]
            if self.cluster is not None and not message.topic.startswith("$SYS"):
                self.cluster.retain(message)
        matched = False
        topic = message.topic
        matches = self.subscriptions.match(topic)
        read_check = self.hooks.read_check  # None: everyone may read everything
        if matches:
            matched = True
            msg_qos = message.qos
            retain = message.retain
            if len(matches) == 1:
                for session, opts in matches[0].items():
                    if opts.no_local and session is origin:  # [MQTT-3.8.3-3]
                        continue
                    if read_check is not None and not read_check(session.identity, topic):
                        continue  # not on a topic it may not read, whatever its filter
                    sid = opts.subscription_id
                    session.deliver(
                        message,
                        msg_qos if msg_qos < opts.qos else opts.qos,
                        retain and opts.retain_as_published,
                        (sid,) if sid else (),
                        None,
                        origin,
                    )
            else:
                self._deliver_merged(message, matches, origin)
        cluster = self.cluster
        if cluster is not None:  # it takes turns with the other nodes' shared group members
            return cluster.forward(message, origin) or matched
        if self.shared.groups:
            for groups in self.shared.match(message.topic):
                for group in groups:
                    matched = self.deliver_shared(group, message, origin) or matched
        return matched

    def _deliver_merged(self, message: Message, matches: list, origin: Session | None) -> None:
        """Overlapping subscriptions of one client: one copy at the highest QoS
        [MQTT-3.3.5-1], carrying every matching subscription identifier [MQTT-3.3.4-3]."""
        merged: dict[Session, list] = {}
        read_check = self.hooks.read_check
        topic = message.topic
        for subscribers in matches:
            for session, opts in subscribers.items():
                if opts.no_local and session is origin:
                    continue
                if read_check is not None and not read_check(session.identity, topic):
                    continue
                entry = merged.get(session)
                if entry is None:
                    entry = merged[session] = [opts.qos, opts.retain_as_published, []]
                else:
                    if opts.qos > entry[0]:
                        entry[0] = opts.qos
                    entry[1] = entry[1] or opts.retain_as_published
                if opts.subscription_id:
                    entry[2].append(opts.subscription_id)
        msg_qos = message.qos
        for session, (qos, as_published, ids) in merged.items():
            session.deliver(
                message,
                msg_qos if msg_qos < qos else qos,
                message.retain and as_published,
                tuple(ids),
                None,
                origin,
            )

    def deliver_shared(self, group, message: Message, origin: Session | None = None) -> bool:
        """Give ``message`` to one member of a shared group; False if the group is empty."""
        member = group.pick()
        if member is None:
            return False
        session, opts = member
        read_check = self.hooks.read_check
        if read_check is not None and not read_check(session.identity, message.topic):
            return False
        sid = opts.subscription_id
        session.deliver(
            message,
            message.qos if message.qos < opts.qos else opts.qos,
            message.retain and opts.retain_as_published,
            (sid,) if sid else (),
            group,
            origin,
        )
        return True

    def subscribe(
        self,
        session: Session,
        requests: Sequence[SubscriptionRequest],
        subscription_id: int | None = None,
    ) -> list[int]:
        """Add subscriptions; returns one SUBACK code per request: the granted QoS, 0x80 for
        an invalid filter, 0x87 for one the client may read nothing through (the hooks'
        ACL; 3.x clients see 0x80)."""
        codes = []
        max_qos = self.config.max_qos
        may_subscribe = self.hooks.may_subscribe
        max_subscriptions = self.config.max_subscriptions_per_client
        for request in requests:
            topic_filter = request.topic_filter
            if not validate_topic_filter(topic_filter):
                codes.append(SUBACK_FAILURE)
                continue
            if not may_subscribe(session.identity, topic_filter):
                codes.append(SUBACK_NOT_AUTHORIZED)
                continue
            if (
                max_subscriptions
                and topic_filter not in session.subscriptions
                and len(session.subscriptions) >= max_subscriptions
            ):
                self.stats.subscriptions_refused += 1
                self.limits.exceeded(
                    "max-subscriptions-per-client",
                    "client {client_id} has {count} subscriptions: no more "
                    "(--max-subscriptions-per-client)",
                    client_id=session.client_id,
                    count=max_subscriptions,
                )
                codes.append(SUBACK_QUOTA_EXCEEDED)
                continue
            qos = request.qos if request.qos < max_qos else max_qos  # [MQTT-3.9.3-2]
            opts = SubscriptionOptions(
                qos,
                request.no_local,
                request.retain_as_published,
                request.retain_handling,
                subscription_id,
            )
            existed = topic_filter in session.subscriptions
            session.subscriptions[topic_filter] = opts  # replaces an existing one [MQTT-3.8.4-3]
            if session.journal is not None:
                session.journal.save_subscription(
                    SubscriptionRecord(session.client_id, topic_filter, *attrs.astuple(opts))
                )
            self.add_subscription(session, topic_filter, opts, existed)
            codes.append(qos)
        return codes

    def add_subscription(
        self,
        session: Session,
        topic_filter: str,
        opts: SubscriptionOptions,
        existed: bool = False,
        announce: bool = True,
    ) -> None:
        """Put a subscription where routing finds it. In a cluster a persistent session's
        plain subscriptions live in the cluster (its messages are stored in Redis by the
        publisher's node); ``announce``: tell the cluster (False: it knows already)."""
        cluster = self.cluster
        if topic_filter.startswith(SHARE_PREFIX):
            self.shared.add(topic_filter, session, opts)
        elif cluster is not None and session.journal is not None:
            if announce:
                cluster.session_subscribed(session.client_id, topic_filter, opts)
            return
        else:
            self.subscriptions.add(topic_filter, session, opts)
        if cluster is not None and not existed:
            cluster.subscribed(topic_filter)

    def remove_subscription(
        self, session: Session, topic_filter: str, moving: bool = False
    ) -> None:
        """Take a subscription out of routing (``moving``: the session goes on on another
        node of the cluster, which keeps its subscriptions)."""
        cluster = self.cluster
        if topic_filter.startswith(SHARE_PREFIX):
            self.shared.remove(topic_filter, session)
        elif cluster is not None and session.journal is not None:
            if not moving:
                cluster.session_unsubscribed(session.client_id, topic_filter)
            return
        else:
            self.subscriptions.remove(topic_filter, session)
        if cluster is not None:
            cluster.unsubscribed(topic_filter)

    def send_retained(
        self,
        session: Session,
        requests: Sequence[SubscriptionRequest],
        codes: Sequence[int],
        existed: Sequence[bool],
    ) -> None:
        """After SUBACK: send the retained messages each granted subscription matches."""
        now = self.clock.seconds()
        for request, code, was_there in zip(requests, codes, existed):
            if code >= SUBACK_FAILURE or request.retain_handling == 2:
                continue
            if request.retain_handling == 1 and was_there:
                continue
            if request.topic_filter.startswith(SHARE_PREFIX):
                continue  # no retained messages on shared subscriptions (MQTT 5.0 section 4.8.2)
            opts = session.subscriptions.get(request.topic_filter)
            sid = opts.subscription_id if opts is not None else None
            read_check = self.hooks.read_check
            for topic, message in self.retained.match(request.topic_filter):
                if message.expired(now):
                    self.retained.discard(topic)
                    if self.journal is not None:
                        self.journal.remove_retained(topic)
                    continue
                if read_check is not None and not read_check(session.identity, topic):
                    continue
                qos = message.qos if message.qos < code else code
                session.deliver(message, qos, True, (sid,) if sid else ())  # [MQTT-3.3.1-8]

    def unsubscribe(self, session: Session, topic_filters: Sequence[str]) -> list[int]:
        """Remove subscriptions; returns a code per filter (0 or 0x11 no subscription existed)."""
        codes = []
        for topic_filter in topic_filters:
            if session.subscriptions.pop(topic_filter, None) is not None:
                if session.journal is not None:
                    session.journal.remove_subscription(session.client_id, topic_filter)
                self.remove_subscription(session, topic_filter)
                codes.append(0)
            else:
                codes.append(UNSUBACK_NO_SUBSCRIPTION)
        return codes
