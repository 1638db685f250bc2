"""Tests for mqtt_twisted.acl (Mosquitto's acl_file, mosquitto.conf(5))."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqtt_twisted.acl import (
    Access,
    Acl,
    AclFileError,
    Permission,
    Rule,
    filter_covers,
    filters_overlap,
    load_acl_file,
    parse_acl,
)
from mqtt_twisted.topics import topic_matches, validate_topic_filter, validate_topic_name

R, W, S = Access.READ, Access.WRITE, Access.SUBSCRIBE


def can(acl: Acl, user: str | None, topic: str, access: Access = R, cid: str = "cid") -> bool:
    return acl.check(user, cid, topic, access)


# --------------------------------------------------------------------------- documented examples

# Mosquitto's own aclfile.example
MOSQUITTO_EXAMPLE = """\
# This affects access control for clients with no username.
topic read $SYS/#

# This only affects clients with username "roger".
user roger
topic foo/bar

# This affects all clients.
pattern write $SYS/broker/connection/%c/state
"""


def test_mosquitto_example_parses() -> None:
    acl = parse_acl(MOSQUITTO_EXAMPLE)
    assert acl.anonymous == (Rule(Permission.READ, "$SYS/#", 2),)
    assert acl.users == {"roger": (Rule(Permission.READWRITE, "foo/bar", 6),)}
    assert acl.patterns == (Rule(Permission.WRITE, "$SYS/broker/connection/%c/state", 9),)


def test_mosquitto_example_access() -> None:
    acl = parse_acl(MOSQUITTO_EXAMPLE)
    assert can(acl, None, "$SYS/broker/uptime")
    assert not can(acl, None, "foo/bar")
    assert not can(acl, None, "foo/bar", W)
    assert can(acl, "roger", "foo/bar") and can(acl, "roger", "foo/bar", W)
    assert not can(acl, "roger", "foo/baz") and not can(acl, "roger", "foo/bar/x", W)
    assert can(acl, "roger", "$SYS/broker/uptime")  # $SYS is readable by default
    assert not can(acl, "someone", "foo/bar")  # no section: pattern rules only
    # Mosquitto lets this pattern write its bridge state; here $SYS is never writable
    assert not can(acl, None, "$SYS/broker/connection/cid/state", W, cid="cid")


def test_man_page_pattern_example() -> None:
    acl = parse_acl("pattern write sensor/%u/data\n")
    assert can(acl, "alice", "sensor/alice/data", W)
    assert not can(acl, "alice", "sensor/alice/data", R)  # write only
    assert not can(acl, "alice", "sensor/bob/data", W)
    assert not can(acl, None, "sensor/%u/data", W)  # no username: %u patterns don't apply


def test_man_page_deny_example() -> None:
    # deny: "explicitly deny access to a topic that would otherwise be granted by a
    # broader read/write/readwrite statement"
    acl = parse_acl("topic readwrite house/#\ntopic deny house/secret/#\n")
    assert can(acl, None, "house/kitchen") and can(acl, None, "house/kitchen", W)
    for access in (R, W):
        assert not can(acl, None, "house/secret", access)
        assert not can(acl, None, "house/secret/key", access)


# --------------------------------------------------------------------------- topic rules


def test_readwrite_is_the_default_and_words_limit_access() -> None:
    acl = parse_acl("topic a\ntopic read r\ntopic write w\ntopic readwrite rw\n")
    assert can(acl, None, "a") and can(acl, None, "a", W)
    assert can(acl, None, "r") and not can(acl, None, "r", W)
    assert not can(acl, None, "w") and can(acl, None, "w", W)
    assert can(acl, None, "rw") and can(acl, None, "rw", W)
    assert not can(acl, None, "other") and not can(acl, None, "other", W)


def test_anonymous_and_user_sections() -> None:
    acl = parse_acl("topic anon/#\nuser alice\ntopic alice/#\nuser bob\ntopic bob/#\n")
    assert can(acl, None, "anon/x") and not can(acl, None, "alice/x")
    assert can(acl, "alice", "alice/x") and not can(acl, "alice", "anon/x")
    assert not can(acl, "alice", "bob/x") and can(acl, "bob", "bob/x")
    assert not can(acl, "carol", "anon/x")  # a user without a section gets nothing
    assert not can(acl, "", "anon/x")  # an empty username is a username, not anonymous


def test_user_sections_merge_and_names_may_contain_spaces() -> None:
    acl = parse_acl("user John Smith  \ntopic a\nuser x\ntopic b\nuser John Smith\ntopic c\n")
    assert [r.topic_filter for r in acl.users["John Smith"]] == ["a", "c"]
    assert can(acl, "John Smith", "c") and not can(acl, "John", "a")


def test_topic_filters_may_contain_spaces_after_an_access_word() -> None:
    acl = parse_acl("topic read  my topic/+  \n")
    assert acl.anonymous == (Rule(Permission.READ, "my topic/+", 1),)
    assert can(acl, None, "my topic/x")


def test_single_word_is_the_filter() -> None:
    # As in Mosquitto: with one word it is the topic, so "topic read" is topic "read".
    acl = parse_acl("topic read\n")
    assert acl.anonymous == (Rule(Permission.READWRITE, "read", 1),)


def test_wildcard_rules() -> None:
    acl = parse_acl("topic read a/+/c\ntopic read b/#\n")
    assert can(acl, None, "a/x/c") and can(acl, None, "a//c")
    assert not can(acl, None, "a/x/c/d") and not can(acl, None, "a/c")
    assert can(acl, None, "b") and can(acl, None, "b/x/y")  # '#' includes the parent


def test_whitespace_comments_and_line_endings() -> None:
    text = "  # indented comment\r\n\r\n\t topic\tread\t a/b \r\n#topic c\nuser\tbob\r\n  topic b\n"
    acl = parse_acl(text)
    assert acl.anonymous == (Rule(Permission.READ, "a/b", 3),)
    assert acl.users == {"bob": (Rule(Permission.READWRITE, "b", 6),)}


def test_deny_wins_regardless_of_order() -> None:
    for text in ("topic deny a/b\ntopic a/#\n", "topic a/#\ntopic deny a/b\n"):
        acl = parse_acl(text)
        assert not can(acl, None, "a/b") and not can(acl, None, "a/b", W)
        assert can(acl, None, "a/c")


def test_pattern_deny_overrides_a_user_allow() -> None:
    acl = parse_acl("user u\ntopic readwrite #\npattern deny private/%c/#\n")
    assert not can(acl, "u", "private/c1/x", cid="c1")
    assert can(acl, "u", "private/c2/x", cid="c1")
    assert not can(acl, "u", "private/c2/x", W, cid="c2")


# --------------------------------------------------------------------------- patterns


def test_pattern_substitution() -> None:
    acl = parse_acl(
        "pattern readwrite clients/%c/#\npattern read users/%u/inbox\npattern write %u/%c\n"
    )
    assert can(acl, "alice", "clients/c1/x", W, cid="c1")
    assert not can(acl, "alice", "clients/c2/x", W, cid="c1")
    assert can(acl, "alice", "users/alice/inbox") and not can(acl, "alice", "users/bob/inbox")
    assert can(acl, "alice", "alice/c1", W, cid="c1")
    # anonymous clients: %c patterns apply, %u patterns don't
    assert can(acl, None, "clients/c1/x", cid="c1")
    assert not can(acl, None, "users//inbox")


def test_pattern_only_substitutes_whole_levels() -> None:
    # mosquitto.conf(5): "The substitution pattern must be the only text for that level"
    acl = parse_acl("pattern dev-%c/x\npattern %c%u/y\n")
    assert not can(acl, "u", "dev-c/x", cid="c")
    assert can(acl, "u", "dev-%c/x", cid="c")
    assert not can(acl, "u", "cu/y", cid="c")


PATTERNS = "user u\ntopic mine/#\npattern readwrite clients/%c/#\npattern read public/#\n"


@pytest.mark.parametrize("cid, user", [("a+b", "u"), ("#", "u"), ("c", "u#"), ("c", "+")])
def test_wildcards_in_id_or_username_disable_allow_patterns(cid: str, user: str) -> None:
    # Mosquitto 2: "ACL denying access to client with dangerous client id/username"
    acl = parse_acl(PATTERNS)
    assert not can(acl, user, "public/x", cid=cid)  # even patterns without %c / %u
    assert not can(acl, user, f"clients/{cid}/x", cid=cid)
    assert not can(acl, user, "clients/other/x", cid=cid)
    if user == "u":
        assert can(acl, user, "mine/x", cid=cid)  # topic rules still apply


def test_slash_in_substituted_value_skips_that_pattern_only() -> None:
    acl = parse_acl(PATTERNS)
    # id "victim/x" must not reach into clients/victim/...
    assert not can(acl, "u", "clients/victim/x/y", W, cid="victim/x")
    assert can(acl, "u", "public/x", cid="victim/x")
    assert can(acl, "u", "clients/c/x", W, cid="c")


def test_deny_patterns_apply_to_every_client() -> None:
    acl = parse_acl("user u\ntopic readwrite #\npattern deny secret/#\npattern deny own/%c\n")
    for cid in ("c", "evil#", "+", "a/b"):
        assert not can(acl, "u", "secret/x", cid=cid)
        assert can(acl, "u", "other", cid=cid)
    assert not can(acl, "u", "own/a/b", cid="a/b")  # literal substitution for a deny


def test_empty_client_id_never_substitutes() -> None:
    acl = parse_acl("pattern readwrite clients/%c\n")
    assert not can(acl, None, "clients/", cid="")


# --------------------------------------------------------------------------- $ topics


def test_sys_is_readable_by_default_but_never_writable() -> None:
    acl = parse_acl("topic readwrite #\ntopic readwrite $SYS/#\n")
    assert can(acl, None, "$SYS/broker/uptime") and can(acl, None, "$SYS")
    assert can(acl, "nobody", "$SYS/broker/uptime")  # no rules at all for this user
    for topic in ("$SYS/broker/uptime", "$SYS", "$SYSTEM/x"):
        assert not can(acl, None, topic, W)


def test_sys_read_can_be_denied() -> None:
    acl = parse_acl("topic deny $SYS/broker/clients/#\nuser u\ntopic deny $SYS/#\n")
    assert not can(acl, None, "$SYS/broker/clients/total")
    assert can(acl, None, "$SYS/broker/uptime")
    assert not can(acl, "u", "$SYS/broker/uptime")
    acl = parse_acl("topic deny #\n")  # a leading '#' does not match $SYS
    assert can(acl, None, "$SYS/broker/uptime") and not can(acl, None, "a")


def test_leading_wildcards_do_not_grant_dollar_topics() -> None:
    acl = parse_acl("topic readwrite #\ntopic +/x\n")
    assert can(acl, None, "a/x") and not can(acl, None, "$other/x")
    assert not can(acl, None, "$other/y", W)
    acl = parse_acl("topic readwrite $other/#\n")
    assert can(acl, None, "$other/y") and can(acl, None, "$other/y", W)


def test_share_topic_names_are_refused() -> None:
    acl = parse_acl("topic readwrite $share/#\n")
    assert not can(acl, None, "$share/g/t") and not can(acl, None, "$share/g/t", W)


# --------------------------------------------------------------------------- may_subscribe


@pytest.mark.parametrize(
    "topic_filter, ok",
    [
        ("a/b", True),
        ("a", True),
        ("a/#", True),
        ("a/+/c", True),
        ("#", True),
        ("+/b", True),
        ("+/#", True),
        ("+", True),  # topic "a" is readable
        ("b/c", False),
        ("b/#", False),
        ("+/+/+/x", True),
        ("$SYS/#", True),  # readable by default
        ("$SYS/broker/uptime", True),
        ("$other/#", False),
        ("$share/g/a/b", True),
        ("$share/g/b/c", False),
        ("$share/g/#", True),
        ("w/x", False),  # write-only rules don't allow subscribing
    ],
)
def test_may_subscribe_overlap(topic_filter: str, ok: bool) -> None:
    acl = parse_acl("topic read a/#\ntopic write w/#\n")
    assert acl.may_subscribe(None, "c", topic_filter) is ok
    assert acl.check(None, "c", topic_filter, S) is ok


@pytest.mark.parametrize(
    "topic_filter, ok",
    [
        ("#", True),
        ("a/b", False),
        ("a/#", False),
        ("a", False),  # "a/#" covers its parent
        ("+/b", True),  # b/b is readable
        ("a/+", False),
        ("$SYS/#", False),
        ("$SYS/broker/uptime", False),
        ("$share/g/a/x", False),
        ("$share/g/b", True),
    ],
)
def test_may_subscribe_deny_covering(topic_filter: str, ok: bool) -> None:
    acl = parse_acl("topic read #\ntopic deny a/#\ntopic deny $SYS/#\n")
    assert acl.may_subscribe(None, "c", topic_filter) is ok


def test_may_subscribe_partial_deny_and_patterns() -> None:
    acl = parse_acl("topic deny $SYS/broker/clients/#\npattern read c/%c/#\n")
    assert acl.may_subscribe(None, "x", "$SYS/#")
    assert not acl.may_subscribe(None, "x", "$SYS/broker/clients/+")
    assert acl.may_subscribe(None, "x", "c/x/#") and acl.may_subscribe(None, "x", "c/+/+")
    assert not acl.may_subscribe(None, "x", "c/y/#")


# --------------------------------------------------------------------------- malformed files


@pytest.mark.parametrize(
    "text, line, words",
    [
        ("topic a\nbogus a\n", 2, "unknown directive 'bogus'"),
        ("# c\n\nuser\n", 3, "needs a username"),
        ("user   \t \n", 1, "needs a username"),
        ("topic\n", 1, "needs a topic filter"),
        ("pattern   \n", 1, "needs a topic filter"),
        ("\n\n\ntopic readd a/b\n", 4, "invalid access 'readd'"),
        ("topic a b\n", 1, "invalid access 'a'"),
        ("topic Read a\n", 1, "invalid access 'Read'"),  # case matters, as in Mosquitto
        ("topic read a/#/b\n", 1, "invalid topic filter 'a/#/b'"),
        ("pattern read a+\n", 1, "invalid topic filter 'a+'"),
        ("topic a\nTopic b\n", 2, "unknown directive 'Topic'"),
        ("topic a\x00b\n", 1, "invalid topic filter"),
    ],
)
def test_malformed_lines(text: str, line: int, words: str) -> None:
    with pytest.raises(AclFileError) as info:
        parse_acl(text)
    assert info.value.line == line
    assert words in str(info.value)
    assert str(info.value).startswith(f"line {line}: ")


def test_load_acl_file(tmp_path: Path) -> None:
    path = tmp_path / "acl"
    path.write_text(MOSQUITTO_EXAMPLE)
    assert load_acl_file(path).users == parse_acl(MOSQUITTO_EXAMPLE).users
    assert load_acl_file(str(path)).patterns == parse_acl(MOSQUITTO_EXAMPLE).patterns
    path.write_text("topic a\n\nuser\n")
    with pytest.raises(AclFileError, match="^" + re.escape(f"{path}:3: ")):
        load_acl_file(path)
    path.write_bytes(b"topic a\ntopic b\xff\n")
    with pytest.raises(AclFileError, match="not valid UTF-8") as info:
        load_acl_file(path)
    assert info.value.line == 2
    with pytest.raises(OSError):
        load_acl_file(tmp_path / "missing")


def test_check_refuses_a_foreign_access_value() -> None:
    acl = parse_acl("topic read a\n")
    with pytest.raises(TypeError):
        acl.check(None, "c", "a", "read")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- caches


def test_caches_are_bounded_and_rules_compiled_once() -> None:
    class Small(Acl):
        RESULT_CACHE_SIZE = 5
        CLIENT_CACHE_SIZE = 3

    base = parse_acl("topic read t/#\npattern readwrite c/%c/#\n")
    acl = Small(base.anonymous, base.users, base.patterns)
    for i in range(50):
        assert can(acl, None, f"t/{i}")
        assert can(acl, None, f"c/{i}/x", W, cid=str(i))
        assert not can(acl, None, f"c/{i}/x", W, cid="other")
        assert len(acl._results) <= 5 and len(acl._clients) <= 3
    rules = acl._rules("u", "c")
    assert acl._rules("u", "c") is rules
    acl.clear_cache()
    assert not acl._results and not acl._clients


# --------------------------------------------------------------------------- filter algebra

OVERLAP = [
    ("a/b", "a/b", True),
    ("a/b", "a/c", False),
    ("a/+", "a/b", True),
    ("a/+", "+/b", True),
    ("a/+", "a", False),
    ("a/+", "a/b/c", False),
    ("a/#", "a", True),  # '#' includes the parent level
    ("a/#", "a/b/c", True),
    ("a/#", "b/#", False),
    ("#", "a/b", True),
    ("#", "/", True),
    ("+", "/", False),
    ("+/+", "/", True),
    ("+/#", "a", True),
    ("a/+/#", "a", False),
    ("a/+/#", "a/b", True),
    ("#", "$SYS/x", False),  # [MQTT-4.7.2-1]
    ("+/x", "$SYS/x", False),
    ("+", "$SYS", False),
    ("$SYS/#", "$SYS", True),
    ("$SYS/+", "$SYS/x", True),
    ("$SYS/#", "$other/#", False),
    ("a/$x", "a/+", True),  # '$' only matters at the first level
    ("#", "+", True),
    ("/#", "+", False),  # only "" would match both, and "" is no topic name
    ("/#", "+/+", True),
    ("+/#", "+", True),
]


@pytest.mark.parametrize("a, b, expected", OVERLAP)
def test_filters_overlap_table(a: str, b: str, expected: bool) -> None:
    assert filters_overlap(a, b) is expected
    assert filters_overlap(b, a) is expected


COVERS = [
    ("a/b", "a/b", True),
    ("a/+", "a/b", True),
    ("a/b", "a/+", False),
    ("a/#", "a", True),
    ("a/#", "a/b/#", True),
    ("a/#", "a/#", True),
    ("a/+", "a/#", False),
    ("a/+/#", "a/#", False),  # a/# matches "a"
    ("a", "a/#", False),
    ("a/+", "a", False),
    ("#", "a/+/b", True),
    ("#", "#", True),
    ("+/#", "#", True),  # both match every non-'$' topic
    ("+/+/#", "#", False),
    ("/+/#", "/#", True),  # "/#" also matches "", which is no topic name
    ("+/+/#", "+/#", False),
    ("#", "$SYS/x", False),  # [MQTT-4.7.2-1]
    ("+/+", "$SYS/x", False),
    ("$SYS/#", "$SYS", True),
    ("$SYS/#", "+/#", False),
    ("+", "+", True),
    ("+", "a/b", False),
    ("a/+", "a/$x", True),
]


@pytest.mark.parametrize("general, specific, expected", COVERS)
def test_filter_covers_table(general: str, specific: str, expected: bool) -> None:
    assert filter_covers(general, specific) is expected


_LEVELS = ["", "a", "b", "$SYS", "$x"]
topics = (
    st.lists(st.sampled_from(_LEVELS), min_size=1, max_size=5)
    .map("/".join)
    .filter(validate_topic_name)
)


@st.composite
def filters(draw: st.DrawFn, max_levels: int = 4) -> str:
    levels = draw(st.lists(st.sampled_from(_LEVELS + ["+", "+"]), max_size=max_levels))
    if not levels or draw(st.booleans()):
        levels.append("#")
    f = "/".join(levels) or "/"
    assert validate_topic_filter(f), f
    return f


#: every topic of up to 5 levels over _LEVELS: enough to witness any overlap of
#: filters() of at most 3 levels plus '#'
UNIVERSE = [
    "/".join(p) for n in range(1, 6) for p in itertools.product(_LEVELS, repeat=n) if "/".join(p)
]


@settings(max_examples=500)
@given(filters(), filters(), topics)
def test_common_topic_implies_overlap(a: str, b: str, t: str) -> None:
    if topic_matches(a, t) and topic_matches(b, t):
        assert filters_overlap(a, b)


@settings(max_examples=500)
@given(filters(), filters(), topics)
def test_covers_is_sound(general: str, specific: str, t: str) -> None:
    if filter_covers(general, specific) and topic_matches(specific, t):
        assert topic_matches(general, t)
    if filter_covers(general, specific):
        assert filters_overlap(general, specific)
    assert filters_overlap(general, specific) is filters_overlap(specific, general)
    assert filter_covers(general, general)


@settings(max_examples=150, deadline=None)
@given(filters(max_levels=3), filters(max_levels=3))
def test_overlap_and_covers_match_brute_force(a: str, b: str) -> None:
    in_a = {t for t in UNIVERSE if topic_matches(a, t)}
    in_b = {t for t in UNIVERSE if topic_matches(b, t)}
    assert filters_overlap(a, b) is bool(in_a & in_b)
    assert filter_covers(a, b) is (in_b <= in_a)


_permissions = st.sampled_from(list(Permission))


@settings(max_examples=300)
@given(st.lists(st.tuples(_permissions, filters()), max_size=8), topics)
def test_check_matches_reference(rules: list[tuple[Permission, str]], t: str) -> None:
    acl = Acl(anonymous=[Rule(p, f) for p, f in rules])
    denied = any(p is Permission.DENY and topic_matches(f, t) for p, f in rules)
    sys = t == "$SYS" or t.startswith("$SYS/")
    reads = any(p.reads and topic_matches(f, t) for p, f in rules)
    writes = any(p.writes and topic_matches(f, t) for p, f in rules)
    assert acl.check(None, "c", t, R) is (not denied and (sys or reads))
    assert acl.check(None, "c", t, W) is (not denied and not t.startswith("$SYS") and writes)
    # may_subscribe with a topic name as the filter: exactly "may read it"
    assert acl.may_subscribe(None, "c", t) is acl.check(None, "c", t, R)
