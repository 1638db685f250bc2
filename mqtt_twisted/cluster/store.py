"""Persistent sessions in Redis: the journal's :class:`StoreBackend` in a cluster.

Each persistent session is one hash (``s:CLIENT``) that any node can load when the client
comes back to it or when the node that held it died:

* ``s``: the session record (JSON), ``w``: a will waiting for its delay (packed);
* ``f:FILTER``: a subscription's options;
* ``d:SEQ``: a QoS 1/2 delivery (head and packed message), written by the publisher's
  node (``SEQ`` from the hash's ``seq`` counter) or by this node for what it delivers
  itself (``SEQ`` from ``LOCAL_SEQ_BASE``); ``p:SEQ``: its packet id once sent, and
  whether PUBREL was sent;
* ``i:ID``: an incoming QoS 2 packet id awaiting PUBREL.

A batch is one ``MULTI``/``EXEC``: applied whole or not at all, durable once Redis
replied (``appendonly yes`` writes the AOF before replying). Retained messages are the
cluster's (``retain``), not the store's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred

from mqtt_twisted.broker.entries import SubscriptionOptions
from mqtt_twisted.broker.message import Message
from mqtt_twisted.broker.records import (
    Batch,
    DeliveryRecord,
    MessageRecord,
    SessionRecord,
    Snapshot,
    StoreError,
    SubscriptionRecord,
    WillRecord,
)
from mqtt_twisted.cluster.redis import RedisProtocol
from mqtt_twisted.cluster.scripts import Keys
from mqtt_twisted.cluster.wire import (
    pack_delivery_head,
    pack_message,
    pack_options,
    unpack_delivery,
    unpack_message,
    unpack_options,
)

#: message ids given to deliveries loaded from Redis (the journal's own count from 1)
LOADED_IDS_FROM = 1 << 50


class LoadedSession:
    """One session as its hash holds it: a snapshot to restore, and the last seq a
    publisher's node gave it (doorbells up to it are in the snapshot)."""

    __slots__ = ("snapshot", "seq")

    def __init__(self, snapshot: Snapshot, seq: int) -> None:
        self.snapshot = snapshot
        self.seq = seq


class RedisStore:
    """The journal's backend on Redis (see the module docstring)."""

    def __init__(self, keys: Keys, node_id: str, redis: Callable[[], RedisProtocol | None]):
        self.description = "the cluster's Redis"
        self.keys = keys
        self.node_id = node_id
        self._redis = redis
        #: packed messages by the journal's message id, while deliveries refer to them
        self._messages: dict[int, bytes] = {}
        #: deliveries whose ``d:`` field exists (the journal only updates them)
        self._written: set[tuple[str, int]] = set()
        self._next_loaded_id = LOADED_IDS_FROM

    def load(self) -> Snapshot:
        """Nothing at start-up: sessions are loaded when claimed or adopted."""
        return Snapshot()

    def close(self) -> Deferred[None]:
        return defer.succeed(None)

    def commit(self, batch: Batch) -> Deferred[None]:
        redis = self._redis()
        if redis is None:
            return defer.fail(StoreError("no connection to the cluster's Redis"))
        commands = self._commands(batch)
        if not commands:
            return defer.succeed(None)
        redis.execute(b"MULTI").addErrback(lambda _: None)
        for command in commands:
            redis.execute(*command).addErrback(lambda _: None)
        done = redis.execute(b"EXEC")
        return done.addCallback(_exec_result)

    def _commands(self, batch: Batch) -> list[tuple[Any, ...]]:
        keys = self.keys
        hosted = keys.hosted(self.node_id)
        out: list[tuple[Any, ...]] = []
        for message_id, message in batch.messages.items():
            if message is None:
                self._messages.pop(message_id, None)
            else:
                self._messages[message_id] = pack_message(_message(message))
        for client_id in batch.purged:
            out.append((b"DEL", keys.session(client_id)))
            out.append((b"SREM", hosted, client_id))
            self._written = {key for key in self._written if key[0] != client_id}
        for client_id, record in batch.sessions.items():
            key = keys.session(client_id)
            if record is None:
                out.append((b"DEL", key))
                continue
            out.append((b"HSET", key, b"s", _pack_session(record)))
            will = record.will
            if will is None:
                out.append((b"HDEL", key, b"w"))
            else:
                out.append((b"HSET", key, b"w", pack_message(_will_message(will))))
            out.append((b"SADD", hosted, client_id))
        for (client_id, topic_filter), sub in batch.subscriptions.items():
            key, field = keys.session(client_id), b"f:" + topic_filter.encode()
            if sub is None:
                out.append((b"HDEL", key, field))
            else:
                out.append((b"HSET", key, field, pack_options(_options(sub))))
        for (client_id, seq), delivery in batch.deliveries.items():
            out.extend(self._delivery_commands(keys.session(client_id), client_id, seq, delivery))
        for inbound, present in batch.inbound.items():
            key, field = keys.session(inbound.client_id), b"i:%d" % inbound.packet_id
            out.append((b"HSET", key, field, b"1") if present else (b"HDEL", key, field))
        return out

    def _delivery_commands(
        self, key: str, client_id: str, seq: int, delivery: DeliveryRecord | None
    ) -> list[tuple[Any, ...]]:
        data, sent = b"d:%d" % seq, b"p:%d" % seq
        if delivery is None:
            self._written.discard((client_id, seq))
            return [(b"HDEL", key, data, sent)]
        out: list[tuple[Any, ...]] = []
        packed = self._messages.get(delivery.message_id)
        if packed is not None and (client_id, seq) not in self._written:
            self._written.add((client_id, seq))
            head = pack_delivery_head(delivery.qos, delivery.retain, delivery.subscription_ids)
            out.append((b"HSET", key, data, head + packed))
        if delivery.packet_id is not None:
            state = delivery.packet_id.to_bytes(2, "big") + bytes((delivery.released,))
            out.append((b"HSET", key, sent, state))
        return out

    # -- loading one session -------------------------------------------------------------

    def load_session(self, client_id: str) -> Deferred[LoadedSession | None]:
        """The session of ``client_id`` as stored (None: there is none)."""
        redis = self._redis()
        if redis is None:
            return defer.fail(StoreError("no connection to the cluster's Redis"))
        reading = redis.execute(b"HGETALL", self.keys.session(client_id))
        return reading.addCallback(self._parse, client_id)

    def _parse(self, flat: list[bytes], client_id: str) -> LoadedSession | None:
        fields = dict(zip(flat[::2], flat[1::2]))
        record = fields.get(b"s")
        if record is None:
            return None
        will = fields.get(b"w")
        snapshot = Snapshot()
        snapshot.sessions[client_id] = _unpack_session(client_id, record, will)
        subscriptions = snapshot.subscriptions[client_id] = []
        sent: dict[int, tuple[int, bool]] = {}
        stored: list[tuple[int, bytes]] = []
        for name, value in fields.items():
            kind, _, rest = name.partition(b":")
            if kind == b"f":
                opts = unpack_options(value)
                subscriptions.append(
                    SubscriptionRecord(
                        client_id,
                        rest.decode(),
                        opts.qos,
                        opts.no_local,
                        opts.retain_as_published,
                        opts.retain_handling,
                        opts.subscription_id,
                    )
                )
            elif kind == b"d":
                stored.append((int(rest), value))
            elif kind == b"p":
                sent[int(rest)] = (int.from_bytes(value[:2], "big"), bool(value[2]))
            elif kind == b"i":
                snapshot.inbound.setdefault(client_id, set()).add(int(rest))
        deliveries = snapshot.deliveries[client_id] = []
        for seq, value in sorted(stored):
            delivery = unpack_delivery(value)
            message = delivery.message
            message_id = self._next_loaded_id
            self._next_loaded_id += 1
            snapshot.messages[message_id] = MessageRecord.of(message_id, message)
            self._messages[message_id] = value[3 + 4 * len(delivery.subscription_ids) :]
            self._written.add((client_id, seq))
            packet_id, released = sent.get(seq, (None, False))
            deliveries.append(
                DeliveryRecord(
                    client_id,
                    seq,
                    message_id,
                    delivery.qos,
                    delivery.retain,
                    delivery.subscription_ids,
                    packet_id,
                    released,
                )
            )
        return LoadedSession(snapshot, int(fields.get(b"seq", b"0")))


def _exec_result(replies: object) -> None:
    if replies is None:
        raise StoreError("the cluster's Redis refused a transaction")
    assert isinstance(replies, list)
    for reply in replies:
        if isinstance(reply, Exception):
            raise StoreError(f"the cluster's Redis refused a change: {reply}")


def _message(record: MessageRecord) -> Message:
    return Message(
        record.topic,
        record.payload,
        record.qos,
        record.retain,
        record.properties,
        record.expires_at,
    )


def _will_message(will: WillRecord) -> Message:
    return Message(
        will.topic, will.payload, will.qos, will.retain, will.properties, will.publish_at
    )


def _options(sub: SubscriptionRecord) -> SubscriptionOptions:
    return SubscriptionOptions(
        sub.qos, sub.no_local, sub.retain_as_published, sub.retain_handling, sub.subscription_id
    )


def _pack_session(record: SessionRecord) -> bytes:
    fields = {
        "level": record.protocol_level,
        "expiry": record.expiry_interval,
        "username": record.username,
        "disconnected_at": record.disconnected_at,
    }
    return json.dumps(fields).encode()


def _unpack_session(client_id: str, data: bytes, will: bytes | None) -> SessionRecord:
    fields = json.loads(data)
    will_record = None
    if will is not None:
        m = unpack_message(will)
        assert m.expires_at is not None
        will_record = WillRecord(m.topic, m.payload, m.qos, m.retain, m.properties, m.expires_at)
    return SessionRecord(
        client_id,
        fields["level"],
        fields["expiry"],
        fields["username"],
        fields["disconnected_at"],
        will_record,
    )
