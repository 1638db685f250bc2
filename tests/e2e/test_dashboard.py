"""The browser dashboard at ``/``, in real headless Chromium, against the broker run by
``twistd``: live $SYS figures, the topic watcher, the publish form, reconnecting after a
broker restart, the sign-in prompt, and a layout that fits a phone."""

from __future__ import annotations

import os
import re
import shutil

import pytest

from mqtt_twisted import __version__

from .browser import (  # noqa: F401  (pytest fixtures)
    REPO,
    AuthGate,
    broker_process,
    chromium,
    page,
    paho,  # noqa: F401
    wait_for_state,
)

#: Chromium's own console line for a WebSocket that cannot connect (the broker is down)
WEBSOCKET_FAILED = re.compile(r"WebSocket connection to 'ws://[^']+/mqtt' failed")


@pytest.fixture
def broker(broker_process):
    return broker_process("--sys-interval", "1")


def open_dashboard(page, broker) -> None:
    page.goto(broker.url)
    wait_for_state(page, "connected")


def watch(page, topic_filter: str) -> None:
    page.fill("#watch-filter", topic_filter)
    page.click("#watch-button")
    page.wait_for_function("document.getElementById('watch-info').dataset.subscribed === 'true'")


def rows(page) -> list[dict]:
    return page.eval_on_selector_all(
        "#messages li",
        """items => items.map(li => ({
        topic: li.querySelector('.topic').textContent,
        qos: li.querySelector('.qos').textContent,
        retain: li.querySelector('.retain').textContent,
        payload: li.querySelector('.payload').textContent,
        hex: li.querySelector('.payload').classList.contains('hex'),
    }))""",
    )


def test_page_loads_connects_and_shows_live_broker_figures(page, broker, paho):
    other = paho(broker.mqtt_port, "figures-paho")
    other.subscribe("figures/#", qos=1)
    open_dashboard(page, broker)
    assert page.title() == "mqtt-twisted dashboard"
    assert page.inner_text("#status-text") == "connected"
    # $SYS/broker/clients/connected: the page itself and the paho client
    page.wait_for_function("document.getElementById('clients-connected').textContent === '2'")
    page.wait_for_function("document.getElementById('version').textContent !== ''")
    assert page.inner_text("#version") == __version__
    assert re.fullmatch(r"\d+s|\d+m \d+s", page.inner_text("#uptime"))
    # the page's $SYS/broker/# and paho's figures/# at least
    page.wait_for_function("Number(document.getElementById('subscriptions').textContent) >= 2")
    assert page.inner_text("#retained") != "–"
    assert re.fullmatch(r"\d+(\.\d)? (B|KiB)", page.inner_text("#bytes-received"))
    # message rates: computed from the counters of two $SYS batches, plotted
    for i in range(30):
        other.publish(f"figures/{i}", b"x", qos=0)
    page.wait_for_function("window.dashboard.sys.rates.inRate > 0", timeout=10_000)
    page.wait_for_function("window.dashboard.sys.history.length >= 2", timeout=10_000)
    assert re.fullmatch(r"\d+(\.\d)?", page.inner_text("#rate-in"))
    assert re.fullmatch(r"\d+(\.\d)?", page.inner_text("#rate-out"))
    assert "load (per min, 1/5/15): in " in page.inner_text("#load")
    chart_drawn = page.evaluate("""() => {
        const c = document.getElementById('rate-chart');
        const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let painted = 0;
        for (let i = 3; i < data.length; i += 4) if (data[i] !== 0) painted += 1;
        return { width: c.width, painted };
    }""")
    assert chart_drawn["width"] > 0 and chart_drawn["painted"] > 500
    assert page.console.errors == []


def test_watcher_shows_messages_from_paho_newest_first(page, broker, paho):
    pub = paho(broker.mqtt_port, "watcher-pub")
    pub.publish("plant/door", "open", qos=1, retain=True)
    open_dashboard(page, broker)
    watch(page, "plant/#")
    page.wait_for_function("document.querySelectorAll('#messages li').length === 1")
    pub.publish("plant/pump", "on", qos=1)
    pub.publish("plant/raw", bytes([0, 1, 0xFE, 0xFF]), qos=0)
    pub.publish("elsewhere/x", "not watched", qos=0)
    page.wait_for_function("document.querySelectorAll('#messages li').length === 3")
    assert rows(page) == [
        {"topic": "plant/raw", "qos": "QoS 0", "retain": "", "payload": "00 01 fe ff", "hex": True},
        {"topic": "plant/pump", "qos": "QoS 1", "retain": "", "payload": "on", "hex": False},
        {
            "topic": "plant/door",
            "qos": "QoS 1",
            "retain": "retained",
            "payload": "open",
            "hex": False,
        },
    ]
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3}", page.inner_text("#messages li .time"))
    # the list is capped
    for i in range(205):
        pub.publish(f"plant/many/{i}", str(i), qos=0)
    page.wait_for_function("window.dashboard.messageCount === 3 + 205")
    assert page.eval_on_selector_all("#messages li", "items => items.length") == 200
    assert rows(page)[0]["payload"] == "204"
    # another filter replaces the first; Clear empties the list
    page.click("#watch-clear")
    watch(page, "garden/+")
    pub.publish("plant/pump", "off", qos=0)
    pub.publish("garden/hose", "on", qos=0)
    page.wait_for_function("document.querySelectorAll('#messages li').length === 1")
    assert [r["topic"] for r in rows(page)] == ["garden/hose"]
    assert page.console.errors == []


def test_publish_form_reaches_a_paho_subscriber(page, broker, paho):
    sub = paho(broker.mqtt_port, "form-sub")
    sub.subscribe("lights/#", qos=1)
    open_dashboard(page, broker)
    page.fill("#publish-topic", "lights/kitchen")
    page.fill("#publish-payload", "on ✓")
    page.select_option("#publish-qos", "1")
    page.check("#publish-retain")
    page.click("#publish-button")
    message = sub.message()
    assert (message.topic, message.payload.decode(), message.qos) == ("lights/kitchen", "on ✓", 1)
    page.wait_for_function(
        "document.getElementById('publish-result').textContent.includes('PUBACK')"
    )
    # retained: a later subscriber gets it with the retain flag
    late = paho(broker.mqtt_port, "form-late")
    late.subscribe("lights/kitchen", qos=0)
    retained = late.message()
    assert (retained.payload.decode(), retained.retain) == ("on ✓", True)
    # QoS 0
    page.fill("#publish-topic", "lights/hall")
    page.fill("#publish-payload", "off")
    page.select_option("#publish-qos", "0")
    page.uncheck("#publish-retain")
    page.click("#publish-button")
    message = sub.message()
    assert (message.topic, message.payload, message.qos, message.retain) == (
        "lights/hall",
        b"off",
        0,
        False,
    )
    page.wait_for_function(
        "document.getElementById('publish-result').textContent.includes('QoS 0')"
    )
    # a topic with a wildcard is refused by the page, not sent
    page.fill("#publish-topic", "lights/#")
    page.click("#publish-button")
    page.wait_for_function(
        "document.getElementById('publish-result').textContent.startsWith('Not published')"
    )
    assert page.console.errors == []


def test_page_reconnects_after_the_broker_restarts(page, broker, paho):
    open_dashboard(page, broker)
    watch(page, "after/#")
    assert page.console.errors == []
    broker.stop()
    wait_for_state(page, "reconnecting")
    assert page.inner_text("#status-text").startswith("reconnecting")
    assert page.is_disabled("#publish-button")
    broker.start()  # same ports
    wait_for_state(page, "connected", timeout=20_000)
    # the watcher subscribed again on the new connection
    pub = paho(broker.mqtt_port, "after-pub")
    pub.publish("after/restart", "back", qos=1)
    page.wait_for_function("document.querySelectorAll('#messages li').length === 1")
    assert rows(page)[0]["payload"] == "back"
    assert page.is_enabled("#publish-button")
    # while the broker was away Chromium logs the failed WebSocket attempts; nothing else
    assert [e for e in page.console.errors if not WEBSOCKET_FAILED.search(e)] == []


def test_sign_in_prompt_when_the_broker_refuses_anonymous_clients(page, broker):
    gate = AuthGate("operator", b"correct horse", refuse_code=5)
    page.route_web_socket("**/mqtt", gate)
    page.goto(broker.url)
    wait_for_state(page, "refused")
    assert page.inner_text("#status-text") == "refused: not authorized"
    assert page.is_visible("#login")
    assert "anonymous" in page.inner_text("#login-reason")
    page.fill("#login-username", "operator")
    page.fill("#login-password", "wrong")
    page.click("#login-form button")
    page.wait_for_function("document.getElementById('login-reason').classList.contains('error')")
    assert "operator" in page.inner_text("#login-reason")
    assert page.is_visible("#login")
    page.fill("#login-password", "correct horse")
    page.press("#login-password", "Enter")
    wait_for_state(page, "connected")
    assert page.is_hidden("#login")
    assert page.input_value("#login-password") == ""
    page.wait_for_function("document.getElementById('clients-connected').textContent === '1'")
    assert [(c.username, c.password) for c in gate.connects] == [
        (None, None),
        ("operator", b"wrong"),
        ("operator", b"correct horse"),
    ]
    assert page.console.errors == []


def test_bad_user_name_or_password_also_prompts(page, broker):
    page.route_web_socket("**/mqtt", AuthGate("u", b"p", refuse_code=4))
    page.goto(broker.url)
    wait_for_state(page, "refused")
    assert page.inner_text("#status-text") == "refused: bad user name or password"
    assert page.is_visible("#login")


@pytest.mark.parametrize("width, height", [(390, 844), (768, 1024), (1280, 800)])
def test_layout_fits_phones_tablets_and_laptops(page, broker, width, height):
    page.set_viewport_size({"width": width, "height": height})
    open_dashboard(page, broker)
    page.wait_for_function("document.getElementById('clients-connected').textContent === '1'")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    for selector in ("#overview", "#watch", "#publish", "#status"):
        box = page.locator(selector).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= width, selector
    if width < 600:  # one column on a phone
        boxes = [page.locator(s).bounding_box() for s in ("#overview", "#publish", "#watch")]
        assert boxes[0]["y"] < boxes[1]["y"] < boxes[2]["y"]
        assert all(abs(b["x"] - boxes[0]["x"]) < 1 for b in boxes)
    assert page.console.errors == []


def test_screenshot(page, broker, paho, tmp_path):
    """A screenshot with some traffic in tmp_path/dashboard.png; with UPDATE_DOCS_SCREENSHOT=1
    it is also copied to docs/dashboard.png (the README's picture)."""
    pub = paho(broker.mqtt_port, "kitchen-sensor")
    pub.publish("sensors/kitchen/temperature", "21.5", qos=1, retain=True)
    pub.publish("status/door", "closed", qos=1, retain=True)
    open_dashboard(page, broker)
    watch(page, "#")
    page.fill("#publish-topic", "lights/kitchen")
    page.fill("#publish-payload", "on")
    page.click("#publish-button")
    for i in range(6):
        pub.publish("sensors/kitchen/temperature", f"{21.5 + i / 10:.1f}", qos=1)
        pub.publish("sensors/hall/humidity", f"{48 + i}", qos=0)
        page.wait_for_timeout(250)
    pub.publish("cameras/door/snapshot", bytes(range(0, 256, 17)), qos=0)
    page.wait_for_function("window.dashboard.sys.history.length >= 3", timeout=15_000)
    page.wait_for_function("document.getElementById('clients-connected').textContent === '2'")
    page.wait_for_timeout(200)
    path = tmp_path / "dashboard.png"
    page.screenshot(path=str(path))
    assert path.stat().st_size > 10_000
    if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
        docs = REPO / "docs"
        docs.mkdir(exist_ok=True)
        shutil.copyfile(path, docs / "dashboard.png")
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(tmp_path / "dashboard-phone.png"), full_page=True)
    assert page.console.errors == []
