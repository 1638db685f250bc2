"""Sans-I/O SCRAM (RFC 5802, RFC 7677) for MQTT 5 enhanced authentication.

With Authentication Method ``SCRAM-SHA-512`` the client-first-message travels in
CONNECT's Authentication Data, server-first in AUTH (0x18 Continue), client-final
in AUTH and server-final in CONNACK.  Only the non-PLUS variants exist here: no
channel binding and no authorization identity.

Neither usernames nor passwords are SASLprep'ed: Mosquitto hashes the raw
password bytes for its ``$7$`` entries, so preparing them here would make
non-ASCII passwords fail to match.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import string
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["MECHANISMS", "ScramClient", "ScramError", "ScramSecret", "ScramServer"]

#: Authentication Method name -> hashlib name.
MECHANISMS = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}

_PROCESS_SECRET = secrets.token_bytes(32)  # default key for fake salts, stable per process
_PRINTABLE = frozenset(chr(c) for c in range(0x21, 0x7F)) - {","}


class ScramError(Exception):
    """A SCRAM exchange failed; ``reason`` is an RFC 5802 server-error-value."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class ScramSecret(NamedTuple):
    """What the server stores: ``salted_password`` = PBKDF2-HMAC(password, salt, iterations)."""

    salt: bytes
    iterations: int
    salted_password: bytes


def _hmac(hash_name: str, key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hash_name).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: str) -> bytes:
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ScramError("invalid-encoding", "bad base64") from None


def _decode(data: bytes) -> str:
    """Bytes -> text; SCRAM messages are UTF-8 without NUL."""
    try:
        text = bytes(data).decode("utf-8")
    except (UnicodeDecodeError, TypeError):
        raise ScramError("invalid-encoding", "not UTF-8") from None
    if "\x00" in text:
        raise ScramError("invalid-encoding", "NUL in message")
    return text


def _attributes(text: str) -> list[tuple[str, str]]:
    """Split ``a=v,b=w`` into pairs; each name is one ASCII letter."""
    pairs = []
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=" or part[0] not in string.ascii_letters:
            raise ScramError("invalid-encoding", f"bad attribute {part[:16]!r}")
        pairs.append((part[0], part[2:]))
    return pairs


def _check_nonce(nonce: str) -> str:
    if not nonce or not set(nonce) <= _PRINTABLE:
        raise ScramError("invalid-encoding", "bad nonce")
    return nonce


def _escape_username(name: str) -> str:
    return name.replace("=", "=3D").replace(",", "=2C")


def _unescape_username(value: str) -> str:
    if not value:
        raise ScramError("invalid-username-encoding", "empty username")
    out, i = [], 0
    while i < len(value):
        if value[i] != "=":
            out.append(value[i])
            i += 1
        elif value[i + 1 : i + 3] in ("2C", "3D"):
            out.append("," if value[i + 1 : i + 3] == "2C" else "=")
            i += 3
        else:
            raise ScramError("invalid-username-encoding", "bad escape in username")
    return "".join(out)


def _parse_iterations(value: str) -> int:
    if not (0 < len(value) <= 10 and value.isascii() and value.isdigit()) or value[0] == "0":
        raise ScramError("invalid-encoding", "bad iteration count")
    return int(value)


class _Keys(NamedTuple):
    stored_key: bytes
    server_key: bytes


def _keys(hash_name: str, salted_password: bytes) -> _Keys:
    client_key = _hmac(hash_name, salted_password, b"Client Key")
    return _Keys(
        hashlib.new(hash_name, client_key).digest(),
        _hmac(hash_name, salted_password, b"Server Key"),
    )


class ScramServer:
    """Server side of one SCRAM exchange: ``client_first`` then ``client_final``.

    ``lookup(username)`` returns the user's :class:`ScramSecret` or ``None``.  An
    unknown user gets a normal-looking server-first (salt derived from
    ``fake_secret`` and the username, ``fake_iterations`` rounds) and fails at
    ``client_final`` exactly like a wrong password.  Set ``fake_iterations`` to
    what the password file uses; share ``fake_secret`` between processes that
    serve the same users.
    """

    def __init__(
        self,
        hash_name: str = "sha512",
        *,
        lookup: Callable[[str], ScramSecret | None],
        nonce: Callable[[], str] | None = None,
        fake_secret: bytes | None = None,
        fake_iterations: int = 101,
        fake_salt_len: int = 12,
    ) -> None:
        self._hash = hashlib.new(hash_name).name
        self._lookup = lookup
        self._nonce = nonce or (lambda: secrets.token_urlsafe(24))
        self._fake_secret = _PROCESS_SECRET if fake_secret is None else fake_secret
        self._fake_iterations = fake_iterations
        self._fake_salt_len = fake_salt_len
        self._state = "first"
        self._username: str | None = None
        self._gs2_b64 = ""
        self._nonce_value = ""
        self._auth_prefix = b""
        self._secret: ScramSecret | None = None
        self._known = False

    @property
    def username(self) -> str | None:
        """The authentication identity, once client-first has been parsed."""
        return self._username

    @property
    def done(self) -> bool:
        """True once the client's proof was verified."""
        return self._state == "done"

    def _step(self, expected: str) -> None:
        if self._state != expected:
            raise ScramError("other-error", f"unexpected message in state {self._state}")
        self._state = "failed"  # until the step completes

    def _fake(self, username: str) -> ScramSecret:
        user = username.encode("utf-8")
        salt = _hmac(self._hash, self._fake_secret, b"scram-fake-salt\x00" + user)
        key = _hmac(self._hash, self._fake_secret, b"scram-fake-key\x00" + user)
        return ScramSecret(salt[: self._fake_salt_len], self._fake_iterations, key)

    def client_first(self, data: bytes) -> bytes:
        """Parse client-first-message, return server-first-message."""
        self._step("first")
        text = _decode(data)
        parts = text.split(",", 2)
        if len(parts) != 3:
            raise ScramError("invalid-encoding", "missing gs2 header")
        cbind, authzid, bare = parts
        if cbind.startswith("p="):
            raise ScramError("channel-binding-not-supported")
        if cbind not in ("n", "y"):
            raise ScramError("invalid-encoding", "bad gs2 channel-binding flag")
        if authzid:
            raise ScramError("other-error", "authzid not supported")
        attrs = _attributes(bare)
        if attrs[0][0] == "m":
            raise ScramError("extensions-not-supported")
        if len(attrs) < 2 or attrs[0][0] != "n" or attrs[1][0] != "r":
            raise ScramError("invalid-encoding", "expected n=...,r=...")
        username = _unescape_username(attrs[0][1])
        client_nonce = _check_nonce(attrs[1][1])
        secret = self._lookup(username)
        self._known = secret is not None
        if secret is None:
            secret = self._fake(username)
        if secret.iterations < 1:
            raise ValueError("ScramSecret.iterations must be positive")
        server_nonce = self._nonce()
        if not server_nonce or not set(server_nonce) <= _PRINTABLE:
            raise ValueError("server nonce must be printable ASCII without ','")
        self._username, self._secret = username, secret
        self._gs2_b64 = _b64(f"{cbind},,".encode("ascii"))
        self._nonce_value = client_nonce + server_nonce
        server_first = f"r={self._nonce_value},s={_b64(secret.salt)},i={secret.iterations}"
        self._auth_prefix = f"{bare},{server_first},".encode()
        self._state = "final"
        return server_first.encode("ascii")

    def client_final(self, data: bytes) -> bytes:
        """Verify client-final-message, return server-final-message (``v=...``)."""
        self._step("final")
        assert self._secret is not None
        text = _decode(data)
        without_proof, sep, proof_b64 = text.rpartition(",p=")
        if not sep:
            raise ScramError("invalid-encoding", "missing proof")
        attrs = _attributes(without_proof)
        if len(attrs) < 2 or attrs[0][0] != "c" or attrs[1][0] != "r":
            raise ScramError("invalid-encoding", "expected c=...,r=...")
        if any(name == "p" for name, _ in attrs) or "," in proof_b64:
            raise ScramError("invalid-encoding", "proof must be the last attribute")
        proof = _unb64(proof_b64)
        if not hmac.compare_digest(attrs[0][1].encode(), self._gs2_b64.encode("ascii")):
            raise ScramError("channel-bindings-dont-match")
        if not hmac.compare_digest(attrs[1][1].encode(), self._nonce_value.encode("ascii")):
            raise ScramError("other-error", "nonce mismatch")
        auth_message = self._auth_prefix + without_proof.encode()
        keys = _keys(self._hash, self._secret.salted_password)
        signature = _hmac(self._hash, keys.stored_key, auth_message)
        client_key = _xor(proof, signature)
        ok = len(proof) == len(signature) and hmac.compare_digest(
            hashlib.new(self._hash, client_key).digest(), keys.stored_key
        )
        if not (ok and self._known):
            raise ScramError("invalid-proof")
        self._state = "done"
        return f"v={_b64(_hmac(self._hash, keys.server_key, auth_message))}".encode("ascii")


class ScramClient:
    """Client side of one SCRAM exchange: ``first``, ``final``, ``verify``."""

    def __init__(
        self,
        hash_name: str,
        username: str,
        password: bytes,
        nonce: Callable[[], str] | None = None,
    ) -> None:
        self._hash = hashlib.new(hash_name).name
        self._username = username
        self._password = password  # raw bytes, no SASLprep (see module docstring)
        self._client_nonce = _check_nonce((nonce or (lambda: secrets.token_urlsafe(24)))())
        self._bare = f"n={_escape_username(username)},r={self._client_nonce}"
        self._server_signature: bytes | None = None

    def first(self) -> bytes:
        """The client-first-message (gs2 header ``n,,``)."""
        return f"n,,{self._bare}".encode()

    def final(self, server_first: bytes) -> bytes:
        """Answer server-first-message with client-final-message."""
        text = _decode(server_first)
        attrs = _attributes(text)
        if attrs[0][0] == "m":
            raise ScramError("extensions-not-supported")
        if len(attrs) < 3 or [a[0] for a in attrs[:3]] != ["r", "s", "i"]:
            raise ScramError("invalid-encoding", "expected r=...,s=...,i=...")
        nonce = _check_nonce(attrs[0][1])
        if not nonce.startswith(self._client_nonce) or nonce == self._client_nonce:
            raise ScramError("other-error", "server nonce does not extend ours")
        salt = _unb64(attrs[1][1])
        iterations = _parse_iterations(attrs[2][1])
        salted = hashlib.pbkdf2_hmac(self._hash, self._password, salt, iterations)
        keys = _keys(self._hash, salted)
        without_proof = f"c=biws,r={nonce}"
        auth_message = f"{self._bare},{text},{without_proof}".encode()
        client_key = _hmac(self._hash, salted, b"Client Key")
        proof = _xor(client_key, _hmac(self._hash, keys.stored_key, auth_message))
        self._server_signature = _hmac(self._hash, keys.server_key, auth_message)
        return f"{without_proof},p={_b64(proof)}".encode("ascii")

    def verify(self, server_final: bytes) -> None:
        """Check server-final-message; raise :class:`ScramError` unless it is valid."""
        if self._server_signature is None:
            raise ScramError("other-error", "verify() before final()")
        attrs = _attributes(_decode(server_final))
        if attrs[0][0] == "e":
            raise ScramError(attrs[0][1] or "other-error", "server reported an error")
        if attrs[0][0] != "v":
            raise ScramError("invalid-encoding", "expected v=...")
        if not hmac.compare_digest(_unb64(attrs[0][1]), self._server_signature):
            raise ScramError("invalid-server-signature")
