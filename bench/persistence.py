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

``python bench/run.py --only persist-restart``: restart time (see restart.py).

``python bench/soak.py --minutes 10`` (not part of run.py): a long steady load on one broker
with sqlite, printing the store file's size every 30 s (see soak.py).
"""

from __future__ import annotations

import os
import shutil
import time
from functools import partial
from pathlib import Path

import gen
from brokerprobe import (
    OURS_QUEUE_LIMIT,
    REFERENCE,
    files_size,
    filesystem_warning,
    fsync_probe,
    log_offset,
    make_broker,
    mib,
    percentile,
    suspect_lines,
    written_bytes,
)
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
from wire import DISCONNECT, NumberedPublishes, open_client

#: paced scenario: the publisher's rate; all: its unacknowledged PUBLISHes at most
PACED_RATE = 2_000
WINDOW = 64
#: the persistent subscriber's client id (every run has a fresh broker and store)
SUBSCRIBER_ID = "persist-sub"

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


# -- persist-qos1-paced and persist-qos1-flood --------------------------------------------


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
