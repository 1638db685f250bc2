"""A broker process (``twistd -n mqtt``) listening behind the PROXY protocol, its log in a
file the tests read; killed with SIGKILL or stopped with SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from tests.processes import stop_process

from .browser import TWISTD, free_port

NODE_ARGS = ("--store", "memory", "--sys-interval", "0", "--http", "none")
START_TIMEOUT = 20.0


class Node:
    """One broker process listening only behind the PROXY protocol; its log in a file."""

    def __init__(
        self, directory: Path, name: str, *args: str, direct: bool = False, ready: str = ""
    ) -> None:
        """``args``: the broker's options after ``--mqtt``; ``direct``: a second, plain
        ``tcp:`` listener (``direct_port``) for clients that connect to this node itself;
        ``ready``: a log line that must appear before the node counts as started."""
        self.args = args or NODE_ARGS
        self.directory = directory / name
        self.directory.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = self.directory / "twistd.log"
        self.port = 0
        self.direct_port = 0
        self.direct = direct
        self.ready = ready
        self.process: subprocess.Popen | None = None
        self._started_once = False

    def start(self) -> Node:
        """Start (again on the same ports once it has started before)."""
        return self.launch().wait_ready()

    def launch(self) -> Node:
        """Start the process; ``wait_ready`` waits until it serves."""
        if not self.port:
            self.port = free_port()
            self.direct_port = free_port() if self.direct else 0
        self.log_path.unlink(missing_ok=True)
        listeners = ["--mqtt", f"haproxy:tcp:{self.port}:interface=127.0.0.1"]
        if self.direct:
            listeners += ["--mqtt", f"tcp:{self.direct_port}:interface=127.0.0.1"]
        with open(self.directory / "stdout.txt", "ab") as stdout:
            self.process = subprocess.Popen(
                [
                    str(TWISTD),
                    "-n",
                    "--pidfile=",
                    f"--logfile={self.log_path}",
                    "mqtt",
                    *listeners,
                    *self.args,
                ],
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.STDOUT,
            )
        return self

    def wait_ready(self) -> Node:
        """Wait until the node serves. On its first start, ports taken between
        ``free_port`` and the node binding them (by another process's outgoing
        connection, say) are replaced and the node started again, twice at most."""
        for _attempt in range(2):
            if self._started_once or not self._lost_its_ports():
                break
            self.port = 0
            self.launch()
        self._wait_started()
        self._started_once = True
        return self

    def _lost_its_ports(self) -> bool:
        """Whether the process ended at once because a port was already in use."""
        process = self.process
        assert process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while process.poll() is None and time.monotonic() < deadline:
            log = self.log()
            if "Address already in use" in log:
                break
            if all(line in log for line in self._listening_lines()):
                return False
            time.sleep(0.05)
        if "Address already in use" not in self.log():
            return False
        if process.poll() is None:
            process.kill()
        process.wait(10)
        return True

    def _listening_lines(self) -> list[str]:
        lines = [f"listening on 127.0.0.1:{self.port}"]
        if self.direct:
            lines.append(f"listening on 127.0.0.1:{self.direct_port}")
        return lines

    def _wait_started(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        lines = self._listening_lines()
        if self.ready:
            lines.append(self.ready)
        process = self.process
        assert process is not None
        while process.poll() is None and time.monotonic() < deadline:
            log = self.log()
            if all(line in log for line in lines):
                return
            time.sleep(0.05)
        if process.poll() is None:
            process.kill()
        process.wait(10)
        self.process = None
        raise AssertionError(f"{self.name} did not start:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, line: str, count: int = 1, timeout: float = 10.0) -> None:
        """Wait until ``line`` is in the log ``count`` times."""
        deadline = time.monotonic() + timeout
        while self.log().count(line) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: {line!r} not logged {count}x:\n{self.log()}")
            time.sleep(0.05)

    def connected(self, client_id: str) -> bool:
        return f"client {client_id} connected from " in self.log()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        process, self.process = self.process, None
        assert process is not None and process.poll() is None, f"{self.name} died by itself"
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def stop(self) -> None:
        process, self.process = self.process, None
        stop_process(process)
