"""Soak: does our broker's SQLite store stay flat under a steady persistent-session load?

``python bench/soak.py --minutes 10`` (``--minutes 1`` for a quick check; not part of
run.py). One broker of ours with ``--store sqlite:FILE --store-sync full`` (queue limits off:
``--max-queued-messages 100000000 --max-queued-bytes 0``) in a temp directory (``--dir``),
pinned to core 0, the generator on core 1, for N minutes:

- a few QoS 1 publishers (``--publishers``, default 3) at a moderate fixed rate together
  (``--rate``, default 1,000 msg/s), numbered messages on ``soak/data/<i>``;
- persistent subscribers (clean session 0) of ``soak/data/+`` at QoS 1 acking at once: two
  that stay connected and one that disconnects and comes back every few seconds (``--cycle
  ON,OFF``, default 4,3 seconds), so messages are queued for it, stored, then delivered and
  deleted;
- retained messages (QoS 1) on ``--retained`` topics (default 200) ``soak/ret/<k>``, set and
  cleared in turn at ``--retained-rate`` per second (default 20).

Every ``--interval`` seconds (default 30) a line: elapsed, messages PUBACKed, delivered (all
subscribers, distinct), the cycling subscriber's reconnections, the size of the .sqlite file
and of its -wal file, the broker's RSS and what it wrote to disk. At the end: every
subscriber gets what it is owed (the cycling one reconnects for good), LOST (PUBACKed to a
publisher, never delivered to a subscriber) per subscriber, duplicates, and the first, last
and maximum file sizes and RSS: a flat file keeps its size after the first minutes.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import selectors
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import brokerprobe  # noqa: E402
import gen  # noqa: E402
import restart  # noqa: E402
import run  # noqa: E402
from gen import FAILED, GO, QUIT, READY, STOP, PublisherStats, pin, wait_flag  # noqa: E402
from harness import Run, ctx, settle  # noqa: E402
from overload import count_lost  # noqa: E402
from wire import DISCONNECT, NumberedPublishes, open_client, publish_packet  # noqa: E402


def log(text: str) -> None:
    print(text, flush=True)


class SoakSubscriberStats(ctypes.Structure):
    _fields_ = [
        ("received", ctypes.c_int64),  # PUBLISHes read, duplicates included
        ("unique", ctypes.c_int64),
        ("duplicates", ctypes.c_int64),
        ("errors", ctypes.c_int64),  # bad packets, unknown publisher, number out of range
        ("connects", ctypes.c_int64),  # connections made after the first one
        ("dropped", ctypes.c_int64),  # connections the broker closed or that failed
    ]


class RetainerStats(ctypes.Structure):
    _fields_ = [("sent", ctypes.c_int64), ("acked", ctypes.c_int64), ("errors", ctypes.c_int64)]


def soak_subscriber(
    core, port, client_id, topic_filter, cycle, flags, stats, slot, state, ctl, deadline
):
    """A persistent QoS 1 subscriber of numbered messages from several publishers.

    ``flags[p][seq]`` is set for each message of publisher ``p`` read. ``cycle`` (on, off):
    it disconnects after ``on`` seconds connected and comes back ``off`` seconds later
    (clean session 0, no SUBSCRIBE); after STOP it stays connected. PUBLISHes are parsed one
    by one (a moderate rate: no need for the strided tricks of gen.py).
    """
    pin(core)
    try:
        s = open_client(port, client_id, topic_filter, 1, clean=False)
    except Exception as error:  # noqa: BLE001
        print(f"soak subscriber {client_id}: {error}", flush=True)
        state[slot] = FAILED
        return
    views = [memoryview(f).cast("B") for f in flags]
    state[slot] = READY
    if not wait_flag(ctl, GO, deadline):
        s.close()
        return
    connected_at = time.monotonic()
    buf = bytearray()
    sel = selectors.DefaultSelector()
    sel.register(s, selectors.EVENT_READ)

    def reconnect(after: float) -> None:
        nonlocal s, connected_at, buf
        sel.unregister(s)
        s.close()
        end = time.monotonic() + after
        while time.monotonic() < end and not ctl[QUIT] and not ctl[STOP]:
            time.sleep(0.02)
        while time.monotonic() < deadline and not ctl[QUIT]:
            try:
                s = open_client(port, client_id, None, 1, clean=False, timeout=5.0)
                break
            except (OSError, ConnectionError) as error:
                print(f"soak subscriber {client_id}: reconnect: {error}", flush=True)
                stats.dropped += 1
                time.sleep(0.5)
        stats.connects += 1
        sel.register(s, selectors.EVENT_READ)
        connected_at = time.monotonic()
        buf = bytearray()  # a new connection: whole packets only

    while time.monotonic() < deadline and not ctl[QUIT]:
        if cycle and not ctl[STOP] and time.monotonic() - connected_at > cycle[0]:
            try:
                s.sendall(DISCONNECT)
            except OSError:
                pass
            reconnect(cycle[1])
            continue
        if not sel.select(0.05):
            continue
        try:
            data = s.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            stats.dropped += 1
            reconnect(0.5)
            continue
        buf += data
        acks = []
        pos = 0
        n = len(buf)
        received = unique = duplicates = errors = 0
        while True:
            head = restart.body_at(buf[pos : pos + 5])
            if head is None:
                break
            at, length = head
            end = pos + at + length
            if end > n:
                break
            b0 = buf[pos]
            if b0 >> 4 == 3:
                qos = (b0 >> 1) & 3
                body = pos + at
                tlen = (buf[body] << 8) | buf[body + 1]
                payload = body + 2 + tlen
                if qos:
                    acks.append(b"\x40\x02" + bytes(buf[payload : payload + 2]))
                    payload += 2
                publisher = int.from_bytes(buf[payload : payload + 4], "little")
                seq = int.from_bytes(buf[payload + 4 : payload + 8], "little")
                received += 1
                if publisher >= len(views) or seq >= len(views[publisher]):
                    errors += 1
                elif views[publisher][seq]:
                    duplicates += 1
                else:
                    views[publisher][seq] = 1
                    unique += 1
            pos = end
        del buf[:pos]
        if acks:
            try:
                s.sendall(b"".join(acks))
            except OSError:
                pass
        stats.received += received
        stats.unique += unique
        stats.duplicates += duplicates
        stats.errors += errors
    s.close()


def soak_retainer(core, port, client_id, topics, per_second, stats, slot, state, ctl, deadline):
    """QoS 1 retained messages on ``soak/ret/<k>``, set and cleared in turn, at a fixed rate."""
    pin(core)
    try:
        s = open_client(port, client_id)
    except Exception as error:  # noqa: BLE001
        print(f"soak retainer: {error}", flush=True)
        state[slot] = FAILED
        return
    state[slot] = READY
    if not wait_flag(ctl, GO, deadline):
        s.close()
        return
    start = time.monotonic()
    sent = got = carry = 0
    s.settimeout(0.05)
    try:
        while time.monotonic() < deadline and not ctl[QUIT] and not ctl[STOP]:
            due = int((time.monotonic() - start) * per_second)
            while sent < due and sent - got < 100:
                k = sent % topics
                payload = b"" if (sent // topics) % 2 else b"retained " + str(sent).encode()
                packet = publish_packet(f"soak/ret/{k}", payload, 1, sent % 65535 + 1)
                s.sendall(bytes([packet[0] | 0x01]) + packet[1:])
                sent += 1
            stats.sent = sent
            try:
                data = s.recv(4096)
            except TimeoutError:
                continue
            if not data:
                stats.errors += 1
                break
            total = carry + len(data)
            got += total // 4
            carry = total % 4
            stats.acked = got
    except OSError as error:
        print(f"soak retainer: {error}", flush=True)
        stats.errors += 1
    wait_flag(ctl, QUIT, deadline)
    s.close()


def sizes(path: Path) -> tuple[int, int]:
    """Bytes of the .sqlite file and of its -wal file (0 when absent)."""
    out = []
    for p in (path, path.with_name(path.name + "-wal")):
        try:
            out.append(p.stat().st_size)
        except OSError:
            out.append(0)
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=1000, help="msg/s of all publishers")
    parser.add_argument("--publishers", type=int, default=3)
    parser.add_argument("--cycle", default="4,3", help="ON,OFF seconds of the cycling one")
    parser.add_argument("--retained", type=int, default=200, help="retained topics")
    parser.add_argument("--retained-rate", type=float, default=20.0)
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between lines")
    parser.add_argument("--sync", choices=("full", "normal"), default="full")
    parser.add_argument("--dir", help="directory for the store (default: a temp directory)")
    args = parser.parse_args()
    on, off = (float(x) for x in args.cycle.split(","))
    seconds = args.minutes * 60
    run.raise_nofile()
    gen_core = run.GEN_CORE
    if len(os.sched_getaffinity(0)) < 2 or (os.cpu_count() or 1) < 2:
        log("warning: fewer than 2 cores; broker and generator share a core")
        gen_core = run.BROKER_CORE
    os.sched_setaffinity(0, {gen_core})
    load = os.getloadavg()[0]
    if load > 0.5:
        log(f"warning: load average {load:.2f} before the run")
    with tempfile.TemporaryDirectory(prefix="mqtt-soak-", dir=args.dir) as name:
        soak(Path(name), args, seconds, (on, off), gen_core)


def soak(tmp: Path, args, seconds: float, cycle: tuple[float, float], core: int) -> None:
    warning = brokerprobe.filesystem_warning(tmp)
    if warning:
        log(warning)
    db = tmp / "soak.sqlite"
    broker = run.Broker(
        "soak",
        "ours",
        tmp,
        tuned=False,
        options=(
            "--store",
            f"sqlite:{db}",
            "--store-sync",
            args.sync,
            *brokerprobe.OURS_NO_LIMITS,
        ),
    )
    npub = args.publishers
    per_pub = args.rate / npub
    count = int(per_pub * seconds) + 1000
    names = ["steady-0", "steady-1", "cycling"]
    nsub = len(names)
    deadline = time.monotonic() + 30 + seconds + 120
    work = Run(nsub + npub + 1, deadline)
    sub_stats = [ctx.RawValue(SoakSubscriberStats) for _ in names]
    seen = [[ctx.RawArray("B", count) for _ in range(npub)] for _ in names]
    pubs = [ctx.RawValue(PublisherStats) for _ in range(npub)]
    acked = [ctx.RawArray("B", count) for _ in range(npub)]
    retainer = ctx.RawValue(RetainerStats)
    offset = brokerprobe.log_offset(broker)
    log(
        f"soak: {args.minutes:g} min, store {db} (synchronous {args.sync}); {npub} QoS 1 "
        f"publishers at {args.rate:,} msg/s together -> {nsub} persistent subscribers "
        f"({names[-1]}: {cycle[0]:g} s on, {cycle[1]:g} s off); {args.retained} retained "
        f"topics set/cleared at {args.retained_rate:g}/s"
    )
    broker.start()
    samples = []
    try:
        for i, who in enumerate(names):
            work.spawn(
                soak_subscriber,
                core,
                broker.port,
                f"soak-{who}",
                "soak/data/+",
                cycle if who == "cycling" else None,
                seen[i],
                sub_stats[i],
                i,
                work.state,
                work.ctl,
                deadline,
            )
        work.wait_ready(range(nsub))
        for p in range(npub):
            work.spawn(
                gen.numbered_publisher,
                core,
                broker.port,
                f"soak-pub-{p}",
                NumberedPublishes(f"soak/data/{p}", p),
                64,
                per_pub,
                count,
                nsub + p,
                pubs[p],
                acked[p],
                work.state,
                work.ctl,
                deadline,
            )
        work.spawn(
            soak_retainer,
            core,
            broker.port,
            "soak-retainer",
            args.retained,
            args.retained_rate,
            retainer,
            nsub + npub,
            work.state,
            work.ctl,
            deadline,
        )
        work.wait_ready(range(nsub, nsub + npub + 1))
        wrote = brokerprobe.written_bytes(broker.pid)

        def sample(elapsed: float, label: str = "") -> dict:
            main_db, wal = sizes(db)
            row = {
                "elapsed": elapsed,
                "acked": sum(p.acked for p in pubs),
                "delivered": sum(s.unique for s in sub_stats),
                "reconnects": sub_stats[-1].connects,
                "db": main_db,
                "wal": wal,
                "rss": brokerprobe.rss_mib(broker.pid),
                "wrote": brokerprobe.written_bytes(broker.pid) - wrote,
                "retained": retainer.acked,
            }
            samples.append(row)
            log(
                f"{elapsed / 60:6.1f} min  acked {row['acked']:>9,}  delivered "
                f"{row['delivered']:>9,}  reconnects {row['reconnects']:>4}  retained set/clr "
                f"{row['retained']:>6,}  sqlite {brokerprobe.mib(main_db):7.2f} MiB  wal "
                f"{brokerprobe.mib(wal):7.2f} MiB  RSS {row['rss']:6.1f} MiB  wrote "
                f"{brokerprobe.mib(row['wrote']):8.1f} MiB{label}"
            )
            return row

        work.ctl[GO] = 1
        began = time.monotonic()
        sample(0.0)
        nxt = args.interval
        while True:
            now = time.monotonic() - began
            if now >= seconds:
                break
            if broker.process.poll() is not None:
                log(f"broker exited ({broker.process.returncode}); see {broker.log_path}")
                break
            if now >= nxt:
                sample(now)
                nxt += args.interval
            time.sleep(min(0.2, max(0.0, min(nxt, seconds) - now)))
        work.ctl[STOP] = 1
        sample(time.monotonic() - began, "  (publishing stopped)")
        # the publishers collect their last PUBACKs, the cycling subscriber comes back
        settle(lambda: sum(p.acked for p in pubs), lambda: sum(p.sent for p in pubs), 10)
        total = sum(p.acked for p in pubs)
        drain_began = time.monotonic()
        settle(lambda: min(s.unique for s in sub_stats), lambda: total, 60)
        drained = time.monotonic() - drain_began
        final = sample(time.monotonic() - began, "  (after the drain)")
        report(samples, final, names, sub_stats, seen, acked, pubs, retainer, total, drained)
    finally:
        work.finish()
        took, code = brokerprobe.stop_broker(broker)
        main_db, wal = sizes(db)
        log(
            f"broker stopped in {took:.2f} s (exit status {code}; -15: twistd's own exit after "
            f"SIGTERM); after stop: sqlite {brokerprobe.mib(main_db):.2f} MiB, wal "
            f"{brokerprobe.mib(wal):.2f} MiB"
        )
        lines = brokerprobe.suspect_lines(broker, offset, limit=10)
        log("broker log: " + ("nothing suspect" if not lines else ""))
        for line in lines:
            log(f"  {line}")


def report(samples, final, names, sub_stats, seen, acked, pubs, retainer, total, drained):
    log("\n=== Soak results ===")
    log(
        f"published (PUBACKed) {total:,}, unacked at end "
        f"{sum(p.sent - p.acked for p in pubs):,}; retained set/cleared {retainer.acked:,} "
        f"(unacked {retainer.sent - retainer.acked}); drain after stop {drained:.1f} s"
    )
    for i, who in enumerate(names):
        st = sub_stats[i]
        lost = sum(count_lost(acked[p], seen[i][p]) for p in range(len(pubs)))
        log(
            f"  {who:<9} delivered {st.unique:>9,}  LOST {lost:>6,}  duplicates "
            f"{st.duplicates:>6,}  reconnects {st.connects:>4}  dropped/failed connections "
            f"{st.dropped}  errors {st.errors}"
        )
    errors = sum(p.errors + p.closed for p in pubs) + retainer.errors
    if errors:
        log(f"  publisher errors/closed connections: {errors}")
    for key, label in (("db", "sqlite MiB"), ("wal", "wal MiB"), ("rss", "RSS MiB")):
        values = [s[key] for s in samples]
        scale = brokerprobe.mib if key != "rss" else float
        half = values[len(values) // 2 :]
        log(
            f"  {label:<11} first {scale(values[0]):8.2f}  last {scale(values[-1]):8.2f}  max "
            f"{scale(max(values)):8.2f}  change over the second half "
            f"{scale(half[-1] - half[0]):+8.2f}"
        )
    minutes = final["elapsed"] / 60
    log(
        f"  broker wrote {brokerprobe.mib(final['wrote']):.1f} MiB in {minutes:.1f} min "
        f"({brokerprobe.mib(final['wrote']) / max(minutes, 1e-9):.1f} MiB/min)"
    )


if __name__ == "__main__":
    main()
