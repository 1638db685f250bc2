"""Persistence through the broker core: what clients see across a restart, and when the
broker acknowledges (the durability contract). StringTransport + task.Clock; the store is
:class:`MemoryStore` (the restart is a new Broker loading what the old one committed), or
a store whose commits the test completes by hand."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock

from mqtt_twisted.broker import Broker, BrokerConfig
from mqtt_twisted.broker.journal import RETRY_SECONDS, Journal
from mqtt_twisted.broker.records import Batch
from mqtt_twisted.broker.restore import restore
from mqtt_twisted.packets import (
    Connect,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    Subscribe,
    SubscriptionRequest,
    Will,
)
from mqtt_twisted.packets.constants import Property
from mqtt_twisted.storage import MemoryStore

from .harness import FakeClient, connected


class ManualStore(MemoryStore):
    """Commits wait until the test calls :meth:`finish` (or fail with ``failing``)."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[tuple[Batch, Deferred]] = []
        self.failing = False

    def commit(self, batch: Batch) -> Deferred[None]:
        if self.failing:
            return fail(OSError("disk full"))
        d: Deferred[None] = Deferred()
        self.pending.append((batch, d))
        return d

    def finish(self) -> None:
        """Complete the commit that is running."""
        batch, d = self.pending.pop(0)
        MemoryStore.commit(self, batch)
        d.callback(None)

    def settle(self) -> None:
        """Complete commits until none runs (each may start the next batch)."""
        while self.pending:
            self.finish()


def start(store: MemoryStore, clock: Clock, **config) -> Broker:
    """A broker on ``store``, loaded from what it holds (a (re)start)."""
    broker = Broker(clock, BrokerConfig(**config), journal=Journal(store, clock))
    restore(broker, store.load())
    clock.advance(0)
    return broker


def subscribe(client: FakeClient, topic_filter: str, qos: int, clock: Clock) -> None:
    client.send(Subscribe(1, [SubscriptionRequest(topic_filter, qos)]))
    clock.advance(0)
    packets = client.received()
    assert packets and packets[0].packet_id == 1, packets


def persistent(broker: Broker, client_id: str, level: int = 4, **connect) -> FakeClient:
    """CONNECT with Clean Start 0; the CONNACK of a present session waits for the commit of
    anything recorded before it, so the test's clock runs the commit."""
    client = FakeClient(broker, level)
    client.send(Connect(client_id, level, "MQTT", clean_start=False, **connect))
    broker.clock.advance(0)  # type: ignore[attr-defined]
    connack, *rest = client.received()
    assert connack.return_code == 0, connack
    client.transport.write(b"".join(_encode(p, level) for p in rest))  # keep them unread
    return client


def _encode(packet, level):
    from mqtt_twisted.packets import encode

    return encode(packet, level)


def subscriber(store: ManualStore, broker: Broker, topic: str, away: bool) -> FakeClient:
    """The persistent QoS 1 subscriber "sub" of ``topic``, every commit done; ``away``:
    then disconnected (its messages are queued and stored)."""
    clock = broker.clock
    sub = persistent(broker, "sub")
    sub.send(Subscribe(1, [SubscriptionRequest(topic, 1)]))
    clock.advance(0)  # type: ignore[attr-defined]
    store.settle()
    sub.received()
    if away:
        sub.lose()
        clock.advance(0)  # type: ignore[attr-defined]
        store.settle()
    return sub


def publishes(client: FakeClient) -> list[Publish]:
    return [p for p in client.received() if isinstance(p, Publish)]


def test_offline_session_queue_subscriptions_and_retained_survive_a_restart():
    store, clock = MemoryStore(), Clock()
    broker = start(store, clock)
    sub = persistent(broker, "sub")
    subscribe(sub, "t/#", 1, clock)
    sub.lose()
    pub = connected(broker, "pub")
    for n in range(3):
        pub.send(Publish(f"t/{n}", f"m{n}".encode(), qos=1, packet_id=n + 1))
    pub.send(Publish("r/x", b"kept", qos=1, retain=True, packet_id=9))
    clock.advance(0)
    assert [p.packet_id for p in pub.received()] == [1, 2, 3, 9]

    broker = start(store, clock)  # restart
    sub = FakeClient(broker)
    sub.send(Connect("sub", 4, "MQTT", clean_start=False))
    clock.advance(0)
    connack, *rest = sub.received()
    assert connack.session_present  # [MQTT-3.2.2-2]
    assert [(p.topic, p.payload, p.qos) for p in rest] == [
        ("t/0", b"m0", 1),
        ("t/1", b"m1", 1),
        ("t/2", b"m2", 1),
    ]
    late = connected(broker, "late")
    subscribe_and_read = late.send(Subscribe(1, [SubscriptionRequest("r/#", 0)]))
    assert subscribe_and_read is None
    clock.advance(0)
    assert [(p.topic, p.payload, p.retain) for p in publishes(late)] == [("r/x", b"kept", True)]
    # the subscription itself survived: a new message reaches the restarted session
    pub = connected(broker, "pub2")
    pub.send(Publish("t/new", b"n", qos=1, packet_id=1))
    clock.advance(0)
    assert [p.topic for p in publishes(sub)] == ["t/new"]


def test_puback_waits_for_the_commit_of_a_message_queued_for_a_persistent_session():
    """Durability contract: PUBACK only once the message is committed; QoS 0 and clients
    without persistent subscribers never wait."""
    store, clock = ManualStore(), Clock()
    broker = start(store, clock)
    sub = persistent(broker, "sub")
    sub.send(Subscribe(1, [SubscriptionRequest("t", 1)]))
    clock.advance(0)
    assert not sub.received()  # SUBACK waits for the subscription's commit
    store.settle()
    (suback,) = sub.received()
    assert suback.reason_codes == [1]
    sub.lose()
    clock.advance(0)
    store.settle()
    pub = connected(broker, "pub")
    pub.send(Publish("t", b"x", qos=1, packet_id=5))
    clock.advance(0)
    assert not pub.received()  # not yet committed
    store.settle()
    assert [(type(p), p.packet_id) for p in pub.received()] == [(PubAck, 5)]
    pub.send(Publish("elsewhere", b"y", qos=1, packet_id=6))
    assert [(type(p), p.packet_id) for p in pub.received()] == [(PubAck, 6)]  # nothing to keep


def test_acknowledgements_keep_their_order_when_the_first_waits_for_the_store():
    """[MQTT-4.6.0-2]: PUBACKs in the order the PUBLISHes were received, even when only
    the first one had anything to commit."""
    store, clock = ManualStore(), Clock()
    broker = start(store, clock)
    subscriber(store, broker, "kept", away=True)
    pub = connected(broker, "pub")
    pub.send(Publish("kept", b"1", qos=1, packet_id=1))
    pub.send(Publish("nobody", b"2", qos=1, packet_id=2))
    clock.advance(0)
    assert not pub.received()
    store.settle()
    assert [p.packet_id for p in pub.received()] == [1, 2]


def test_a_failed_commit_is_retried_and_nothing_is_acknowledged_before_it_succeeds():
    store, clock = ManualStore(), Clock()
    broker = start(store, clock)
    subscriber(store, broker, "t", away=True)
    store.failing = True
    pub = connected(broker, "pub")
    pub.send(Publish("t", b"x", qos=1, packet_id=1))
    clock.advance(0)
    assert not pub.received()
    store.failing = False
    pub.send(Publish("t", b"y", qos=1, packet_id=2))
    clock.advance(RETRY_SECONDS)
    assert not pub.received()
    store.settle()  # one commit with both messages
    assert [p.packet_id for p in pub.received()] == [1, 2]
    assert sorted(m.payload for m in store.messages.values()) == [b"x", b"y"]


def test_messages_acknowledged_before_their_commit_never_reach_the_store():
    """A connected persistent subscriber that acknowledges within the commit window: the
    delivery is inserted and deleted in the same batch, so nothing is written."""
    store, clock = ManualStore(), Clock()
    broker = start(store, clock)
    sub = subscriber(store, broker, "t", away=False)
    pub = connected(broker, "pub")
    pub.send(Publish("t", b"x", qos=1, packet_id=1))
    (delivered,) = publishes(sub)
    sub.send(PubAck(delivered.packet_id))
    clock.advance(0)
    assert all(not b.deliveries and not b.messages for b, _ in store.pending)
    store.settle()
    assert [p.packet_id for p in pub.received()] == [1]
    assert not store.deliveries and not store.messages


def test_puback_is_sent_when_everything_it_waited_for_was_undone_before_the_commit():
    """The only change of a batch is a delivery acknowledged before the batch left: the
    batch is empty, and the PUBACK waiting for it goes out all the same."""
    store, clock = ManualStore(), Clock()
    broker = start(store, clock)
    sub = persistent(broker, "sub")
    sub.send(Subscribe(1, [SubscriptionRequest("t", 1)]))
    pub = connected(broker, "pub")
    clock.advance(0)
    store.settle()
    sub.received()
    pub.send(Publish("t", b"x", qos=1, packet_id=1))
    (delivered,) = publishes(sub)
    assert not pub.received()
    sub.send(PubAck(delivered.packet_id))
    clock.advance(0)
    assert not store.pending  # nothing to commit
    assert [(type(p), p.packet_id) for p in pub.received()] == [(PubAck, 1)]


def test_incoming_qos2_is_exactly_once_across_a_restart():
    """A QoS 2 PUBLISH acknowledged with PUBREC, the broker restarts, the publisher resends
    it (DUP) and then PUBREL: it is delivered once [MQTT-4.3.3-?] and PUBCOMP comes."""
    store, clock = MemoryStore(), Clock()
    broker = start(store, clock)
    sub = persistent(broker, "sub")
    subscribe(sub, "t", 2, clock)
    sub.lose()
    pub = persistent(broker, "pub")
    pub.send(Publish("t", b"once", qos=2, packet_id=7))
    clock.advance(0)
    assert [(type(p), p.packet_id) for p in pub.received()] == [(PubRec, 7)]

    broker = start(store, clock)
    pub = persistent(broker, "pub")
    pub.send(Publish("t", b"once", qos=2, packet_id=7, dup=True))
    clock.advance(0)
    assert [(type(p), p.packet_id) for p in pub.received()] == [(PubRec, 7)]
    pub.send(PubRel(7))
    clock.advance(0)
    assert [(type(p), p.packet_id) for p in pub.received()] == [(PubComp, 7)]
    sub = persistent(broker, "sub")
    clock.advance(0)
    assert [p.payload for p in publishes(sub)] == [b"once"]


def test_outgoing_qos2_resumes_with_its_packet_id_after_a_restart():
    """[MQTT-4.4.0-1]: unacknowledged PUBLISH and PUBREL are resent with their original
    packet identifiers, also after the broker restarted."""
    store, clock = MemoryStore(), Clock()
    broker = start(store, clock)
    sub = persistent(broker, "sub")
    subscribe(sub, "t", 2, clock)
    pub = connected(broker, "pub")
    pub.send(Publish("t", b"a", qos=2, packet_id=1))
    pub.send(Publish("t", b"b", qos=2, packet_id=2))
    clock.advance(0)
    first, second = publishes(sub)
    sub.send(PubRec(first.packet_id))
    clock.advance(0)
    assert [(type(p), p.packet_id) for p in sub.received()] == [(PubRel, first.packet_id)]

    broker = start(store, clock)
    sub = FakeClient(broker)
    sub.send(Connect("sub", 4, "MQTT", clean_start=False))
    clock.advance(0)
    _, *resent = sub.received()
    assert [(type(p), p.packet_id) for p in resent] == [
        (PubRel, first.packet_id),
        (Publish, second.packet_id),
    ]
    assert resent[1].dup and resent[1].payload == b"b"
    sub.send(PubComp(first.packet_id))
    sub.send(PubRec(second.packet_id))
    clock.advance(0)
    assert [(type(p), p.packet_id) for p in sub.received()] == [(PubRel, second.packet_id)]
    sub.send(PubComp(second.packet_id))
    clock.advance(0)
    assert not store.deliveries and not store.messages


def test_a_session_that_expired_while_the_broker_was_down_is_gone():
    store, clock = MemoryStore(), Clock()
    broker = start(store, clock)
    sub = connected(broker, "short", level=5, properties={Property.SESSION_EXPIRY_INTERVAL: 10})
    subscribe(sub, "t", 1, clock)
    sub.lose()
    keeper = connected(broker, "long", level=5, properties={Property.SESSION_EXPIRY_INTERVAL: 100})
    keeper.lose()
    clock.advance(0)
    clock.advance(20)  # the broker is "down" from here on: the new one sees time passed
    broker = start(store, clock)
    assert set(store.sessions) == {"long"}
    again = FakeClient(broker, 5)
    again.send(Connect("short", 5, "MQTT", clean_start=False))
    (connack,) = again.received()
    assert not connack.session_present
    back = FakeClient(broker, 5)
    back.send(Connect("long", 5, "MQTT", clean_start=False))
    clock.advance(0)
    (connack,) = back.received()
    assert connack.session_present
    clock.advance(200)  # its remaining expiry was rescheduled from the stored time


def test_a_delayed_will_is_published_after_a_restart_at_its_time():
    """MQTT 5 Will Delay Interval [MQTT-3.1.3-9]: a will waiting when the broker stops is
    published by the restarted broker when its delay ends."""
    store, clock = MemoryStore(), Clock()
    broker = start(store, clock)
    will = Will("wills/dev", b"gone", 1, False, {Property.WILL_DELAY_INTERVAL: 30})
    dev = connected(
        broker,
        "dev",
        level=5,
        will=will,
        properties={Property.SESSION_EXPIRY_INTERVAL: 300},
    )
    dev.lose()
    clock.advance(10)
    broker = start(store, clock)
    watcher = connected(broker, "watcher")
    subscribe(watcher, "wills/#", 1, clock)
    clock.advance(19)
    assert not publishes(watcher)
    clock.advance(1)
    assert [p.payload for p in publishes(watcher)] == [b"gone"]
    assert store.sessions["dev"].will is None


def test_a_will_whose_delay_ended_while_the_broker_was_down_is_published_at_start():
    store, clock = MemoryStore(), Clock()
    broker = start(store, clock)
    watcher = persistent(broker, "watcher")
    subscribe(watcher, "wills/#", 1, clock)
    watcher.lose()
    will = Will("wills/dev", b"late", 1, False, {Property.WILL_DELAY_INTERVAL: 5})
    dev = connected(
        broker, "dev", level=5, will=will, properties={Property.SESSION_EXPIRY_INTERVAL: 300}
    )
    dev.lose()
    clock.advance(60)
    broker = start(store, clock)
    watcher = persistent(broker, "watcher")
    clock.advance(0)
    assert [p.payload for p in publishes(watcher)] == [b"late"]


def test_ended_sessions_and_cleared_retained_messages_leave_nothing_stored():
    store, clock = MemoryStore(), Clock()
    broker = start(store, clock)
    sub = persistent(broker, "sub")
    subscribe(sub, "t", 1, clock)
    sub.lose()
    pub = connected(broker, "pub")
    pub.send(Publish("t", b"x", qos=1, packet_id=1))
    pub.send(Publish("r", b"kept", qos=0, retain=True))
    clock.advance(0)
    assert store.sessions and store.deliveries and store.retained
    connected(broker, "sub", clean_start=True).send_bytes(
        b"\xe0\x00"
    )  # clean start, then DISCONNECT
    pub.send(Publish("r", b"", qos=0, retain=True))  # [MQTT-3.3.1-10]
    clock.advance(0)
    assert not store.sessions and not store.subscriptions and not store.deliveries
    assert not store.messages and not store.retained


def test_clients_maximum_survives_a_restart():
    store, clock = MemoryStore(), Clock()
    broker = start(store, clock)
    clients = [connected(broker, f"c{n}") for n in range(3)]
    clock.advance(0)
    del clients
    broker = start(store, clock)
    assert broker.stats.clients_maximum == 3


def test_an_incoming_qos2_id_removed_re_added_and_removed_in_one_batch_is_gone():
    """The journal drops a change undone in the same batch only when the store never saw
    the row: an id committed earlier and then removed, re-used and removed again within
    one window must still be deleted (else a later PUBLISH with it would be taken for a
    duplicate and lost [MQTT-4.3.3-9])."""
    store, clock = MemoryStore(), Clock()
    journal = Journal(store, clock)
    journal.add_inbound("c", 7)
    clock.advance(0)
    assert store.load().inbound == {"c": {7}}
    journal.remove_inbound("c", 7)
    journal.add_inbound("c", 7)
    journal.remove_inbound("c", 7)
    journal.add_inbound("c", 8)
    journal.remove_inbound("c", 8)
    clock.advance(0)
    assert store.load().inbound == {}


def test_store_commits_are_shown_in_sys_and_metrics():
    from prometheus_client import CollectorRegistry, generate_latest

    from mqtt_twisted.broker.systopics import SysTopics
    from mqtt_twisted.metrics import BrokerCollector

    store, clock = ManualStore(), Clock()
    broker = start(store, clock)
    sub = persistent(broker, "sub")
    subscribe_pending = Subscribe(1, [SubscriptionRequest("t", 1)])
    sub.send(subscribe_pending)
    clock.advance(0)
    store.failing = True
    store.settle()
    connected(broker, "other", clean_start=False)  # a change whose commit fails
    clock.advance(0)
    registry = CollectorRegistry()
    registry.register(BrokerCollector(broker))
    text = generate_latest(registry).decode()
    assert "mqtt_store_failing 1.0" in text
    values = SysTopics(broker, 10, clock).values()
    commits = int(values["store/commits"])
    assert commits >= 1 and int(values["store/rows"]) >= 2
    assert f"mqtt_store_commits_total {float(commits)}" in text
    store.failing = False
    clock.advance(RETRY_SECONDS)
    store.settle()
    assert "mqtt_store_failing 0.0" in generate_latest(registry).decode()


def test_a_message_acknowledged_within_the_commit_window_is_never_written():
    """--store-commit-window: the batch waits its window; a delivery to a connected
    persistent session acknowledged within it cancels out, and the publisher's PUBACK comes
    once the window is over."""
    store, clock = ManualStore(), Clock()
    broker = Broker(clock, BrokerConfig(), journal=Journal(store, clock, window=0.005))
    sub = persistent(broker, "sub")
    sub.send(Subscribe(1, [SubscriptionRequest("t", 1)]))
    pub = connected(broker, "pub")
    clock.advance(0.005)
    store.settle()
    sub.received()
    pub.send(Publish("t", b"x", qos=1, packet_id=1))
    clock.advance(0.002)
    assert not store.pending  # still collecting
    (delivered,) = publishes(sub)
    sub.send(PubAck(delivered.packet_id))
    assert not pub.received()
    clock.advance(0.003)
    assert not store.pending  # nothing left to write
    assert [(type(p), p.packet_id) for p in pub.received()] == [(PubAck, 1)]


def test_a_batch_nothing_can_cancel_is_committed_without_waiting_for_the_window():
    """Messages queued for a session that is away cannot be acknowledged before the
    commit: their batch does not wait for --store-commit-window."""
    store, clock = ManualStore(), Clock()
    broker = Broker(clock, BrokerConfig(), journal=Journal(store, clock, window=0.005))
    subscriber(store, broker, "t", away=True)
    pub = connected(broker, "pub")
    clock.advance(0)
    store.settle()
    pub.send(Publish("t", b"x", qos=1, packet_id=1))
    clock.advance(0)
    assert len(store.pending) == 1  # committing at once, not after 5 ms
    store.settle()
    assert [(type(p), p.packet_id) for p in pub.received()] == [(PubAck, 1)]


def test_stopping_commits_what_is_left_and_gives_up_on_a_commit_that_hangs():
    """At shutdown the store service commits the last batch and closes the store; a commit
    that never finishes (a hung disk) does not keep the broker from stopping forever."""
    from mqtt_twisted.storeservice import FINAL_COMMIT_SECONDS, StoreService

    store, clock = ManualStore(), Clock()
    service = StoreService(store, clock, opened_at=0.0)
    broker = Broker(clock, BrokerConfig(), journal=service.journal)
    service.load_into(broker)
    persistent(broker, "sub").lose()  # a session to save at the end
    stopped: list[object] = []
    service.stopService().addBoth(stopped.append)
    assert not stopped and len(store.pending) == 1
    store.settle()
    assert stopped == [None] and "sub" in store.sessions  # committed, then closed

    store, clock = ManualStore(), Clock()
    service = StoreService(store, clock, opened_at=0.0)
    broker = Broker(clock, BrokerConfig(), journal=service.journal)
    persistent(broker, "sub").lose()
    stopped = []
    service.stopService().addBoth(stopped.append)
    clock.advance(FINAL_COMMIT_SECONDS - 1)
    assert not stopped
    clock.advance(1)
    assert stopped == [None]
