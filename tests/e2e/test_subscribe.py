"""SUBSCRIBE / SUBACK / UNSUBSCRIBE / UNSUBACK and topic wildcards, as a client sees them."""

import pytest
import pytest_twisted

from .mqttclient import raw_connect, raw_subscribe, read_packet, unsubscribe_packet


@pytest.fixture
def broker(broker_anywhere):
    """Every test here runs against one process and against a cluster of two nodes."""
    return broker_anywhere


async def connected(clients, port, client_id):
    client = clients(port, client_id=client_id)
    await client.connect()
    return client


async def topics_received(client, seconds=0.5):
    return sorted(m.topic for m in await client.messages_for(seconds))


# -- SUBACK return codes ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_granted_qos_is_capped_by_max_qos(start_broker, clients):
    # [MQTT-3.8.4-5] the SUBACK shows the QoS granted, which may be lower than requested
    broker = start_broker(max_qos=1)
    sub = await connected(clients, broker.port, "sub")
    assert await sub.subscribe("capped/t", qos=2) == [1]
    assert await sub.subscribe("capped/zero", qos=0) == [0]
    pub = await connected(clients, broker.port, "pub")
    await pub.publish("capped/t", b"x", qos=1)
    message = await sub.message()
    assert (message.topic, message.qos) == ("capped/t", 1)


@pytest_twisted.ensureDeferred
async def test_several_filters_get_codes_in_order(broker, clients):
    # [MQTT-3.8.4-4] one SUBACK for the whole packet, [MQTT-3.8.4-5] one code per filter,
    # [MQTT-3.9.3-1] in the order of the filters
    sub = await connected(clients, broker.port, "sub")
    codes = await sub.subscribe([("m/two", 2), ("m/zero", 0), ("m/one", 1)])
    assert codes == [2, 0, 1]
    pub = await connected(clients, broker.port, "pub")
    for topic in ("m/zero", "m/one", "m/two"):
        await pub.publish(topic, b"q", qos=2)
    got = {}
    for _ in range(3):
        message = await sub.message()
        got[message.topic] = message.qos
    assert got == {"m/zero": 0, "m/one": 1, "m/two": 2}


@pytest_twisted.ensureDeferred
async def test_invalid_filters_fail_and_valid_ones_in_same_packet_work(broker, raw, clients):
    # [MQTT-4.7.1-2] '#' must be last, [MQTT-4.7.1-3] '+' must fill a whole level:
    # such filters get 0x80 (Failure) [MQTT-3.8.4-5], [MQTT-3.9.3-2]; the others are granted.
    # (A raw socket: paho refuses to send such filters. Mosquitto 2.x disconnects instead;
    # 3.1.1 allows the Failure code, which keeps the valid filters of the packet working.)
    sub = raw(broker.port)
    await raw_connect(sub, "rawsub")
    codes = await raw_subscribe(sub, [("a/#/b", 1), ("ok/+", 1), ("a+", 0), ("ok2/#", 0)])
    assert codes == [0x80, 1, 0x80, 0]
    pub = await connected(clients, broker.port, "pub")
    await pub.publish("ok/x", b"1", qos=1)
    first, body = await read_packet(sub)
    assert first >> 4 == 3 and b"ok/x" in body
    # the connection is still usable: PINGREQ -> PINGRESP
    sub.send(b"\xc0\x00")
    # the QoS 1 PUBLISH is not acknowledged, that is fine here; next packet is PINGRESP
    assert await read_packet(sub) == (0xD0, b"")


@pytest_twisted.ensureDeferred
async def test_resubscribe_replaces_qos(broker, clients):
    # [MQTT-3.8.4-3] an identical filter replaces the subscription (its QoS may change)
    sub = await connected(clients, broker.port, "sub")
    assert await sub.subscribe("r/t", qos=2) == [2]
    assert await sub.subscribe("r/t", qos=0) == [0]
    pub = await connected(clients, broker.port, "pub")
    await pub.publish("r/t", b"x", qos=2)
    messages = await sub.messages_for(0.5)
    assert [(m.topic, m.qos) for m in messages] == [("r/t", 0)]


# -- UNSUBSCRIBE -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_unsubscribe_stops_delivery(broker, clients):
    # [MQTT-3.10.4-1] exact filter match deletes the subscription, [MQTT-3.10.4-2] no new
    # messages after it, [MQTT-3.10.4-4] UNSUBACK with the same packet id (paho checks the mid)
    sub = await connected(clients, broker.port, "sub")
    await sub.subscribe([("u/+", 1), ("u/keep", 1)])
    pub = await connected(clients, broker.port, "pub")
    await pub.publish("u/a", b"before", qos=1)
    assert (await sub.message()).payload == b"before"
    await sub.unsubscribe("u/+")
    await pub.publish("u/a", b"after", qos=1)
    await pub.publish("u/keep", b"kept", qos=1)
    messages = await sub.messages_for(0.5)
    assert [(m.topic, m.payload) for m in messages] == [("u/keep", b"kept")]


@pytest_twisted.ensureDeferred
async def test_unsubscribe_compares_filters_character_by_character(broker, clients):
    # [MQTT-3.10.4-1] "u/a" does not remove "u/+", even though "u/+" matches it
    sub = await connected(clients, broker.port, "sub")
    await sub.subscribe("u/+", 1)
    await sub.unsubscribe("u/a")
    pub = await connected(clients, broker.port, "pub")
    await pub.publish("u/a", b"still", qos=1)
    assert (await sub.message()).payload == b"still"


@pytest_twisted.ensureDeferred
async def test_unsubscribe_never_subscribed_still_gets_unsuback(broker, clients):
    # [MQTT-3.10.4-5] UNSUBACK even when no subscription was deleted
    sub = await connected(clients, broker.port, "sub")
    await sub.unsubscribe("never/subscribed")
    await sub.unsubscribe(["x/#", "y/+"])  # [MQTT-3.10.4-6] several filters, one UNSUBACK


@pytest_twisted.ensureDeferred
async def test_unsuback_packet_id_on_the_wire(broker, raw):
    # [MQTT-3.10.4-4], [MQTT-3.10.4-5]: UNSUBACK = B0 02 + the UNSUBSCRIBE's packet id
    client = raw(broker.port)
    await raw_connect(client, "rawunsub")
    assert await raw_subscribe(client, [("z/1", 0)], packet_id=10) == [0]
    client.send(unsubscribe_packet(0x1234, ["z/1", "not/there"]))
    assert await read_packet(client) == (0xB0, b"\x12\x34")
    client.send(unsubscribe_packet(0x0102, ["not/there"]))
    assert await read_packet(client) == (0xB0, b"\x01\x02")


# -- wildcards ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_single_level_wildcard(broker, clients):
    # [MQTT-4.7.1-3] '+' matches exactly one level
    sub = await connected(clients, broker.port, "sub")
    await sub.subscribe("sport/+/player", 0)
    await sub.subscribe("+", 0)
    pub = await connected(clients, broker.port, "pub")
    for topic in (
        "sport/tennis/player",
        "sport/player",
        "sport/tennis/x/player",
        "sport/tennis/player/x",
        "top",
        "/top",
    ):
        await pub.publish(topic, b".", qos=1)
    assert await topics_received(sub) == ["sport/tennis/player", "top"]


@pytest_twisted.ensureDeferred
async def test_multi_level_wildcard_includes_parent(broker, clients):
    # [MQTT-4.7.1-2] '#' matches any number of levels, including the parent ("sport/#" gets "sport")
    sub = await connected(clients, broker.port, "sub")
    await sub.subscribe("sport/#", 0)
    pub = await connected(clients, broker.port, "pub")
    for topic in (
        "sport",
        "sport/",
        "sport/tennis",
        "sport/tennis/player1/score",
        "sports",
        "other/sport",
    ):
        await pub.publish(topic, b".", qos=1)
    assert await topics_received(sub) == [
        "sport",
        "sport/",
        "sport/tennis",
        "sport/tennis/player1/score",
    ]


@pytest_twisted.ensureDeferred
async def test_hash_alone_matches_everything_not_starting_with_dollar(broker, clients):
    # [MQTT-4.7.2-1] filters starting with a wildcard do not match topics starting with '$'
    everything = await connected(clients, broker.port, "all")
    await everything.subscribe("#", 0)
    plus = await connected(clients, broker.port, "plus")
    await plus.subscribe("+/bar", 0)
    dollar = await connected(clients, broker.port, "dollar")
    await dollar.subscribe([("$foo/#", 0), ("$foo/+", 0)])
    pub = await connected(clients, broker.port, "pub")
    await pub.publish("$foo/bar", b"d", qos=1)
    await pub.publish("foo/bar", b"n", qos=1)
    assert await topics_received(everything) == ["foo/bar"]
    assert await topics_received(plus, 0.1) == ["foo/bar"]
    # one copy for the two overlapping explicit '$' filters [MQTT-3.3.5-1]
    assert await topics_received(dollar, 0.1) == ["$foo/bar"]


@pytest_twisted.ensureDeferred
async def test_client_cannot_publish_into_sys(broker, clients):
    # Clients cannot publish into $SYS (Mosquitto): acknowledged [MQTT-4.3.2-2] but routed to
    # nobody, not even "$SYS/#"; "#" never matches it anyway [MQTT-4.7.2-1]
    sys_sub = await connected(clients, broker.port, "syssub")
    await sys_sub.subscribe("$SYS/#", 0)
    everything = await connected(clients, broker.port, "all")
    await everything.subscribe("#", 0)
    pub = await connected(clients, broker.port, "pub")
    await pub.publish("$SYS/x", b"fake", qos=1)  # returns once PUBACK arrived
    await pub.publish("$SYS/broker/uptime", b"fake", qos=2)  # PUBCOMP arrived
    await pub.publish("$SYS/y", b"fake", qos=0)
    assert all(
        m.topic.startswith("$SYS/broker") and m.payload != b"fake"
        for m in await sys_sub.messages_for(0.5)
    )
    assert await topics_received(everything, 0.1) == []


@pytest_twisted.ensureDeferred
async def test_empty_levels(broker, clients):
    # Adjacent separators are a zero-length level (3.1.1 section 4.7.3); matching does no
    # normalisation [MQTT-4.7.3-4]
    sub = await connected(clients, broker.port, "sub")
    await sub.subscribe("a/+/b", 0)
    await sub.subscribe("/lead", 0)
    pub = await connected(clients, broker.port, "pub")
    for topic in ("a//b", "a/b", "a/x/b", "/lead", "lead"):
        await pub.publish(topic, b".", qos=1)
    assert await topics_received(sub) == ["/lead", "a//b", "a/x/b"]


@pytest_twisted.ensureDeferred
async def test_topics_are_case_sensitive_and_not_normalised(broker, clients):
    # [MQTT-4.7.3-4] no normalisation: case, spaces and non-ASCII characters are significant
    sub = await connected(clients, broker.port, "sub")
    await sub.subscribe([("Case/Topic", 0), ("sp ace/+", 0), ("ünï/çødé", 0)])
    pub = await connected(clients, broker.port, "pub")
    for topic in ("case/topic", "Case/Topic", "sp ace/x", "space/x", "ünï/çødé", "uni/code"):
        await pub.publish(topic, b".", qos=1)
    assert await topics_received(sub) == sorted(["Case/Topic", "sp ace/x", "ünï/çødé"])
