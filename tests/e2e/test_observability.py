"""$SYS topics, /metrics and logs, checked against known activity from real clients."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher

from .mqttclient import sleep
from .transports import serve  # noqa: F401  (fixture)

TCP = "tcp:0:interface=127.0.0.1"


async def known_activity(served, clients, publishers: int = 3, messages: int = 10):
    """``publishers`` clients each publish ``messages`` QoS 1 messages of 5 bytes to one subscriber."""
    port = served.mqtt[0]
    sub = clients(port, client_id="counter-sub")
    await sub.connect()
    await sub.subscribe("activity/#", qos=1)
    pubs = []
    for i in range(publishers):
        pub = clients(port, client_id=f"counter-pub-{i}")
        await pub.connect()
        pubs.append(pub)
    for pub in pubs:
        for _ in range(messages):
            await pub.publish("activity/x", b"12345", qos=1)
    for _ in range(publishers * messages):
        await sub.message()
    return sub


async def sys_values(served, clients) -> dict[str, str]:
    """Everything under $SYS/broker/ as a fresh subscriber sees it: retained at once."""
    watcher = clients(served.mqtt[0], client_id="sys-watcher")
    await watcher.connect()
    await watcher.subscribe("$SYS/broker/#")
    messages = [m for m in await watcher.messages_for(0.3) if m.retain]  # [MQTT-3.3.1-8]
    return {m.topic: m.payload.decode() for m in messages}


@pytest_twisted.ensureDeferred
async def test_sys_counters_match_activity(serve, clients):
    served = serve("--mqtt", TCP, "--sys-interval", "1")
    await known_activity(served, clients, publishers=3, messages=10)
    await sleep(1.1)  # one $SYS interval
    values = await sys_values(served, clients)
    assert values["$SYS/broker/version"].startswith("mqtt-twisted version")
    assert values["$SYS/broker/clients/connected"] == "4"  # the watcher connects after the tick
    assert values["$SYS/broker/clients/maximum"] == "4"
    assert values["$SYS/broker/publish/messages/received"] == "30"
    assert values["$SYS/broker/publish/messages/sent"] == "30"
    assert values["$SYS/broker/publish/bytes/received"] == "150"
    assert values["$SYS/broker/publish/messages/dropped"] == "0"
    assert values["$SYS/broker/subscriptions/count"] == "1"
    assert (
        int(values["$SYS/broker/messages/received"]) >= 4 + 1 + 30 + 30
    )  # CONNECT, SUB, PUB, PUBACK
    assert int(values["$SYS/broker/bytes/received"]) > 150
    assert values["$SYS/broker/uptime"].endswith(" seconds")
    assert float(values["$SYS/broker/load/publish/received/1min"]) > 0


@pytest_twisted.ensureDeferred
async def test_clients_cannot_publish_into_sys(serve, clients):
    served = serve("--mqtt", TCP, "--sys-interval", "1")
    port = served.mqtt[0]
    watcher = clients(port, client_id="w")
    await watcher.connect()
    await watcher.subscribe("$SYS/broker/version")
    (retained,) = await watcher.messages_for(0.5)
    faker = clients(port, client_id="faker")
    await faker.connect()
    await faker.publish("$SYS/broker/version", b"fake", qos=1)
    assert await watcher.messages_for(0.5) == []
    assert retained.payload.startswith(b"mqtt-twisted")


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


@pytest_twisted.ensureDeferred
async def test_metrics_match_activity(serve, clients):
    served = serve("--mqtt", TCP, "--http", TCP)
    await known_activity(served, clients, publishers=2, messages=64)
    samples = await deferToThread(scrape, served.http[0])
    assert samples["mqtt_publish_messages_received_total"] == 128
    assert samples["mqtt_publish_messages_sent_total"] == 128
    assert samples["mqtt_publish_bytes_received_total"] == 640
    assert samples["mqtt_clients_connected"] == 3
    assert samples["mqtt_subscriptions"] == 1
    assert samples["mqtt_connections_total"] == 3
    listener = f"mqtt_listener_connections{{listener={TCP}}}"
    assert samples[listener] == 3
    # one PUBLISH in 64 is timed
    assert samples["mqtt_publish_handling_seconds_count"] == 2
    assert samples["mqtt_publish_handling_seconds_sum"] > 0


@pytest_twisted.ensureDeferred
async def test_connect_disconnect_and_refusal_are_logged(serve, clients, raw):
    served = serve("--mqtt", TCP)
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        client = clients(served.mqtt[0], client_id="logged-client")
        await client.connect(keepalive=30)
        client.disconnect()
        refused = raw(served.mqtt[0])
        refused.send(bytes.fromhex("100c00044d5154540602003c0000"))  # CONNECT level 6
        await refused.read(4)
        await sleep(0.3)
    finally:
        globalLogPublisher.removeObserver(events.append)
    connects = [e for e in events if e.get("client_id") == "logged-client" and "version" in e]
    assert connects and connects[0]["version"] == "3.1.1" and connects[0]["keep_alive"] == 30
    disconnects = [e for e in events if e.get("client_id") == "logged-client" and "reason" in e]
    assert disconnects[0]["reason"] == "client sent DISCONNECT"
    assert any("refused connection" in e.get("log_format", "") for e in events)


def test_json_log_format_from_twistd(tmp_path):
    twistd = Path(sys.executable).parent / "twistd"
    process = subprocess.Popen(
        [
            str(twistd),
            "-n",
            "--pidfile=",
            "mqtt",
            "--log-format",
            "json",
            "--mqtt",
            "tcp:0:interface=127.0.0.1",
            "--http",
            "none",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for _ in range(50):
            line = process.stdout.readline()
            if "listening on" in line:
                break
        record = json.loads(line)
        assert record["level"] == "info"
        assert record["namespace"] == "mqtt_twisted.tap"
        assert record["description"] == "tcp:0:interface=127.0.0.1"
        assert "listening on 127.0.0.1:" in record["message"]
    finally:
        process.terminate()
        process.wait(10)


@pytest_twisted.ensureDeferred
async def test_exceeded_limits_are_counted_and_logged_once_per_burst(serve, raw):
    """--max-connections 2: three more connections are closed at once; /metrics counts 3,
    the log has one line for the burst."""
    served = serve("--mqtt", TCP, "--http", TCP, "--max-connections", "2")
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        sockets = [raw(served.mqtt[0]) for _ in range(5)]
        await sleep(0.5)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert len(sockets) == 5
    samples = await deferToThread(scrape, served.http[0])
    assert samples["mqtt_connections_refused_total"] == 3
    lines = [e for e in events if "max-connections" in str(e.get("why", ""))]
    assert len(lines) == 1
