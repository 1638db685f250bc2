"""The first thing a user does: subscribe with one client, publish with another."""

import pytest_twisted


@pytest_twisted.ensureDeferred
async def test_publish_reaches_subscriber(broker, clients):
    sub = clients(broker.port, client_id="sub")
    await sub.connect()
    assert await sub.subscribe("greetings/+", qos=1) == [1]
    pub = clients(broker.port, client_id="pub")
    await pub.connect()
    await pub.publish("greetings/world", b"hello", qos=1)
    message = await sub.message()
    assert (message.topic, message.payload, message.qos, message.retain) == (
        "greetings/world",
        b"hello",
        1,
        False,
    )
