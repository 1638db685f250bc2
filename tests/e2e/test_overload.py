"""Overload, end to end: what publishers and subscribers see when a broker is offered more
than one of its subscribers can take (flow control: README, "Flow control").

- A subscriber whose queue reaches --max-queued-messages holds the connections that publish
  to it (their input is not read, PUBACKs only for what was queued) until it drains.
- One whose client keeps the broker waiting (socket buffer full, oldest message long
  unacknowledged) for --slow-client-grace seconds while it is full counts as slow: its
  publishers are released and what does not fit in its queue is dropped and counted; it is
  not disconnected.
- A client the broker disconnects with a reason code reads that reason code, then a clean
  end of stream (the broker half-closes and discards its input for a while).

In-process brokers (``start_broker``) where the test needs the broker's objects; a real
``twistd`` subprocess where it measures the broker's memory (/proc/PID/status) or reads its
log, $SYS topics and /metrics. Every wait is bounded in time, every loop in count.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import pytest_twisted
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.threads import deferToThread

from mqtt_twisted.packets import PacketType, Property, Publish, ReasonCode

from .mqttclient import (
    PUBACK,
    ack_packet,
    connect_packet,
    decode_packet,
    parse_publish,
    sleep,
    subscribe_packet,
    v5_bytes,
    v5_connect_bytes,
)

HOST = "127.0.0.1"
TWISTD = Path(sys.executable).parent / "twistd"
V311, V5 = mqtt.MQTTv311, mqtt.MQTTv5


# -- clients -------------------------------------------------------------------------------


def seq_payload(n: int, size: int = 0) -> bytes:
    """The payload of message ``n``: its sequence number, padded to ``size`` bytes."""
    return str(n).encode().ljust(size, b".")


def seq_of(payload: bytes) -> int:
    return int(payload.split(b".", 1)[0])


class Client:
    """A paho-mqtt 2.x client in its own network thread that records what it receives (in
    order) and when its PUBLISHes are acknowledged. Its methods block (bounded): from a test
    that runs an in-process broker, call them through ``deferToThread``."""

    def __init__(
        self, port: int, client_id: str, protocol=V311, inflight: int | None = None
    ) -> None:
        self.port = port
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol
        )
        if inflight is not None:  # paho: 0 = no limit; only settable before connecting
            self.client.max_inflight_messages_set(inflight)
        self.changed = threading.Condition()
        self.connack = None
        self.subacks: list = []
        self.received: list[bytes] = []
        #: monotonic times of the PUBACKs (QoS 1) / PUBCOMPs (QoS 2) of its PUBLISHes
        self.acked: list[float] = []
        self.disconnects: list = []
        c = self.client
        c.on_connect = lambda cl, ud, flags, rc, props: self._record("connack", (rc, props))
        c.on_subscribe = lambda cl, ud, mid, rcs, props: self._append(self.subacks, rcs)
        c.on_message = lambda cl, ud, msg: self._append(self.received, msg.payload)
        c.on_publish = lambda cl, ud, mid, rc, props: self._append(self.acked, time.monotonic())
        c.on_disconnect = lambda cl, ud, fl, rc, props: self._append(self.disconnects, rc)

    def _record(self, name: str, value) -> None:
        with self.changed:
            setattr(self, name, value)
            self.changed.notify_all()

    def _append(self, items: list, value) -> None:
        with self.changed:
            items.append(value)
            self.changed.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Whether ``predicate()`` became true within ``timeout`` seconds."""
        with self.changed:
            return self.changed.wait_for(predicate, timeout)

    def start(self, timeout: float = 5.0):
        """Connect and wait for an accepting CONNACK; returns its properties."""
        self.client.connect(HOST, self.port, keepalive=60)
        self.client.loop_start()
        assert self.wait(lambda: self.connack is not None, timeout), "no CONNACK"
        rc, props = self.connack
        assert not rc.is_failure, f"CONNACK refused: {rc}"
        return props

    def subscribe(self, topic: str, qos: int, timeout: float = 5.0) -> None:
        self.client.subscribe(topic, qos)
        assert self.wait(lambda: self.subacks, timeout), "no SUBACK"
        assert [rc.value for rc in self.subacks[0]] == [qos]

    def publish_numbered(
        self,
        topic: str,
        count: int,
        qos: int,
        size: int = 0,
        rate: float | None = None,
        timeout: float = 120.0,
    ) -> float:
        """Publish messages 0..count-1 (paced to ``rate`` per second by the wall clock, or
        as fast as paho takes them) and wait until all are acknowledged; returns the
        seconds from the first publish to the last acknowledgement."""
        start = time.monotonic()
        deadline = start + timeout
        for n in range(count):
            if rate is not None:
                ahead = start + n / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            assert time.monotonic() < deadline, f"publishing took over {timeout} s"
            info = self.client.publish(topic, seq_payload(n, size), qos)
            assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"publish {n}: {info.rc}"
        left = deadline - time.monotonic()
        assert self.wait(lambda: len(self.acked) >= count, max(left, 0)), (
            f"{len(self.acked)} of {count} acknowledged after {timeout} s"
        )
        return self.acked[count - 1] - start

    def stop(self) -> None:
        try:
            self.client.disconnect()
        except Exception:
            pass
        self.client.loop_stop()


class RawSubscriber:
    """A plain-socket MQTT 3.1.1 subscriber whose reading the test controls: it reads only
    inside :meth:`read` and acknowledges each QoS 1 message as it reads it."""

    def __init__(self, port: int, client_id: str, topic: str, qos: int = 1) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=5)
        self.buffer = bytearray()
        self.ended = False
        #: sequence numbers received, in order
        self.received: list[int] = []
        self.sock.sendall(connect_packet(client_id, keepalive=60))
        first, body = self.next_packet(time.monotonic() + 5)
        assert first == 0x20 and body[1] == 0, f"bad CONNACK {first:#x} {body!r}"
        self.sock.sendall(subscribe_packet(1, [(topic, qos)]))
        first, body = self.next_packet(time.monotonic() + 5)
        assert first == 0x90 and list(body[2:]) == [qos], f"bad SUBACK {first:#x} {body!r}"

    def next_packet(self, deadline: float):
        """The next packet as (first byte, body), or None at the deadline or end of stream."""
        buffer = self.buffer
        while True:
            if len(buffer) >= 2:
                length, shift, i = 0, 0, 1
                while i < len(buffer) and i <= 4:
                    length |= (buffer[i] & 0x7F) << shift
                    shift += 7
                    if not buffer[i] & 0x80:
                        break
                    i += 1
                if i < len(buffer) and len(buffer) >= i + 1 + length:
                    first, body = buffer[0], bytes(buffer[i + 1 : i + 1 + length])
                    del buffer[: i + 1 + length]
                    return first, body
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return None
            except OSError:  # closed under a reading thread (teardown after a failure)
                chunk = b""
            if not chunk:
                self.ended = True
                return None
            buffer += chunk

    def read(
        self,
        until: float,
        rate: float | None = None,
        count: int | None = None,
        quiet: float | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        """Read and acknowledge PUBLISHes, at most ``rate`` per second, until the monotonic
        time ``until``, ``count`` received in all, nothing for ``quiet`` seconds, ``stop``
        set, or the end of the stream."""
        start = last = time.monotonic()
        taken = 0
        while time.monotonic() < until and (count is None or len(self.received) < count):
            if stop is not None and stop.is_set():
                return
            if rate is not None:
                ahead = start + taken / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(min(ahead, 0.1))
                    continue
            got = self.next_packet(min(until, time.monotonic() + 0.1))
            if got is None:
                if self.ended or (quiet is not None and time.monotonic() - last > quiet):
                    return
                continue
            last = time.monotonic()
            publish = parse_publish(*got)
            if publish.qos == 1:
                self.sock.sendall(ack_packet(PUBACK, publish.packet_id))
            self.received.append(seq_of(publish.payload))
            taken += 1

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def made():
    """Clients made by a test (``made.append(client)``): stopped / closed at teardown."""
    clients: list = []
    yield clients
    for client in clients:
        try:
            client.stop() if isinstance(client, Client) else client.close()
        except Exception:
            pass


def in_order(seqs: list[int], count: int) -> str:
    """'' if ``seqs`` is exactly 0..count-1, else a short description of how it is not."""
    if seqs == list(range(count)):
        return ""
    missing = len(set(range(count)) - set(seqs))
    duplicates = len(seqs) - len(set(seqs))
    first_bad = next((i for i, s in enumerate(seqs) if s != i), len(seqs))
    return (
        f"got {len(seqs)} of {count}: {missing} missing, {duplicates} duplicated, first "
        f"difference at index {first_bad}"
    )


# -- 1. no loss under sustained load --------------------------------------------------------

BULK = 50_000


async def relay_numbered(port: int, made: list, protocol, qos: int) -> tuple[list[int], float]:
    """A paho publisher sends BULK numbered messages at ``qos`` to a paho subscriber at
    ``qos``; returns the subscriber's sequence numbers and the seconds it all took."""
    sub = Client(port, f"bulk-sub-{qos}", protocol)
    made.append(sub)
    await deferToThread(sub.start)
    await deferToThread(sub.subscribe, "bulk/t", qos)
    # MQTT 3.1.1 has no Receive Maximum: 64 in flight. An MQTT 5.0 client must not have
    # more unacknowledged QoS 1/2 PUBLISHes than the server's Receive Maximum
    # [MQTT-3.3.4-7]; paho does not apply it by itself, and takes its window only before
    # connecting: so ask the broker first, as a client that knows the server would.
    window = 64
    if protocol == V5:
        probe = Client(port, f"bulk-probe-{qos}", protocol)
        made.append(probe)
        props = await deferToThread(probe.start)
        window = min(window, getattr(props, "ReceiveMaximum", 65535))
        await deferToThread(probe.stop)
    pub = Client(port, f"bulk-pub-{qos}", protocol, inflight=window)
    made.append(pub)
    await deferToThread(pub.start)
    start = time.monotonic()
    await deferToThread(pub.publish_numbered, "bulk/t", BULK, qos, 0, None, 120.0)
    left = start + 120.0 - time.monotonic()
    await deferToThread(sub.wait, lambda: len(sub.received) >= BULK, max(left, 0))
    await sleep(0.2)  # anything beyond BULK (a duplicate) would arrive now
    return [seq_of(p) for p in sub.received], time.monotonic() - start


@pytest_twisted.ensureDeferred
async def test_50000_qos1_messages_all_delivered_in_order(start_broker, made):
    """50,000 QoS 1 messages from an MQTT 3.1.1 paho publisher (64 in flight) reach a QoS 1
    subscriber: every one, in publish order [MQTT-4.6.0-6], none dropped by the broker
    (flow control slows the publisher instead)."""
    running = start_broker()
    seqs, took = await relay_numbered(running.port, made, V311, 1)
    print(f"50,000 QoS 1 (3.1.1): {took:.1f} s")
    assert not in_order(seqs, BULK), in_order(seqs, BULK)
    assert running.broker.stats.publish_dropped == 0


@pytest_twisted.ensureDeferred
async def test_50000_qos2_messages_exactly_once_in_order(start_broker, made):
    """50,000 QoS 2 messages from an MQTT 5.0 paho publisher (in flight: 64, capped at the
    broker's Receive Maximum of 20 [MQTT-3.3.4-7]) reach a QoS 2 subscriber exactly once [MQTT-4.3.3], in publish order
    [MQTT-4.6.0-6], none dropped."""
    running = start_broker()
    seqs, took = await relay_numbered(running.port, made, V5, 2)
    print(f"50,000 QoS 2 (5.0): {took:.1f} s")
    assert not in_order(seqs, BULK), in_order(seqs, BULK)
    assert running.broker.stats.publish_dropped == 0


# -- 2. DISCONNECT 0x93, then a clean end of stream ------------------------------------------


def read_to_end(sock: socket.socket, timeout: float) -> tuple[bytes, str, float]:
    """Everything until the peer closes: (bytes, "eof" | "reset" | "timeout", seconds)."""
    start = time.monotonic()
    deadline = start + timeout
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return data, "timeout", time.monotonic() - start
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return data, "reset", time.monotonic() - start
        if not chunk:
            return data, "eof", time.monotonic() - start
        data += chunk


def split_packets(data: bytes) -> list:
    """Whole MQTT 5.0 packets in ``data``, decoded (a cut-off tail is left out)."""
    packets, i = [], 0
    while i + 2 <= len(data):
        length, shift, j = 0, 0, i + 1
        while j < len(data):
            length |= (data[j] & 0x7F) << shift
            shift += 7
            j += 1
            if not data[j - 1] & 0x80:
                break
        if j + length > len(data):
            break
        packets.append(decode_packet(data[i], data[j : j + length]))
        i = j + length
    return packets


@pytest_twisted.ensureDeferred
async def test_receive_maximum_exceeded_client_reads_disconnect_then_eof(start_broker):
    """An MQTT 5.0 client sends Receive Maximum + 1 unacknowledged QoS 2 PUBLISHes and then
    200 more of 1 KiB (all at once, or one a millisecond, on after the broker closed),
    reading nothing, and reads after 0.5 s: it finds the PUBRECs of the first Receive
    Maximum, DISCONNECT 0x93 Receive Maximum exceeded [MQTT-3.3.4-7], [MQTT-3.3.4-8], then a
    clean end of stream soon after, never a connection reset, neither reading nor sending
    (the broker half-closes after the reason code and discards what the client still
    sends). Six times, so that a race shows."""
    running = start_broker()
    receive_maximum = running.broker.config.max_inflight_messages
    assert receive_maximum == 20

    def publishes(first: int, count: int, size: int) -> list[bytes]:
        return [
            v5_bytes(Publish("rm/x", b"x" * size, qos=2, packet_id=n))
            for n in range(first, first + count)
        ]

    def send(sock: socket.socket, chunks: list[bytes], pause: float) -> str:
        """Send ``chunks`` with ``pause`` seconds between them: "" if all went, else the
        error (a reset here would lose the reason code for most client libraries)."""
        try:
            for chunk in chunks:
                sock.sendall(chunk)
                if pause:
                    time.sleep(pause)
        except OSError as error:
            return repr(error)
        return ""

    for attempt in range(6):
        streamed = attempt % 2 == 1
        sock = socket.create_connection((HOST, running.port), timeout=5)
        try:
            sock.sendall(v5_connect_bytes(f"overflow-{attempt}"))
            (connack,) = split_packets(await deferToThread(read_connack, sock))
            assert connack.type == PacketType.CONNACK and connack.return_code == 0
            assert connack.properties[Property.RECEIVE_MAXIMUM] == receive_maximum
            over = b"".join(publishes(1, receive_maximum + 1, 16))
            more = publishes(receive_maximum + 2, 200, 1024)
            if streamed:  # one PUBLISH a millisecond, on after the broker has closed
                sent = await deferToThread(send, sock, [over, *more], 0.001)
            else:  # 200 KiB at once: more than the broker reads before it closes
                sent = await deferToThread(send, sock, [over + b"".join(more)], 0)
            await sleep(0.5)
            data, end, took = await deferToThread(read_to_end, sock, 5.0)
        finally:
            sock.close()
        packets = split_packets(data)
        seen = [(p.type.name, getattr(p, "packet_id", None)) for p in packets]
        expected = [("PUBREC", n) for n in range(1, receive_maximum + 1)]
        assert seen == expected + [("DISCONNECT", None)], f"attempt {attempt}: {seen}"
        assert packets[-1].reason_code == ReasonCode.RECEIVE_MAXIMUM_EXCEEDED
        assert not sent, f"attempt {attempt}: sending failed: {sent}"
        assert end == "eof", f"attempt {attempt}: {end} after {len(data)} bytes"
        assert took < 1.0  # half-closed right after the DISCONNECT, not at the end of linger


def read_connack(sock: socket.socket) -> bytes:
    """The CONNACK (the first 2 + remaining length bytes)."""
    sock.settimeout(5)
    head = sock.recv(2)
    assert len(head) == 2 and head[0] == 0x20, f"no CONNACK: {head!r}"
    body = b""
    while len(body) < head[1]:
        chunk = sock.recv(head[1] - len(body))
        assert chunk, "closed during CONNACK"
        body += chunk
    return head + body


# -- 3, 4. slow and stalled subscribers against a twistd broker ------------------------------


class TwistdBroker:
    """``twistd -n mqtt`` as a user starts it, its log in a file."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.log_path = tmp_path / "broker.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [str(TWISTD), "-n", "--pidfile=", "mqtt", *args],
            cwd=tmp_path,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        ports: list[int] = []
        while time.monotonic() < deadline and self.process.poll() is None:
            ports = [int(p) for p in re.findall(r"listening on 127\.0\.0\.1:(\d+)", self.log())]
            if len(ports) == 2:
                break
            time.sleep(0.05)
        assert len(ports) == 2, "twistd did not start:\n" + self.log()
        # makeService starts the --mqtt listener before the --http one
        self.mqtt_port, self.http_port = ports

    def log(self) -> str:
        return self.log_path.read_text()

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) / 1024

    def metrics(self) -> dict[str, float]:
        url = f"http://{HOST}:{self.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples

    def sys_value(self, topic: str, ready: Callable[[str], bool], timeout: float) -> str:
        """The value of a retained $SYS topic, once ``ready(value)`` (updates every second)."""
        values: list[str] = []
        changed = threading.Condition()

        def on_message(cl, ud, msg) -> None:
            with changed:
                values.append(msg.payload.decode())
                changed.notify_all()

        watcher = Client(self.mqtt_port, "sys-watcher")
        watcher.client.on_message = on_message
        try:
            watcher.start()
            watcher.subscribe(topic, 0)
            with changed:
                changed.wait_for(lambda: values and ready(values[-1]), timeout)
            assert values, f"no {topic}"
            return values[-1]
        finally:
            watcher.stop()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self._log.close()


@pytest.fixture
def twistd(tmp_path):
    brokers: list[TwistdBroker] = []

    def start(*args: str) -> TwistdBroker:
        broker = TwistdBroker(tmp_path, *args)
        brokers.append(broker)
        return broker

    yield start
    for broker in brokers:
        broker.stop()


class RssSampler:
    """The broker's largest resident set size, sampled every 50 ms in a thread."""

    def __init__(self, broker: TwistdBroker) -> None:
        self.broker = broker
        self.baseline = broker.rss_mib()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.broker.rss_mib())

    def stop(self) -> float:
        """Growth of the peak over the baseline, in MiB."""
        self._stop.set()
        self._thread.join(5)
        return self.peak - self.baseline


def socket_buffer_messages(size: int) -> int:
    """How many messages of ``size`` payload bytes loopback TCP buffers can hold at most: the
    largest send buffer of the broker's socket and receive buffer of the client's, plus
    Twisted's 64 KiB write buffer."""
    wmem = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    rmem = int(Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split()[2])
    return (wmem + rmem + 65536) // size + 1


GRACE = 1.0
#: the twistd defaults of --max-queued-messages and --max-inflight-messages
QUEUED, WINDOW = 1000, 20
TWISTD_ARGS = (
    "--mqtt",
    f"tcp:0:interface={HOST}",
    "--http",
    f"tcp:0:interface={HOST}",
    "--sys-interval",
    "1",
    "--slow-client-grace",
    str(GRACE),
)


def test_slow_subscriber_does_not_hold_publisher_beyond_grace(twistd, made):
    """A QoS 1 publisher at 2,000 msg/s for 3 s; a fast paho QoS 1 subscriber and a raw one
    that reads and acknowledges at most 100 msg/s (broker: --slow-client-grace 1).

    - the fast subscriber gets every message, in publish order [MQTT-4.6.0-6];
    - the publisher is held back at most about the grace time: no PUBACK gap much longer
      than 1 s, and all its PUBACKs within the paced time + grace + slack;
    - the slow subscriber is not disconnected: it gets a subsequence, in order, and every
      message it did not get is counted as dropped for it (/metrics
      mqtt_client_messages_dropped{client_id=...}, $SYS/broker/publish/messages/dropped,
      mqtt_publish_messages_dropped_total); the broker warns once for the burst;
    - the broker's memory stays bounded.
    """
    broker = twistd(*TWISTD_ARGS)
    rate, seconds = 2_000, 3.0
    count = int(rate * seconds)
    fast = Client(broker.mqtt_port, "fast-sub")
    made.append(fast)
    fast.start()
    fast.subscribe("load/t", 1)
    slow = RawSubscriber(broker.mqtt_port, "slow-sub", "load/t", 1)
    made.append(slow)
    pub = Client(broker.mqtt_port, "paced-pub", inflight=100)
    made.append(pub)
    pub.start()
    rss = RssSampler(broker)

    stop_pacing = threading.Event()
    slow_reader = threading.Thread(
        target=slow.read,
        args=(time.monotonic() + seconds + 30, 100.0, None, None, stop_pacing),
        daemon=True,
    )
    slow_reader.start()
    took = pub.publish_numbered("load/t", count, 1, rate=rate, timeout=seconds + 20)
    gaps = [b - a for a, b in zip(pub.acked, pub.acked[1:])]
    assert fast.wait(lambda: len(fast.received) >= count, 20)
    # The slow one now reads as fast as it can: what the broker kept for it arrives.
    stop_pacing.set()
    slow_reader.join(5)
    assert not slow_reader.is_alive()
    slow.read(time.monotonic() + 20, quiet=1.0)
    growth = rss.stop()
    samples = broker.metrics()
    dropped = samples["mqtt_client_messages_dropped_total{client_id=slow-sub}"]
    sys_dropped = broker.sys_value(  # updated every second
        "$SYS/broker/publish/messages/dropped", lambda v: int(v) >= dropped, 5
    )
    log = broker.log()
    print(
        f"publish took {took:.2f} s for {seconds} s paced, longest PUBACK gap "
        f"{max(gaps):.2f} s; slow got {len(slow.received)}; RSS +{growth:.1f} MiB"
    )

    fast_seqs = [seq_of(p) for p in fast.received]
    assert not in_order(fast_seqs, count), in_order(fast_seqs, count)
    assert took < seconds + GRACE + 2.0
    assert max(gaps) < GRACE + 1.0
    assert dropped > 0
    assert slow.received == sorted(set(slow.received))  # in order, once each
    assert len(slow.received) + dropped == count
    assert samples["mqtt_publish_messages_dropped_total"] == dropped
    assert int(sys_dropped) == dropped
    assert log.count("queue of client slow-sub is full") == 1
    assert log.count("client slow-sub is slower than its publishers") == 1
    assert "fast-sub is" not in log  # the fast one never counted as slow
    assert growth < 12


@pytest.mark.parametrize("stalled_qos", [1, 0])
def test_stalled_subscriber_drops_counted_memory_bounded(twistd, made, stalled_qos):
    """20,000 QoS 1 messages of 1 KiB at 2,500 msg/s; a fast paho QoS 1 subscriber and one
    (QoS 1 or QoS 0 subscription) that never reads its socket (--slow-client-grace 1).

    The fast subscriber gets every message in order [MQTT-4.6.0-6]; the stalled one keeps
    at most its queue (--max-queued-messages 1000) and its in-flight window (QoS 1) or what
    its socket buffers hold (QoS 0); everything else is dropped and counted for it; the publisher finishes
    about on time; the broker's memory stays far below the 20 MB published.
    """
    broker = twistd(*TWISTD_ARGS)
    rate, count, size = 2_500, 20_000, 1024
    seconds = count / rate
    fast = Client(broker.mqtt_port, "fast-sub")
    made.append(fast)
    fast.start()
    fast.subscribe("load/t", 1)
    stalled = RawSubscriber(broker.mqtt_port, "stalled-sub", "load/t", stalled_qos)
    made.append(stalled)
    pub = Client(broker.mqtt_port, "paced-pub", inflight=100)
    made.append(pub)
    pub.start()
    rss = RssSampler(broker)

    took = pub.publish_numbered("load/t", count, 1, size=size, rate=rate, timeout=seconds + 20)
    gaps = [b - a for a, b in zip(pub.acked, pub.acked[1:])]
    assert fast.wait(lambda: len(fast.received) >= count, 20)
    time.sleep(0.2)
    growth = rss.stop()
    samples = broker.metrics()
    sys_slow = broker.sys_value("$SYS/broker/clients/slow", lambda v: v == "1", 5)
    log = broker.log()
    dropped = samples["mqtt_client_messages_dropped_total{client_id=stalled-sub}"]
    print(
        f"publish took {took:.2f} s for {seconds} s paced, longest PUBACK gap "
        f"{max(gaps):.2f} s; stalled: {dropped:.0f} dropped; RSS +{growth:.1f} MiB"
    )

    fast_seqs = [seq_of(p) for p in fast.received]
    assert not in_order(fast_seqs, count), in_order(fast_seqs, count)
    assert took < seconds + GRACE + 2.0
    assert max(gaps) < GRACE + 1.0
    kept = count - dropped
    if stalled_qos == 1:
        assert QUEUED <= kept <= QUEUED + WINDOW + 1  # +1: the message that made it hold
    else:  # its queue + what the socket buffers of both ends (and Twisted's) can hold
        assert QUEUED <= kept <= QUEUED + socket_buffer_messages(size)
    assert samples["mqtt_publish_messages_dropped_total"] == dropped
    assert samples["mqtt_clients_connected"] == 3  # the stalled one is not disconnected
    assert samples["mqtt_clients_slow"] == 1  # still full, still connected
    assert sys_slow == "1"
    assert log.count("queue of client stalled-sub is full") == 1
    assert log.count("client stalled-sub is slower than its publishers") == 1
    assert growth < 12


# -- 5. a held publisher ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_publisher_held_while_subscriber_stalls_then_completes(start_broker, made):
    """A subscriber stops reading; with a long grace (30 s) a QoS 1 publisher sending as fast
    as it can sees its PUBACKs stop after about --max-queued-messages + the in-flight
    window: PUBACKs only for what the broker queued, nothing dropped. When the subscriber
    reads again, every message arrives, in order [MQTT-4.6.0-6], and the publisher gets
    all its PUBACKs."""
    running = start_broker(slow_client_grace=30)
    config = running.broker.config
    queued, window = config.max_queued_messages, config.max_inflight_messages
    count = 5_000
    sub = await deferToThread(RawSubscriber, running.port, "stopped-sub", "held/t", 1)
    made.append(sub)
    pub = Client(running.port, "eager-pub", inflight=0)  # no limit: everything at once
    made.append(pub)
    await deferToThread(pub.start)
    start = time.monotonic()
    for n in range(count):
        pub.client.publish("held/t", seq_payload(n), 1)

    # wait until the PUBACKs stop (no new one for 0.5 s), at most 10 s
    seen, since = -1, time.monotonic()
    while time.monotonic() - start < 10:
        if len(pub.acked) != seen:
            seen, since = len(pub.acked), time.monotonic()
        elif time.monotonic() - since > 0.5:
            break
        await sleep(0.05)
    acked_while_held = len(pub.acked)
    assert queued <= acked_while_held <= queued + window + 1, acked_while_held
    assert running.broker.stats.publish_dropped == 0
    held_for = time.monotonic() - start

    await deferToThread(sub.read, time.monotonic() + 30, None, count)
    done = await deferToThread(pub.wait, lambda: len(pub.acked) >= count, 30)
    print(f"held at {acked_while_held} PUBACKs for {held_for:.1f} s")
    assert not in_order(sub.received, count), in_order(sub.received, count)
    assert done, f"publisher got {len(pub.acked)} of {count} PUBACKs"
    assert running.broker.stats.publish_dropped == 0
