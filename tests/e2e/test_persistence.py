"""Persistence with real processes: ``twistd -n mqtt`` on its default SQLite store, killed
with SIGKILL and started again on the same file, with paho and raw-socket clients.

Plain (synchronous) tests: the broker is a separate process, so the clients run their own
threads and nothing here needs the test process's reactor.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from mqtt_twisted.packets import Connect, Property, Will, encode

from .browser import TWISTD, BrokerProcess, free_port
from .certs import make_certificates
from .mqttclient import _read_packet, ack_packet, connect_packet, publish_packet, subscribe_packet

STORE = "mqtt-twisted.sqlite"  # the default --store, in the broker's working directory
#: offline queues large enough for everything the crash test publishes
BROKER_ARGS = ("--max-queued-messages", "100000", "--sys-interval", "0")
KILL_ROUNDS = 4
DEADLINE = 60.0


class Broker(BrokerProcess):
    """A broker that can also be killed without warning."""

    def kill(self) -> None:
        process, self.process = self.process, None
        assert process is not None and process.poll() is None, "broker died by itself"
        process.send_signal(signal.SIGKILL)
        process.wait(10)


def paho(port: int, client_id: str, version=mqtt.MQTTv311, **kwargs) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version, **kwargs
    )
    client.reconnect_delay_set(0.05, 0.5)
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    return client


class NumberedPublisher:
    """Publishes "0", "1", ... to ``topic`` until stopped, through broker restarts: its
    session is persistent, so paho resends what is unacknowledged when it reconnects.

    paho's network loop is driven here, not by ``loop_start``: paho 2.2 resets its
    in-flight messages on every reconnect *attempt*, and a second reset turns a pending
    PUBREL into a new PUBLISH without DUP (a duplicate with any broker). So it reconnects
    once, when ``up`` says the broker listens again."""

    def __init__(self, port: int, client_id: str, topic: str, qos: int, up: threading.Event):
        self.topic, self.qos, self.up = topic, qos, up
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False
        )
        self.sent: list[mqtt.MQTTMessageInfo] = []
        self._acked_mids: set[int] = set()
        self.client.on_publish = lambda c, u, mid, rc, p: self._acked_mids.add(mid)
        self.client.connect("127.0.0.1", port, keepalive=30)
        self._stop = threading.Event()
        self._closed = threading.Event()
        self._network = threading.Thread(target=self._loop, daemon=True)
        self._network.start()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        client = self.client
        while not self._closed.is_set():
            if client.loop(0.02) == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS:
                continue
            if self._closed.is_set():
                return
            self.up.wait(DEADLINE)
            try:
                client.reconnect()
            except OSError:
                time.sleep(0.1)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            if not self.client.is_connected():  # the broker is down: wait for the reconnect
                time.sleep(0.01)
                continue
            self.sent.append(self.client.publish(self.topic, str(n), qos=self.qos))
            n += 1
            time.sleep(0.002)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def acknowledged(self) -> set[int]:
        """Numbers whose PUBACK (QoS 1) or PUBCOMP (QoS 2) the publisher received."""
        mids = self._acked_mids
        return {n for n, info in enumerate(self.sent) if info.mid in mids}

    def wait_acknowledged(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.acknowledged()) < len(self.sent):
            time.sleep(0.05)

    def close(self) -> None:
        self.client.disconnect()
        self._closed.set()
        self._network.join(5)


def collect(port: int, client_id: str, expected: dict[str, set[int]], quiet: float = 3.0):
    """Reconnect the persistent subscriber ``client_id``; its messages by topic, in arrival
    order, once every expected number arrived and nothing more came for ``quiet`` s."""
    received: dict[str, list[int]] = {topic: [] for topic in expected}
    last = [time.monotonic()]
    lock = threading.Lock()

    def on_message(client, userdata, message) -> None:
        with lock:
            received.setdefault(message.topic, []).append(int(message.payload))
            last[0] = time.monotonic()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    deadline = time.monotonic() + DEADLINE
    try:
        while time.monotonic() < deadline:
            time.sleep(0.1)
            with lock:
                complete = all(want <= set(received[t]) for t, want in expected.items())
                if complete and time.monotonic() - last[0] > quiet:
                    break
    finally:
        client.disconnect()
        client.loop_stop()
    return received


def first_occurrences(numbers: list[int]) -> list[int]:
    seen: set[int] = set()
    return [n for n in numbers if not (n in seen or seen.add(n))]  # type: ignore[func-returns-value]


def test_nothing_acknowledged_is_lost_when_the_broker_is_killed(tmp_path):
    """SIGKILL at random moments while a QoS 1 and a QoS 2 publisher send numbered messages
    to an offline persistent subscriber: every message whose PUBACK / PUBCOMP a publisher
    saw arrives (QoS 2 exactly once, QoS 1 at least once), first arrivals in publish order;
    the subscription and a retained message survive every restart."""
    broker = Broker(tmp_path, *BROKER_ARGS).start()
    try:
        sub = paho(broker.mqtt_port, "crash-sub", clean_session=False)
        sub.subscribe("crash/#", qos=2)
        time.sleep(0.5)
        sub.disconnect()
        sub.loop_stop()
        retained = paho(broker.mqtt_port, "crash-retain")
        retained.publish("crash-retained/state", b"kept", qos=1, retain=True).wait_for_publish(5)
        retained.disconnect()
        retained.loop_stop()

        up = threading.Event()
        up.set()
        q1 = NumberedPublisher(broker.mqtt_port, "crash-pub-1", "crash/q1", 1, up)
        q2 = NumberedPublisher(broker.mqtt_port, "crash-pub-2", "crash/q2", 2, up)
        rng = random.Random(1234)
        for _ in range(KILL_ROUNDS):
            time.sleep(rng.uniform(0.4, 1.2))
            up.clear()
            broker.kill()
            broker.start()
            up.set()
        time.sleep(0.5)
        q1.stop()
        q2.stop()
        q1.wait_acknowledged(30)
        q2.wait_acknowledged(30)
        acked = {"crash/q1": q1.acknowledged(), "crash/q2": q2.acknowledged()}
        sent = {"crash/q1": len(q1.sent), "crash/q2": len(q2.sent)}
        q1.close()
        q2.close()
        assert min(len(a) for a in acked.values()) > 200, acked  # the test did publish

        received = collect(broker.mqtt_port, "crash-sub", acked)
        for topic, numbers in received.items():
            missing = acked[topic] - set(numbers)
            assert not missing, f"{topic}: acknowledged but lost: {sorted(missing)[:20]}"
            assert set(numbers) <= set(range(sent[topic]))
            firsts = first_occurrences(numbers)
            assert firsts == sorted(firsts), f"{topic}: out of publish order"
        q2_numbers = received["crash/q2"]
        twice = sorted({n for n in q2_numbers if q2_numbers.count(n) > 1})
        assert not twice, (
            f"QoS 2 delivered twice: {twice} (at {[i for i, n in enumerate(q2_numbers) if n in twice]})"
        )

        late = paho(broker.mqtt_port, "crash-late")
        got: list[bytes] = []
        late.on_message = lambda c, u, m: got.append(m.payload)
        late.subscribe("crash-retained/#")
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        late.disconnect()
        late.loop_stop()
        assert got == [b"kept"]
    finally:
        broker.stop()


# -- half-done QoS 2 flows, with raw sockets --------------------------------------------


class Raw:
    """A blocking raw MQTT client (one socket)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), 5)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self, timeout: float = 5.0):
        return _read_packet(self.sock, timeout)

    def close(self) -> None:
        self.sock.close()


def raw_connect(port: int, client_id: str) -> tuple[Raw, bool]:
    client = Raw(port)
    client.send(connect_packet(client_id, clean=False))
    first, body = client.read()
    assert first == 0x20 and body[1] == 0, (first, body)
    return client, bool(body[0] & 1)


def test_half_done_qos2_flows_complete_after_a_kill(tmp_path):
    """A PUBLISH acknowledged with PUBREC and a delivery whose PUBREL was sent, then
    SIGKILL: after the restart the publisher's PUBREL gets PUBCOMP, the subscriber gets the
    same PUBREL again [MQTT-4.4.0-1], and the message is delivered exactly once."""
    broker = Broker(tmp_path, "--sys-interval", "0").start()
    try:
        sub, _ = raw_connect(broker.mqtt_port, "half-sub")
        sub.send(subscribe_packet(1, [("half/#", 2)]))
        assert sub.read()[0] == 0x90
        pub, _ = raw_connect(broker.mqtt_port, "half-pub")
        pub.send(publish_packet("half/a", b"once", qos=2, packet_id=10))
        assert pub.read() == (0x50, ack_packet(0x50, 10)[2:])  # PUBREC
        first, body = sub.read()
        assert first & 0xF0 == 0x30
        delivered_id = int.from_bytes(body[2 + len("half/a") : 4 + len("half/a")], "big")
        sub.send(ack_packet(0x50, delivered_id))  # PUBREC
        assert sub.read() == (0x62, delivered_id.to_bytes(2, "big"))  # PUBREL

        broker.kill()
        pub.close()
        sub.close()
        broker.start()

        pub, present = raw_connect(broker.mqtt_port, "half-pub")
        assert present
        pub.send(ack_packet(0x62, 10))  # PUBREL for the PUBREC it had
        assert pub.read() == (0x70, (10).to_bytes(2, "big"))  # PUBCOMP
        sub, present = raw_connect(broker.mqtt_port, "half-sub")
        assert present
        assert sub.read() == (0x62, delivered_id.to_bytes(2, "big"))  # the same PUBREL again
        sub.send(ack_packet(0x70, delivered_id))  # PUBCOMP
        extra = sub.read(1.0)
        assert extra is None, f"delivered again: {extra}"
    finally:
        broker.stop()


# -- restarts: expiry, wills, unusable files --------------------------------------------


def test_session_expiry_counts_while_the_broker_is_down(tmp_path):
    """A session that expired while the broker was stopped is gone [MQTT-3.1.2-23]; one that
    did not is back, with its subscription."""
    broker = Broker(tmp_path, "--sys-interval", "0").start()
    try:
        props = mqtt.Properties(mqtt.PacketTypes.CONNECT)
        props.SessionExpiryInterval = 2
        short = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="short", protocol=mqtt.MQTTv5)
        short.connect("127.0.0.1", broker.mqtt_port, clean_start=False, properties=props)
        short.loop_start()
        short.subscribe("x", qos=1)
        long_props = mqtt.Properties(mqtt.PacketTypes.CONNECT)
        long_props.SessionExpiryInterval = 3600
        keeper = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="long", protocol=mqtt.MQTTv5)
        keeper.connect("127.0.0.1", broker.mqtt_port, clean_start=False, properties=long_props)
        keeper.loop_start()
        time.sleep(0.5)
        for client in (short, keeper):
            client.disconnect()
            client.loop_stop()
        broker.stop()
        time.sleep(2.5)
        broker.start()
        assert "loaded 1 sessions" in "".join(broker.lines), "".join(broker.lines)

        for client_id, expect_present in (("short", False), ("long", True)):
            present: list[bool] = []
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
            )
            client.on_connect = lambda c, u, flags, rc, p, present=present: present.append(
                flags.session_present
            )
            client.connect("127.0.0.1", broker.mqtt_port, clean_start=False, properties=long_props)
            client.loop_start()
            deadline = time.monotonic() + 5
            while not present and time.monotonic() < deadline:
                time.sleep(0.05)
            client.disconnect()
            client.loop_stop()
            assert present == [expect_present], client_id
    finally:
        broker.stop()


def test_a_will_delayed_past_a_kill_is_published_by_the_restarted_broker(tmp_path):
    """MQTT 5 Will Delay Interval: the client's connection drops, the broker is killed
    before the delay ends; the restarted broker publishes the will once its time comes."""
    broker = Broker(tmp_path, "--sys-interval", "0").start()
    try:
        sock = socket.create_connection(("127.0.0.1", broker.mqtt_port), 5)
        will = Will("wills/dev", b"gone", 1, False, {Property.WILL_DELAY_INTERVAL: 2})
        sock.sendall(
            encode(
                Connect(
                    "dev", 5, "MQTT", will=will, properties={Property.SESSION_EXPIRY_INTERVAL: 60}
                ),
                5,
            )
        )
        assert _read_packet(sock, 5)[0] == 0x20
        sock.close()  # no DISCONNECT: the will is due in 2 s
        time.sleep(0.3)
        broker.kill()
        broker.start()
        got: list[tuple[str, bytes]] = []
        watcher = paho(broker.mqtt_port, "watcher")
        watcher.on_message = lambda c, u, m: got.append((m.topic, m.payload))
        watcher.subscribe("wills/#", qos=1)
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        watcher.disconnect()
        watcher.loop_stop()
        assert got == [("wills/dev", b"gone")]
    finally:
        broker.stop()


def run_twistd(cwd: Path, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    """Start ``twistd -n mqtt`` expecting it to refuse to start."""
    return subprocess.run(
        [
            str(TWISTD),
            "-n",
            "--pidfile=",
            "mqtt",
            "--mqtt",
            f"tcp:{free_port()}:interface=127.0.0.1",
            "--http",
            "none",
            *args,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_corrupt_store_stops_start_up_in_one_line_and_is_left_untouched(tmp_path):
    path = tmp_path / STORE
    garbage = os.urandom(8192)
    path.write_bytes(garbage)
    result = run_twistd(tmp_path)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert str(path) in output and "move-aside" in output, output
    assert "Traceback" not in output
    assert path.read_bytes() == garbage
    assert sorted(p.name for p in tmp_path.iterdir()) == [STORE]


def test_store_recover_move_aside_renames_a_corrupt_store_and_starts_empty(tmp_path):
    path = tmp_path / STORE
    garbage = os.urandom(8192)
    path.write_bytes(garbage)
    broker = Broker(tmp_path, "--store-recover", "move-aside", "--sys-interval", "0").start()
    try:
        log = "".join(broker.lines)
        assert "moved aside" in log, log
        (moved,) = [p for p in tmp_path.iterdir() if p.name.startswith(STORE + ".corrupt-")]
        assert moved.read_bytes() == garbage
        client = paho(broker.mqtt_port, "after")
        client.publish("r", b"x", qos=1, retain=True).wait_for_publish(5)
        client.disconnect()
        client.loop_stop()
    finally:
        broker.stop()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT topic FROM retained").fetchall() == [("r",)]


def test_a_store_from_a_newer_version_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / STORE
    broker = Broker(tmp_path, "--sys-interval", "0").start()
    broker.stop()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '99' WHERE name = 'schema_version'")
    before = path.read_bytes()
    result = run_twistd(tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "99" in output and "Traceback" not in output, output
    assert path.read_bytes() == before


def test_a_second_broker_on_the_same_store_stops_in_one_line(tmp_path):
    broker = Broker(tmp_path, "--sys-interval", "0").start()
    try:
        result = run_twistd(tmp_path)
        output = result.stdout + result.stderr
        assert result.returncode != 0
        assert "in use by another process" in output and "Traceback" not in output, output
        client = paho(broker.mqtt_port, "still-served")  # the first one is unharmed
        client.publish("x", b"1", qos=1).wait_for_publish(5)
        client.disconnect()
        client.loop_stop()
    finally:
        broker.stop()


@pytest.mark.parametrize("transport", ["websocket", "tls"])
def test_a_persistent_session_over_websocket_or_tls_survives_a_kill(tmp_path, transport):
    """paho 5.0 over WebSocket (/mqtt) or TLS: a session with Session Expiry 3600 and a
    QoS 2 subscription is away while 20 messages arrive; SIGKILL, restart; reconnecting
    over the same transport it gets each of them once, in order."""
    certs = make_certificates(tmp_path / "certs")
    tls_port = free_port()
    broker = Broker(
        tmp_path,
        "--sys-interval",
        "0",
        "--mqtt",
        f"ssl:{tls_port}:interface=127.0.0.1:privateKey={certs.server_key}:"
        f"certKey={certs.server_cert}",
    ).start()

    def subscriber() -> tuple[mqtt.Client, list[bytes], list[bool]]:
        got: list[bytes] = []
        present: list[bool] = []
        kind = "websockets" if transport == "websocket" else "tcp"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="far", protocol=mqtt.MQTTv5, transport=kind
        )
        if transport == "tls":
            client.tls_set(ca_certs=str(certs.ca))
        else:
            client.ws_set_options(path="/mqtt")
        client.on_message = lambda c, u, m: got.append(m.payload)
        client.on_connect = lambda c, u, flags, rc, p: present.append(flags.session_present)
        props = mqtt.Properties(mqtt.PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        port = broker.http_port if transport == "websocket" else tls_port
        client.connect("127.0.0.1", port, clean_start=False, properties=props)
        client.loop_start()
        return client, got, present

    try:
        client, _, _ = subscriber()
        client.subscribe("far/#", qos=2)
        time.sleep(0.5)
        client.disconnect()
        client.loop_stop()
        pub = paho(broker.mqtt_port, "far-pub")
        infos = [pub.publish("far/x", str(n), qos=2) for n in range(20)]
        for info in infos:
            info.wait_for_publish(5)
        pub.disconnect()
        pub.loop_stop()
        broker.kill()
        broker.start()
        client, got, present = subscriber()
        deadline = time.monotonic() + 10
        while len(got) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        client.disconnect()
        client.loop_stop()
        assert present == [True]
        assert got == [str(n).encode() for n in range(20)]
    finally:
        broker.stop()
