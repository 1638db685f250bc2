"""The dashboard against a broker that authenticates and authorises for real: ``twistd mqtt``
with a Mosquitto password file (written by ``mqtt-twisted-passwd``), an ACL file and
``--allow-anonymous no``, in real headless Chromium. No fake in front of the broker: the
refusals, the $SYS figures and the filtered deliveries all come from the broker itself."""

from __future__ import annotations

import queue
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mqtt_twisted import __version__

from .browser import (  # noqa: F401  (pytest fixtures)
    broker_process,
    chromium,
    page,
    paho,
    wait_for_state,
)

PASSWD = Path(sys.executable).parent / "mqtt-twisted-passwd"

USERS = {
    "alice": "alice's secret",
    "bob": "bob's secret",
    "carol": "carol's secret",
}

# alice reads a/# only (and $SYS, which every client may read unless denied); bob may read and
# write everything; carol may read c/# but not $SYS.
ACL = """\
user alice
topic read a/#

user bob
topic readwrite #

user carol
topic read c/#
topic deny $SYS/#
"""

FIGURES = (
    "clients-connected",
    "clients-total",
    "rate-in",
    "rate-out",
    "messages-received",
    "bytes-received",
    "retained",
    "subscriptions",
    "uptime",
)


@pytest.fixture
def secured(broker_process, tmp_path):
    """A broker with a real password file, an ACL file and no anonymous clients."""
    passwords = tmp_path / "passwords"
    for i, (user, password) in enumerate(USERS.items()):
        create = ["-c"] if i == 0 else []
        subprocess.run(
            [str(PASSWD), *create, "-b", str(passwords), user, password],
            check=True,
            timeout=30,
            capture_output=True,
        )
    assert sorted(line.split(":")[0] for line in passwords.read_text().splitlines()) == sorted(
        USERS
    )
    acl = tmp_path / "acl"
    acl.write_text(ACL)
    return broker_process(
        "--sys-interval",
        "1",
        "--password-file",
        str(passwords),
        "--acl-file",
        str(acl),
        "--allow-anonymous",
        "no",
    )


def sign_in(page, username: str, password: str) -> None:
    page.fill("#login-username", username)
    page.fill("#login-password", password)
    page.click("#login-form button")


def open_and_sign_in(page, broker, username: str) -> None:
    page.goto(broker.url)
    wait_for_state(page, "refused")
    sign_in(page, username, USERS[username])
    wait_for_state(page, "connected")


def watch(page, topic_filter: str) -> None:
    page.fill("#watch-filter", topic_filter)
    page.click("#watch-button")
    page.wait_for_function("document.getElementById('watch-info').dataset.subscribed === 'true'")


def shown_topics(page) -> list[str]:
    return page.eval_on_selector_all("#messages li", "items => items.map(li => li.dataset.topic)")


def figures(page) -> dict[str, str]:
    return {name: page.inner_text(f"#{name}") for name in FIGURES}


def test_anonymous_refused_wrong_password_refused_then_alice_sees_live_figures(page, secured):
    page.goto(secured.url)
    # the broker refuses the page's anonymous CONNECT (CONNACK 5) after its failure delay
    wait_for_state(page, "refused")
    assert page.inner_text("#status-text") == "refused: not authorized"
    assert page.is_visible("#login")
    assert "anonymous" in page.inner_text("#login-reason")
    assert not page.evaluate("document.getElementById('login-reason').classList.contains('error')")
    assert page.inner_text("#clients-connected") == "–"
    assert page.is_disabled("#publish-button")

    # a wrong password: CONNACK 4, the prompt stays and says why
    sign_in(page, "alice", "not alice's secret")
    page.wait_for_function(
        "document.getElementById('login-reason').classList.contains('error')", timeout=15_000
    )
    wait_for_state(page, "refused")
    assert page.inner_text("#status-text") == "refused: bad user name or password"
    assert (
        page.inner_text("#login-reason") == "The broker refused alice: bad user name or password."
    )
    assert page.is_visible("#login")
    assert page.is_disabled("#publish-button")

    # the right one: connected, prompt gone, live $SYS figures
    page.fill("#login-password", USERS["alice"])
    page.press("#login-password", "Enter")
    wait_for_state(page, "connected", timeout=15_000)
    assert page.inner_text("#status-text") == "connected"
    assert page.is_hidden("#login")
    assert page.input_value("#login-password") == ""
    assert page.is_enabled("#publish-button")
    assert page.evaluate("window.dashboard.client.options.username") == "alice"
    page.wait_for_function("document.getElementById('clients-connected').textContent === '1'")
    page.wait_for_function("document.getElementById('version').textContent !== ''")
    assert page.inner_text("#version") == __version__
    page.wait_for_function("Number(document.getElementById('subscriptions').textContent) >= 1")
    # live: a second batch of $SYS figures arrives and the rates are computed from both
    page.wait_for_function("window.dashboard.sys.history.length >= 2", timeout=10_000)
    assert page.inner_text("#rate-in") != "–"
    assert page.inner_text("#uptime") != "–"
    assert page.is_hidden("#sys-info")  # no "no access to $SYS" note for alice
    assert page.console.errors == []


def test_alice_sees_only_the_messages_her_acl_lets_her_read(page, secured, paho):
    # bob writes anywhere; a bob subscriber shows the hidden messages really are published
    bob = paho(secured.mqtt_port, "bob-pub", "bob", USERS["bob"])
    spy = paho(secured.mqtt_port, "bob-spy", "bob", USERS["bob"])
    spy.subscribe("#", qos=1)
    bob.publish("a/retained", "kept for alice", qos=1, retain=True)
    bob.publish("b/retained", "kept from alice", qos=1, retain=True)

    open_and_sign_in(page, secured, "alice")
    # a filter through which alice may read nothing: SUBACK 0x80, which the page reports
    page.fill("#watch-filter", "b/#")
    page.click("#watch-button")
    page.wait_for_function(
        "document.getElementById('watch-info').textContent"
        " === 'The broker refused the subscription to b/#.'"
    )
    # the widest filter is granted, but the broker delivers only what alice may read
    watch(page, "#")
    page.wait_for_function("document.querySelectorAll('#messages li').length >= 1")
    bob.publish("b/hidden", "secret", qos=1)
    bob.publish("a/visible", "hello alice", qos=1)
    bob.publish("b/hidden", "secret again", qos=1)
    bob.publish("a/last", "done", qos=1)  # in order after everything above
    page.wait_for_function(
        "[...document.querySelectorAll('#messages li')].some(li => li.dataset.topic === 'a/last')"
    )
    assert shown_topics(page) == ["a/last", "a/visible", "a/retained"]
    assert page.eval_on_selector_all(
        "#messages li .payload", "cells => cells.map(c => c.textContent)"
    ) == ["done", "hello alice", "kept for alice"]
    assert page.inner_text("#messages li:last-child .retain") == "retained"
    # the hidden ones did reach a client allowed to read them
    expected = {"b/retained", "b/hidden", "a/visible", "a/last"}
    seen = set()
    deadline = time.monotonic() + 10
    while not expected <= seen and time.monotonic() < deadline:
        try:
            seen.add(spy.message(timeout=max(0.1, deadline - time.monotonic())).topic)
        except queue.Empty:
            break
    assert expected <= seen
    # nothing arrives late either
    page.wait_for_timeout(300)
    assert shown_topics(page) == ["a/last", "a/visible", "a/retained"]
    assert page.evaluate("window.dashboard.messageCount") == 3
    assert page.console.errors == []


def test_a_user_denied_sys_sees_no_broker_figures_and_is_told_why(page, secured, paho):
    open_and_sign_in(page, secured, "carol")
    # the SUBACK for $SYS/broker/# is 0x80: the page says so instead of "waiting"
    page.wait_for_selector("#sys-info", state="visible")
    assert (
        page.inner_text("#sys-info")
        == "The broker does not let carol read $SYS/broker/#: no broker figures to show."
    )
    assert page.evaluate("window.dashboard.chart.emptyText") == "no access to $SYS/broker/#"
    # bob may read $SYS: once he has had two batches, carol's page would have had them too
    bob = paho(secured.mqtt_port, "bob-sys", "bob", USERS["bob"])
    bob.subscribe("$SYS/broker/uptime", qos=0)
    bob.message(timeout=5)
    bob.message(timeout=5)
    page.wait_for_timeout(300)
    assert set(figures(page).values()) == {"–"}
    assert page.inner_text("#version") == ""
    assert page.evaluate("window.dashboard.sys.history.length") == 0
    # she is connected all the same, and her own topics work
    assert page.inner_text("#status-text") == "connected"
    watch(page, "c/#")
    bob.publish("c/note", "for carol", qos=1)
    page.wait_for_function("document.querySelectorAll('#messages li').length === 1")
    assert shown_topics(page) == ["c/note"]
    assert page.console.errors == []
