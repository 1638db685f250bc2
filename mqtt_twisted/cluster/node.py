"""One broker process as a node of a cluster on Redis: the broker core's :class:`ClusterLink`.

Two connections to Redis: commands (scripts, in the order the node issues them, so one
publisher's messages keep their order) and a subscriber (the cluster channel and this
node's own). Messages go to the nodes whose subscriptions match, on their channel;
acknowledgements of QoS 1/2 messages wait until Redis took them. Losing Redis (or
finding that the others declared this node dead) drops every client, refuses CONNECT and
reconnects; the node then reads all shared state afresh.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Sequence
from typing import Any

from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from mqtt_twisted.broker import Broker, Session
from mqtt_twisted.broker.clusterlink import ClusterFigures
from mqtt_twisted.broker.entries import SubscriptionOptions
from mqtt_twisted.broker.hooks import Refused
from mqtt_twisted.broker.journal import Barrier, Journal
from mqtt_twisted.broker.message import Message
from mqtt_twisted.broker.shared import SharedGroup
from mqtt_twisted.cluster.backpressure import BUSY, Holds, RemoteFeed, pack_busy, unpack_busy
from mqtt_twisted.cluster.membership import FAILED, RETRY_FIRST, Membership, quiet
from mqtt_twisted.cluster.redis import (
    RedisAddress,
    RedisProtocol,
    RedisSubscriber,
)
from mqtt_twisted.cluster.replica import Replica
from mqtt_twisted.cluster.routes import merge_deliveries
from mqtt_twisted.cluster.scripts import Keys
from mqtt_twisted.cluster.sessions import SessionMoves
from mqtt_twisted.cluster.store import RedisStore
from mqtt_twisted.cluster.wire import (
    DOORBELL,
    FORWARD,
    KICK,
    RELEASED,
    RETAINED,
    SEP,
    SESSION_ROUTE,
    SESSION_UNROUTE,
    Kick,
    pack_delivery_head,
    pack_message,
    pack_options,
    unpack_doorbell,
    unpack_forward,
    unpack_kick,
    unpack_released,
    unpack_retained_event,
    unpack_route_event,
    unpack_session_route_event,
)
from mqtt_twisted.packets import ConnackCode, ReasonCode

log = Logger()


def default_node_id() -> str:
    """Host name and process id: unique on a machine and across machines."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _fire(result: object, barrier: Barrier) -> None:
    if result is not FAILED:
        barrier.fire()


class ClusterNode(Membership):
    """This process's place in the cluster; see the module docstring."""

    def __init__(
        self,
        reactor: Any,
        broker: Broker,
        address: RedisAddress,
        node_id: str,
        lease: float = 10.0,
        prefix: str = "mq:",
    ) -> None:
        self.reactor = reactor
        self.broker = broker
        self.address = address
        self.node_id = node_id
        self.lease = lease
        self.keys = Keys(prefix)
        #: True while both connections are up and shared state has been read
        self.ready = False
        #: live nodes, this one included, as the last lease check saw them
        self.nodes: list[str] = [node_id]
        self.replica = Replica(
            node_id,
            self._fetch_routes,
            self._fetch_retained,
            self._retained,
            self._fetch_session_routes,
        )
        #: persistent sessions live in Redis: the broker's journal writes them there
        self.store = RedisStore(self.keys, node_id, lambda: self._redis if self.ready else None)
        self.journal = Journal(self.store, reactor)
        broker.journal = self.journal
        self.sessions = SessionMoves(self, self.store, self.journal)
        self._redis: RedisProtocol | None = None
        self._subscriber: RedisSubscriber | None = None
        self._shas: dict[str, bytes] = {}
        self._channels: dict[str, bytes] = {}
        self._own_channel = self.keys.channel(node_id).encode()
        #: local subscriptions per filter (routes are announced on the first and last)
        self._counts: dict[str, int] = {}
        #: claim number of each client id held here, claims on their way, later kicks
        self._epochs: dict[str, int] = {}
        self._claiming: dict[str, int] = {}
        self._kicked: dict[str, tuple[int, str]] = {}
        self._last: Deferred[Any] | None = None
        self._loops: list[task.LoopingCall] = []
        self._renewed_at = 0.0
        self._renewing: float | None = None
        self._retry = RETRY_FIRST
        self._retry_call: Any = None
        self._stopping = False
        self._generation = 0
        self._startup: list[Deferred[Any]] | None = None
        #: flow control across nodes (see backpressure.py)
        self.feed = RemoteFeed(self._announce_busy)
        self.holds = Holds()
        #: own route events awaited (SUBACK waits for them), by kind and number
        self._echoes: dict[tuple[bytes, int], Deferred[object]] = {}
        #: the highest number heard of each kind: an echo may come before the reply
        self._heard_up_to: dict[bytes, int] = {}
        #: the cluster's totals, summed from every node's figures in Redis
        self._totals: dict[bytes, int] = {}

    # -- ClusterLink: what the broker core calls -----------------------------------------

    def forward(self, message: Message, origin: Session | None) -> bool:
        topic = message.topic
        broker = self.broker
        local = {}
        if broker.shared.groups:
            local = {g.share_filter: g for found in broker.shared.match(topic) for g in found}
        if topic[:4] == "$SYS":  # each node's own figures, for its own clients
            return self._sys_here(message, local.values())
        sessions = self._store_for_sessions(message, origin)
        matched = bool(sessions)
        routes = self.replica.routes
        nodes = routes.nodes_for(topic)
        groups: dict[str, list[str]] = {}
        for group in routes.groups_for(topic):
            here = local.pop(group.share_filter, None)
            node = group.pick(here is not None)
            if node is None:
                assert here is not None
                matched = broker.deliver_shared(here, message, origin) or matched
            else:
                groups.setdefault(node, []).append(group.share_filter)
        for here in local.values():  # no member elsewhere
            matched = broker.deliver_shared(here, message, origin) or matched
        targets = nodes | groups.keys()
        if self.holds and origin is not None and origin.connection is not None:
            self.holds.hold(origin.connection, targets, sessions)  # a busy subscriber
        if not targets:
            return matched
        redis = self._redis
        if redis is None or not self.ready:
            return True  # never acknowledged: the connection is being dropped
        packed = pack_message(message)
        channels = self._channels
        for node in targets:
            names = SEP.join(g.encode() for g in groups.get(node, ()))
            data = b"".join(
                (FORWARD, b"P" if node in nodes else b"-", len(names).to_bytes(4, "big"), names)
            )
            channel = channels.get(node)
            if channel is None:
                channel = channels[node] = self.keys.channel(node).encode()
            self._last = redis.execute(b"PUBLISH", channel, data + packed).addErrback(quiet)
        self.broker.stats.cluster_forwarded += len(targets)
        return True

    def _sys_here(self, message: Message, groups: Iterable[SharedGroup]) -> bool:
        """``$SYS`` goes to this node's clients only: its persistent sessions' matching
        subscriptions (not stored: the figures come again) and its shared groups."""
        broker = self.broker
        matched = False
        matches = self.replica.persistent.match(message.topic)
        for client_id, (qos, retain, ids) in merge_deliveries(message, matches, None).items():
            session = broker.sessions.get(client_id)
            if session is not None:
                session.deliver(message, qos, retain, ids)
                matched = True
        for group in groups:
            matched = broker.deliver_shared(group, message) or matched
        return matched

    def _store_for_sessions(
        self, message: Message, origin: Session | None
    ) -> dict[str, tuple[int, bool, tuple[int, ...]]]:
        """Store ``message`` for the persistent sessions it matches (any node's): one
        script that also rings their nodes. Returns them (client id: QoS, retain, ids)."""
        matches = self.replica.persistent.match(message.topic)
        if not matches:
            return {}
        targets = merge_deliveries(message, matches, origin.client_id if origin else None)
        if targets:
            args: list[Any] = [self.keys.prefix, pack_message(message)]
            for client_id, (qos, retain, ids) in targets.items():
                args += (client_id, pack_delivery_head(qos, retain, ids), qos)
            self._script("enqueue", (), args)
        return targets

    def session_subscribed(
        self, client_id: str, topic_filter: str, options: SubscriptionOptions
    ) -> None:
        self._session_route(client_id, topic_filter, pack_options(options))

    def session_unsubscribed(self, client_id: str, topic_filter: str) -> None:
        self._session_route(client_id, topic_filter, b"")

    def _session_route(self, client_id: str, topic_filter: str, options: bytes) -> None:
        if self.ready:
            keys = (self.keys.psubs, self.keys.psubs_seq, self.keys.all)
            announcing = self._script("session_route", keys, (client_id, topic_filter, options))
            self._last = announcing.addCallback(self._echo, b"P")

    def figures(self) -> ClusterFigures:
        totals = self._totals
        return ClusterFigures(
            self.node_id,
            self.ready,
            len(self.nodes),
            totals.get(b"connected", self.broker.connected),
            totals.get(b"received", self.broker.stats.publish_received),
            totals.get(b"sent", self.broker.stats.publish_sent),
        )

    def publish_to(self, node: str, data: bytes) -> None:
        """Send ``data`` on ``node``'s channel (nothing if Redis is not there)."""
        if self._redis is not None:
            channel = self.keys.channel(node)
            self._redis.execute(b"PUBLISH", channel, data).addErrback(quiet)

    def hand_over(self, group: SharedGroup, message: Message) -> bool:
        remote = self.replica.routes.group(group.share_filter)
        if remote is None or not self.ready or self._redis is None:
            return False
        node = remote.pick()
        assert node is not None
        names = group.share_filter.encode()
        data = b"".join((FORWARD, b"-", len(names).to_bytes(4, "big"), names))
        channel = self.keys.channel(node)
        self._redis.execute(b"PUBLISH", channel, data + pack_message(message)).addErrback(quiet)
        self.broker.stats.cluster_forwarded += 1
        return True

    def barrier(self) -> Barrier | None:
        last = self._last
        if last is None:
            return None
        self._last = None
        barrier = Barrier()
        last.addCallback(_fire, barrier)
        return barrier

    def subscribed(self, topic_filter: str) -> None:
        count = self._counts.get(topic_filter, 0) + 1
        self._counts[topic_filter] = count
        if count == 1:
            self._announce(b"S", topic_filter)

    def unsubscribed(self, topic_filter: str) -> None:
        count = self._counts.get(topic_filter, 0) - 1
        if count > 0:
            self._counts[topic_filter] = count
            return
        self._counts.pop(topic_filter, None)
        self._announce(b"U", topic_filter)

    def _announce(self, kind: bytes, topic_filter: str) -> None:
        if self.ready:
            routes = self.keys.routes(self.node_id)
            announcing = self._script(
                "route", (routes, self.keys.all), (kind, self.node_id, topic_filter)
            )
            self._last = announcing.addCallback(self._echo, b"S")

    def _announce_busy(self, client_id: str, busy: bool) -> None:
        if self.ready and self._redis is not None:
            data = pack_busy(self.node_id, client_id, busy)
            self._redis.execute(b"PUBLISH", self.keys.all, data).addErrback(quiet)

    def _echo(self, seq: object, kind: bytes) -> object:
        """Wait until this node hears its own route event: every node's subscriber
        connection got it then, so SUBACK is sent once the others (practically) know."""
        if seq is FAILED:
            return FAILED
        if int(seq) <= self._heard_up_to.get(kind, 0):  # type: ignore[call-overload]
            return None  # heard already: pub/sub comes on another connection than replies
        heard: Deferred[object] = Deferred()
        self._echoes[(kind, int(seq))] = heard  # type: ignore[call-overload]
        return heard

    def _heard(self, kind: bytes, seq: int) -> None:
        if seq > self._heard_up_to.get(kind, 0):
            self._heard_up_to[kind] = seq
        heard = self._echoes.pop((kind, seq), None)
        if heard is not None:
            heard.callback(None)

    def retain(self, message: Message) -> None:
        if self.ready:
            value = pack_message(message) if message.payload else b""
            keys = (self.keys.retained, self.keys.retained_seq, self.keys.all)
            self._script("retain", keys, (message.topic, value))

    def claim(self, client_id: str, will: Message | None) -> Deferred[int]:
        if not self.ready:
            return defer.fail(_unavailable())
        self._claiming[client_id] = self._claiming.get(client_id, 0) + 1
        keys = self.keys
        claiming = self._script(
            "claim",
            (keys.client(client_id), keys.wills(self.node_id), keys.session(client_id)),
            (self.node_id, client_id, b"" if will is None else pack_message(will), keys.prefix),
        )

        def claimed(result: object) -> Deferred[int]:
            if result is FAILED:
                self._claim_done(client_id)
                raise _unavailable()
            assert isinstance(result, list)
            epoch, previous, alive, stored = result
            taking = self.sessions.take(client_id, previous.decode(), bool(alive), bool(stored))

            def failed(failure: Failure) -> int:
                self._claim_done(client_id)
                log.failure(
                    "taking the session of {client_id} failed", failure, client_id=client_id
                )
                raise _unavailable()

            return taking.addCallbacks(lambda _: int(epoch), failed)

        return claiming.addCallback(claimed)

    def _claim_done(self, client_id: str) -> tuple[int, str]:
        """A claim of ``client_id`` came back: the newest kick while any was on its way."""
        left = self._claiming.get(client_id, 0) - 1
        if left > 0:
            self._claiming[client_id] = left
            return self._kicked.get(client_id, (0, ""))
        self._claiming.pop(client_id, None)
        return self._kicked.pop(client_id, (0, ""))

    def claimed(self, client_id: str, epoch: int) -> None:
        kicked, claimant = self._claim_done(client_id)
        if client_id in self.broker.sessions:
            if epoch > self._epochs.get(client_id, 0):
                self._epochs[client_id] = epoch
            if kicked > epoch:  # another node claimed it while this claim was on its way
                self._epochs.pop(client_id, None)
                self.sessions.hand_over(client_id, kicked, claimant)
        else:  # the client went away before its CONNACK
            self._release(client_id, epoch)

    def disconnected(self, client_id: str) -> None:
        epoch = self._epochs.get(client_id)
        if epoch is not None and self.ready:
            wills = self.keys.wills(self.node_id)
            self._script("drop_will", (wills,), (client_id, epoch))

    def session_ended(self, client_id: str) -> None:
        epoch = self._epochs.pop(client_id, None)
        if epoch is not None:
            self._release(client_id, epoch)

    def _release(self, client_id: str, epoch: int) -> None:
        if self.ready:
            keys = (self.keys.client(client_id), self.keys.hosted(self.node_id))
            self._script("release", keys, (self.node_id, epoch, client_id))

    def adopt_one(self, dead: str, client_id: str) -> Deferred[Any]:
        """Take ``client_id``'s persistent session from the dead node ``dead`` (fires with
        the claim number, or 0 if someone else has it now)."""
        keys = (self.keys.client(client_id), self.keys.session(client_id))
        return self._script("adopt", keys, (self.node_id, client_id, self.keys.prefix, dead))

    def adopted(self, client_id: str, epoch: int) -> None:
        self._epochs[client_id] = epoch

    def forget_claim(self, client_id: str) -> None:
        self._epochs.pop(client_id, None)

    # -- messages from the other nodes ------------------------------------------------------

    def _on_message(self, channel: bytes, data: bytes) -> None:
        kind = data[:1]
        if kind == FORWARD:
            forward = unpack_forward(data)
            self.broker.deliver_forwarded(forward.message, forward.plain, forward.groups, self.feed)
        elif kind == RETAINED:
            self.replica.retained_event(unpack_retained_event(data))
        elif kind == DOORBELL:
            self.sessions.doorbell(unpack_doorbell(data))
        elif kind == KICK:
            self._kick(unpack_kick(data))
        elif kind == BUSY:
            node, client_id, busy = unpack_busy(data)
            self.holds.busy(node, client_id, busy)
        elif kind == RELEASED:
            self.sessions.released(unpack_released(data)[0])
        elif kind == SESSION_ROUTE or kind == SESSION_UNROUTE:
            event = unpack_session_route_event(data)
            self.replica.session_route_event(event)
            self._heard(b"P", event.seq)
        else:
            route = unpack_route_event(data)
            if route.node == self.node_id:
                self._heard(b"S", route.seq)
            else:
                self.replica.route_event(route)
                if route.kind == b"X":  # a node gone: nobody stays held for its sessions
                    self.holds.node_gone(route.node)

    def _kick(self, kick: Kick) -> None:
        client_id, epoch, claimant = kick
        if self._claiming.get(client_id) and epoch > self._kicked.get(client_id, (0, ""))[0]:
            self._kicked[client_id] = (epoch, claimant)
        if self._epochs.get(client_id, 0) < epoch:
            self._epochs.pop(client_id, None)
            self.sessions.hand_over(client_id, epoch, claimant)

    def _retained(self, topic: str, message: Message | None) -> None:
        self.broker.apply_retained(topic, message)

    def _script(self, name: str, keys: Sequence[Any], args: Sequence[Any]) -> Deferred[Any]:
        """Run a script; its failure is ``FAILED`` (a lost connection is handled once, in
        ``_lose``). Acknowledgements asked for from now on wait for it (``barrier``)."""
        redis = self._redis
        if redis is None:
            return defer.succeed(FAILED)
        self._last = self._call(redis, name, keys, args).addErrback(quiet)
        return self._last

    def _call(
        self, redis: RedisProtocol, name: str, keys: Sequence[Any], args: Sequence[Any]
    ) -> Deferred[Any]:
        return redis.execute(b"EVALSHA", self._shas[name], len(keys), *keys, *args)


def _unavailable() -> Refused:
    return Refused(
        "the cluster is not available (no Redis)",
        ConnackCode.SERVER_UNAVAILABLE,
        ReasonCode.SERVER_UNAVAILABLE,
    )
