"""A connection's output that waits for the store: delayed, never reordered.

What a client is told may depend on state not yet committed: a PUBACK or PUBREC promises
the message is kept, a SUBACK the subscription, a QoS 2 PUBLISH or PUBREL a packet id the
broker must still know after a crash. The protocol then calls ``wait_for`` with the
journal's barrier; from that moment everything it writes is kept here, in order, and
written once the barriers before it fired. Nothing leaves the broker that a crash could
make it forget.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.abstract import FileDescriptor

from mqtt_twisted.broker.journal import Barrier
from mqtt_twisted.outputbatch import BATCH

if TYPE_CHECKING:
    from mqtt_twisted.broker import Broker, Session

#: items held at which the connection's input is held too (a client that does not wait
#: for its acknowledgements cannot grow this without bound)
MAX_HELD_OUTPUT = 1000


class HeldOutput:
    """Bytes waiting for commits, with the barriers they wait for, in write order."""

    __slots__ = ("_items", "_write", "_flushed", "_last", "_abandoned")

    def __init__(self, write: Callable[[bytes], None], flushed: Callable[[], None]) -> None:
        self._items: deque[bytes | Barrier] = deque()
        self._write = write
        self._flushed = flushed
        self._last: Barrier | None = None
        self._abandoned = False

    def __len__(self) -> int:
        return len(self._items)

    def wait_for(self, barrier: Barrier) -> None:
        """Everything appended from now on waits until ``barrier`` fired."""
        if barrier is self._last:
            return
        self._last = barrier
        self._items.append(barrier)
        barrier.when_committed(self._flush)

    def append(self, data: bytes) -> None:
        """Write ``data`` after what is already waiting."""
        self._items.append(data)

    def abandon(self) -> None:
        """The connection ends: what waits is never written (the client sends again)."""
        self._abandoned = True
        self._items.clear()

    def _flush(self) -> None:
        if self._abandoned:
            return
        items = self._items
        write = self._write
        while items:
            item = items[0]
            if isinstance(item, Barrier):
                if not item.fired:
                    return
            else:
                write(item)
            items.popleft()
        self._abandoned = True  # done: later barriers of this object do nothing
        self._flushed()


class OutputFlow:
    """When a connection writes: paused by its transport (IPushProducer: a full socket
    buffer), held until a commit, or collected while input is handled (outputbatch). A
    mixin of the one protocol class, which keeps the state declared below."""

    broker: Broker
    session: Session | None
    transport: Any
    paused: bool
    paused_at: float
    _transport_paused: bool
    _held: HeldOutput | None
    _pending: list[bytes] | None
    _ended: bool
    _clock: Any

    def hold_input(self, by: object) -> None:
        raise NotImplementedError

    def release_input(self, by: object) -> None:
        raise NotImplementedError

    # -- IPushProducer: the transport tells us when its buffer is full -------------------

    def pauseProducing(self) -> None:
        self._transport_paused = True
        if not self.paused:
            self.paused = True
            self.paused_at = self._clock.seconds()

    def resumeProducing(self) -> None:
        self._transport_paused = False
        if self._held is None:
            self.paused = False
            if self.session is not None:
                self.session.drain()

    def stopProducing(self) -> None:
        self._transport_paused = True
        self.paused = True

    # -- writing: at once, or with the rest of what input handling writes -----------------

    def emit(self, data: bytes) -> None:
        """Write bytes now, or with the rest of this turn's output while input is
        handled (see outputbatch): in order either way."""
        if not BATCH.depth:
            self.transport.write(data)
            return
        pending = self._pending
        if pending is None:
            self._pending = [data]
            BATCH.waiting.append(self)
        else:
            pending.append(data)

    def flush_output(self) -> None:
        """Send what was collected while input was handled.

        A socket transport (TCP, Unix) is asked to send it at once rather than on the
        reactor's next turn: one system call and one turn fewer per burst, so a message
        reaches its subscribers sooner. What the socket does not take stays buffered and
        the reactor sends it when it can, as always. A closing transport is left to the
        reactor, which finishes the close once its buffer is empty."""
        pending = self._pending
        if pending is not None:
            self._pending = None
            transport = self.transport
            transport.write(pending[0] if len(pending) == 1 else b"".join(pending))
            if (
                isinstance(transport, FileDescriptor)
                and transport.connected
                and not transport.disconnecting
                and not self._ended
            ):
                # None, or an error the reactor sees too: the transport is still
                # registered for writing, and its next doWrite ends the connection.
                transport.doWrite()

    # -- output that waits for the store --------------------------------------------------

    def await_commit(self) -> None:
        """What is written from now on waits until what was recorded so far is committed.
        Meanwhile the session sends no QoS 0 messages (as with a full socket buffer)."""
        journal = self.broker.journal
        if journal is None or self._ended:
            return
        barrier = journal.barrier()
        if barrier is not None:
            self.await_barrier(barrier)

    def await_barrier(self, barrier: Barrier) -> None:
        """What is written from now on waits until ``barrier`` fired."""
        if self._ended:
            return
        held = self._held
        if held is None:
            held = self._held = HeldOutput(self.emit, self._output_committed)
            if not self.paused:
                self.paused = True
                self.paused_at = self._clock.seconds()
        held.wait_for(barrier)

    def _hold_output(self, data: bytes) -> None:
        held = self._held
        assert held is not None
        held.append(data)
        if len(held) > MAX_HELD_OUTPUT:
            self.hold_input(held)

    def _output_committed(self) -> None:
        held, self._held = self._held, None
        if self._ended:
            return
        if held is not None:
            self.release_input(held)
        if not self._transport_paused:
            self.paused = False
            if self.session is not None:
                self.session.drain()
