"""Overload scenarios: what a broker accepts, delivers and loses when offered more than it can do.

Every run gets a fresh broker process with its default limits (run.py starts it; ours with
the scenario's extra options when its ``--help`` lists them), so one overloaded run cannot
leave a bloated process to the next. A scenario function takes that broker (anything with
``port`` and ``pid``) and the run's Config, and returns an ``OverloadResult``:

- accepted msg/s: QoS 1, PUBACKs the publisher read; QoS 0, what the publishers wrote and
  the broker read from its sockets (bytes received minus bytes still queued, per socket,
  from ``ss -tin``), in messages;
- delivered msg/s: distinct messages the subscriber(s) received;
- LOST: QoS 1 messages PUBACKed to the publisher but never delivered to the subscriber by
  the end of the drain time after publishing stopped (every payload carries its
  publisher id and sequence number; publisher and subscriber record them in shared
  flags);
- dropped: QoS 0 messages the broker read but never delivered (which QoS 0 allows); when
  the drain time ends with messages still unread by the broker (a row then shows them),
  it may count messages the broker still holds.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from statistics import median
from typing import Any

import gen
from gen import GO, STOP, PublisherStats, SubscriberStats
from harness import Offset, Run, ctx, settle
from wire import NumberedPublishes, publish_packet

PAYLOAD = b"p" * 64
FANIN_PUBLISHERS = 8
#: paced fan-in: publishers together never more than this many messages ahead of the subscriber
PACED_WINDOW = 20_000
PACED_BATCH = 100
#: flood-qos1: unacknowledged QoS 1 PUBLISHes the publisher keeps in flight
QOS1_WINDOW = 64
#: slow-subscriber: publisher rate, its in-flight cap, and the slow subscriber's rate
SLOW_PUBLISH_RATE = 2_000
SLOW_PUBLISH_WINDOW = 1_000
SLOW_READER_RATE = 100
#: highest sequence number a numbered publisher may use (flags of this many bytes)
MAX_MESSAGES = 4_000_000
#: time for workers to connect and subscribe, on top of the scenario's own times
SETUP = 30.0

ACCEPTED = "accepted msg/s"
DELIVERED = "delivered msg/s"
LOST = "LOST (acked, undelivered)"
DROPPED = "dropped (QoS 0, allowed)"
DUPLICATES = "duplicates"
OUT_OF_ORDER = "out of order"
UNACKED = "unacked at end"
UNREAD = "unread by broker at end"
FAST_SHARE = "fast got % of accepted"
SLOW_RECEIVED = "slow received by stop"
SLOW_CLOSED = "slow closed by broker at s"
PUBLISHER_LAG = "publisher max lag s"
PEAK_RSS = "broker peak RSS MiB"
#: rows left out of the table when zero (or n/a) for every broker
QUIET_WHEN_ZERO = {DUPLICATES, OUT_OF_ORDER, UNACKED, UNREAD, SLOW_CLOSED}


@dataclass
class OverloadResult:
    """One run of an overload scenario against one broker: metrics in table order."""

    metrics: dict[str, float]
    #: framing errors, unexpected packets, connections the broker closed
    errors: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Scenario:
    """An overload scenario: its --only name, table title and function."""

    key: str
    title: str
    run: Callable[[Any, Any], OverloadResult]
    #: also measured against the trivial relay (the generator's ceiling)
    ceiling: bool = False
    #: options for our broker, used when ``twistd -n mqtt --help`` lists the first one
    ours_options: tuple[str, ...] = ()


@dataclass
class Sample:
    """Cumulative message counts at one instant."""

    at: float
    accepted: float
    delivered: float


def rate(before: Sample, after: Sample, attribute: str) -> float:
    """Messages per second of one counter between two samples."""
    elapsed = after.at - before.at
    return (getattr(after, attribute) - getattr(before, attribute)) / elapsed if elapsed else 0.0


def tag() -> str:
    """A prefix making client ids unique to one scenario run."""
    return f"{os.getpid()}-{time.monotonic_ns()}"


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set size (VmHWM), in MiB; NaN when it has exited."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


SS = shutil.which("ss")


def bytes_read_by(broker_port: int, client_ports: set[int]) -> int:
    """Bytes the broker has read so far from the connections of these clients.

    Each of the broker's sockets (``ss -tin``, iproute2) gives the bytes it received and
    those still waiting in its receive queue, in one consistent snapshot per socket; the
    difference is what the broker read. (Adding the clients' send queues to the receive
    queues instead would count bytes moving between the two twice.)
    """
    out = subprocess.run(
        [SS, "-tinH", "state", "established", f"( sport = :{broker_port} )"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    total = 0
    port = queued = None
    for line in out.splitlines():
        if not line[:1].isspace():  # Recv-Q Send-Q Local:Port Peer:Port
            fields = line.split()
            queued, port = int(fields[0]), int(fields[3].rsplit(":", 1)[1])
        elif port in client_ports:  # the socket's details: ... bytes_received:N ...
            found = re.search(r"\bbytes_received:(\d+)", line)
            total += (int(found.group(1)) if found else 0) - queued
            port = None
    return total


def count_lost(acked, seen) -> int:
    """Messages whose flag is set in ``acked`` but not in ``seen`` (shared byte arrays)."""
    acked_bits = int.from_bytes(memoryview(acked).cast("B"), "little")
    seen_bits = int.from_bytes(memoryview(seen).cast("B"), "little")
    return (acked_bits & ~seen_bits).bit_count()


# -- flood-qos0-fanin ------------------------------------------------------------------


def flood_qos0_fanin(broker, cfg, window: int | None = None) -> OverloadResult:
    """8 QoS 0 publishers on bench/0..7 -> 1 subscriber of bench/#.

    ``window`` None: the publishers write as fast as TCP takes it (flooded); otherwise they
    are paced, closed loop, ``window`` messages ahead of the subscriber at most.
    """
    deadline = time.monotonic() + SETUP + cfg.overload_warmup + cfg.overload_seconds
    deadline += cfg.overload_drain + 15
    run = Run(1 + FANIN_PUBLISHERS, deadline)
    delivered = ctx.RawArray("q", 1)
    bad = ctx.RawArray("q", 1)
    publishers = ctx.RawArray(PublisherStats, FANIN_PUBLISHERS)
    packets = [publish_packet(f"bench/{i}", PAYLOAD, 0) for i in range(FANIN_PUBLISHERS)]
    size = len(packets[0])
    assert all(len(p) == size for p in packets)
    batch = PACED_BATCH if window else max(1, gen.FLOOD_BATCH_BYTES // size)
    name = tag()
    try:
        run.spawn(
            gen.subscriber,
            cfg.gen_core,
            broker.port,
            [f"s{name}"],
            "bench/#",
            0,
            size,
            0,
            delivered,
            run.state,
            bad,
            run.ctl,
            deadline,
        )
        run.wait_ready([0])
        for i, packet in enumerate(packets):
            run.spawn(
                gen.flood_publisher,
                cfg.gen_core,
                broker.port,
                f"p{name}-{i}",
                packet,
                batch,
                window,
                i,
                publishers,
                delivered,
                Offset(run.state, 1),
                run.ctl,
                deadline,
            )
        run.wait_ready(range(1, 1 + FANIN_PUBLISHERS))
        ports = {p.local_port for p in publishers}
        handshakes = bytes_read_by(broker.port, ports) if SS else 0

        def read_by_broker() -> float:
            """Messages the broker has read (without ss: written by the publishers)."""
            if not SS:
                return sum(p.sent_bytes for p in publishers) / size
            return (bytes_read_by(broker.port, ports) - handshakes) / size

        def sample() -> Sample:
            return Sample(time.perf_counter(), read_by_broker(), delivered[0])

        run.ctl[GO] = 1
        time.sleep(cfg.overload_warmup)
        first = sample()
        time.sleep(cfg.overload_seconds)
        last = sample()
        run.ctl[STOP] = 1
        rss = peak_rss_mib(broker.pid)
        time.sleep(0.05)
        # the kernel buffers hold a large backlog: wait while the broker works through it
        settle(lambda: delivered[0], lambda: sum(p.sent for p in publishers), cfg.flood_drain)
        written = sum(p.sent for p in publishers)
        got = delivered[0]  # before reading the broker's count: delivered <= read
        read = read_by_broker()
        result = OverloadResult(
            {
                ACCEPTED: rate(first, last, "accepted"),
                DELIVERED: rate(first, last, "delivered"),
                DROPPED: read - got,
                UNREAD: written - read,
                PEAK_RSS: rss,
            },
            errors=bad[0] + sum(p.errors + p.closed for p in publishers),
        )
        if not SS:
            result.notes.append("accepted = written by the publishers (no ss, iproute2)")
        return result
    finally:
        run.finish()


# -- flood-qos1 and slow-subscriber: numbered QoS 1 messages -----------------------------


@dataclass
class NumberedSubscriber:
    """Shared state of one numbered subscriber: counters and its flags by sequence number."""

    stats: Any
    seen: Any

    @classmethod
    def new(cls) -> NumberedSubscriber:
        return cls(ctx.RawValue(SubscriberStats), ctx.RawArray("B", MAX_MESSAGES))


def spawn_numbered_subscriber(
    run, cfg, broker, slot, topic, layout, rate, sub, client_id, clean=True, seen_at=None
):
    """Start a numbered QoS 1 subscriber of ``topic`` (``rate`` None: reads at full speed).

    ``clean`` False: a persistent session (``topic`` None: resumed without subscribing);
    ``seen_at``: shared doubles for each message's arrival time (see gen.numbered_subscriber).
    """
    run.spawn(
        gen.numbered_subscriber,
        cfg.gen_core,
        broker.port,
        client_id,
        topic,
        layout.size,
        0,
        rate,
        slot,
        sub.stats,
        sub.seen,
        run.state,
        run.ctl,
        run.deadline,
        clean,
        seen_at,
    )


def flood_qos1(broker, cfg) -> OverloadResult:
    """1 QoS 1 publisher keeping 64 PUBLISHes unacknowledged -> 1 subscriber acking at once."""
    deadline = time.monotonic() + SETUP + cfg.overload_warmup + cfg.overload_seconds
    deadline += cfg.overload_drain + 15
    run = Run(2, deadline)
    topic = "bench/q1"
    layout = NumberedPublishes(topic, 0)
    sub = NumberedSubscriber.new()
    pub = ctx.RawValue(PublisherStats)
    acked = ctx.RawArray("B", MAX_MESSAGES)
    name = tag()
    try:
        spawn_numbered_subscriber(run, cfg, broker, 0, topic, layout, None, sub, f"s{name}")
        run.wait_ready([0])
        run.spawn(
            gen.numbered_publisher,
            cfg.gen_core,
            broker.port,
            f"p{name}",
            layout,
            QOS1_WINDOW,
            None,
            MAX_MESSAGES,
            0,
            pub,
            acked,
            Offset(run.state, 1),
            run.ctl,
            deadline,
        )
        run.wait_ready([1])

        def sample() -> Sample:
            return Sample(time.perf_counter(), pub.acked, sub.stats.unique)

        run.ctl[GO] = 1
        time.sleep(cfg.overload_warmup)
        first = sample()
        time.sleep(cfg.overload_seconds)
        last = sample()
        run.ctl[STOP] = 1
        rss = peak_rss_mib(broker.pid)
        settle(lambda: min(pub.acked, sub.stats.unique), lambda: pub.sent, cfg.overload_drain)
        return OverloadResult(
            {
                ACCEPTED: rate(first, last, "accepted"),
                DELIVERED: rate(first, last, "delivered"),
                LOST: count_lost(acked, sub.seen),
                DUPLICATES: sub.stats.duplicates,
                OUT_OF_ORDER: sub.stats.out_of_order,
                UNACKED: pub.sent - pub.acked,
                PEAK_RSS: rss,
            },
            errors=pub.errors + pub.closed + sub.stats.errors + sub.stats.closed,
        )
    finally:
        run.finish()


def slow_subscriber(broker, cfg) -> OverloadResult:
    """A QoS 1 publisher at 2,000 msg/s -> one fast subscriber and one reading 100 msg/s.

    Rates are measured over the second half of the run (after the broker's grace time);
    the fast subscriber's share and LOST count the whole run, after draining; the slow
    subscriber's count stops when publishing does. The
    publisher's lag is how far (in seconds of its schedule) the PUBACKs fell behind at
    worst: a broker that holds the publisher back while the slow subscriber is stuck.
    """
    seconds = cfg.slow_seconds
    deadline = time.monotonic() + SETUP + seconds + cfg.overload_drain + 15
    run = Run(3, deadline)
    topic = "bench/slow"
    layout = NumberedPublishes(topic, 0)
    fast, slow = NumberedSubscriber.new(), NumberedSubscriber.new()
    pub = ctx.RawValue(PublisherStats)
    acked = ctx.RawArray("B", MAX_MESSAGES)
    name = tag()
    try:
        spawn_numbered_subscriber(run, cfg, broker, 0, topic, layout, None, fast, f"f{name}")
        spawn_numbered_subscriber(
            run, cfg, broker, 1, topic, layout, SLOW_READER_RATE, slow, f"s{name}"
        )
        run.wait_ready([0, 1])
        run.spawn(
            gen.numbered_publisher,
            cfg.gen_core,
            broker.port,
            f"p{name}",
            layout,
            SLOW_PUBLISH_WINDOW,
            SLOW_PUBLISH_RATE,
            int(SLOW_PUBLISH_RATE * seconds),
            0,
            pub,
            acked,
            Offset(run.state, 2),
            run.ctl,
            deadline,
        )
        run.wait_ready([2])

        def sample() -> Sample:
            return Sample(time.perf_counter(), pub.acked, fast.stats.unique)

        run.ctl[GO] = 1
        time.sleep(seconds / 2)
        first = sample()
        time.sleep(seconds / 2)
        last = sample()
        run.ctl[STOP] = 1
        slow_received = slow.stats.unique  # it would go on reading while the fast one drains
        rss = peak_rss_mib(broker.pid)
        settle(lambda: min(pub.acked, fast.stats.unique), lambda: pub.sent, cfg.overload_drain)
        closed = slow.stats.closed_at if slow.stats.closed else float("nan")
        return OverloadResult(
            {
                ACCEPTED: rate(first, last, "accepted"),
                DELIVERED: rate(first, last, "delivered"),
                FAST_SHARE: 100 * fast.stats.unique / pub.acked if pub.acked else float("nan"),
                LOST: count_lost(acked, fast.seen),
                DUPLICATES: fast.stats.duplicates,
                OUT_OF_ORDER: fast.stats.out_of_order,
                UNACKED: pub.sent - pub.acked,
                PUBLISHER_LAG: pub.max_lag / SLOW_PUBLISH_RATE,
                SLOW_RECEIVED: slow_received,
                SLOW_CLOSED: closed,
                PEAK_RSS: rss,
            },
            errors=pub.errors + pub.closed + fast.stats.errors + fast.stats.closed,
        )
    finally:
        run.finish()


SCENARIOS = {
    s.key: s
    for s in (
        Scenario(
            "flood-qos0-fanin",
            "flood-qos0-fanin: 8 QoS 0 publishers, unpaced (as fast as TCP takes) "
            "-> 1 subscriber 'bench/#'",
            flood_qos0_fanin,
            ceiling=True,
        ),
        Scenario(
            "flood-qos0-fanin-paced",
            f"flood-qos0-fanin, paced: the same, publishers at most {PACED_WINDOW:,} msgs "
            "ahead of the subscriber",
            partial(flood_qos0_fanin, window=PACED_WINDOW),
            ceiling=True,
        ),
        Scenario(
            "flood-qos1",
            f"flood-qos1: 1 QoS 1 publisher, {QOS1_WINDOW} unacked -> 1 QoS 1 subscriber "
            "acking at once",
            flood_qos1,
            ceiling=True,
        ),
        Scenario(
            "slow-subscriber",
            f"slow-subscriber: QoS 1 publisher at {SLOW_PUBLISH_RATE:,} msg/s -> 1 fast + "
            f"1 slow ({SLOW_READER_RATE} msg/s) QoS 1 subscriber; rates over the 2nd half, "
            "delivered = fast one",
            slow_subscriber,
            ours_options=("--slow-client-grace", "2"),
        ),
    )
}

#: names --only accepts: flood-qos0-fanin runs flooded and paced, to compare them
GROUPS = {
    "flood-qos0-fanin": ("flood-qos0-fanin", "flood-qos0-fanin-paced"),
    "flood-qos0-fanin-paced": ("flood-qos0-fanin-paced",),
    "flood-qos1": ("flood-qos1",),
    "slow-subscriber": ("slow-subscriber",),
}


def selected(only: list[str]) -> list[str]:
    """The overload scenarios the --only names select, in table order."""
    keys = {key for name in only for key in GROUPS.get(name, ())}
    return [key for key in SCENARIOS if key in keys]


# -- report ----------------------------------------------------------------------------


def fmt(v: float) -> str:
    if v != v:
        return "n/a"
    if v == int(v) and abs(v) < 1e15:
        return f"{int(v):,}"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.2f}"


def summary(result: OverloadResult) -> str:
    """One log line for a run."""
    keys = [ACCEPTED, DELIVERED, LOST, DROPPED, UNREAD, FAST_SHARE, PUBLISHER_LAG, SLOW_RECEIVED]
    metrics = result.metrics
    shown = [k for k in keys if k in metrics and not (k in QUIET_WHEN_ZERO and metrics[k] == 0)]
    parts = [f"{k.split(' (')[0]} {fmt(metrics[k])}" for k in shown]
    if result.errors:
        parts.append(f"errors {result.errors}")
    return ", ".join(parts + result.notes)


def stats_of(values: list[float]) -> tuple[float, float, float, int]:
    """Median, min, max and count of the defined (not NaN) values."""
    defined = [v for v in values if v == v]
    if not defined:
        return float("nan"), float("nan"), float("nan"), 0
    return median(defined), min(defined), max(defined), len(defined)


def is_quiet(metric: str, per: dict[str, list[OverloadResult]]) -> bool:
    """Whether a metric is zero or NaN in every run of every broker."""
    return all(
        r.metrics[metric] in (0, 0.0) or r.metrics[metric] != r.metrics[metric]
        for runs in per.values()
        for r in runs
    )


def table(
    results: dict[str, dict[str, list[OverloadResult]]],
    names: list[str],
    scenarios: dict[str, Scenario] | None = None,
    reference: str = "mosquitto",
) -> str:
    """Per scenario, per metric and broker: median, min, max over rounds, ours/``reference``."""
    out = []
    width = max(10, *(len(n) for n in names)) if names else 10
    ratio_head = f"ours/{reference}"
    for key, scenario in (scenarios or SCENARIOS).items():
        per = results.get(key)
        if not per:
            continue
        out.append(f"\n{scenario.title}")
        out.append(
            f"  {'metric':<27} {'broker':<{width}} {'median':>10} {'min':>10} {'max':>10} "
            f"{'runs':>4} {ratio_head:>14}"
        )
        metrics = list(next(iter(per.values()))[0].metrics)
        for metric in metrics:
            rows = {
                name: stats_of([r.metrics[metric] for r in per[name]])
                for name in names
                if per.get(name)
            }
            if metric in QUIET_WHEN_ZERO and is_quiet(metric, per):
                continue
            other = rows.get(reference, (float("nan"),))[0]
            label = metric
            for name, (mid, low, high, count) in rows.items():
                ratio = ""
                if name.startswith("ours") and reference in rows:
                    ratio = f"{mid / other:.2f}" if other and other == other else "n/a"
                out.append(
                    f"  {label:<27} {name:<{width}} {fmt(mid):>10} {fmt(low):>10} "
                    f"{fmt(high):>10} {count:>4} {ratio:>14}"
                )
                label = ""
        for name in names:
            runs = per.get(name) or []
            errors = sum(r.errors for r in runs)
            notes = sorted({n for r in runs for n in r.notes})
            if errors or notes:
                detail = [f"{errors} errors/closed connections"] if errors else []
                out.append(f"  {name}: " + "; ".join(detail + notes))
    return "\n".join(out)
