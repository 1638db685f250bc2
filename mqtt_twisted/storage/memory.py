"""A store that keeps committed state in plain dicts: lost at exit, for tests and embedding."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from twisted.internet.defer import succeed

from mqtt_twisted.broker.records import (
    Batch,
    DeliveryRecord,
    InboundKey,
    MessageRecord,
    RetainedRecord,
    SessionRecord,
    Snapshot,
    SubscriptionRecord,
)

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

K = TypeVar("K")
V = TypeVar("V")


class MemoryStore:
    """:class:`~mqtt_twisted.broker.records.StoreBackend` on dicts mirroring a Batch.

    Commits apply at once; records are kept as handed over (they are treated as immutable).
    """

    description = "memory"

    def __init__(self) -> None:
        self.sessions: dict[str, SessionRecord] = {}
        self.subscriptions: dict[tuple[str, str], SubscriptionRecord] = {}
        self.messages: dict[int, MessageRecord] = {}
        self.deliveries: dict[tuple[str, int], DeliveryRecord] = {}
        self.inbound: set[InboundKey] = set()
        self.retained: dict[str, RetainedRecord] = {}
        self.totals: dict[str, int] = {}

    def load(self) -> Snapshot:
        """Everything committed, in fresh containers; unreferenced messages are dropped."""
        referenced = {d.message_id for d in self.deliveries.values()}
        for message_id in [m for m in self.messages if m not in referenced]:
            del self.messages[message_id]
        snap = Snapshot(
            sessions=dict(self.sessions),
            messages=dict(self.messages),
            retained=[self.retained[t] for t in sorted(self.retained)],
            totals=dict(self.totals),
        )
        for sub_key in sorted(self.subscriptions):
            snap.subscriptions.setdefault(sub_key[0], []).append(self.subscriptions[sub_key])
        for del_key in sorted(self.deliveries):
            snap.deliveries.setdefault(del_key[0], []).append(self.deliveries[del_key])
        for client_id, packet_id in self.inbound:
            snap.inbound.setdefault(client_id, set()).add(packet_id)
        return snap

    def commit(self, batch: Batch) -> Deferred[None]:
        """Apply ``batch`` now (purges first, then every mapping)."""
        if batch.purged:
            purged = batch.purged
            for sub_key in [k for k in self.subscriptions if k[0] in purged]:
                del self.subscriptions[sub_key]
            for del_key in [k for k in self.deliveries if k[0] in purged]:
                del self.deliveries[del_key]
            self.inbound = {k for k in self.inbound if k.client_id not in purged}
            for client_id in purged:
                self.sessions.pop(client_id, None)
        _apply(self.sessions, batch.sessions)
        _apply(self.subscriptions, batch.subscriptions)
        _apply(self.messages, batch.messages)
        _apply(self.deliveries, batch.deliveries)
        _apply(self.retained, batch.retained)
        for key, present in batch.inbound.items():
            if present:
                self.inbound.add(InboundKey(*key))
            else:
                self.inbound.discard(InboundKey(*key))
        self.totals.update(batch.totals)
        return succeed(None)

    def close(self) -> Deferred[None]:
        """Nothing to release (the state stays, so a test can "reopen" this same object)."""
        return succeed(None)


def _apply(table: dict[K, V], changes: dict[K, V | None]) -> None:
    for key, record in changes.items():
        if record is None:
            table.pop(key, None)
        else:
            table[key] = record
