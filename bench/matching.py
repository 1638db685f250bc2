"""Scaling of subscription matching: SubscriptionTree.match and Broker.publish with N subscriptions.

Pure and in-process: ``.venv/bin/python bench/matching.py [--quick]``. A trie should make
the cost of one match depend on the topic's depth and on how many filters match, not on how
many subscriptions exist.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mqtt_twisted.topics import SubscriptionTree  # noqa: E402


def filters(n: int) -> list[str]:
    """n filters: 80 % exact topics, 10 % with '+', 10 % ending in '#', over 4-5 levels."""
    out = []
    for i in range(n):
        site, dev = divmod(i, 100)
        kind = i % 10
        if kind == 8:
            out.append(f"site/{site}/+/{dev}/temp")
        elif kind == 9:
            out.append(f"site/{site}/dev/{dev}/#")
        else:
            out.append(f"site/{site}/dev/{dev}/temp{kind}")
    return out


def time_per_call(fn, arg, seconds: float, max_calls: int = 2_000_000) -> float:
    """Mean seconds per call of fn(arg), over at least `seconds` (bounded by max_calls)."""
    calls = 0
    batch = 1000
    start = time.perf_counter()
    end = start + seconds
    while calls < max_calls:
        for _ in range(batch):
            fn(arg)
        calls += batch
        if time.perf_counter() >= end:
            break
    return (time.perf_counter() - start) / calls


def tree_rows(sizes, seconds):
    rows = []
    for n in sizes:
        tree: SubscriptionTree = SubscriptionTree()
        for i, f in enumerate(filters(n)):
            tree.add(f, i, 0)
        site, dev = divmod((n // 2) // 10 * 10 + 3, 100)
        topic_hit = f"site/{site}/dev/{dev}/temp3"  # one exact filter and its '#' neighbour
        topic_miss = "other/thing/that/matches/nothing"
        hits = sum(len(d) for d in tree.match(topic_hit))
        rows.append(
            (
                n,
                hits,
                time_per_call(tree._match, topic_hit, seconds) * 1e6,  # the trie walk
                time_per_call(tree._match, topic_miss, seconds) * 1e6,
                time_per_call(tree.match, topic_hit, seconds) * 1e6,
            )
        )  # cached
    return rows


def broker_rows(sizes, seconds):
    """Broker.publish of a QoS 0 message matching one (offline) session among n."""
    try:
        from twisted.internet.task import Clock

        from mqtt_twisted.broker import Broker, Message
        from mqtt_twisted.packets import SubscriptionRequest
    except ImportError as error:
        return f"skipped ({error})"
    rows = []
    try:
        for n in sizes:
            broker = Broker(Clock())
            for i in range(n):  # offline persistent sessions: no connection
                session, _ = broker.open_session(f"c{i}", False, None)
                broker.subscribe(session, [SubscriptionRequest(f"t/{i}/x", 0)])
            message = Message("t/0/x", b"x" * 64, 0)
            rows.append((n, time_per_call(broker.publish, message, seconds) * 1e6))
    except Exception as error:  # noqa: BLE001  (the broker API is being reworked)
        return f"skipped ({type(error).__name__}: {error})"
    return rows


def report(quick: bool) -> str:
    sizes = (10, 1_000, 100_000)
    seconds = 0.2 if quick else 1.0
    lines = [
        "Matching scaling (in-process, pure; generator core)",
        f"{'subscriptions':>13} {'matched':>8} {'trie walk hit µs':>17} "
        f"{'trie walk miss µs':>18} {'match() cached µs':>18}",
    ]
    for n, hits, hit, miss, cached in tree_rows(sizes, seconds):
        lines.append(f"{n:>13,} {hits:>8} {hit:>17.2f} {miss:>18.2f} {cached:>18.2f}")
    rows = broker_rows(sizes, seconds)
    if isinstance(rows, str):
        lines.append(f"Broker.publish: {rows}")
    else:
        lines.append(f"{'sessions':>13} {'Broker.publish µs (1 match, offline)':>40}")
        for n, us in rows:
            lines.append(f"{n:>13,} {us:>40.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    print(report(parser.parse_args().quick))
