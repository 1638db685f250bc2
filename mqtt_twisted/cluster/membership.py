"""How a node joins the cluster, keeps its lease, reads shared state and survives losing
Redis: a mixin of :class:`mqtt_twisted.cluster.node.ClusterNode`, which keeps the state
declared below."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from mqtt_twisted.broker.journal import Journal
from mqtt_twisted.cluster import scripts
from mqtt_twisted.cluster.redis import (
    RedisAddress,
    RedisConnectionLost,
    RedisProtocol,
    RedisSubscriber,
    connect,
    connect_subscriber,
)
from mqtt_twisted.cluster.replica import Replica
from mqtt_twisted.cluster.scripts import Keys
from mqtt_twisted.cluster.wire import SEP, unpack_message, unpack_options

if TYPE_CHECKING:
    from mqtt_twisted.broker import Broker
    from mqtt_twisted.cluster.backpressure import Holds
    from mqtt_twisted.cluster.sessions import SessionMoves

log = Logger()

#: seconds between attempts to reach Redis again, doubling up to the second figure
RETRY_FIRST, RETRY_MAX = 0.5, 5.0
#: a command's failure, once its connection loss is handled (see ``quiet``)
FAILED = object()


def quiet(failure: Failure) -> object:
    """A command's failure: a lost connection is handled once, elsewhere."""
    if not failure.check(RedisConnectionLost):
        log.failure("cluster command failed", failure)
    return FAILED


def _timer_failed(failure: Failure) -> None:
    log.failure("cluster timer failed", failure)


class Membership:
    """Joining, the lease, shared state read afresh, losing Redis and coming back."""

    reactor: Any
    broker: Broker
    address: RedisAddress
    node_id: str
    lease: float
    keys: Keys
    ready: bool
    nodes: list[str]
    replica: Replica
    journal: Journal
    sessions: SessionMoves
    _redis: RedisProtocol | None
    _subscriber: RedisSubscriber | None
    _shas: dict[str, bytes]
    _own_channel: bytes
    _counts: dict[str, int]
    _last: Deferred[Any] | None
    _loops: list[task.LoopingCall]
    _renewed_at: float
    #: when the unanswered lease renewal was sent (None: none is)
    _renewing: float | None
    _retry: float
    _retry_call: Any
    _stopping: bool
    _generation: int
    _startup: list[Deferred[Any]] | None
    _totals: dict[bytes, int]
    _echoes: dict[tuple[bytes, int], Deferred[object]]
    _heard_up_to: dict[bytes, int]
    holds: Holds

    def _on_message(self, channel: bytes, data: bytes) -> None:
        raise NotImplementedError

    def _retained(self, topic: str, message: Any) -> None:
        raise NotImplementedError

    def _script(self, name: str, keys: Sequence[Any], args: Sequence[Any]) -> Deferred[Any]:
        raise NotImplementedError

    def _call(
        self, redis: RedisProtocol, name: str, keys: Sequence[Any], args: Sequence[Any]
    ) -> Deferred[Any]:
        raise NotImplementedError

    # -- reading shared state -----------------------------------------------------------------

    def _fetch_routes(self, node: str) -> None:
        assert self._redis is not None
        reading = self._redis.execute(b"HGETALL", self.keys.routes(node)).addErrback(quiet)

        def arrived(reply: object) -> None:
            if reply is not FAILED:
                assert isinstance(reply, list)
                fields = dict(zip(reply[::2], reply[1::2]))
                self.replica.routes_snapshot(node, fields)

        self._track(reading.addCallback(arrived))

    def _fetch_retained(self) -> None:
        keys = (self.keys.retained, self.keys.retained_seq)
        reading = self._script("snapshot", keys, ())

        def arrived(reply: object) -> None:
            if reply is FAILED:
                return
            assert isinstance(reply, list)
            seq, flat = reply
            messages = {
                topic.decode(): unpack_message(value) for topic, value in zip(flat[::2], flat[1::2])
            }
            present = {topic for topic, _ in self.broker.retained.match("#")}
            self.replica.retained_snapshot(int(seq), messages, present)

        self._track(reading.addCallback(arrived))

    def _fetch_session_routes(self) -> None:
        reading = self._script("snapshot", (self.keys.psubs, self.keys.psubs_seq), ())

        def arrived(reply: object) -> None:
            if reply is FAILED:
                return
            assert isinstance(reply, list)
            seq, flat = reply
            routes = {}
            for field, value in zip(flat[::2], flat[1::2]):
                client_id, topic_filter = field.split(SEP, 1)
                routes[(client_id.decode(), topic_filter.decode())] = unpack_options(value)
            present = self.replica.persistent_routes()
            self.replica.session_routes.snapshot(int(seq), routes, present)

        self._track(reading.addCallback(arrived))

    def _track(self, reading: Deferred[Any]) -> None:
        if self._startup is not None:
            self._startup.append(reading)

    # -- joining, leases, losing Redis ----------------------------------------------------------

    def start(self) -> None:
        """Connect to Redis and join the cluster (CONNECT is refused until then)."""
        log.info(
            "cluster node {node} joining through {redis}",
            node=self.node_id,
            redis=self.address.display,
        )
        self._join()

    def _join(self) -> None:
        self._retry_call = None
        generation = self._generation
        d = Deferred.fromCoroutine(self._connect_and_read())

        def failed(failure: Failure) -> None:
            if generation != self._generation or self._stopping:
                return
            log.error(
                "cluster node {node}: cannot join through {redis}: {why}; retrying in {delay} s",
                node=self.node_id,
                redis=self.address.display,
                why=failure.getErrorMessage(),
                delay=self._retry,
            )
            self._drop_connections()
            self._retry_later()

        d.addErrback(failed)

    async def _connect_and_read(self) -> None:
        generation = self._generation
        redis = await connect(self.reactor, self.address)
        self._redis = redis
        subscriber = await connect_subscriber(self.reactor, self.address, self._on_message)
        self._subscriber = subscriber
        redis.notify_lost().addCallback(self._lost, generation)
        subscriber.notify_lost().addCallback(self._lost, generation)
        loads = [redis.execute(b"SCRIPT", b"LOAD", source) for source in scripts.ALL.values()]
        for name, loading in zip(scripts.ALL, loads):
            self._shas[name] = await loading
        await subscriber.subscribe(self.keys.all, self._own_channel)
        keys = self.keys
        lease = (keys.lease(self.node_id), keys.nodes)
        await self._call(redis, "heartbeat", lease, self._lease_args())
        self._renewed_at = self.reactor.seconds()
        left = await self._call(redis, "reap", (keys.nodes,), (keys.prefix, self.node_id, "1"))
        self._counts = {}
        for session in self.broker.sessions.values():
            for topic_filter in session.subscriptions:
                self._counts[topic_filter] = self._counts.get(topic_filter, 0) + 1
        routes = (keys.routes(self.node_id), keys.all)
        await self._call(redis, "rewrite", routes, (self.node_id, *self._counts))
        self._startup = []
        self.replica.reset()
        self._members(await redis.execute(b"SMEMBERS", keys.nodes))
        for node in self.nodes:
            self.replica.refresh_node(node)
        self.replica.refresh_retained()
        self.replica.session_routes.refresh()
        reads, self._startup = self._startup, None
        await defer.gatherResults(reads)
        if generation != self._generation:
            return
        self.ready = True
        self._retry = RETRY_FIRST
        log.info(
            "cluster node {node} joined: {nodes} nodes, {routes} remote routes",
            node=self.node_id,
            nodes=len(self.nodes),
            routes=len(self.replica.routes),
        )
        self._publish_wills(left)
        self.sessions.reload_local()
        for call, interval in ((self._heartbeat, self.lease / 4), (self._reap, self.lease / 2)):
            loop = task.LoopingCall(call)
            loop.clock = self.reactor
            loop.start(interval, now=False).addErrback(_timer_failed)
            self._loops.append(loop)

    def _lease_args(self, join: bool = True) -> tuple[Any, ...]:
        return (self.node_id, int(self.lease * 1000), "join" if join else "renew")

    def _heartbeat(self) -> None:
        if self._renewing is not None:
            # The last renewal is unanswered. Redis hung, or this process did not run for
            # a while (then the answer is waiting to be read: give it one more turn).
            if self.reactor.seconds() - self._renewing > self.lease / 2:
                self.reactor.callLater(0.05, self._still_unanswered, self._renewing)
            return
        keys = self.keys
        self._renewing = self.reactor.seconds()
        renewing = self._script(
            "heartbeat", (keys.lease(self.node_id), keys.nodes), self._lease_args(join=False)
        )
        generation = self._generation

        def renewed(result: object) -> None:
            if result is FAILED or generation != self._generation:
                return
            self._renewing = None
            if result == 0:
                self._lose("the other nodes declared this node dead (its lease expired)")
                return
            self._renewed_at = self.reactor.seconds()

        renewing.addCallback(renewed)

    def _still_unanswered(self, sent_at: float) -> None:
        if self._renewing == sent_at and self.ready:
            self._lose("Redis did not answer a lease renewal for half a lease")

    def _reap(self) -> None:
        keys = self.keys
        self._script("reap", (keys.nodes,), (keys.prefix, self.node_id, "0")).addCallback(
            self._publish_wills
        )
        members = self._redis.execute(b"SMEMBERS", keys.nodes) if self._redis else None
        if members is not None:
            members.addCallback(self._members).addErrback(quiet)

    def _members(self, members: list[bytes]) -> None:
        self.nodes = sorted(member.decode() for member in members)
        self._exchange_figures()

    def _exchange_figures(self) -> None:
        """Put this node's figures in Redis (kept for a few leases) and sum everyone's."""
        redis = self._redis
        if redis is None:
            return
        stats = self.broker.stats
        own = self.keys.stats(self.node_id)
        redis.execute(
            b"HSET",
            own,
            b"connected",
            self.broker.connected,
            b"received",
            stats.publish_received,
            b"sent",
            stats.publish_sent,
        ).addErrback(quiet)
        redis.execute(b"PEXPIRE", own, int(self.lease * 3000)).addErrback(quiet)
        readings = [redis.execute(b"HGETALL", self.keys.stats(node)) for node in self.nodes]
        defer.gatherResults(readings).addCallbacks(self._sum_figures, lambda _: None)

    def _sum_figures(self, replies: list[list[bytes]]) -> None:
        totals: dict[bytes, int] = {}
        for flat in replies:
            for name, value in zip(flat[::2], flat[1::2]):
                totals[name] = totals.get(name, 0) + int(value)
        self._totals = totals

    def _publish_wills(self, reaped: object) -> None:
        """Publish the wills of dead nodes' clients (and of this node's dropped ones) and
        adopt their persistent sessions."""
        if reaped is FAILED or not reaped:
            return
        assert isinstance(reaped, list)
        for node, flat, sessions in zip(reaped[::3], reaped[1::3], reaped[2::3]):
            wills = [unpack_message(value.split(SEP, 1)[1]) for value in flat[1::2]]
            dead = node.decode()
            if dead != self.node_id:
                log.warn(
                    "cluster node {dead} left (its lease expired): publishing {count} wills, "
                    "taking {sessions} persistent sessions",
                    dead=dead,
                    count=len(wills),
                    sessions=len(sessions),
                )
            for will in wills:
                self.broker.publish(will)
            self.sessions.adopt(dead, [client_id.decode() for client_id in sessions])

    def _lost(self, lost: RedisConnectionLost, generation: int) -> None:
        if generation == self._generation:
            self._lose(str(lost))

    def _lose(self, why: str) -> None:
        """Stop acknowledging: drop every client, refuse CONNECT, reconnect."""
        was_ready = self.ready
        self.ready = False
        self._generation += 1
        self._drop_connections()
        if self._stopping:
            return
        log.error(
            "cluster node {node} lost Redis at {redis}: {why}; clients disconnected, "
            "nothing acknowledged until it is back",
            node=self.node_id,
            redis=self.address.display,
            why=why,
        )
        if was_ready:
            self.broker.drop_clients()
        self._retry_later()

    def _drop_connections(self) -> None:
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        self._last = None
        self._renewing = None
        self._echoes.clear()  # never heard: what waits for them is dropped with its client
        self._heard_up_to.clear()
        self.holds.clear()
        for connection in (self._redis, self._subscriber):
            if connection is not None:
                connection.abort()
        self._redis = self._subscriber = None

    def _retry_later(self) -> None:
        if self._retry_call is None and not self._stopping:
            self._retry_call = self.reactor.callLater(self._retry, self._join)
            self._retry = min(self._retry * 2, RETRY_MAX)

    def flush(self, timeout: float = 10.0) -> Deferred[None]:
        """Fires once everything the journal recorded is in Redis (or after ``timeout``)."""
        barrier = self.journal.barrier()
        done: Deferred[None] = Deferred()
        if barrier is None or not self.ready:
            done.callback(None)
            return done

        def committed() -> None:
            if not done.called:
                done.callback(None)

        barrier.when_committed(committed)
        return done.addTimeout(timeout, self.reactor)

    def stop(self) -> Deferred[None]:
        """Leave the cluster: routes and lease go, so the others stop forwarding here."""
        self._stopping = True
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        redis, keys = self._redis, self.keys
        if not self.ready or redis is None:
            self._drop_connections()
            return defer.succeed(None)
        self.ready = False
        node = self.node_id
        # Still a member without a lease: the next look for dead nodes (by a survivor, or by
        # this node started again) adopts its persistent sessions. Its routes go at once.
        redis.execute(b"DEL", keys.lease(node), keys.routes(node), keys.stats(node))
        redis.execute(b"DEL", keys.wills(node)).addErrback(quiet)
        last = redis.execute(b"PUBLISH", keys.all, b"X0" + SEP + node.encode() + SEP)
        last.addErrback(quiet)
        last.addTimeout(2.0, self.reactor)
        last.addBoth(lambda _: self._drop_connections())
        return last
