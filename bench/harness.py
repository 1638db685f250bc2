"""The bench's harness: generator workers of one scenario run and their shared counters.

Workers are forked processes (see gen.py) that report through shared memory; ``Run`` starts
them, waits until they are connected and always cleans them up; ``settle`` waits for the
deliveries after publishing stops.
"""

from __future__ import annotations

import multiprocessing as mp
import time

from gen import FAILED, QUIT, READY, STOP

ctx = mp.get_context("fork")


class Run:
    """Workers of one scenario run, with their shared counters; always cleaned up."""

    def __init__(self, nslots: int, deadline: float) -> None:
        self.ctl = ctx.RawArray("d", 3)
        self.state = ctx.RawArray("i", nslots)
        self.deadline = deadline
        self.procs: list[mp.Process] = []

    def spawn(self, target, *args) -> None:
        p = ctx.Process(target=target, args=args, daemon=True)
        p.start()
        self.procs.append(p)

    def wait_ready(self, slots, limit: float = 30.0) -> None:
        end = time.monotonic() + limit
        while time.monotonic() < end:
            states = [self.state[i] for i in slots]
            if FAILED in states:
                raise RuntimeError("a generator worker failed to connect")
            if all(s == READY for s in states):
                return
            if not any(p.is_alive() for p in self.procs):
                break
            time.sleep(0.01)
        raise RuntimeError("generator workers not ready in time")

    def finish(self) -> None:
        self.ctl[STOP] = 1
        self.ctl[QUIT] = 1
        for p in self.procs:
            p.join(10)
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(2)


def settle(total, expected, cap: float) -> None:
    """Wait until total() reaches expected(), progress stops for 1 s, or cap seconds pass."""
    end = time.monotonic() + cap
    last, last_change = total(), time.monotonic()
    while time.monotonic() < end and total() < expected():
        time.sleep(0.01)
        now = total()
        if now != last:
            last, last_change = now, time.monotonic()
        elif time.monotonic() - last_change > 1.0:
            break


class Offset:
    """A view of a shared int array shifted by `base` (publisher slots after subscribers)."""

    def __init__(self, array, base):
        self.array, self.base = array, base

    def __setitem__(self, i, v):
        self.array[self.base + i] = v
