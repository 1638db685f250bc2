"""TLS listeners from Twisted's ``ssl:`` endpoint strings, plus client certificates.

Twisted's own ``ssl:`` server endpoint cannot ask for or verify client
certificates, so for ``ssl:`` descriptions we read the same arguments
(``port``, ``privateKey``, ``certKey``, ``extraCertChain``, ``dhParameters``,
``interface``, ``backlog``) and build the ``CertificateOptions`` ourselves:
TLS 1.2 or newer, Twisted's default ciphers, and with ``cafile`` the client
certificate checks of Mosquitto's ``cafile`` / ``require_certificate``.
Every other endpoint type goes to ``serverFromString`` unchanged.
"""

from __future__ import annotations

import re

import attrs
from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.python.filepath import FilePath

PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)
SSL_ARGUMENTS = {
    "port",
    "privateKey",
    "certKey",
    "extraCertChain",
    "dhParameters",
    "interface",
    "backlog",
    "sslmethod",
}


class TLSConfigError(ValueError):
    """A TLS listener cannot be built (missing, unreadable or mismatched files)."""


@attrs.define(frozen=True)
class TLSSettings:
    """Client-certificate settings applied to every TLS listener (names from mosquitto.conf)."""

    cafile: str | None = None
    require_certificate: bool = False
    use_identity_as_username: bool = False


def split_description(description: str) -> tuple[str, list[str], dict[str, str]]:
    """Split an endpoint string the way Twisted does: ``:`` separates, ``\\`` escapes,
    ``key=value`` pairs are keywords. Returns (type, positional args, keyword args)."""
    fields: list[str] = []
    current: list[str] = []
    keys: list[str | None] = []
    key: str | None = None
    chars = iter(description)
    for char in chars:
        if char == "\\":
            current.append(next(chars, ""))
        elif char == ":":
            fields.append("".join(current))
            keys.append(key)
            current, key = [], None
        elif char == "=" and key is None:
            key, current = "".join(current), []
        else:
            current.append(char)
    fields.append("".join(current))
    keys.append(key)
    kind = fields[0] if keys[0] is None else ""
    args = [value for name, value in zip(keys[1:], fields[1:]) if name is None]
    kwargs = {name: value for name, value in zip(keys[1:], fields[1:]) if name is not None}
    return kind, args, kwargs


def _read(path: str, what: str) -> bytes:
    try:
        return FilePath(path).getContent()
    except OSError as error:
        raise TLSConfigError(f"cannot read {what} {path!r}: {error.strerror or error}") from None


def _certificates(path: str, what: str) -> list:
    found = PEM_CERTIFICATE.findall(_read(path, what))
    if not found:
        raise TLSConfigError(f"{what} {path!r} holds no PEM certificate")
    try:
        return [ssl.Certificate.loadPEM(pem) for pem in found]
    except Exception as error:
        raise TLSConfigError(f"{what} {path!r}: invalid certificate ({error})") from None


def certificate_options(kwargs: dict[str, str], settings: TLSSettings) -> ssl.CertificateOptions:
    """``CertificateOptions`` for the keyword arguments of an ``ssl:`` description."""
    if settings.require_certificate and not settings.cafile:
        raise TLSConfigError("--require-certificate needs --cafile (the CAs to check against)")
    key_path = kwargs.get("privateKey", "server.pem")
    cert_path = kwargs.get("certKey", key_path)
    try:
        private = ssl.PrivateCertificate.loadPEM(
            _read(cert_path, "certificate") + b"\n" + _read(key_path, "private key")
        )
    except TLSConfigError:
        raise
    except Exception as error:
        raise TLSConfigError(
            f"cannot load certificate {cert_path!r} with key {key_path!r}: {error}"
        ) from None
    chain = None
    if "extraCertChain" in kwargs:
        chain = [c.original for c in _certificates(kwargs["extraCertChain"], "certificate chain")]
    dh = None
    if "dhParameters" in kwargs:
        _read(kwargs["dhParameters"], "DH parameters")
        dh = ssl.DiffieHellmanParameters.fromFile(FilePath(kwargs["dhParameters"]))
    cas = None
    if settings.cafile:
        cas = [c.original for c in _certificates(settings.cafile, "CA file")]
    options = ssl.CertificateOptions(
        privateKey=private.privateKey.original,
        certificate=private.original,
        extraCertChain=chain,
        dhParameters=dh,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        verify=cas is not None,
        caCerts=cas,
        requireCertificate=settings.require_certificate,
    )
    try:
        options.getContext()  # loads key and certificate now and checks that they match
    except SSL.Error as error:
        raise TLSConfigError(
            f"certificate {cert_path!r} and private key {key_path!r} do not match or cannot be "
            f"used: {error}"
        ) from None
    return options


def server_endpoint(reactor, description: str, settings: TLSSettings) -> IStreamServerEndpoint:
    """An endpoint for ``description``; ``ssl:`` ones get our TLS options (see module doc)."""
    kind, args, kwargs = split_description(description)
    if kind != "ssl":
        return serverFromString(reactor, description)
    unknown = set(kwargs) - SSL_ARGUMENTS
    if unknown:
        raise TLSConfigError(f"unknown ssl: argument(s) {', '.join(sorted(unknown))}")
    port_text = args[0] if args else kwargs.get("port")
    if port_text is None or not port_text.isdigit():
        raise TLSConfigError(f"ssl: endpoint {description!r} needs a port number")
    return SSL4ServerEndpoint(
        reactor,
        int(port_text),
        certificate_options(kwargs, settings),
        backlog=int(kwargs.get("backlog", 50)),
        interface=kwargs.get("interface", ""),
    )


def is_tls(description: str) -> bool:
    """True for descriptions this module serves over TLS."""
    return split_description(description)[0] == "ssl"


def peer_common_name(transport) -> str | None:
    """The subject CN of the client certificate on a TLS transport, if one was presented."""
    get_certificate = getattr(transport, "getPeerCertificate", None)
    if get_certificate is None:
        return None
    certificate = get_certificate()
    if certificate is None:
        return None
    common_name = certificate.get_subject().CN
    return common_name or None
