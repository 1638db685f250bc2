"""MQTT 5.0 sessions and wills end to end: Session Expiry Interval (CONNECT and DISCONNECT),
Will Delay Interval, will properties, DISCONNECT with Will Message.

OASIS MQTT 5.0: 3.1.2.11.2 (Session Expiry Interval), 3.1.3.2 (Will Properties),
3.14.2.2.2 (DISCONNECT Session Expiry Interval), 4.1 (Session State).
"""

import paho.mqtt.client as mqtt
import pytest_twisted
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode as PahoReasonCode

from mqtt_twisted.packets import Disconnect, Property, ReasonCode

from .mqttclient import (
    get,
    nothing_in,
    paho_props,
    raw_v5_connect,
    read_v5,
    reason_int,
    sleep,
    v5_bytes,
    wait_until,
)

V5 = mqtt.MQTTv5


def session_props(expiry: int | None = None, **more):
    values = dict(more)
    if expiry is not None:
        values["SessionExpiryInterval"] = expiry
    return paho_props("CONNECT", **values)


async def v5(
    clients,
    port: int,
    client_id: str,
    clean_start: bool = True,
    expiry: int | None = None,
    will=None,
    **more,
):
    """A connected paho MQTT 5 client; returns (client, session present)."""
    client = clients(port, client_id=client_id, protocol=V5)
    if will is not None:
        client.client.will_set(*will[:4], properties=will[4] if len(will) > 4 else None)
    flags, _rc, _props = await client.connect(
        clean_start=clean_start, properties=session_props(expiry, **more)
    )
    return client, flags.session_present


async def offline(running, client_id: str) -> None:
    sessions = running.broker.sessions
    await wait_until(lambda: client_id not in sessions or sessions[client_id].connection is None)


async def leave(running, client, **disconnect) -> None:
    """Clean DISCONNECT (paho ``disconnect`` arguments), then wait until the broker saw it."""
    client_id = client.client._client_id.decode()
    client.client.disconnect(**disconnect)
    await get(client.disconnects)
    client.stop()
    await offline(running, client_id)


async def watcher(clients, port: int, topic: str = "w/#", qos: int = 1):
    watch = clients(port, client_id="watcher", protocol=V5)
    await watch.connect()
    assert [reason_int(c) for c in await watch.subscribe(topic, qos=qos)] == [qos]
    return watch


async def publisher(clients, port: int):
    pub = clients(port, client_id="publisher", protocol=V5)
    await pub.connect()
    return pub


# -- Session Expiry Interval ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_expiry_0_session_ends_with_the_connection(broker, clients):
    """No Session Expiry Interval (0): the session ends when the connection closes
    (3.1.2.11.2); reconnecting with Clean Start 0 finds none: session present 0
    [MQTT-3.2.2-3], and the old subscription is gone."""
    first, present = await v5(clients, broker.port, "brief")
    assert present is False
    await first.subscribe("s/brief", qos=1)
    await leave(broker, first)
    assert "brief" not in broker.broker.sessions

    again, present = await v5(clients, broker.port, "brief", clean_start=False)
    assert present is False
    pub = await publisher(clients, broker.port)
    await pub.publish("s/brief", b"lost", qos=1)
    assert await nothing_in(again.messages, 0.3)


@pytest_twisted.ensureDeferred
async def test_session_with_expiry_is_resumed_with_queued_messages(broker, clients):
    """Session Expiry Interval 60: after DISCONNECT the session stays; QoS 1 messages for it
    are queued and delivered in order on reconnect with Clean Start 0, session present 1
    [MQTT-3.1.2-23], [MQTT-3.2.2-2]."""
    first, _ = await v5(clients, broker.port, "keeper", expiry=60)
    await first.subscribe("s/keeper", qos=1)
    await leave(broker, first)
    pub = await publisher(clients, broker.port)
    for n in range(3):
        await pub.publish("s/keeper", f"m{n}".encode(), qos=1)

    again, present = await v5(clients, broker.port, "keeper", clean_start=False, expiry=60)
    assert present is True
    got = [await again.message() for _ in range(3)]
    assert [(m.topic, m.payload, m.qos) for m in got] == [
        ("s/keeper", b"m0", 1),
        ("s/keeper", b"m1", 1),
        ("s/keeper", b"m2", 1),
    ]


@pytest_twisted.ensureDeferred
async def test_clean_start_discards_a_stored_session(broker, clients):
    """Clean Start 1 discards a stored session [MQTT-3.1.2-4]: session present 0
    [MQTT-3.2.2-2], its queued messages are not delivered."""
    first, _ = await v5(clients, broker.port, "fresh", expiry=60)
    await first.subscribe("s/fresh", qos=1)
    await leave(broker, first)
    pub = await publisher(clients, broker.port)
    await pub.publish("s/fresh", b"old", qos=1)

    again, present = await v5(clients, broker.port, "fresh", clean_start=True, expiry=60)
    assert present is False
    assert await nothing_in(again.messages, 0.3)


@pytest_twisted.ensureDeferred
async def test_session_expires_with_its_queued_messages(broker, clients):
    """Session Expiry Interval 1: a second after the connection closed the session and its
    queued messages are gone [MQTT-3.1.2-23]; reconnecting finds no session."""
    first, _ = await v5(clients, broker.port, "mayfly", expiry=1)
    await first.subscribe("s/mayfly", qos=1)
    await leave(broker, first)
    pub = await publisher(clients, broker.port)
    await pub.publish("s/mayfly", b"too late", qos=1)
    assert len(broker.broker.sessions["mayfly"].queue) == 1
    await wait_until(lambda: "mayfly" not in broker.broker.sessions, timeout=2.5)

    again, present = await v5(clients, broker.port, "mayfly", clean_start=False, expiry=60)
    assert present is False
    assert await nothing_in(again.messages, 0.3)


@pytest_twisted.ensureDeferred
async def test_session_not_expired_before_its_interval(broker, clients):
    """Session Expiry Interval 2: reconnecting after 1 s finds the session (present 1)."""
    first, _ = await v5(clients, broker.port, "steady", expiry=2)
    await first.subscribe("s/steady", qos=1)
    await leave(broker, first)
    await sleep(1.0)
    _again, present = await v5(clients, broker.port, "steady", clean_start=False, expiry=2)
    assert present is True


@pytest_twisted.ensureDeferred
async def test_disconnect_expiry_0_ends_the_session(broker, clients):
    """CONNECT Session Expiry Interval 60, DISCONNECT with Session Expiry Interval 0: the
    session ends with the connection (3.14.2.2.2)."""
    first, _ = await v5(clients, broker.port, "changer", expiry=60)
    await first.subscribe("s/changer", qos=1)
    await leave(broker, first, properties=paho_props("DISCONNECT", SessionExpiryInterval=0))
    assert "changer" not in broker.broker.sessions
    _again, present = await v5(clients, broker.port, "changer", clean_start=False, expiry=60)
    assert present is False


@pytest_twisted.ensureDeferred
async def test_disconnect_shortens_the_expiry(broker, clients):
    """CONNECT Session Expiry Interval 600, DISCONNECT with 1: the session expires after 1 s."""
    first, _ = await v5(clients, broker.port, "shorter", expiry=600)
    await leave(broker, first, properties=paho_props("DISCONNECT", SessionExpiryInterval=1))
    assert "shorter" in broker.broker.sessions
    await wait_until(lambda: "shorter" not in broker.broker.sessions, timeout=2.5)


@pytest_twisted.ensureDeferred
async def test_disconnect_cannot_set_expiry_after_connect_had_0(broker, raw):
    """CONNECT without Session Expiry Interval (0), DISCONNECT with a non-zero one: a
    protocol error [MQTT-3.14.2-2]; the broker answers DISCONNECT 0x82 and closes."""
    sock = raw(broker.port)
    await raw_v5_connect(sock, "sneaky")
    sock.send(v5_bytes(Disconnect(0, {Property.SESSION_EXPIRY_INTERVAL: 60})))
    disconnect = await read_v5(sock)
    assert disconnect is not None and disconnect.reason_code == ReasonCode.PROTOCOL_ERROR
    assert await sock.closed()
    assert "sneaky" not in broker.broker.sessions


@pytest_twisted.ensureDeferred
async def test_session_present_after_network_drop(broker, clients):
    """A session with an expiry also outlives a dropped socket (no DISCONNECT)."""
    first, _ = await v5(clients, broker.port, "dropped", expiry=60)
    await first.subscribe("s/dropped", qos=1)
    first.drop()
    await offline(broker, "dropped")
    _again, present = await v5(clients, broker.port, "dropped", clean_start=False, expiry=60)
    assert present is True


# -- wills -------------------------------------------------------------------------------------


def will_props(**values):
    return paho_props("WILLMESSAGE", **values)


@pytest_twisted.ensureDeferred
async def test_will_delay_publishes_after_the_delay(broker, clients):
    """Will Delay Interval 1: the will is published 1 s after the connection closed, not at
    once (3.1.3.2.2)."""
    watch = await watcher(clients, broker.port)
    victim, _ = await v5(
        clients,
        broker.port,
        "delayed",
        expiry=60,
        will=("w/delayed", b"gone", 1, False, will_props(WillDelayInterval=1)),
    )
    victim.drop()
    assert await nothing_in(watch.messages, 0.6)
    message = await watch.message(timeout=2.0)
    assert (message.topic, message.payload) == ("w/delayed", b"gone")


@pytest_twisted.ensureDeferred
async def test_reconnect_within_will_delay_cancels_the_will(broker, clients):
    """A new connection to the session before the Will Delay Interval passed: the will is
    not published [MQTT-3.1.3-9]."""
    watch = await watcher(clients, broker.port)
    victim, _ = await v5(
        clients,
        broker.port,
        "flaky",
        expiry=60,
        will=("w/flaky", b"gone", 1, False, will_props(WillDelayInterval=1)),
    )
    victim.drop()
    await offline(broker, "flaky")
    _again, present = await v5(clients, broker.port, "flaky", clean_start=False, expiry=60)
    assert present is True
    assert await nothing_in(watch.messages, 1.5)


@pytest_twisted.ensureDeferred
async def test_reconnect_with_clean_start_publishes_the_delayed_will(broker, clients):
    """Reconnecting with Clean Start 1 within the delay ends the old session, and a session
    end publishes the will (3.1.3.2.2: delay passed or session ended, whichever first);
    Mosquitto 2.x does the same."""
    watch = await watcher(clients, broker.port)
    victim, _ = await v5(
        clients,
        broker.port,
        "restart",
        expiry=60,
        will=("w/restart", b"gone", 1, False, will_props(WillDelayInterval=30)),
    )
    victim.drop()
    await offline(broker, "restart")
    assert await nothing_in(watch.messages, 0.2)
    await v5(clients, broker.port, "restart", clean_start=True)
    message = await watch.message(timeout=2.0)
    assert message.payload == b"gone"


@pytest_twisted.ensureDeferred
async def test_session_end_before_will_delay_publishes_the_will(broker, clients):
    """Session Expiry Interval 1, Will Delay Interval 30: the will is published when the
    session ends, after about 1 s (3.1.3.2.2, [MQTT-3.1.2-8])."""
    watch = await watcher(clients, broker.port)
    victim, _ = await v5(
        clients,
        broker.port,
        "short",
        expiry=1,
        will=("w/short", b"gone", 1, False, will_props(WillDelayInterval=30)),
    )
    victim.drop()
    assert await nothing_in(watch.messages, 0.5)
    message = await watch.message(timeout=2.0)
    assert message.payload == b"gone"


@pytest_twisted.ensureDeferred
async def test_will_delay_with_session_expiry_0_publishes_at_once(broker, clients):
    """Session Expiry Interval 0: the session ends with the connection, so a delayed will
    goes out at once."""
    watch = await watcher(clients, broker.port)
    victim, _ = await v5(
        clients,
        broker.port,
        "nosession",
        will=("w/nosession", b"gone", 1, False, will_props(WillDelayInterval=30)),
    )
    victim.drop()
    message = await watch.message(timeout=1.0)
    assert message.payload == b"gone"


@pytest_twisted.ensureDeferred
async def test_will_properties_are_forwarded(broker, clients):
    """Will properties reach a v5 subscriber (3.1.3.2.3 to 3.1.3.2.8): Payload Format
    Indicator, Content Type, Response Topic, Correlation Data, User Properties in order
    [MQTT-3.3.2-18], Message Expiry Interval (the remaining time [MQTT-3.3.2-6]); the Will
    Delay Interval is not a PUBLISH property and is not sent."""
    watch = await watcher(clients, broker.port)
    props = will_props(
        PayloadFormatIndicator=1,
        ContentType="text/plain",
        ResponseTopic="w/reply",
        CorrelationData=b"\x01\x02",
        MessageExpiryInterval=60,
        WillDelayInterval=0,
    )
    props.UserProperty = ("k1", "v1")
    props.UserProperty = ("k2", "v2")
    victim, _ = await v5(clients, broker.port, "rich", will=("w/rich", "gone", 1, False, props))
    victim.drop()
    message = await watch.message()
    got = message.properties
    assert message.payload == b"gone"
    assert got.PayloadFormatIndicator == 1
    assert got.ContentType == "text/plain"
    assert got.ResponseTopic == "w/reply"
    assert got.CorrelationData == b"\x01\x02"
    assert got.UserProperty == [("k1", "v1"), ("k2", "v2")]
    assert 58 <= got.MessageExpiryInterval <= 60
    assert not hasattr(got, "WillDelayInterval")


@pytest_twisted.ensureDeferred
async def test_disconnect_with_will_message_publishes_the_will(broker, clients):
    """DISCONNECT with Reason Code 0x04 (Disconnect with Will Message): the will is
    published (3.14.2.1)."""
    watch = await watcher(clients, broker.port)
    leaving, _ = await v5(clients, broker.port, "loud", will=("w/loud", b"bye", 1, False))
    await leave(broker, leaving, reasoncode=PahoReasonCode(PacketTypes.DISCONNECT, identifier=0x04))
    message = await watch.message(timeout=2.0)
    assert (message.topic, message.payload) == ("w/loud", b"bye")


@pytest_twisted.ensureDeferred
async def test_normal_disconnect_discards_the_will(broker, clients):
    """DISCONNECT with Reason Code 0x00: the will is deleted, not published [MQTT-3.14.4-3]."""
    watch = await watcher(clients, broker.port)
    leaving, _ = await v5(
        clients,
        broker.port,
        "quiet",
        expiry=60,
        will=("w/quiet", b"bye", 1, False, will_props(WillDelayInterval=1)),
    )
    await leave(broker, leaving)
    assert await nothing_in(watch.messages, 1.5)
