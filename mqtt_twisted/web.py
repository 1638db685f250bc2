"""The broker's HTTP site: ``/mqtt`` (MQTT over WebSocket) and ``/`` (the dashboard)."""

from __future__ import annotations

from collections.abc import Sequence

from autobahn.twisted.resource import WebSocketResource
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from mqtt_twisted import __version__
from mqtt_twisted.broker import Broker
from mqtt_twisted.dashboard import dashboard_resource
from mqtt_twisted.metrics import metrics_resource
from mqtt_twisted.websocket import MQTTWebSocketFactory

INDEX_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mqtt-twisted</title>
<link rel="icon" href="data:,"></head>
<body><h1>mqtt-twisted {version}</h1>
<p>An MQTT broker. Browser apps connect with MQTT over WebSocket at <code>/mqtt</code> on this
host (subprotocol <code>mqtt</code>); other clients use the MQTT listeners.</p></body></html>
"""


def build_site(
    broker: Broker,
    listener: str,
    allowed_origins: Sequence[str] = (),
    use_identity_as_username: bool = False,
) -> Site:
    """A ``Site`` whose ``/mqtt`` feeds WebSocket connections to ``broker``."""
    root: Resource | None = dashboard_resource()  # web/: index.html and its modules at "/"
    if root is None:  # the static files are not installed: a placeholder page
        root = Resource()
        root.putChild(
            b"", Data(INDEX_PAGE.format(version=__version__).encode(), "text/html; charset=utf-8")
        )
    websocket = MQTTWebSocketFactory(broker, listener, allowed_origins, use_identity_as_username)
    root.putChild(b"mqtt", WebSocketResource(websocket))
    root.putChild(b"metrics", metrics_resource(broker))
    site = Site(root)
    site.noisy = False
    return site
