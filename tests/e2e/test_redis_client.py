"""The Redis client (mqtt_twisted.cluster.redis) against a real redis-server: bytes in and
out, pipelining in order, error replies, AUTH and SELECT, unix sockets, TLS (``rediss://``
with a CA of its own and client certificates), pub/sub, and what happens to pending
requests when the server is killed.

A few tests at the end drive the protocol over an in-memory transport instead, for replies
no healthy server sends.
"""

from __future__ import annotations

import os
import time

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.defer import CancelledError, Deferred, DeferredList, gatherResults
from twisted.internet.error import ConnectionAborted
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from mqtt_twisted.cluster.redis import (
    RedisAddress,
    RedisConnectError,
    RedisConnectionLost,
    RedisError,
    RedisProtocol,
    RedisSubscriber,
    connect,
    connect_subscriber,
)
from tests.redisserver import free_port, make_redis_server, redis_server


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def client_for(url: str, **kwargs) -> RedisProtocol:
    return await connect(reactor, RedisAddress.parse(url), **kwargs)


def failures(results: list) -> list:
    """The failures of a ``DeferredList(..., consumeErrors=True)`` result."""
    return [value for ok, value in results if not ok]


# -- commands and replies -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_set_get_keeps_arbitrary_bytes(redis_server):
    client = await client_for(redis_server.url)
    big = os.urandom(3 * 1024 * 1024)  # arrives in many reads
    values = {b"\x00\xff": b"\x00\xff", b"crlf": b"\r\n$3\r\n*1\r\n", b"empty": b"", b"big": big}
    for key, value in values.items():
        assert await client.execute(b"SET", key, value) == b"OK"
    for key, value in values.items():
        assert await client.execute(b"GET", key) == value
    assert await client.execute("SET", "clé", "välue") == b"OK"  # str goes out as UTF-8
    assert await client.execute(b"GET", "clé".encode()) == "välue".encode()
    assert await client.execute(b"GET", b"missing") is None
    assert await client.execute(b"RPUSH", b"list", 1, 2.5, b"\x00") == 3
    assert await client.execute(b"LRANGE", b"list", 0, -1) == [b"1", b"2.5", b"\x00"]
    assert await client.execute(b"LRANGE", b"missing", 0, -1) == []
    assert await client.execute(b"DEL", b"list", b"missing") == 1
    assert client.pending == 0
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_thousand_pipelined_incr_reply_in_order(redis_server):
    client = await client_for(redis_server.url)
    requests = [client.execute(b"INCR", b"counter") for _ in range(1000)]
    assert client.pending == 1000  # all issued without waiting for any reply
    assert await gatherResults(requests) == list(range(1, 1001))
    assert client.pending == 0
    await client.close()


@pytest_twisted.ensureDeferred
async def test_error_reply_is_a_redis_error_and_the_connection_goes_on(redis_server):
    client = await client_for(redis_server.url)
    with pytest.raises(RedisError, match="^ERR unknown command 'NOSUCHCOMMAND'"):
        await client.execute(b"NOSUCHCOMMAND", b"x")
    assert await client.execute(b"PING") == b"PONG"
    # in the middle of a pipeline: the neighbours get their own replies
    ok, wrong, value = (
        client.execute(b"SET", b"k", b"1"),
        client.execute(b"LPUSH", b"k", b"x"),
        client.execute(b"GET", b"k"),
    )
    assert await ok == b"OK"
    with pytest.raises(RedisError, match="^WRONGTYPE"):
        await wrong
    assert await value == b"1"
    # an error inside an array (EXEC) is a RedisError in the list, not a failure
    assert await client.execute(b"MULTI") == b"OK"
    assert await client.execute(b"INCR", b"k") == b"QUEUED"
    assert await client.execute(b"LPUSH", b"k", b"x") == b"QUEUED"
    first, second = await client.execute(b"EXEC")
    assert first == 2 and isinstance(second, RedisError) and str(second).startswith("WRONGTYPE")
    await client.close()


@pytest_twisted.ensureDeferred
async def test_bad_arguments_fail_without_sending_anything(redis_server):
    client = await client_for(redis_server.url)
    with pytest.raises(TypeError, match="bytes, str, int or float"):
        await client.execute(b"SET", b"k", None)
    with pytest.raises(TypeError):
        await client.execute(b"SET", b"k", bytearray(b"v"))
    with pytest.raises(ValueError, match="empty command"):
        await client.execute()
    assert client.pending == 0
    assert await client.execute(b"PING") == b"PONG"
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_cancelled_request_keeps_its_place(redis_server):
    """Cancelling (e.g. a timeout) fails that Deferred, but its reply is still consumed
    when it comes: the next request gets its own reply, not the cancelled one's."""
    client = await client_for(redis_server.url)
    await client.execute(b"SET", b"k", b"value")
    slow = client.execute(b"DEBUG", b"SLEEP", b"0.2")
    after = client.execute(b"GET", b"k")
    slow.cancel()
    with pytest.raises(CancelledError):
        await slow
    assert await after == b"value"
    assert await client.execute(b"PING") == b"PONG"
    await client.close()


@pytest_twisted.ensureDeferred
async def test_close_fails_pending_and_later_requests(redis_server):
    client = await client_for(redis_server.url)
    sleeping = client.execute(b"DEBUG", b"SLEEP", b"0.5")
    ended = await client.close()
    assert isinstance(ended, RedisConnectionLost)
    with pytest.raises(RedisConnectionLost):
        await sleeping
    later = client.execute(b"PING")
    assert later.called
    with pytest.raises(RedisConnectionLost, match="lost"):
        await later
    assert isinstance(await client.notify_lost(), RedisConnectionLost)  # after the fact too


# -- connecting: AUTH, SELECT, unix sockets, failures ----------------------------------------


@pytest_twisted.ensureDeferred
async def test_auth_with_password_and_with_user(make_redis_server):
    server = make_redis_server(
        password="s3cret", extra_args=("--user", "alice", "on", ">alice-pw", "~*", "&*", "+@all")
    )
    client = await client_for(server.url)
    assert await client.execute(b"ACL", b"WHOAMI") == b"default"
    await client.close()
    alice = await client_for(f"redis://alice:alice-pw@127.0.0.1:{server.port}/0")
    assert await alice.execute(b"ACL", b"WHOAMI") == b"alice"
    await alice.close()


@pytest_twisted.ensureDeferred
async def test_wrong_or_missing_password_is_refused_clearly(make_redis_server):
    server = make_redis_server(password="s3cret")
    with pytest.raises(RedisConnectError, match="AUTH refused: WRONGPASS") as refused:
        await client_for(f"redis://:not-it@127.0.0.1:{server.port}/0")
    assert "not-it" not in str(refused.value)
    assert f"redis://127.0.0.1:{server.port}/0" in str(refused.value)
    with pytest.raises(RedisConnectError, match="PING refused: NOAUTH"):
        await client_for(f"redis://127.0.0.1:{server.port}/0")
    with pytest.raises(RedisConnectError, match="AUTH refused: WRONGPASS"):
        await client_for(f"redis://bob:s3cret@127.0.0.1:{server.port}/3")


@pytest_twisted.ensureDeferred
async def test_select_db_from_the_url(redis_server):
    db3 = await client_for(f"redis://127.0.0.1:{redis_server.port}/3")
    assert await db3.execute(b"SET", b"where", b"db3") == b"OK"
    assert b" db=3 " in await db3.execute(b"CLIENT", b"INFO")
    db0 = await client_for(redis_server.url)
    assert await db0.execute(b"GET", b"where") is None
    assert await db0.execute(b"SELECT", 3) == b"OK"
    assert await db0.execute(b"GET", b"where") == b"db3"
    with pytest.raises(RedisConnectError, match="SELECT refused: ERR DB index is out of range"):
        await client_for(f"redis://127.0.0.1:{redis_server.port}/999")
    await db3.close()
    await db0.close()


@pytest_twisted.ensureDeferred
async def test_unix_socket_urls(redis_server):
    first = await client_for(f"unix://{redis_server.unix_path}?db=2")
    assert await first.execute(b"SET", b"over", b"unix") == b"OK"
    assert b" db=2 " in await first.execute(b"CLIENT", b"INFO")
    second = await client_for(f"unix:{redis_server.unix_path}")
    assert await second.execute(b"SELECT", 2) == b"OK"
    assert await second.execute(b"GET", b"over") == b"unix"
    await first.close()
    await second.close()


@pytest_twisted.ensureDeferred
async def test_rediss_with_its_ca_and_a_client_certificate(make_redis_server):
    server = make_redis_server(tls=True, password="s3cret")  # a TLS port only
    assert server.url.startswith(f"rediss://:s3cret@127.0.0.1:{server.port}/0?ssl_ca_certs=")
    client = await client_for(server.url.replace("/0?", "/4?"))
    big = os.urandom(1024 * 1024)  # many TLS records
    assert await client.execute(b"SET", b"key", big) == b"OK"
    assert await client.execute(b"GET", b"key") == big
    assert b" db=4 " in await client.execute(b"CLIENT", b"INFO")
    got: list[tuple[bytes, bytes]] = []
    subscriber = await connect_subscriber(
        reactor, RedisAddress.parse(server.url), lambda *message: got.append(message)
    )
    await subscriber.subscribe(b"news")
    assert await client.execute(b"PUBLISH", b"news", b"over TLS") == 1
    while not got:
        await sleep(0.01)
    assert got == [(b"news", b"over TLS")]
    await subscriber.close()
    await client.close()


@pytest_twisted.ensureDeferred
async def test_rediss_without_a_client_certificate_is_refused_clearly(make_redis_server):
    server = make_redis_server(tls=True)  # tls-auth-clients yes
    files = server.certificates
    refused = "cannot connect to rediss://127.0.0.1:.* lost: .*certificate required"
    with pytest.raises(RedisConnectError, match=refused):
        await client_for(server.url_with(ssl_ca_certs=files.ca))
    with pytest.raises(RedisConnectError, match="lost: .*unknown ca"):  # another CA's client
        await client_for(
            server.url_with(
                ssl_ca_certs=files.ca,
                ssl_certfile=files.untrusted_cert,
                ssl_keyfile=files.untrusted_key,
            )
        )
    optional = make_redis_server(tls=True, tls_auth_clients="optional")
    client = await client_for(optional.url_with(ssl_ca_certs=optional.certificates.ca))
    assert await client.execute(b"PING") == b"PONG"
    await client.close()


@pytest_twisted.ensureDeferred
async def test_rediss_with_the_wrong_ca_or_host_name_is_refused(make_redis_server):
    server = make_redis_server(tls=True, extra_args=("--bind", "127.0.0.1", "127.0.0.2"))
    files = server.certificates
    mine = {"ssl_certfile": files.client_cert, "ssl_keyfile": files.client_key}
    verify_failed = "cannot connect to rediss://127.0.0.1:.* lost: .*certificate verify failed"
    with pytest.raises(RedisConnectError, match=verify_failed):
        await client_for(server.url_with(ssl_ca_certs=files.untrusted_ca, **mine))
    with pytest.raises(RedisConnectError, match=verify_failed):  # the system's CAs
        await client_for(server.url_with(**mine))
    # the server's certificate is for 127.0.0.1 and localhost, not for 127.0.0.2
    other = server.url_with("127.0.0.2", ssl_ca_certs=files.ca, **mine)
    with pytest.raises(RedisConnectError, match="lost: .*IPAddressMismatch"):
        await client_for(other)
    for url in (other + "&ssl_check_hostname=false", server.url_with("localhost", **mine)):
        url = url.replace("?", f"?ssl_ca_certs={files.ca}&", 1) if "ca.pem" not in url else url
        client = await client_for(url)
        assert await client.execute(b"PING") == b"PONG"
        await client.close()


@pytest_twisted.ensureDeferred
async def test_closed_port_is_refused_within_the_timeout():
    started = time.monotonic()
    with pytest.raises(RedisConnectError, match="cannot connect to redis://127.0.0.1:.*refused"):
        await client_for(f"redis://127.0.0.1:{free_port()}/0", timeout=2.0)
    assert time.monotonic() - started < 2.0


@pytest_twisted.ensureDeferred
async def test_a_server_that_never_answers_times_out():
    events: list[str] = []

    class Silent(Protocol):
        def connectionMade(self):
            events.append("accepted")

        def connectionLost(self, reason):
            events.append("closed")

    port = reactor.listenTCP(0, Factory.forProtocol(Silent), interface="127.0.0.1")
    try:
        started = time.monotonic()
        with pytest.raises(RedisConnectError, match=r"no answer within 0\.3 s"):
            await client_for(f"redis://127.0.0.1:{port.getHost().port}/0", timeout=0.3)
        assert 0.25 < time.monotonic() - started < 2.0
        await sleep(0.1)
        assert events == ["accepted", "closed"]  # the client hung up
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_cancelled_connect_is_cancelled():
    attempt = connect(reactor, RedisAddress.parse("redis://192.0.2.1/0"), timeout=5.0)
    attempt.cancel()
    with pytest.raises(CancelledError):
        await attempt


# -- pub/sub ----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_subscriber_gets_500_messages_in_publish_order(redis_server):
    received: list[tuple[bytes, bytes]] = []
    all_in: Deferred[None] = Deferred()

    def on_message(channel: bytes, payload: bytes) -> None:
        received.append((channel, payload))
        if len(received) == 500:
            all_in.callback(None)

    address = RedisAddress.parse(redis_server.url)
    subscriber = await connect_subscriber(reactor, address, on_message)
    assert isinstance(subscriber, RedisSubscriber)
    assert await subscriber.subscribe(b"events", "other\xff") is None
    publisher = await connect(reactor, address)
    sent = [(b"events" if n % 3 else "other\xff".encode(), b"%d\x00" % n) for n in range(500)]
    receivers = [publisher.execute(b"PUBLISH", channel, payload) for channel, payload in sent]
    assert await gatherResults(receivers) == [1] * 500
    await all_in.addTimeout(10, reactor)
    assert received == sent
    # unsubscribing: the other channel's messages stop, the first's go on
    await subscriber.unsubscribe("other\xff")
    assert await subscriber.execute(b"PING") == [b"pong", b""]  # RESP2 PING when subscribed
    assert await publisher.execute(b"PUBLISH", "other\xff", b"x") == 0
    assert await publisher.execute(b"PUBLISH", b"events", b"last") == 1
    with pytest.raises(RedisError, match="only .*SUBSCRIBE"):
        await subscriber.execute(b"GET", b"k")  # refused by Redis, the FIFO goes on
    await subscriber.subscribe(b"more")
    assert received[-1] == (b"events", b"last")
    await subscriber.close()
    await publisher.close()


@pytest_twisted.ensureDeferred
async def test_a_refused_subscribe_fails_alone(make_redis_server):
    """Redis refuses a SUBSCRIBE naming a forbidden channel with one error for the whole
    command (no confirmation for the others); the next subscribe still works."""
    acl = ("--user", "bob", "on", ">pw", "~*", "resetchannels", "&ok*", "+@all")
    server = make_redis_server(extra_args=acl)
    received: list[tuple[bytes, bytes]] = []
    address = RedisAddress.parse(f"redis://bob:pw@127.0.0.1:{server.port}/0")
    subscriber = await connect_subscriber(
        reactor, address, lambda *message: received.append(message)
    )
    with pytest.raises(RedisError, match="^NOPERM"):
        await subscriber.subscribe(b"ok1", b"secret")
    await subscriber.subscribe(b"ok2")
    publisher = await connect(reactor, address)
    assert await publisher.execute(b"PUBLISH", b"ok1", b"no") == 0
    assert await publisher.execute(b"PUBLISH", b"ok2", b"yes") == 1
    assert await subscriber.unsubscribe(b"ok2", b"never-subscribed") is None
    assert received == [(b"ok2", b"yes")]
    await subscriber.close()
    await publisher.close()


# -- connection loss ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_server_killed_fails_every_pending_request_and_later_ones(redis_server):
    address = RedisAddress.parse(redis_server.url)
    client = await connect(reactor, address)
    subscriber = await connect_subscriber(reactor, address, lambda channel, payload: None)
    await subscriber.subscribe(b"events")
    assert await client.execute(b"SET", b"persisted", b"before the kill") == b"OK"
    sleeping = client.execute(b"DEBUG", b"SLEEP", b"3")  # the server stops answering
    pending = [client.execute(b"INCR", b"counter") for _ in range(100)]
    lost = client.notify_lost()
    order: list[int] = []
    for n, request in enumerate(pending):
        request.addErrback(lambda failure, n=n: order.append(n) or failure)
    await sleep(0.2)  # written; replies pending
    assert client.pending == 101
    redis_server.kill()
    results = await DeferredList([sleeping, *pending], consumeErrors=True)
    assert len(failures(results)) == 101
    assert all(failure.check(RedisConnectionLost) for failure in failures(results))
    assert order == list(range(100))  # in the order they were issued
    assert isinstance(await lost, RedisConnectionLost)
    assert client.pending == 0
    # a later call fails at once: nothing is queued for a connection that is gone
    later = client.execute(b"GET", b"persisted")
    outcome: list = []
    later.addErrback(outcome.append)
    assert len(outcome) == 1 and outcome[0].check(RedisConnectionLost)
    assert "lost" in outcome[0].getErrorMessage()
    assert isinstance(await subscriber.notify_lost(), RedisConnectionLost)
    with pytest.raises(RedisConnectionLost):
        await subscriber.subscribe(b"again")
    # the server again, on its append-only file: the write acknowledged before the kill is
    # there; the INCRs never ran (the server was asleep when killed)
    redis_server.start()
    again = await connect(reactor, address)
    assert await again.execute(b"GET", b"persisted") == b"before the kill"
    assert await again.execute(b"GET", b"counter") is None
    await again.close()


# -- without a server: replies a healthy Redis never sends ------------------------------------


def connected(protocol: RedisProtocol) -> StringTransport:
    transport = StringTransport()
    protocol.makeConnection(transport)
    return transport


def test_replies_split_anywhere_still_match_in_order():
    protocol = RedisProtocol()
    transport = connected(protocol)
    requests = [protocol.execute(b"GET", b"k%d" % n) for n in range(4)]
    assert transport.value() == b"".join(b"*2\r\n$3\r\nGET\r\n$2\r\nk%d\r\n" % n for n in range(4))
    replies = b"$3\r\na\x00b\r\n:42\r\n-ERR no\r\n*2\r\n$-1\r\n$0\r\n\r\n"
    for byte in range(len(replies)):  # one byte at a time
        protocol.dataReceived(replies[byte : byte + 1])
    results: list = []
    for request in requests:
        request.addBoth(results.append)
    assert results[0] == b"a\x00b" and results[1] == 42 and results[3] == [None, b""]
    assert results[2].check(RedisError) and results[2].getErrorMessage() == "ERR no"


def test_a_reply_nobody_asked_for_drops_the_connection():
    protocol = RedisProtocol()
    transport = connected(protocol)
    first = protocol.execute(b"PING")
    protocol.dataReceived(b"+PONG\r\n+PONG\r\n")
    assert first.result == b"PONG"
    assert transport.disconnected  # StringTransport's mark of abortConnection
    waiting = protocol.execute(b"PING")  # not sent: the connection is being dropped
    outcome: list = []
    waiting.addErrback(outcome.append)
    assert outcome and outcome[0].check(RedisConnectionLost)


def test_an_unreadable_reply_fails_every_pending_request():
    protocol = RedisProtocol()
    transport = connected(protocol)
    requests = [protocol.execute(b"PING") for _ in range(3)]
    protocol.dataReceived(b"+PONG\r\n?garbage\r\n")
    assert transport.disconnected  # StringTransport's mark of abortConnection
    protocol.connectionLost(Failure(ConnectionAborted()))  # as the abort does, later
    outcome: list = []
    for request in requests:
        request.addBoth(outcome.append)
    assert outcome[0] == b"PONG"
    assert all(failure.check(RedisConnectionLost) for failure in outcome[1:])
    assert "protocol error" in outcome[1].getErrorMessage()


def test_a_request_before_connecting_fails_at_once():
    outcome: list = []
    RedisProtocol().execute(b"PING").addErrback(outcome.append)
    assert outcome[0].check(RedisConnectionLost)
    assert "not connected" in outcome[0].getErrorMessage()


def test_a_subscriber_tells_messages_from_earlier_replies():
    messages: list[tuple[bytes, bytes]] = []
    protocol = RedisSubscriber(lambda channel, payload: messages.append((channel, payload)))
    connected(protocol)
    earlier = protocol.execute(b"LRANGE", b"list", 0, -1)
    subscribed = protocol.subscribe(b"a", b"b")
    refused = protocol.subscribe(b"secret")
    ping = protocol.execute(b"PING")
    protocol.dataReceived(
        b"*3\r\n$7\r\nmessage\r\n$1\r\nx\r\n$1\r\ny\r\n"  # LRANGE's reply, looking alike
        b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n"
        b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nm1\r\n"  # between two confirmations
        b"*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n"
        b"-NOPERM this user has no permissions to access the 'secret' channel\r\n"
        b"*3\r\n$7\r\nmessage\r\n$1\r\nb\r\n$2\r\nm2\r\n"
        b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"
    )
    assert earlier.result == [b"message", b"x", b"y"]
    assert subscribed.result is None
    outcome: list = []
    refused.addErrback(outcome.append)
    assert outcome[0].check(RedisError) and "NOPERM" in outcome[0].getErrorMessage()
    assert ping.result == [b"pong", b""]
    assert messages == [(b"a", b"m1"), (b"b", b"m2")]
    assert protocol.pending == 0
