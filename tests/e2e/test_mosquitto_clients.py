"""Mosquitto's own command-line clients (Debian package mosquitto-clients) against the broker.

These tests fail (not skip) when mosquitto_pub / mosquitto_sub are missing: they are a
declared test dependency (README, .ci/run).
"""

import os
import shutil
import subprocess

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue

from .mqttclient import nothing_in, sleep

TOOL_TIMEOUT = 10


def tool(name: str) -> str:
    path = shutil.which(name) or (
        f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None
    )
    assert path, f"{name} not found: install the Debian package mosquitto-clients"
    return path


def mosquitto_sub(port: int, *args: str):
    """Run mosquitto_sub without blocking the reactor; Deferred of (stdout, stderr, status)."""
    return getProcessOutputAndValue(
        tool("mosquitto_sub"),
        ["-h", "127.0.0.1", "-p", str(port), "-W", str(TOOL_TIMEOUT), *args],
        env={},
    )


async def mosquitto_pub(port: int, *args: str, stdin: bytes | None = None):
    result = await deferToThread(
        subprocess.run,
        [tool("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(port), *args],
        input=stdin,
        capture_output=True,
        timeout=TOOL_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    return result


async def until_subscribed(broker, client_id: str, topic_filter: str, timeout: float = 5.0):
    """Wait (bounded) until the broker holds ``topic_filter`` for ``client_id``."""
    for _ in range(int(timeout / 0.02)):
        session = broker.broker.sessions.get(client_id)
        if session is not None and topic_filter in session.subscriptions:
            return
        await sleep(0.02)
    pytest.fail(f"{client_id} did not subscribe to {topic_filter} within {timeout} s")


async def connected(clients, port, client_id):
    client = clients(port, client_id=client_id)
    await client.connect()
    return client


def test_mosquitto_clients_are_installed():
    for name in ("mosquitto_pub", "mosquitto_sub"):
        tool(name)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("version", ["mqttv311", "mqttv31"])
async def test_mosquitto_sub_receives_paho_publish(broker, clients, version):
    running = mosquitto_sub(
        broker.port, "-V", version, "-i", "msub", "-q", "1", "-C", "1", "-t", "cli/sensors/+", "-v"
    )
    await until_subscribed(broker, "msub", "cli/sensors/+")
    pub = await connected(clients, broker.port, "pub")
    await pub.publish("cli/sensors/kitchen", b"21.5", qos=1)
    out, err, status = await running
    assert status == 0, err
    assert out == b"cli/sensors/kitchen 21.5\n"


@pytest_twisted.ensureDeferred
async def test_mosquitto_pub_retained_reaches_paho(broker, clients):
    # [MQTT-3.3.1-5] stored with its QoS, [MQTT-3.3.1-8] sent with RETAIN 1 to a new subscriber
    await mosquitto_pub(broker.port, "-i", "mpub", "-q", "1", "-r", "-t", "cli/door", "-m", "open")
    sub = await connected(clients, broker.port, "sub")
    await sub.subscribe("cli/door", 1)
    message = await sub.message()
    assert (message.topic, message.payload, message.qos, message.retain) == (
        "cli/door",
        b"open",
        1,
        True,
    )


@pytest_twisted.ensureDeferred
async def test_mosquitto_pub_null_message_clears_retained(broker, clients):
    # [MQTT-3.3.1-10] mosquitto_pub -r -n sends a zero-length retained message: it deletes
    await mosquitto_pub(broker.port, "-r", "-t", "cli/gone", "-m", "x")
    await mosquitto_pub(broker.port, "-r", "-n", "-t", "cli/gone")
    sub = await connected(clients, broker.port, "sub")
    await sub.subscribe("cli/#", 1)
    assert await nothing_in(sub.messages, 0.5)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("version", ["mqttv311", "mqttv31"])
async def test_mosquitto_pub_qos2_reaches_paho(broker, clients, version):
    # the QoS 2 handshake with libmosquitto as publisher: mosquitto_pub exits 0 only after
    # PUBCOMP; delivered at QoS 2 exactly once [MQTT-4.3.3-2]
    sub = await connected(clients, broker.port, "sub")
    await sub.subscribe("cli/q2", 2)
    await mosquitto_pub(broker.port, "-V", version, "-q", "2", "-t", "cli/q2", "-m", "twice?")
    messages = await sub.messages_for(0.5)
    assert [(m.payload, m.qos, m.retain) for m in messages] == [(b"twice?", 2, False)]


@pytest_twisted.ensureDeferred
async def test_mosquitto_sub_gets_retained_with_retained_only(broker, clients):
    # [MQTT-3.3.1-6], [MQTT-3.3.1-8]: a new subscription gets every matching retained message,
    # flagged retained (--retained-only prints only those)
    pub = await connected(clients, broker.port, "pub")
    await pub.publish("cli/ret/b", b"B", qos=0, retain=True)
    await pub.publish("cli/ret/a", b"A", qos=1, retain=True)  # PUBACK: both are stored
    out, err, status = await mosquitto_sub(
        broker.port, "--retained-only", "-C", "2", "-t", "cli/ret/#", "-v"
    )
    assert status == 0, err
    assert sorted(out.decode().splitlines()) == ["cli/ret/a A", "cli/ret/b B"]


@pytest_twisted.ensureDeferred
async def test_mosquitto_pub_lines_arrive_in_order(broker, clients):
    # mosquitto_pub -l sends one message per stdin line; QoS 1 order kept [MQTT-4.6.0-6]
    sub = await connected(clients, broker.port, "sub")
    await sub.subscribe("cli/lines", 1)
    lines = [f"line {i}" for i in range(50)]
    await mosquitto_pub(
        broker.port, "-q", "1", "-t", "cli/lines", "-l", stdin="\n".join(lines).encode() + b"\n"
    )
    received = [(await sub.message()).payload.decode() for _ in lines]
    assert received == lines


@pytest_twisted.ensureDeferred
async def test_mosquitto_sub_and_pub_together(broker):
    # both of Mosquitto's tools, no paho: a wildcard subscription sees two messages
    running = mosquitto_sub(broker.port, "-i", "msub2", "-C", "2", "-t", "cli/pair/#", "-v")
    await until_subscribed(broker, "msub2", "cli/pair/#")
    await mosquitto_pub(broker.port, "-t", "cli/pair/one", "-m", "1", "-q", "1")
    await mosquitto_pub(broker.port, "-t", "cli/pair/two/deep", "-m", "2", "-q", "1")
    out, err, status = await running
    assert status == 0, err
    assert out.decode().splitlines() == ["cli/pair/one 1", "cli/pair/two/deep 2"]
