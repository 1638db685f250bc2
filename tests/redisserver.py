"""A real redis-server for tests: a free loopback port, a unix socket and an append-only
file in a directory of its own; it can be killed (SIGKILL) and started again on both.
With ``tls=True`` the port speaks TLS only (test certificates from ``tests/e2e/certs.py``).

    from tests.redisserver import make_redis_server, redis_server  # the fixtures
"""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.e2e.certs import TestCertificates, make_certificates
from tests.processes import stop_process

#: seconds a start may take before the server counts as broken
START_SECONDS = 10.0
#: the longest unix socket path Linux takes (sun_path is 108 bytes, NUL included)
MAX_SOCKET_PATH = 107


def redis_server_binary() -> str:
    """The redis-server to run; fails the test (never skips it) when there is none."""
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if found is None:
        pytest.fail(
            "redis-server is not installed (apt-get install redis-server): "
            "the Redis client tests need a real server",
            pytrace=False,
        )
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RedisServer:
    """One redis-server process on 127.0.0.1; ``password`` sets ``--requirepass`` and
    ``extra_args`` are added to its command line (e.g. ``("--user", "alice", ...)``).

    ``tls``: the port is a TLS port (no plain TCP one) with a server certificate for
    127.0.0.1 / localhost from ``certificates`` (made in the directory); clients must show a
    certificate of that CA unless ``tls_auth_clients`` is ``"no"`` or ``"optional"``."""

    def __init__(
        self,
        directory: Path,
        password: str | None = None,
        extra_args: tuple[str, ...] = (),
        binary: str | None = None,
        tls: bool = False,
        tls_auth_clients: str = "yes",
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.password = password
        self.extra_args = extra_args
        self.binary = binary or redis_server_binary()
        self.port = free_port()
        self._socket_dir: str | None = None
        socket_path = self.directory / "redis.sock"
        if len(str(socket_path)) > MAX_SOCKET_PATH:  # pytest's tmp_path can be that long
            self._socket_dir = tempfile.mkdtemp(prefix="redis-")
            socket_path = Path(self._socket_dir) / "redis.sock"
        self.unix_path = str(socket_path)
        self.process: subprocess.Popen[bytes] | None = None
        self.tls_auth_clients = tls_auth_clients
        self.certificates: TestCertificates | None = None
        if tls:
            self.certificates = make_certificates(self.directory / "certs")

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``, with the password when there is one; with TLS
        ``rediss://...?ssl_ca_certs=...&ssl_certfile=...&ssl_keyfile=...`` (the test CA and
        its client certificate)."""
        files = self.certificates
        if files is None:
            return self.url_with()
        return self.url_with(
            ssl_ca_certs=files.ca, ssl_certfile=files.client_cert, ssl_keyfile=files.client_key
        )

    def url_with(self, host: str = "127.0.0.1", **query: object) -> str:
        """The URL (``rediss://`` with TLS) to ``host`` with exactly these query parameters."""
        login = f":{self.password}@" if self.password else ""
        scheme = "redis" if self.certificates is None else "rediss"
        fields = "&".join(f"{k}={quote(str(v), safe='/')}" for k, v in query.items())
        return f"{scheme}://{login}{host}:{self.port}/0" + (f"?{fields}" if fields else "")

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    @property
    def stderr_path(self) -> Path:
        return self.directory / "redis.stderr"

    def command(self) -> list[str]:
        command = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--unixsocket", self.unix_path,
            "--unixsocketperm", "700",
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--dir", str(self.directory),
            "--daemonize", "no",
            "--logfile", str(self.log_path),
            # DEBUG SLEEP, for the tests that need replies to stay pending
            "--enable-debug-command", "local",
        ]  # fmt: skip
        if self.password is not None:
            command += ["--requirepass", self.password]
        if self.certificates is not None:
            files = self.certificates
            command[1:3] = ["--port", "0", "--tls-port", str(self.port)]
            command += [
                "--tls-cert-file", str(files.server_cert),
                "--tls-key-file", str(files.server_key),
                "--tls-ca-cert-file", str(files.ca),
                "--tls-auth-clients", self.tls_auth_clients,
            ]  # fmt: skip
        return command + list(self.extra_args)

    def start(self) -> RedisServer:
        """Start (again, on the same port, socket and directory: the AOF is reloaded) and
        wait until it answers PING."""
        assert self.process is None, "redis-server already running"
        with self.stderr_path.open("ab") as stderr:  # early errors, before the log is open
            self.process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr
            )
        deadline = time.monotonic() + START_SECONDS
        while not self._answers_ping():
            if self.process.poll() is not None:
                self._failed_start(f"exited with status {self.process.returncode}")
            if time.monotonic() > deadline:
                self._failed_start(f"did not answer PING within {START_SECONDS:g} s")
            time.sleep(0.02)
        return self

    def _failed_start(self, why: str) -> None:
        process, self.process = self.process, None
        assert process is not None
        if process.poll() is None:
            process.kill()
        process.wait(10)
        output = [
            p.read_text(errors="replace") for p in (self.stderr_path, self.log_path) if p.exists()
        ]
        tail = "\n".join("".join(output).splitlines()[-15:])
        raise RuntimeError(f"redis-server on port {self.port} {why}:\n{tail}")

    def _answers_ping(self) -> bool:
        """True once PING is answered with PONG (not while the AOF is still loading)."""
        request = b"PING\r\n"
        if self.password is not None:
            request = f"AUTH {self.password}\r\n".encode() + request
        try:
            with self._probe_connection() as connection:
                connection.sendall(request)
                received = b""
                while received.count(b"\r\n") < request.count(b"\r\n"):
                    chunk = connection.recv(4096)
                    if not chunk:
                        return False
                    received += chunk
        except OSError:  # ssl.SSLError too
            return False
        return received.endswith(b"+PONG\r\n")

    def _probe_connection(self) -> socket.socket:
        connection = socket.create_connection(("127.0.0.1", self.port), timeout=1)
        if self.certificates is None:
            return connection
        files = self.certificates
        context = ssl.create_default_context(cafile=str(files.ca))
        context.load_cert_chain(files.client_cert, files.client_key)
        try:
            return context.wrap_socket(connection, server_hostname="127.0.0.1")
        except BaseException:
            connection.close()
            raise

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final AOF rewrite; what was written is on disk."""
        process, self.process = self.process, None
        assert process is not None and process.poll() is None, "redis-server is not running"
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def stop(self) -> None:
        """Stop if running (SIGTERM, then SIGKILL after 10 s); remove a socket directory
        of its own."""
        process, self.process = self.process, None
        stop_process(process)

    def cleanup(self) -> None:
        self.stop()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)


@pytest.fixture
def make_redis_server(tmp_path):
    """Call with `RedisServer` options to start a server in a directory of its own; every
    server made is stopped at teardown."""
    made: list[RedisServer] = []

    def make(**options) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{len(made)}", **options)
        made.append(server)
        return server.start()

    yield make
    for server in made:
        server.cleanup()


@pytest.fixture
def redis_server(tmp_path):
    """A started redis-server with no password; always stopped at teardown."""
    server = RedisServer(tmp_path / "redis")
    try:
        yield server.start()
    finally:
        server.cleanup()
