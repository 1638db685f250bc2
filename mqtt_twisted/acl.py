"""Mosquitto-style access control lists (the ``acl_file`` option of mosquitto.conf(5)).

Pure: parsing and checking only, no Twisted and no I/O apart from :func:`load_acl_file`.

File syntax, one directive a line (blank lines and lines starting with ``#`` are skipped,
surrounding whitespace is ignored)::

    topic [read|write|readwrite|deny] FILTER     # no access word: readwrite
    user NAME                                    # NAME is the rest of the line
    pattern [read|write|readwrite|deny] FILTER   # %c / %u as a whole level

``topic`` lines before the first ``user`` line apply to anonymous clients (no username),
later ones to the user named above them; ``pattern`` lines apply to every client.

Decisions (see the module tests): a deny rule that applies to the client wins over any
allow rule; ``$SYS`` topics are never writable and are readable unless a deny rule matches;
``$share/...`` topic names are neither readable nor writable (Mosquitto's
``acl__check_dollar``). Allow patterns are not applied to a client whose username or
client id contains ``+`` or ``#`` (Mosquitto 2), nor when the value they substitute
contains ``/`` (it could not be a single level); deny patterns are always applied.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import attrs

from mqtt_twisted.topics import parse_shared_subscription, validate_topic_filter

__all__ = [
    "Access",
    "Permission",
    "Rule",
    "AclFileError",
    "Acl",
    "parse_acl",
    "load_acl_file",
    "filters_overlap",
    "filter_covers",
]

_WILD = ("+", "#")


class Access(enum.Enum):
    """What a client wants to do with a topic (same values as ``broker.hooks.Access``)."""

    #: receive messages published to it (deliveries, retained messages)
    READ = "read"
    #: publish to it (its will included)
    WRITE = "write"
    #: subscribe with a filter (see :meth:`Acl.may_subscribe`)
    SUBSCRIBE = "subscribe"


class Permission(enum.Enum):
    """The access word of a ``topic`` / ``pattern`` line."""

    READ = "read"
    WRITE = "write"
    READWRITE = "readwrite"
    DENY = "deny"

    @property
    def reads(self) -> bool:
        """True if the rule grants reading."""
        return self is Permission.READ or self is Permission.READWRITE

    @property
    def writes(self) -> bool:
        """True if the rule grants writing."""
        return self is Permission.WRITE or self is Permission.READWRITE


_PERMISSIONS = {p.value: p for p in Permission}


class Rule(NamedTuple):
    """One ``topic`` or ``pattern`` line."""

    permission: Permission
    topic_filter: str
    #: 1-based line number in the file (0 for rules built in code)
    line: int = 0


class AclFileError(ValueError):
    """A malformed ACL file; ``line`` is the 1-based number of the offending line."""

    def __init__(self, line: int, reason: str, path: str | None = None) -> None:
        self.line = line
        self.reason = reason
        self.path = path
        where = f"{path}:{line}" if path else f"line {line}"
        super().__init__(f"{where}: {reason}")


# --------------------------------------------------------------------------- filter algebra


def _is_wild(level: str) -> bool:
    return level == "+" or level == "#"


def filters_overlap(a: str, b: str) -> bool:
    """True if some topic name matches both (valid, non-shared) filters ``a`` and ``b``."""
    al = a.split("/")
    bl = b.split("/")
    # [MQTT-4.7.2-1] a leading wildcard never matches a '$' topic, a '$' level only does
    if (_is_wild(al[0]) and bl[0][:1] == "$") or (_is_wild(bl[0]) and al[0][:1] == "$"):
        return False
    na, nb = len(al), len(bl)
    for i in range(max(na, nb)):
        x = al[i] if i < na else None
        y = bl[i] if i < nb else None
        if x == "#" or y == "#":  # '#' also matches the parent level ("a/#" ~ "a") ...
            # ... unless that parent is "", which is no topic name ("/#" vs "+")
            return not (i == 1 and (x is None or y is None) and "" in (al[0], bl[0]))
        if x is None or y is None:
            return False
        if x != y and x != "+" and y != "+":
            return False
    return True


def filter_covers(general: str, specific: str) -> bool:
    """True if every topic matched by ``specific`` is matched by ``general``."""
    gl = general.split("/")
    sl = specific.split("/")
    if _is_wild(gl[0]) and sl[0][:1] == "$":  # specific matches '$' topics, general can't
        return False
    ng, ns = len(gl), len(sl)
    for i in range(max(ng, ns)):
        x = gl[i] if i < ng else None
        if x == "#":
            return True
        y = sl[i] if i < ns else None
        if y == "#":  # only "+/#" covers it, where its parent isn't a topic ("#", "/#")
            return x == "+" and gl[i + 1 :] == ["#"] and (i == 0 or (i == 1 and sl[0] == ""))
        if x is None or y is None:
            return False
        if x != "+" and (x != y or y == "+"):
            return False
    return True


# --------------------------------------------------------------------------- compiled rules


class _FilterSet:
    """Filters split for matching: literal filters in a set, wildcard ones pre-split."""

    __slots__ = ("filters", "_literal", "_wild")

    def __init__(self, filters: Iterable[str]) -> None:
        self.filters = tuple(dict.fromkeys(filters))  # dedupe, keep order
        self._literal = frozenset(f for f in self.filters if "+" not in f and "#" not in f)
        self._wild = tuple(f.split("/") for f in self.filters if f not in self._literal)

    def match(self, topic: str) -> bool:
        """True if any filter matches the topic name ``topic``."""
        if topic in self._literal:
            return True
        if not self._wild:
            return False
        levels = topic.split("/")
        n = len(levels)
        dollar = topic[:1] == "$"
        for f in self._wild:
            if dollar and _is_wild(f[0]):  # [MQTT-4.7.2-1]
                continue
            for i, level in enumerate(f):
                if level == "#":
                    return True
                if i >= n or (level != "+" and level != levels[i]):
                    break
            else:
                if len(f) == n:
                    return True
        return False


@attrs.frozen
class _ClientRules:
    """The rules that apply to one (username, client id), patterns substituted."""

    deny: _FilterSet
    read: _FilterSet
    write: _FilterSet


def _substitute(template: str, client_id: str, username: str | None, deny: bool) -> str | None:
    """``template`` with whole ``%c`` / ``%u`` levels replaced, or None when it can't apply:
    a value is missing or empty, or (for an allow rule) contains ``/``, ``+`` or ``#``."""
    levels = template.split("/")
    for i, level in enumerate(levels):
        if level == "%c":
            value: str | None = client_id
        elif level == "%u":
            value = username
        else:
            continue
        if not value or (not deny and ("/" in value or "+" in value or "#" in value)):
            return None
        levels[i] = value
    return "/".join(levels)


def _is_sys(topic: str) -> bool:
    return topic == "$SYS" or topic.startswith("$SYS/")


class Acl:
    """A parsed ACL: ``check`` topics and ``may_subscribe`` filters for a client."""

    #: (username, client id, topic, access) results remembered; cleared when full
    RESULT_CACHE_SIZE = 100_000
    #: (username, client id) rule sets remembered; cleared when full
    CLIENT_CACHE_SIZE = 10_000

    __slots__ = ("anonymous", "users", "patterns", "_results", "_clients")

    def __init__(
        self,
        anonymous: Iterable[Rule] = (),
        users: Mapping[str, Iterable[Rule]] | None = None,
        patterns: Iterable[Rule] = (),
    ) -> None:
        #: ``topic`` rules for clients without a username
        self.anonymous: tuple[Rule, ...] = tuple(anonymous)
        #: ``topic`` rules per username
        self.users: dict[str, tuple[Rule, ...]] = {
            name: tuple(rules) for name, rules in (users or {}).items()
        }
        #: ``pattern`` rules (for everyone)
        self.patterns: tuple[Rule, ...] = tuple(patterns)
        self._results: dict[tuple[str | None, str, str, Access], bool] = {}
        self._clients: dict[tuple[str | None, str], _ClientRules] = {}

    def check(self, username: str | None, client_id: str, topic: str, access: Access) -> bool:
        """Whether the client may READ / WRITE the topic name ``topic``.

        ``Access.SUBSCRIBE`` takes a topic filter and is :meth:`may_subscribe`.
        """
        key = (username, client_id, topic, access)
        result = self._results.get(key)
        if result is None:
            if access is Access.SUBSCRIBE:
                result = self._may_subscribe(username, client_id, topic)
            elif access is Access.READ or access is Access.WRITE:
                result = self._check(self._rules(username, client_id), topic, access)
            else:  # e.g. another module's look-alike enum: never guess
                raise TypeError(f"access must be an mqtt_twisted.acl.Access, not {access!r}")
            if len(self._results) >= self.RESULT_CACHE_SIZE:
                self._results.clear()
            self._results[key] = result
        return result

    def may_subscribe(self, username: str | None, client_id: str, topic_filter: str) -> bool:
        """False when the client could read nothing ``topic_filter`` matches: no read rule
        overlaps it, or a deny rule covers all of it. ``$share/G/F`` is checked as ``F``."""
        return self.check(username, client_id, topic_filter, Access.SUBSCRIBE)

    def clear_cache(self) -> None:
        """Forget cached results and rule sets."""
        self._results.clear()
        self._clients.clear()

    @staticmethod
    def _check(rules: _ClientRules, topic: str, access: Access) -> bool:
        if topic[:1] == "$":
            if access is Access.WRITE and topic.startswith("$SYS"):
                return False  # never writable by clients
            if topic == "$share" or topic.startswith("$share/"):
                return False  # only ever a subscription, never a topic name
            if _is_sys(topic):  # readable by default; only a deny rule takes it away
                return not rules.deny.match(topic)
        if rules.deny.match(topic):
            return False
        return (rules.read if access is Access.READ else rules.write).match(topic)

    def _may_subscribe(self, username: str | None, client_id: str, topic_filter: str) -> bool:
        shared = parse_shared_subscription(topic_filter)
        if shared is not None:
            topic_filter = shared[1]
        rules = self._rules(username, client_id)
        if any(filter_covers(d, topic_filter) for d in rules.deny.filters):
            return False
        if topic_filter.split("/", 1)[0] == "$SYS":  # only $SYS topics: readable by default
            return True
        return any(filters_overlap(r, topic_filter) for r in rules.read.filters)

    def _rules(self, username: str | None, client_id: str) -> _ClientRules:
        """The client's compiled rules (cached per username and client id)."""
        key = (username, client_id)
        rules = self._clients.get(key)
        if rules is None:
            rules = self._compile(username, client_id)
            if len(self._clients) >= self.CLIENT_CACHE_SIZE:
                self._clients.clear()
            self._clients[key] = rules
        return rules

    def _compile(self, username: str | None, client_id: str) -> _ClientRules:
        deny: list[str] = []
        read: list[str] = []
        write: list[str] = []
        topic_rules = self.anonymous if username is None else self.users.get(username, ())
        for rule in topic_rules:
            _add(rule.permission, rule.topic_filter, deny, read, write)
        # Mosquitto 2 denies pattern access to a client whose id or username holds a
        # wildcard (it could otherwise widen its own %c / %u rules).
        dangerous = any(c in client_id or c in (username or "") for c in _WILD)
        for rule in self.patterns:
            is_deny = rule.permission is Permission.DENY
            if dangerous and not is_deny:
                continue
            topic_filter = _substitute(rule.topic_filter, client_id, username, is_deny)
            if topic_filter is not None:
                _add(rule.permission, topic_filter, deny, read, write)
        return _ClientRules(_FilterSet(deny), _FilterSet(read), _FilterSet(write))


def _add(
    permission: Permission, topic_filter: str, deny: list[str], read: list[str], write: list[str]
) -> None:
    if permission is Permission.DENY:
        deny.append(topic_filter)
    if permission.reads:
        read.append(topic_filter)
    if permission.writes:
        write.append(topic_filter)


# --------------------------------------------------------------------------- parsing


def parse_acl(text: str, path: str | None = None) -> Acl:
    """Parse the text of an ACL file; raises :class:`AclFileError` on a malformed line."""
    anonymous: list[Rule] = []
    users: dict[str, list[Rule]] = {}
    patterns: list[Rule] = []
    current = anonymous
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line or line[0] == "#":
            continue
        keyword, rest = _split(line)
        if keyword == "user":
            if not rest:
                raise AclFileError(number, "'user' needs a username", path)
            current = users.setdefault(rest, [])
        elif keyword == "topic" or keyword == "pattern":
            if not rest:
                raise AclFileError(number, f"'{keyword}' needs a topic filter", path)
            word, topic_filter = _split(rest)
            if topic_filter:
                permission = _PERMISSIONS.get(word)
                if permission is None:
                    raise AclFileError(
                        number,
                        f"invalid access {word!r} (read, write, readwrite or deny)",
                        path,
                    )
            else:  # a single word is the filter (as in Mosquitto: "topic read" is topic "read")
                permission, topic_filter = Permission.READWRITE, word
            if not _valid_rule_filter(topic_filter):
                raise AclFileError(number, f"invalid topic filter {topic_filter!r}", path)
            rule = Rule(permission, topic_filter, number)
            (patterns if keyword == "pattern" else current).append(rule)
        else:
            raise AclFileError(number, f"unknown directive {keyword!r}", path)
    return Acl(anonymous, users, patterns)


def _valid_rule_filter(topic_filter: str) -> bool:
    """A valid plain filter; ``$share/...`` is an ordinary first level here (as in Mosquitto)."""
    if topic_filter.startswith("$share/"):
        topic_filter = "$" + topic_filter[len("$share") :]
    return validate_topic_filter(topic_filter)


def _split(text: str) -> tuple[str, str]:
    """The first whitespace-separated word of ``text`` and the (stripped) rest."""
    word, *rest = text.split(None, 1)
    return word, rest[0].strip() if rest else ""


def load_acl_file(path: str | os.PathLike[str]) -> Acl:
    """Read and parse an ACL file (UTF-8); raises :class:`AclFileError` or ``OSError``."""
    name = os.fspath(path)
    with open(name, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise AclFileError(line, "not valid UTF-8", name) from None
    return parse_acl(text, name)
