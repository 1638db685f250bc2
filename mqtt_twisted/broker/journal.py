"""Changes to durable state, grouped into commits: the broker core's side of a store.

The core records what changes where it changes (a session saved or purged, a subscription,
a QoS 1/2 message owed to a persistent session, an incoming QoS 2 id, a retained message).
Changes collect in one :class:`~mqtt_twisted.broker.records.Batch`; at the end of the
reactor turn it goes to the backend as one commit, and while that commit runs the next
batch collects (group commit). A change undone before its batch left (a message queued and
acknowledged in the same window) never reaches the disk.

Whatever a client is told depends on committed state waits for a :class:`Barrier`: the
protocol holds that client's output until the barrier of everything recorded so far fires
(see :mod:`mqtt_twisted.outputgate`). A failed commit is logged and retried with the
changes recorded since; nothing waiting is released until it succeeds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.logger import Logger

from mqtt_twisted.broker.records import (
    Batch,
    DeliveryRecord,
    InboundKey,
    MessageRecord,
    RetainedRecord,
    SessionRecord,
    StoreBackend,
    SubscriptionRecord,
)

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime
    from twisted.python.failure import Failure

    from mqtt_twisted.broker.message import Message

log = Logger()

#: seconds before a failed commit is tried again
RETRY_SECONDS = 1.0


class Barrier:
    """Fires once a commit made everything recorded before it durable."""

    __slots__ = ("fired", "_waiters")

    def __init__(self) -> None:
        self.fired = False
        self._waiters: list[Callable[[], None]] = []

    def when_committed(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once committed (at once if it already is)."""
        if self.fired:
            callback()
        else:
            self._waiters.append(callback)

    def absorb(self, other: Barrier) -> None:
        """``other``'s waiters now wait for this barrier (batches merged after a failure)."""
        self._waiters.extend(other._waiters)
        other._waiters = []

    def fire(self) -> None:
        self.fired = True
        waiters, self._waiters = self._waiters, []
        for callback in waiters:
            callback()


class Journal:
    """Records changes into batches and commits them through ``backend``, one at a time."""

    def __init__(self, backend: StoreBackend, clock: IReactorTime, window: float = 0.0) -> None:
        self.backend = backend
        #: seconds a batch collects after its first change before it is committed, when it
        #: holds a message in flight to a connected client: acknowledged within the window,
        #: it is never written. Other batches are committed on the next turn.
        self.window = window
        self._batch_started = 0.0
        #: the batch holds a new delivery in flight to a connected client, which an
        #: acknowledgement within the window cancels: only then does the batch wait
        self._may_cancel = False
        #: incremented on every change: callers compare it to see whether they changed state
        self.changes = 0
        #: commits done, rows written (for $SYS and the log)
        self.commits = 0
        self.rows = 0
        self._clock = clock
        self._batch = Batch()
        #: keys inserted by the collecting batch that the store has never seen: deleting one
        #: just drops it from the batch
        self._fresh_deliveries: set[tuple[str, int]] = set()
        self._fresh_messages: set[int] = set()
        self._fresh_inbound: set[InboundKey] = set()
        self._batch_barrier: Barrier | None = None
        self._committing: Barrier | None = None
        self._scheduled: IDelayedCall | None = None
        self._failing = False
        self._closed = False
        #: durable references (deliveries) per stored message id
        self._refs: dict[int, int] = {}
        self._next_message_id = 1

    # -- waiting -------------------------------------------------------------------------

    def barrier(self) -> Barrier | None:
        """The barrier of everything recorded so far; None when all of it is committed."""
        if self._batch:
            barrier = self._batch_barrier
            if barrier is None:
                barrier = self._batch_barrier = Barrier()
            return barrier
        return self._committing

    @property
    def failing(self) -> bool:
        """The last commit failed (it is being retried)."""
        return self._failing

    # -- committing ----------------------------------------------------------------------

    def _changed(self) -> None:
        self.changes += 1
        if self._scheduled is None and not self._closed:
            if not self._batch_started:
                self._batch_started = self._clock.seconds()
            if self._committing is None:
                self._scheduled = self._clock.callLater(0, self._commit)

    def _wait(self) -> float:
        """Seconds the collecting batch should still wait before it is committed."""
        if not self._may_cancel or self._closed:
            return 0.0
        return self._batch_started + self.window - self._clock.seconds()

    def _commit(self) -> None:
        self._scheduled = None
        if self._committing is not None:
            return
        wait = self._wait()
        if wait > 0:
            self._scheduled = self._clock.callLater(wait, self._commit)
            return
        batch = self._batch
        barrier = self._batch_barrier
        if not batch:  # every change was undone before it left: nothing to wait for
            if barrier is not None:
                self._batch_barrier = None
                barrier.fire()
            return
        if barrier is None:
            barrier = Barrier()
        self._batch_started = 0.0
        self._may_cancel = False
        self._batch = Batch()
        self._batch_barrier = None
        self._fresh_deliveries = set()
        self._fresh_messages = set()
        self._fresh_inbound = set()
        self._committing = barrier
        d = self.backend.commit(batch)
        d.addCallbacks(
            self._committed,
            self._failed,
            callbackArgs=(batch, barrier),
            errbackArgs=(batch, barrier),
        )

    def _committed(self, _: object, batch: Batch, barrier: Barrier) -> None:
        self._committing = None
        self.commits += 1
        self.rows += batch.changes()
        if self._failing:
            self._failing = False
            log.info("store {store}: commits work again", store=self.backend.description)
        barrier.fire()
        if (self._batch or self._batch_barrier) and self._scheduled is None:
            # collected while that commit ran: committed once its window is over
            wait = self._wait()
            if wait > 0:
                self._scheduled = self._clock.callLater(wait, self._commit)
            else:
                self._commit()

    def _failed(self, failure: Failure, batch: Batch, barrier: Barrier) -> None:
        self._committing = None
        if not self._failing:
            self._failing = True
            log.failure(
                "store {store}: commit failed; acknowledgements wait, retrying every {s:g} s",
                failure,
                store=self.backend.description,
                s=RETRY_SECONDS,
            )
        # The failed changes go first, what was recorded since on top of them.
        newer = self._batch
        merged = batch
        merged.purged |= newer.purged
        for name in ("sessions", "subscriptions", "messages", "deliveries", "inbound"):
            older = getattr(merged, name)
            if newer.purged and name != "messages":
                for key in [k for k in older if _client_of(name, k) in newer.purged]:
                    del older[key]
            older.update(getattr(newer, name))
        merged.retained.update(newer.retained)
        merged.totals.update(newer.totals)
        if self._batch_barrier is not None:
            barrier.absorb(self._batch_barrier)
        self._batch = merged
        self._batch_barrier = barrier
        self._fresh_deliveries = set()
        self._fresh_messages = set()
        self._fresh_inbound = set()
        if self._scheduled is not None and self._scheduled.active():
            self._scheduled.cancel()
        self._scheduled = self._clock.callLater(RETRY_SECONDS, self._commit)

    def close(self) -> Barrier | None:
        """Commit what is left; no more commits after it. Returns what to wait for."""
        if self._scheduled is not None and self._scheduled.active():
            self._scheduled.cancel()
        self._scheduled = None
        if self._committing is None:
            self._commit()
        self._closed = True
        return self.barrier()

    # -- what changes --------------------------------------------------------------------

    def save_session(self, record: SessionRecord) -> None:
        """Insert or replace a persistent session."""
        self._batch.sessions[record.client_id] = record
        self._changed()

    def purge(self, client_id: str) -> None:
        """A session ended: every stored row of ``client_id`` goes."""
        batch = self._batch
        batch.purged.add(client_id)
        batch.sessions.pop(client_id, None)
        for sub_key in [k for k in batch.subscriptions if k[0] == client_id]:
            del batch.subscriptions[sub_key]
        for delivery_key in [k for k in batch.deliveries if k[0] == client_id]:
            del batch.deliveries[delivery_key]
        for inbound_key in [k for k in batch.inbound if k.client_id == client_id]:
            del batch.inbound[inbound_key]
        self._fresh_deliveries = {k for k in self._fresh_deliveries if k[0] != client_id}
        self._fresh_inbound = {k for k in self._fresh_inbound if k.client_id != client_id}
        self._changed()

    def save_subscription(self, record: SubscriptionRecord) -> None:
        self._batch.subscriptions[(record.client_id, record.topic_filter)] = record
        self._changed()

    def remove_subscription(self, client_id: str, topic_filter: str) -> None:
        self._batch.subscriptions[(client_id, topic_filter)] = None
        self._changed()

    def add_inbound(self, client_id: str, packet_id: int) -> None:
        """An incoming QoS 2 PUBLISH was delivered: its id awaits PUBREL."""
        key = InboundKey(client_id, packet_id)
        inbound = self._batch.inbound
        if key not in inbound:  # not removed earlier in this batch: the store lacks it
            self._fresh_inbound.add(key)
        inbound[key] = True
        self._changed()

    def remove_inbound(self, client_id: str, packet_id: int) -> None:
        key = InboundKey(client_id, packet_id)
        if key in self._fresh_inbound:  # added in this batch: the store never saw it
            self._fresh_inbound.discard(key)
            del self._batch.inbound[key]
        else:
            self._batch.inbound[key] = False
        self._changed()

    def save_retained(self, message: Message) -> None:
        self._batch.retained[message.topic] = RetainedRecord(
            message.topic, message.payload, message.qos, message.properties, message.expires_at
        )
        self._changed()

    def remove_retained(self, topic: str) -> None:
        self._batch.retained[topic] = None
        self._changed()

    def save_total(self, name: str, value: int) -> None:
        self._batch.totals[name] = value
        self._changed()

    # -- deliveries owed to persistent sessions -------------------------------------------

    def save_delivery(
        self,
        client_id: str,
        seq: int,
        message: Message,
        qos: int,
        retain: bool,
        subscription_ids: tuple[int, ...],
        packet_id: int | None,
        released: bool = False,
        new: bool = False,
    ) -> None:
        """Insert (``new``: seq never stored before) or update a delivery."""
        if new:
            message_id = self._reference(message)
            self._fresh_deliveries.add((client_id, seq))
            if packet_id is not None:
                self._may_cancel = True
        else:
            message_id = message.store_id
            if packet_id is not None and (client_id, seq) in self._fresh_deliveries:
                self._may_cancel = True  # queued and sent within this batch
        self._batch.deliveries[(client_id, seq)] = DeliveryRecord(
            client_id, seq, message_id, qos, retain, subscription_ids, packet_id, released
        )
        self._changed()

    def remove_delivery(self, client_id: str, seq: int, message: Message) -> None:
        """A delivery ended (acknowledged, expired, handed over)."""
        key = (client_id, seq)
        if key in self._fresh_deliveries:
            self._fresh_deliveries.discard(key)
            del self._batch.deliveries[key]
        else:
            self._batch.deliveries[key] = None
        self.release(message)
        self._changed()

    def release(self, message: Message) -> None:
        """One delivery of ``message`` is gone (its row removed, or purged with its
        session): the message row goes with the last one."""
        message_id = message.store_id
        if not message_id:
            return  # stored by someone else (a cluster's publisher): no reference here
        refs = self._refs
        count = refs.get(message_id, 0) - 1
        if count > 0:
            refs[message_id] = count
            return
        refs.pop(message_id, None)
        message.store_id = 0
        if message_id in self._fresh_messages:
            self._fresh_messages.discard(message_id)
            self._batch.messages.pop(message_id, None)
        else:
            self._batch.messages[message_id] = None

    def _reference(self, message: Message) -> int:
        message_id = message.store_id
        if message_id:
            self._refs[message_id] += 1
            return message_id
        message_id = message.store_id = self._next_message_id
        self._next_message_id += 1
        self._refs[message_id] = 1
        self._fresh_messages.add(message_id)
        self._batch.messages[message_id] = MessageRecord.of(message_id, message)
        return message_id

    def loaded(self, message: Message, message_id: int) -> None:
        """At start-up: ``message`` is stored as ``message_id`` and one delivery refers to it."""
        message.store_id = message_id
        self._refs[message_id] = self._refs.get(message_id, 0) + 1
        if message_id >= self._next_message_id:
            self._next_message_id = message_id + 1


def _client_of(name: str, key: object) -> str | None:
    if name == "sessions":
        return key  # type: ignore[return-value]
    if isinstance(key, tuple):
        return key[0]
    return None
