"""RedisAddress.parse: the URLs a cluster's configuration may hold, and the ones refused;
``rediss://`` query parameters (redis-py's names) and the certificate files they name."""

from __future__ import annotations

import attrs
import pytest
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    UNIXClientEndpoint,
    clientFromString,
)
from twisted.internet.ssl import CertificateOptions
from twisted.internet.testing import MemoryReactorClock

from mqtt_twisted.cluster.redis import RedisAddress, RedisTLS
from tests.e2e.certs import make_certificates

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
    plain = attrs.evolve(address, tls_options=None)
    assert plain == RedisAddress(endpoint, db, username, password, display)
    assert address.tls == url.startswith("rediss") == (address.tls_options is not None)
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
    ("redis://host?db=1", "only rediss:// takes one"),
    ("redis://host/0?ssl_ca_certs=/ca.pem", "only rediss:// takes one"),
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
    ("unix:///tmp/x.sock?ssl_ca_certs=/ca.pem", "db=N"),
    ("rediss://host/0?db=1", "query parameter 'db': rediss:// takes ssl_ca_certs, ssl_certfile, ssl_keyfile, ssl_check_hostname"),
    ("rediss://host/0?ssl_cert_reqs=none", "query parameter 'ssl_cert_reqs'"),
    ("rediss://host/0?SSL_CA_CERTS=/ca.pem", "query parameter 'SSL_CA_CERTS'"),
    ("rediss://host/0?ssl_ca_certs", "query parameter ssl_ca_certs empty"),
    ("rediss://host/0?ssl_ca_certs=", "query parameter ssl_ca_certs empty"),
    ("rediss://host/0?ssl_ca_certs=/a&ssl_ca_certs=/b", "query parameter ssl_ca_certs twice"),
    ("rediss://host/0?ssl_certfile=/c.pem", "ssl_certfile and ssl_keyfile go together"),
    ("rediss://host/0?ssl_keyfile=/c.key", "ssl_certfile and ssl_keyfile go together"),
    ("rediss://host/0?ssl_check_hostname=maybe", "ssl_check_hostname is true or false"),
    ("rediss://host/0?&", "query parameter '':"),
]  # fmt: skip


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


def test_a_refused_query_does_not_echo_the_password():
    for url in ("rediss://:hunter2@host/0?nope=1", "redis://u:hunter2@host/0?ssl_keyfile=/k"):
        with pytest.raises(ValueError) as refused:
            RedisAddress.parse(url)
        assert "hunter2" not in str(refused.value)


# -- rediss:// with certificate files -------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("my certs"))  # a space, to quote


def files_url(ca, cert=None, key=None, more: str = "", login: str = "") -> str:
    query = f"ssl_ca_certs={ca}" + (f"&ssl_certfile={cert}&ssl_keyfile={key}" if cert else "")
    return f"rediss://{login}127.0.0.1:6390/2?{query.replace(' ', '%20')}{more}"


def test_rediss_with_a_ca_and_a_client_certificate(certs):
    url = files_url(certs.ca, certs.client_cert, certs.client_key, login="u:s%40cret@")
    address = RedisAddress.parse(url)
    assert address.endpoint == "tls:host=127.0.0.1:port=6390" and address.db == 2
    assert (address.username, address.password) == ("u", "s@cret")
    assert address.display == "rediss://u@127.0.0.1:6390/2"  # no password, no query
    assert "s@cret" not in repr(address)
    assert address.tls_options == RedisTLS(
        "127.0.0.1", 6390, str(certs.ca), str(certs.client_cert), str(certs.client_key), True
    )


def test_rediss_with_only_a_ca_and_the_hostname_check_off(certs):
    for value, check in [("false", False), ("NO", False), ("0", False), ("True", True)]:
        address = RedisAddress.parse(files_url(certs.ca, more=f"&ssl_check_hostname={value}"))
        assert address.tls_options == RedisTLS("127.0.0.1", 6390, str(certs.ca), None, None, check)
    plain = RedisAddress.parse("rediss://h/0?ssl_check_hostname=false").tls_options
    assert plain == RedisTLS("h", 6379, check_hostname=False)  # the system's CAs


def test_relative_paths_are_made_absolute_at_parse_time(certs, monkeypatch):
    monkeypatch.chdir(certs.directory)
    address = RedisAddress.parse(
        "rediss://h?ssl_ca_certs=ca.pem&ssl_certfile=client.pem&ssl_keyfile=client.key"
    )
    assert address.tls_options == RedisTLS(
        "h", 6379, str(certs.ca), str(certs.client_cert), str(certs.client_key)
    )


def test_the_tls_endpoint_is_wrap_client_tls_around_a_hostname_endpoint(certs):
    address = RedisAddress.parse(files_url(certs.ca, certs.client_cert, certs.client_key))
    endpoint = address.endpoint_for(MemoryReactorClock())
    wrapped = endpoint._wrappedEndpoint
    assert isinstance(wrapped, HostnameEndpoint)
    assert (wrapped._hostText, wrapped._port) == ("127.0.0.1", 6390)
    unchecked = RedisTLS("127.0.0.1", 1, str(certs.ca), check_hostname=False)
    options = unchecked.connection_creator()
    assert isinstance(options, CertificateOptions) and options.verify  # the chain still is


def test_the_files_are_read_again_for_each_connection(certs, tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_bytes(certs.ca.read_bytes())
    address = RedisAddress.parse(files_url(ca))
    ca.unlink()
    with pytest.raises(
        ValueError, match=r"^Redis URL: cannot read ssl_ca_certs '.*ca\.pem': No such file"
    ):
        address.endpoint_for(MemoryReactorClock())


def unusable(certs, tmp_path):
    """(url, what the error says) for files that cannot be used."""
    missing = tmp_path / "missing.pem"
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(
        b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"
    )
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"
    )
    cert, key = certs.client_cert, certs.client_key
    return [
        (files_url(missing), f"cannot read ssl_ca_certs '{missing}': No such file or directory"),
        (files_url(tmp_path), f"cannot read ssl_ca_certs '{tmp_path}': Is a directory"),
        (files_url(certs.ca, missing, key), f"cannot read ssl_certfile '{missing}'"),
        (files_url(certs.ca, cert, missing), f"cannot read ssl_keyfile '{missing}'"),
        (files_url(certs.client_key), f"ssl_ca_certs '{certs.client_key}' holds no PEM certificate"),
        (files_url(garbage), f"ssl_ca_certs '{garbage}' holds a bad certificate"),
        (files_url(certs.ca, key, key), f"ssl_certfile '{key}' holds no PEM certificate"),
        (files_url(certs.ca, cert, cert), f"ssl_keyfile '{cert}' holds no unencrypted PEM private key"),
        (files_url(certs.ca, cert, encrypted), "holds no unencrypted PEM private key"),
        (files_url(certs.ca, cert, certs.wrong_key), "ssl_keyfile is not the key of ssl_certfile"),
        (files_url(certs.ca, cert, certs.untrusted_key), "ssl_keyfile is not the key of ssl_certfile"),
    ]  # fmt: skip


def test_files_that_cannot_be_used_are_refused_at_parse_time_in_one_line(certs, tmp_path):
    for url, why in unusable(certs, tmp_path):
        with pytest.raises(ValueError) as refused:
            RedisAddress.parse(url.replace("rediss://", "rediss://:hunter2@"))
        message = str(refused.value)
        assert message.startswith("Redis URL: ") and why in message, url
        assert "\n" not in message and "hunter2" not in message


def test_a_certfile_may_carry_its_chain(certs, tmp_path):
    chained = tmp_path / "chained.pem"
    chained.write_bytes(certs.client_cert.read_bytes() + certs.ca.read_bytes())
    tls = RedisTLS("h", 1, str(certs.ca), str(chained), str(certs.client_key), False)
    options = tls.connection_creator()
    assert isinstance(options, CertificateOptions) and len(options.extraCertChain) == 1
    RedisAddress.parse(files_url(certs.ca, chained, certs.client_key))  # checked as well
