"""The seam (mqtt_twisted.broker.hooks): CONNECT may wait for a Deferred without reordering a
client's packets; the core asks the hooks at publish, subscribe and delivery."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed

from mqtt_twisted.broker import Broker, BrokerConfig
from mqtt_twisted.broker.hooks import (
    Authenticated,
    Challenge,
    ClientIdentity,
    ConnectRequest,
    Hooks,
    Refused,
)
from mqtt_twisted.packets import (
    Auth,
    ConnAck,
    Connect,
    Property,
    PubAck,
    Publish,
    ReasonCode,
    SubAck,
    Subscribe,
    SubscriptionRequest,
    Will,
)

from .harness import FakeClient, connected, make_broker


class Waiting(Hooks):
    """Answers every CONNECT with a Deferred the test fires."""

    def __init__(self) -> None:
        self.pending: list[tuple[ConnectRequest, Deferred]] = []

    def authenticate(self, request: ConnectRequest):
        d: Deferred = Deferred()
        self.pending.append((request, d))
        return d


def broker_with(hooks: Hooks, **config) -> tuple[Broker, object]:
    broker, clock = make_broker(**config)
    broker.hooks = hooks
    return broker, clock


def test_connect_waits_for_a_deferred_and_keeps_the_packet_order():
    hooks = Waiting()
    broker, clock = broker_with(hooks)
    watcher = FakeClient(broker)
    watcher.send(Connect("watcher"))
    hooks.pending.pop()[1].callback(Authenticated(None))
    clock.advance(0)
    watcher.send(Subscribe(1, [SubscriptionRequest("t", 1)]))
    assert [p.type for p in watcher.received()] == [2, 9]  # CONNACK, SUBACK
    client = FakeClient(broker)
    # CONNECT, then at once a PUBLISH and a PINGREQ in the same segment
    from mqtt_twisted.packets import PingReq, encode

    client.send_bytes(
        encode(Connect("slowpoke", username="u", password=b"p"), 4)
        + encode(Publish("t", b"after connect", qos=1, packet_id=7), 4)
        + encode(PingReq(), 4)
    )
    assert client.received() == []  # nothing answered while the check runs
    ((request, answer),) = hooks.pending
    assert (request.client_id, request.username, request.password) == ("slowpoke", "u", b"p")
    answer.callback(Authenticated("u"))
    clock.advance(0)
    connack, puback, pingresp = client.received()
    assert connack == ConnAck(False, 0)
    assert puback == PubAck(7)
    assert pingresp.type == 13
    assert [p.payload for p in watcher.received()] == [b"after connect"]


def test_a_refusal_from_the_deferred_is_a_refusing_connack():
    hooks = Waiting()
    broker, clock = broker_with(hooks)
    client = FakeClient(broker)
    client.send(Connect("x", username="u", password=b"bad"))
    hooks.pending.pop()[1].errback(Refused("bad user name or password", 4, 0x86))
    assert client.received() == [ConnAck(False, 4)]
    assert client.closes_after_linger(clock)
    assert "x" not in broker.sessions


def test_an_unexpected_error_is_server_unavailable():
    hooks = Waiting()
    broker, clock = broker_with(hooks)
    client = FakeClient(broker, level=5)
    client.send(Connect("x", 5))
    hooks.pending.pop()[1].errback(RuntimeError("checker crashed"))
    (connack,) = client.received()
    assert connack.return_code == ReasonCode.SERVER_UNAVAILABLE


def test_connection_lost_while_waiting_is_harmless():
    hooks = Waiting()
    broker, clock = broker_with(hooks)
    client = FakeClient(broker)
    client.send(Connect("gone"))
    client.lose()
    hooks.pending.pop()[1].callback(Authenticated(None))
    clock.advance(0)
    assert "gone" not in broker.sessions
    assert broker.connected == 0


def test_a_synchronous_answer_needs_no_extra_turn():
    broker, clock = broker_with(Hooks())
    client = FakeClient(broker)
    client.send(Connect("quick"))
    assert client.received() == [ConnAck(False, 0)]


class Scripted(Hooks):
    """A two-step enhanced authentication: method "TEST", the client must answer "pong"."""

    def authenticate(self, request: ConnectRequest):
        if request.method != "TEST":
            raise Refused("no", None, 0x8C)

        def respond(data: bytes):
            if data != b"pong":
                raise Refused("wrong answer", None, 0x87)
            return succeed(Authenticated("tester", b"welcome"))

        return Challenge(b"ping", respond)


def test_enhanced_authentication_exchange_over_auth_packets():
    """CONNECT with Authentication Method → AUTH 0x18 → AUTH 0x18 → CONNACK with the final
    Authentication Data [MQTT-4.12.0-1], [MQTT-4.12.0-5]."""
    broker, clock = broker_with(Scripted())
    client = FakeClient(broker, level=5)
    method = {Property.AUTHENTICATION_METHOD: "TEST"}
    client.send(Connect("enh", 5, properties={**method, Property.AUTHENTICATION_DATA: b"hi"}))
    (challenge,) = client.received()
    assert challenge == Auth(
        ReasonCode.CONTINUE_AUTHENTICATION, {**method, Property.AUTHENTICATION_DATA: b"ping"}
    )
    client.send(Auth(0x18, {**method, Property.AUTHENTICATION_DATA: b"pong"}))
    (connack,) = client.received()
    assert connack.return_code == 0
    assert connack.properties[Property.AUTHENTICATION_METHOD] == "TEST"
    assert connack.properties[Property.AUTHENTICATION_DATA] == b"welcome"
    assert broker.sessions["enh"].identity.username == "tester"


def test_enhanced_authentication_wrong_answer_and_other_method():
    broker, clock = broker_with(Scripted())
    client = FakeClient(broker, level=5)
    method = {Property.AUTHENTICATION_METHOD: "TEST"}
    client.send(Connect("enh", 5, properties=method))
    client.received()
    client.send(Auth(0x18, {**method, Property.AUTHENTICATION_DATA: b"nope"}))
    (connack,) = client.received()
    assert connack.return_code == 0x87
    other = FakeClient(broker, level=5)
    other.send(Connect("other", 5, properties={Property.AUTHENTICATION_METHOD: "OTHER"}))
    assert other.received()[0].return_code == ReasonCode.BAD_AUTHENTICATION_METHOD


def test_auth_with_a_different_method_is_a_protocol_error():
    broker, clock = broker_with(Scripted())
    client = FakeClient(broker, level=5)
    client.send(Connect("enh", 5, properties={Property.AUTHENTICATION_METHOD: "TEST"}))
    client.received()
    client.send(Auth(0x18, {Property.AUTHENTICATION_METHOD: "ELSE"}))
    (connack,) = client.received()  # before CONNACK: a refusing CONNACK [MQTT-4.12.0-5]
    assert connack.return_code == ReasonCode.PROTOCOL_ERROR


class OnlyTopicA(Hooks):
    """Client "reader" may read only a/#; nobody may write b/#."""

    def read_check(self, identity: ClientIdentity, topic: str) -> bool:  # type: ignore[override]
        return identity.client_id != "reader" or topic.startswith("a/")

    def may_publish(self, identity: ClientIdentity, topic: str) -> bool:
        return not topic.startswith("b/") and super().may_publish(identity, topic)

    def may_subscribe(self, identity: ClientIdentity, topic_filter: str) -> bool:
        return identity.client_id != "reader" or topic_filter[:1] in ("a", "#", "+")


def test_the_core_asks_the_hooks_at_subscribe_publish_and_delivery():
    broker, clock = make_broker()
    broker.hooks = OnlyTopicA()
    reader = connected(broker, "reader", level=5)
    reader.send(Subscribe(1, [SubscriptionRequest("#", 1), SubscriptionRequest("c/#", 1)]))
    assert reader.received() == [SubAck(1, [1, ReasonCode.NOT_AUTHORIZED])]
    writer = connected(broker, "writer", level=5)
    writer.send(Publish("a/1", b"yes", qos=1, packet_id=1))
    writer.send(Publish("z/1", b"not for reader", qos=1, packet_id=2))
    writer.send(Publish("b/1", b"nobody", qos=1, packet_id=3))
    acks = writer.received()
    # z/1 matched a subscription (the reader may just not read it): success, not 0x10
    assert [a.reason_code for a in acks] == [0, 0, ReasonCode.NOT_AUTHORIZED]
    assert [p.payload for p in reader.received()] == [b"yes"]


def test_will_to_a_forbidden_topic_refuses_the_connect():
    broker, clock = make_broker()
    broker.hooks = OnlyTopicA()
    client = FakeClient(broker)
    client.send(Connect("w", will=Will("b/will", b"x")))
    assert client.received() == [ConnAck(False, 5)]


def test_default_hooks_refuse_writes_into_sys():
    broker = Broker(make_broker()[1], BrokerConfig())
    identity = ClientIdentity("c")
    assert not broker.hooks.may_publish(identity, "$SYS/broker/uptime")
    assert broker.hooks.may_publish(identity, "a/b")
    assert broker.hooks.read_check is None
