"""Load-generator processes (multiprocessing, fork): publishers, subscribers, idle clients.

Every worker pins itself to the generator core, talks to the coordinator through shared
counters (``multiprocessing.RawArray``, no locks: one writer per slot), and every loop is
bounded by a deadline. Control slots: ``ctl[GO]`` is set when all workers are ready,
``ctl[STOP]`` when publishing must end, ``ctl[QUIT]`` when everybody must leave.
"""

from __future__ import annotations

import os
import selectors
import socket
import time

from wire import open_client, publish_packet

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
