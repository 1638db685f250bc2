"""Load-generator processes (multiprocessing, fork): publishers, subscribers, idle clients.

Every worker pins itself to the generator core, talks to the coordinator through shared
counters (``multiprocessing.RawArray``, no locks: one writer per slot), and every loop is
bounded by a deadline. Control slots: ``ctl[GO]`` is set when all workers are ready,
``ctl[STOP]`` when publishing must end, ``ctl[QUIT]`` when everybody must leave.
"""

from __future__ import annotations

import ctypes
import os
import selectors
import socket
import time

from wire import acknowledged_seq, open_client, pubacks, publish_packet, strided_u32

GO, STOP, QUIT = 0, 1, 2
READY, FAILED = 1, -1


def pin(core: int | None) -> None:
    if core is not None:
        try:
            os.sched_setaffinity(0, {core})
        except OSError:
            pass


def wait_flag(ctl, index: int, deadline: float) -> bool:
    while not ctl[index] and not ctl[QUIT]:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return bool(ctl[index])


# -- subscribers ---------------------------------------------------------------------


def subscriber(
    core, port, client_ids, topic_filter, qos, size, slot, delivered, state, bad, ctl, deadline
):
    """Subscribe every client id, then count fixed-size PUBLISHes; ack them at QoS 1."""
    pin(core)
    socks = []
    try:
        for client_id in client_ids:
            socks.append(open_client(port, client_id, topic_filter, qos))
    except Exception as error:  # noqa: BLE001
        print(f"subscriber {slot}: {error}", flush=True)
        state[slot] = FAILED
        return
    header = 0x30 | (qos << 1)
    sel = selectors.DefaultSelector()
    carry = {}
    pending = {}
    for s in socks:
        s.settimeout(5.0)
        sel.register(s, selectors.EVENT_READ)
        carry[s] = 0
        pending[s] = bytearray()
    state[slot] = READY
    count = 0
    errors = 0
    pid_at = None  # packet id offset in a delivered PUBLISH: 2 + 2 + topic length
    while time.monotonic() < deadline and not ctl[QUIT]:
        for key, _ in sel.select(0.05):
            s = key.fileobj
            try:
                data = s.recv(1 << 20)
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(s)
                errors += 1
                continue
            if qos == 0:
                c = carry[s]
                start = (size - c) % size
                heads = data[start::size]
                if heads.count(header) != len(heads):
                    errors += 1
                total = c + len(data)
                count += total // size
                carry[s] = total % size
            else:
                buf = pending[s]
                buf += data
                n = len(buf) // size
                if not n:
                    continue
                chunk = bytes(buf[: n * size])
                del buf[: n * size]
                heads = chunk[0::size]
                if heads.count(header) + heads.count(header | 0x08) != n:
                    errors += 1
                if pid_at is None:
                    pid_at = 4 + ((chunk[2] << 8) | chunk[3])
                acks = bytearray(4 * n)
                acks[0::4] = b"\x40" * n
                acks[1::4] = b"\x02" * n
                acks[2::4] = chunk[pid_at::size][:n]
                acks[3::4] = chunk[pid_at + 1 :: size][:n]
                try:
                    s.sendall(acks)
                except OSError:
                    errors += 1
                count += n
            delivered[slot] = count
        bad[slot] = errors
    for s in socks:
        s.close()


def latency_subscriber(
    core, port, client_id, topic_filter, slot, state, samples, nsamples, ctl, deadline
):
    """One QoS 0 subscriber recording (receive time - send time stamped in the payload)."""
    pin(core)
    try:
        s = open_client(port, client_id, topic_filter, 0)
    except Exception as error:  # noqa: BLE001
        print(f"latency subscriber: {error}", flush=True)
        state[slot] = FAILED
        return
    s.settimeout(0.05)
    state[slot] = READY
    buf = b""
    n = 0
    cap = len(samples)
    while time.monotonic() < deadline and not ctl[QUIT]:
        try:
            data = s.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break
        now = time.monotonic_ns()
        if not data:
            break
        buf += data
        pos = 0
        for _ in range(100_000):
            if len(buf) - pos < 2:
                break
            size = 2 + buf[pos + 1]  # payloads are small: one-byte remaining length
            if len(buf) - pos < size:
                break
            if buf[pos] & 0xF0 == 0x30 and n < cap:
                topic_len = (buf[pos + 2] << 8) | buf[pos + 3]
                at = pos + 4 + topic_len
                sent_ns = int.from_bytes(buf[at : at + 8], "big")
                samples[n] = (now - sent_ns) / 1e6  # milliseconds
                n += 1
            pos += size
        buf = buf[pos:]
        nsamples[slot] = n
    s.close()


# -- publishers ----------------------------------------------------------------------


def publisher(
    core,
    port,
    client_id,
    topic,
    payload,
    slot,
    sent,
    delivered,
    fanout,
    window,
    batch,
    state,
    ctl,
    deadline,
):
    """QoS 0 at full speed, but never more than ``window`` deliveries ahead of the subscribers."""
    pin(core)
    try:
        s = open_client(port, client_id)
    except Exception as error:  # noqa: BLE001
        print(f"publisher {slot}: {error}", flush=True)
        state[slot] = FAILED
        return
    chunk = publish_packet(topic, payload, 0) * batch
    state[slot] = READY
    if not wait_flag(ctl, GO, deadline):
        s.close()
        return
    n = 0
    try:
        while not ctl[STOP] and time.monotonic() < deadline:
            if sum(sent) * fanout - sum(delivered) > window:
                time.sleep(0.0002)
                continue
            s.sendall(chunk)
            n += batch
            sent[slot] = n
    except OSError as error:
        print(f"publisher {slot}: {error}", flush=True)
    wait_flag(ctl, QUIT, deadline)
    s.close()


def qos1_publisher(
    core, port, client_id, topic, payload, window, slot, sent, acked, state, ctl, deadline
):
    """QoS 1 with at most ``window`` PUBLISHes waiting for their PUBACK."""
    pin(core)
    try:
        s = open_client(port, client_id)
    except Exception as error:  # noqa: BLE001
        print(f"qos1 publisher: {error}", flush=True)
        state[slot] = FAILED
        return
    ids = 4096  # cycled; never more than ``window`` in flight, so never reused too early
    packets = [publish_packet(topic, payload, 1, i + 1) for i in range(ids)]
    state[slot] = READY
    if not wait_flag(ctl, GO, deadline):
        s.close()
        return
    s.settimeout(0.5)
    n = 0
    got = 0
    carry = 0
    stopping_deadline = None
    try:
        while time.monotonic() < deadline and not ctl[QUIT]:
            if ctl[STOP]:
                if got >= n:
                    break
                if stopping_deadline is None:
                    stopping_deadline = time.monotonic() + 5
                elif time.monotonic() > stopping_deadline:
                    break
            elif n - got < window:
                k = window - (n - got)
                first = n % ids
                if first + k <= ids:
                    s.sendall(b"".join(packets[first : first + k]))
                else:
                    s.sendall(b"".join(packets[first:] + packets[: first + k - ids]))
                n += k
                sent[slot] = n
            try:
                data = s.recv(65536)
            except TimeoutError:
                continue
            if not data:
                break
            start = (4 - carry) % 4
            heads = data[start::4]
            if heads.count(0x40) != len(heads):
                print("qos1 publisher: unexpected packet from broker", flush=True)
            total = carry + len(data)
            got += total // 4
            carry = total % 4
            acked[slot] = got
    except OSError as error:
        print(f"qos1 publisher: {error}", flush=True)
    wait_flag(ctl, QUIT, deadline)
    s.close()


def latency_publisher(core, port, client_id, topic, rate, count, slot, sent, state, ctl, deadline):
    """``count`` QoS 0 messages at a fixed ``rate``, each stamped with its send time."""
    pin(core)
    try:
        s = open_client(port, client_id)
    except Exception as error:  # noqa: BLE001
        print(f"latency publisher: {error}", flush=True)
        state[slot] = FAILED
        return
    state[slot] = READY
    if not wait_flag(ctl, GO, deadline):
        s.close()
        return
    head = publish_packet(topic, b"\x00" * 64, 0)[:-64]
    pad = b"x" * 56
    interval = 1.0 / rate
    start = time.monotonic()
    try:
        for i in range(count):
            if ctl[STOP] or time.monotonic() > deadline:
                break
            due = start + i * interval
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            s.sendall(head + time.monotonic_ns().to_bytes(8, "big") + pad)
            sent[slot] = i + 1
    except OSError as error:
        print(f"latency publisher: {error}", flush=True)
    wait_flag(ctl, QUIT, deadline)
    s.close()


# -- idle connections ----------------------------------------------------------------


def idle_clients(core, port, prefix, first, count, source, slot, opened, state, ctl, deadline):
    """Open ``count`` connections, each subscribed to its own topic, and hold them."""
    pin(core)
    socks = []
    state[slot] = READY
    try:
        for i in range(first, first + count):
            if time.monotonic() > deadline or ctl[QUIT]:
                break
            socks.append(
                open_client(port, f"{prefix}{i}", f"idle/{i}", 0, source=source, pipelined=True)
            )
            opened[slot] = len(socks)
    except Exception as error:  # noqa: BLE001
        print(f"idle clients {slot}: {error} after {len(socks)}", flush=True)
        state[slot] = FAILED
    wait_flag(ctl, QUIT, deadline)
    for s in socks:  # reset, not FIN: no TIME_WAIT left on the generator side
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        except OSError:
            pass
        s.close()


# -- overload scenarios --------------------------------------------------------------


class PublisherStats(ctypes.Structure):
    """One publisher's counters in shared memory (written by that publisher only)."""

    _fields_ = [
        ("sent", ctypes.c_int64),  # whole PUBLISHes written to the socket
        ("sent_bytes", ctypes.c_int64),
        ("acked", ctypes.c_int64),  # distinct messages PUBACKed (QoS 1)
        ("duplicate_acks", ctypes.c_int64),
        ("errors", ctypes.c_int64),  # unexpected bytes from the broker
        ("closed", ctypes.c_int64),  # 1: the broker closed or reset the connection
        ("local_port", ctypes.c_int64),
        ("max_lag", ctypes.c_int64),  # most messages PUBACKs were behind the schedule (rate)
    ]


class SubscriberStats(ctypes.Structure):
    """One numbered subscriber's counters in shared memory (written by that subscriber only)."""

    _fields_ = [
        ("received", ctypes.c_int64),  # PUBLISHes read, duplicates included
        ("unique", ctypes.c_int64),  # distinct sequence numbers
        ("duplicates", ctypes.c_int64),
        ("out_of_order", ctypes.c_int64),  # new numbers below the highest seen
        ("errors", ctypes.c_int64),  # bad header, foreign publisher, number out of range
        ("closed", ctypes.c_int64),  # 1: the broker closed or reset the connection
        ("closed_at", ctypes.c_double),  # seconds after GO
    ]


#: flooded QoS 0 publishers write pre-encoded batches of about this many bytes
FLOOD_BATCH_BYTES = 64 * 1024


def flood_publisher(
    core, port, client_id, packet, batch, window, slot, stats, delivered, state, ctl, deadline
):
    """QoS 0: the pre-encoded ``packet`` written over and over, as fast as TCP takes it.

    ``window`` None: no pacing at all, the socket is kept full (flooded). Otherwise paced
    (closed loop): writes wait while all publishers together (``stats``) are more than
    ``window`` messages ahead of what the subscriber received (``delivered[0]``). Writes are
    non-blocking, so a broker that stops reading cannot hold the worker past STOP; the packet
    cut by STOP is completed, so every byte written belongs to a whole PUBLISH.
    """
    pin(core)
    try:
        s = open_client(port, client_id)
    except Exception as error:  # noqa: BLE001
        print(f"flood publisher {slot}: {error}", flush=True)
        state[slot] = FAILED
        return
    me = stats[slot]
    me.local_port = s.getsockname()[1]
    size = len(packet)
    ring = memoryview(packet * batch)
    state[slot] = READY
    if not wait_flag(ctl, GO, deadline):
        s.close()
        return
    s.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(s, selectors.EVENT_WRITE)
    written = 0
    try:
        while not ctl[STOP] and time.monotonic() < deadline:
            if window is not None and sum(p.sent for p in stats) - delivered[0] > window:
                time.sleep(0.0002)
                continue
            written += send_some(s, ring[written % len(ring) :], sel)
            me.sent_bytes, me.sent = written, written // size
        end = min(deadline, time.monotonic() + 5)
        while written % size and time.monotonic() < end:
            at = written % len(ring)
            written += send_some(s, ring[at : at + size - written % size], sel)
            me.sent_bytes, me.sent = written, written // size
    except OSError as error:
        print(f"flood publisher {slot}: {error}", flush=True)
        me.closed = 1
    wait_flag(ctl, QUIT, deadline)
    s.close()


def send_some(s: socket.socket, data: memoryview, sel: selectors.BaseSelector) -> int:
    """Write what the non-blocking socket takes now (waiting up to 50 ms for room)."""
    try:
        return s.send(data)
    except BlockingIOError:
        sel.select(0.05)
        return 0


class AckTracker:
    """PUBACKs read by a numbered publisher, as flags by sequence number in shared memory."""

    def __init__(self, flags, stats: PublisherStats, acked_at=None) -> None:
        self.flags = memoryview(flags).cast("B")
        self.stats = stats
        self.pending = bytearray()
        #: optional shared doubles: time.monotonic() at which each PUBACK was read
        self.acked_at = acked_at

    def feed(self, data: bytes, sent: int) -> None:
        """Account the PUBACKs in ``data``, ``sent`` messages having been sent so far."""
        buf = self.pending
        buf += data
        whole = len(buf) - len(buf) % 4
        acks = bytes(buf[:whole])
        del buf[:whole]
        if acks[0::4].count(0x40) + acks[1::4].count(0x02) != whole // 2:
            self.stats.errors += 1
        flags, last = self.flags, sent - 1
        acked_at, now = self.acked_at, time.monotonic()
        acked = duplicates = errors = 0
        for high, low in zip(acks[2::4], acks[3::4]):
            seq = acknowledged_seq((high << 8) | low, last)
            if seq < 0 or seq >= len(flags):
                errors += 1
            elif flags[seq]:
                duplicates += 1
            else:
                flags[seq] = 1
                acked += 1
                if acked_at is not None and seq < len(acked_at):
                    acked_at[seq] = now
        self.stats.acked += acked
        self.stats.duplicate_acks += duplicates
        self.stats.errors += errors


def numbered_publisher(
    core,
    port,
    client_id,
    layout,
    window,
    rate,
    count,
    slot,
    stats,
    acked,
    state,
    ctl,
    deadline,
    timing=None,
):
    """QoS 1 messages 0, 1, 2 ... (``layout``: wire.NumberedPublishes), at most ``count``.

    At most ``window`` wait for their PUBACK (a new one goes out for each PUBACK read); with
    a ``rate``, no more than ``rate`` per second either (sent on a schedule from GO, never
    ahead of it). Every PUBACK sets ``acked[seq]``. After STOP it waits (up to 5 s) for the
    PUBACKs still due. ``timing``: optional pair of shared double arrays (sent_at, acked_at)
    where it writes ``time.monotonic()`` of each message's write and of its PUBACK's read.
    """
    pin(core)
    try:
        s = open_client(port, client_id)
    except Exception as error:  # noqa: BLE001
        print(f"numbered publisher {slot}: {error}", flush=True)
        state[slot] = FAILED
        return
    count = min(count, len(acked))
    sent_at, acked_at = timing if timing is not None else (None, None)
    tracker = AckTracker(acked, stats, acked_at)
    state[slot] = READY
    if not wait_flag(ctl, GO, deadline):
        s.close()
        return
    start = time.monotonic()
    sent = 0
    stop_by = None
    try:
        while time.monotonic() < deadline and not ctl[QUIT]:
            if ctl[STOP] or sent >= count:
                if stats.acked + stats.errors >= sent:
                    break
                stop_by = stop_by or time.monotonic() + 5
                if time.monotonic() > stop_by:
                    break
            else:
                due = count if rate is None else min(count, int((time.monotonic() - start) * rate))
                stats.max_lag = max(stats.max_lag, due - stats.acked)
                k = min(window - (sent - stats.acked), due - sent)
                if k > 0:
                    s.sendall(layout.encode(sent, k))
                    if sent_at is not None:
                        now = time.monotonic()
                        for seq in range(sent, min(sent + k, len(sent_at))):
                            sent_at[seq] = now
                    sent += k
                    stats.sent = sent
            s.settimeout(0.5 if rate is None else 1.0 / rate)
            try:
                data = s.recv(65536)
            except TimeoutError:
                continue
            if not data:
                stats.closed = 1
                break
            tracker.feed(data, sent)
    except OSError as error:
        print(f"numbered publisher {slot}: {error}", flush=True)
        stats.closed = 1
    wait_flag(ctl, QUIT, deadline)
    s.close()


TCP_CLOSE, TCP_CLOSE_WAIT = 7, 8  # tcpi_state values (linux/tcp_states.h)


def peer_closed(s: socket.socket) -> bool:
    """Whether the broker has closed its end (FIN or RST received), even with data unread."""
    try:
        state = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    except OSError:
        return True
    return state in (TCP_CLOSE, TCP_CLOSE_WAIT)


class SeqTracker:
    """Sequence numbers a numbered subscriber received, as flags in shared memory."""

    def __init__(self, flags, stats: SubscriberStats, publisher_id: int, seen_at=None) -> None:
        self.flags = memoryview(flags).cast("B")
        self.stats = stats
        self.publisher_id = publisher_id
        self.highest = -1
        #: optional shared doubles: time.monotonic() at which each message was first read
        self.seen_at = seen_at

    def feed(self, publishers, seqs) -> None:
        """Account one batch: the publisher id and sequence number of each message."""
        flags, highest = self.flags, self.highest
        seen_at, now = self.seen_at, time.monotonic()
        unique = duplicates = late = 0
        errors = len(publishers) - publishers.count(self.publisher_id)
        for seq in seqs:
            if seq >= len(flags):
                errors += 1
            elif flags[seq]:
                duplicates += 1
            else:
                flags[seq] = 1
                unique += 1
                if seen_at is not None and seq < len(seen_at):
                    seen_at[seq] = now
                if seq < highest:
                    late += 1
                else:
                    highest = seq
        self.highest = highest
        st = self.stats
        st.received += len(seqs)
        st.unique += unique
        st.duplicates += duplicates
        st.out_of_order += late
        st.errors += errors


def numbered_subscriber(
    core,
    port,
    client_id,
    topic_filter,
    size,
    publisher_id,
    rate,
    slot,
    stats,
    seen,
    state,
    ctl,
    deadline,
    clean=True,
    seen_at=None,
):
    """A QoS 1 subscriber that records the number of every message (``seen[seq]``).

    It acknowledges each PUBLISH as soon as it reads it. ``rate`` None: it reads as fast as
    it can; otherwise it reads (and so acknowledges) at most ``rate`` messages per second
    from GO on, leaving the rest in the socket. When the broker closes the connection, the
    time is recorded as soon as the FIN or RST arrives (not after the slow reader has got
    through the data before it), and what was delivered before it is still read.

    ``clean`` False: a persistent session (clean session 0); ``topic_filter`` None then
    resumes the session without subscribing (what the broker kept for it follows the
    CONNACK). ``seen_at``: optional shared doubles where it writes ``time.monotonic()`` of
    each message's first arrival.
    """
    pin(core)
    try:
        s = open_client(port, client_id, topic_filter, 1, clean=clean)
    except Exception as error:  # noqa: BLE001
        print(f"numbered subscriber {slot}: {error}", flush=True)
        state[slot] = FAILED
        return
    tracker = SeqTracker(seen, stats, publisher_id, seen_at)
    state[slot] = READY
    if not wait_flag(ctl, GO, deadline):
        s.close()
        return
    start = time.monotonic()
    s.settimeout(0.05)
    pending = bytearray()
    packet_id_at = 0
    try:
        while time.monotonic() < deadline and not ctl[QUIT]:
            budget = 1 << 20
            if rate is not None:
                budget = (int((time.monotonic() - start) * rate) - stats.received) * size
                budget -= len(pending)
                if budget <= 0:
                    if not stats.closed and peer_closed(s):
                        stats.closed, stats.closed_at = 1, time.monotonic() - start
                    time.sleep(0.005)
                    continue
            try:
                data = s.recv(budget)
            except TimeoutError:
                continue
            if not data:
                if not stats.closed:
                    stats.closed, stats.closed_at = 1, time.monotonic() - start
                break
            pending += data
            whole = len(pending) - len(pending) % size
            if not whole:
                continue
            chunk = bytes(pending[:whole])
            del pending[:whole]
            if not packet_id_at:  # fixed header (2) + topic length (2) + topic
                packet_id_at = 4 + ((chunk[2] << 8) | chunk[3])
            heads = chunk[0::size]
            if heads.count(0x32) + heads.count(0x3A) != len(heads):
                stats.errors += 1
            s.sendall(pubacks(chunk, packet_id_at, size))
            tracker.feed(
                strided_u32(chunk, packet_id_at + 2, size),
                strided_u32(chunk, packet_id_at + 6, size),
            )
    except OSError as error:
        print(f"numbered subscriber {slot}: {error}", flush=True)
        if not stats.closed:
            stats.closed, stats.closed_at = 1, time.monotonic() - start
    wait_flag(ctl, QUIT, deadline)
    s.close()
