"""Tests for mqtt_twisted.topics (MQTT 5.0 section 4.7 / 4.8.2 rules)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqtt_twisted.topics import (
    RetainedTree,
    SubscriptionTree,
    parse_shared_subscription,
    topic_matches,
    validate_topic_filter,
    validate_topic_name,
)

# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "topic, ok",
    [
        ("", False),  # [MQTT-4.7.3-1] at least one character
        ("a", True),
        ("a/b/c", True),
        ("/", True),  # empty levels are allowed
        ("//", True),
        ("a//b", True),
        ("/a", True),
        ("a/", True),
        ("$SYS/broker", True),
        ("sport/tennis/player1", True),
        ("#", False),  # [MQTT-3.3.2-2] no wildcards in a topic name
        ("+", False),
        ("a/#", False),
        ("a/+/b", False),
        ("a#", False),
        ("a/b+", False),
        ("a\x00b", False),  # [MQTT-4.7.3-2] no U+0000
        ("caf\u00e9/\u6f22\u5b57", True),
        ("x" * 65535, True),  # [MQTT-1.5.4] at most 65535 bytes
        ("x" * 65536, False),
        ("\u00e9" * 32768, False),  # 65536 bytes once UTF-8 encoded
        ("a\ud800", False),  # lone surrogate is not well-formed UTF-8 [MQTT-1.5.4-1]
    ],
)
def test_validate_topic_name(topic: str, ok: bool) -> None:
    assert validate_topic_name(topic) is ok


@pytest.mark.parametrize(
    "topic_filter, ok",
    [
        ("", False),  # [MQTT-4.7.3-1]
        ("#", True),
        ("+", True),
        ("a", True),
        ("a/#", True),  # [MQTT-4.7.1-2] '#' as the whole last level
        ("a/#/b", False),  # [MQTT-4.7.1-2] '#' must be last
        ("#/a", False),
        ("a#", False),  # [MQTT-4.7.1-2] '#' must occupy a whole level
        ("a/b#", False),
        ("a/#b", False),
        ("a/b+", False),  # [MQTT-4.7.1-3] '+' must occupy a whole level
        ("+a", False),
        ("++", False),
        ("+/+", True),
        ("+/tennis/#", True),
        ("sport/+/player1", True),
        ("/", True),
        ("//", True),
        ("/+", True),
        ("+/", True),
        ("$SYS/#", True),
        ("a\x00", False),  # [MQTT-4.7.3-2]
        ("x" * 65535, True),
        ("x" * 65536, False),
        ("$share/g/a/b", True),  # [MQTT-4.8.2-1] [MQTT-4.8.2-2]
        ("$share/g/#", True),
        ("$share/g/+/x", True),
        ("$share/g//", True),
        ("$share/g", False),  # [MQTT-4.8.2-2] a filter must follow the ShareName
        ("$share/g/", False),  # ... and it must be non-empty
        ("$share//x", False),  # [MQTT-4.8.2-1] ShareName at least one character
        ("$share/+/x", False),  # [MQTT-4.8.2-2] no wildcards in ShareName
        ("$share/#/x", False),
        ("$share/g+/x", False),
        ("$share/g/a/#/b", False),  # the filter part follows the usual rules
        ("$share/g/a+", False),
        ("$share", True),  # not a shared subscription, just a filter
        ("$sharex/g", True),
    ],
)
def test_validate_topic_filter(topic_filter: str, ok: bool) -> None:
    assert validate_topic_filter(topic_filter) is ok


@pytest.mark.parametrize(
    "topic_filter, expected",
    [
        ("$share/g/a/b", ("g", "a/b")),
        ("$share/grp/#", ("grp", "#")),
        ("$share/g//", ("g", "/")),
        ("a/b", None),
        ("#", None),
        ("$SYS/#", None),
        ("$share", None),
    ],
)
def test_parse_shared_subscription(topic_filter: str, expected: tuple[str, str] | None) -> None:
    assert parse_shared_subscription(topic_filter) == expected


# --------------------------------------------------------------------------- topic_matches


@pytest.mark.parametrize(
    "topic_filter, topic, ok",
    [
        # exact matches and case sensitivity [MQTT-4.7.3]
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a/b", "a/b/c", False),
        ("a/b/c", "a/b", False),
        ("ACCOUNTS", "Accounts", False),
        ("Accounts", "Accounts", True),
        # '#' [MQTT-4.7.1-2]
        ("#", "a", True),
        ("#", "a/b/c", True),
        ("#", "/", True),
        ("sport/tennis/player1/#", "sport/tennis/player1", True),
        ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
        ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
        ("sport/#", "sport", True),  # matches the parent level
        ("a/#", "a/", True),
        ("a/#", "ab", False),
        ("a/b/#", "a", False),
        # '+' matches exactly one level, possibly empty [MQTT-4.7.1-3]
        ("sport/tennis/+", "sport/tennis/player1", True),
        ("sport/tennis/+", "sport/tennis/player1/ranking", False),
        ("sport/+", "sport", False),
        ("sport/+", "sport/", True),
        ("+", "a", True),
        ("+", "/finance", False),
        ("+/+", "/finance", True),
        ("/+", "/finance", True),
        ("a/+/b", "a//b", True),
        ("a//b", "a//b", True),
        ("a/+/b", "a/x/y/b", False),
        ("+/#", "a", True),
        ("+/+/#", "a", False),
        # '$' topics [MQTT-4.7.2-1]
        ("#", "$SYS", False),
        ("#", "$SYS/broker/uptime", False),
        ("+", "$SYS", False),
        ("+/monitor/Clients", "$SYS/monitor/Clients", False),
        ("+/#", "$SYS/x", False),
        ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
        ("$SYS/#", "$SYS/x", True),
        ("$SYS/#", "$SYS", True),
        ("$SYS/+", "$SYS/x", True),
        ("a/+", "a/$x", True),  # only the first level is special
        ("a/#", "a/$x", True),
        ("$+/x", "$a/x", False),  # not a wildcard level; exact compare
    ],
)
def test_topic_matches(topic_filter: str, topic: str, ok: bool) -> None:
    assert topic_matches(topic_filter, topic) is ok


# --------------------------------------------------------------------------- SubscriptionTree unit tests


def test_subscription_tree_add_get_remove() -> None:
    tree: SubscriptionTree[object, int] = SubscriptionTree()
    s1, s2 = object(), object()
    assert tree.add("a/+", s1, 1) is True
    assert tree.add("a/+", s1, 2) is False  # replaced
    assert tree.add("a/+", s2, 3) is True
    assert tree.add("a/#", s1, 4) is True
    assert len(tree) == 3
    assert tree.get("a/+", s1) == 2
    assert tree.get("a/+", object()) is None
    assert tree.get("a", s1) is None
    assert tree.get("x/y", s1) is None
    assert sorted(d[s1] for d in tree.match("a/b")) == [2, 4]
    assert tree.remove("a/+", s1) is True
    assert tree.remove("a/+", s1) is False
    assert tree.remove("nope", s1) is False
    assert tree.remove("a", s1) is False  # intermediate node, no subscription
    assert len(tree) == 2
    assert sorted((f, v) for f, _, v in tree.filters()) == [("a/#", 4), ("a/+", 3)]
    assert tree.remove("a/+", s2) and tree.remove("a/#", s1)
    assert len(tree) == 0
    assert not tree._root.children
    assert tree.match("a/b") == []


def test_subscription_tree_returns_live_dicts() -> None:
    tree: SubscriptionTree[str, int] = SubscriptionTree()
    tree.add("x/y", "k", 1)
    (d,) = tree.match("x/y")
    tree.add("x/y", "k2", 2)
    assert d == {"k": 1, "k2": 2}  # the dict itself, not a copy
    assert tree.match("x/y")[0] is d


def test_subscription_tree_dollar_rules() -> None:
    tree: SubscriptionTree[str, None] = SubscriptionTree()
    for f in ("#", "+/#", "+", "+/monitor/Clients", "$SYS/#", "$SYS/monitor/+"):
        tree.add(f, f, None)
    got = {k for d in tree.match("$SYS/monitor/Clients") for k in d}
    assert got == {"$SYS/#", "$SYS/monitor/+"}
    got = {k for d in tree.match("$SYS") for k in d}
    assert got == {"$SYS/#"}
    got = {k for d in tree.match("x/monitor/Clients") for k in d}
    assert got == {"#", "+/#", "+/monitor/Clients"}


def test_subscription_tree_deep_topic() -> None:
    tree: SubscriptionTree[str, int] = SubscriptionTree()
    deep = "/".join(["a"] * 5000)
    tree.add(deep, "k", 1)
    tree.add(deep + "/#", "k", 2)
    assert [d["k"] for d in tree.match(deep)] in ([1, 2], [2, 1])
    assert tree.remove(deep, "k") and tree.remove(deep + "/#", "k")
    assert not tree._root.children


# --------------------------------------------------------------------------- RetainedTree unit tests


def test_retained_tree_basic() -> None:
    tree: RetainedTree[bytes] = RetainedTree()
    tree.set("a/b", b"1")
    tree.set("a/b", b"2")
    tree.set("a", b"3")
    tree.set("$SYS/x", b"4")
    assert len(tree) == 3
    assert tree.get("a/b") == b"2"
    assert tree.get("a/c") is None
    assert tree.get("a/b/c") is None
    assert sorted(tree.match("a/#")) == [("a", b"3"), ("a/b", b"2")]
    assert sorted(tree.match("#")) == [("a", b"3"), ("a/b", b"2")]
    assert sorted(tree.match("+")) == [("a", b"3")]
    assert sorted(tree.match("$SYS/#")) == [("$SYS/x", b"4")]
    assert sorted(tree) == [("$SYS/x", b"4"), ("a", b"3"), ("a/b", b"2")]
    assert tree.discard("a") is True
    assert tree.discard("a") is False
    assert tree.get("a") is None
    assert tree.get("a/b") == b"2"  # child survives removal of its parent
    assert tree.discard("nope") is False
    assert tree.discard("a/b") and tree.discard("$SYS/x")
    assert len(tree) == 0
    assert not tree._root.children
    assert list(tree.match("#")) == []


def test_retained_tree_match_is_a_snapshot() -> None:
    tree: RetainedTree[int] = RetainedTree()
    for i in range(5):
        tree.set(f"t/{i}", i)
    for topic, _ in tree.match("t/+"):
        tree.discard(topic)  # mutation during iteration is safe
    assert len(tree) == 0


# --------------------------------------------------------------------------- property tests

_LEVELS = ["", "a", "b", "$SYS", "$x"]
_topic_levels = st.lists(st.sampled_from(_LEVELS), min_size=1, max_size=4)
topics = _topic_levels.map("/".join).filter(validate_topic_name)


@st.composite
def filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(st.sampled_from(_LEVELS + ["+", "+"]), min_size=0, max_size=4))
    if not levels or draw(st.booleans()):
        levels.append("#")
    f = "/".join(levels)
    if f == "":  # [""] joins to the (invalid) empty filter
        f = "/"
    assert validate_topic_filter(f), f
    return f


@settings(max_examples=300)
@given(st.lists(filters(), max_size=25), st.lists(topics, min_size=1, max_size=10))
def test_subscription_tree_matches_reference(fs: list[str], ts: list[str]) -> None:
    tree: SubscriptionTree[str, int] = SubscriptionTree()
    for i, f in enumerate(fs):
        tree.add(f, f, i)
        tree.add(f, f + "#2", i)  # two keys on some nodes
    unique = set(fs)
    assert len(tree) == 2 * len(unique)
    for t in ts:
        result = tree.match(t)
        assert all(result), "empty dicts must never be returned"
        assert len({id(d) for d in result}) == len(result), "each dict once"
        got = {k for d in result for k in d if not k.endswith("#2")}
        assert got == {f for f in unique if topic_matches(f, t)}
        assert len(result) == len(got)


@settings(max_examples=300)
@given(st.lists(topics, max_size=25), st.lists(filters(), min_size=1, max_size=10))
def test_retained_tree_matches_reference(ts: list[str], fs: list[str]) -> None:
    tree: RetainedTree[str] = RetainedTree()
    for t in ts:
        tree.set(t, t.upper())
    assert len(tree) == len(set(ts))
    assert sorted(tree) == sorted((t, t.upper()) for t in set(ts))
    for f in fs:
        got = list(tree.match(f))
        assert len(got) == len(set(got))
        assert set(got) == {(t, t.upper()) for t in set(ts) if topic_matches(f, t)}


_ops = st.lists(
    st.tuples(st.booleans(), filters(), st.sampled_from(["k1", "k2", "k3"]), st.integers(0, 9)),
    max_size=40,
)


@settings(max_examples=200)
@given(_ops)
def test_subscription_tree_add_remove_prunes(ops: list[tuple[bool, str, str, int]]) -> None:
    tree: SubscriptionTree[str, int] = SubscriptionTree()
    model: dict[tuple[str, str], int] = {}
    for is_add, f, key, value in ops:
        if is_add:
            assert tree.add(f, key, value) is ((f, key) not in model)
            model[(f, key)] = value
        else:
            assert tree.remove(f, key) is ((f, key) in model)
            model.pop((f, key), None)
        assert len(tree) == len(model)
    for (f, key), value in model.items():
        assert tree.get(f, key) == value
    assert sorted(tree.filters()) == sorted((f, k, v) for (f, k), v in model.items())
    for f, key in list(model):
        assert tree.remove(f, key)
    assert len(tree) == 0
    assert not tree._root.children


@settings(max_examples=200)
@given(st.lists(st.tuples(st.booleans(), topics, st.integers(0, 9)), max_size=40))
def test_retained_tree_set_discard_prunes(ops: list[tuple[bool, str, int]]) -> None:
    tree: RetainedTree[int] = RetainedTree()
    model: dict[str, int] = {}
    for is_set, t, value in ops:
        if is_set:
            tree.set(t, value)
            model[t] = value
        else:
            assert tree.discard(t) is (t in model)
            model.pop(t, None)
        assert len(tree) == len(model)
    for t, value in model.items():
        assert tree.get(t) == value
    assert sorted(tree) == sorted(model.items())
    for t in list(model):
        assert tree.discard(t)
    assert len(tree) == 0
    assert not tree._root.children
