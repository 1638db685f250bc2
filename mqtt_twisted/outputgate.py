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

from mqtt_twisted.broker.journal import Barrier

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
