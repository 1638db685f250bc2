"""RedisAddress.parse: the URLs a cluster's configuration may hold, and the ones refused."""

from __future__ import annotations

import pytest
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    UNIXClientEndpoint,
    clientFromString,
)
from twisted.internet.testing import MemoryReactorClock

from mqtt_twisted.cluster.redis import RedisAddress

GOOD = [
    # url, endpoint, db, username, password, display
    ("redis://localhost", "tcp:host=localhost:port=6379", 0, None, None, "redis://localhost:6379/0"),
    ("redis://127.0.0.1:7000/", "tcp:host=127.0.0.1:port=7000", 0, None, None, "redis://127.0.0.1:7000/0"),
    ("REDIS://Cache.Example:6380/15", "tcp:host=cache.example:port=6380", 15, None, None, "redis://cache.example:6380/15"),
    ("redis://:secret@10.0.0.1/2", "tcp:host=10.0.0.1:port=6379", 2, None, "secret", "redis://10.0.0.1:6379/2"),
    ("redis://alice:p%40ss%3Aw%2F@h:1/3", "tcp:host=h:port=1", 3, "alice", "p@ss:w/", "redis://alice@h:1/3"),
    ("redis://[::1]:6380/1", r"tcp:host=\:\:1:port=6380", 1, None, None, "redis://[::1]:6380/1"),
    ("rediss://cache.example.com:6380/0", "tls:host=cache.example.com:port=6380", 0, None, None, "rediss://cache.example.com:6380/0"),
    ("rediss://u:pw@cache.example.com", "tls:host=cache.example.com:port=6379", 0, "u", "pw", "rediss://u@cache.example.com:6379/0"),
    ("unix:///run/redis/redis.sock", "unix:path=/run/redis/redis.sock", 0, None, None, "unix:///run/redis/redis.sock"),
    ("unix:///tmp/redis.sock?db=4", "unix:path=/tmp/redis.sock", 4, None, None, "unix:///tmp/redis.sock?db=4"),
    ("unix:/tmp/redis.sock", "unix:path=/tmp/redis.sock", 0, None, None, "unix:///tmp/redis.sock"),
    ("unix:/tmp/redis.sock?db=0", "unix:path=/tmp/redis.sock", 0, None, None, "unix:///tmp/redis.sock"),
    ("unix:///tmp/my%20dir/a:b.sock", r"unix:path=/tmp/my dir/a\:b.sock", 0, None, None, "unix:///tmp/my%20dir/a:b.sock"),
    ("unix://:pw@/tmp/r.sock?db=1", "unix:path=/tmp/r.sock", 1, None, "pw", "unix:///tmp/r.sock?db=1"),
]  # fmt: skip


@pytest.mark.parametrize("url, endpoint, db, username, password, display", GOOD)
def test_good_urls(url, endpoint, db, username, password, display):
    address = RedisAddress.parse(url)
    assert address == RedisAddress(endpoint, db, username, password, display)
    assert address.tls == url.startswith("rediss")
    if password:
        assert password not in repr(address) and password not in address.display


def test_endpoints_are_what_twisted_builds_from_the_strings():
    reactor = MemoryReactorClock()
    tcp = RedisAddress.parse("redis://[::1]:6380/1").endpoint_for(reactor)
    assert isinstance(tcp, TCP4ClientEndpoint) and (tcp._host, tcp._port) == ("::1", 6380)
    unix = RedisAddress.parse("unix:///tmp/my%20dir/a:b.sock").endpoint_for(reactor)
    assert isinstance(unix, UNIXClientEndpoint) and unix._path == "/tmp/my dir/a:b.sock"
    tls = RedisAddress.parse("rediss://cache.example.com:6380").endpoint_for(reactor)
    wrapped = tls._wrappedEndpoint  # wrapClientTLS around a HostnameEndpoint
    assert isinstance(wrapped, HostnameEndpoint)
    assert (wrapped._hostText, wrapped._port) == ("cache.example.com", 6380)
    assert isinstance(
        clientFromString(reactor, RedisAddress.parse("redis://h").endpoint), TCP4ClientEndpoint
    )


def test_a_bare_address_shows_its_endpoint():
    address = RedisAddress("tcp:host=h:port=1")
    assert address.display == "tcp:host=h:port=1" and address.db == 0 and not address.tls


BAD = [
    ("", "no scheme"),
    ("localhost:6379", "scheme 'localhost'"),
    ("http://localhost/0", "scheme 'http'"),
    ("redis://", "no host"),
    ("redis:///0", "no host"),
    ("redis://host:port/0", "Port could not be cast"),
    ("redis://host:99999/0", "out of range"),
    ("redis://host:0/0", "port 0"),
    ("redis://host/x", "database 'x' is not a number"),
    ("redis://host/1/2", "not a number"),
    ("redis://host/-1", "not a number"),
    ("redis://host/ 1", "not a number"),
    ("redis://host?db=1", "a query string"),
    ("redis://host/0#frag", "a #fragment"),
    ("redis://user@host/0", "a user name needs a password"),
    ("redis://user:@host/0", "a user name needs a password"),
    ("redis://ho st/0", "host 'ho st'"),
    ("redis://[::1/0", "Invalid IPv6 URL"),
    ("unix:relative.sock", "absolute path"),
    ("unix://host/tmp/x.sock", "absolute path and no host"),
    ("unix:///tmp/x.sock?db=a", "db=N"),
    ("unix:///tmp/x.sock?db=", "db=N"),
    ("unix:///tmp/x.sock?timeout=1", "db=N"),
    ("unix:///tmp/x.sock?db=1&db=2", "db=N"),
]


@pytest.mark.parametrize("url, why", BAD)
def test_bad_urls_name_the_accepted_forms(url, why):
    with pytest.raises(ValueError) as refused:
        RedisAddress.parse(url)
    message = str(refused.value)
    assert why in message
    assert "\n" not in message
    assert "redis://[USER:PASSWORD@]HOST[:PORT][/DB]" in message and "unix:/PATH" in message


def test_a_refused_url_does_not_echo_the_password():
    with pytest.raises(ValueError) as refused:
        RedisAddress.parse("redis://:hunter2@host/notadb")
    assert "hunter2" not in str(refused.value)
