"""Several broker processes as one, on a real redis-server: messages, subscriptions,
retained messages and client ids across nodes (``--cluster``), with paho clients.

Plain (synchronous) tests: the nodes and Redis are separate processes, paho runs threads.
"""

from __future__ import annotations

import paho.mqtt.client as mqtt
import pytest

from .cluster import Client, cluster, until_routed  # noqa: F401 (fixture)

VERSIONS = pytest.mark.parametrize(
    "version", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["mqtt3.1.1", "mqtt5"]
)


@VERSIONS
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_a_subscriber_on_one_node_gets_messages_published_on_another_in_order(
    cluster, version, qos
):
    a, b = cluster.node(), cluster.node()
    subscriber = Client(a.direct_port, "sub", version)
    subscriber.subscribe("orders/#", qos)
    publisher = Client(b.direct_port, "pub", version)
    until_routed(publisher, subscriber, "orders/probe", 1)
    count = 300
    for n in range(count):
        publisher.publish(f"orders/{n % 3}", str(n).encode(), qos)
    got = subscriber.receive(count)
    assert [m.payload for m in got] == [str(n).encode() for n in range(count)]
    assert {m.qos for m in got} == {qos}
    assert subscriber.nothing_more()  # [MQTT-4.6.0-2]: in order, exactly once per message
