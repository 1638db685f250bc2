"""Security as a user runs it: `twistd -n mqtt` with --password-file / --acl-file, SIGHUP
reloads, and the refusal to start a listener open to the network without authentication."""

from __future__ import annotations

import queue
import signal
import subprocess
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from .test_twistd import TWISTD, free_port, twistd  # noqa: F401  (pytest fixture)

PASSWD = TWISTD.parent / "mqtt-twisted-passwd"


def connack_of(port: int, username: str, password: str) -> str:
    """Connect with paho 3.1.1 and return the CONNACK reason as text."""
    result: queue.Queue = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"c-{username}")
    client.username_pw_set(username, password)
    client.on_connect = lambda c, u, flags, rc, props: result.put(str(rc))
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        return result.get(timeout=15)
    finally:
        client.disconnect()
        client.loop_stop()


def wait_for_log(process: subprocess.Popen, text: str, seconds: float = 15) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if text in line:
            return line
    raise AssertionError(f"no log line with {text!r}")


def test_password_file_written_by_our_tool_and_reloaded_on_sighup(twistd, tmp_path):
    """mqtt-twisted-passwd writes the file; SIGHUP picks up a new user without dropping
    connections; a broken file is logged and the old one kept."""
    path = tmp_path / "passwords"
    subprocess.run(
        [str(PASSWD), "-c", "-b", str(path), "alice", "wonderland"], check=True, timeout=30
    )
    assert path.read_text().startswith("alice:$7$1000$")
    port = free_port()
    broker = twistd(
        "--mqtt", f"tcp:{port}:interface=127.0.0.1", "--http", "none", "--password-file", str(path)
    )
    assert connack_of(port, "alice", "wonderland") == "Success"
    assert connack_of(port, "bob", "builder") == "Bad user name or password"

    connected = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="stays")
    connected.username_pw_set("alice", "wonderland")
    disconnects: queue.Queue = queue.Queue()
    connected.on_disconnect = lambda c, u, flags, rc, props: disconnects.put(rc)
    connected.connect("127.0.0.1", port)
    connected.loop_start()
    try:
        subprocess.run([str(PASSWD), "-b", str(path), "bob", "builder"], check=True, timeout=30)
        broker.send_signal(signal.SIGHUP)
        wait_for_log(broker, "password file reloaded")
        assert connack_of(port, "bob", "builder") == "Success"
        path.write_text("garbage without a colon\n")
        broker.send_signal(signal.SIGHUP)
        line = wait_for_log(broker, "not reloaded")
        assert "line 1" in line
        assert connack_of(port, "bob", "builder") == "Success"  # the old file still holds
        assert disconnects.empty()  # nobody was dropped by the reloads
    finally:
        connected.disconnect()
        connected.loop_stop()


def test_open_listener_without_authentication_does_not_start(tmp_path):
    """A listener beyond loopback with no password file, no required client certificate and
    no explicit --allow-anonymous yes stops start-up with one line saying what to add."""
    result = subprocess.run(
        [str(TWISTD), "-n", "--pidfile=", "mqtt", "--mqtt", f"tcp:{free_port()}", "--http", "none"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Traceback" not in output
    (line,) = [x for x in output.splitlines() if "beyond this machine" in x]
    assert "--password-file" in line and "--allow-anonymous yes" in line


def test_acl_file_through_twistd(twistd, tmp_path):
    path = tmp_path / "passwords"
    subprocess.run(
        [str(PASSWD), "-c", "-b", str(path), "alice", "wonderland"], check=True, timeout=30
    )
    acl = tmp_path / "acl"
    acl.write_text("user alice\ntopic read a/#\n")
    port = free_port()
    twistd(
        "--mqtt",
        f"tcp:{port}:interface=127.0.0.1",
        "--http",
        "none",
        "--password-file",
        str(path),
        "--acl-file",
        str(acl),
    )
    subscribed: queue.Queue = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="acl", protocol=mqtt.MQTTv5)
    client.username_pw_set("alice", "wonderland")
    client.on_subscribe = lambda c, u, mid, codes, props: subscribed.put(codes)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.subscribe([("a/#", 1), ("b/#", 1)])
        codes = subscribed.get(timeout=10)
        assert [c.value for c in codes] == [1, 0x87]
    finally:
        client.disconnect()
        client.loop_stop()


def rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_default_limits_keep_memory_bounded_with_large_messages(twistd):
    """10 offline persistent sessions, each sent 200 distinct 1 MiB QoS 1 messages (2 GiB in
    all): with the default --max-queued-bytes the broker stays well under 1 GiB, and every
    PUBLISH is still acknowledged (what does not fit is dropped and counted)."""
    import socket
    import threading

    from mqtt_twisted.packets import Connect, Publish, Subscribe, SubscriptionRequest, encode

    port = free_port()
    broker = twistd(
        "--mqtt", f"tcp:{port}:interface=127.0.0.1", "--http", "none", "--sys-interval", "0"
    )
    for i in range(10):  # subscribe, then go away (clean session 0: the session stays)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(encode(Connect(f"away-{i}", clean_start=False), 4))
            sock.recv(4)
            sock.sendall(encode(Subscribe(1, [SubscriptionRequest(f"mem/{i}", 1)]), 4))
            sock.recv(5)
    before = rss_mib(broker.pid)
    acks = 0
    done = threading.Event()

    publisher = socket.create_connection(("127.0.0.1", port), timeout=30)
    publisher.sendall(encode(Connect("big-publisher"), 4))
    assert publisher.recv(4) == b"\x20\x02\x00\x00"

    def read_acks() -> None:
        nonlocal acks
        buffer = b""
        while acks < 2000:
            data = publisher.recv(65536)
            if not data:
                break
            buffer += data
            while len(buffer) >= 4:
                assert buffer[0] == 0x40
                acks += 1
                buffer = buffer[4:]
        done.set()

    reader = threading.Thread(target=read_acks, daemon=True)
    reader.start()
    peak = before
    try:
        for n in range(200):
            for i in range(10):
                payload = (b"%06d-%d-" % (n, i)).ljust(1 << 20, b"x")  # distinct, 1 MiB
                packet_id = (n * 10 + i) % 65535 + 1
                publisher.sendall(encode(Publish(f"mem/{i}", payload, 1, packet_id=packet_id), 4))
            if n % 20 == 0:
                peak = max(peak, rss_mib(broker.pid))
        assert done.wait(120), f"only {acks} of 2000 PUBLISHes acknowledged"
        peak = max(peak, rss_mib(broker.pid))
    finally:
        publisher.close()
    assert acks == 2000
    assert peak < 1024, f"broker RSS reached {peak:.0f} MiB"
    assert peak - before < 10 * 64 + 200  # 64 MiB a session, plus working memory
