"""MQTT 5.0 timing and state in the broker core, driven with StringTransport + task.Clock:
session expiry, will delay, Server Keep Alive, Receive Maximum, topic aliases (pure).

OASIS MQTT 5.0 numbering.
"""

from __future__ import annotations

import pytest

from mqtt_twisted.broker.aliases import InboundAliases, OutboundAliases
from mqtt_twisted.packets import (
    ConnAck,
    Connect,
    Disconnect,
    PacketError,
    PacketType,
    PingReq,
    PingResp,
    Property,
    PubAck,
    Publish,
    PubRel,
    ReasonCode,
    Subscribe,
    SubscriptionRequest,
    Will,
)

from .harness import FakeClient, connected, make_broker

SEI = Property.SESSION_EXPIRY_INTERVAL
WILL_DELAY = Property.WILL_DELAY_INTERVAL


def v5(broker, client_id: str, expiry: int | None = None, **connect) -> FakeClient:
    """A connected MQTT 5 client (CONNACK consumed)."""
    properties = dict(connect.pop("properties", {}))
    if expiry is not None:
        properties[SEI] = expiry
    return connected(broker, client_id, level=5, properties=properties, **connect)


def subscribe(client: FakeClient, topic_filter: str, qos: int = 1) -> None:
    client.send(Subscribe(1, [SubscriptionRequest(topic_filter, qos)]))
    (suback,) = client.received()
    assert suback.reason_codes == [qos]


def publishes(client: FakeClient) -> list[Publish]:
    return [p for p in client.received() if p.type == PacketType.PUBLISH]


def watcher(broker, topic_filter: str = "w/#") -> FakeClient:
    watch = connected(broker, "watcher", level=4)
    subscribe(watch, topic_filter, 1)
    return watch


# -- Session Expiry Interval ---------------------------------------------------------------


def test_session_expires_after_its_interval_with_its_queue():
    """Session Expiry Interval 10: the session and its queued messages stay 10 s after the
    connection closed, then go [MQTT-3.1.2-23]."""
    broker, clock = make_broker()
    sub = v5(broker, "sub", expiry=10)
    subscribe(sub, "t")
    sub.lose()
    pub = v5(broker, "pub")
    pub.send(Publish("t", b"queued", qos=1, packet_id=1))
    session = broker.sessions["sub"]
    assert len(session.queue) == 1
    clock.advance(9.9)
    assert broker.sessions.get("sub") is session
    clock.advance(0.2)
    assert "sub" not in broker.sessions
    assert broker.stats.clients_expired == 1
    pub.send(Publish("t", b"nobody", qos=1, packet_id=2))
    assert pub.received()[-1].reason_code == ReasonCode.NO_MATCHING_SUBSCRIBERS


def test_expiry_0_ends_the_session_with_the_connection():
    broker, clock = make_broker()
    client = v5(broker, "brief")
    client.lose()
    assert "brief" not in broker.sessions


def test_reconnect_in_time_keeps_the_session_and_restarts_the_timer():
    """Reconnecting before expiry resumes the session (present 1) and cancels the timer; the
    next disconnect starts a new interval from the new CONNECT's value."""
    broker, clock = make_broker()
    v5(broker, "back", expiry=10).lose()
    clock.advance(8)
    again = FakeClient(broker, 5)
    again.send(Connect("back", 5, clean_start=False, properties={SEI: 4}))
    (connack,) = again.received()
    assert connack.session_present is True
    clock.advance(100)
    assert broker.sessions["back"].connection is again.protocol
    again.lose()
    clock.advance(3.9)
    assert "back" in broker.sessions
    clock.advance(0.2)
    assert "back" not in broker.sessions


def test_never_expiring_session():
    """Session Expiry Interval 0xFFFFFFFF: the session does not expire (3.1.2.11.2)."""
    broker, clock = make_broker()
    v5(broker, "forever", expiry=0xFFFFFFFF).lose()
    clock.advance(10**9)
    assert "forever" in broker.sessions


def test_persistent_client_expiration_caps_session_expiry():
    """persistent_client_expiration (Mosquitto's option) bounds a longer Session Expiry."""
    broker, clock = make_broker(persistent_client_expiration=5)
    v5(broker, "capped", expiry=100).lose()
    clock.advance(5.1)
    assert "capped" not in broker.sessions


def test_disconnect_changes_the_expiry():
    """DISCONNECT with Session Expiry Interval 30 replaces CONNECT's 10 (3.14.2.2.2)."""
    broker, clock = make_broker()
    client = v5(broker, "changer", expiry=10)
    client.send(Disconnect(0, {SEI: 30}))
    assert client.closed
    clock.advance(29.9)
    assert "changer" in broker.sessions
    clock.advance(0.2)
    assert "changer" not in broker.sessions


def test_disconnect_expiry_after_connect_0_is_a_protocol_error():
    """[MQTT-3.14.2-2]: DISCONNECT 0x82 back, connection closed, session gone."""
    broker, clock = make_broker()
    client = v5(broker, "sneaky")
    client.send(Disconnect(0, {SEI: 30}))
    (disconnect,) = client.received()
    assert disconnect.reason_code == ReasonCode.PROTOCOL_ERROR
    assert client.closes_after_linger(clock)
    assert "sneaky" not in broker.sessions


# -- Will Delay Interval --------------------------------------------------------------------


def with_delayed_will(broker, client_id: str, delay: int, expiry: int | None) -> FakeClient:
    will = Will(f"w/{client_id}", b"gone", 1, properties={WILL_DELAY: delay})
    return v5(broker, client_id, expiry=expiry, will=will)


def test_will_published_after_its_delay():
    """Will Delay Interval 5: published 5 s after the connection closed (3.1.3.2.2)."""
    broker, clock = make_broker()
    watch = watcher(broker)
    with_delayed_will(broker, "late", 5, expiry=100).lose()
    clock.advance(4.9)
    assert publishes(watch) == []
    clock.advance(0.2)
    (will,) = publishes(watch)
    assert (will.topic, will.payload) == ("w/late", b"gone")
    assert WILL_DELAY not in will.properties


def test_session_end_before_will_delay_publishes_the_will():
    """Session Expiry 3, Will Delay 10: the will goes out when the session ends, at 3 s."""
    broker, clock = make_broker()
    watch = watcher(broker)
    with_delayed_will(broker, "short", 10, expiry=3).lose()
    clock.advance(2.9)
    assert publishes(watch) == []
    clock.advance(0.2)
    assert [p.payload for p in publishes(watch)] == [b"gone"]
    assert "short" not in broker.sessions
    clock.advance(20)
    assert publishes(watch) == []  # only once


def test_reconnect_within_will_delay_cancels_it():
    """[MQTT-3.1.3-9]: a new connection to the session before the delay: no will."""
    broker, clock = make_broker()
    watch = watcher(broker)
    with_delayed_will(broker, "flaky", 5, expiry=100).lose()
    clock.advance(2)
    again = v5(broker, "flaky", expiry=100, clean_start=False)
    clock.advance(20)
    assert publishes(watch) == []
    assert not again.closed


def test_takeover_within_will_delay_publishes_no_will():
    """A takeover (0x8E to the old connection) immediately reconnects the session, so a
    delayed will is not published [MQTT-3.1.3-9]; Mosquitto 2.x does the same."""
    broker, clock = make_broker()
    watch = watcher(broker)
    old = with_delayed_will(broker, "twin", 5, expiry=100)
    v5(broker, "twin", expiry=100, clean_start=False)
    (disconnect,) = old.received()
    assert disconnect.reason_code == ReasonCode.SESSION_TAKEN_OVER
    clock.advance(20)
    assert publishes(watch) == []


def test_takeover_publishes_an_undelayed_will():
    """Takeover without a will delay: the old connection's will is published [MQTT-3.1.4-3]."""
    broker, clock = make_broker()
    watch = watcher(broker)
    v5(broker, "twin", will=Will("w/twin", b"gone", 1))
    v5(broker, "twin")
    assert [p.payload for p in publishes(watch)] == [b"gone"]


def test_disconnect_with_will_message_honours_the_delay():
    """DISCONNECT 0x04 keeps the will, which still waits for its delay."""
    broker, clock = make_broker()
    watch = watcher(broker)
    client = with_delayed_will(broker, "bye", 2, expiry=100)
    client.send(Disconnect(ReasonCode.DISCONNECT_WITH_WILL))
    assert publishes(watch) == []
    clock.advance(2.1)
    assert [p.payload for p in publishes(watch)] == [b"gone"]


# -- Server Keep Alive ----------------------------------------------------------------------


def connack_of(broker, keep_alive: int) -> tuple[FakeClient, ConnAck]:
    client = FakeClient(broker, 5)
    client.send(Connect("ka", 5, keep_alive=keep_alive))
    (connack,) = client.received()
    return client, connack


def test_server_keep_alive_is_announced_and_enforced():
    """Keep alive 100 above max_keepalive 30: Server Keep Alive 30 [MQTT-3.2.2-21], and the
    broker then closes a client silent for 1.5 x 30 s with DISCONNECT 0x8D."""
    broker, clock = make_broker(max_keepalive=30)
    client, connack = connack_of(broker, 100)
    assert connack.properties[Property.SERVER_KEEP_ALIVE] == 30
    clock.advance(44.9)
    assert not client.closed
    client.send(PingReq())
    assert client.received() == [PingResp()]
    clock.advance(44.9)
    assert not client.closed
    clock.advance(0.2)
    assert client.closes_after_linger(clock)
    (disconnect,) = client.received()
    assert disconnect.reason_code == ReasonCode.KEEP_ALIVE_TIMEOUT


def test_server_keep_alive_for_keep_alive_0():
    """Keep alive 0 with max_keepalive 30: Server Keep Alive 30, enforced (Mosquitto 2.x)."""
    broker, clock = make_broker(max_keepalive=30)
    client, connack = connack_of(broker, 0)
    assert connack.properties[Property.SERVER_KEEP_ALIVE] == 30
    clock.advance(45.1)
    assert client.closes_after_linger(clock)


def test_keep_alive_within_limit_has_no_server_keep_alive():
    broker, clock = make_broker(max_keepalive=30)
    client, connack = connack_of(broker, 10)
    assert Property.SERVER_KEEP_ALIVE not in connack.properties
    clock.advance(15.1)
    assert client.closes_after_linger(clock)


def test_keep_alive_timeout_without_problem_information_has_no_reason_string():
    """Request Problem Information 0: the 0x8D DISCONNECT carries no Reason String
    [MQTT-3.1.2-29]."""
    broker, clock = make_broker()
    client = v5(broker, "shy", keep_alive=10, properties={Property.REQUEST_PROBLEM_INFORMATION: 0})
    clock.advance(15.1)
    assert client.received() == [Disconnect(ReasonCode.KEEP_ALIVE_TIMEOUT, {})]


# -- Receive Maximum ------------------------------------------------------------------------


def test_client_receive_maximum_window():
    """Receive Maximum 2: at most 2 unacknowledged QoS 1 PUBLISH [MQTT-3.3.4-9]; each
    PUBACK releases one more, in order."""
    broker, clock = make_broker()
    sub = v5(broker, "sub", properties={Property.RECEIVE_MAXIMUM: 2})
    subscribe(sub, "t")
    pub = v5(broker, "pub")
    for n in range(5):
        pub.send(Publish("t", b"%d" % n, qos=1, packet_id=n + 1))
    got = publishes(sub)
    assert [p.payload for p in got] == [b"0", b"1"]
    sub.send(PubAck(got[0].packet_id))
    (third,) = publishes(sub)
    assert third.payload == b"2"
    sub.send(PubAck(got[1].packet_id))
    sub.send(PubAck(third.packet_id))
    assert [p.payload for p in publishes(sub)] == [b"3", b"4"]


def test_receive_maximum_taken_from_each_connect():
    """The window follows the Receive Maximum of the connection now attached: 1, then 3."""
    broker, clock = make_broker()
    sub = v5(broker, "sub", expiry=100, properties={Property.RECEIVE_MAXIMUM: 1})
    subscribe(sub, "t")
    sub.lose()
    pub = v5(broker, "pub")
    for n in range(5):
        pub.send(Publish("t", b"%d" % n, qos=1, packet_id=n + 1))
    again = FakeClient(broker, 5)
    again.send(
        Connect("sub", 5, clean_start=False, properties={SEI: 100, Property.RECEIVE_MAXIMUM: 3})
    )
    assert [p.payload for p in publishes(again)] == [b"0", b"1", b"2"]


def test_broker_receive_maximum_for_qos2():
    """The broker's Receive Maximum (max_inflight_messages 2) counts QoS 2 PUBLISH until
    PUBREL: a PUBREL makes room; a third unreleased one is DISCONNECT 0x93 [MQTT-3.3.4-7]."""
    broker, clock = make_broker(max_inflight_messages=2)
    client = v5(broker, "q2")
    client.send(Publish("t", b"a", qos=2, packet_id=1))
    client.send(Publish("t", b"b", qos=2, packet_id=2))
    client.send(PubRel(1))
    client.send(Publish("t", b"c", qos=2, packet_id=3))
    assert [p.type for p in client.received()] == [
        PacketType.PUBREC,
        PacketType.PUBREC,
        PacketType.PUBCOMP,
        PacketType.PUBREC,
    ]
    client.send(Publish("t", b"d", qos=2, packet_id=4))
    (disconnect,) = client.received()
    assert disconnect.reason_code == ReasonCode.RECEIVE_MAXIMUM_EXCEEDED
    assert client.closes_after_linger(clock)


def test_resent_qos2_publish_does_not_count_twice():
    """A QoS 2 PUBLISH resent with DUP before PUBREL is the same message: no 0x93."""
    broker, clock = make_broker(max_inflight_messages=1)
    client = v5(broker, "dup")
    client.send(Publish("t", b"a", qos=2, packet_id=1))
    client.send(Publish("t", b"a", qos=2, dup=True, packet_id=1))
    assert [p.type for p in client.received()] == [PacketType.PUBREC, PacketType.PUBREC]
    assert not client.closed


# -- topic aliases (pure) ---------------------------------------------------------------------


def test_inbound_alias_set_and_used():
    aliases = InboundAliases(3)
    assert aliases.resolve("a/b", None) == "a/b"
    assert aliases.resolve("a/b", 1) == "a/b"
    assert aliases.resolve("", 1) == "a/b"
    assert aliases.resolve("c", 1) == "c"  # remapped
    assert aliases.resolve("", 1) == "c"
    assert aliases.resolve("d", 3) == "d"  # the maximum itself is valid


@pytest.mark.parametrize("alias", [0, 4, 65535])
def test_inbound_alias_out_of_range(alias):
    """[MQTT-3.3.2-8], [MQTT-3.3.2-9]: 0 or above the maximum is 0x94."""
    with pytest.raises(PacketError) as caught:
        InboundAliases(3).resolve("a", alias)
    assert caught.value.reason_code == ReasonCode.TOPIC_ALIAS_INVALID


def test_inbound_alias_any_invalid_with_maximum_0():
    with pytest.raises(PacketError) as caught:
        InboundAliases(0).resolve("a", 1)
    assert caught.value.reason_code == ReasonCode.TOPIC_ALIAS_INVALID


@pytest.mark.parametrize("alias", [None, 2])
def test_inbound_empty_topic_needs_a_known_alias(alias):
    aliases = InboundAliases(3)
    aliases.resolve("a", 1)
    with pytest.raises(PacketError) as caught:
        aliases.resolve("", alias)
    assert caught.value.reason_code == ReasonCode.PROTOCOL_ERROR


def test_outbound_aliases():
    aliases = OutboundAliases(2)
    assert aliases.lookup("a") == (1, True)
    assert aliases.lookup("a") == (1, False)
    assert aliases.lookup("b") == (2, True)
    assert aliases.lookup("c") == (0, True)  # beyond the maximum: full name, no alias
    assert aliases.lookup("c") == (0, True)
    assert aliases.lookup("b") == (2, False)


def test_outbound_aliases_maximum_0():
    assert OutboundAliases(0).lookup("a") == (0, True)


def test_outbound_alias_forget_only_undoes_the_last():
    aliases = OutboundAliases(3)
    aliases.lookup("a")
    aliases.lookup("b")
    aliases.forget("a")  # not the one just given: kept
    assert aliases.lookup("a") == (1, False)
    aliases.forget("b")
    assert aliases.lookup("b") == (2, True)  # given again, name sent again


def test_aliases_in_protocol_are_per_connection():
    """[MQTT-3.3.2-10], [MQTT-3.3.2-11]: a new connection starts with no aliases, both ways."""
    broker, clock = make_broker()
    sub = v5(broker, "sub", expiry=100, properties={Property.TOPIC_ALIAS_MAXIMUM: 2})
    subscribe(sub, "t/#", 0)
    pub = v5(broker, "pub")
    pub.send(Publish("t/a", b"1", properties={Property.TOPIC_ALIAS: 1}))
    pub.send(Publish("", b"2", properties={Property.TOPIC_ALIAS: 1}))
    got = publishes(sub)
    assert [(p.topic, p.properties.get(Property.TOPIC_ALIAS)) for p in got] == [("t/a", 1), ("", 1)]
    sub.lose()
    sub = v5(
        broker, "sub", expiry=100, clean_start=False, properties={Property.TOPIC_ALIAS_MAXIMUM: 2}
    )
    pub.send(Publish("t/a", b"3"))
    (again,) = publishes(sub)
    assert (again.topic, again.properties.get(Property.TOPIC_ALIAS)) == ("t/a", 1)
