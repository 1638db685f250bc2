"""persist-restart: how long a broker takes to restart with a large store.

``python bench/run.py --only persist-restart``: restart time. One broker (ours with sqlite,
synchronous full; Mosquitto with persistence for comparison) gets 10,000 persistent
sessions (each: CONNECT clean session 0, SUBSCRIBE ``r/<n>`` at QoS 1, DISCONNECT) and
100,000 queued QoS 1 messages (10 to each topic), is stopped with SIGTERM and started again
on the same file. Shown: how fast the fill went, the store's size, how long the stop took,
the time from process start until the listener accepts a connection (empty store and
full), ours' own log line ``store ...: loaded N sessions, M queued or in-flight messages
... in X s``, RSS after the restart, and a sample of sessions reconnected (clean session 0,
no SUBSCRIBE) that must get their 10 messages back.
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brokerprobe import (
    REFERENCE,
    files_size,
    free_port,
    fsync_probe,
    log_offset,
    make_broker,
    mib,
    rss_mib,
    stop_broker,
    store_dir_for,
    suspect_lines,
    written_bytes,
)
from overload import fmt as fmt_value
from wire import (
    DISCONNECT,
    connect_packet,
    open_client,
    publish_packet,
    subscribe_packet,
)

RESTART_SESSIONS = 10_000
RESTART_PER_SESSION = 10
RESTART_SAMPLE = 200
#: sessions being set up at once, and QoS 1 PUBLISHes unacknowledged at once, in the fill
FILL_CONCURRENCY = 200
FILL_WINDOW = 1_000
#: how long a restart may take before it counts as failed
RESTART_LIMIT = 300.0
#: the broker's own line (mqtt_twisted/tap.py) once the store is loaded
LOADED = re.compile(
    r"store (?P<store>.+?): loaded (?P<sessions>\d+) sessions, (?P<messages>\d+) queued or "
    r"in-flight messages and (?P<retained>\d+) retained messages in (?P<seconds>[\d.]+) s"
)


def restart_payload(n: int, i: int) -> bytes:
    """Message ``i`` of session ``n``: both numbers, then padding (64 bytes)."""
    return b"R" + n.to_bytes(4, "little") + i.to_bytes(4, "little") + b"r" * 55


@dataclass
class _Client:
    sock: socket.socket
    index: int
    buf: bytearray = field(default_factory=bytearray)
    phase: str = "connecting"
    since: float = 0.0


def make_sessions(port: int, count: int, deadline: float) -> tuple[int, int]:
    """``count`` persistent sessions ``r<n>``, each subscribed to ``r/<n>`` at QoS 1 and left
    (CONNECT clean session 0 + SUBSCRIBE, pipelined; once CONNACK and SUBACK are back,
    DISCONNECT; closed when the broker closes). FILL_CONCURRENCY clients at a time, non-blocking
    sockets. Returns (sessions made, failures)."""
    sel = selectors.DefaultSelector()
    made = failed = 0
    nxt = 0
    live = 0
    expected = b"\x20\x02\x00\x00\x90\x03\x00\x01\x01"

    def finish(c: _Client, ok: bool) -> None:
        nonlocal made, failed, live
        sel.unregister(c.sock)
        c.sock.close()
        live -= 1
        if ok:
            made += 1
        else:
            failed += 1

    while (nxt < count or live) and time.monotonic() < deadline:
        while nxt < count and live < FILL_CONCURRENCY:
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            c = _Client(s, nxt, since=time.monotonic())
            sel.register(s, selectors.EVENT_WRITE, c)
            nxt += 1
            live += 1
        now = time.monotonic()
        for key, _ in sel.select(0.5):
            c: _Client = key.data
            s = c.sock
            if c.phase == "connecting":
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    finish(c, False)
                    continue
                s.send(
                    connect_packet(f"r{c.index}", clean=False)
                    + subscribe_packet(1, f"r/{c.index}", 1)
                )
                c.phase = "handshake"
                sel.modify(s, selectors.EVENT_READ, c)
                continue
            try:
                data = s.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if c.phase == "handshake":
                c.buf += data
                if len(c.buf) >= len(expected):
                    if bytes(c.buf[: len(expected)]) != expected:
                        print(f"restart fill: r{c.index}: {bytes(c.buf)!r}", flush=True)
                        finish(c, False)
                        continue
                    s.send(DISCONNECT)
                    c.phase, c.since = "leaving", now
                elif not data:
                    finish(c, False)
            elif not data:  # leaving: the broker closed the connection
                finish(c, True)
        for key in list(sel.get_map().values()):  # stuck clients
            c = key.data
            if now - c.since > 10:
                finish(c, c.phase == "leaving")
    for key in list(sel.get_map().values()):
        finish(key.data, False)
    return made, failed


def fill_messages(port: int, sessions: int, per: int, deadline: float) -> tuple[int, int]:
    """``per`` QoS 1 messages to each topic ``r/<n>`` from one client, FILL_WINDOW
    unacknowledged at most. Returns (sent, acknowledged)."""
    total = sessions * per
    s = open_client(port, f"rfill-{os.getpid()}")
    s.settimeout(0.5)
    sent = got = 0
    carry = 0
    try:
        while got < total and time.monotonic() < deadline:
            k = min(FILL_WINDOW - (sent - got), total - sent)
            if k > 0:
                s.sendall(
                    b"".join(
                        publish_packet(
                            f"r/{m % sessions}",
                            restart_payload(m % sessions, m // sessions),
                            1,
                            m % 65535 + 1,
                        )
                        for m in range(sent, sent + k)
                    )
                )
                sent += k
            try:
                data = s.recv(65536)
            except TimeoutError:
                continue
            if not data:
                break
            start = (4 - carry) % 4
            if data[start::4].count(0x40) != len(data[start::4]):
                print("restart fill: unexpected packet from the broker", flush=True)
            total_bytes = carry + len(data)
            got += total_bytes // 4
            carry = total_bytes % 4
    finally:
        s.close()
    return sent, got


def body_at(packet: bytes | bytearray) -> tuple[int, int] | None:
    """Where a packet's variable header starts and its remaining length (None: incomplete)."""
    length, shift = 0, 0
    for at in range(1, min(5, len(packet))):
        length |= (packet[at] & 0x7F) << shift
        shift += 7
        if not packet[at] & 0x80:
            return at + 1, length
    return None


def read_packets(s: socket.socket, buf: bytearray, want: int, until: float) -> list[bytes]:
    """Up to ``want`` whole packets from ``s`` (``buf``: bytes carried over), by ``until``."""
    packets: list[bytes] = []
    while len(packets) < want and time.monotonic() < until:
        while len(packets) < want:
            head = body_at(buf)
            if head is None or len(buf) < head[0] + head[1]:
                break
            end = head[0] + head[1]
            packets.append(bytes(buf[:end]))
            del buf[:end]
        if len(packets) >= want:
            break
        try:
            data = s.recv(65536)
        except TimeoutError:
            continue
        if not data:
            break
        buf += data
    return packets


def check_sessions(port: int, indexes: list[int], per: int) -> dict[str, int]:
    """Reconnect sessions ``r<n>`` (clean session 0, no SUBSCRIBE), read and acknowledge
    their messages; count what came back."""
    out = {"present": 0, "complete": 0, "messages": 0, "missing": 0, "wrong": 0}
    for n in indexes:
        try:
            s = open_client(port, f"r{n}", None, 1, clean=False, timeout=5.0)
        except (OSError, ConnectionError) as error:
            print(f"restart check r{n}: {error}", flush=True)
            out["missing"] += per
            continue
        try:
            s.settimeout(0.2)
            out["present"] += 1  # CONNACK said session present (open_client checks)
            got = set()
            for p in read_packets(s, bytearray(), per, time.monotonic() + 5):
                if p[0] & 0xF0 != 0x30:
                    out["wrong"] += 1
                    continue
                at = body_at(p)[0]
                tlen = (p[at] << 8) | p[at + 1]
                topic = p[at + 2 : at + 2 + tlen].decode()
                pid = p[at + 2 + tlen : at + 4 + tlen]
                payload = p[at + 4 + tlen :]
                s.sendall(b"\x40\x02" + pid)
                if topic != f"r/{n}" or payload[:1] != b"R":
                    out["wrong"] += 1
                    continue
                if int.from_bytes(payload[1:5], "little") != n:
                    out["wrong"] += 1
                    continue
                got.add(int.from_bytes(payload[5:9], "little"))
            out["messages"] += len(got)
            out["missing"] += per - len(got & set(range(per)))
            out["complete"] += got == set(range(per))
            s.sendall(DISCONNECT)
        finally:
            s.close()
    return out


def wait_listening(broker, began: float, limit: float) -> float:
    """Seconds from ``began`` until ``broker`` accepts a TCP connection (NaN: not by limit)."""
    end = began + limit
    while time.monotonic() < end:
        if broker.process.poll() is not None:
            return float("nan")
        try:
            socket.create_connection(("127.0.0.1", broker.port), 0.5).close()
            return time.monotonic() - began
        except OSError:
            time.sleep(0.01)
    return float("nan")


def start_timed(broker, limit: float = RESTART_LIMIT) -> float:
    """Start ``broker`` (run.Broker); seconds from its process start until it listened."""
    broker.start_limit = limit
    broker.start()
    return broker.listening_after


def restart(broker_class, name: str, tmp: Path) -> dict[str, Any]:
    """Fill one broker with persistent sessions and queued messages, restart it, compare."""
    store_dir = store_dir_for(tmp, f"{name}-restart")
    sessions, per = RESTART_SESSIONS, RESTART_PER_SESSION
    port = free_port()
    broker = make_broker(broker_class, name, tmp, no_limits=True, store_dir=store_dir)
    broker.fixed_port = port
    r: dict[str, Any] = {"broker": name}
    offset = log_offset(broker)
    try:
        r["listening after, empty store s"] = start_timed(broker)
        began = time.monotonic()
        made, failed = make_sessions(broker.port, sessions, began + 120)
        took = time.monotonic() - began
        r["sessions made"] = made
        r["session fill failures"] = failed
        r["sessions made per s"] = made / took if took else float("nan")
        began = time.monotonic()
        sent, acked = fill_messages(broker.port, made, per, began + 180)
        took = time.monotonic() - began
        r["messages acked"] = acked
        r["messages unacked"] = sent - acked
        r["messages acked per s"] = acked / took if took else float("nan")
        r["broker wrote MiB (fill)"] = mib(written_bytes(broker.pid))
        r["RSS before stop MiB"] = rss_mib(broker.pid)
        r["store MiB before stop"] = mib(sum(files_size(store_dir).values()))
        r["stop s (SIGTERM to exit)"], code = stop_broker(broker)
        r["exit status"] = code
        sizes = files_size(store_dir)
        r["store MiB after stop"] = mib(sum(sizes.values()))
        r["files after stop"] = ", ".join(f"{k} {mib(v):.1f} MiB" for k, v in sorted(sizes.items()))
        log_from = log_offset(broker)
        r["listening after restart s"] = start_timed(broker)
        r["restart minus empty start s"] = (
            r["listening after restart s"] - r["listening after, empty store s"]
        )
        time.sleep(0.5)
        r["RSS after restart MiB"] = rss_mib(broker.pid)
        with open(broker.log_path, "rb") as f:
            f.seek(log_from)
            found = LOADED.findall(f.read().decode(errors="replace"))
        if found:
            _store, s_, m_, ret, secs = found[-1]
            r["log: loaded sessions"] = int(s_)
            r["log: loaded messages"] = int(m_)
            r["log: loaded retained"] = int(ret)
            r["log: load s"] = float(secs)
        step = max(1, made // RESTART_SAMPLE)
        sample = list(range(0, made, step))[:RESTART_SAMPLE]
        began = time.monotonic()
        checked = check_sessions(broker.port, sample, per)
        r["sample sessions"] = len(sample)
        r["sample sessions present"] = checked["present"]
        r["sample sessions complete"] = checked["complete"]
        r["sample messages back"] = checked["messages"]
        r["sample messages missing"] = checked["missing"]
        r["sample messages wrong"] = checked["wrong"]
        r["sample check s"] = time.monotonic() - began
    finally:
        stop_broker(broker)
        r["log"] = suspect_lines(broker, offset, limit=5)
        shutil.rmtree(store_dir, ignore_errors=True)
    return r


def run_restart(names: list[str], broker_class, tmp: Path, cfg, log) -> dict:
    """persist-restart for ours with sqlite full and (when selected) Mosquitto."""
    results = {}
    if "ours-sqlite-full" in names:
        log(fsync_probe(tmp))
    for name in ("ours-sqlite-full", REFERENCE):
        if name not in names:
            continue
        try:
            r = restart(broker_class, name, tmp)
        except Exception as error:  # noqa: BLE001
            log(f"persist-restart {name}: FAILED {error}")
            continue
        results[name] = r
        log(
            f"persist-restart {name}: {r.get('sessions made')} sessions, "
            f"{r.get('messages acked')} messages; restart listening after "
            f"{fmt_value(r.get('listening after restart s', float('nan')))} s; sample "
            f"{r.get('sample messages back')} messages back, "
            f"{r.get('sample messages missing')} missing"
        )
    return results


def restart_table(results: dict) -> str:
    if not results:
        return ""
    names = list(results)
    width = max(len(n) for n in names) + 2
    title = (
        f"\npersist-restart: {RESTART_SESSIONS:,} persistent sessions (QoS 1 subscription "
        f"each), {RESTART_SESSIONS * RESTART_PER_SESSION:,} queued QoS 1 messages, SIGTERM, "
        "start again on the same store"
    )
    out = [title, f"  {'':<32}" + "".join(f"{n:>{width}}" for n in names)]
    keys: list[str] = []
    for r in results.values():
        keys += [k for k in r if k not in keys and k not in ("broker", "log", "files after stop")]
    for key in keys:
        cells = []
        for n in names:
            v = results[n].get(key)
            cells.append(
                "-" if v is None else (fmt_value(v) if isinstance(v, int | float) else str(v))
            )
        out.append(f"  {key:<32}" + "".join(f"{c:>{width}}" for c in cells))
    if any(r.get("exit status") == -signal.SIGTERM for r in results.values()):
        out.append(
            f"  exit status {-signal.SIGTERM}: twistd ends itself with the signal it got, "
            "after its clean shutdown (normal)"
        )
    for n in names:
        files = results[n].get("files after stop")
        if files:
            out.append(f"  {n} files after stop: {files}")
        for line in results[n].get("log") or []:
            out.append(f"  {n} log: {line}")
    return "\n".join(out)
