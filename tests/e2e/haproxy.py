"""A real HAProxy (Debian's ``haproxy``) in front of broker processes, for end-to-end tests.

``HAProxy(backend_ports)`` writes a configuration into a temporary directory and runs
``haproxy -db -f CFG`` in the foreground: TCP mode on a free 127.0.0.1 port, the PROXY
protocol v2 towards every backend (health checks included, so a backend listening with
Twisted's ``haproxy:`` endpoint wrapper accepts them), and checks every 200 ms so a killed
node is marked down, and its sessions shut, within half a second.

No ``user``, ``chroot`` or syslog: it runs as root or not, from its temporary directory.
A missing ``haproxy`` fails the test (CI installs it; see ``.ci/run``); it is never skipped.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.processes import stop_process

from .browser import free_port

#: Debian's haproxy (in /usr/sbin, often not on a user's PATH)
HAPROXY_CANDIDATES = ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy")
START_TIMEOUT = 10.0
BALANCES = ("leastconn", "roundrobin")


def find_haproxy() -> str:
    """The haproxy executable: $MQTT_TWISTED_HAPROXY, then PATH, then /usr/sbin."""
    explicit = os.environ.get("MQTT_TWISTED_HAPROXY")
    if explicit:
        if not os.access(explicit, os.X_OK):
            pytest.fail(f"MQTT_TWISTED_HAPROXY={explicit} is not an executable", pytrace=False)
        return explicit
    found = shutil.which("haproxy")
    if found:
        return found
    for candidate in HAPROXY_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(
        "haproxy is missing: apt-get install --no-install-recommends haproxy "
        "(or set MQTT_TWISTED_HAPROXY to its path)",
        pytrace=False,
    )


class HAProxy:
    """``haproxy -db`` balancing TCP connections over ``backend_ports`` on 127.0.0.1.

    ``port`` is the frontend's port (chosen free at construction); ``config_text()`` the
    configuration it runs with; ``start()`` returns once the frontend accepts a TCP
    connection (10 s at most); ``stop()`` ends it. ``output()`` is what haproxy wrote
    (its warnings, e.g. servers going DOWN), for failure messages.
    """

    def __init__(
        self,
        backend_ports: list[int],
        *,
        balance: str = "leastconn",
        port: int | None = None,
        directory: Path | None = None,
        executable: str | None = None,
        tls_pem: Path | None = None,
    ) -> None:
        """``tls_pem``: a certificate and its key in one PEM file: a second frontend on
        ``tls_port`` terminates TLS and sends the same backends the plain MQTT inside."""
        if balance not in BALANCES:
            raise ValueError(f"balance must be one of {BALANCES}, not {balance!r}")
        if not backend_ports:
            raise ValueError("HAProxy needs at least one backend port")
        self.backend_ports = list(backend_ports)
        self.balance = balance
        self.port = port if port is not None else free_port()
        self.tls_pem = tls_pem
        self.tls_port = free_port() if tls_pem is not None else 0
        self.executable = executable
        self._own_directory: tempfile.TemporaryDirectory | None = None
        if directory is None:
            self._own_directory = tempfile.TemporaryDirectory(prefix="mqtt-haproxy-")
            directory = Path(self._own_directory.name)
        self.directory = Path(directory)
        self.config_path = self.directory / "haproxy.cfg"
        self.log_path = self.directory / "haproxy.log"
        self.process: subprocess.Popen | None = None

    def config_text(self) -> str:
        """The configuration file's text (what the README shows)."""
        servers = "".join(
            f"    server node{n} 127.0.0.1:{port}\n"
            for n, port in enumerate(self.backend_ports, start=1)
        )
        return (
            "global\n"
            "    maxconn 4096\n"
            "\n"
            "defaults\n"
            "    mode tcp\n"
            "    timeout connect 2s\n"
            "    timeout client 5m\n"
            "    timeout server 5m\n"
            "    timeout check 1s\n"
            "    retries 3\n"
            "    option redispatch\n"
            "\n"
            "frontend mqtt\n"
            f"    bind 127.0.0.1:{self.port}\n"
            "    default_backend brokers\n"
            "\n"
            + (
                "frontend mqtts\n"
                f"    bind 127.0.0.1:{self.tls_port} ssl crt {self.tls_pem}\n"
                "    default_backend brokers\n"
                "\n"
                if self.tls_pem is not None
                else ""
            )
            + "backend brokers\n"
            f"    balance {self.balance}\n"
            "    default-server send-proxy-v2 check check-send-proxy inter 200ms fall 2 rise 1"
            " on-marked-down shutdown-sessions\n"
            f"{servers}"
        )

    def start(self) -> HAProxy:
        if self.process is not None:
            raise RuntimeError("HAProxy already started")
        executable = self.executable or find_haproxy()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text())
        check = subprocess.run(
            [executable, "-c", "-q", "-f", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if check.returncode != 0:
            raise AssertionError(
                f"haproxy refuses its configuration:\n{check.stdout}{check.stderr}\n"
                + self.config_text()
            )
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [executable, "-db", "-f", str(self.config_path)],
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                self.process = None
                raise AssertionError("haproxy exited at start:\n" + self.output())
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(
                    f"haproxy did not accept connections on 127.0.0.1:{self.port} within "
                    f"{START_TIMEOUT:g} s:\n" + self.output()
                )
            time.sleep(0.05)

    def stop(self) -> None:
        process, self.process = self.process, None
        stop_process(process)

    def close(self) -> None:
        """Stop it and remove its temporary directory (if it made one)."""
        self.stop()
        if self._own_directory is not None:
            self._own_directory.cleanup()
            self._own_directory = None

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> HAProxy:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()


@pytest.fixture
def haproxy(tmp_path):
    """Call with backend ports (and HAProxy's keyword arguments) to start an HAProxy in
    front of them; stopped at teardown."""
    started: list[HAProxy] = []

    def start(backend_ports: list[int], **kwargs) -> HAProxy:
        directory = tmp_path / f"haproxy-{len(started)}"
        proxy = HAProxy(backend_ports, directory=directory, **kwargs)
        started.append(proxy)
        return proxy.start()

    yield start
    for proxy in started:
        proxy.close()
