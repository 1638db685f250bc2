"""Wills (last will and testament): published when a client goes away without DISCONNECT.

[MQTT-3.1.2-8]: the will is published when the network connection is closed, unless the
server received a DISCONNECT; 3.1.2.5 lists the cases (I/O error or close, keep alive,
close without DISCONNECT, protocol error). OASIS MQTT 3.1.1 numbering.
"""

import time

import paho.mqtt.client as mqtt
import pytest
import pytest_twisted

from mqtt_twisted.packets import Will

from .mqttclient import connect_bytes, get, no_reconnect, nothing_in, read_whole

CONNACK_ACCEPTED = b"\x20\x02\x00\x00"


async def watcher(clients, port: int, topic: str = "wills/#", qos: int = 2):
    """A paho client subscribed to the will topics."""
    watch = clients(port, client_id="watcher")
    await watch.connect()
    assert await watch.subscribe(topic, qos=qos) == [qos]
    return watch


async def paho_with_will(
    clients,
    port: int,
    client_id: str,
    topic: str,
    payload: bytes,
    qos: int = 1,
    retain: bool = False,
    **kwargs,
):
    client = clients(port, client_id=client_id, **kwargs)
    client.client.will_set(topic, payload, qos, retain)
    await client.connect()
    return client


async def raw_with_will(raw, port: int, client_id: str, will: Will, keep_alive: int = 60):
    sock = raw(port)
    sock.send(connect_bytes(client_id, keep_alive=keep_alive, will=will))
    assert await read_whole(sock) == CONNACK_ACCEPTED
    return sock


@pytest.mark.parametrize("qos", [0, 1, 2])
@pytest.mark.parametrize("protocol", [mqtt.MQTTv31, mqtt.MQTTv311], ids=["3.1", "3.1.1"])
@pytest_twisted.ensureDeferred
async def test_will_on_socket_close_without_disconnect(broker, clients, qos, protocol):
    """Socket closed without DISCONNECT: the will goes out with its QoS [MQTT-3.1.2-8]."""
    watch = await watcher(clients, broker.port)
    victim = await paho_with_will(
        clients,
        broker.port,
        "victim",
        "wills/victim",
        b"connection lost",
        qos=qos,
        protocol=protocol,
    )
    victim.drop()
    message = await watch.message()
    assert (message.topic, message.payload, message.qos, message.retain) == (
        "wills/victim",
        b"connection lost",
        qos,
        False,
    )


@pytest_twisted.ensureDeferred
async def test_will_qos_is_capped_by_the_subscription(broker, clients):
    """A QoS 2 will reaches a QoS 0 subscriber at QoS 0 [MQTT-3.8.4-6]."""
    watch = await watcher(clients, broker.port, qos=0)
    victim = await paho_with_will(clients, broker.port, "capped", "wills/capped", b"x", qos=2)
    victim.drop()
    message = await watch.message()
    assert (message.payload, message.qos) == (b"x", 0)


@pytest_twisted.ensureDeferred
async def test_no_will_after_clean_disconnect(broker, clients):
    """DISCONNECT discards the will without publishing it [MQTT-3.14.4-3]."""
    watch = await watcher(clients, broker.port)
    polite = await paho_with_will(clients, broker.port, "polite", "wills/polite", b"bye")
    polite.disconnect()
    assert await get(polite.disconnects) == 0
    assert await nothing_in(watch.messages, 1.0)
    assert "polite" not in broker.broker.sessions


@pytest_twisted.ensureDeferred
async def test_no_will_after_raw_disconnect_then_close(broker, clients, raw):
    """DISCONNECT (e0 00) and then the socket closed: still no will [MQTT-3.14.4-3]."""
    watch = await watcher(clients, broker.port)
    sock = await raw_with_will(raw, broker.port, "raw-polite", Will("wills/raw", b"bye", 1))
    sock.send(b"\xe0\x00")  # DISCONNECT
    assert await sock.closed()
    sock.close()
    assert await nothing_in(watch.messages, 1.0)


@pytest_twisted.ensureDeferred
async def test_will_on_keepalive_timeout(broker, clients, raw):
    """Keep alive expired: the server closes the connection and publishes the will
    [MQTT-3.1.2-24], [MQTT-3.1.2-8]."""
    watch = await watcher(clients, broker.port)
    started = time.monotonic()
    await raw_with_will(
        raw, broker.port, "sleeper", Will("wills/sleeper", b"timed out", 1), keep_alive=1
    )
    message = await watch.message(timeout=4.0)
    assert time.monotonic() - started >= 1.0
    assert (message.topic, message.payload, message.qos) == ("wills/sleeper", b"timed out", 1)


@pytest_twisted.ensureDeferred
async def test_will_on_protocol_error(broker, clients, raw):
    """A malformed packet after CONNECT closes the connection and publishes the will
    [MQTT-4.8.0-1], [MQTT-3.1.2-8]."""
    watch = await watcher(clients, broker.port)
    sock = await raw_with_will(raw, broker.port, "garbler", Will("wills/garbler", b"broken", 2))
    sock.send(b"\x00\x00garbage")  # packet type 0 is reserved
    assert await sock.closed()
    message = await watch.message()
    assert (message.topic, message.payload, message.qos) == ("wills/garbler", b"broken", 2)


@pytest_twisted.ensureDeferred
async def test_will_on_second_connect(broker, clients, raw):
    """A second CONNECT is a protocol violation [MQTT-3.1.0-2]: closed, will published."""
    watch = await watcher(clients, broker.port)
    sock = await raw_with_will(raw, broker.port, "twice", Will("wills/twice", b"again?", 1))
    sock.send(connect_bytes("twice"))
    assert await sock.closed()
    assert (await watch.message()).payload == b"again?"


@pytest_twisted.ensureDeferred
async def test_will_on_takeover(broker, clients):
    """The connection closed by a takeover [MQTT-3.1.4-2] did not DISCONNECT: its will goes out."""
    watch = await watcher(clients, broker.port)
    old = await paho_with_will(clients, broker.port, "phone", "wills/phone", b"replaced", qos=1)
    no_reconnect(old)
    new = clients(broker.port, client_id="phone")
    await new.connect()
    message = await watch.message()
    assert (message.topic, message.payload, message.qos) == ("wills/phone", b"replaced", 1)
    assert (await get(old.disconnects)).is_failure
    # the new connection's own will (none) is not published when it leaves cleanly
    new.disconnect()
    assert await nothing_in(watch.messages, 0.5)


@pytest_twisted.ensureDeferred
async def test_retained_will_is_retained(broker, clients):
    """A will with retain 1 is published as a retained message [MQTT-3.1.2-17]: live subscribers
    get it with retain 0 [MQTT-3.3.1-9], a later subscriber with retain 1 [MQTT-3.3.1-8]."""
    watch = await watcher(clients, broker.port)
    victim = await paho_with_will(
        clients, broker.port, "sensor-9", "wills/sensor-9", b"offline", qos=1, retain=True
    )
    victim.drop()
    live = await watch.message()
    assert (live.payload, live.qos, live.retain) == (b"offline", 1, False)
    later = clients(broker.port, client_id="later")
    await later.connect()
    assert await later.subscribe("wills/+", qos=1) == [1]
    message = await later.message()
    assert (message.topic, message.payload, message.qos, message.retain) == (
        "wills/sensor-9",
        b"offline",
        1,
        True,
    )


@pytest_twisted.ensureDeferred
async def test_non_retained_will_is_not_retained(broker, clients):
    """A will with retain 0 is not stored [MQTT-3.1.2-16]."""
    victim = await paho_with_will(
        clients, broker.port, "plain", "wills/plain", b"gone", retain=False
    )
    victim.drop()
    watch = clients(broker.port, client_id="late-watcher")
    await watch.connect()
    # wait until the broker has seen the close (the session of a clean client is gone)
    for _ in range(50):
        if "plain" not in broker.broker.sessions:
            break
        await nothing_in(watch.messages, 0.05)
    assert await watch.subscribe("wills/#", qos=1) == [1]
    assert await nothing_in(watch.messages, 0.5)


@pytest_twisted.ensureDeferred
async def test_refused_connection_publishes_no_will(broker, clients, raw):
    """A CONNECT refused with a non-zero return code [MQTT-3.2.2-5] starts no session: no will."""
    watch = await watcher(clients, broker.port)
    sock = raw(broker.port)
    # empty client id with clean session 0: identifier rejected [MQTT-3.1.3-8]
    sock.send(connect_bytes("", clean_session=False, will=Will("wills/refused", b"never", 1)))
    assert await read_whole(sock) == b"\x20\x02\x00\x02"
    assert await sock.closed()
    assert await nothing_in(watch.messages, 0.5)
