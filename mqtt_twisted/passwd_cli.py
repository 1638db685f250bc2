"""``mqtt-twisted-passwd``: manage a Mosquitto-compatible password file, like ``mosquitto_passwd``.

Differences from Debian's ``mosquitto_passwd`` 2.0.11, on purpose: comments and blank lines
are kept (``mosquitto_passwd`` reports a "corrupt" line there and cuts the file short), a file
with a bad line is refused and left untouched, the file is replaced atomically, and a new
file gets mode 0600.

Salts are 12 bytes, not the 64 that Mosquitto 2.1 writes: every Mosquitto 2.0.x broker (Debian's
2.0.11 included) drops an entry whose salt is not exactly 12 bytes ("Unable to decode password
salt ... removing entry"), while 2.1 and mqtt-twisted read both sizes.
"""

from __future__ import annotations

import contextlib
import errno
import getpass
import os
import stat
import sys
import tempfile
from collections.abc import Sequence

from mqtt_twisted.passwords import (
    DEFAULT_ITERATIONS,
    MAX_FIELD,
    PasswordFileError,
    check_username,
    format_line,
    hash_password,
    parse_line,
)

#: Mosquitto 2.1's salt size; --mosquitto-2.0 writes the 12-byte salts 2.0.x insists on
SALT_LENGTH = 64
SALT_LENGTH_20 = 12

USAGE = """\
mqtt-twisted-passwd manages password files for mqtt-twisted and Mosquitto.

Usage: mqtt-twisted-passwd [-c | -D] [--mosquitto-2.0] passwordfile username
       mqtt-twisted-passwd [-c] -b [--mosquitto-2.0] passwordfile username password
 -b : run in batch mode to allow passing passwords on the command line.
 -c : create a new password file. This will overwrite existing files.
 -D : delete the username rather than adding/updating its password.
 --mosquitto-2.0 : write 12-byte salts, the only size Mosquitto 2.0.x reads.

Passwords are stored as $7$ (PBKDF2-HMAC-SHA512, 1000 iterations, a random 64-byte salt),
as Mosquitto 2.1 writes them; mqtt-twisted reads 12- and 64-byte salts.
"""


class CliError(Exception):
    """A one-line error for the user; main() prints it and returns 1."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the tool; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return _run(args)
    except CliError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


def _run(args: list[str]) -> int:
    if not args:
        sys.stdout.write(USAGE)
        return 1
    flags = set()
    while args and args[0].startswith("-") and args[0] != "-":
        flag = args.pop(0)
        if flag == "--":
            break
        if flag in ("-h", "--help"):
            sys.stdout.write(USAGE)
            return 0
        if flag not in ("-b", "-c", "-D", "--mosquitto-2.0"):
            raise CliError(f"unknown option {flag} (see --help)")
        flags.add(flag)
    create, batch, delete = "-c" in flags, "-b" in flags, "-D" in flags
    if create and delete:
        raise CliError("-c and -D cannot be used together.")
    if batch and delete:
        raise CliError("-b and -D cannot be used together.")
    if len(args) != (3 if batch else 2):
        sys.stderr.write(USAGE)
        return 1
    path, username = args[0], args[1]
    try:
        check_username(username)
    except ValueError as e:
        message = str(e)
        raise CliError(f"{message[:1].upper()}{message[1:]}.") from None

    lines = [] if create else _read(path)
    if delete:
        kept = [line for line in lines if _user_of(line) != username]
        if len(kept) == len(lines):
            print(f"Warning: User {username} not found in password file.", file=sys.stderr)
            return 1
        _write(path, kept)
        return 0

    password = os.fsencode(args[2]) if batch else _prompt_twice()
    _check_password(password)
    salt_length = SALT_LENGTH_20 if "--mosquitto-2.0" in flags else SALT_LENGTH
    new_line = format_line(username, hash_password(password, DEFAULT_ITERATIONS, salt_length))
    updated, found = [], False
    for line in lines:
        if _user_of(line) != username:
            updated.append(line)
        elif not found:  # the first line of this user gets the new hash, any later ones go
            updated.append(new_line)
            found = True
    if not found:
        updated.append(new_line)
    _write(path, updated)
    print(f"{'Updated' if found else 'Added'} password for user {username}")
    return 0


def _user_of(line: str) -> str | None:
    entry = parse_line(line)
    return None if entry is None else entry.username


def _read(path: str) -> list[str]:
    """The file's lines (without newlines), refusing a file that does not parse."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CliError(f"Unable to open password file {path}. {e.strerror}.") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        lineno = data.count(b"\n", 0, e.start) + 1
        raise CliError(f"{path}: line {lineno}: not valid UTF-8; file not changed.") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    for lineno, line in enumerate(lines, start=1):
        try:
            parse_line(line, lineno)
        except PasswordFileError as e:
            raise CliError(f"{path}: {e}; file not changed.") from None
    return [line.rstrip("\r") for line in lines]


def _prompt(prompt: str) -> bytes:
    """Read a password: through getpass on a terminal, else one line of stdin (for scripts)."""
    if sys.stdin is not None and sys.stdin.isatty():
        try:
            return getpass.getpass(prompt).encode("utf-8", "surrogateescape")
        except EOFError:
            raise CliError("no password given.") from None
    sys.stderr.write(prompt)
    sys.stderr.flush()
    line = sys.stdin.buffer.readline() if sys.stdin is not None else b""
    sys.stderr.write("\n")
    if not line:
        raise CliError("no password given (end of input).")
    line = line[:-1] if line.endswith(b"\n") else line
    return line[:-1] if line.endswith(b"\r") else line


def _prompt_twice() -> bytes:
    password = _prompt("Password: ")
    if _prompt("Reenter password: ") != password:
        raise CliError("Passwords do not match.")
    return password


def _check_password(password: bytes) -> None:
    if not password:
        raise CliError("Empty password.")
    if len(password) > MAX_FIELD:
        raise CliError("Password must be less than 65536 bytes long.")
    if b"\0" in password:
        raise CliError("Password must not contain NUL bytes (Mosquitto stops at the first).")


def _write(path: str, lines: list[str]) -> None:
    """Replace the file atomically; a new file gets mode 0600, an old one keeps its mode."""
    text = "".join(line + "\n" for line in lines)
    target = os.path.realpath(path)
    try:
        old = os.stat(target)
    except FileNotFoundError:
        old = None
    except OSError as e:
        raise CliError(f"Unable to write password file {path}. {e.strerror}.") from None
    try:
        fd, tmp = tempfile.mkstemp(
            dir=os.path.dirname(target), prefix=f".{os.path.basename(target)}.", suffix=".tmp"
        )
    except PermissionError:  # a writable file in a read-only directory: rewrite it in place
        return _write_in_place(path, target, text)
    except OSError as e:
        raise CliError(f"Unable to write password file {path}. {e.strerror}.") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if old is not None:
            os.chmod(tmp, stat.S_IMODE(old.st_mode))
            if (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
                with contextlib.suppress(OSError):
                    os.chown(tmp, old.st_uid, old.st_gid)
        try:
            os.replace(tmp, target)
        except OSError as e:
            if e.errno not in (errno.EBUSY, errno.EXDEV):  # e.g. a bind-mounted file
                raise
            _write_in_place(path, target, text)
    except OSError as e:
        raise CliError(f"Unable to write password file {path}. {e.strerror}.") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _write_in_place(path: str, target: str, text: str) -> None:
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
    except OSError as e:
        raise CliError(f"Unable to write password file {path}. {e.strerror}.") from None


if __name__ == "__main__":
    sys.exit(main())
