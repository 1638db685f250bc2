"""Cluster overhead: one broker process against clusters of 1, 2 and 3 nodes sharing Redis.

``python bench/cluster.py`` (``--rounds N``, default 3, about 7 minutes; ``--quick``: one
short round, under two minutes; ``--keep``: keep the temp dir with the node and Redis logs).
Loopback only. Every node, the single broker and redis-server (one per cluster, AOF
everysec, in the run's temp dir) run pinned to core 0, the load generator (gen.py's
raw-socket workers) and this coordinator to core 1. On a 2-core machine the nodes of a
cluster and Redis therefore share one core: the figures show what the cluster costs per
message, not how it scales; the report ends with a projection to N cores computed from the
measured CPU time per message of the nodes and of Redis.

Setups (each round starts every one afresh: a new Redis and new node processes):

- single: one broker without --cluster (``--store memory``), publisher and subscriber on it;
- c1: a cluster of 1 node, publisher and subscriber on n0;
- c2: 2 nodes, publisher on n0, subscriber on n1 (every message crosses nodes);
- c3: 3 nodes, publisher on n0, subscriber on n2;
- c3x3: the same 3 nodes, one publisher on each node, all to the subscriber on n2.

Scenarios (64-byte payloads, brokers with their default limits):

- qos0-flood: QoS 0 publishers writing as fast as TCP takes it (gen.flood_publisher) ->
  a clean-session subscriber; accepted = written by the publishers, delivered/sent after
  draining (QoS 0 may drop);
- qos0-paced: QoS 0 at a fixed total rate (gen.latency_publisher, split between the
  publishers) -> a clean-session subscriber; end-to-end latency p50/p99;
- qos1-clean, qos1-persistent: QoS 1 publishers keeping 64 PUBLISHes unacknowledged
  (gen.numbered_publisher) -> a QoS 1 subscriber acknowledging at once, clean session 1 or
  0 (gen.numbered_subscriber); accepted = PUBACKed, LOST = PUBACKed but never delivered by
  the end of the drain time (exact, every message is numbered);
- puback-latency (single, c1, c2): QoS 1 paced at 1,000 msg/s -> a persistent subscriber:
  PUBACK latency (in a cluster the PUBACK waits for Redis) and delivery latency.

Every row also shows the CPU time the broker processes used per delivered message over the
measured window (the sum over all nodes, and redis-server's), Redis commands per message
and how busy each core was. CPU time is each process's on-CPU nanoseconds summed over its
threads (/proc/PID/task/*/schedstat; utime + stime of /proc/PID/stat where that is
missing). The markdown report is printed and saved as bench/results/cluster-last.md (raw
figures: cluster-last.json).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gen  # noqa: E402
import run as bench  # noqa: E402
from brokerprobe import log_offset, percentile  # noqa: E402
from gen import GO, STOP, PublisherStats  # noqa: E402
from harness import Offset, Run, ctx, settle  # noqa: E402
from overload import NumberedSubscriber, OverloadResult  # noqa: E402
from overload import fmt as fmt_value  # noqa: E402
from wire import DISCONNECT, PACKET_IDS, NumberedPublishes, open_client, publish_packet  # noqa: E402

REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"
PAYLOAD = b"p" * 64
QOS1_WINDOW = 64
#: sequence numbers of each QoS 1 publisher of a run: publisher k numbers its messages from
#: k * SPAN on, a multiple of PACKET_IDS, so its packet ids (and PUBACK accounting) are those
#: of 0, 1, 2 ... and the publishers share one subscriber's flags (3 * SPAN < MAX_MESSAGES)
SPAN = PACKET_IDS * 20
#: time for workers to connect and subscribe, on top of a scenario's own times
SETUP = 20.0
#: lines of a node's log worth showing (info lines only when they hold a traceback)
SUSPECT = re.compile(r"#(warn|error|critical)\]|Traceback|Unhandled|Error|Exception")
#: Redis closing a client over its output buffer limit (e.g. a node's pub/sub connection)
REDIS_SUSPECT = re.compile(r"output buffer|closed ASAP|# WARNING (?!.*overcommit)", re.I)

# metric names (table columns)
ACCEPTED = "accepted msg/s"
DELIVERED = "delivered msg/s"
RATIO = "delivered/sent %"
LOST = "LOST"
DROPPED = "dropped (QoS 0)"
DUPLICATES = "dup"
UNACKED = "unacked at end"
LAT_P50 = "latency p50 ms"
LAT_P99 = "latency p99 ms"
PUBACK_P50 = "PUBACK p50 ms"
PUBACK_P99 = "PUBACK p99 ms"
DELIVERY_P50 = "delivery p50 ms"
DELIVERY_P99 = "delivery p99 ms"
NODE_US = "nodes CPU µs/msg"
REDIS_US = "Redis CPU µs/msg"
REDIS_CMDS = "Redis cmds/msg"
BUSY = "core 0 busy %"
GEN_BUSY = "gen core busy %"
#: per node CPU µs/msg, in node order (kept in the JSON, used by the projection)
EACH_NODE = "each node µs/msg"

CPU_COLUMNS = (NODE_US, REDIS_US, REDIS_CMDS, BUSY, GEN_BUSY)


def log(text: str) -> None:
    print(text, flush=True)


# -- CPU time ------------------------------------------------------------------------

SCHEDSTAT = Path("/proc/self/schedstat").exists()
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time the process has used so far, all its threads (NaN once it is gone)."""
    if SCHEDSTAT:
        total = 0
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return float("nan")
        for task in tasks:
            try:
                with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass  # a thread that just ended
        return total / 1e9
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


# -- Redis and nodes -----------------------------------------------------------------


def redis_call(port: int, command: bytes, timeout: float = 2.0) -> bytes:
    """One inline command; the reply line, or the body of a bulk reply."""
    with socket.create_connection(("127.0.0.1", port), timeout) as s:
        s.settimeout(timeout)
        s.sendall(command + b"\r\n")
        data = b""
        for _ in range(10_000):
            if b"\r\n" in data:
                break
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("Redis closed the connection")
            data += chunk
        head, _, rest = data.partition(b"\r\n")
        if not head.startswith(b"$"):
            return head
        size = int(head[1:])
        for _ in range(10_000):
            if len(rest) >= size:
                break
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("Redis closed the connection")
            rest += chunk
        return rest[:size]


def redis_commands(port: int) -> int:
    """Commands Redis has processed so far (INFO stats total_commands_processed)."""
    info = redis_call(port, b"INFO stats").decode(errors="replace")
    found = re.search(r"total_commands_processed:(\d+)", info)
    return int(found.group(1)) if found else 0


class Redis:
    """redis-server on a free port, AOF (everysec) in ``tmp``, pinned like the brokers."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = 0
        self.process: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        return self.tmp / "redis.log"

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self) -> None:
        self.port = bench.free_port()
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                [
                    REDIS,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "everysec",
                    "--dir",
                    str(self.tmp),
                    "--daemonize",
                    "no",
                ],
                cwd=self.tmp,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=bench.broker_preexec,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited at start (see {self.log_path})")
            try:
                if redis_call(self.port, b"PING", 0.5) == b"+PONG":
                    return
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("redis-server did not answer PING within 10 s")

    def stop(self) -> None:
        bench.stop_process(self.process, 10)


class Node(bench.Broker):
    """Our broker, as a cluster node (``--cluster`` among the options) or on its own."""

    def __init__(self, name: str, tmp: Path, options: tuple[str, ...]) -> None:
        super().__init__(name, "ours", tmp, tuned=False, options=options)
        self.start_limit = 30.0

    def command(self) -> list[str]:
        return [
            str(bench.TWISTD),
            "-n",
            "--pidfile=",
            "mqtt",
            "--mqtt",
            f"tcp:{self.port}:interface=127.0.0.1",
            "--http",
            "none",
            "--sys-interval",
            "0",
            *self.options,
        ]

    def start(self) -> None:
        offset = log_offset(self)
        super().start()
        if "--cluster" not in self.options:
            return
        deadline = time.monotonic() + self.start_limit
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start (see {self.log_path})")
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                if b" joined" in f.read():
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not join within {self.start_limit:.0f} s")


def suspect(line: str) -> bool:
    """Whether a line of a node's log deserves a look."""
    if "#info]" in line or "#debug]" in line:
        return "Traceback" in line
    return bool(SUSPECT.search(line))


class Cluster:
    """``size`` nodes sharing a fresh Redis (0: one broker without --cluster)."""

    def __init__(self, size: int, tmp: Path, options: tuple[str, ...] = ()) -> None:
        self.size = size
        #: extra options of every node (and of the single broker)
        self.options = options
        self.tmp = tmp
        self.redis = Redis(tmp) if size else None
        self.nodes: list[Node] = []

    def start(self) -> None:
        self.tmp.mkdir(parents=True, exist_ok=True)
        if self.redis is None:
            self.nodes = [Node("single", self.tmp, ("--store", "memory", *self.options))]
        else:
            self.redis.start()
            url = f"redis://127.0.0.1:{self.redis.port}/0"
            self.nodes = [
                Node(f"n{i}", self.tmp, ("--cluster", url, "--node-id", f"n{i}", *self.options))
                for i in range(self.size)
            ]
        for node in self.nodes:
            node.start()
        time.sleep(0.3)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            try:
                node.stop()
            except Exception as error:  # noqa: BLE001
                log(f"stopping {node.name}: {error}")
        if self.redis is not None:
            self.redis.stop()

    def port(self, index: int) -> int:
        return self.nodes[index].port

    def check(self) -> None:
        """Raise if a node or Redis has exited."""
        for proc, name in [(n.process, n.name) for n in self.nodes] + (
            [(self.redis.process, "redis-server")] if self.redis else []
        ):
            if proc is None or proc.poll() is not None:
                raise RuntimeError(f"{name} has exited (see {self.tmp})")

    def cpu(self) -> list[float]:
        """CPU seconds of each node, then of Redis (0 without)."""
        return [cpu_seconds(n.pid) for n in self.nodes] + [
            cpu_seconds(self.redis.pid) if self.redis else 0.0
        ]

    def commands(self) -> int:
        if self.redis is None:
            return 0
        try:
            return redis_commands(self.redis.port)
        except OSError:
            return 0

    def suspect_lines(self) -> list[str]:
        """Lines of the node logs (and of Redis's) that deserve a look, with their source."""
        found = []
        for node in self.nodes:
            try:
                text = node.log_path.read_text(errors="replace")
            except OSError:
                continue
            found += [
                f"{node.name}: {line.strip()[:240]}" for line in text.splitlines() if suspect(line)
            ]
        if self.redis is not None:
            try:
                text = self.redis.log_path.read_text(errors="replace")
            except OSError:
                text = ""
            found += [
                f"redis: {line.strip()[:240]}"
                for line in text.splitlines()
                if REDIS_SUSPECT.search(line)
            ]
        return found


# -- setups and measurement ----------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    key: str
    title: str
    #: cluster size (0: one broker without --cluster)
    nodes: int
    #: node index of each publisher
    publishers: tuple[int, ...]
    #: node index of the subscriber
    subscriber: int


SETUPS = (
    Setup("single", "single broker, no --cluster (pub, sub on it)", 0, (0,), 0),
    Setup("c1", "cluster 1 node (pub, sub on n0)", 1, (0,), 0),
    Setup("c2", "cluster 2 nodes (pub n0 -> sub n1)", 2, (0,), 1),
    Setup("c3", "cluster 3 nodes (pub n0 -> sub n2)", 3, (0,), 2),
    Setup("c3x3", "cluster 3 nodes (pubs n0, n1, n2 -> sub n2)", 3, (0, 1, 2), 2),
)


@dataclass
class Sample:
    at: float
    accepted: float
    delivered: float
    cpu: list[float]
    gen_cpu: float
    commands: int


_tags = itertools.count()


def new_tag() -> str:
    """A short name unique to one scenario run (client ids and topics)."""
    return f"{os.getpid() % 10000}x{next(_tags)}"


def take(cluster: Cluster, run: Run, accepted: Callable, delivered: Callable) -> Sample:
    commands = cluster.commands()
    return Sample(
        time.perf_counter(),
        accepted(),
        delivered(),
        cluster.cpu(),
        sum(cpu_seconds(p.pid) for p in run.procs),
        commands,
    )


def measure(
    cluster: Cluster, run: Run, cfg, seconds: float, accepted: Callable, delivered: Callable
) -> tuple[Sample, Sample]:
    """Warm up, then sample at the start and end of the ``seconds`` measured."""
    time.sleep(cfg.warmup)
    first = take(cluster, run, accepted, delivered)
    time.sleep(seconds)
    last = take(cluster, run, accepted, delivered)
    return first, last


def window_metrics(cluster: Cluster, first: Sample, last: Sample) -> dict:
    """Rates and CPU per delivered message between two samples."""
    elapsed = last.at - first.at
    delivered = last.delivered - first.delivered
    per = 1e6 / delivered if delivered > 0 else float("nan")
    nodes = [b - a for a, b in zip(first.cpu[:-1], last.cpu[:-1])]
    redis = last.cpu[-1] - first.cpu[-1]
    clustered = cluster.redis is not None
    return {
        ACCEPTED: (last.accepted - first.accepted) / elapsed,
        DELIVERED: delivered / elapsed,
        NODE_US: sum(nodes) * per,
        REDIS_US: redis * per if clustered else float("nan"),
        REDIS_CMDS: (last.commands - first.commands) / delivered
        if clustered and delivered > 0
        else float("nan"),
        BUSY: 100 * (sum(nodes) + redis) / elapsed,
        GEN_BUSY: 100 * (last.gen_cpu - first.gen_cpu) / elapsed,
        EACH_NODE: [n * per for n in nodes],
    }


def deadline_for(cfg, seconds: float) -> float:
    return time.monotonic() + SETUP + cfg.warmup + seconds + cfg.drain + 15


# -- scenarios -----------------------------------------------------------------------


def qos0_flood(cluster: Cluster, setup: Setup, cfg) -> OverloadResult:
    """QoS 0 publishers writing as fast as TCP takes it -> one clean-session subscriber."""
    npub = len(setup.publishers)
    deadline = deadline_for(cfg, cfg.flood_seconds)
    run = Run(1 + npub, deadline)
    tag = new_tag()
    topic = f"bench/f/{tag}"
    packets = [publish_packet(f"{topic}/{k}", PAYLOAD, 0) for k in range(npub)]
    size = len(packets[0])
    batch = max(1, gen.FLOOD_BATCH_BYTES // size)
    delivered = ctx.RawArray("q", 1)
    bad = ctx.RawArray("q", 1)
    stats = ctx.RawArray(PublisherStats, npub)
    try:
        run.spawn(
            gen.subscriber,
            cfg.gen_core,
            cluster.port(setup.subscriber),
            [f"fs{tag}"],
            f"{topic}/+",
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
        for k, node in enumerate(setup.publishers):
            run.spawn(
                gen.flood_publisher,
                cfg.gen_core,
                cluster.port(node),
                f"fp{tag}-{k}",
                packets[k],
                batch,
                None,
                k,
                stats,
                delivered,
                Offset(run.state, 1),
                run.ctl,
                deadline,
            )
        run.wait_ready(range(1, 1 + npub))

        def sent() -> int:
            return sum(p.sent for p in stats)

        run.ctl[GO] = 1
        first, last = measure(cluster, run, cfg, cfg.flood_seconds, sent, lambda: delivered[0])
        run.ctl[STOP] = 1
        time.sleep(0.05)
        settle(lambda: delivered[0], sent, cfg.drain)
        metrics = window_metrics(cluster, first, last)
        total = sent()
        metrics[RATIO] = 100 * delivered[0] / total if total else float("nan")
        return OverloadResult(metrics, errors=bad[0] + sum(p.errors + p.closed for p in stats))
    finally:
        run.finish()


def qos0_paced(cluster: Cluster, setup: Setup, cfg) -> OverloadResult:
    """QoS 0 at a fixed total rate (split between the publishers) -> one clean subscriber."""
    npub = len(setup.publishers)
    rate = cfg.qos0_rate / npub
    count = int(rate * (cfg.warmup + cfg.seconds))
    deadline = deadline_for(cfg, cfg.seconds)
    run = Run(1 + npub, deadline)
    tag = new_tag()
    topic = f"bench/l/{tag}"
    samples = ctx.RawArray("d", count * npub)
    nsamples = ctx.RawArray("q", 1)
    sent = ctx.RawArray("q", npub)
    try:
        run.spawn(
            gen.latency_subscriber,
            cfg.gen_core,
            cluster.port(setup.subscriber),
            f"ls{tag}",
            topic,
            0,
            run.state,
            samples,
            nsamples,
            run.ctl,
            deadline,
        )
        run.wait_ready([0])
        for k, node in enumerate(setup.publishers):
            run.spawn(
                gen.latency_publisher,
                cfg.gen_core,
                cluster.port(node),
                f"lp{tag}-{k}",
                topic,
                rate,
                count,
                k,
                sent,
                Offset(run.state, 1),
                run.ctl,
                deadline,
            )
        run.wait_ready(range(1, 1 + npub))
        run.ctl[GO] = 1
        first, last = measure(
            cluster, run, cfg, cfg.seconds, lambda: sum(sent), lambda: nsamples[0]
        )
        end = time.monotonic() + 2
        while sum(sent) < count * npub and time.monotonic() < end:
            time.sleep(0.01)
        settle(lambda: nsamples[0], lambda: sum(sent), cfg.drain)
        run.ctl[STOP] = 1
        metrics = window_metrics(cluster, first, last)
        latencies = sorted(samples[int(first.delivered) : int(last.delivered)])
        metrics[LAT_P50] = percentile(latencies, 0.5)
        metrics[LAT_P99] = percentile(latencies, 0.99)
        metrics[DROPPED] = sum(sent) - nsamples[0]
        return OverloadResult(metrics)
    finally:
        run.finish()


class ShiftedPublishes(NumberedPublishes):
    """Numbered QoS 1 PUBLISHes whose sequence numbers start at ``base`` (see SPAN)."""

    def __init__(self, topic: str, base: int) -> None:
        super().__init__(topic, 0)
        assert base % PACKET_IDS == 0
        self.base = base

    def encode(self, first: int, count: int) -> bytes:
        return super().encode(self.base + first, count)


def lost_of(acked, seen, base: int) -> int:
    """Messages flagged in ``acked`` (numbered from 0) but not in ``seen`` (from ``base``)."""
    acked_bits = int.from_bytes(memoryview(acked).cast("B"), "little")
    window = memoryview(seen).cast("B")[base : base + len(acked)]
    return (acked_bits & ~int.from_bytes(window, "little")).bit_count()


def discard_session(port: int, client_id: str) -> str | None:
    """Connect with clean session 1 (which ends the persistent session) and leave."""
    try:
        s = open_client(port, client_id, timeout=5.0)
    except (OSError, ConnectionError) as error:
        return f"could not discard session {client_id}: {error}"
    try:
        s.sendall(DISCONNECT)
    except OSError:
        pass
    s.close()
    return None


def qos1(cluster: Cluster, setup: Setup, cfg, clean: bool) -> OverloadResult:
    """QoS 1 publishers, 64 unacknowledged each -> one subscriber acknowledging at once."""
    npub = len(setup.publishers)
    deadline = deadline_for(cfg, cfg.seconds)
    run = Run(1 + npub, deadline)
    tag = new_tag()
    topic = f"bench/q/{tag}"
    layouts = [ShiftedPublishes(topic, k * SPAN) for k in range(npub)]
    sub = NumberedSubscriber.new()
    pubs = [ctx.RawValue(PublisherStats) for _ in range(npub)]
    acked = [ctx.RawArray("B", SPAN) for _ in range(npub)]
    sub_id = f"qs{tag}"
    notes = []
    try:
        run.spawn(
            gen.numbered_subscriber,
            cfg.gen_core,
            cluster.port(setup.subscriber),
            sub_id,
            topic,
            layouts[0].size,
            0,
            None,
            0,
            sub.stats,
            sub.seen,
            run.state,
            run.ctl,
            deadline,
            clean,
        )
        run.wait_ready([0])
        for k, node in enumerate(setup.publishers):
            run.spawn(
                gen.numbered_publisher,
                cfg.gen_core,
                cluster.port(node),
                f"qp{tag}-{k}",
                layouts[k],
                QOS1_WINDOW,
                None,
                SPAN,
                1 + k,
                pubs[k],
                acked[k],
                run.state,
                run.ctl,
                deadline,
            )
        run.wait_ready(range(1, 1 + npub))

        def accepted() -> int:
            return sum(p.acked for p in pubs)

        def sent() -> int:
            return sum(p.sent for p in pubs)

        run.ctl[GO] = 1
        first, last = measure(cluster, run, cfg, cfg.seconds, accepted, lambda: sub.stats.unique)
        run.ctl[STOP] = 1
        settle(lambda: min(accepted(), sub.stats.unique), sent, cfg.drain)
        metrics = window_metrics(cluster, first, last)
        metrics[LOST] = sum(lost_of(acked[k], sub.seen, k * SPAN) for k in range(npub))
        metrics[DUPLICATES] = sub.stats.duplicates
        metrics[UNACKED] = sent() - accepted()
        errors = sub.stats.errors + sub.stats.closed + sum(p.errors + p.closed for p in pubs)
        return OverloadResult(metrics, errors=errors, notes=notes)
    finally:
        run.finish()
        if not clean:
            note = discard_session(cluster.port(setup.subscriber), sub_id)
            if note:
                log(note)


def puback_latency(cluster: Cluster, setup: Setup, cfg) -> OverloadResult:
    """QoS 1 paced at ``cfg.qos1_rate`` -> a persistent subscriber: PUBACK, delivery latency."""
    rate = cfg.qos1_rate
    count = int(rate * (cfg.warmup + cfg.latency_seconds))
    deadline = deadline_for(cfg, cfg.latency_seconds)
    run = Run(2, deadline)
    tag = new_tag()
    topic = f"bench/a/{tag}"
    layout = NumberedPublishes(topic, 0)
    sub = NumberedSubscriber.new()
    pub = ctx.RawValue(PublisherStats)
    acked = ctx.RawArray("B", count)
    sent_at, acked_at = ctx.RawArray("d", count), ctx.RawArray("d", count)
    seen_at = ctx.RawArray("d", count)
    sub_id = f"as{tag}"
    try:
        run.spawn(
            gen.numbered_subscriber,
            cfg.gen_core,
            cluster.port(setup.subscriber),
            sub_id,
            topic,
            layout.size,
            0,
            None,
            0,
            sub.stats,
            sub.seen,
            run.state,
            run.ctl,
            deadline,
            False,
            seen_at,
        )
        run.wait_ready([0])
        run.spawn(
            gen.numbered_publisher,
            cfg.gen_core,
            cluster.port(setup.publishers[0]),
            f"ap{tag}",
            layout,
            QOS1_WINDOW,
            rate,
            count,
            1,
            pub,
            acked,
            run.state,
            run.ctl,
            deadline,
            (sent_at, acked_at),
        )
        run.wait_ready([1])
        run.ctl[GO] = 1
        began = time.monotonic()
        first, last = measure(
            cluster, run, cfg, cfg.latency_seconds, lambda: pub.acked, lambda: sub.stats.unique
        )
        end = time.monotonic() + 2
        while pub.sent < count and time.monotonic() < end:
            time.sleep(0.01)
        run.ctl[STOP] = 1
        settle(lambda: min(pub.acked, sub.stats.unique), lambda: pub.sent, cfg.drain)
        metrics = window_metrics(cluster, first, last)
        since = began + cfg.warmup
        timed = [i for i in range(min(pub.sent, count)) if sent_at[i] >= since]
        to_ack = sorted(1e3 * (acked_at[i] - sent_at[i]) for i in timed if acked_at[i])
        to_sub = sorted(1e3 * (seen_at[i] - sent_at[i]) for i in timed if seen_at[i])
        metrics[PUBACK_P50] = percentile(to_ack, 0.5)
        metrics[PUBACK_P99] = percentile(to_ack, 0.99)
        metrics[DELIVERY_P50] = percentile(to_sub, 0.5)
        metrics[DELIVERY_P99] = percentile(to_sub, 0.99)
        metrics[LOST] = lost_of(acked, sub.seen, 0)
        metrics[DUPLICATES] = sub.stats.duplicates
        metrics[UNACKED] = pub.sent - pub.acked
        errors = pub.errors + pub.closed + sub.stats.errors + sub.stats.closed
        return OverloadResult(metrics, errors=errors)
    finally:
        run.finish()
        note = discard_session(cluster.port(setup.subscriber), sub_id)
        if note:
            log(note)


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    run: Callable
    columns: tuple[str, ...]
    #: the setups it runs in (None: all)
    setups: tuple[str, ...] | None = None


SCENARIO_KEYS = ("qos0-flood", "qos0-paced", "qos1-clean", "qos1-persistent", "puback-latency")


def scenarios(cfg) -> list[Scenario]:
    return [
        Scenario(
            "qos0-flood",
            f"QoS 0 flooded ({cfg.flood_seconds:g} s, publishers write as fast as TCP takes "
            "it) -> 1 clean-session subscriber; accepted = written by the publishers",
            qos0_flood,
            (ACCEPTED, DELIVERED, RATIO, *CPU_COLUMNS),
        ),
        Scenario(
            "qos0-paced",
            f"QoS 0 paced at {cfg.qos0_rate:,} msg/s in total ({cfg.seconds:g} s) -> 1 "
            "clean-session subscriber; end-to-end latency",
            qos0_paced,
            (ACCEPTED, DELIVERED, DROPPED, LAT_P50, LAT_P99, *CPU_COLUMNS),
        ),
        Scenario(
            "qos1-clean",
            f"QoS 1, {QOS1_WINDOW} unacked per publisher ({cfg.seconds:g} s) -> 1 "
            "clean-session QoS 1 subscriber acking at once; accepted = PUBACKed",
            partial(qos1, clean=True),
            (ACCEPTED, DELIVERED, LOST, DUPLICATES, UNACKED, *CPU_COLUMNS),
        ),
        Scenario(
            "qos1-persistent",
            f"QoS 1, {QOS1_WINDOW} unacked per publisher ({cfg.seconds:g} s) -> 1 "
            "persistent (clean session 0) QoS 1 subscriber acking at once",
            partial(qos1, clean=False),
            (ACCEPTED, DELIVERED, LOST, DUPLICATES, UNACKED, *CPU_COLUMNS),
        ),
        Scenario(
            "puback-latency",
            f"QoS 1 paced at {cfg.qos1_rate:,} msg/s ({cfg.latency_seconds:g} s) -> 1 "
            "persistent subscriber: the cost of the Redis round trip",
            puback_latency,
            (
                PUBACK_P50,
                PUBACK_P99,
                DELIVERY_P50,
                DELIVERY_P99,
                LOST,
                NODE_US,
                REDIS_US,
                REDIS_CMDS,
                BUSY,
            ),
            ("single", "c1", "c2"),
        ),
    ]


# -- report --------------------------------------------------------------------------


def stats_of(values: list[float]) -> tuple[float, float, float, int]:
    defined = [v for v in values if v == v]
    if not defined:
        return float("nan"), float("nan"), float("nan"), 0
    return statistics.median(defined), min(defined), max(defined), len(defined)


def cell(runs: list[OverloadResult], metric: str) -> str:
    mid, low, high, count = stats_of([r.metrics.get(metric, float("nan")) for r in runs])
    if not count:
        return "n/a"
    if count == 1 or low == high:
        return fmt_value(mid)
    return f"{fmt_value(mid)} ({fmt_value(low)}–{fmt_value(high)})"


def median_of(results: dict, scenario: str, setup: str, metric: str) -> float:
    runs = results.get(scenario, {}).get(setup) or []
    return stats_of([r.metrics.get(metric, float("nan")) for r in runs])[0]


def tables(results: dict, cfg) -> str:
    out = []
    for scenario in scenarios(cfg):
        per = results.get(scenario.key)
        if not per:
            continue
        out.append(f"\n### {scenario.key}: {scenario.title}\n")
        out.append("| setup | " + " | ".join(scenario.columns) + " | runs |")
        out.append("|---|" + "---:|" * (len(scenario.columns) + 1))
        notes = []
        for setup in SETUPS:
            runs = per.get(setup.key)
            if not runs:
                continue
            cells = [cell(runs, metric) for metric in scenario.columns]
            out.append(f"| {setup.key}: {setup.title} | " + " | ".join(cells) + f" | {len(runs)} |")
            errors = sum(r.errors for r in runs)
            if errors:
                notes.append(f"{setup.key}: {errors} framing errors / closed connections")
            lost = sum(r.metrics.get(LOST, 0) for r in runs)
            if lost:
                notes.append(
                    f"{setup.key}: {lost:,} QoS 1 messages LOST (PUBACKed, never delivered)"
                )
        if notes:
            out.append("")
            out += [f"- {note}" for note in notes]
    return "\n".join(out)


def projection(results: dict) -> str:
    """N-core projection from the measured CPU per message of the nodes and of Redis."""
    lines = [
        "\n### Projection to N cores (computed, not measured)\n",
        "A message published on one node and delivered on another costs the CPU time of both "
        "nodes (the c2 rows: publisher's node + subscriber's node) plus Redis's. With N cores "
        "for nodes (clients spread evenly) and one core for Redis, which runs its commands on "
        "one thread: cluster throughput ≈ min(N × 10⁶ / node µs per msg, 10⁶ / Redis µs per "
        "msg). The costs were measured with every process on one core (so with some "
        "contention, and at saturation, where batching makes a message cheaper than at low "
        "rates); the projection ignores the network between hosts and the generator's limits.\n",
    ]
    for key, what in (
        ("qos0-flood", "QoS 0, clean-session subscriber"),
        ("qos1-clean", "QoS 1, clean-session subscriber"),
        ("qos1-persistent", "QoS 1, persistent subscriber"),
    ):
        node = median_of(results, key, "c2", NODE_US)
        redis = median_of(results, key, "c2", REDIS_US)
        single = median_of(results, key, "single", NODE_US)
        if node != node or redis != redis or node <= 0:
            continue
        runs = results[key]["c2"]
        each = [
            statistics.median(r.metrics[EACH_NODE][i] for r in runs)
            for i in range(len(runs[0].metrics[EACH_NODE]))
        ]
        redis_cap = 1e6 / redis if redis > 0 else float("inf")
        accepted = median_of(results, key, "c2", ACCEPTED)
        delivered = median_of(results, key, "c2", DELIVERED)
        lost = sum(r.metrics.get(LOST, 0) for r in runs)
        caveat = ""
        if lost or delivered < 0.9 * accepted:
            caveat = (
                f" (caveat: the c2 row delivered {fmt_value(delivered)} of "
                f"{fmt_value(accepted)} msg/s accepted"
                + (f" and LOST {fmt_value(lost)}" if lost else "")
                + ", so its cost per delivered message includes messages not delivered)"
            )
        points = ", ".join(
            f"N={n}: {fmt_value(min(n * 1e6 / node, redis_cap))}" for n in (1, 2, 4, 8)
        )
        lines.append(
            f"- {what}: nodes {node:.1f} µs/msg (n0 {each[0]:.1f} + n1 {each[1]:.1f}), Redis "
            f"{redis:.1f} µs/msg (Redis caps the cluster at {fmt_value(redis_cap)} msg/s); "
            f"projected msg/s {points}"
            + (
                f"; a single broker on one core: {single:.1f} µs/msg, {fmt_value(1e6 / single)} "
                "msg/s"
                if single == single and single > 0
                else ""
            )
            + caveat
            + "."
        )
    return "\n".join(lines)


def report(results: dict, cfg, header: list[str], log_notes: list[str]) -> str:
    out = [
        f"## Cluster overhead ({'quick' if cfg.quick else 'full'} run, {cfg.rounds} round"
        f"{'s' if cfg.rounds != 1 else ''}: median (min–max))\n",
        *header,
        tables(results, cfg),
    ]
    lost = any(
        r.metrics.get(LOST, 0) for per in results.values() for runs in per.values() for r in runs
    )
    if lost and any("is full" in line for line in log_notes):
        out.append(
            "\n**LOST > 0**: the subscriber's node logged `queue of client ... is full ... "
            "dropping messages` (once per episode, so the count in the log understates it; "
            "LOST is exact). Deliveries that reach a node through Redis (a persistent "
            "session's stored deliveries, and forwards from other nodes) have no publisher "
            "connection on that node to hold back, so past twice --max-queued-messages they "
            "are dropped at once, although the publisher's node has PUBACKed them; the single "
            "broker holds the publisher back instead. With --node-options "
            "'--max-queued-messages 1000000 --max-queued-bytes 0' (and a longer --drain for "
            "the backlog) nothing should be lost."
        )
    out.append(projection(results))
    if log_notes:
        out.append("\n### Node and Redis logs\n")
        shown = log_notes[:30]
        out += [f"- {line}" for line in shown]
        if len(log_notes) > len(shown):
            out.append(f"- ... {len(log_notes) - len(shown)} more")
    else:
        out.append(
            "\nNode logs: no tracebacks, errors or warnings; Redis log: no output buffer "
            "disconnections."
        )
    return "\n".join(out)


# -- main ----------------------------------------------------------------------------


class Config:
    def __init__(self, args) -> None:
        quick = args.quick
        self.quick = quick
        self.rounds = args.rounds or (1 if quick else 3)
        self.warmup = 0.3 if quick else 0.5
        self.flood_seconds = 2.0 if quick else 5.0
        self.seconds = 1.5 if quick else 3.0
        self.latency_seconds = 2.0 if quick else 5.0
        self.drain = args.drain or (2.0 if quick else 3.0)
        self.qos0_rate = args.qos0_rate
        self.qos1_rate = args.qos1_rate
        self.gen_core = bench.GEN_CORE


def summary(result: OverloadResult, columns: tuple[str, ...]) -> str:
    parts = [
        f"{k.split(' (')[0]} {fmt_value(result.metrics[k])}" for k in columns if k in result.metrics
    ]
    if result.errors:
        parts.append(f"errors {result.errors}")
    return ", ".join(parts)


def git_head() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=bench.ROOT,
        )
        return done.stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def terminate(signum, frame) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short round (< 2 min)")
    parser.add_argument("--rounds", type=int, help="rounds of every scenario (default 3; 1 quick)")
    parser.add_argument("--only", help="comma-separated scenarios: " + ",".join(SCENARIO_KEYS))
    parser.add_argument("--setups", help="comma-separated: " + ",".join(s.key for s in SETUPS))
    parser.add_argument(
        "--node-options",
        default="",
        help="extra options of every node and of the single broker, e.g. "
        '"--max-queued-messages 100000"',
    )
    parser.add_argument("--qos0-rate", type=int, default=2_000, help="qos0-paced total msg/s")
    parser.add_argument("--qos1-rate", type=int, default=1_000, help="puback-latency msg/s")
    parser.add_argument(
        "--drain", type=float, help="seconds at most to wait for deliveries after publishing"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, terminate)
    # Ctrl-C even when started from a shell that ignores SIGINT in background jobs
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if not bench.TWISTD.exists():
        sys.exit(f"{bench.TWISTD} not found")
    if not Path(REDIS).exists():
        sys.exit("redis-server not found")
    began = time.monotonic()
    bench.raise_nofile()
    if len(os.sched_getaffinity(0)) < 2 or (os.cpu_count() or 1) < 2:
        log("warning: fewer than 2 cores; brokers and generator will share a core")
        bench.GEN_CORE = bench.BROKER_CORE
    os.sched_setaffinity(0, {bench.GEN_CORE})
    cfg = Config(args)
    node_options = tuple(shlex.split(args.node_options))
    every = scenarios(cfg)
    only = args.only.split(",") if args.only else [s.key for s in every]
    wanted = args.setups.split(",") if args.setups else [s.key for s in SETUPS]
    for name in only:
        if name not in {s.key for s in every}:
            sys.exit(f"unknown scenario {name}")
    for name in wanted:
        if name not in {s.key for s in SETUPS}:
            sys.exit(f"unknown setup {name}")
    load = os.getloadavg()[0]
    header = [
        f"Commit {git_head()}; {os.cpu_count()} cores; nodes, single broker and redis-server "
        f"(AOF everysec) on core {bench.BROKER_CORE}, generator on core {bench.GEN_CORE}. "
        f"On this machine the nodes of a cluster and Redis share core {bench.BROKER_CORE}: "
        "the figures show the cluster's overhead per message, not how it scales (see the "
        "projection). CPU µs/msg: CPU time per delivered message over the measured window "
        "(nodes: summed over all nodes); Redis cmds/msg counts the commands Lua scripts run. "
        + (
            f"Every broker runs with {args.node_options}. "
            if node_options
            else "Brokers with their default limits. "
        )
        + "Load average before the run "
        f"{load:.2f}"
        + (" (other work on this machine makes the numbers noisy)" if load > 0.5 else "")
        + ".",
    ]
    log(header[0])
    sizes = sorted({s.nodes for s in SETUPS if s.key in wanted})
    results: dict = {}
    log_notes: list[str] = []
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    tmpname = tempfile.mkdtemp(prefix="mqtt-cluster-bench-")
    tmp = Path(tmpname)
    try:
        for rnd in range(cfg.rounds):
            order = sizes if rnd % 2 == 0 else sizes[::-1]
            for size in order:
                cluster = Cluster(size, tmp / f"round{rnd + 1}-size{size}", node_options)
                try:
                    try:
                        cluster.start()
                    except Exception as error:  # noqa: BLE001
                        log(f"round {rnd + 1}: cluster of {size} did not start: {error}")
                        continue
                    for setup in SETUPS:
                        if setup.nodes != size or setup.key not in wanted:
                            continue
                        for scenario in every:
                            if scenario.key not in only:
                                continue
                            if scenario.setups and setup.key not in scenario.setups:
                                continue
                            try:
                                cluster.check()
                                r = scenario.run(cluster, setup, cfg)
                            except Exception as error:  # noqa: BLE001
                                log(f"round {rnd + 1} {scenario.key} {setup.key}: FAILED {error}")
                                continue
                            results.setdefault(scenario.key, {}).setdefault(setup.key, []).append(r)
                            log(
                                f"round {rnd + 1} {scenario.key:<15} {setup.key:<6} "
                                f"{summary(r, scenario.columns)}"
                            )
                            time.sleep(0.3)
                finally:
                    cluster.stop()
                    log_notes += [
                        f"round {rnd + 1} size {size}: {line}" for line in cluster.suspect_lines()
                    ]
        text = report(results, cfg, header, log_notes)
        log("\n" + text)
        (out_dir / "cluster-last.md").write_text(text + "\n")
        raw = {
            key: {name: [asdict(r) for r in runs] for name, runs in per.items()}
            for key, per in results.items()
        }
        (out_dir / "cluster-last.json").write_text(json.dumps(raw, indent=1))
        log("\nsaved bench/results/cluster-last.md and cluster-last.json")
    except (KeyboardInterrupt, SystemExit):
        log("interrupted: every node, broker, redis-server and generator worker stopped")
        raise
    finally:
        if args.keep:
            log(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"(total {time.monotonic() - began:.0f} s)")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
