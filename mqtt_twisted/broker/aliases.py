"""MQTT 5 topic aliases of one connection, both ways (pure: no I/O)."""

from __future__ import annotations

from mqtt_twisted.packets import PacketError, ReasonCode


class InboundAliases:
    """Aliases a client sets on its PUBLISH packets (up to the broker's Topic Alias Maximum)."""

    __slots__ = ("maximum", "_topics")

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self._topics: dict[int, str] = {}

    def resolve(self, topic: str, alias: int | None) -> str:
        """The topic a PUBLISH is for; sets the alias when both are given.

        Raises PacketError 0x94 for alias 0 or above the maximum [MQTT-3.3.2-8],
        [MQTT-3.3.2-9], and 0x82 for an empty topic with no alias or an unknown one.
        """
        if alias is None:
            if not topic:
                raise PacketError("empty topic name and no topic alias", ReasonCode.PROTOCOL_ERROR)
            return topic
        if alias == 0 or alias > self.maximum:
            raise PacketError(
                f"topic alias {alias} outside 1..{self.maximum}", ReasonCode.TOPIC_ALIAS_INVALID
            )
        if topic:
            self._topics[alias] = topic
            return topic
        known = self._topics.get(alias)
        if known is None:
            raise PacketError(f"unknown topic alias {alias}", ReasonCode.PROTOCOL_ERROR)
        return known


class OutboundAliases:
    """Aliases the broker gives the topics it sends to one client.

    The first ``maximum`` distinct topics sent get an alias for the rest of the
    connection (the topics a client gets first are, in practice, the ones it keeps
    getting: its subscriptions' live topics); later topics are sent in full.
    """

    __slots__ = ("maximum", "_aliases")

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self._aliases: dict[str, int] = {}

    def lookup(self, topic: str) -> tuple[int, bool]:
        """(alias or 0, whether the topic name must be sent) for the next PUBLISH of ``topic``."""
        alias = self._aliases.get(topic)
        if alias is not None:
            return alias, False
        if len(self._aliases) < self.maximum:
            alias = self._aliases[topic] = len(self._aliases) + 1
            return alias, True
        return 0, True

    def forget(self, topic: str) -> None:
        """Undo the alias just given to ``topic`` (its PUBLISH was not sent)."""
        if self._aliases.get(topic) == len(self._aliases):
            del self._aliases[topic]
