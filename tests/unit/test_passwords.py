"""Mosquitto password files: parsing, hashing, and the twisted.cred checker (real reactor)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import sys
import threading
import types

import pytest
import pytest_twisted
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.logger import formatEvent, globalLogPublisher

from mqtt_twisted import passwords
from mqtt_twisted.passwords import (
    PasswordEntry,
    PasswordFileChecker,
    PasswordFileError,
    ScramSecret,
    UnsupportedHash,
    format_line,
    hash_password,
    parse_line,
    parse_password_file,
    scram_secret,
    verify,
)

# Written by Debian's mosquitto_passwd 2.0.11 (`-b FILE alice other`, `-H sha512 -b FILE alice secret`).
DEBIAN_7 = (
    "alice:$7$101$jOWuJ8PkWuR8xXPY$LjMUQeMB81I128VuYsXTAP6rMTOYyAHT7igepaGvDz/BmVQxtJRAQic4kUKXmXiF"
    "3r5BfaiDh5SBmn74mPHBKQ=="
)
DEBIAN_6 = (
    "carol:$6$CfFPUDKUb+SWeS+E$M0BvtCu1G62CSxYoVyV+3dh9n/o9JvlBh61eea9k+AdeN9QOChWfP3qI/G/5ZH8YS2DY"
    "uWa+0hF6JtLXG70QoQ=="
)
# argon2-cffi 25.1 with Mosquitto 2.1's parameters (t=1, m=47104, p=1, 64-byte salt and hash).
ARGON2 = (
    "dave:$argon2id$v=19$m=47104,t=1,p=1$UCkxPMk2FpQJevR3arsuMhegQOFfEZDo335WIFQbt+AcmQpU+tPjX1v8fT5k"
    "OdMpt167dl+aPZJl9Loqd6NKVw$d7ZclX48tEzRGlst2H6W4UCGhITzyqLVBr54PGXRevPE7RlUOl3A+EbSTcZFRCQgPc1"
    "+XS3TZjEMmsi7m44dhQ"
)

B64 = base64.b64encode
SALT12, SALT16, KEY64, KEY32 = B64(b"s" * 12), B64(b"s" * 16), B64(b"k" * 64), B64(b"k" * 32)


def seven(password: bytes, salt: bytes, iterations: int) -> str:
    key = hashlib.pbkdf2_hmac("sha512", password, salt, iterations)
    return f"$7${iterations}${B64(salt).decode()}${B64(key).decode()}"


def six(password: bytes, salt: bytes) -> str:
    """Mosquitto 1.6's documented format: $6$BASE64(salt)$BASE64(SHA512(password + salt))."""
    return f"$6${B64(salt).decode()}${B64(hashlib.sha512(password + salt).digest()).decode()}"


# -- parsing -------------------------------------------------------------------------------


def test_parse_debian_lines_comments_and_blank_lines():
    text = f"# users\n\n{DEBIAN_7}\r\n   \n  # indented comment\n {DEBIAN_6} \n{ARGON2}\n"
    entries = parse_password_file(text)
    assert list(entries) == ["alice", "carol", "dave"]
    alice, carol, dave = entries.values()
    assert (alice.scheme, alice.iterations, len(alice.salt), len(alice.key)) == ("7", 101, 12, 64)
    assert alice.raw == DEBIAN_7.split(":", 1)[1]
    assert (carol.scheme, carol.iterations, len(carol.salt), len(carol.key)) == ("6", 0, 12, 64)
    assert (dave.scheme, dave.iterations, len(dave.salt), len(dave.key)) == ("argon2id", 1, 64, 64)
    assert "LjMU" not in repr(alice)  # hashes stay out of logs


GOOD = DEBIAN_7.split(":", 1)[1]
MALFORMED = [
    ("no-colon-here", "expected username:hash"),
    (f":{GOOD}", "empty username"),
    ("bob:", "no password hash for user 'bob'"),
    ("bob:hunter2", "not hashed"),
    ("bob:$5$hunter2", "unknown hash scheme"),
    (f"bob:{GOOD}:extra", "more than one ':'"),
    ("bob:$7$101$" + SALT12.decode(), "$7$ hash has the form"),
    (f"bob:$7$0${SALT12.decode()}${KEY64.decode()}", "iteration count"),
    (f"bob:$7$1e3${SALT12.decode()}${KEY64.decode()}", "iteration count"),
    (f"bob:$7$101$!!!!${KEY64.decode()}", "salt is not valid base64"),
    (f"bob:$7$101${SALT16.decode()}${KEY64.decode()}", "salt must be 12 or 64 bytes, not 16"),
    (f"bob:$7$101${SALT12.decode()}${KEY32.decode()}", "hash must be 64 bytes, not 32"),
    (f"bob:$7$101${SALT12.decode()}$*{KEY64.decode()}", "hash is not valid base64"),
    (f"bob:$6${SALT12.decode()}", "$6$ hash has the form"),
    (f"bob:$6${SALT12.decode()}${KEY32.decode()}", "hash must be 64 bytes"),
    ("bob:$argon2id$v=19$m=47104,t=1$c2FsdHNhbHQ$aGFzaGhhc2g", "$argon2id$ hash has the form"),
    ("bob:$argon2id$v=20$m=47104,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g", "unknown $argon2id$ version"),
    ("bob:$argon2id$v=19$m=47104,t=0,p=1$c2FsdHNhbHQ$aGFzaGhhc2g", "parameters out of range"),
    ("bob:$argon2id$v=19$m=47104,t=1,p=1$c2FsdA$aGFzaGhhc2g", "salt or hash too short"),
    ("bob:$argon2id$v=19$m=47104,t=1,p=1$c2Fsd*$aGFzaGhhc2g", "salt is not valid base64"),
    (DEBIAN_7.replace("alice", "carol"), "user 'carol' appears again (first on line 3)"),
]


@pytest.mark.parametrize(("line", "message"), MALFORMED)
def test_malformed_line_is_named(line, message):
    text = f"# header\n\n{DEBIAN_6}\n{line}\n{DEBIAN_7}\n"
    with pytest.raises(PasswordFileError) as caught:
        parse_password_file(text)
    assert caught.value.lineno == 4
    assert str(caught.value).startswith("line 4: ")
    assert message in str(caught.value)
    for secret in ("hunter2", "LjMU", "M0Bv", KEY64.decode()[:8]):
        assert secret not in str(caught.value)


def test_parse_line_without_number_and_blank():
    assert parse_password_file("") == parse_password_file("# nothing\n\n") == {}
    assert parse_line("   ") is None
    assert parse_line("#x:y") is None
    with pytest.raises(PasswordFileError, match="^expected username:hash$"):
        parse_line("garbage")


# -- verifying and hashing -----------------------------------------------------------------


def test_verify_debian_entries():
    entries = parse_password_file(f"{DEBIAN_7}\n{DEBIAN_6}\n")
    assert verify(entries["alice"], b"other")
    assert not verify(entries["alice"], b"Other")
    assert verify(entries["carol"], b"secret")
    assert not verify(entries["carol"], b"secret\0")


@pytest.mark.parametrize("salt", [b"\x00" * 12, bytes(range(64))])
def test_verify_hand_built_entries(salt):
    password = "pässwörd".encode()
    for hashed in (seven(password, salt, 7), six(password, salt)):
        entry = parse_line(format_line("u", hashed))
        assert entry is not None
        assert verify(entry, password)
        assert not verify(entry, password + b"x")
        assert not verify(entry, b"")


def test_hash_password_round_trip():
    hashed = hash_password(b"s3cret")
    entry = parse_line(format_line("bob", hashed))
    assert entry is not None
    assert (entry.scheme, entry.iterations, len(entry.salt), len(entry.key)) == ("7", 1000, 64, 64)
    assert verify(entry, b"s3cret") and not verify(entry, b"s3cre")
    assert hash_password(b"s3cret") != hashed  # a fresh salt every time
    short = parse_line("bob:" + hash_password(b"x", iterations=5, salt_length=12))
    assert short is not None and (short.iterations, len(short.salt)) == (5, 12)


@pytest.mark.parametrize(("kwargs"), [{"iterations": 0}, {"salt_length": 16}, {"salt_length": 0}])
def test_hash_password_refuses_what_mosquitto_cannot_read(kwargs):
    with pytest.raises(ValueError):
        hash_password(b"x", **kwargs)


@pytest.mark.parametrize(
    "username", ["", "a:b", "tab\there", "new\nline", " lead", "trail ", "#hash", "\udcff"]
)
def test_format_line_refuses_usernames_that_do_not_round_trip(username):
    with pytest.raises(ValueError):
        format_line(username, GOOD)


def test_format_line_checks_the_hash():
    assert format_line("ünï cödé", GOOD) == f"ünï cödé:{GOOD}"
    with pytest.raises(PasswordFileError):
        format_line("bob", "plaintext")


def rfc5802_hi(password: bytes, salt: bytes, iterations: int) -> bytes:
    """RFC 5802 Hi() written out with HMAC-SHA-512, independent of hashlib.pbkdf2_hmac."""
    u = hmac.new(password, salt + b"\x00\x00\x00\x01", "sha512").digest()
    result = int.from_bytes(u, "big")
    for _ in range(iterations - 1):
        u = hmac.new(password, u, "sha512").digest()
        result ^= int.from_bytes(u, "big")
    return result.to_bytes(64, "big")


def test_scram_secret_is_the_salted_password():
    entries = parse_password_file(f"{DEBIAN_7}\n{DEBIAN_6}\n{ARGON2}\n")
    secret = scram_secret(entries["alice"])
    assert isinstance(secret, ScramSecret)
    assert secret.salt == entries["alice"].salt and secret.iterations == 101
    assert secret.salted_password == rfc5802_hi(b"other", secret.salt, 101)
    assert scram_secret(entries["carol"]) is None
    assert scram_secret(entries["dave"]) is None


# -- $argon2id$ ----------------------------------------------------------------------------


def fake_argon2(monkeypatch) -> None:
    """An ``argon2`` module with argon2-cffi's API, computing with cryptography's Argon2id."""
    from cryptography.exceptions import InvalidKey
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

    VerificationError = type("VerificationError", (Exception,), {})
    VerifyMismatchError = type("VerifyMismatchError", (VerificationError,), {})
    InvalidHashError = type("InvalidHashError", (ValueError,), {})

    class PasswordHasher:
        def verify(self, hash: str, password: bytes) -> bool:
            try:
                Argon2id.verify_phc_encoded(password, hash)
            except InvalidKey:
                raise VerifyMismatchError() from None
            return True

    exceptions = types.ModuleType("argon2.exceptions")
    exceptions.__dict__.update(
        VerificationError=VerificationError,
        VerifyMismatchError=VerifyMismatchError,
        InvalidHashError=InvalidHashError,
    )
    module = types.ModuleType("argon2")
    module.__dict__.update(PasswordHasher=PasswordHasher, exceptions=exceptions)
    monkeypatch.setitem(sys.modules, "argon2", module)
    monkeypatch.setitem(sys.modules, "argon2.exceptions", exceptions)


def test_argon2id_verified_through_argon2_module(monkeypatch):
    fake_argon2(monkeypatch)
    entry = parse_line(ARGON2)
    assert entry is not None
    assert verify(entry, b"s3cret")
    assert not verify(entry, b"s3cret!")


def test_argon2id_without_argon2_cffi(monkeypatch):
    monkeypatch.setitem(sys.modules, "argon2", None)  # `import argon2` now raises ImportError
    entry = parse_line(ARGON2)
    assert entry is not None
    with pytest.raises(UnsupportedHash, match=r"install argon2-cffi to check \$argon2id\$ entries"):
        verify(entry, b"s3cret")


# -- the checker ---------------------------------------------------------------------------


@pytest.fixture
def calls(monkeypatch) -> list[tuple[PasswordEntry, bool]]:
    """Count real hash computations: (entry, ran on the main thread?) per call of verify."""
    seen: list[tuple[PasswordEntry, bool]] = []
    real = passwords.verify

    def counting(entry, password):
        seen.append((entry, threading.current_thread() is threading.main_thread()))
        return real(entry, password)

    monkeypatch.setattr(passwords, "verify", counting)
    return seen


def write_users(path, **users: bytes) -> None:
    lines = [
        format_line(name, hash_password(pw, iterations=10, salt_length=12))
        for name, pw in users.items()
    ]
    path.write_text("# test users\n" + "\n".join(lines) + "\n")


def login(checker: PasswordFileChecker, username, password):
    return checker.requestAvatarId(UsernamePassword(username, password))


@pytest_twisted.ensureDeferred
async def test_checker_accepts_refuses_and_hashes_off_the_reactor_thread(tmp_path, calls):
    path = tmp_path / "passwd"
    write_users(path, alice=b"pw-a", bob=b"pw-b")
    checker = PasswordFileChecker(path)
    assert await login(checker, "alice", b"pw-a") == "alice"
    assert await login(checker, b"bob", "pw-b") == "bob"  # bytes / str are accepted too
    with pytest.raises(UnauthorizedLogin):
        await login(checker, "alice", b"pw-b")
    with pytest.raises(UnauthorizedLogin):
        await login(checker, "alice", None)
    assert [on_main for _, on_main in calls] == [False, False, False]


@pytest_twisted.ensureDeferred
async def test_unknown_user_runs_a_dummy_hash(tmp_path, calls):
    path = tmp_path / "passwd"
    write_users(path, alice=b"pw-a", bob=b"pw-b")
    checker = PasswordFileChecker(path)
    with pytest.raises(UnauthorizedLogin):
        await login(checker, "mallory", b"pw-a")
    [(dummy, on_main)] = calls
    assert not on_main
    assert (dummy.username, dummy.scheme, dummy.iterations) == ("", "7", 10)


@pytest_twisted.ensureDeferred
async def test_dummy_hash_follows_the_files_usual_kind(tmp_path, calls):
    path = tmp_path / "passwd"
    lines = [format_line(f"u{i}", six(b"pw", bytes(12))) for i in range(3)]
    path.write_text("\n".join([*lines, DEBIAN_7]) + "\n")
    checker = PasswordFileChecker(path)
    with pytest.raises(UnauthorizedLogin):
        await login(checker, "nobody", b"pw")
    [(dummy, _)] = calls
    assert (dummy.scheme, dummy.iterations) == ("6", 0)


@pytest_twisted.ensureDeferred
async def test_reload_during_a_check_checks_the_new_entry(tmp_path, calls):
    path = tmp_path / "passwd"
    write_users(path, alice=b"old")
    checker = PasswordFileChecker(path)
    pending = login(checker, "alice", b"old")  # hashing in a thread; its result waits for us
    write_users(path, alice=b"new")
    checker.reload()
    with pytest.raises(UnauthorizedLogin):
        await pending
    assert len(calls) == 2  # checked against the old entry, then against the new one
    pending = login(checker, "alice", b"new")
    checker.reload()  # same content: the result stands
    assert await pending == "alice"
    assert len(calls) == 3


@pytest_twisted.ensureDeferred
async def test_cache_answers_repeat_logins_and_reload_empties_it(tmp_path, calls):
    path = tmp_path / "passwd"
    write_users(path, alice=b"pw-a")
    checker = PasswordFileChecker(path)
    for _ in range(3):
        assert await login(checker, "alice", b"pw-a") == "alice"
    assert len(calls) == 1
    with pytest.raises(UnauthorizedLogin):  # failures are never cached
        await login(checker, "alice", b"wrong")
    with pytest.raises(UnauthorizedLogin):
        await login(checker, "alice", b"wrong")
    assert len(calls) == 3
    checker.reload()
    assert await login(checker, "alice", b"pw-a") == "alice"
    assert len(calls) == 4


@pytest_twisted.ensureDeferred
async def test_cache_is_bounded_lru(tmp_path, calls):
    path = tmp_path / "passwd"
    write_users(path, a=b"1", b=b"2", c=b"3")
    checker = PasswordFileChecker(path, cache_size=2)
    for name, pw in (("a", b"1"), ("b", b"2"), ("a", b"1"), ("c", b"3")):
        await login(checker, name, pw)
    assert len(calls) == 3  # the second "a" came from the cache
    await login(checker, "a", b"1")  # still cached: "b" was the least recently used
    assert len(calls) == 3
    await login(checker, "b", b"2")
    assert len(calls) == 4


@pytest_twisted.ensureDeferred
async def test_changed_password_is_not_answered_from_the_cache(tmp_path, calls):
    path = tmp_path / "passwd"
    write_users(path, alice=b"old")
    checker = PasswordFileChecker(path)
    assert await login(checker, "alice", b"old") == "alice"
    write_users(path, alice=b"new")
    checker.reload()
    with pytest.raises(UnauthorizedLogin):
        await login(checker, "alice", b"old")
    assert await login(checker, "alice", b"new") == "alice"


@pytest_twisted.ensureDeferred
async def test_reload_keeps_old_entries_on_a_broken_file(tmp_path):
    path = tmp_path / "passwd"
    write_users(path, alice=b"pw-a")
    checker = PasswordFileChecker(path)
    path.write_text(path.read_text() + "bob:plaintext-password\n")
    with pytest.raises(PasswordFileError) as caught:
        checker.reload()
    assert caught.value.lineno == 3
    assert str(caught.value).startswith(f"{path}: line 3: ")
    assert "plaintext-password" not in str(caught.value)
    assert list(checker.entries) == ["alice"]
    assert await login(checker, "alice", b"pw-a") == "alice"
    path.unlink()
    with pytest.raises(PasswordFileError, match="cannot read"):
        checker.reload()
    assert list(checker.entries) == ["alice"]


def test_checker_refuses_a_bad_file_at_start(tmp_path):
    path = tmp_path / "passwd"
    with pytest.raises(PasswordFileError, match="cannot read"):
        PasswordFileChecker(path)
    path.write_bytes(b"# ok\nal\xffce:" + GOOD.encode() + b"\n")
    with pytest.raises(PasswordFileError, match="line 2: not valid UTF-8"):
        PasswordFileChecker(path)
    path.write_text(f"{DEBIAN_7}\n{DEBIAN_7}\n")
    with pytest.raises(PasswordFileError, match="line 2: user 'alice' appears again"):
        PasswordFileChecker(path)


@pytest_twisted.ensureDeferred
async def test_checker_argon2id(tmp_path, monkeypatch):
    path = tmp_path / "passwd"
    path.write_text(f"{ARGON2}\n")
    events: list[str] = []

    def observer(event):
        events.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    try:
        monkeypatch.setitem(sys.modules, "argon2", None)
        checker = PasswordFileChecker(path)
        with pytest.raises(UnauthorizedLogin):
            await login(checker, "dave", b"s3cret")
    finally:
        globalLogPublisher.removeObserver(observer)
    assert any("1 $argon2id$ entries cannot be checked" in e for e in events)
    assert any("install argon2-cffi" in e and "'dave'" in e for e in events)

    fake_argon2(monkeypatch)
    checker = PasswordFileChecker(path)
    assert await login(checker, "dave", b"s3cret") == "dave"
    with pytest.raises(UnauthorizedLogin):
        await login(checker, "dave", b"wrong")
