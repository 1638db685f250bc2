"""Shared subscriptions (``$share/GROUP/FILTER``): each message goes to one member of a group."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mqtt_twisted.topics import SubscriptionTree, parse_shared_subscription

if TYPE_CHECKING:
    from mqtt_twisted.broker.session import Session, SubscriptionOptions


class SharedGroup:
    """The members of one ``$share/NAME/FILTER``; messages go round robin to connected ones."""

    __slots__ = ("name", "topic_filter", "members", "_order", "_next")

    def __init__(self, name: str, topic_filter: str) -> None:
        self.name = name
        self.topic_filter = topic_filter
        self.members: dict[Session, SubscriptionOptions] = {}
        self._order: list[Session] = []
        self._next = 0

    def __repr__(self) -> str:
        return f"<SharedGroup $share/{self.name}/{self.topic_filter} {len(self.members)} members>"

    def add(self, session: Session, options: SubscriptionOptions) -> None:
        if session not in self.members:
            self._order.append(session)
        self.members[session] = options

    def remove(self, session: Session) -> None:
        if self.members.pop(session, None) is not None:
            self._order.remove(session)

    @property
    def share_filter(self) -> str:
        return f"$share/{self.name}/{self.topic_filter}"

    def connected(self) -> bool:
        """Whether any member's client is connected."""
        return any(session.connection is not None for session in self._order)

    def pick(self) -> tuple[Session, SubscriptionOptions] | None:
        """The next member in turn, preferring connected ones; None if the group is empty."""
        order = self._order
        count = len(order)
        if not count:
            return None
        start = self._next % count
        for step in range(count):
            session = order[(start + step) % count]
            if session.connection is not None:
                self._next = start + step + 1
                return session, self.members[session]
        session = order[start]  # nobody connected: queue it for the next in turn
        self._next = start + 1
        return session, self.members[session]


def _split(share_filter: str) -> tuple[str, str]:
    """``$share/NAME/FILTER`` (already validated) as ``(NAME, FILTER)``."""
    parts = parse_shared_subscription(share_filter)
    if parts is None:
        raise ValueError(f"not a shared subscription: {share_filter!r}")
    return parts


class SharedSubscriptions:
    """Every shared group, in a trie of their filters."""

    def __init__(self) -> None:
        self.groups: dict[tuple[str, str], SharedGroup] = {}
        self.tree: SubscriptionTree[SharedGroup, SharedGroup] = SubscriptionTree()

    def __len__(self) -> int:
        return sum(len(group.members) for group in self.groups.values())

    def add(self, share_filter: str, session: Session, options: SubscriptionOptions) -> None:
        """Subscribe ``session`` to ``$share/NAME/FILTER``."""
        name, topic_filter = _split(share_filter)
        group = self.groups.get((name, topic_filter))
        if group is None:
            group = self.groups[(name, topic_filter)] = SharedGroup(name, topic_filter)
            self.tree.add(topic_filter, group, group)
        group.add(session, options)

    def remove(self, share_filter: str, session: Session) -> None:
        """Unsubscribe ``session``; an empty group is removed."""
        name, topic_filter = _split(share_filter)
        group = self.groups.get((name, topic_filter))
        if group is None:
            return
        group.remove(session)
        if not group.members:
            del self.groups[(name, topic_filter)]
            self.tree.remove(topic_filter, group)

    def group(self, share_filter: str) -> SharedGroup | None:
        """The group of ``$share/NAME/FILTER`` if it has members here."""
        return self.groups.get(_split(share_filter))

    def match(self, topic: str) -> list[dict[SharedGroup, SharedGroup]]:
        return self.tree.match(topic)
