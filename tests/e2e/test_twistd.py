"""The broker started exactly as a user starts it: the real `twistd` of this environment."""

from __future__ import annotations

import queue
import socket
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

TWISTD = Path(sys.executable).parent / "twistd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def twistd(tmp_path):
    """Start `twistd -n mqtt ARGS...`; wait until it logs that it listens; stop it at teardown."""
    processes = []

    def start(*args: str) -> subprocess.Popen:
        process = subprocess.Popen(
            [str(TWISTD), "-n", "--pidfile=", "mqtt", *args],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        processes.append(process)
        deadline = time.monotonic() + 20
        lines = []
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "listening on" in line:
                return process
        process.kill()
        raise AssertionError("twistd did not start:\n" + "".join(lines))

    yield start
    for process in processes:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def test_plugin_is_listed_by_twistd():
    result = subprocess.run([str(TWISTD), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert "mqtt" in result.stdout.split("Commands:")[1]


def test_help_lists_every_option():
    result = subprocess.run(
        [str(TWISTD), "mqtt", "--help"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0
    for option in (
        "--mqtt",
        "--max-keepalive",
        "--max-inflight-messages",
        "--max-queued-messages",
        "--max-packet-size",
        "--max-qos",
        "--retain-available",
        "--allow-zero-length-clientid",
        "--connect-timeout",
        "--persistent-client-expiration",
    ):
        assert option in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--max-qos", "3"], "3 is not between 0 and 2"),
        (["--max-inflight-messages", "many"], "invalid literal"),
        (["--retain-available", "maybe"], "expected yes or no"),
        (["--persistent-client-expiration", "2x"], "is not a duration"),
        (["--mqtt", "nonsense:1883"], "bad --mqtt endpoint"),
    ],
)
def test_bad_option_value_gives_one_line_error(args, message):
    result = subprocess.run(
        [str(TWISTD), "mqtt", *args], capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert message in output
    assert "Traceback" not in output


def test_broker_run_by_twistd_serves_paho_clients(twistd):
    port = free_port()
    twistd("--mqtt", f"tcp:{port}:interface=127.0.0.1", "--http", "none", "--max-qos", "1")
    received: queue.Queue = queue.Queue()
    subscribed: queue.Queue = queue.Queue()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="twistd-sub")
    sub.on_message = lambda c, u, msg: received.put(msg)
    sub.on_subscribe = lambda c, u, mid, codes, props: subscribed.put(codes)
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    try:
        sub.subscribe("plant/#", qos=2)
        assert [code.value for code in subscribed.get(timeout=5)] == [1]  # --max-qos 1
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="twistd-pub")
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        pub.publish("plant/pump", b"on", qos=1).wait_for_publish(5)
        message = received.get(timeout=5)
        assert (message.topic, message.payload, message.qos) == ("plant/pump", b"on", 1)
        pub.disconnect()
        pub.loop_stop()
    finally:
        sub.disconnect()
        sub.loop_stop()


def test_listen_failure_is_one_clear_error(twistd):
    port = free_port()
    first = twistd("--mqtt", f"tcp:{port}:interface=127.0.0.1", "--http", "none")
    second = subprocess.run(
        [
            str(TWISTD),
            "-n",
            "--pidfile=",
            "mqtt",
            "--mqtt",
            f"tcp:{port}:interface=127.0.0.1",
            "--http",
            "none",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode == 1
    assert f"cannot listen on tcp:{port}" in second.stdout
    assert "Traceback" not in second.stdout + second.stderr
    assert first.poll() is None


def test_stopping_the_broker_tells_mqtt5_clients(twistd):
    """SIGTERM: an MQTT 5 client gets DISCONNECT 0x8B (server shutting down)."""
    port = free_port()
    process = twistd("--mqtt", f"tcp:{port}:interface=127.0.0.1", "--http", "none")
    reasons: queue.Queue = queue.Queue()
    connected: queue.Queue = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="v5-stop", protocol=mqtt.MQTTv5)
    client.on_connect = lambda c, u, flags, rc, props: connected.put(rc)
    client.on_disconnect = lambda c, u, flags, rc, props: reasons.put(rc)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert connected.get(timeout=5) == 0
        process.terminate()
        assert reasons.get(timeout=10).value == 0x8B
        process.wait(10)  # twistd ends by re-raising SIGTERM, as Twisted does
    finally:
        client.loop_stop()
