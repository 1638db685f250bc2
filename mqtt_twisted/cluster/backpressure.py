"""Flow control across nodes: a full subscriber holds back publishers on every node.

On one broker a subscriber whose queue is full holds back the connections that publish to
it (``broker/flow.py``), for as long as its client keeps up; a slow client is dropped from
that after ``--slow-client-grace``. In a cluster the publishers may be on other nodes. A
session fed from the cluster (doorbells, forwarded messages) is given :class:`RemoteFeed`
as its publisher: when its queue fills it "holds" that feed, which tells every node that
the session is busy (``Z`` on the cluster channel), and lets go when it drained or its
client counts as slow. Every node then holds the input of its own publishers whose
messages go to a busy session (persistent sessions by client id, others by their node),
until it is free again, so TCP slows them down and nothing acknowledged is dropped for a
subscriber that keeps up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from mqtt_twisted.cluster.wire import SEP

BUSY = b"Z"


class RemoteFeed:
    """The cluster's publishers, as a session here sees them (see the module docstring).
    Passed as ``origin``: sessions hold ``origin.connection``, which is this object."""

    def __init__(self, announce: Callable[[str, bool], None]) -> None:
        self._announce = announce
        self.connection = self

    def hold_input(self, session: Any) -> None:
        self._announce(session.client_id, True)

    def release_input(self, session: Any) -> None:
        self._announce(session.client_id, False)


def pack_busy(node: str, client_id: str, busy: bool) -> bytes:
    return BUSY + (b"1" if busy else b"0") + node.encode() + SEP + client_id.encode()


def unpack_busy(data: bytes) -> tuple[str, str, bool]:
    node, client_id = data[2:].split(SEP, 1)
    return node.decode(), client_id.decode(), data[1:2] == b"1"


class Holds:
    """This node's publishers held for busy sessions elsewhere (or here)."""

    def __init__(self) -> None:
        #: busy sessions: client id -> its node
        self.sessions: dict[str, str] = {}
        #: busy sessions per node (forwarded messages are held by node)
        self.nodes: dict[str, int] = {}
        #: held connections per key ("s", client id) or ("n", node), and each key's token
        self._held: dict[tuple[str, str], set[Any]] = {}
        self._tokens: dict[tuple[str, str], object] = {}

    def __bool__(self) -> bool:
        return bool(self.sessions)

    def busy(self, node: str, client_id: str, busy: bool) -> None:
        """A node said a session of its own is busy (or free again)."""
        if busy:
            if client_id not in self.sessions:
                self.sessions[client_id] = node
                self.nodes[node] = self.nodes.get(node, 0) + 1
            return
        if self.sessions.pop(client_id, None) is None:
            return
        self._release(("s", client_id))
        left = self.nodes.get(node, 0) - 1
        if left > 0:
            self.nodes[node] = left
        else:
            self.nodes.pop(node, None)
            self._release(("n", node))

    def hold(self, connection: Any, nodes: Iterable[str], client_ids: Iterable[str]) -> None:
        """``connection`` published to these nodes and persistent sessions: hold it if any
        of them is busy."""
        for node in nodes:
            if node in self.nodes:
                self._hold(connection, ("n", node))
        for client_id in client_ids:
            if client_id in self.sessions:
                self._hold(connection, ("s", client_id))

    def _hold(self, connection: Any, key: tuple[str, str]) -> None:
        held = self._held.setdefault(key, set())
        if connection not in held:
            held.add(connection)
            connection.hold_input(self._tokens.setdefault(key, object()))

    def _release(self, key: tuple[str, str]) -> None:
        token = self._tokens.pop(key, None)
        for connection in self._held.pop(key, ()):
            connection.release_input(token)

    def node_gone(self, node: str) -> None:
        for client_id in [c for c, n in self.sessions.items() if n == node]:
            self.busy(node, client_id, False)

    def clear(self) -> None:
        """Redis was lost: what was busy is unknown; nobody stays held for it."""
        for key in list(self._held):
            self._release(key)
        self.sessions.clear()
        self.nodes.clear()
