"""Helpers for the dashboard's browser tests: real headless Chromium (Debian's ``chromium``,
driven by Playwright's sync API) against the broker run by the real ``twistd``.

The browser tests are plain (synchronous) test functions: the broker runs in its own
``twistd`` process, so nothing here needs the reactor of the test process.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TWISTD = Path(sys.executable).parent / "twistd"
#: Debian's real Chromium binary (/usr/bin/chromium is a wrapper script)
CHROMIUM = os.environ.get("MQTT_TWISTED_CHROMIUM", "/usr/lib/chromium/chromium")
TIMEOUT_MS = 10_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BrokerProcess:
    """``twistd -n mqtt`` on fixed loopback ports; can be stopped and started again."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.cwd = cwd
        self.mqtt_port = free_port()
        self.http_port = free_port()
        self.args = args
        self.process: subprocess.Popen | None = None
        self.lines: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.http_port}/mqtt"

    def start(self) -> BrokerProcess:
        command = [
            str(TWISTD), "-n", "--pidfile=", "mqtt",
            "--mqtt", f"tcp:{self.mqtt_port}:interface=127.0.0.1",
            "--http", f"tcp:{self.http_port}:interface=127.0.0.1",
            *self.args,
        ]
        deadline = time.monotonic() + 20
        while True:  # the port of a process just stopped can take a moment to be free
            process = subprocess.Popen(command, cwd=self.cwd, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)
            ready = threading.Event()
            lines: list[str] = []

            def drain(process=process, lines=lines, ready=ready) -> None:
                for line in process.stdout:
                    lines.append(line)
                    if f"listening on 127.0.0.1:{self.http_port}" in line:
                        ready.set()
                ready.set()

            threading.Thread(target=drain, daemon=True).start()
            ready.wait(20)
            self.lines = lines
            if process.poll() is None and any(f":{self.http_port}" in l and "listening on" in l
                                               for l in lines):
                self.process = process
                return self
            process.kill()
            process.wait()
            if time.monotonic() > deadline:
                raise AssertionError("twistd did not start:\n" + "".join(lines))
            time.sleep(0.2)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def broker_process(tmp_path):
    """Call with extra ``twistd mqtt`` arguments to start a broker; stopped at teardown."""
    started: list[BrokerProcess] = []

    def start(*args: str) -> BrokerProcess:
        broker = BrokerProcess(tmp_path, *args).start()
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop()


@pytest.fixture(scope="module")
def chromium():
    """One headless Chromium per test module."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install --no-install-recommends chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield browser
        finally:
            browser.close()


class ConsoleLog:
    """Console messages and uncaught errors of one page."""

    def __init__(self, page) -> None:
        self.entries: list[str] = []
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))

    def _console(self, message) -> None:
        self.entries.append(f"{message.type}: {message.text}")
        if message.type in ("error", "assert"):
            self.errors.append(f"{message.type}: {message.text}")


@pytest.fixture
def page(chromium):
    """A fresh browser context and page, with its console recorded in ``page.console``."""
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.console = ConsoleLog(page)
    yield page
    context.close()


def wait_for_state(page, state: str, timeout: float = TIMEOUT_MS) -> None:
    """Wait until the dashboard's connection badge shows ``state``."""
    page.wait_for_function(
        "state => document.getElementById('status').dataset.state === state",
        arg=state, timeout=timeout,
    )
