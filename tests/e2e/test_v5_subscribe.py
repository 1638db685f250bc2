"""MQTT 5.0 subscription options end to end (paho MQTTv5 over loopback): No Local, Retain As
Published, Retain Handling, and the QoS downgrade. References are to OASIS MQTT 5.0."""

import paho.mqtt.client as mqtt
import pytest
import pytest_twisted
from paho.mqtt.subscribeoptions import SubscribeOptions

from .mqttclient import nothing_in


@pytest.fixture
def broker(broker_anywhere):
    """Every test here runs against one process and against a cluster of two nodes."""
    return broker_anywhere


V5 = mqtt.MQTTv5


async def v5_client(clients, port, client_id, **connect):
    client = clients(port, client_id=client_id, protocol=V5)
    await client.connect(**connect)
    return client


async def subscribe(client, topic_filter, qos=0, **options) -> int:
    """Subscribe with SubscribeOptions(qos, noLocal, retainAsPublished, retainHandling)."""
    (code,) = await client.subscribe(topic_filter, options=SubscribeOptions(qos=qos, **options))
    return code.value


@pytest_twisted.ensureDeferred
async def test_no_local_keeps_own_messages_away(broker, clients):
    # [MQTT-3.8.3-3] No Local = 1: Application Messages MUST NOT be forwarded to a connection
    # with a ClientID equal to the ClientID of the publishing connection; others get them
    me = await v5_client(clients, broker.port, "me")
    assert await subscribe(me, "nl/t", 1, noLocal=True) == 1
    other = await v5_client(clients, broker.port, "other")
    assert await subscribe(other, "nl/t", 1) == 1
    await me.publish("nl/t", b"from me", qos=1)
    assert (await other.message()).payload == b"from me"
    assert await nothing_in(me.messages, 0.5)
    await other.publish("nl/t", b"from other", qos=1)
    assert (await me.message()).payload == b"from other"
    # without No Local, a client gets its own messages
    assert (await other.message()).payload == b"from other"


@pytest_twisted.ensureDeferred
async def test_no_local_is_per_subscription(broker, clients):
    # No Local applies to the subscription it is set on (section 3.8.3.1): an overlapping
    # subscription without it still gets the client's own message, once [MQTT-3.3.4-2]
    me = await v5_client(clients, broker.port, "me")
    await subscribe(me, "nlp/t", 2, noLocal=True)
    await subscribe(me, "nlp/#", 1)
    await me.publish("nlp/t", b"mine", qos=2)
    messages = await me.messages_for(0.6)
    assert [(m.payload, m.qos) for m in messages] == [(b"mine", 1)]


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("as_published", [False, True])
async def test_retain_as_published(broker, clients, as_published):
    # [MQTT-3.3.1-12] Retain As Published 0: the RETAIN flag is set to 0 when forwarding;
    # [MQTT-3.3.1-13] 1: equal to the RETAIN flag of the received PUBLISH
    sub = await v5_client(clients, broker.port, "sub")
    await subscribe(sub, "rap/t", 1, retainAsPublished=as_published)
    pub = await v5_client(clients, broker.port, "pub")
    await pub.publish("rap/t", b"kept", qos=1, retain=True)
    await pub.publish("rap/t", b"plain", qos=1, retain=False)
    first, second = await sub.message(), await sub.message()
    assert (first.payload, first.retain) == (b"kept", as_published)
    assert (second.payload, second.retain) == (b"plain", False)
    # a retained message sent because of a new subscription has RETAIN 1 either way
    # (section 3.3.1.3)
    await subscribe(sub, "rap/+", 1, retainAsPublished=as_published)
    message = await sub.message()
    assert (message.payload, message.retain) == (b"kept", True)


@pytest_twisted.ensureDeferred
async def test_retain_handling_0_sends_retained_at_every_subscribe(broker, clients):
    # [MQTT-3.3.1-9] Retain Handling 0: the retained messages are sent at each SUBSCRIBE
    pub = await v5_client(clients, broker.port, "pub")
    await pub.publish("rh0/t", b"retained", qos=1, retain=True)
    sub = await v5_client(clients, broker.port, "sub")
    for _ in range(2):
        await subscribe(sub, "rh0/t", 1, retainHandling=0)
        message = await sub.message()
        assert (message.payload, message.retain) == (b"retained", True)
    assert await nothing_in(sub.messages, 0.4)


@pytest_twisted.ensureDeferred
async def test_retain_handling_1_only_for_a_new_subscription(broker, clients):
    # [MQTT-3.3.1-10] Retain Handling 1: retained messages only if the subscription did not
    # already exist: re-subscribing gets nothing; after UNSUBSCRIBE it is new again
    pub = await v5_client(clients, broker.port, "pub")
    await pub.publish("rh1/t", b"retained", qos=1, retain=True)
    sub = await v5_client(clients, broker.port, "sub")
    await subscribe(sub, "rh1/t", 1, retainHandling=1)
    assert (await sub.message()).payload == b"retained"
    await subscribe(sub, "rh1/t", 1, retainHandling=1)
    assert await nothing_in(sub.messages, 0.5)
    await sub.unsubscribe("rh1/t")
    await subscribe(sub, "rh1/t", 1, retainHandling=1)
    assert (await sub.message()).payload == b"retained"


@pytest_twisted.ensureDeferred
async def test_retain_handling_2_never_sends_retained(broker, clients):
    # [MQTT-3.3.1-11] Retain Handling 2: retained messages are not sent; live ones are
    pub = await v5_client(clients, broker.port, "pub")
    await pub.publish("rh2/t", b"retained", qos=1, retain=True)
    sub = await v5_client(clients, broker.port, "sub")
    await subscribe(sub, "rh2/t", 1, retainHandling=2)
    assert await nothing_in(sub.messages, 0.5)
    await pub.publish("rh2/t", b"live", qos=1)
    assert (await sub.message()).payload == b"live"


@pytest_twisted.ensureDeferred
async def test_delivered_qos_is_downgraded_to_subscription_qos(broker, clients):
    # [MQTT-3.8.4-8] delivered QoS = min(published QoS, granted QoS), all 9 combinations
    subs = {}
    for sub_qos in (0, 1, 2):
        subs[sub_qos] = await v5_client(clients, broker.port, f"sub{sub_qos}")
        assert await subscribe(subs[sub_qos], "down/t", sub_qos) == sub_qos
    pub = await v5_client(clients, broker.port, "pub")
    for pub_qos in (0, 1, 2):
        await pub.publish("down/t", f"p{pub_qos}".encode(), qos=pub_qos)
        for sub_qos, sub in subs.items():
            message = await sub.message()
            assert (message.payload, message.qos) == (f"p{pub_qos}".encode(), min(pub_qos, sub_qos))


@pytest_twisted.ensureDeferred
async def test_retained_message_qos_is_downgraded_too(broker, clients):
    # [MQTT-3.8.4-8] also for retained messages sent on SUBSCRIBE
    pub = await v5_client(clients, broker.port, "pub")
    await pub.publish("downr/t", b"r", qos=2, retain=True)
    sub = await v5_client(clients, broker.port, "sub")
    await subscribe(sub, "downr/t", 1)
    message = await sub.message()
    assert (message.payload, message.qos, message.retain) == (b"r", 1, True)


@pytest_twisted.ensureDeferred
async def test_resubscribe_replaces_options(broker, clients):
    # [MQTT-3.8.4-3] a SUBSCRIBE for an existing filter replaces the subscription (its
    # options too); there is still one subscription, so one copy
    me = await v5_client(clients, broker.port, "me")
    await subscribe(me, "rep/t", 1, noLocal=True)
    await subscribe(me, "rep/t", 0, noLocal=False)
    await me.publish("rep/t", b"own", qos=1)
    messages = await me.messages_for(0.5)
    assert [(m.payload, m.qos) for m in messages] == [(b"own", 0)]
