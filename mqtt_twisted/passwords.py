"""Mosquitto-compatible password files, checked through twisted.cred.

A line is ``username:HASH`` where HASH is one of Mosquitto's formats:

- ``$7$ITERATIONS$SALT$KEY``: PBKDF2-HMAC-SHA512 with a 64-byte key (Mosquitto 2.0's default);
- ``$6$SALT$KEY``: SHA512(password + salt) (Mosquitto 1.6 and earlier);
- ``$argon2id$v=19$m=...,t=...,p=...$SALT$KEY``: Argon2id in PHC form (Mosquitto 2.1),
  checked with argon2-cffi when it is installed.

SALT and KEY are base64; ``$6$``/``$7$`` need 12- or 64-byte salts (Mosquitto 2.0 only reads 12)
and 64-byte keys.  Passwords are bytes, hashed as sent (no SASLprep); Mosquitto stops at a NUL
byte (``strlen()``), we hash every byte and our tool refuses passwords containing NUL.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from collections import Counter, OrderedDict
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from mqtt_twisted.scram import ScramSecret  # (salt, iterations, salted_password)

KEY_LENGTH = 64  # bytes in a $6$ / $7$ key: one SHA-512 output
SALT_LENGTHS = (12, 64)  # Mosquitto 2.1 reads both (writes 64); 2.0 reads and writes only 12
MAX_ITERATIONS = 2**31 - 1  # Mosquitto keeps the iteration count in a C int
MAX_FIELD = 65535  # Mosquitto's limit in bytes on a username and on a password
DEFAULT_ITERATIONS = 1000  # what Mosquitto 2.1 writes
ARGON2_MISSING = "install argon2-cffi to check $argon2id$ entries"

_BLANKS = " \t\n\r\v\f"  # what Mosquitto's trimblanks() (C isspace) strips
_EXPECTED = "expected $7$ITERATIONS$SALT$HASH, $6$SALT$HASH or $argon2id$..."


class PasswordFileError(ValueError):
    """A password file (or one line of it) cannot be used; the message never shows a hash."""

    def __init__(self, message: str, lineno: int | None = None) -> None:
        super().__init__(message if lineno is None else f"line {lineno}: {message}")
        self.lineno = lineno


class UnsupportedHash(Exception):
    """An entry's scheme cannot be checked here (``$argon2id$`` without argon2-cffi)."""


@attrs.frozen(slots=True)
class PasswordEntry:
    """One parsed line. ``iterations`` is 0 for ``$6$`` and Argon2's ``t`` for ``$argon2id$``."""

    username: str
    scheme: str  # "7", "6" or "argon2id"
    iterations: int
    salt: bytes = attrs.field(repr=False)
    key: bytes = attrs.field(repr=False)
    raw: str = attrs.field(repr=False)


# -- parsing -------------------------------------------------------------------------------


def _b64(text: str, what: str, lineno: int | None, padded: bool = True) -> bytes:
    if not padded:  # PHC strings drop the '=' padding
        text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise PasswordFileError(f"{what} is not valid base64", lineno) from None


def _salt_and_key(salt_b64: str, key_b64: str, lineno: int | None) -> tuple[bytes, bytes]:
    salt = _b64(salt_b64, "salt", lineno)
    if len(salt) not in SALT_LENGTHS:
        raise PasswordFileError(f"salt must be 12 or 64 bytes, not {len(salt)}", lineno)
    key = _b64(key_b64, "hash", lineno)
    if len(key) != KEY_LENGTH:
        raise PasswordFileError(f"hash must be {KEY_LENGTH} bytes, not {len(key)}", lineno)
    return salt, key


def _parse_hash(username: str, hashed: str, lineno: int | None) -> PasswordEntry:
    parts = hashed.split("$")
    if hashed.startswith("$7$"):
        if len(parts) != 5:
            raise PasswordFileError("a $7$ hash has the form $7$ITERATIONS$SALT$HASH", lineno)
        count = parts[2]
        if not (count.isascii() and count.isdigit()) or not 1 <= int(count) <= MAX_ITERATIONS:
            raise PasswordFileError("$7$ iteration count must be a positive integer", lineno)
        salt, key = _salt_and_key(parts[3], parts[4], lineno)
        return PasswordEntry(username, "7", int(count), salt, key, hashed)
    if hashed.startswith("$6$"):
        if len(parts) != 4:
            raise PasswordFileError("a $6$ hash has the form $6$SALT$HASH", lineno)
        salt, key = _salt_and_key(parts[2], parts[3], lineno)
        return PasswordEntry(username, "6", 0, salt, key, hashed)
    if hashed.startswith("$argon2id$"):
        return _parse_argon2id(username, hashed, parts, lineno)
    if hashed.startswith("$"):
        raise PasswordFileError(f"unknown hash scheme ({_EXPECTED})", lineno)
    raise PasswordFileError(
        f"the password is not hashed ({_EXPECTED}); hash it with mqtt-twisted-passwd", lineno
    )


def _parse_argon2id(
    username: str, hashed: str, parts: list[str], lineno: int | None
) -> PasswordEntry:
    form = "an $argon2id$ hash has the form $argon2id$v=19$m=M,t=T,p=P$SALT$HASH"
    if len(parts) == 6 and parts[2].startswith("v="):
        version = parts[2][2:]
        if version not in ("16", "19"):
            raise PasswordFileError("unknown $argon2id$ version", lineno)
        del parts[2]
    if len(parts) != 5:
        raise PasswordFileError(form, lineno)
    params = parts[2].split(",")
    names = [p.partition("=")[0] for p in params]
    values = [p.partition("=")[2] for p in params]
    if names != ["m", "t", "p"] or not all(v.isascii() and v.isdigit() for v in values):
        raise PasswordFileError(form, lineno)
    memory, time_cost, lanes = (int(v) for v in values)
    if not (1 <= time_cost <= MAX_ITERATIONS and 1 <= lanes < 2**24 and memory >= 8 * lanes):
        raise PasswordFileError("$argon2id$ parameters out of range", lineno)
    salt = _b64(parts[3], "salt", lineno, padded=False)
    key = _b64(parts[4], "hash", lineno, padded=False)
    if len(salt) < 8 or len(key) < 4:
        raise PasswordFileError("$argon2id$ salt or hash too short", lineno)
    return PasswordEntry(username, "argon2id", time_cost, salt, key, hashed)


def parse_line(line: str, lineno: int | None = None) -> PasswordEntry | None:
    """Parse one line; None for a blank line or a comment (``#`` first). Raises PasswordFileError."""
    stripped = line.strip(_BLANKS)
    if not stripped or stripped.startswith("#"):
        return None
    username, colon, hashed = stripped.partition(":")
    if not colon:
        raise PasswordFileError("expected username:hash", lineno)
    username, hashed = username.strip(_BLANKS), hashed.strip(_BLANKS)
    if not username:
        raise PasswordFileError("empty username", lineno)
    if len(username.encode("utf-8", "surrogatepass")) > MAX_FIELD:
        raise PasswordFileError("username longer than 65535 bytes", lineno)
    if not hashed:
        raise PasswordFileError(f"no password hash for user {username!r}", lineno)
    if ":" in hashed:
        raise PasswordFileError(f"more than one ':' in the line of user {username!r}", lineno)
    return _parse_hash(username, hashed, lineno)


def parse_password_file(text: str) -> dict[str, PasswordEntry]:
    """Parse a whole file. A user listed twice is an error, as in Mosquitto 2.1's plugin."""
    entries: dict[str, PasswordEntry] = {}
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(text.split("\n"), start=1):
        entry = parse_line(line, lineno)
        if entry is None:
            continue
        if entry.username in entries:
            raise PasswordFileError(
                f"user {entry.username!r} appears again (first on line {first_line[entry.username]})",
                lineno,
            )
        entries[entry.username] = entry
        first_line[entry.username] = lineno
    return entries


# -- hashing -------------------------------------------------------------------------------


def _pbkdf2(password: bytes, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha512", password, salt, iterations, KEY_LENGTH)


def _verify_argon2id(entry: PasswordEntry, password: bytes) -> bool:
    try:
        import argon2
    except ImportError:
        raise UnsupportedHash(
            f"cannot check the $argon2id$ entry of user {entry.username!r}: {ARGON2_MISSING}"
        ) from None
    try:
        return bool(argon2.PasswordHasher().verify(entry.raw, password))
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


def verify(entry: PasswordEntry, password: bytes) -> bool:
    """True when ``password`` matches ``entry``; slow on purpose: call it off the reactor thread."""
    if entry.scheme == "7":
        computed = _pbkdf2(password, entry.salt, entry.iterations)
    elif entry.scheme == "6":
        computed = hashlib.sha512(password + entry.salt).digest()
    elif entry.scheme == "argon2id":
        return _verify_argon2id(entry, password)
    else:
        raise UnsupportedHash(f"unknown scheme {entry.scheme!r}")
    return hmac.compare_digest(computed, entry.key)


def hash_password(
    password: bytes, iterations: int = DEFAULT_ITERATIONS, salt_length: int = 64
) -> str:
    """``$7$`` (PBKDF2-HMAC-SHA512) with a random salt; Mosquitto 2.0 needs ``salt_length=12``."""
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"iterations must be between 1 and {MAX_ITERATIONS}")
    if salt_length not in SALT_LENGTHS:
        raise ValueError("salt_length must be 12 or 64: Mosquitto rejects other sizes")
    salt = secrets.token_bytes(salt_length)
    key = _pbkdf2(password, salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"


def check_username(username: str) -> None:
    """Raise ValueError unless ``username`` can be written to a password file and read back."""
    if not username:
        raise ValueError("username must not be empty")
    if ":" in username:
        raise ValueError("username must not contain the ':' character")
    if any(ord(c) < 32 or ord(c) == 127 for c in username):
        raise ValueError("username must not contain control characters")
    if username != username.strip(_BLANKS):
        raise ValueError("username must not start or end with white space (Mosquitto strips it)")
    if username.startswith("#"):
        raise ValueError("username must not start with '#' (the line would be a comment)")
    try:
        size = len(username.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError("username must be valid UTF-8") from None
    if size > MAX_FIELD:
        raise ValueError("username must be at most 65535 bytes long")


def format_line(username: str, hashed: str) -> str:
    """``username:hashed`` (no newline), checked so that it parses back to the same entry."""
    check_username(username)
    line = f"{username}:{hashed}"
    parse_line(line)
    return line


def scram_secret(entry: PasswordEntry) -> ScramSecret | None:
    """SCRAM-SHA-512's SaltedPassword of a ``$7$`` entry (its key); None for other schemes."""
    if entry.scheme != "7":
        return None
    return ScramSecret(entry.salt, entry.iterations, entry.key)


# -- twisted.cred --------------------------------------------------------------------------


def _dummy_entry(entries: Mapping[str, PasswordEntry]) -> PasswordEntry:
    """An entry nobody can match, as slow to check as the file's most common $6$/$7$ kind."""
    kinds = Counter((e.scheme, e.iterations) for e in entries.values() if e.scheme in ("6", "7"))
    scheme, iterations = kinds.most_common(1)[0][0] if kinds else ("7", DEFAULT_ITERATIONS)
    return PasswordEntry("", scheme, iterations, os.urandom(12), os.urandom(KEY_LENGTH), "")


@implementer(ICredentialsChecker)
class PasswordFileChecker:
    """Checks IUsernamePassword against a Mosquitto password file, hashing in the thread pool.

    Successful checks are remembered (LRU, ``cache_size`` entries) by username, an HMAC of the
    password under a per-process key, and the entry's hash string, so a changed entry is never
    answered from the cache.  ``reload()`` empties the cache.
    """

    credentialInterfaces = (IUsernamePassword,)
    log = Logger()

    def __init__(
        self,
        path: str | os.PathLike[str],
        reactor: IReactorThreads | None = None,
        cache_size: int = 1024,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor  # type: ignore[assignment]
        assert reactor is not None
        self.path = os.fspath(path)
        self._reactor = reactor
        self._cache_size = cache_size
        self._cache: OrderedDict[tuple[str, bytes, str], None] = OrderedDict()
        self._cache_key = secrets.token_bytes(32)
        self._entries: dict[str, PasswordEntry] = {}
        self._dummy = _dummy_entry({})
        self.reload()

    @property
    def entries(self) -> Mapping[str, PasswordEntry]:
        """The entries loaded last, read-only."""
        return MappingProxyType(self._entries)

    def reload(self) -> None:
        """Read the file again; on any error keep the old entries and raise PasswordFileError."""
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise PasswordFileError(f"{self.path}: cannot read: {e.strerror}") from e
        try:
            entries = parse_password_file(data.decode("utf-8"))
        except UnicodeDecodeError as e:
            lineno = data.count(b"\n", 0, e.start) + 1
            raise PasswordFileError(f"{self.path}: line {lineno}: not valid UTF-8") from None
        except PasswordFileError as e:
            error = PasswordFileError(f"{self.path}: {e}")
            error.lineno = e.lineno
            raise error from None
        self._entries = entries
        self._dummy = _dummy_entry(entries)
        self._cache.clear()
        argon2 = sum(1 for e in entries.values() if e.scheme == "argon2id")
        if argon2 and not _argon2_available():
            self.log.warn(
                "{path}: {count} $argon2id$ entries cannot be checked: {hint}",
                path=self.path,
                count=argon2,
                hint=ARGON2_MISSING,
            )

    def _key(self, username: str, password: bytes, entry: PasswordEntry) -> tuple[str, bytes, str]:
        digest = hmac.new(self._cache_key, password, hashlib.sha256).digest()
        return (username, digest, entry.raw)

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[Any]:
        """Deferred firing with the username (str), or failing with UnauthorizedLogin."""
        username, password = credentials.username, credentials.password
        if password is None:  # CONNECT with a user name only: refused, whoever it names
            return defer.fail(UnauthorizedLogin())
        try:
            if isinstance(username, bytes):
                username = username.decode("utf-8")
            if isinstance(password, str):
                password = password.encode("utf-8")
        except UnicodeError:
            return defer.fail(UnauthorizedLogin())
        entry = self._entries.get(username)
        if entry is None:
            # Take as long as a real check, so that unknown names cannot be told by timing.
            return self._in_thread(self._dummy, password).addCallback(_refuse)
        key = self._key(username, password, entry)
        if key in self._cache:
            self._cache.move_to_end(key)
            return defer.succeed(username)
        return self._in_thread(entry, password).addCallback(
            self._checked, credentials, username, entry, key
        )

    def _in_thread(self, entry: PasswordEntry, password: bytes) -> defer.Deferred[bool]:
        pool = self._reactor.getThreadPool()
        d = deferToThreadPool(self._reactor, pool, verify, entry, password)
        return d.addErrback(self._unsupported)

    def _unsupported(self, failure: Any) -> bool:
        failure.trap(UnsupportedHash)
        self.log.error("{reason}", reason=str(failure.value))
        return False

    def _checked(
        self, ok: bool, credentials: Any, username: str, entry: PasswordEntry, key: Any
    ) -> Any:
        current = self._entries.get(username)
        if current is None or current.raw != entry.raw:  # reloaded meanwhile: check again
            return self.requestAvatarId(credentials)
        if not ok:
            raise UnauthorizedLogin()
        self._cache[key] = None
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return username


def _refuse(_: object) -> None:
    raise UnauthorizedLogin()


def _argon2_available() -> bool:
    try:
        import argon2  # noqa: F401
    except ImportError:
        return False
    return True
