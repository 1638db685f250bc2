"""Password files against the real Mosquitto tools (Debian packages mosquitto, mosquitto-clients).

These tests fail (not skip) when the tools are missing: they are declared test dependencies.
Every subprocess runs in a new session (no controlling terminal, so prompts read stdin) and
with a timeout.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mqtt_twisted.passwords import parse_password_file, verify

TIMEOUT = 30


def tool(name: str) -> str:
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)), None
    )
    assert path, f"{name} not found: install the Debian packages mosquitto and mosquitto-clients"
    return path


def run(*args: str | Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        start_new_session=True,
        stdin=subprocess.DEVNULL if stdin is None else None,
    )


def ours(*args: str | Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return run(sys.executable, "-m", "mqtt_twisted.passwd_cli", *args, stdin=stdin)


def debian(*args: str | Path) -> subprocess.CompletedProcess[str]:
    result = run(tool("mosquitto_passwd"), *args)
    assert result.returncode == 0, result.stderr
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mosquitto(tmp_path):
    """Start a real ``mosquitto`` on a free loopback port using a password file; returns the port."""
    started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(password_file: Path) -> int:
        port = free_port()
        conf = tmp_path / f"mosquitto-{port}.conf"
        log = tmp_path / f"mosquitto-{port}.log"
        # `user`: as root, mosquitto would switch to the `mosquitto` user, which cannot read a
        # 0600 file of ours; naming the current user keeps it (ignored when not root).
        conf.write_text(
            f"listener {port} 127.0.0.1\n"
            "allow_anonymous false\n"
            f"password_file {password_file}\n"
            f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
            "log_type all\n"
        )
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [tool("mosquitto"), "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT
            )
        started.append((process, log))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"mosquitto exited {process.returncode}:\n{log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return port
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"mosquitto did not listen on {port}:\n{log.read_text()}")

    yield start
    for process, log in started:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        assert "removing entry" not in log.read_text(), log.read_text()


def publish(port: int, user: str, password: str) -> subprocess.CompletedProcess[str]:
    return run(
        tool("mosquitto_pub"),
        *("-h", "127.0.0.1", "-p", str(port), "-i", f"pub-{user}"),
        *("-u", user, "-P", password, "-t", "compat/test", "-m", "hello"),
    )


# -- (a) Debian's mosquitto_passwd -> our parser -----------------------------------------------


def test_file_written_by_mosquitto_passwd_verifies(tmp_path):
    path = tmp_path / "passwd"
    debian("-c", "-b", path, "alice", "correct horse")
    debian("-b", path, "bob", "bätterý stäple")
    debian("-H", "sha512", "-b", path, "carol", "legacy")  # Mosquitto 1.6's $6$
    entries = parse_password_file(path.read_text())
    assert [(e.username, e.scheme) for e in entries.values()] == [
        ("alice", "7"),
        ("bob", "7"),
        ("carol", "6"),
    ]
    assert verify(entries["alice"], b"correct horse")
    assert not verify(entries["alice"], b"correct horse ")
    assert verify(entries["bob"], "bätterý stäple".encode())
    assert not verify(entries["bob"], b"correct horse")
    assert verify(entries["carol"], b"legacy")
    assert not verify(entries["carol"], b"Legacy")


# -- (b) our tool -> the real mosquitto broker -------------------------------------------------


def test_file_written_by_our_tool_is_accepted_by_mosquitto(tmp_path, mosquitto):
    path = tmp_path / "passwd"
    # Debian's Mosquitto 2.0 reads only 12-byte salts: --mosquitto-2.0 writes them
    assert ours("-c", "-b", "--mosquitto-2.0", path, "alice", "s3cret: with spaces").returncode == 0
    assert ours("-b", "--mosquitto-2.0", path, "bob", "ünïcödé").returncode == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    port = mosquitto(path)

    ok = publish(port, "alice", "s3cret: with spaces")
    assert ok.returncode == 0, ok.stderr
    ok = publish(port, "bob", "ünïcödé")
    assert ok.returncode == 0, ok.stderr
    for user, password in (("alice", "s3cret"), ("bob", "s3cret: with spaces"), ("eve", "x")):
        refused = publish(port, user, password)
        assert refused.returncode != 0
        assert "not authorised" in refused.stderr.lower(), refused.stderr


# -- (c) our tool behaves like mosquitto_passwd --------------------------------------------


def test_create_add_update_delete(tmp_path):
    path = tmp_path / "passwd"
    created = ours("-c", "-b", path, "alice", "one")
    assert created.returncode == 0, created.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    alice = parse_password_file(path.read_text())["alice"]
    assert verify(alice, b"one")
    # 64-byte random salts and 1,000 iterations, as Mosquitto 2.1 writes them
    assert (alice.scheme, alice.iterations, len(alice.salt)) == ("7", 1000, 64)

    first = path.read_text()
    assert ours("-b", path, "bob", "two").returncode == 0
    assert path.read_text().startswith(first)  # alice's line is kept byte for byte
    path.chmod(0o640)
    assert ours("-b", path, "alice", "uno").returncode == 0  # update in place, order kept
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # an existing file keeps its mode
    entries = parse_password_file(path.read_text())
    assert list(entries) == ["alice", "bob"]
    assert verify(entries["alice"], b"uno") and not verify(entries["alice"], b"one")
    assert verify(entries["bob"], b"two")

    deleted = ours("-D", path, "alice")
    assert deleted.returncode == 0, deleted.stderr
    assert list(parse_password_file(path.read_text())) == ["bob"]
    before = path.read_text()
    missing = ours("-D", path, "alice")
    assert missing.returncode == 1
    assert "User alice not found in password file." in missing.stderr
    assert path.read_text() == before

    recreated = ours("-c", "-b", path, "carol", "three")  # -c overwrites
    assert recreated.returncode == 0
    assert list(parse_password_file(path.read_text())) == ["carol"]


def test_keeps_lines_written_by_mosquitto_passwd_and_comments(tmp_path):
    path = tmp_path / "passwd"
    debian("-c", "-b", path, "alice", "one")
    path.write_text("# managed by hand\n\n" + path.read_text())
    before = path.read_text()
    assert ours("-b", path, "bob", "two").returncode == 0
    assert path.read_text().startswith(before)
    entries = parse_password_file(path.read_text())
    assert verify(entries["alice"], b"one") and verify(entries["bob"], b"two")


def test_prompts_twice_on_stdin(tmp_path):
    path = tmp_path / "passwd"
    mismatch = ours("-c", path, "alice", stdin=b"first\nsecond\n")
    assert mismatch.returncode != 0
    assert "Error: Passwords do not match." in mismatch.stderr
    assert not path.exists()

    created = ours("-c", path, "alice", stdin=b"same pass\nsame pass\n")
    assert created.returncode == 0, created.stderr
    assert "Password: " in created.stderr and "Reenter password: " in created.stderr
    assert verify(parse_password_file(path.read_text())["alice"], b"same pass")

    before = path.read_text()
    for stdin, message in (
        (b"a\nb\n", "Passwords do not match."),
        (b"only-once\n", "no password given"),
        (b"\n\n", "Empty password."),
    ):
        refused = ours(path, "bob", stdin=stdin)
        assert refused.returncode == 1
        assert f"Error: {message}" in refused.stderr
        assert path.read_text() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("-c", "-D", "{path}", "alice"), "-c and -D cannot be used together."),
        (("-b", "-D", "{path}", "alice", "x"), "-b and -D cannot be used together."),
        (("-b", "{missing}", "alice", "x"), "Unable to open password file"),
        (("-c", "-b", "{path}", "a:b", "x"), "Username must not contain the ':' character."),
        (("-c", "-b", "{path}", "alice", ""), "Empty password."),
        (("-q", "{path}", "alice"), "unknown option -q"),
        (("-b", "{path}", "alice"), "Usage: mqtt-twisted-passwd"),
        (("-c", "-b", "{missing}/passwd", "alice", "x"), "Unable to write password file"),
    ],
)
def test_errors_are_one_line_and_leave_the_file_alone(tmp_path, args, message):
    path = tmp_path / "passwd"
    assert ours("-c", "-b", path, "alice", "one").returncode == 0
    before = path.read_text()
    argv = [a.format(path=path, missing=tmp_path / "missing") for a in args]
    result = ours(*argv)
    assert result.returncode != 0
    assert message in result.stderr
    assert path.read_text() == before


def test_refuses_a_malformed_file(tmp_path):
    path = tmp_path / "passwd"
    path.write_text("alice:not-a-hash\n")
    result = ours("-b", path, "bob", "two")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"Error: {path}: line 1: the password is not hashed (expected $7$ITERATIONS$SALT$HASH, "
        "$6$SALT$HASH or $argon2id$...); hash it with mqtt-twisted-passwd; file not changed."
    )
    assert path.read_text() == "alice:not-a-hash\n"


def test_installed_console_script(tmp_path):
    script = Path(sys.executable).parent / "mqtt-twisted-passwd"
    assert script.exists(), "reinstall: pip install -e . --config-settings editable_mode=compat"
    path = tmp_path / "passwd"
    result = run(script, "-c", "-b", path, "alice", "one")
    assert result.returncode == 0, result.stderr
    assert verify(parse_password_file(path.read_text())["alice"], b"one")
