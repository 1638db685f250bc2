"""Flow control: the in-flight window for QoS 1/2, and slow readers that stop reading."""

import socket
import threading
import time

import pytest_twisted
from twisted.internet.threads import deferToThread

from .mqttclient import (
    PUBACK,
    TIMEOUT,
    RawClient,
    _read_packet,
    ack_packet,
    connect_packet,
    parse_publish,
    raw_connect,
    raw_subscribe,
    read_packet,
    sleep,
    subscribe_packet,
)


async def connected(clients, port, client_id):
    client = clients(port, client_id=client_id)
    await client.connect()
    return client


# -- in-flight window (max_inflight_messages) ------------------------------------------


@pytest_twisted.ensureDeferred
async def test_inflight_window_limits_unacknowledged_messages(start_broker, raw, clients):
    # max_inflight_messages=3: at most 3 unacknowledged QoS 1 PUBLISH; packet ids in flight
    # are non-zero [MQTT-2.3.1-1] and distinct [MQTT-2.3.1-4]; the rest wait in order
    # [MQTT-4.6.0-6] and follow as acknowledgements free the window.
    broker = start_broker(max_inflight_messages=3)
    sub = raw(broker.port)
    await raw_connect(sub, "slowacker")
    assert await raw_subscribe(sub, [("win/t", 1)]) == [1]
    pub = await connected(clients, broker.port, "pub")
    for i in range(10):
        await pub.publish("win/t", str(i).encode(), qos=1)  # the publisher is never held up

    inflight = [parse_publish(*await read_packet(sub)) for _ in range(3)]
    assert [int(p.payload) for p in inflight] == [0, 1, 2]
    ids = [p.packet_id for p in inflight]
    assert all(ids) and len(set(ids)) == 3
    assert all(p.qos == 1 and not p.dup for p in inflight)
    assert await read_packet(sub, timeout=0.5) is None  # no 4th while none is acknowledged

    sub.send(ack_packet(PUBACK, ids[1]))  # acknowledge one (not the oldest): window reopens
    fourth = parse_publish(*await read_packet(sub))
    assert int(fourth.payload) == 3
    assert fourth.packet_id and fourth.packet_id not in (ids[0], ids[2])
    assert await read_packet(sub, timeout=0.3) is None

    received = [int(p.payload) for p in inflight] + [3]
    outstanding = {ids[0], ids[2], fourth.packet_id}
    while len(received) < 10:
        sub.send(ack_packet(PUBACK, min(outstanding)))
        outstanding.discard(min(outstanding))
        publish = parse_publish(*await read_packet(sub))
        assert publish.packet_id and publish.packet_id not in outstanding
        outstanding.add(publish.packet_id)
        assert len(outstanding) <= 3
        received.append(int(publish.payload))
    assert received == list(range(10))
    for packet_id in sorted(outstanding):
        sub.send(ack_packet(PUBACK, packet_id))
    assert await read_packet(sub, timeout=0.3) is None
    await sleep(0.05)
    session = broker.broker.sessions["slowacker"]
    assert not session.inflight and not session.queue


# -- slow readers (TCP back-pressure) -------------------------------------------------


class NonReadingClient(RawClient):
    """A raw client with a tiny receive buffer that stops reading after SUBACK."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect
        self.sock.settimeout(TIMEOUT)
        self.sock.connect((host, port))


class Counter:
    """Counts a paho client's messages from its network thread; waits without polling."""

    def __init__(self) -> None:
        self.count = 0
        self.last = -1
        self.in_order = True
        self._cond = threading.Condition()

    def on_message(self, _client, _userdata, message) -> None:
        number = int(message.payload[:8])
        with self._cond:
            if number != self.last + 1:
                self.in_order = False
            self.last = number
            self.count += 1
            self._cond.notify_all()

    def _wait_for(self, count: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.count < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self.count

    async def wait_for(self, count: int, timeout: float = 10.0) -> int:
        return await deferToThread(self._wait_for, count, timeout)


def transport_buffered(session) -> int:
    """Bytes Twisted holds for the session's connection (0 if the internals are unknown)."""
    transport = getattr(session.connection, "transport", None)
    if transport is None:
        return 0
    buffered = len(getattr(transport, "dataBuffer", b"")) - getattr(transport, "offset", 0)
    return buffered + getattr(transport, "_tempDataLen", 0)


@pytest_twisted.ensureDeferred
async def test_slow_reader_is_bounded_and_others_keep_working(start_broker, clients):
    # A subscriber that stops reading must not make the broker buffer without limit: once
    # its queue is full it holds the publisher back for slow_client_grace at most; then its
    # queue stays at max_queued_messages (+1: the message that found it full) and the rest
    # is dropped (and counted), while the publisher and a normal subscriber carry on.
    broker = start_broker(max_queued_messages=100, slow_client_grace=0.5)
    slow = NonReadingClient(broker.port)
    try:
        slow.send(connect_packet("slow", keepalive=0))
        assert (await read_packet(slow))[0] == 0x20
        slow.send(subscribe_packet(1, [("flood/t", 0)]))
        assert await read_packet(slow) == (0x90, b"\x00\x01\x00")
        # from here on, `slow` reads nothing

        fast = clients(broker.port, client_id="fast")
        counter = Counter()
        fast.client.on_message = counter.on_message
        await fast.connect()
        assert await fast.subscribe("flood/t", 0) == [0]
        pub = await connected(clients, broker.port, "pub")

        session = broker.broker.sessions["slow"]
        payload_pad = b"x" * (1024 - 8)
        total, batch = 20_000, 200
        max_queue = max_buffered = 0
        started = time.monotonic()
        for start in range(0, total, batch):
            for i in range(start, start + batch):
                pub.client.publish("flood/t", b"%08d" % i + payload_pad, 0)
            # pace the publisher on the fast subscriber, so only the slow one falls behind
            got = await counter.wait_for(start + batch)
            assert got == start + batch, f"fast subscriber stuck at {got} of {start + batch}"
            max_queue = max(max_queue, len(session.queue))
            max_buffered = max(max_buffered, transport_buffered(session))
            assert time.monotonic() - started < 60, "flood took too long"

        assert counter.count == total and counter.in_order
        assert max_queue <= 101
        assert 100 <= len(session.queue) <= 101  # it did fill up, and stayed at the limit
        assert broker.broker.stats.clients_slow == 1
        assert broker.broker.stats.publish_dropped > 0
        assert session.dropped > 0
        # what Twisted buffers for the slow reader stays small (its 64 KiB high-water mark
        # plus a message or so), far below the 20 MB published
        assert max_buffered < 1024 * 1024, max_buffered
        assert "slow" in broker.broker.sessions and session.connection is not None

        # the publisher still gets its handshakes done
        await pub.publish("flood/t", b"%08d" % total + b"end", qos=1)
        assert await counter.wait_for(total + 1) == total + 1

        # when the slow reader reads again it gets a valid, in-order stream and the queue drains
        numbers = await deferToThread(_drain_publishes, slow, 2.0)
        assert numbers and numbers == sorted(numbers)
        assert len(session.queue) == 0
        # and, caught up, it gets new messages straight away
        await pub.publish("flood/t", b"%08d" % (total + 1), qos=1)
        fresh = parse_publish(*await read_packet(slow))
        assert int(fresh.payload[:8]) == total + 1
    finally:
        slow.close()


def _drain_publishes(client: RawClient, quiet: float) -> list[int]:
    """Read PUBLISH packets until none comes for ``quiet`` seconds; their sequence numbers."""
    numbers = []
    while True:
        got = _read_packet(client.sock, quiet)
        if got is None:
            return numbers
        numbers.append(int(parse_publish(*got).payload[:8]))
