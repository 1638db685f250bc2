"""One broker, four transports: messages cross between TCP, TLS, WebSocket and WSS clients.

The listeners are built by hand the way ``makeService`` builds them (``tls.server_endpoint`` +
``MQTTFactory`` / ``web.build_site``), see ``transports.listen``.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from .transports import certificates, listen, tclients  # noqa: F401

OTHERS = ["tls", "ws", "wss"]


def make_client(tclients, served, certs, kind: str, client_id: str):
    kwargs = {}
    if kind in ("tls", "wss"):
        kwargs["tls"] = {"ca_certs": certs.ca}
    if kind in ("ws", "wss"):
        kwargs["transport"] = "websockets"
    return tclients(served.ports[kind], client_id=client_id, **kwargs)


@pytest_twisted.ensureDeferred
async def test_tcp_publisher_reaches_tls_ws_and_wss_subscribers(listen, tclients, certificates):
    served = await listen(certificates)
    subscribers = {}
    for kind in OTHERS:
        sub = make_client(tclients, served, certificates, kind, f"sub-{kind}")
        await sub.connect()
        assert await sub.subscribe("cross/#", qos=1) == [1]
        subscribers[kind] = sub
    pub = make_client(tclients, served, certificates, "tcp", "pub-tcp")
    await pub.connect()
    await pub.publish("cross/from-tcp", b"to everyone", qos=1)
    for kind, sub in subscribers.items():
        message = await sub.message()
        assert (message.topic, message.payload, message.qos) == (
            "cross/from-tcp",
            b"to everyone",
            1,
        ), kind


@pytest.mark.parametrize("kind", OTHERS)
@pytest_twisted.ensureDeferred
async def test_publisher_reaches_tcp_subscriber(listen, tclients, certificates, kind):
    served = await listen(certificates)
    sub = make_client(tclients, served, certificates, "tcp", "sub-tcp")
    await sub.connect()
    await sub.subscribe("cross/#", qos=2)
    pub = make_client(tclients, served, certificates, kind, f"pub-{kind}")
    await pub.connect()
    for qos in (0, 1, 2):
        await pub.publish(f"cross/from-{kind}", f"qos {qos}".encode(), qos=qos)
        message = await sub.message()
        assert (message.topic, message.payload, message.qos) == (
            f"cross/from-{kind}",
            f"qos {qos}".encode(),
            qos,
        )
    assert sub.messages.empty()
