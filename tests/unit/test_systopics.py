"""$SYS/broker/... figures, driven with task.Clock."""

from mqtt_twisted.broker.systopics import SysTopics
from mqtt_twisted.packets import Publish, Subscribe, SubscriptionRequest

from .harness import connected, make_broker


def sys_messages(client):
    return {p.topic: p.payload.decode() for p in client.received()}


def test_sys_topics_report_activity_and_only_changes():
    broker, clock = make_broker()
    sys_topics = SysTopics(broker, interval=10)
    watcher = connected(broker, "watcher")
    watcher.send(Subscribe(1, [SubscriptionRequest("$SYS/broker/#", 0)]))
    watcher.received()
    sys_topics.start()
    first = sys_messages(watcher)
    assert first["$SYS/broker/version"].startswith("mqtt-twisted version ")
    assert first["$SYS/broker/clients/connected"] == "1"
    assert first["$SYS/broker/uptime"] == "0 seconds"
    publisher = connected(broker, "pub")
    for _ in range(5):
        publisher.send(Publish("data/x", b"12345", qos=0))
    clock.advance(10)
    second = sys_messages(watcher)
    assert second["$SYS/broker/clients/connected"] == "2"
    assert second["$SYS/broker/clients/maximum"] == "2"
    assert second["$SYS/broker/publish/messages/received"] == "5"
    assert second["$SYS/broker/publish/bytes/received"] == "25"
    assert second["$SYS/broker/uptime"] == "10 seconds"
    assert "$SYS/broker/version" not in second  # static: published once
    assert "$SYS/broker/subscriptions/count" not in second  # unchanged: not republished
    assert float(second["$SYS/broker/load/publish/received/1min"]) > 0


def test_sys_topics_are_retained_for_late_subscribers():
    broker, clock = make_broker()
    SysTopics(broker, interval=10).start()
    late = connected(broker, "late")
    late.send(Subscribe(1, [SubscriptionRequest("$SYS/broker/clients/connected", 0)]))
    packets = late.received()[1:]
    assert [(p.topic, p.payload, p.retain) for p in packets] == [
        ("$SYS/broker/clients/connected", b"0", True)
    ]


def test_hash_does_not_match_sys():
    """[MQTT-4.7.2-1]"""
    broker, clock = make_broker()
    everything = connected(broker, "all")
    everything.send(Subscribe(1, [SubscriptionRequest("#", 0)]))
    everything.received()
    SysTopics(broker, interval=10).start()
    assert everything.received() == []
