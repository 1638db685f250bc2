"""The pure parts of the cluster: wire format, remote routes, replica of routes/retained."""

from __future__ import annotations

import attrs
import pytest
from twisted.internet.defer import Deferred

from mqtt_twisted.broker.entries import SubscriptionOptions
from mqtt_twisted.broker.message import Message
from mqtt_twisted.cluster.address import RedisAddress
from mqtt_twisted.cluster.node import ClusterNode
from mqtt_twisted.cluster.replica import Replica
from mqtt_twisted.cluster.routes import RemoteRoutes
from mqtt_twisted.cluster.wire import (
    Forward,
    Kick,
    RetainedEvent,
    RouteEvent,
    SessionRouteEvent,
    pack_delivery_head,
    pack_forward,
    pack_message,
    pack_options,
    pack_released,
    pack_retained_value,
    unpack_doorbell,
    unpack_forward,
    unpack_kick,
    unpack_message,
    unpack_options,
    unpack_released,
    unpack_retained_event,
    unpack_route_event,
    unpack_session_route_event,
)
from mqtt_twisted.packets import Property as P

from .harness import connected, make_broker

SEP = b"\x00"
PROPS = {
    P.PAYLOAD_FORMAT_INDICATOR: 1,
    P.MESSAGE_EXPIRY_INTERVAL: 60,
    P.CONTENT_TYPE: "application/json; charset=ütf",
    P.RESPONSE_TOPIC: "reply/tö/ø",
    P.CORRELATION_DATA: b"\x00corr\xff\x00",
    P.USER_PROPERTY: [("k", "v1"), ("k", "v2"), ("ключ", "значение")],
}


def fields(message: Message | None) -> tuple | None:
    if message is None:
        return None
    m = message
    return (m.topic, m.payload, m.qos, m.retain, m.properties, m.expires_at)


def round_trip(message: Message) -> Message:
    return unpack_message(pack_message(message))


# --------------------------------------------------------------------------- wire


@pytest.mark.parametrize("qos", [0, 1, 2])
@pytest.mark.parametrize("retain", [False, True])
def test_message_round_trip_keeps_qos_and_retain(qos: int, retain: bool) -> None:
    message = Message("a/b", b"x", qos, retain)
    assert fields(round_trip(message)) == ("a/b", b"x", qos, retain, {}, None)


@pytest.mark.parametrize(
    "payload", [b"", b"\x00", b"\x00\x00\x00", bytes(range(256)), b"\xff" * 70000]
)
def test_message_round_trip_keeps_empty_and_binary_payloads(payload: bytes) -> None:
    assert round_trip(Message("t", payload, 1)).payload == payload


@pytest.mark.parametrize("expires_at", [None, 1700000000.123456, 0.0])
def test_message_round_trip_keeps_expiry(expires_at: float | None) -> None:
    assert round_trip(Message("t", b"", expires_at=expires_at)).expires_at == expires_at


def test_message_round_trip_keeps_non_ascii_topic_and_mqtt5_publish_properties() -> None:
    topic = "häuser/東京/🚀/x"
    message = Message(topic, b"\x00{}\x00", 2, True, dict(PROPS), 12345.5)
    assert fields(round_trip(message)) == (topic, b"\x00{}\x00", 2, True, PROPS, 12345.5)
    assert fields(unpack_message(b"junk" + pack_message(message), 4)) == fields(message)


@pytest.mark.parametrize("plain", [True, False])
@pytest.mark.parametrize(
    "groups",
    [(), ("$share/g/a/+",), ("$share/g/a/+", "$share/h/ü/#", "$share/x/$SYS/+/y")],
)
def test_forward_round_trip(plain: bool, groups: tuple[str, ...]) -> None:
    message = Message("a/ü", b"\x00\x01", 1, False, dict(PROPS), 99.5)
    data = pack_forward(Forward(message, plain, groups))
    assert data[:1] == b"M"
    back = unpack_forward(data)
    assert back.plain is plain
    assert back.groups == groups
    assert fields(back.message) == fields(message)


@pytest.mark.parametrize("client_id", ["c1", "", "клиент/ü 1", "a" * 300])
def test_kick_as_the_claim_script_publishes_it(client_id: str) -> None:
    data = b"K42" + b"\x00" + client_id.encode() + b"\x00" + b"node-b"
    assert unpack_kick(data) == Kick(client_id, 42, "node-b")


@pytest.mark.parametrize("client_id", ["c1", "клиент/ü 1"])
def test_released_round_trip(client_id: str) -> None:
    assert unpack_released(pack_released(client_id, 7)) == (client_id, 7)


@pytest.mark.parametrize("ids", [(), (1,), (5, 268435455)])
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_a_doorbell_as_the_enqueue_script_publishes_it(ids, qos) -> None:
    message = Message("a/ü", b"\x00payload", 2, True, {P.CONTENT_TYPE: "x"}, 12.5)
    head = pack_delivery_head(qos, True, ids)
    data = b"B" + b"17" + b"\x00" + b"cl/ient" + b"\x00" + head + pack_message(message)
    bell = unpack_doorbell(data)
    assert (bell.client_id, bell.seq) == ("cl/ient", 17)
    delivery = bell.delivery
    assert (delivery.qos, delivery.retain, delivery.subscription_ids) == (qos, True, ids)
    assert fields(delivery.message) == fields(message)


@pytest.mark.parametrize(
    "options",
    [
        SubscriptionOptions(0),
        SubscriptionOptions(2, True, True, 2, 268435455),
        SubscriptionOptions(1, False, True, 1, None),
    ],
)
def test_session_route_events_as_the_script_publishes_them(options) -> None:
    packed = pack_options(options)
    assert attrs.astuple(unpack_options(packed)) == attrs.astuple(options)
    added = b"P9" + b"\x00" + b"cid" + b"\x00" + packed + "a/+/ü".encode()
    event = unpack_session_route_event(added)
    assert event[:3] == (9, "cid", "a/+/ü")
    assert event.options is not None
    assert attrs.astuple(event.options) == attrs.astuple(options)
    removed = b"p10" + b"\x00" + b"cid" + b"\x00" + "a/+/ü".encode()
    assert unpack_session_route_event(removed) == SessionRouteEvent(10, "cid", "a/+/ü", None)


@pytest.mark.parametrize("kind", [b"S", b"U"])
@pytest.mark.parametrize("topic_filter", ["a", "a/+/b/#", "$share/g/ü/東京/#", "/"])
def test_route_event_as_the_route_script_publishes_it(kind: bytes, topic_filter: str) -> None:
    data = kind + b"12" + SEP + b"node-a" + SEP + topic_filter.encode()
    assert unpack_route_event(data) == RouteEvent(kind, "node-a", 12, topic_filter)


@pytest.mark.parametrize(
    "data, event",
    [  # as the REWRITE and REAP scripts publish them
        (b"Y7" + SEP + b"node-a" + SEP, RouteEvent(b"Y", "node-a", 7, "")),
        (b"X0" + SEP + b"node-b" + SEP, RouteEvent(b"X", "node-b", 0, "")),
    ],
)
def test_rewrite_and_node_gone_events_have_an_empty_filter(data: bytes, event: RouteEvent) -> None:
    assert unpack_route_event(data) == event


def test_retained_events_as_the_retain_script_publishes_them() -> None:
    message = Message("a/ü/b", b"\x00\x00", 1, True, {P.CONTENT_TYPE: "x"}, 5.25)
    data = b"R" + b"1234" + SEP + "a/ü/b".encode() + SEP + pack_retained_value(message)
    event = unpack_retained_event(data)
    assert (event.seq, event.topic) == (1234, "a/ü/b")
    assert fields(event.message) == fields(message)
    assert pack_retained_value(None) == b""  # a clear carries nothing after the topic
    data = b"R" + b"3" + SEP + "x/東京".encode() + SEP
    assert unpack_retained_event(data) == RetainedEvent(3, "x/東京", None)


# --------------------------------------------------------------------------- RemoteRoutes


def test_nodes_for_matches_exact_and_wildcard_filters() -> None:
    routes = RemoteRoutes()
    routes.add("n1", "a/b")
    routes.add("n2", "a/+")
    routes.add("n3", "a/#")
    routes.add("n4", "x/#")
    assert routes.nodes_for("a/b") == {"n1", "n2", "n3"}
    assert routes.nodes_for("a/c") == {"n2", "n3"}
    assert routes.nodes_for("a") == {"n3"}  # "a/#" matches its parent level
    assert routes.nodes_for("a/b/c") == {"n3"}
    assert routes.nodes_for("b") == set()


def test_leading_wildcards_do_not_match_dollar_topics() -> None:  # [MQTT-4.7.2-1]
    routes = RemoteRoutes()
    routes.add("n1", "#")
    routes.add("n2", "+/x")
    routes.add("n3", "$SYS/#")
    routes.add("n4", "$share/g/#")
    assert routes.nodes_for("$SYS/x") == {"n3"}
    assert routes.nodes_for("a/x") == {"n1", "n2"}
    assert routes.groups_for("$SYS/x") == []
    assert len(routes.groups_for("a/x")) == 1


def test_several_nodes_on_one_filter_and_adding_twice_counts_once() -> None:
    routes = RemoteRoutes()
    assert (len(routes), routes.nodes()) == (0, [])
    routes.add("n1", "a/+")
    routes.add("n2", "a/+")
    routes.add("n1", "a/+")
    routes.add("n1", "$share/g/a/+")
    assert routes.nodes_for("a/b") == {"n1", "n2"}
    assert (len(routes), sorted(routes.nodes())) == (3, ["n1", "n2"])
    routes.remove("n2", "a/+")
    assert routes.nodes_for("a/b") == {"n1"}
    assert (len(routes), routes.nodes()) == (2, ["n1"])  # n2 has no route left


def test_remove_of_unknown_route_is_harmless() -> None:
    routes = RemoteRoutes()
    routes.remove("ghost", "a")
    routes.add("n1", "a")
    routes.remove("n1", "b")
    routes.remove("n2", "a")
    routes.remove("n1", "$share/g/a")
    assert routes.nodes_for("a") == {"n1"}
    assert len(routes) == 1


def test_replace_sets_exactly_the_given_filters() -> None:
    routes = RemoteRoutes()
    routes.add("n1", "a")
    routes.add("n1", "b")
    routes.add("n2", "b")
    routes.replace("n1", ["b", "c", "$share/g/d"])
    assert routes.filters_of("n1") == {"b", "c", "$share/g/d"}
    assert routes.nodes_for("a") == set()
    assert routes.nodes_for("b") == {"n1", "n2"}
    assert routes.nodes_for("c") == {"n1"}
    assert [g.nodes for g in routes.groups_for("d")] == [["n1"]]


def test_drop_removes_every_route_of_a_node() -> None:
    routes = RemoteRoutes()
    routes.add("n1", "a/#")
    routes.add("n1", "$share/g/a/#")
    routes.add("n2", "a/#")
    routes.drop("n1")
    routes.drop("unknown")
    assert routes.nodes_for("a/b") == {"n2"}
    assert routes.groups_for("a/b") == []
    assert routes.nodes() == ["n2"]
    assert len(routes) == 1


def test_shared_group_matches_with_the_nodes_that_have_members() -> None:
    routes = RemoteRoutes()
    routes.add("n1", "$share/g/a/#")
    routes.add("n2", "$share/g/a/#")
    routes.add("n3", "$share/h/a/+")
    found = {g.share_filter: g.nodes for g in routes.groups_for("a/b")}
    assert found == {"$share/g/a/#": ["n1", "n2"], "$share/h/a/+": ["n3"]}
    assert [g.share_filter for g in routes.groups_for("a/b/c")] == ["$share/g/a/#"]
    assert routes.groups_for("b") == []
    assert routes.nodes_for("a/b") == set()  # shared routes are not plain routes


def test_pick_takes_the_nodes_of_a_group_in_turn() -> None:
    routes = RemoteRoutes()
    for node in ("n1", "n2", "n3"):
        routes.add(node, "$share/g/a")
    (group,) = routes.groups_for("a")
    assert [group.pick() for _ in range(6)] == ["n1", "n2", "n3"] * 2
    routes.remove("n2", "$share/g/a")
    picks = [group.pick() for _ in range(4)]
    assert set(picks) == {"n1", "n3"} and picks[0] != picks[1]


def test_group_disappears_when_its_last_node_goes() -> None:
    routes = RemoteRoutes()
    routes.add("n1", "$share/g/a")
    routes.add("n2", "$share/g/a")
    routes.remove("n1", "$share/g/a")
    assert [g.nodes for g in routes.groups_for("a")] == [["n2"]]
    routes.remove("n2", "$share/g/a")
    assert routes.groups_for("a") == []
    routes.add("n3", "$share/g/a")  # a fresh group comes back
    assert [g.nodes for g in routes.groups_for("a")] == [["n3"]]


def test_plain_and_shared_routes_on_one_filter_are_independent() -> None:
    routes = RemoteRoutes()
    routes.add("n1", "a/+")
    routes.add("n1", "$share/g/a/+")
    routes.remove("n1", "$share/g/a/+")
    assert routes.nodes_for("a/b") == {"n1"}
    assert routes.groups_for("a/b") == []
    routes.add("n1", "$share/g/a/+")
    routes.remove("n1", "a/+")
    assert routes.nodes_for("a/b") == set()
    assert [g.nodes for g in routes.groups_for("a/b")] == [["n1"]]


# --------------------------------------------------------------------------- Replica


class Fake:
    """A replica with recording fetch/apply callbacks."""

    def __init__(self, node_id: str = "me") -> None:
        self.route_fetches: list[str] = []
        self.retained_fetches = 0
        self.applied: list[tuple[str, tuple | None]] = []
        self.replica = Replica(node_id, self.route_fetches.append, self._fetch, self._apply)
        self.routes = self.replica.routes

    def _fetch(self) -> None:
        self.retained_fetches += 1

    def _apply(self, topic: str, message: Message | None) -> None:  # clears and sets, in order
        self.applied.append((topic, fields(message)))

    def event(self, kind: bytes, node: str, seq: int, topic_filter: str = "") -> None:
        self.replica.route_event(RouteEvent(kind, node, seq, topic_filter))

    def snapshot(self, node: str, seq: int | None, *filters: str) -> None:
        data = {f.encode(): b"1" for f in filters}
        if seq is not None:
            data[b""] = str(seq).encode()
        self.replica.routes_snapshot(node, data)

    def retained(self, seq: int, topic: str, message: Message | None) -> None:
        self.replica.retained_event(RetainedEvent(seq, topic, message))


def known(node: str = "b", seq: int = 3, *filters: str) -> Fake:
    """A replica that holds ``node``'s routes at ``seq``."""
    fake = Fake()
    fake.event(b"S", node, seq)
    fake.snapshot(node, seq, *filters)
    fake.route_fetches.clear()
    return fake


def test_first_event_of_an_unknown_node_asks_for_its_routes() -> None:
    fake = Fake()
    fake.event(b"S", "b", 5, "a")
    fake.event(b"S", "b", 6, "c")  # pending: no second read
    assert fake.route_fetches == ["b"]
    assert len(fake.routes) == 0
    fake.snapshot("b", 6, "a", "c")
    assert fake.routes.filters_of("b") == {"a", "c"}


def test_in_order_events_are_applied() -> None:
    fake = known("b", 3, "a")
    fake.event(b"S", "b", 4, "x/+")
    fake.event(b"U", "b", 5, "a")
    assert fake.routes.filters_of("b") == {"x/+"}
    assert fake.routes.nodes_for("x/y") == {"b"}
    assert fake.route_fetches == []


def test_events_while_the_snapshot_is_pending_apply_only_if_newer() -> None:
    fake = Fake()
    fake.event(b"S", "b", 4, "a")
    fake.event(b"S", "b", 5, "old")  # in the snapshot already
    fake.event(b"U", "b", 6, "a")
    fake.event(b"S", "b", 7, "new")
    fake.snapshot("b", 5, "a", "keep")
    assert fake.routes.filters_of("b") == {"keep", "new"}
    fake.event(b"S", "b", 8, "later")  # counting goes on from 7
    assert fake.routes.filters_of("b") == {"keep", "new", "later"}
    assert fake.route_fetches == ["b"]


def test_a_gap_in_the_numbers_asks_for_a_snapshot() -> None:
    fake = known("b", 3, "a")
    fake.event(b"S", "b", 5, "x")
    assert fake.route_fetches == ["b"]
    assert fake.routes.filters_of("b") == {"a"}
    fake.snapshot("b", 5, "a", "x")
    assert fake.routes.filters_of("b") == {"a", "x"}


def test_rewritten_routes_ask_for_a_snapshot() -> None:
    fake = known("b", 3, "a")
    fake.event(b"Y", "b", 4)
    assert fake.route_fetches == ["b"]
    fake.snapshot("b", 4, "z")
    assert fake.routes.filters_of("b") == {"z"}


def test_a_rewrite_newer_than_the_pending_snapshot_asks_again() -> None:
    # The snapshot was read (seq 5) before b rewrote its routes (Y6) and the Y overtook the
    # reply: the snapshot is stale, and only a new read tells the rewritten routes.
    fake = Fake()
    fake.event(b"S", "b", 4, "a")
    fake.event(b"Y", "b", 6)
    fake.snapshot("b", 5, "a")
    assert fake.route_fetches == ["b", "b"]


def test_node_gone_drops_its_routes_and_ignores_a_late_snapshot() -> None:
    fake = known("b", 3, "a")
    fake.event(b"Y", "b", 4)
    fake.event(b"X", "b", 0)
    assert fake.routes.filters_of("b") == set()
    assert fake.routes.nodes() == []
    fake.snapshot("b", 4, "a")  # the read asked before it left
    assert len(fake.routes) == 0
    fake.event(b"S", "b", 1, "a")  # back again: read afresh
    assert fake.route_fetches == ["b", "b"]


def test_events_of_this_node_and_unasked_snapshots_are_ignored() -> None:
    fake = Fake("me")
    fake.event(b"S", "me", 1, "a")
    fake.event(b"Y", "me", 2)
    fake.replica.refresh_node("me")
    fake.snapshot("b", 3, "a")  # and a snapshot nobody asked for
    assert fake.route_fetches == []
    assert len(fake.routes) == 0


def test_snapshot_without_a_number_means_the_node_is_gone() -> None:
    fake = known("b", 3, "a", "b/#")
    fake.event(b"Y", "b", 4)
    fake.snapshot("b", None)
    assert fake.routes.nodes() == []
    fake.event(b"S", "b", 5, "a")  # its numbers were forgotten
    assert fake.route_fetches == ["b", "b"]


M1 = Message("r/1", b"one", 1, True)
M2 = Message("r/ü", b"\x00two", 0, True, {P.CONTENT_TYPE: "t"}, 7.5)


def test_first_retained_event_asks_for_a_snapshot_and_newer_events_wait_for_it() -> None:
    fake = Fake()
    fake.retained(4, "r/1", M1)  # older than the snapshot: ignored
    fake.retained(5, "gone", None)  # in the snapshot already
    fake.retained(6, "r/ü", M2)
    fake.retained(7, "r/1", None)
    assert (fake.retained_fetches, fake.applied) == (1, [])  # one read, nothing applied
    fake.replica.retained_snapshot(5, {"r/1": M1}, {"r/1", "stale", "other"})
    cleared = sorted(fake.applied[:2])
    assert cleared == [("other", None), ("stale", None)]
    assert fake.applied[2:] == [("r/1", fields(M1)), ("r/ü", fields(M2)), ("r/1", None)]
    fake.applied.clear()
    fake.retained(8, "r/x", M1)  # counting goes on from 7
    assert fake.applied == [("r/x", fields(M1))]
    assert fake.retained_fetches == 1


def test_in_order_retained_events_are_applied_and_a_gap_asks_again() -> None:
    fake = Fake()
    fake.replica.refresh_retained()
    fake.replica.retained_snapshot(10, {}, set())
    fake.retained(11, "r/1", M1)
    fake.retained(12, "r/1", None)
    assert fake.applied == [("r/1", fields(M1)), ("r/1", None)]
    fake.retained(14, "r/ü", M2)
    assert fake.retained_fetches == 2
    assert len(fake.applied) == 2
    fake.replica.retained_snapshot(14, {"r/ü": M2}, set())
    assert fake.applied[2:] == [("r/ü", fields(M2))]


def test_reset_forgets_everything_so_the_next_event_asks_again() -> None:
    fake = known("b", 3, "a")
    fake.replica.refresh_retained()
    fake.replica.retained_snapshot(10, {}, set())
    fake.event(b"S", "c", 1, "q")  # a read of c pending
    fake.replica.reset()
    fake.event(b"S", "b", 4, "x")
    fake.event(b"S", "c", 2, "q")
    fake.retained(11, "r/1", M1)
    assert fake.route_fetches == ["c", "b", "c"]
    assert fake.retained_fetches == 2
    assert fake.applied == []
    assert fake.routes.filters_of("b") == {"a"}  # kept until the snapshot says otherwise


def test_a_stored_delivery_the_loaded_session_holds_is_not_sent_again() -> None:
    """A session loaded from Redis holds the deliveries stored up to the hash's count; a
    doorbell for one of them may still arrive after the load's reply (pub/sub comes on
    another connection) and must not deliver it twice: a QoS 2 message exactly once
    [MQTT-4.3.3-1], no QoS 1 duplicate without DUP."""
    broker, _ = make_broker()
    client = connected(broker, "mover", clean_start=False)
    session = broker.sessions["mover"]
    session.holds_stored_up_to(7)  # the snapshot held seq 1..7
    for seq in (6, 7, 8, 9):  # doorbells of seq 6 and 7 arrived late
        session.deliver_stored(Message("t", str(seq).encode(), 2), 2, False, (), seq)
    sent = client.received()
    assert [packet.payload for packet in sent] == [b"8", b"9"]
    assert [packet.qos for packet in sent] == [2, 2]


@pytest.mark.parametrize("echo_first", [False, True], ids=["reply-first", "echo-first"])
def test_suback_waits_for_the_own_route_event_in_whichever_order_redis_sends_it(
    echo_first: bool,
) -> None:
    """SUBACK waits until the node heard its own route event (the other nodes have it
    then). The script's reply and the event come on two connections, so the event may
    come first; SUBACK must not then wait for it forever (it did: a test saw no SUBACK)."""
    broker, clock = make_broker()
    node = ClusterNode(clock, broker, RedisAddress.parse("redis://127.0.0.1:6379"), "n1")
    event = b"S5" + SEP + b"n1" + SEP + b"site/#"  # as the route script publishes it
    heard = []
    if echo_first:
        node._on_message(node.keys.all.encode(), event)
    waiting = Deferred()
    waiting.addCallback(node._echo, b"S").addCallback(heard.append)
    waiting.callback(5)  # the script's reply: the route event number
    if not echo_first:
        assert heard == []  # not before the event is heard
        node._on_message(node.keys.all.encode(), event)
    assert heard == [None]
