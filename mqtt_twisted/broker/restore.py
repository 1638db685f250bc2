"""Start-up: the broker's state back from a store's :class:`~mqtt_twisted.broker.records.Snapshot`.

Runs before any listener opens. Sessions that expired while the broker was down are purged
(their delayed wills published now), expired messages are dropped, everything else comes
back as it was: subscriptions, queued messages, messages in flight with their packet ids,
incoming QoS 2 ids awaiting PUBREL, retained messages, wills waiting for their delay.
"""

from __future__ import annotations

from time import perf_counter
from typing import TYPE_CHECKING, NamedTuple

from mqtt_twisted.broker.entries import Queued, SubscriptionOptions
from mqtt_twisted.broker.hooks import ClientIdentity
from mqtt_twisted.broker.message import Message
from mqtt_twisted.broker.session import Session
from mqtt_twisted.packets import Will

if TYPE_CHECKING:
    from mqtt_twisted.broker.core import Broker
    from mqtt_twisted.broker.records import SessionRecord, Snapshot


class LoadReport(NamedTuple):
    """What start-up found in the store (for the log)."""

    sessions: int
    #: QoS 1/2 messages owed to sessions (queued or in flight)
    messages: int
    retained: int
    expired_sessions: int
    expired_messages: int
    seconds: float


def restore(broker: Broker, snapshot: Snapshot) -> LoadReport:
    """Rebuild ``broker``'s sessions and retained messages from ``snapshot``."""
    started = perf_counter()
    journal = broker.journal
    assert journal is not None, "restore needs the journal of the store it loads"
    now = broker.clock.seconds()
    expired_messages = 0
    retained = 0
    for kept in snapshot.retained:
        if kept.expires_at is not None and now >= kept.expires_at:
            journal.remove_retained(kept.topic)
            expired_messages += 1
            continue
        broker.retained.set(
            kept.topic,
            Message(kept.topic, kept.payload, kept.qos, True, kept.properties, kept.expires_at),
        )
        retained += 1
    messages = {
        m.message_id: Message(m.topic, m.payload, m.qos, m.retain, m.properties, m.expires_at)
        for m in snapshot.messages.values()
    }
    due_wills: list[Will] = []
    restored = expired_sessions = owed = 0
    for client_id, record in snapshot.sessions.items():
        disconnected_at = record.disconnected_at if record.disconnected_at is not None else now
        limit = _expiry_limit(broker, record)
        will = record.will
        if record.expiry_interval == 0 or (limit is not None and disconnected_at + limit <= now):
            journal.purge(client_id)
            expired_sessions += 1
            if will is not None:  # the session ended while the broker was down
                due_wills.append(
                    Will(will.topic, will.payload, will.qos, will.retain, will.properties)
                )
            continue
        session = Session(
            client_id, record.expiry_interval, broker.config, broker.stats, broker.clock
        )
        session.journal = journal
        session.identity = ClientIdentity(client_id, record.username)
        session.protocol_level = record.protocol_level
        broker.sessions[client_id] = session
        for sub in snapshot.subscriptions.get(client_id, ()):
            opts = SubscriptionOptions(
                sub.qos,
                sub.no_local,
                sub.retain_as_published,
                sub.retain_handling,
                sub.subscription_id,
            )
            session.subscriptions[sub.topic_filter] = opts
            broker.add_subscription(session, sub.topic_filter, opts, announce=False)
        session.awaiting_pubrel = set(snapshot.inbound.get(client_id, ()))
        for delivery in snapshot.deliveries.get(client_id, ()):
            message = messages.get(delivery.message_id)
            if message is None:
                continue  # cannot happen with a consistent store; nothing to deliver
            journal.loaded(message, delivery.message_id)
            if delivery.packet_id is None and message.expired(now):  # [MQTT-3.3.2-5]
                journal.remove_delivery(client_id, delivery.seq, message)
                expired_messages += 1
                continue
            session.restore_delivery(
                Queued(
                    message,
                    delivery.qos,
                    delivery.retain,
                    delivery.subscription_ids,
                    None,
                    delivery.seq,
                ),
                delivery.packet_id,
                delivery.released,
            )
            owed += 1
        if limit is not None:
            session.expiry_call = broker.clock.callLater(
                disconnected_at + limit - now, broker._expire, session
            )
        if will is not None:
            wait = will.publish_at - now
            as_will = Will(will.topic, will.payload, will.qos, will.retain, will.properties)
            if wait <= 0:
                due_wills.append(as_will)
            else:
                session.delayed_will = as_will
                session.will_call = broker.clock.callLater(
                    wait, broker._publish_delayed_will, session
                )
        if record.disconnected_at is None or (will is not None and wait <= 0):
            # it was connected when the broker stopped: it went away now
            broker._save_session(session, disconnected_at)
        restored += 1
    maximum = snapshot.totals.get("clients_maximum", 0)
    if maximum > broker.stats.clients_maximum:
        broker.stats.clients_maximum = maximum
    for due in due_wills:
        broker.publish(broker.will_message(due))
    return LoadReport(
        restored,
        owed,
        retained,
        expired_sessions,
        expired_messages,
        perf_counter() - started,
    )


def _expiry_limit(broker: Broker, record: SessionRecord) -> float | None:
    """Seconds after its disconnection at which the session expires (None: never)."""
    limit = broker.config.persistent_client_expiration
    expiry = record.expiry_interval
    if expiry is not None and (limit is None or expiry < limit):
        limit = expiry
    return limit
