"""MQTT topic names, topic filters and the tries used to match them.

Pure data structures: no Twisted, no I/O.  Spec references are to MQTT 5.0
(the rules quoted are identical in 3.1.1 except shared subscriptions).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

__all__ = [
    "validate_topic_name",
    "validate_topic_filter",
    "parse_shared_subscription",
    "topic_matches",
    "SubscriptionTree",
    "RetainedTree",
]

K = TypeVar("K")
V = TypeVar("V")

_MAX_BYTES = 65535
_SHARE_PREFIX = "$share/"


def _fits_utf8(text: str) -> bool:
    """True if ``text`` is well-formed UTF-8 of at most 65535 bytes [MQTT-1.5.4-1]."""
    if len(text) > _MAX_BYTES:
        return False
    try:
        return len(text.encode("utf-8")) <= _MAX_BYTES
    except UnicodeEncodeError:  # lone surrogates
        return False


#: topic levels at most (Mosquitto's TOPIC_HIERARCHY_LIMIT): deeper topics and filters are
#: refused, so no client can make the tries arbitrarily deep
MAX_TOPIC_LEVELS = 200


def validate_topic_name(topic: str) -> bool:
    """Check a PUBLISH topic name: non-empty, no wildcards, no U+0000, <= 65535 bytes,
    at most MAX_TOPIC_LEVELS levels."""
    if not topic:  # [MQTT-4.7.3-1]
        return False
    if topic.count("/") >= MAX_TOPIC_LEVELS:
        return False
    if "+" in topic or "#" in topic:  # [MQTT-3.3.2-2]
        return False
    if "\x00" in topic:  # [MQTT-4.7.3-2]
        return False
    return _fits_utf8(topic)


def _valid_plain_filter(topic_filter: str) -> bool:
    """Wildcard placement rules for a (non-shared) filter."""
    if not topic_filter:  # [MQTT-4.7.3-1]
        return False
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if level == "#":
            if i != last:  # [MQTT-4.7.1-2]
                return False
        elif level == "+":
            continue
        elif "#" in level or "+" in level:  # [MQTT-4.7.1-2] [MQTT-4.7.1-3]
            return False
    return True


def validate_topic_filter(topic_filter: str) -> bool:
    """Check a SUBSCRIBE/UNSUBSCRIBE filter, including ``$share/GROUP/FILTER``."""
    if not topic_filter or "\x00" in topic_filter:  # [MQTT-4.7.3-1] [MQTT-4.7.3-2]
        return False
    if topic_filter.count("/") >= MAX_TOPIC_LEVELS:
        return False
    if not _fits_utf8(topic_filter):
        return False
    if topic_filter.startswith(_SHARE_PREFIX):
        group, sep, rest = topic_filter[len(_SHARE_PREFIX) :].partition("/")
        # [MQTT-4.8.2-1] a ShareName is non-empty and has no '/', '+', '#'
        if not sep or not group or "+" in group or "#" in group:
            return False
        # [MQTT-4.8.2-2] a Topic Filter must follow the ShareName
        return _valid_plain_filter(rest)
    return _valid_plain_filter(topic_filter)


def parse_shared_subscription(topic_filter: str) -> tuple[str, str] | None:
    """Split ``$share/g/a/b`` into ``("g", "a/b")``; None for a non-shared filter."""
    if not topic_filter.startswith(_SHARE_PREFIX):
        return None
    group, _, rest = topic_filter[len(_SHARE_PREFIX) :].partition("/")
    return group, rest


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Reference matcher for a (validated, non-shared) filter against a topic name."""
    # [MQTT-4.7.2-1] wildcards at the first level do not match '$' topics
    if topic[:1] == "$" and topic_filter[:1] in ("+", "#"):
        return False
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    n = len(t_levels)
    for i, level in enumerate(f_levels):
        if level == "#":  # parent level and any number of children [MQTT-4.7.1-2]
            return True
        if i >= n:
            return False
        if level != "+" and level != t_levels[i]:
            return False
    return len(f_levels) == n


class _SubNode:
    """A SubscriptionTree node: one filter level."""

    __slots__ = ("children", "subs", "depth")

    def __init__(self, depth: int) -> None:
        self.children: dict[str, _SubNode] | None = None
        self.subs: dict | None = None
        self.depth = depth


class SubscriptionTree(Generic[K, V]):
    """Trie of subscriptions keyed by filter level.

    Each filter node holds a dict ``{key: value}`` (key = a subscriber, e.g. a
    session object, hashable by identity; value = its subscription options).
    Filters are assumed valid; shared subscriptions are not special here.
    """

    #: topics whose match result is remembered until the next add/remove
    CACHE_SIZE = 4096

    def __init__(self) -> None:
        self._root = _SubNode(0)
        self._count = 0
        self._cache: dict[str, list[dict[K, V]]] = {}

    def add(self, topic_filter: str, key: K, value: V) -> bool:
        """Subscribe ``key``; True if new, False if it replaced a value."""
        self._cache.clear()
        node = self._root
        for level in topic_filter.split("/"):
            children = node.children
            if children is None:
                children = node.children = {}
            child = children.get(level)
            if child is None:
                child = children[level] = _SubNode(node.depth + 1)
            node = child
        subs = node.subs
        if subs is None:
            subs = node.subs = {}
        new = key not in subs
        subs[key] = value
        if new:
            self._count += 1
        return new

    def remove(self, topic_filter: str, key: K) -> bool:
        """Unsubscribe ``key``; True if it was subscribed. Prunes empty nodes."""
        self._cache.clear()
        path: list[tuple[_SubNode, str]] = []
        node = self._root
        for level in topic_filter.split("/"):
            children = node.children
            child = children.get(level) if children else None
            if child is None:
                return False
            path.append((node, level))
            node = child
        subs = node.subs
        if not subs or key not in subs:
            return False
        del subs[key]
        self._count -= 1
        if not subs:
            node.subs = None
            # Walk back up, dropping nodes that hold nothing.
            for parent, level in reversed(path):
                if node.subs or node.children:
                    break
                children = parent.children
                assert children is not None
                del children[level]
                if not children:
                    parent.children = None
                node = parent
        return True

    def get(self, topic_filter: str, key: K) -> V | None:
        """The value stored for ``key`` on ``topic_filter``, or None."""
        node = self._root
        for level in topic_filter.split("/"):
            children = node.children
            child = children.get(level) if children else None
            if child is None:
                return None
            node = child
        subs = node.subs
        return subs.get(key) if subs else None

    def match(self, topic: str) -> list[dict[K, V]]:
        """The (live, non-empty) subscriber dicts of every filter matching ``topic``.

        Results are cached per topic until the tree changes; callers must not modify them.
        """
        cached = self._cache.get(topic)
        if cached is not None:
            return cached
        result = self._match(topic)
        cache = self._cache
        if len(cache) >= self.CACHE_SIZE:
            cache.clear()
        cache[topic] = result
        return result

    def _match(self, topic: str) -> list[dict[K, V]]:
        result: list[dict[K, V]] = []
        root = self._root
        if not root.children:
            return result
        levels = topic.split("/")
        n = len(levels)
        dollar = topic[:1] == "$"
        stack = [root]
        pop = stack.pop
        push = stack.append
        append = result.append
        while stack:
            node = pop()
            i = node.depth
            children = node.children
            if i == n:
                if node.subs:
                    append(node.subs)
                if children:
                    wild = children.get("#")  # "a/#" matches "a"
                    if wild is not None and wild.subs:
                        append(wild.subs)
                continue
            if not children:
                continue
            if i or not dollar:  # [MQTT-4.7.2-1]
                wild = children.get("#")
                if wild is not None and wild.subs:
                    append(wild.subs)
                child = children.get("+")
                if child is not None:
                    push(child)
            child = children.get(levels[i])
            if child is not None:
                push(child)
        return result

    def __len__(self) -> int:
        """Number of (filter, key) subscriptions."""
        return self._count

    def filters(self) -> Iterator[tuple[str, K, V]]:
        """Every subscription as ``(filter, key, value)``; walks the whole tree."""
        out: list[tuple[str, K, V]] = []
        stack: list[tuple[_SubNode, str | None]] = [(self._root, None)]
        while stack:
            node, name = stack.pop()
            if node.subs and name is not None:
                for key, value in node.subs.items():
                    out.append((name, key, value))
            if node.children:
                for level, child in node.children.items():
                    stack.append((child, level if name is None else f"{name}/{level}"))
        return iter(out)


class _RetNode:
    """A RetainedTree node: one topic level, optionally holding a message."""

    __slots__ = ("children", "topic", "value", "depth")

    def __init__(self, depth: int) -> None:
        self.children: dict[str, _RetNode] | None = None
        self.topic: str | None = None  # set iff a value is stored here
        self.value: object = None
        self.depth = depth


class RetainedTree(Generic[V]):
    """Retained messages keyed by topic name, in a trie of levels so that a
    filter finds its matches without scanning every topic."""

    def __init__(self) -> None:
        self._root = _RetNode(0)
        self._count = 0

    def set(self, topic: str, value: V) -> None:
        """Insert or replace the retained value for ``topic``."""
        node = self._root
        for level in topic.split("/"):
            children = node.children
            if children is None:
                children = node.children = {}
            child = children.get(level)
            if child is None:
                child = children[level] = _RetNode(node.depth + 1)
            node = child
        if node.topic is None:
            node.topic = topic
            self._count += 1
        node.value = value

    def _find(self, topic: str) -> tuple[_RetNode | None, list[tuple[_RetNode, str]]]:
        path: list[tuple[_RetNode, str]] = []
        node = self._root
        for level in topic.split("/"):
            children = node.children
            child = children.get(level) if children else None
            if child is None:
                return None, path
            path.append((node, level))
            node = child
        return node, path

    def discard(self, topic: str) -> bool:
        """Remove ``topic``'s retained value; True if there was one. Prunes empty nodes."""
        node, path = self._find(topic)
        if node is None or node.topic is None:
            return False
        node.topic = None
        node.value = None
        self._count -= 1
        for parent, level in reversed(path):
            if node.topic is not None or node.children:
                break
            children = parent.children
            assert children is not None
            del children[level]
            if not children:
                parent.children = None
            node = parent
        return True

    def get(self, topic: str) -> V | None:
        """The retained value for ``topic``, or None."""
        node, _ = self._find(topic)
        if node is None or node.topic is None:
            return None
        return node.value  # type: ignore[return-value]

    def match(self, topic_filter: str) -> Iterator[tuple[str, V]]:
        """Every retained ``(topic, value)`` matching ``topic_filter`` (a snapshot)."""
        out: list[tuple[str, V]] = []
        root = self._root
        if not root.children:
            return iter(out)
        levels = topic_filter.split("/")
        n = len(levels)
        append = out.append
        stack = [root]
        pop = stack.pop
        push = stack.append
        while stack:
            node = pop()
            i = node.depth
            if i == n:
                if node.topic is not None:
                    append((node.topic, node.value))  # type: ignore[arg-type]
                continue
            children = node.children
            level = levels[i]
            if level == "#":
                if node.topic is not None:  # '#' also matches the parent level
                    append((node.topic, node.value))  # type: ignore[arg-type]
                if children:
                    self._collect(children, i == 0, out)
                continue
            if not children:
                continue
            if level == "+":
                for name, child in children.items():
                    if i or name[:1] != "$":  # [MQTT-4.7.2-1]
                        push(child)
            else:
                found = children.get(level)
                if found is not None:
                    push(found)
        return iter(out)

    @staticmethod
    def _collect(children: dict[str, _RetNode], skip_dollar: bool, out: list) -> None:
        """Append every stored message below ``children`` to ``out``."""
        stack = [c for name, c in children.items() if not (skip_dollar and name[:1] == "$")]
        while stack:
            node = stack.pop()
            if node.topic is not None:
                out.append((node.topic, node.value))
            if node.children:
                stack.extend(node.children.values())

    def __len__(self) -> int:
        """Number of retained topics."""
        return self._count

    def __iter__(self) -> Iterator[tuple[str, V]]:
        """Every retained ``(topic, value)`` (a snapshot)."""
        out: list[tuple[str, V]] = []
        if self._root.children:
            self._collect(self._root.children, False, out)
        return iter(out)
