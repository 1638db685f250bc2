"""Persistent sessions moving between nodes.

A persistent session lives in Redis (see :mod:`mqtt_twisted.cluster.store`) and in the
memory of the one node that holds its client id. When the client connects to another
node, that node claims the id; the previous node, kicked, closes the connection, writes
what it still held and answers ``released``; the new node then loads the session and
sends CONNACK with Session Present. When a node dies, a survivor adopts its persistent
sessions (they go on collecting messages there until their clients come back).

Deliveries stored by publishers' nodes reach the session's node as doorbells; while a
session is being loaded they wait, and those the loaded copy already holds are skipped
(also when they arrive after the load's reply: Redis sends pub/sub messages on another
connection, so either may come first).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mqtt_twisted.broker.clusterlink import LOCAL_SEQ_BASE
from mqtt_twisted.broker.journal import Journal
from mqtt_twisted.broker.restore import restore
from mqtt_twisted.cluster.store import LoadedSession, RedisStore
from mqtt_twisted.cluster.wire import Doorbell, pack_released

if TYPE_CHECKING:
    from mqtt_twisted.cluster.node import ClusterNode

log = Logger()


class SessionMoves:
    """Loading, handing over and adopting persistent sessions; doorbells."""

    def __init__(self, node: ClusterNode, store: RedisStore, journal: Journal) -> None:
        self.node = node
        self.broker = node.broker
        self.store = store
        self.journal = journal
        #: doorbells that came while the session was being loaded
        self._loading: dict[str, list[Doorbell]] = {}
        #: claims waiting for the previous node's "released", by client id
        self._releases: dict[str, Deferred[None]] = {}
        #: kicks that came while the session was being loaded: (epoch, claimant)
        self._kicked_while_loading: dict[str, tuple[int, str]] = {}

    # -- the new node -------------------------------------------------------------------

    def take(self, client_id: str, previous: str, alive: bool, stored: bool) -> Deferred[None]:
        """After this node claimed ``client_id``: wait for ``previous`` to let go (if it is
        alive), then load the stored session unless this node holds it already."""
        if previous == self.node.node_id:
            previous = ""  # this node held it: nobody to wait for
        if client_id in self.broker.sessions and not previous:
            return defer.succeed(None)
        self._loading.setdefault(client_id, [])
        waiting: Deferred[None] = defer.succeed(None)
        if previous and alive:
            waiting = self._releases[client_id] = Deferred()
            waiting.addTimeout(self.node.lease, self.node.reactor)
            waiting.addErrback(self._no_release, client_id)

        def load(_: object) -> Deferred[Any] | None:
            if not stored or client_id in self.broker.sessions:
                for bell in self._loading.pop(client_id, []):
                    self.doorbell(bell)  # held here already: what came meanwhile goes in
                return None
            return self.store.load_session(client_id).addCallback(self._restore, client_id)

        def failed(failure: Any) -> Any:
            self._loading.pop(client_id, None)
            return failure

        return waiting.addCallback(load).addErrback(failed)

    def _no_release(self, failure: Any, client_id: str) -> None:
        """The previous node did not answer within a lease: it is dead (or as good as)."""
        self._releases.pop(client_id, None)
        log.warn(
            "the node that held {client_id} did not let go within the lease: taking it",
            client_id=client_id,
        )

    def released(self, client_id: str) -> None:
        """The previous node wrote what it held of ``client_id``'s session."""
        waiting = self._releases.pop(client_id, None)
        if waiting is not None and not waiting.called:
            waiting.callback(None)

    def _restore(self, loaded: LoadedSession | None, client_id: str) -> None:
        buffered = self._loading.pop(client_id, [])
        if loaded is None or client_id in self.broker.sessions:
            return
        restore(self.broker, loaded.snapshot)
        session = self.broker.sessions.get(client_id)
        if session is None:
            return  # it expired while nobody held it
        session.reserve_seqs(LOCAL_SEQ_BASE)
        # doorbells up to loaded.seq are in the snapshot, whether they came before the
        # load's reply (buffered) or come after it: pub/sub is another connection
        session.holds_stored_up_to(loaded.seq)
        for bell in buffered:
            self.doorbell(bell)
        kicked = self._kicked_while_loading.pop(client_id, None)
        if kicked is not None:
            self.hand_over(client_id, *kicked)

    # -- the previous node --------------------------------------------------------------

    def hand_over(self, client_id: str, epoch: int, claimant: str) -> None:
        """Another node claimed ``client_id``: close its connection here, keep nothing of
        its session here, and tell the claimant once what this node held is in Redis."""
        if client_id in self._loading:
            self._kicked_while_loading[client_id] = (epoch, claimant)
            return
        self.broker.moved(client_id)
        barrier = self.journal.barrier()

        def tell() -> None:
            self.node.publish_to(claimant, pack_released(client_id, epoch))

        if barrier is None:
            tell()
        else:
            barrier.when_committed(tell)

    # -- deliveries stored by publishers' nodes ----------------------------------------------

    def doorbell(self, bell: Doorbell) -> None:
        buffered = self._loading.get(bell.client_id)
        if buffered is not None:
            buffered.append(bell)
            return
        session = self.broker.sessions.get(bell.client_id)
        if session is None:
            return  # it moved on or ended: what was stored is in Redis
        delivery = bell.delivery
        message = delivery.message
        read_check = self.broker.hooks.read_check
        if read_check is not None and not read_check(session.identity, message.topic):
            if bell.seq:
                self.journal.remove_delivery(bell.client_id, bell.seq, message)
            return
        self.broker.stats.cluster_received += 1
        feed = self.node.feed
        if bell.seq:
            session.deliver_stored(
                message, delivery.qos, delivery.retain, delivery.subscription_ids, bell.seq, feed
            )
        else:
            session.deliver(message, 0, delivery.retain, delivery.subscription_ids, None, feed)

    # -- a dead node's sessions ---------------------------------------------------------

    def reload_local(self) -> None:
        """After Redis came back: doorbells may have been lost meanwhile, so the persistent
        sessions held here are read again from Redis (those another node took meanwhile
        are let go)."""
        for client_id, session in list(self.broker.sessions.items()):
            if session.journal is None or session.connection is not None:
                continue
            self.broker.moved(client_id)
            self.node.forget_claim(client_id)
            self.adopt(self.node.node_id, [client_id])

    def adopt(self, dead: str, client_ids: list[str]) -> None:
        """Hold the persistent sessions of ``dead`` here until their clients come back."""
        for client_id in client_ids:
            self.node.adopt_one(dead, client_id).addCallback(self._adopted, client_id)

    def _adopted(self, epoch: object, client_id: str) -> None:
        if not epoch or client_id in self.broker.sessions:
            return
        self._loading.setdefault(client_id, [])
        self.node.adopted(client_id, int(epoch))  # type: ignore[call-overload]
        loading = self.store.load_session(client_id).addCallback(self._restore, client_id)
        loading.addErrback(lambda f: log.failure("adopting {c} failed", f, c=client_id))
