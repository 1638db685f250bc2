"""Where the broker keeps retained messages: an interface and its in-memory implementation.

An embedded SQLite (or other) store implements :class:`RetainedStore` and is handed
to :class:`~mqtt_twisted.broker.core.Broker`; routing code never changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from mqtt_twisted.broker.message import Message
from mqtt_twisted.topics import RetainedTree


class RetainedStore(Protocol):
    """Retained messages by topic name."""

    def set(self, topic: str, value: Message) -> None:
        """Store or replace the retained message of ``topic``."""

    def discard(self, topic: str) -> bool:
        """Forget the retained message of ``topic``."""

    def get(self, topic: str) -> Message | None:
        """The retained message of ``topic``, if any."""

    def match(self, topic_filter: str) -> Iterator[tuple[str, Message]]:
        """Every retained (topic, message) that ``topic_filter`` matches."""

    def __len__(self) -> int:
        """How many topics hold a retained message."""


class MemoryRetainedStore(RetainedTree[Message]):
    """Retained messages in a topic trie, in memory (lost at exit)."""
