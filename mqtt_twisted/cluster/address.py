"""Where the cluster's Redis is: `RedisAddress.parse` reads ``redis://``, ``rediss://`` (TLS)
and ``unix:`` URLs; ``endpoint_for(reactor)`` gives the endpoint to connect to.

``rediss://`` URLs take redis-py's query parameters: ``ssl_ca_certs=PATH`` (PEM CAs to check
the server against instead of the system's), ``ssl_certfile=PATH`` and ``ssl_keyfile=PATH``
(a client certificate, for ``tls-auth-clients``) and ``ssl_check_hostname=false``. The files
are read when the URL is parsed (a bad one is a `ValueError` there) and again at each
connection, so renewed certificates are picked up on reconnection."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import attrs
from OpenSSL import crypto
from twisted.internet import ssl
from twisted.internet.endpoints import (
    HostnameEndpoint,
    clientFromString,
    quoteStringArgument,
    wrapClientTLS,
)
from twisted.internet.error import VerifyError
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IStreamClientEndpoint
from twisted.python.filepath import FilePath

_FORMS = (
    "redis://[USER:PASSWORD@]HOST[:PORT][/DB], "
    "rediss://...[?ssl_ca_certs=PEM&ssl_certfile=PEM&ssl_keyfile=PEM] (TLS), "
    "unix:///PATH[?db=N] or unix:/PATH"
)
_TLS_QUERY = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")
_DB_QUERY = re.compile(r"(?:db=([0-9]{1,9}))?")
_DB_PATH = re.compile(r"/?([0-9]{1,9})?")
_HOST = re.compile(r"[A-Za-z0-9._:-]+")
_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def _read(path: str, name: str) -> bytes:
    try:
        return FilePath(path).getContent()
    except OSError as e:
        raise ValueError(f"Redis URL: cannot read {name} {path!r}: {e.strerror or e}") from None


def _certificates(path: str, name: str) -> list[ssl.Certificate]:
    """Every PEM certificate in the file, in order (at least one)."""
    found = _PEM_CERTIFICATE.findall(_read(path, name))
    try:
        certificates = [ssl.Certificate.loadPEM(pem) for pem in found]
    except crypto.Error as e:
        raise ValueError(f"Redis URL: {name} {path!r} holds a bad certificate: {e}") from None
    if not certificates:
        raise ValueError(f"Redis URL: {name} {path!r} holds no PEM certificate")
    return certificates


@attrs.frozen
class RedisTLS:
    """How a ``rediss://`` connection checks the server, and the client certificate it shows."""

    host: str
    port: int
    ca_certs: str | None = None  # PEM CA file (else the system's CAs)
    certfile: str | None = None  # PEM client certificate (then intermediates), with keyfile
    keyfile: str | None = None
    check_hostname: bool = True  # the server's certificate must name ``host``

    def connection_creator(self) -> IOpenSSLClientConnectionCreator:
        """TLS options, from the files as they are now; `ValueError` if one cannot be used."""
        trust: Any = ssl.platformTrust()
        if self.ca_certs is not None:
            trust = ssl.trustRootFromCertificates(_certificates(self.ca_certs, "ssl_ca_certs"))
        mine: dict[str, Any] = {}
        if self.certfile is not None and self.keyfile is not None:
            leaf, *chain = _certificates(self.certfile, "ssl_certfile")
            try:
                data = _read(self.keyfile, "ssl_keyfile")  # no passphrase: never prompts
                key = ssl.KeyPair(crypto.load_privatekey(crypto.FILETYPE_PEM, data, b""))
            except crypto.Error:
                why = f"ssl_keyfile {self.keyfile!r} holds no unencrypted PEM private key"
                raise ValueError(f"Redis URL: {why}") from None
            try:
                client = ssl.PrivateCertificate.fromCertificateAndKeyPair(leaf, key)
            except VerifyError:
                raise ValueError("Redis URL: ssl_keyfile is not the key of ssl_certfile") from None
            mine = {  # cryptography's objects: pyOpenSSL's are deprecated there
                "certificate": client.original.to_cryptography(),
                "privateKey": key.original.to_cryptography_key(),
                "extraCertChain": [extra.original.to_cryptography() for extra in chain],
            }
        if self.check_hostname:
            return ssl.optionsForClientTLS(
                self.host, trustRoot=trust, extraCertificateOptions=mine or None
            )
        return ssl.CertificateOptions(trustRoot=trust, **mine)  # the chain is still checked


@attrs.frozen
class RedisAddress:
    """Where a Redis server is and how to log in; `parse` reads one from a URL."""

    endpoint: str  # a client endpoint string for `clientFromString`
    db: int = 0
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    display: str = attrs.field(
        default=attrs.Factory(lambda self: self.endpoint, takes_self=True)
    )  # the URL without the password (nor the query), for logs
    tls_options: RedisTLS | None = None  # set for ``rediss://`` URLs

    @property
    def tls(self) -> bool:
        """True for ``rediss://`` addresses."""
        return self.endpoint.startswith("tls:")

    @classmethod
    def parse(cls, url: str) -> RedisAddress:
        """Read ``redis://``, ``rediss://`` or ``unix:`` URLs; `ValueError` for anything else,
        and for TLS files that cannot be read or used."""

        def bad(why: str) -> ValueError:  # never echoes the URL: it may hold a password
            return ValueError(f"bad Redis URL ({why}); expected {_FORMS}")

        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as e:
            raise bad(str(e)) from None
        scheme = parts.scheme.lower()
        if scheme not in ("redis", "rediss", "unix"):
            raise bad(f"scheme {parts.scheme!r}" if parts.scheme else "no scheme")
        if parts.fragment:
            raise bad("a #fragment")
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        if username is not None and password is None:
            raise bad("a user name needs a password")
        user = f"{parts.username}@" if username else ""
        if scheme == "unix":
            path = unquote(parts.path)
            if parts.hostname or port is not None or not path.startswith("/"):
                raise bad("a unix socket URL has an absolute path and no host or port")
            query = _DB_QUERY.fullmatch(parts.query)
            if query is None:
                raise bad("the only query parameter of a unix: URL is db=N")
            db = int(query[1] or 0)
            display = f"unix://{user}{parts.path}" + (f"?db={db}" if db else "")
            return cls(f"unix:path={quoteStringArgument(path)}", db, username, password, display)
        host = parts.hostname
        if not host or not _HOST.fullmatch(host):
            raise bad(f"host {host!r}" if host else "no host")
        if port == 0:
            raise bad("port 0")
        port = port or 6379
        db_path = _DB_PATH.fullmatch(parts.path)
        if db_path is None:
            raise bad(f"database {parts.path[1:]!r} is not a number")
        db = int(db_path[1] or 0)
        kind = "tls" if scheme == "rediss" else "tcp"
        endpoint = f"{kind}:host={quoteStringArgument(host)}:port={port}"
        shown = f"[{host}]" if ":" in host else host
        display = f"{scheme}://{user}{shown}:{port}/{db}"
        tls = None
        if scheme == "rediss":
            tls = _tls_options(host, port, parts.query, bad)
            tls.connection_creator()  # reads and checks the files now
        elif parts.query:
            raise bad("a query string: only rediss:// takes one (ssl_ca_certs=... and so on)")
        return cls(endpoint, db, username, password, display, tls)

    def endpoint_for(self, reactor: Any) -> IStreamClientEndpoint:
        """The endpoint to connect to; TLS checks the server's name and certificate against
        the system CAs or ``ssl_ca_certs``, and reads the certificate files again."""
        if self.tls_options is None:
            return clientFromString(reactor, self.endpoint)
        tls = self.tls_options
        return wrapClientTLS(
            tls.connection_creator(), HostnameEndpoint(reactor, tls.host, tls.port)
        )


def _tls_options(host: str, port: int, query: str, bad: Callable[[str], ValueError]) -> RedisTLS:
    """A ``rediss://`` URL's query parameters (each known, none twice), values unquoted."""
    found: dict[str, str] = {}
    for field in query.split("&") if query else ():
        name, equals, value = field.partition("=")
        name = unquote(name)
        if name not in _TLS_QUERY:
            raise bad(f"query parameter {name[:40]!r}: rediss:// takes {', '.join(_TLS_QUERY)}")
        if not equals or not value or name in found:
            raise bad(f"query parameter {name} " + ("twice" if name in found else "empty"))
        found[name] = unquote(value)
    if ("ssl_certfile" in found) != ("ssl_keyfile" in found):
        raise bad("ssl_certfile and ssl_keyfile go together")
    check = _BOOLEANS.get(found.get("ssl_check_hostname", "true").lower())
    if check is None:
        raise bad("ssl_check_hostname is true or false")
    ca_certs, certfile, keyfile = (
        os.path.abspath(found[name]) if name in found else None for name in _TLS_QUERY[:3]
    )
    return RedisTLS(host, port, ca_certs, certfile, keyfile, check)
