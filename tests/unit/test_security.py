"""Security and limits with task.Clock: the growing delay for failed logins from one
address, reloads, --max-connections and --message-size-limit."""

from __future__ import annotations

from twisted.internet.defer import succeed

from mqtt_twisted.acl import parse_acl
from mqtt_twisted.auth import FAILURE_DELAY, FAILURE_DELAY_MAX, Security
from mqtt_twisted.packets import ConnAck, Connect, PubAck, Publish
from mqtt_twisted.passwords import PasswordFileChecker, format_line, hash_password

from .harness import FakeClient, connected, make_broker


class InlineChecker(PasswordFileChecker):
    """The real checker, hashing inline instead of in the reactor's thread pool (no
    threads in a Clock-driven test)."""

    def _in_thread(self, entry, password):
        from mqtt_twisted.passwords import verify

        return succeed(verify(entry, password))


def secure(tmp_path, allow_anonymous=False, acl=None, **config):
    path = tmp_path / "passwords"
    path.write_text(format_line("alice", hash_password(b"wonderland", iterations=10)) + "\n")
    broker, clock = make_broker(**config)
    broker.hooks = Security(
        clock,
        allow_anonymous=allow_anonymous,
        passwords=InlineChecker(str(path)),
        acl=parse_acl(acl) if acl else None,
    )
    return broker, clock, path


def attempt(broker, password: bytes) -> FakeClient:
    client = FakeClient(broker)
    client.send(Connect("c", username="alice", password=password))
    return client


def test_failed_logins_from_one_address_wait_longer_and_longer(tmp_path):
    broker, clock, _ = secure(tmp_path)
    delays = []
    for _ in range(6):
        client = attempt(broker, b"guess")
        waited = 0.0
        while not client.received_bytes():
            clock.advance(0.25)
            waited += 0.25
            assert waited <= FAILURE_DELAY_MAX
        delays.append(waited)
        assert client.received() == [ConnAck(False, 4)]
    assert delays[0] == FAILURE_DELAY
    assert delays == sorted(delays) and delays[-1] == FAILURE_DELAY_MAX  # bounded
    good = attempt(broker, b"wonderland")  # the right password is answered at once
    assert good.received() == [ConnAck(False, 0)]


def test_the_right_password_is_answered_without_waiting(tmp_path):
    broker, clock, _ = secure(tmp_path)
    assert attempt(broker, b"wonderland").received() == [ConnAck(False, 0)]


def test_reload_picks_up_new_users_and_keeps_the_old_file_when_broken(tmp_path):
    broker, clock, path = secure(tmp_path)
    path.write_text(
        format_line("alice", hash_password(b"wonderland", iterations=10))
        + "\n"
        + format_line("carol", hash_password(b"c", iterations=10))
        + "\n"
    )
    broker.hooks.reload()
    carol = FakeClient(broker)
    carol.send(Connect("carol", username="carol", password=b"c"))
    assert carol.received() == [ConnAck(False, 0)]
    path.write_text("this is not a password file\n")
    broker.hooks.reload()  # logged, old entries kept
    again = FakeClient(broker)
    again.send(Connect("carol2", username="carol", password=b"c"))
    assert again.received() == [ConnAck(False, 0)]


def test_max_connections_closes_new_connections_at_once():
    broker, clock = make_broker(max_connections=2)
    first, second = connected(broker, "one"), connected(broker, "two")
    third = FakeClient(broker)
    assert third.closed and not first.closed and not second.closed
    assert broker.stats.connections_refused == 1
    third.lose()
    first.lose()
    fourth = connected(broker, "four")  # room again
    assert not fourth.closed


def test_message_size_limit():
    """Larger payloads are refused: 3.1.1 acknowledged and not delivered, 5.0 PUBACK 0x83."""
    broker, clock = make_broker(message_size_limit=10)
    reader = connected(broker, "reader")
    from mqtt_twisted.packets import Subscribe, SubscriptionRequest

    reader.send(Subscribe(1, [SubscriptionRequest("t", 1)]))
    reader.received()
    v3 = connected(broker, "v3")
    v3.send(Publish("t", b"x" * 11, qos=1, packet_id=1))
    v3.send(Publish("t", b"x" * 10, qos=1, packet_id=2))
    assert v3.received() == [PubAck(1), PubAck(2)]
    v5 = connected(broker, "v5", level=5)
    v5.send(Publish("t", b"x" * 11, qos=1, packet_id=1))
    (ack,) = v5.received()
    assert ack.reason_code == 0x83
    assert [len(p.payload) for p in reader.received()] == [10]
    assert broker.stats.publish_too_large == 2


def test_acl_applies_to_retained_messages(tmp_path):
    """A retained message on a topic the subscriber may not read is not sent to it, even
    through a filter it may use (deny wins over the wider allow)."""
    acl = "user alice\ntopic readwrite open/#\ntopic write closed/#\n"
    broker, clock, _ = secure(tmp_path, acl=acl)
    alice = FakeClient(broker)
    alice.send(Connect("alice", username="alice", password=b"wonderland"))
    alice.received()
    alice.send(Publish("open/x", b"readable", qos=1, packet_id=1, retain=True))
    alice.send(Publish("closed/y", b"write-only", qos=1, packet_id=2, retain=True))
    alice.received()
    assert len(broker.retained) == 2
    from mqtt_twisted.packets import Subscribe, SubscriptionRequest

    alice.send(Subscribe(3, [SubscriptionRequest("#", 0)]))
    _suback, *messages = alice.received()
    assert [(m.topic, m.payload) for m in messages] == [("open/x", b"readable")]


def test_topics_deeper_than_the_level_limit_are_refused():
    """At most MAX_TOPIC_LEVELS levels: a deeper PUBLISH is an invalid topic name
    (DISCONNECT 0x90), a deeper filter gets SUBACK 0x8F; neither grows the tries."""
    from mqtt_twisted.packets import Subscribe, SubscriptionRequest
    from mqtt_twisted.topics import MAX_TOPIC_LEVELS

    broker, clock = make_broker()
    client = connected(broker, "deep", level=5)
    deep = "/".join(["x"] * (MAX_TOPIC_LEVELS + 1))
    ok = "/".join(["x"] * MAX_TOPIC_LEVELS)
    client.send(Subscribe(1, [SubscriptionRequest(deep, 0), SubscriptionRequest(ok, 0)]))
    (suback,) = client.received()
    assert suback.reason_codes == [0x8F, 0]
    client.send(Publish(deep, b"x"))
    (disconnect,) = client.received()
    assert disconnect.reason_code == 0x90


def test_subscriptions_per_client_are_bounded():
    from mqtt_twisted.packets import Subscribe, SubscriptionRequest

    broker, clock = make_broker(max_subscriptions_per_client=3)
    client = connected(broker, "many", level=5)
    requests = [SubscriptionRequest(f"t/{i}", 0) for i in range(5)]
    client.send(Subscribe(1, requests))
    (suback,) = client.received()
    assert suback.reason_codes == [0, 0, 0, 0x97, 0x97]  # Quota exceeded
    client.send(Subscribe(2, [SubscriptionRequest("t/0", 1)]))  # replacing one is fine
    assert client.received()[0].reason_codes == [1]
    v3 = connected(broker, "many3")
    v3.send(Subscribe(1, requests))
    assert v3.received()[0].reason_codes == [0, 0, 0, 0x80, 0x80]
    assert broker.stats.subscriptions_refused == 4


def test_connection_rate_per_address():
    """--max-connection-rate 3: a burst of three from one address, then one more per third
    of a second; the others are closed at once and counted."""
    broker, clock = make_broker(max_connection_rate=3)
    burst = [FakeClient(broker) for _ in range(5)]
    assert [c.closed for c in burst] == [False, False, False, True, True]
    clock.advance(1 / 3)
    assert not FakeClient(broker).closed
    assert FakeClient(broker).closed
    assert broker.stats.connections_refused == 3
