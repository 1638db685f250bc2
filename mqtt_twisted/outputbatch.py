"""Writes made while the broker handles a connection's input leave together.

Handling one connection's input (up to ``PACKETS_PER_TURN`` packets) writes to many
connections: a PUBLISH to each matching subscriber, a PUBACK to the publisher. Each write
through Twisted's transport costs about as much as routing the message (checks, buffer
bookkeeping, registering for writability). While input is handled, a connection's writes
are collected in order in a list instead, and each connection that got any is written to
once when the outermost input handling returns: the same bytes, in the same order, in
the same reactor turn, with one transport call per connection instead of one per packet.

Outside input handling (timers, commits, a transport asking for more) writes go straight
to the transport, so nothing waits for a turn that may not come. A socket transport is
asked to send what was collected at once (see ``OutputFlow.flush_output``), not on the
reactor's next turn.
"""

from __future__ import annotations

from typing import Protocol


class BatchedWriter(Protocol):
    """A connection whose collected writes :func:`end` sends."""

    def flush_output(self) -> None: ...


class _Batch:
    """Whether input is being handled (nesting depth) and who has writes waiting."""

    __slots__ = ("depth", "waiting")

    def __init__(self) -> None:
        self.depth = 0
        self.waiting: list[BatchedWriter] = []


#: one per process: a publisher's input writes to connections of every listener
BATCH = _Batch()


def begin() -> None:
    """Input handling starts: writes are collected from now on."""
    BATCH.depth += 1


def end() -> None:
    """Input handling returns: the outermost one sends what every connection collected."""
    BATCH.depth -= 1
    if BATCH.depth == 0 and BATCH.waiting:
        waiting, BATCH.waiting = BATCH.waiting, []
        for writer in waiting:
            writer.flush_output()
