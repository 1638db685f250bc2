"""Rough QoS 0 throughput of the broker over TCP, TLS, WebSocket and WSS.

Not a test: run it by hand (``.venv/bin/python bench/transports.py [--messages N]``).
It generates throw-away certificates in a temporary directory, starts the real
``twistd -n mqtt`` with one listener per transport, and for each transport has one paho-mqtt
publisher send N QoS 0 messages of 64 bytes to one paho-mqtt subscriber on the same transport,
then prints messages/second delivered (first publish -> last delivery). Bounded: every
transport gets at most ``--seconds`` seconds; the whole run stays under about 20 s.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from certs import make_certificates  # noqa: E402  (tests/e2e/certs.py, no test machinery)

TWISTD = Path(sys.executable).parent / "twistd"
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_broker(directory: Path, certs) -> tuple[subprocess.Popen, dict[str, int]]:
    ports = {kind: free_port() for kind in ("tcp", "tls", "ws", "wss")}
    tls = f"interface={HOST}:privateKey={certs.server_key}:certKey={certs.server_cert}"
    process = subprocess.Popen(
        [
            str(TWISTD),
            "-n",
            "--pidfile=",
            "mqtt",
            "--mqtt",
            f"tcp:{ports['tcp']}:interface={HOST}",
            "--mqtt",
            f"ssl:{ports['tls']}:{tls}",
            "--http",
            f"tcp:{ports['ws']}:interface={HOST}",
            "--http",
            f"ssl:{ports['wss']}:{tls}",
            "--max-queued-messages",
            "0",
        ],  # no drops: measure delivery, not the queue limit
        cwd=directory,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    listening = 0
    deadline = time.monotonic() + 10
    while listening < 4 and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        listening += "listening on" in line
    if listening < 4:
        process.kill()
        raise SystemExit("the broker did not start")
    # keep draining its log so it never blocks on a full pipe
    threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
    return process, ports


def client(kind: str, port: int, client_id: str, certs) -> mqtt.Client:
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        transport="websockets" if kind in ("ws", "wss") else "tcp",
    )
    if kind in ("tls", "wss"):
        c.tls_set(ca_certs=str(certs.ca))
    connected = threading.Event()
    c.on_connect = lambda *args: connected.set()
    c.connect(HOST, port, keepalive=60)
    c.loop_start()
    if not connected.wait(5):
        raise SystemExit(f"{kind}: no CONNACK")
    return c


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(kind: str, port: int, certs, count: int, seconds: float) -> tuple[int, float]:
    """(messages delivered, messages/second) for one transport."""
    received = 0
    last = 0.0
    done = threading.Event()
    subscribed = threading.Event()

    def on_message(c, userdata, message) -> None:
        nonlocal received, last
        received += 1
        last = time.perf_counter()
        if received == count:
            done.set()

    sub = client(kind, port, f"bench-sub-{kind}", certs)
    sub.on_message = on_message
    sub.on_subscribe = lambda *args: subscribed.set()
    sub.subscribe("bench/#", 0)
    subscribed.wait(5)
    pub = client(kind, port, f"bench-pub-{kind}", certs)
    payload = b"x" * 64
    start = time.perf_counter()
    for _ in range(count):
        pub.publish("bench/data", payload, 0)
    done.wait(max(0.1, seconds - (time.perf_counter() - start)))
    for c in (pub, sub):
        c.disconnect()
        c.loop_stop()
    elapsed = (last or time.perf_counter()) - start
    return received, (received / elapsed if elapsed > 0 else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=4.0, help="limit per transport")
    args = parser.parse_args()
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mqtt-bench-") as tmp:
        certs = make_certificates(Path(tmp) / "certs")
        process, ports = start_broker(Path(tmp), certs)
        os.sched_setaffinity(process.pid, {0})  # broker on one core, paho on the other
        os.sched_setaffinity(0, {1})
        try:
            rows = []
            for kind in ("tcp", "tls", "ws", "wss"):
                before = cpu_seconds(process.pid)
                delivered, rate = measure(kind, ports[kind], certs, args.messages, args.seconds)
                used = cpu_seconds(process.pid) - before
                rows.append((kind, delivered, rate, used * 1e6 / max(delivered, 1)))
        finally:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
    print(
        f"QoS 0, 64-byte payloads, 1 paho publisher -> broker -> 1 paho subscriber, "
        f"{args.messages} messages per transport"
    )
    print("msg/s is limited by paho; broker CPU µs/msg (connect, subscribe and the whole")
    print("publish -> deliver path, divided by messages delivered) is the transport's cost")
    print(f"{'transport':<10} {'delivered':>10} {'msg/s':>10} {'broker CPU µs/msg':>18}")
    for kind, delivered, rate, cost in rows:
        print(f"{kind:<10} {delivered:>10} {rate:>10,.0f} {cost:>18.1f}")
    print(f"(total run {time.monotonic() - began:.1f} s)")


if __name__ == "__main__":
    main()
