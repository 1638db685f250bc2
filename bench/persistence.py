"""Persistence scenarios: persistent sessions (MQTT 3.1.1 clean session 0) kept on disk.

``python bench/run.py --only persist`` (also ``persist-qos1-paced``, ``persist-qos1-flood``,
``persist-qos1-offline`` one by one) runs each scenario against four brokers, each run on a
fresh process with a fresh store in the run's temp directory:

- ours-memory: ``--store memory`` (nothing kept across restarts, the reference for the cost
  of the store);
- ours-sqlite-normal: ``--store sqlite:FILE --store-sync normal`` (survives a crash of the
  broker, may lose the last commits on power loss);
- ours-sqlite-full: ``--store sqlite:FILE --store-sync full`` (the default: an fsync per
  commit, survives power loss);
- mosquitto-persist: Mosquitto with ``persistence true`` and ``persistence_location`` in the
  temp dir; note that it writes a snapshot only every ``autosave_interval`` (default
  1800 s) and at exit, so during these runs it writes nothing at all (ours with sqlite
  commits before every PUBACK that depends on it).

The table shows median, min and max over the rounds, and each of ours against
mosquitto-persist. The scenarios (64-byte payloads, numbered messages as in overload.py):

- persist-qos1-paced: 1 QoS 1 publisher at 2,000 msg/s (at most 64 unacknowledged) -> 1
  persistent QoS 1 subscriber (fixed client id) acking at once. Delivered msg/s, the
  publisher's publish->PUBACK latency (ours with sqlite: the PUBACK waits for the commit)
  and publish->delivery latency, p50 / p99 over the measured part, and LOST (PUBACKed,
  never delivered). When the subscriber's PUBACK arrives within the commit window that
  stores the message, ours inserts and deletes it in one batch and writes nothing for it;
  "broker wrote MiB" shows how often that is not the case.
- persist-qos1-flood: the same publisher unpaced (64 unacknowledged at all times):
  accepted (PUBACKed) and delivered msg/s, LOST.
- persist-qos1-offline: the persistent subscriber connects, subscribes and disconnects; the
  publisher floods QoS 1 messages (64 unacknowledged) for the scenario time, so every
  message is queued for an offline session (a disk write for ours with sqlite): accepted
  msg/s. Then the subscriber reconnects and drains: drain msg/s, and delivered must equal
  accepted (LOST). Queue limits are off here so that nothing is dropped: Mosquitto
  ``max_queued_messages 0``, ours ``--max-queued-messages 100000000 --max-queued-bytes 0``
  (ours' ``--max-queued-messages 0`` still drops at 1,000 for an offline session).

Every scenario also shows what the broker process wrote to disk during the run
(``write_bytes`` of /proc/PID/io), the size of the store directory at the end (for
persist-qos1-offline: after publishing, before the drain), and the broker's peak RSS.

``python bench/run.py --only persist-restart``: restart time. One broker (ours with sqlite,
synchronous full; Mosquitto with persistence for comparison) gets 10,000 persistent
sessions (each: CONNECT clean session 0, SUBSCRIBE ``r/<n>`` at QoS 1, DISCONNECT) and
100,000 queued QoS 1 messages (10 to each topic), is stopped with SIGTERM and started again
on the same file. Shown: how fast the fill went, the store's size, how long the stop took,
the time from process start until the listener accepts a connection (empty store and
full), ours' own log line ``store ...: loaded N sessions, M queued or in-flight messages
... in X s``, RSS after the restart, and a sample of sessions reconnected (clean session 0,
no SUBSCRIBE) that must get their 10 messages back.

``python bench/soak.py --minutes 10`` (not part of run.py): a long steady load on one broker
with sqlite, printing the store file's size every 30 s (see soak.py).
"""

from __future__ import annotations

import os
import pwd
import re
import selectors
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import gen
from gen import GO, STOP, PublisherStats
from harness import Run, ctx, settle
from overload import (
    ACCEPTED,
    DELIVERED,
    DUPLICATES,
    LOST,
    MAX_MESSAGES,
    OUT_OF_ORDER,
    PEAK_RSS,
    SETUP,
    UNACKED,
    NumberedSubscriber,
    OverloadResult,
    Sample,
    Scenario,
    count_lost,
    peak_rss_mib,
    rate,
    spawn_numbered_subscriber,
)
from overload import fmt as fmt_value
from overload import table as overload_table
from wire import (
    DISCONNECT,
    NumberedPublishes,
    connect_packet,
    open_client,
    publish_packet,
    subscribe_packet,
)

#: paced scenario: the publisher's rate; all: its unacknowledged PUBLISHes at most
PACED_RATE = 2_000
WINDOW = 64
#: the persistent subscriber's client id (every run has a fresh broker and store)
SUBSCRIBER_ID = "persist-sub"

REFERENCE = "mosquitto-persist"
#: persistence broker variants in table order: (kind, store option / None for Mosquitto)
VARIANTS = {
    "ours-memory": ("ours", "memory"),
    "ours-sqlite-normal": ("ours", "normal"),
    "ours-sqlite-full": ("ours", "full"),
    REFERENCE: ("mosquitto", None),
}
#: unlimited queues (persist-qos1-offline and the restart fill). Not --max-queued-messages 0:
#: its "no limit" still drops for an offline session at 1,000 queued messages (the default
#: high-water mark of connected subscribers, mqtt_twisted/broker/config.py), so a limit no
#: run reaches stands for "none"
OURS_QUEUE_LIMIT = 100_000_000
OURS_NO_LIMITS = ("--max-queued-messages", str(OURS_QUEUE_LIMIT), "--max-queued-bytes", "0")
MOSQUITTO_NO_LIMITS = ("max_queued_messages 0",)

PUBACK_P50 = "PUBACK latency p50 ms"
PUBACK_P99 = "PUBACK latency p99 ms"
DELIVERY_P50 = "delivery latency p50 ms"
DELIVERY_P99 = "delivery latency p99 ms"
ACCEPTED_TOTAL = "accepted (messages)"
DRAIN = "drain msg/s"
DRAIN_SECONDS = "drain s"
DELIVERED_TOTAL = "delivered (messages)"
WROTE = "broker wrote MiB"
STORE_END = "store MiB at end"
STORE_PUBLISHED = "store MiB after publishing"


def brokers_for(names: list[str]) -> list[str]:
    """The persistence variants the run's --brokers select (ours: all three of ours)."""
    out = []
    if any(n.startswith("ours") for n in names):
        out += [n for n, (kind, _) in VARIANTS.items() if kind == "ours"]
    if "mosquitto" in names:
        out.append(REFERENCE)
    return out


# -- brokers and what they write ---------------------------------------------------------


_runs = 0


def store_dir_for(tmp: Path, name: str) -> Path:
    """A fresh directory for one broker process's store; Mosquitto (which drops root
    privileges to its own user) must be able to write in it."""
    global _runs
    _runs += 1
    path = tmp / f"store-{name}-{_runs}"
    path.mkdir()
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("mosquitto")
        except KeyError:
            pass
        else:
            os.chown(path, user.pw_uid, user.pw_gid)
            os.chmod(tmp, os.stat(tmp).st_mode | 0o111)
    return path


def make_broker(
    broker_class, name: str, tmp: Path, no_limits: bool = False, store_dir: Path | None = None
):
    """A (not yet started) broker of variant ``name`` with its store in ``store_dir`` (a
    fresh one by default): run.Broker with the scenario's options, default limits otherwise."""
    kind, store = VARIANTS[name]
    store_dir = store_dir or store_dir_for(tmp, name)
    if kind == "ours":
        if store == "memory":
            options: tuple[str, ...] = ("--store", "memory")
        else:
            options = ("--store", f"sqlite:{store_dir / 'store.sqlite'}", "--store-sync", store)
        broker = broker_class(
            name, kind, tmp, tuned=False, options=options + (OURS_NO_LIMITS if no_limits else ())
        )
    else:
        conf = ("persistence true", f"persistence_location {store_dir}/")
        broker = broker_class(
            name,
            kind,
            tmp,
            tuned=False,
            conf=conf + (MOSQUITTO_NO_LIMITS if no_limits else ()),
        )
    broker.store_dir = store_dir
    return broker


def rss_mib(pid: int) -> float:
    """The process's resident set size now, in MiB (NaN when it has exited)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def written_bytes(pid: int) -> int:
    """Bytes the process (all its threads) caused to be written to storage so far."""
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def files_size(directory: Path) -> dict[str, int]:
    """Size of each file in ``directory`` (SQLite's -shm index is left out: it is mapped)."""
    sizes = {}
    for path in directory.iterdir():
        if path.is_file() and not path.name.endswith("-shm"):
            sizes[path.name] = path.stat().st_size
    return sizes


def mib(n: float) -> float:
    return n / (1 << 20)


def stop_broker(broker, timeout: float = 60.0) -> tuple[float, int | None]:
    """SIGTERM, then wait up to ``timeout`` s (killed after): seconds taken, exit status."""
    p = broker.process
    if p is None or p.poll() is not None:
        return 0.0, None if p is None else p.returncode
    began = time.monotonic()
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)
        return float("nan"), p.returncode
    return time.monotonic() - began, p.returncode


#: lines of a broker's log that deserve a look (errors, tracebacks, warnings)
SUSPECT = re.compile(r"Traceback|Unhandled|Error|error|CRITICAL|Warning|warn|fail", re.I)
#: Mosquitto running as root says so at every start
EXPECTED = re.compile(r"should not be run as root")


def log_offset(broker) -> int:
    try:
        return broker.log_path.stat().st_size
    except OSError:
        return 0


def suspect_lines(broker, offset: int, limit: int = 3) -> list[str]:
    """Up to ``limit`` suspect lines the broker logged after ``offset`` (and how many)."""
    try:
        with open(broker.log_path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    found = [
        line.strip()
        for line in text.splitlines()
        if SUSPECT.search(line) and not EXPECTED.search(line)
    ]
    shown = [line[:200] for line in found[:limit]]
    if len(found) > limit:
        shown.append(f"... {len(found) - limit} more")
    return shown


def filesystem_warning(directory: Path) -> str | None:
    """A warning when ``directory`` is on a file system where fsync costs nothing."""
    best, fstype = "", ""
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mount = parts[1]
            if str(directory).startswith(mount) and len(mount) > len(best):
                best, fstype = mount, parts[2]
    except OSError:
        return None
    if fstype in ("tmpfs", "ramfs"):
        return (
            f"warning: {directory} is on {fstype}: fsync is free there, the sqlite numbers "
            "say nothing about a disk (set TMPDIR to a directory on a disk)"
        )
    return None


def fsync_probe(directory: Path, count: int = 100) -> str:
    """What one 4 KiB write + fsync costs in ``directory`` (the floor of a synchronous
    commit): fast on a disk with a volatile or battery-backed cache, slow on a plain one."""
    path = directory / "fsync-probe"
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        block = b"f" * 4096
        for i in range(count):
            began = time.perf_counter()
            os.pwrite(fd, block, (i % 16) * 4096)
            os.fsync(fd)
            times.append(1e3 * (time.perf_counter() - began))
    finally:
        os.close(fd)
        path.unlink()
    times.sort()
    return (
        f"fsync of a 4 KiB write in {directory}: p50 {percentile(times, 0.5):.2f} ms, "
        f"p99 {percentile(times, 0.99):.2f} ms (the floor of a --store-sync full commit)"
    )


# -- persist-qos1-paced and persist-qos1-flood --------------------------------------------


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(p * len(values)))]


def persist_qos1(broker, cfg, paced: bool) -> OverloadResult:
    """1 QoS 1 publisher (paced at PACED_RATE or flooding) -> 1 persistent subscriber."""
    deadline = time.monotonic() + SETUP + cfg.overload_warmup + cfg.overload_seconds
    deadline += cfg.overload_drain + 15
    run = Run(2, deadline)
    topic = "bench/persist"
    layout = NumberedPublishes(topic, 0)
    sub = NumberedSubscriber.new()
    pub = ctx.RawValue(PublisherStats)
    acked = ctx.RawArray("B", MAX_MESSAGES)
    count = int(PACED_RATE * (cfg.overload_warmup + cfg.overload_seconds)) if paced else None
    timing = (ctx.RawArray("d", count), ctx.RawArray("d", count)) if paced else None
    seen_at = ctx.RawArray("d", count) if paced else None
    name = f"{os.getpid()}-{time.monotonic_ns()}"
    try:
        spawn_numbered_subscriber(
            run, cfg, broker, 0, topic, layout, None, sub, SUBSCRIBER_ID, False, seen_at
        )
        run.wait_ready([0])
        run.spawn(
            gen.numbered_publisher,
            cfg.gen_core,
            broker.port,
            f"p{name}",
            layout,
            WINDOW,
            PACED_RATE if paced else None,
            count or MAX_MESSAGES,
            1,
            pub,
            acked,
            run.state,
            run.ctl,
            deadline,
            timing,
        )
        run.wait_ready([1])
        wrote = written_bytes(broker.pid)

        def sample() -> Sample:
            return Sample(time.perf_counter(), pub.acked, sub.stats.unique)

        run.ctl[GO] = 1
        began = time.monotonic()
        time.sleep(cfg.overload_warmup)
        first = sample()
        time.sleep(cfg.overload_seconds)
        last = sample()
        run.ctl[STOP] = 1
        rss = peak_rss_mib(broker.pid)
        settle(lambda: min(pub.acked, sub.stats.unique), lambda: pub.sent, cfg.overload_drain)
        metrics = {
            ACCEPTED: rate(first, last, "accepted"),
            DELIVERED: rate(first, last, "delivered"),
        }
        if paced:
            sent_at, acked_at = timing
            since = began + cfg.overload_warmup
            sent = min(pub.sent, count)
            pairs = [
                (sent_at[i], acked_at[i], seen_at[i]) for i in range(sent) if sent_at[i] >= since
            ]
            to_ack = sorted(1e3 * (a - s) for s, a, _ in pairs if a)
            to_sub = sorted(1e3 * (d - s) for s, _, d in pairs if d)
            metrics[PUBACK_P50] = percentile(to_ack, 0.5)
            metrics[PUBACK_P99] = percentile(to_ack, 0.99)
            metrics[DELIVERY_P50] = percentile(to_sub, 0.5)
            metrics[DELIVERY_P99] = percentile(to_sub, 0.99)
        metrics.update(
            {
                LOST: count_lost(acked, sub.seen),
                DUPLICATES: sub.stats.duplicates,
                OUT_OF_ORDER: sub.stats.out_of_order,
                UNACKED: pub.sent - pub.acked,
                WROTE: mib(written_bytes(broker.pid) - wrote),
                STORE_END: mib(sum(files_size(broker.store_dir).values())),
                PEAK_RSS: rss,
            }
        )
        return OverloadResult(
            metrics, errors=pub.errors + pub.closed + sub.stats.errors + sub.stats.closed
        )
    finally:
        run.finish()


# -- persist-qos1-offline ------------------------------------------------------------------


def subscribe_and_leave(port: int, client_id: str, topic_filter: str) -> None:
    """A persistent session subscribed to ``topic_filter`` at QoS 1, its client gone."""
    s = open_client(port, client_id, topic_filter, 1, clean=False)
    try:
        s.sendall(DISCONNECT)
        s.settimeout(5.0)
        try:
            while s.recv(4096):  # until the broker closes: the session is offline
                pass
        except OSError:
            pass
    finally:
        s.close()


def persist_offline(broker, cfg) -> OverloadResult:
    """Flood QoS 1 messages to an offline persistent session, then let it drain them."""
    drain_cap = max(60.0, cfg.overload_drain)
    deadline = time.monotonic() + SETUP + cfg.overload_warmup + cfg.overload_seconds
    deadline += 10 + drain_cap + 15
    run = Run(2, deadline)
    topic = "bench/offline"
    layout = NumberedPublishes(topic, 0)
    sub = NumberedSubscriber.new()
    pub = ctx.RawValue(PublisherStats)
    acked = ctx.RawArray("B", MAX_MESSAGES)
    name = f"{os.getpid()}-{time.monotonic_ns()}"
    try:
        subscribe_and_leave(broker.port, SUBSCRIBER_ID, topic)
        run.spawn(
            gen.numbered_publisher,
            cfg.gen_core,
            broker.port,
            f"p{name}",
            layout,
            WINDOW,
            None,
            MAX_MESSAGES,
            0,
            pub,
            acked,
            run.state,
            run.ctl,
            deadline,
        )
        run.wait_ready([0])
        wrote = written_bytes(broker.pid)

        def sample() -> Sample:
            return Sample(time.perf_counter(), pub.acked, 0)

        run.ctl[GO] = 1
        time.sleep(cfg.overload_warmup)
        first = sample()
        time.sleep(cfg.overload_seconds)
        last = sample()
        run.ctl[STOP] = 1
        settle(lambda: pub.acked, lambda: pub.sent, 10)
        accepted = pub.acked
        wrote_publishing = written_bytes(broker.pid) - wrote
        stored = sum(files_size(broker.store_dir).values())
        # the subscriber comes back: the same session, no SUBSCRIBE
        began = time.monotonic()
        spawn_numbered_subscriber(
            run, cfg, broker, 1, None, layout, None, sub, SUBSCRIBER_ID, False
        )
        run.wait_ready([1])
        done = {"at": time.monotonic(), "n": 0}

        def progress() -> int:
            n = sub.stats.unique
            if n != done["n"]:
                done["at"], done["n"] = time.monotonic(), n
            return n

        settle(progress, lambda: pub.acked, drain_cap)
        progress()
        took = done["at"] - began
        return OverloadResult(
            {
                ACCEPTED: rate(first, last, "accepted"),
                ACCEPTED_TOTAL: accepted,
                WROTE: mib(wrote_publishing),
                STORE_PUBLISHED: mib(stored),
                DRAIN: sub.stats.unique / took if took > 0 else float("nan"),
                DRAIN_SECONDS: took,
                DELIVERED_TOTAL: sub.stats.unique,
                LOST: count_lost(acked, sub.seen),
                DUPLICATES: sub.stats.duplicates,
                OUT_OF_ORDER: sub.stats.out_of_order,
                UNACKED: pub.sent - pub.acked,
                PEAK_RSS: peak_rss_mib(broker.pid),
            },
            errors=pub.errors + pub.closed + sub.stats.errors + sub.stats.closed,
        )
    finally:
        run.finish()


SCENARIOS = {
    s.key: s
    for s in (
        Scenario(
            "persist-qos1-paced",
            f"persist-qos1-paced: 1 QoS 1 publisher at {PACED_RATE:,} msg/s ({WINDOW} unacked "
            "at most) -> 1 persistent QoS 1 subscriber (clean session 0) acking at once",
            partial(persist_qos1, paced=True),
        ),
        Scenario(
            "persist-qos1-flood",
            f"persist-qos1-flood: 1 QoS 1 publisher, unpaced, {WINDOW} unacked -> 1 "
            "persistent QoS 1 subscriber acking at once",
            partial(persist_qos1, paced=False),
        ),
        Scenario(
            "persist-qos1-offline",
            f"persist-qos1-offline: 1 QoS 1 publisher, unpaced, {WINDOW} unacked -> 1 "
            "persistent subscriber that is offline, then reconnects and drains (no queue "
            f"limits: ours --max-queued-messages {OURS_QUEUE_LIMIT:,} --max-queued-bytes 0, "
            "Mosquitto max_queued_messages 0)",
            persist_offline,
        ),
    )
}
NO_LIMITS = {"persist-qos1-offline"}

GROUPS = {
    "persist": tuple(SCENARIOS),
    **{key: (key,) for key in SCENARIOS},
}


def selected(only: list[str]) -> list[str]:
    """The persistence scenarios the --only names select, in table order."""
    keys = {key for name in only for key in GROUPS.get(name, ())}
    return [key for key in SCENARIOS if key in keys]


def summary(result: OverloadResult) -> str:
    keys = [ACCEPTED, DELIVERED, PUBACK_P99, DELIVERY_P99, ACCEPTED_TOTAL, DRAIN, LOST, WROTE]
    parts = [
        f"{k.split(' (')[0]} {fmt_value(result.metrics[k])}" for k in keys if k in result.metrics
    ]
    if result.errors:
        parts.append(f"errors {result.errors}")
    return ", ".join(parts + result.notes)


def run_scenarios(keys: list[str], names: list[str], broker_class, tmp: Path, cfg, log) -> dict:
    """Every persistence scenario on a fresh broker process and store, interleaved broker
    by broker over ``cfg.persist_rounds`` rounds."""
    if not keys or not names:
        return {}
    warning = filesystem_warning(tmp)
    if warning:
        log(warning)
    log(fsync_probe(tmp))
    results: dict = {}
    for rnd in range(cfg.persist_rounds):
        order = names if rnd % 2 == 0 else names[::-1]
        for key in keys:
            for name in order:
                broker = make_broker(broker_class, name, tmp, no_limits=key in NO_LIMITS)
                offset = log_offset(broker)
                try:
                    broker.start()
                    r = SCENARIOS[key].run(broker, cfg)
                except Exception as error:  # noqa: BLE001
                    log(f"round {rnd + 1} {key} {name}: FAILED {error}")
                    continue
                finally:
                    broker.stop()
                    shutil.rmtree(broker.store_dir, ignore_errors=True)
                r.notes.extend(f"log: {line}" for line in suspect_lines(broker, offset))
                results.setdefault(key, {}).setdefault(name, []).append(r)
                log(f"round {rnd + 1} {key:<22} {name:<18} {summary(r)}")
    return results


def table(results: dict, names: list[str]) -> str:
    return overload_table(results, names, SCENARIOS, REFERENCE)


# -- persist-restart -----------------------------------------------------------------------

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
