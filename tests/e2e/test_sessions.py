"""Sessions: clean session 0 keeps subscriptions and QoS 1/2 state across connections.

OASIS MQTT 3.1.1: 3.1.2.4 (Clean Session), 3.2.2.2 (Session Present), 4.4 (message delivery
retry), 4.6 (message ordering).
"""

import time

import paho.mqtt.client as mqtt
import pytest
import pytest_twisted

from .mqttclient import (
    PUBACK,
    PUBCOMP,
    PUBREC,
    ack_packet,
    connect_bytes,
    get,
    nothing_in,
    parse_publish,
    read_packet,
    read_whole,
    sleep,
    subscribe_bytes,
)

CONNACK_NEW = b"\x20\x02\x00\x00"  # session present 0, accepted
CONNACK_PRESENT = b"\x20\x02\x01\x00"  # session present 1, accepted


async def until(predicate, timeout: float = 3.0) -> None:
    """Wait (without blocking the reactor) until ``predicate()`` is true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await sleep(0.02)


async def offline(running, client_id: str) -> None:
    """Wait until the broker has seen ``client_id``'s connection end."""
    sessions = running.broker.sessions
    await until(lambda: client_id not in sessions or sessions[client_id].connection is None)


async def persistent(clients, port: int, client_id: str, **kwargs):
    """Connect a clean-session-0 paho client; returns (client, session present flag)."""
    client = clients(port, client_id=client_id, clean_session=False, **kwargs)
    flags, _rc, _props = await client.connect()
    return client, flags.session_present


async def leave(running, client) -> None:
    """Clean DISCONNECT, then wait until the broker has processed it."""
    client_id = client.client._client_id.decode()
    client.disconnect()
    await get(client.disconnects)
    client.stop()
    await offline(running, client_id)


@pytest.mark.parametrize("protocol", [mqtt.MQTTv31, mqtt.MQTTv311], ids=["3.1", "3.1.1"])
@pytest_twisted.ensureDeferred
async def test_subscriptions_survive_reconnect(broker, clients, protocol):
    """Clean session 0: the session, with its subscriptions, outlives the connection
    [MQTT-3.1.2-4]; no SUBSCRIBE is needed after reconnecting."""
    first, present = await persistent(clients, broker.port, "keeper", protocol=protocol)
    assert present is False
    assert await first.subscribe("home/+/temp", qos=1) == [1]
    await leave(broker, first)

    again, _present = await persistent(clients, broker.port, "keeper", protocol=protocol)
    publisher = clients(broker.port, client_id="publisher")
    await publisher.connect()
    await publisher.publish("home/attic/temp", b"31", qos=1)
    message = await again.message()
    assert (message.topic, message.payload, message.qos) == ("home/attic/temp", b"31", 1)


@pytest_twisted.ensureDeferred
async def test_session_present_on_reconnect(broker, clients):
    """Session present 1 when resuming a stored session [MQTT-3.2.2-2]."""
    first, present = await persistent(clients, broker.port, "resumer")
    assert present is False  # new session [MQTT-3.2.2-3]
    await leave(broker, first)
    _again, present = await persistent(clients, broker.port, "resumer")
    assert present is True


@pytest_twisted.ensureDeferred
async def test_session_present_bytes(broker, raw):
    """CONNACK bytes: 20 02 00 00 for a new session, 20 02 01 00 for a resumed one."""
    sock = raw(broker.port)
    sock.send(connect_bytes("bytes-session", clean_session=False))
    assert await read_whole(sock) == CONNACK_NEW
    sock.close()
    await offline(broker, "bytes-session")
    sock = raw(broker.port)
    sock.send(connect_bytes("bytes-session", clean_session=False))
    assert await read_whole(sock) == CONNACK_PRESENT


@pytest_twisted.ensureDeferred
async def test_mqtt31_connack_has_no_session_present_flag(broker, raw):
    """MQTT 3.1 CONNACK's first variable header byte is reserved (0) even for a stored session."""
    sock = raw(broker.port)
    sock.send(connect_bytes("old31", clean_session=False, protocol_level=3))
    assert await read_whole(sock) == CONNACK_NEW
    sock.close()
    await offline(broker, "old31")
    sock = raw(broker.port)
    sock.send(connect_bytes("old31", clean_session=False, protocol_level=3))
    assert await read_whole(sock) == CONNACK_NEW
    assert "old31" in broker.broker.sessions


@pytest_twisted.ensureDeferred
async def test_clean_session_1_reports_no_session_present(broker, clients):
    """Clean session 1 discards a stored session and CONNACK has session present 0
    [MQTT-3.1.2-6], [MQTT-3.2.2-1]; the old subscriptions are gone."""
    first, _ = await persistent(clients, broker.port, "switcher")
    assert await first.subscribe("switch/topic", qos=1) == [1]
    await leave(broker, first)

    clean = clients(broker.port, client_id="switcher", clean_session=True)
    flags, _rc, _props = await clean.connect()
    assert flags.session_present is False
    publisher = clients(broker.port, client_id="publisher")
    await publisher.connect()
    await publisher.publish("switch/topic", b"nobody listens", qos=1)
    assert await nothing_in(clean.messages, 0.5)


@pytest_twisted.ensureDeferred
async def test_clean_session_1_discards_everything_at_disconnect(broker, clients):
    """A clean session 1 session ends with its connection [MQTT-3.1.2-6]: reconnecting with
    clean session 0 finds no session (present 0) and no old subscription."""
    first = clients(broker.port, client_id="ephemeral", clean_session=True)
    await first.connect()
    assert await first.subscribe("eph/topic", qos=1) == [1]
    await leave(broker, first)
    assert "ephemeral" not in broker.broker.sessions

    publisher = clients(broker.port, client_id="publisher")
    await publisher.connect()
    await publisher.publish("eph/topic", b"while away", qos=1)

    again, present = await persistent(clients, broker.port, "ephemeral")
    assert present is False
    await publisher.publish("eph/topic", b"after", qos=1)
    assert await nothing_in(again.messages, 0.5)


@pytest.mark.parametrize("protocol", [mqtt.MQTTv31, mqtt.MQTTv311], ids=["3.1", "3.1.1"])
@pytest_twisted.ensureDeferred
async def test_qos_1_and_2_messages_are_queued_while_away(broker, clients, protocol):
    """QoS 1 and 2 messages published while a clean-session-0 client is away are part of its
    session [MQTT-3.1.2-5] and arrive on reconnect, in order [MQTT-4.6.0-5], [MQTT-4.6.0-6];
    QoS 0 ones are not kept (optional in the spec; Mosquitto's default queue_qos0_messages
    false)."""
    sub, _ = await persistent(clients, broker.port, "traveller", protocol=protocol)
    assert await sub.subscribe("mail/#", qos=2) == [2]
    await leave(broker, sub)

    publisher = clients(broker.port, client_id="publisher")
    await publisher.connect()
    sent = [
        (b"one", 1),
        (b"zero-a", 0),
        (b"two", 2),
        (b"three", 1),
        (b"zero-b", 0),
        (b"four", 2),
        (b"five", 1),
    ]
    for payload, qos in sent:
        await publisher.publish("mail/box", payload, qos=qos)

    back, present = await persistent(clients, broker.port, "traveller", protocol=protocol)
    assert present is (protocol == mqtt.MQTTv311)  # paho reports the 3.1 reserved byte as 0
    got = [await back.message() for _ in range(5)]
    # paho hands a QoS 2 message over when its PUBREL arrives, so compare order per QoS level
    # (the wire order of mixed QoS is checked byte for byte in the next test).
    assert [m.payload for m in got if m.qos == 1] == [b"one", b"three", b"five"]
    assert [m.payload for m in got if m.qos == 2] == [b"two", b"four"]
    assert await nothing_in(back.messages, 0.5)


@pytest_twisted.ensureDeferred
async def test_queued_messages_keep_publish_order_on_the_wire(broker, clients, raw):
    """The same, read byte for byte: QoS 1 and 2 PUBLISH packets come in publish order
    [MQTT-4.6.0-5], [MQTT-4.6.0-6], no QoS 0 one [MQTT-3.1.2-5]."""
    sock = raw(broker.port)
    sock.send(connect_bytes("wire-order", clean_session=False))
    assert await read_whole(sock) == CONNACK_NEW
    sock.send(subscribe_bytes("wire/#", 2))
    assert await read_whole(sock) == b"\x90\x03\x00\x01\x02"  # SUBACK, granted QoS 2
    sock.close()
    await offline(broker, "wire-order")

    publisher = clients(broker.port, client_id="publisher")
    await publisher.connect()
    sent = [(b"one", 1), (b"zero-a", 0), (b"two", 2), (b"three", 1), (b"four", 2)]
    for payload, qos in sent:
        await publisher.publish("wire/box", payload, qos=qos)

    sock = raw(broker.port)
    sock.send(connect_bytes("wire-order", clean_session=False))
    assert await read_whole(sock) == CONNACK_PRESENT
    got = [parse_publish(*await read_packet(sock)) for _ in range(4)]
    assert [(p.payload, p.qos, p.dup) for p in got] == [
        (b"one", 1, False),
        (b"two", 2, False),
        (b"three", 1, False),
        (b"four", 2, False),
    ]
    assert await read_packet(sock, timeout=0.3) is None


@pytest_twisted.ensureDeferred
async def test_offline_queue_is_bounded_by_max_queued_messages(start_broker, clients):
    """max_queued_messages (Mosquitto's option of that name) bounds the offline queue: the first
    messages are kept, the rest dropped and counted."""
    running = start_broker(max_queued_messages=5)
    sub, _ = await persistent(clients, running.port, "bounded")
    assert await sub.subscribe("burst", qos=1) == [1]
    await leave(running, sub)

    publisher = clients(running.port, client_id="publisher")
    await publisher.connect()
    for number in range(10):
        await publisher.publish("burst", b"%d" % number, qos=1)

    back, present = await persistent(clients, running.port, "bounded")
    assert present is True
    got = [(await back.message()).payload for _ in range(5)]
    assert got == [b"0", b"1", b"2", b"3", b"4"]
    assert await nothing_in(back.messages, 0.5)
    assert running.broker.stats.publish_dropped == 5


@pytest.mark.parametrize("qos, first_byte, dup_byte", [(1, 0x32, 0x3A), (2, 0x34, 0x3C)])
@pytest_twisted.ensureDeferred
async def test_unacknowledged_messages_are_resent_with_dup(
    broker, clients, raw, qos, first_byte, dup_byte
):
    """On reconnect with clean session 0 the server resends unacknowledged PUBLISH packets with
    DUP 1 [MQTT-4.4.0-1], [MQTT-3.3.1-1], with their packet ids, in the original order
    [MQTT-4.6.0-1], [MQTT-4.6.0-5]."""
    sock = raw(broker.port)
    sock.send(connect_bytes("forgetful", clean_session=False))
    assert await read_whole(sock) == CONNACK_NEW
    sock.send(subscribe_bytes("resend/me", qos))
    assert await read_whole(sock) == b"\x90\x03\x00\x01" + bytes([qos])  # SUBACK

    publisher = clients(broker.port, client_id="publisher")
    await publisher.connect()
    payloads = [b"alpha", b"beta", b"gamma"]
    for payload in payloads:
        await publisher.publish("resend/me", payload, qos=qos)

    first = []
    for _ in payloads:
        byte, body = await read_packet(sock)
        assert byte == first_byte  # not DUP the first time
        first.append(parse_publish(byte, body))
    assert [p.payload for p in first] == payloads
    sock.close()  # no PUBACK / PUBREC
    await offline(broker, "forgetful")

    sock = raw(broker.port)
    sock.send(connect_bytes("forgetful", clean_session=False))
    assert await read_whole(sock) == CONNACK_PRESENT
    again = []
    for _ in payloads:
        byte, body = await read_packet(sock)
        assert byte == dup_byte
        again.append(parse_publish(byte, body))
    assert [(p.packet_id, p.payload, p.dup) for p in again] == [
        (p.packet_id, p.payload, True) for p in first
    ]

    # Acknowledged now: a further reconnect resends nothing.
    for p in again:
        if qos == 1:
            sock.send(ack_packet(PUBACK, p.packet_id))
        else:
            sock.send(ack_packet(PUBREC, p.packet_id))
            assert await read_whole(sock) == b"\x62\x02" + p.packet_id.to_bytes(2, "big")
            sock.send(ack_packet(PUBCOMP, p.packet_id))
    await until(lambda: not broker.broker.sessions["forgetful"].inflight)
    sock.close()
    await offline(broker, "forgetful")
    sock = raw(broker.port)
    sock.send(connect_bytes("forgetful", clean_session=False))
    assert await read_whole(sock) == CONNACK_PRESENT
    assert await read_packet(sock, timeout=0.5) is None


@pytest_twisted.ensureDeferred
async def test_pubrel_is_resent_after_pubrec(broker, clients, raw):
    """QoS 2: once PUBREC was received, the server resends PUBREL (62 02 id), not the PUBLISH,
    on reconnect [MQTT-4.4.0-1], [MQTT-4.3.3-1]."""
    sock = raw(broker.port)
    sock.send(connect_bytes("half-done", clean_session=False))
    assert await read_whole(sock) == CONNACK_NEW
    sock.send(subscribe_bytes("exactly/once", 2))
    assert await read_whole(sock) == b"\x90\x03\x00\x01\x02"

    publisher = clients(broker.port, client_id="publisher")
    await publisher.connect()
    await publisher.publish("exactly/once", b"precious", qos=2)
    byte, body = await read_packet(sock)
    message = parse_publish(byte, body)
    assert (byte, message.payload) == (0x34, b"precious")
    pid = message.packet_id.to_bytes(2, "big")
    sock.send(ack_packet(PUBREC, message.packet_id))
    assert await read_whole(sock) == b"\x62\x02" + pid  # PUBREL
    sock.close()  # no PUBCOMP
    await offline(broker, "half-done")

    sock = raw(broker.port)
    sock.send(connect_bytes("half-done", clean_session=False))
    assert await read_whole(sock) == CONNACK_PRESENT
    assert await read_whole(sock) == b"\x62\x02" + pid  # PUBREL again, no PUBLISH
    sock.send(ack_packet(PUBCOMP, message.packet_id))
    await until(lambda: not broker.broker.sessions["half-done"].inflight)
    assert await read_packet(sock, timeout=0.3) is None


@pytest_twisted.ensureDeferred
async def test_resend_comes_before_queued_messages(broker, clients, raw):
    """In-flight messages are resent first, then the ones queued while away, in publish order
    [MQTT-4.6.0-5], [MQTT-4.6.0-6]."""
    sock = raw(broker.port)
    sock.send(connect_bytes("orderly", clean_session=False))
    assert await read_whole(sock) == CONNACK_NEW
    sock.send(subscribe_bytes("order", 1))
    assert await read_whole(sock) == b"\x90\x03\x00\x01\x01"
    publisher = clients(broker.port, client_id="publisher")
    await publisher.connect()
    await publisher.publish("order", b"1", qos=1)
    byte, _body = await read_packet(sock)
    assert byte == 0x32
    sock.close()
    await offline(broker, "orderly")
    await publisher.publish("order", b"2", qos=1)
    await publisher.publish("order", b"3", qos=1)

    sock = raw(broker.port)
    sock.send(connect_bytes("orderly", clean_session=False))
    assert await read_whole(sock) == CONNACK_PRESENT
    got = [parse_publish(*await read_packet(sock)) for _ in range(3)]
    assert [(p.payload, p.dup) for p in got] == [(b"1", True), (b"2", False), (b"3", False)]


@pytest_twisted.ensureDeferred
async def test_takeover_of_a_persistent_session_resumes_it(broker, clients, raw):
    """A takeover [MQTT-3.1.4-2] with clean session 0 resumes the session: session present 1
    [MQTT-3.2.2-2] and what the old connection left unacknowledged is resent with DUP
    [MQTT-4.4.0-1]."""
    old = raw(broker.port)
    old.send(connect_bytes("roamer", clean_session=False))
    assert await read_whole(old) == CONNACK_NEW
    old.send(subscribe_bytes("roam", 1))
    assert await read_whole(old) == b"\x90\x03\x00\x01\x01"
    publisher = clients(broker.port, client_id="publisher")
    await publisher.connect()
    await publisher.publish("roam", b"first", qos=1)
    message = parse_publish(*await read_packet(old))
    assert (message.payload, message.dup) == (b"first", False)

    new = raw(broker.port)  # the old socket stays open: this is a takeover
    new.send(connect_bytes("roamer", clean_session=False))
    assert await old.closed()
    assert await read_whole(new) == CONNACK_PRESENT
    again = parse_publish(*await read_packet(new))
    assert (again.packet_id, again.payload, again.dup) == (message.packet_id, b"first", True)


@pytest_twisted.ensureDeferred
async def test_persistent_session_expires(start_broker, clients):
    """persistent_client_expiration (Mosquitto's option): a clean-session-0 session whose client
    stays away longer is removed; the client then finds no session and no queued messages."""
    running = start_broker(persistent_client_expiration=1.0)
    sub, _ = await persistent(clients, running.port, "wanderer")
    assert await sub.subscribe("expiring/topic", qos=1) == [1]
    await leave(running, sub)

    publisher = clients(running.port, client_id="publisher")
    await publisher.connect()
    await publisher.publish("expiring/topic", b"queued then lost", qos=1)
    await sleep(1.5)
    assert running.broker.stats.clients_expired == 1

    back, present = await persistent(clients, running.port, "wanderer")
    assert present is False
    assert await nothing_in(back.messages, 0.5)
    await publisher.publish("expiring/topic", b"no subscription", qos=1)
    assert await nothing_in(back.messages, 0.3)


@pytest_twisted.ensureDeferred
async def test_reconnect_before_expiration_keeps_the_session(start_broker, clients):
    """Coming back in time cancels the expiry: the session and its queued messages are there."""
    running = start_broker(persistent_client_expiration=1.0)
    sub, _ = await persistent(clients, running.port, "punctual")
    assert await sub.subscribe("punctual/topic", qos=1) == [1]
    await leave(running, sub)
    publisher = clients(running.port, client_id="publisher")
    await publisher.connect()
    await publisher.publish("punctual/topic", b"kept", qos=1)
    await sleep(0.3)

    back, present = await persistent(clients, running.port, "punctual")
    assert present is True
    assert (await back.message()).payload == b"kept"
    await sleep(1.2)  # past the original expiry time, still connected
    assert running.broker.stats.clients_expired == 0
    assert "punctual" in running.broker.sessions
