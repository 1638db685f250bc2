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

from tests.processes import stop_process

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

    def __init__(self, cwd: Path, *args: str, twistd: list[str] | None = None) -> None:
        self.cwd = cwd
        self.twistd = twistd or [str(TWISTD)]
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
            *self.twistd,
            "-n",
            "--pidfile=",
            "mqtt",
            "--mqtt",
            f"tcp:{self.mqtt_port}:interface=127.0.0.1",
            "--http",
            f"tcp:{self.http_port}:interface=127.0.0.1",
            *self.args,
        ]
        deadline = time.monotonic() + 20
        while True:  # the port of a process just stopped can take a moment to be free
            process = subprocess.Popen(
                command, cwd=self.cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
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
            if process.poll() is None and any(
                f":{self.http_port}" in line and "listening on" in line for line in lines
            ):
                self.process = process
                return self
            process.kill()
            process.wait()
            if time.monotonic() > deadline:
                raise AssertionError("twistd did not start:\n" + "".join(lines))
            time.sleep(0.2)

    def stop(self) -> None:
        process, self.process = self.process, None
        stop_process(process)


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
        arg=state,
        timeout=timeout,
    )


# -- a test page on the broker's origin, for mqtt.js on its own --------------------------------

TEST_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mqtt.js test</title>
<link rel="icon" href="data:,"></head><body>
<script type="module">
import * as mqtt from "/mqtt.js";
window.mqtt = mqtt;
const decoder = new TextDecoder();
/** A client whose events are recorded in client.log. */
window.makeClient = (options = {}, url = mqtt.defaultBrokerURL()) => {
  const client = new mqtt.MQTTClient(url, options);
  const log = { messages: [], states: [], refused: [], errors: [], closes: [], connects: 0 };
  client.addEventListener("message", (e) => log.messages.push({
    topic: e.detail.topic, qos: e.detail.qos, retain: e.detail.retain, dup: e.detail.dup,
    text: decoder.decode(e.detail.payload), bytes: Array.from(e.detail.payload) }));
  client.addEventListener("state", (e) => log.states.push(e.detail));
  client.addEventListener("refused", (e) => log.refused.push(e.detail));
  client.addEventListener("error", (e) => log.errors.push(String(e.detail.error)));
  client.addEventListener("close", (e) => log.closes.push(e.detail));
  client.addEventListener("connect", () => { log.connects += 1; });
  client.log = log;
  return client;
};
/** Resolves when predicate() is true; rejects after timeout ms. */
window.until = (predicate, timeout = 5000, what = "condition") => new Promise((resolve, reject) => {
  const start = performance.now();
  const check = () => {
    let value;
    try { value = predicate(); } catch (error) { reject(error); return; }
    if (value) resolve(value);
    else if (performance.now() - start > timeout) reject(new Error("timed out waiting for " + what));
    else setTimeout(check, 10);
  };
  check();
});
window.ready = true;
</script></body></html>
"""


def open_test_page(page, broker: BrokerProcess) -> None:
    """An empty page on the broker's origin with ``window.mqtt`` = web/mqtt.js.

    The document comes from the broker itself (a page fulfilled by ``page.route`` would count
    as a public address and Chromium's local network access checks would then block the
    WebSocket to 127.0.0.1); its content is replaced by the test page.
    """
    page.goto(broker.url + "mqtt.js")
    page.set_content(TEST_PAGE)
    page.wait_for_function("window.ready === true")


# -- paho, synchronously ------------------------------------------------------------------------


class SyncPaho:
    """A paho-mqtt client for plain (non-reactor) tests."""

    def __init__(
        self,
        port: int,
        client_id: str = "",
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        import queue

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: queue.Queue = queue.Queue()
        self._subacks: queue.Queue = queue.Queue()
        connected: queue.Queue = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.on_message = lambda c, u, msg: self.messages.put(msg)
        self.client.on_subscribe = lambda c, u, mid, codes, props: self._subacks.put(codes)
        self.client.on_connect = lambda c, u, flags, rc, props: connected.put(rc)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert not connected.get(timeout=5).is_failure

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        self.client.subscribe(topic_filter, qos)
        self._subacks.get(timeout=5)

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos, retain).wait_for_publish(5)

    def message(self, timeout: float = 5.0):
        return self.messages.get(timeout=timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def paho():
    made: list[SyncPaho] = []

    def make(
        port: int, client_id: str = "", username: str | None = None, password: str | None = None
    ) -> SyncPaho:
        client = SyncPaho(port, client_id, username, password)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


# -- a broker that wants a user name: a Playwright WebSocket route in front of the real one ----


class AuthGate:
    """Answers an anonymous (or wrongly authenticated) CONNECT with CONNACK ``refuse_code``;
    a CONNECT with the right user name and password goes on to the real broker, and so does
    everything after it. Install with ``page.route_web_socket("**/mqtt", gate)``."""

    def __init__(self, username: str, password: bytes, refuse_code: int = 5) -> None:
        self.username = username
        self.password = password
        self.refuse_code = refuse_code
        self.connects: list = []  # every CONNECT seen: mqtt_twisted.packets.Connect

    def __call__(self, ws) -> None:
        from mqtt_twisted.packets import ConnAck, Parser, encode

        parser = Parser()
        state = {"server": None}

        def on_message(data) -> None:
            if state["server"] is not None:
                state["server"].send(data)
                return
            parser.feed(data if isinstance(data, bytes) else data.encode())
            packet = parser.next_packet()
            if packet is None:
                return
            self.connects.append(packet)
            if packet.username == self.username and packet.password == self.password:
                state["server"] = ws.connect_to_server()
                state["server"].send(data)
            else:
                ws.send(encode(ConnAck(False, self.refuse_code), 4))
                ws.close()

        ws.on_message(on_message)
