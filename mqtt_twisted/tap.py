"""``twistd mqtt``: command-line options and the service that wires listeners to one broker."""

from __future__ import annotations

import gc
import re
import signal
import sys
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.logger import ILogObserver, Logger
from twisted.python import usage
from twisted.python.failure import Failure

from mqtt_twisted import __version__
from mqtt_twisted.acl import Acl, AclFileError, load_acl_file
from mqtt_twisted.auth import Security
from mqtt_twisted.broker import Broker, BrokerConfig
from mqtt_twisted.broker.systopics import SysTopics
from mqtt_twisted.cluster.service import CLUSTER_OPTIONS, cluster_service
from mqtt_twisted.exposure import exposure_error
from mqtt_twisted.logs import JSONLineObserver
from mqtt_twisted.packets.speedups import parser_implementation
from mqtt_twisted.passwords import PasswordFileChecker, PasswordFileError
from mqtt_twisted.protocol import MQTTFactory
from mqtt_twisted.storeservice import open_store_service
from mqtt_twisted.tls import TLSConfigError, TLSSettings, is_tls, server_endpoint

log = Logger()

DEFAULT_MQTT_LISTENER = "tcp:1883:interface=127.0.0.1"
DEFAULT_HTTP_LISTENER = "tcp:8080:interface=127.0.0.1"

#: Mosquitto's duration units (``persistent_client_expiration``), plus seconds
DURATION_UNITS = {"s": 1, "h": 3600, "d": 86400, "w": 7 * 86400, "m": 30 * 86400, "y": 365 * 86400}


def parse_duration(text: str) -> float:
    """``"2h"`` -> 7200.0; units as in mosquitto.conf: h, d, w, m (30 days), y (365 days), and s."""
    match = re.fullmatch(r"\s*(\d+)\s*([shdwmy])\s*", text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 2h, 14d, 1w, 1m, 1y or 30s")
    number, unit = match.groups()
    if int(number) <= 0:
        raise ValueError(f"{text!r}: a duration must be positive")
    return float(int(number) * DURATION_UNITS[unit])


def yes_no(text: str) -> bool:
    """Parse ``yes``/``no`` (also true/false, on/off, 1/0)."""
    value = text.strip().lower()
    if value in ("yes", "true", "on", "1"):
        return True
    if value in ("no", "false", "off", "0"):
        return False
    raise ValueError(f"expected yes or no, not {text!r}")


def _bounded_int(low: int, high: int | None = None):
    def coerce(text: str) -> int:
        value = int(text)
        if value < low or (high is not None and value > high):
            upper = "" if high is None else f" and {high}"
            raise ValueError(f"{value} is not between {low}{upper}")
        return value

    coerce.coerceDoc = (  # type: ignore[attr-defined]  # read by usage.Options
        f"(an integer >= {low}" + (")" if high is None else f", <= {high})")
    )
    return coerce


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError(f"{text} must not be negative")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise ValueError(f"{text} must be positive")
    return value


DEFAULT_STORE = "sqlite:mqtt-twisted.sqlite"


class Options(usage.Options):
    """Options of ``twistd mqtt``; names follow mosquitto.conf where one exists."""

    synopsis = "[options]"
    longdesc = (
        "Run the mqtt-twisted MQTT broker. Every option has a default, so "
        "`twistd -n mqtt` serves MQTT on tcp:1883 on 127.0.0.1."
    )
    optParameters = [
        [
            "store",
            None,
            DEFAULT_STORE,
            "Where sessions, queued messages and retained messages are kept across restarts: "
            "sqlite:PATH (relative to the working directory) or memory (nothing is kept).",
        ],
        [
            "store-sync",
            None,
            "full",
            "full|normal: SQLite's synchronous setting; full survives power loss, normal only "
            "a crash of the broker (it may lose the last commits on power loss).",
            lambda text: {"full": "full", "normal": "normal"}[text.lower()],
        ],
        [
            "store-commit-window",
            None,
            0.001,
            "Seconds a batch holding a message in flight to a connected persistent session "
            "collects before it is committed (others are committed on the next turn): "
            "acknowledged within it, the message is never written; PUBACKs waiting for that "
            "batch wait that much longer (0 = never wait).",
            _non_negative_float,
        ],
        [
            "store-recover",
            None,
            "fail",
            "fail|move-aside: what to do with a store file that is corrupt or not ours; "
            "move-aside renames it to PATH.corrupt-TIME and starts empty.",
            lambda text: {"fail": "fail", "move-aside": "move-aside"}[text.lower()],
        ],
        [
            "max-keepalive",
            None,
            65535,
            "Largest keep alive (seconds) a client may ask for; 3.1/3.1.1 clients asking more are refused.",
            _bounded_int(0, 65535),
        ],
        [
            "max-inflight-messages",
            None,
            20,
            "Unacknowledged QoS 1/2 messages per client (0 = no limit).",
            _bounded_int(0, 65535),
        ],
        [
            "max-queued-messages",
            None,
            1000,
            "Messages queued per client: a connected client whose queue is full holds its "
            "publishers back, for --slow-client-grace seconds at most; then, and for offline "
            "clients, messages beyond it are dropped (0 = no limit; holds at 1000).",
            _bounded_int(0),
        ],
        [
            "max-queued-bytes",
            None,
            64 * 1024 * 1024,
            "Payload bytes queued per client, a limit beside --max-queued-messages (0 = none).",
            _bounded_int(0),
        ],
        [
            "slow-client-grace",
            None,
            5.0,
            "Seconds a subscriber with a full queue may hold its publishers back before it "
            "counts as slow and messages beyond its queue are dropped (0 = drop at once).",
            _non_negative_float,
        ],
        [
            "max-packet-size",
            None,
            2_000_000,
            "Largest packet (bytes) a client may send.",
            _bounded_int(20, 268_435_460),
        ],
        ["max-qos", None, 2, "Highest QoS granted and accepted.", _bounded_int(0, 2)],
        [
            "retain-available",
            None,
            "yes",
            "yes|no: whether retained messages are supported.",
            yes_no,
        ],
        [
            "allow-zero-length-clientid",
            None,
            "yes",
            "yes|no: whether clients may connect with an empty client id.",
            yes_no,
        ],
        [
            "connect-timeout",
            None,
            10.0,
            "Seconds a connection may stay open without sending CONNECT.",
            _positive_float,
        ],
        [
            "max-topic-alias",
            None,
            10,
            "MQTT 5: topic aliases a client may set (0 = none).",
            _bounded_int(0, 65535),
        ],
        [
            "max-topic-alias-broker",
            None,
            10,
            "MQTT 5: topic aliases the broker assigns to clients that allow them (0 = none).",
            _bounded_int(0, 65535),
        ],
        [
            "response-information",
            None,
            None,
            "MQTT 5: Response Information PREFIX for clients that request it "
            "(they get PREFIX/CLIENT-ID; off by default).",
        ],
        [
            "log-format",
            None,
            "text",
            "text|json: json writes one JSON object per log event (one per line) to standard output.",
            lambda text: {"text": "text", "json": "json"}[text.lower()],
        ],
        [
            "sys-interval",
            None,
            10.0,
            "Seconds between $SYS/broker/... updates (0 = no $SYS topics).",
            float,
        ],
        [
            "password-file",
            None,
            None,
            "Mosquitto password file (user:$7$... lines; mosquitto_passwd or mqtt-twisted-passwd "
            "writes them): clients must give a user name and password from it. Re-read on SIGHUP.",
        ],
        [
            "acl-file",
            None,
            None,
            "Mosquitto ACL file (user / topic / pattern lines) saying who may read and write "
            "which topics. Re-read on SIGHUP.",
        ],
        [
            "max-connections",
            None,
            0,
            "Open client connections at most; beyond it new ones are closed at once (0 = no limit).",
            _bounded_int(0),
        ],
        [
            "max-subscriptions-per-client",
            None,
            10_000,
            "Subscriptions one client may hold; more get SUBACK 0x97 / 0x80 (0 = no limit).",
            _bounded_int(0),
        ],
        [
            "max-connection-rate",
            None,
            0,
            "New connections per second from one address; beyond it they are closed at once "
            "(0 = no limit).",
            _bounded_int(0),
        ],
        [
            "message-size-limit",
            None,
            0,
            "Largest PUBLISH payload (bytes) accepted; larger ones are refused (0 = only "
            "--max-packet-size applies).",
            _bounded_int(0),
        ],
        [
            "persistent-client-expiration",
            None,
            None,
            "Remove persistent sessions of clients away this long (e.g. 2h, 14d, 1w, 1m, 1y; "
            "off by default).",
            parse_duration,
        ],
        *CLUSTER_OPTIONS,
    ]

    optFlags = [
        [
            "require-certificate",
            None,
            "TLS listeners refuse clients without a valid certificate (needs --cafile).",
        ],
        [
            "use-identity-as-username",
            None,
            "On TLS listeners the client certificate's subject CN is the MQTT username.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["allow-anonymous"] = None
        self["mqtt"] = []
        self["http"] = []
        self["ws-origin"] = []

    def opt_http(self, endpoint: str) -> None:
        """HTTP listener (MQTT over WebSocket at /mqtt, the dashboard at /): an endpoint string, repeatable; ssl:... gives HTTPS/WSS; "none" for no HTTP listener (default tcp:8080:interface=127.0.0.1)."""
        self["http"].append(endpoint)

    def opt_ws_origin(self, origin: str) -> None:
        """Allowed Origin for browser WebSocket handshakes, repeatable (default: any)."""
        self["ws-origin"].append(origin)

    def opt_cafile(self, path: str) -> None:
        """PEM file of the CAs that client certificates on TLS listeners must chain to."""
        self["cafile"] = path

    def opt_mqtt(self, endpoint: str) -> None:
        """Listener for MQTT over a stream: a Twisted server endpoint string, repeatable (default tcp:1883:interface=127.0.0.1)."""
        self["mqtt"].append(endpoint)

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"mqtt-twisted {__version__}")
        raise SystemExit(0)

    def postOptions(self) -> None:
        for key in ("retain-available", "allow-zero-length-clientid"):
            if isinstance(self[key], str):  # the default, given as text for --help
                self[key] = yes_no(self[key])
        if self["sys-interval"] < 0:
            raise usage.UsageError("--sys-interval must be 0 (off) or a positive number of seconds")
        if self["cluster"] is not None and self["store"] != DEFAULT_STORE:
            raise usage.UsageError("--store does not apply with --cluster: sessions are in Redis")
        if not self["mqtt"]:
            self["mqtt"] = [DEFAULT_MQTT_LISTENER]
        if not self["http"]:
            self["http"] = [DEFAULT_HTTP_LISTENER]
        self["http"] = [d for d in self["http"] if d.lower() != "none"]
        self.setdefault("cafile", None)
        settings = self.tls_settings()
        for option in ("mqtt", "http"):
            for description in self[option]:
                try:  # builds TLS options now: bad certificate files fail here, in one line
                    server_endpoint(None, description, settings)
                except TLSConfigError as error:
                    raise usage.UsageError(f"--{option} {description}: {error}") from None
                except Exception as error:
                    raise usage.UsageError(
                        f"bad --{option} endpoint {description!r}: {error}"
                    ) from None
        explicit_yes = self["allow-anonymous"] is True  # None until --allow-anonymous
        if self["allow-anonymous"] is None:
            self["allow-anonymous"] = self["password-file"] is None
        self["security"] = self._security_files()
        listeners = [("mqtt", d) for d in self["mqtt"]] + [("http", d) for d in self["http"]]
        problem = exposure_error(
            listeners,
            self["password-file"] is not None,
            explicit_yes,
            settings.require_certificate,
            is_tls,
        )
        if problem is not None:
            raise usage.UsageError(problem)

    def opt_allow_anonymous(self, value: str) -> None:
        """yes|no: whether clients without a user name may connect (default: yes without --password-file, no with it)."""
        self["allow-anonymous"] = yes_no(value)

    def _security_files(self) -> tuple[PasswordFileChecker | None, Acl | None]:
        """Read the password and ACL files now: a bad one stops start-up in one line."""
        passwords = acl = None
        try:
            if self["password-file"] is not None:
                passwords = PasswordFileChecker(self["password-file"])
            if self["acl-file"] is not None:
                acl = load_acl_file(self["acl-file"])
        except (OSError, PasswordFileError, AclFileError) as error:
            raise usage.UsageError(str(error)) from None
        return passwords, acl

    def tls_settings(self) -> TLSSettings:
        """Client-certificate settings for every TLS listener."""
        try:
            return TLSSettings(
                cafile=self["cafile"],
                require_certificate=bool(self["require-certificate"]),
                use_identity_as_username=bool(self["use-identity-as-username"]),
            )
        except KeyError as error:
            raise usage.UsageError(f"missing option {error}") from None

    def broker_config(self) -> BrokerConfig:
        """The :class:`BrokerConfig` these options describe."""
        return BrokerConfig(
            max_keepalive=self["max-keepalive"],
            max_inflight_messages=self["max-inflight-messages"],
            max_queued_messages=self["max-queued-messages"],
            max_queued_bytes=self["max-queued-bytes"],
            max_connections=self["max-connections"],
            message_size_limit=self["message-size-limit"],
            max_subscriptions_per_client=self["max-subscriptions-per-client"],
            max_connection_rate=self["max-connection-rate"],
            slow_client_grace=self["slow-client-grace"],
            max_packet_size=self["max-packet-size"],
            max_qos=self["max-qos"],
            retain_available=self["retain-available"],
            allow_zero_length_clientid=self["allow-zero-length-clientid"],
            connect_timeout=self["connect-timeout"],
            persistent_client_expiration=self["persistent-client-expiration"],
            max_topic_alias=self["max-topic-alias"],
            max_topic_alias_broker=self["max-topic-alias-broker"],
            response_information=self["response-information"],
        )


class SysTopicsService(Service):
    """Runs the ``$SYS`` publisher while the broker runs."""

    def __init__(self, sys_topics) -> None:
        self.sys_topics = sys_topics

    def startService(self) -> None:
        super().startService()
        self.sys_topics.start()

    def stopService(self):
        super().stopService()
        self.sys_topics.stop()


class ListenerService(Service):
    """Listens on one endpoint string and logs where.

    It binds in ``privilegedStartService`` (before twistd drops privileges); a listener
    that cannot bind ends start-up with one log line and exit status 1.
    """

    def __init__(self, reactor, description: str, factory, endpoint) -> None:
        self.reactor = reactor
        self.description = description
        self.factory = factory
        self.endpoint = endpoint
        self.port = None
        self._listening_deferred: Deferred | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        failures: list[Failure] = []
        listening = self._listening_deferred = self.endpoint.listen(self.factory)
        listening.addCallbacks(self._listening, failures.append)
        if failures:  # failed at once (port in use, bad address): stop before the reactor runs
            self._log_failure(failures[0])
            raise SystemExit(1)
        listening.addErrback(self._failed)

    def startService(self) -> None:
        if self._listening_deferred is None:
            self.privilegedStartService()
        super().startService()

    def _listening(self, port) -> None:
        self.port = port
        address = port.getHost()
        log.info(
            "listener {description} listening on {host}:{port}",
            description=self.description,
            host=getattr(address, "host", address),
            port=getattr(address, "port", ""),
        )

    def _log_failure(self, failure) -> None:
        log.critical(
            "cannot listen on {description}: {error}",
            description=self.description,
            error=failure.getErrorMessage(),
        )

    def _failed(self, failure) -> None:
        self._log_failure(failure)
        if self.reactor.running:
            self.reactor.stop()
        else:
            self.reactor.callWhenRunning(self.reactor.stop)

    def stopService(self):
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


class ReloadOnHangup(Service):
    """SIGHUP re-reads the password and ACL files, without dropping connections."""

    def __init__(self, reload: Callable[[], None]) -> None:
        self.reload = reload
        self._previous: Any = None

    def startService(self) -> None:
        super().startService()
        self._previous = signal.signal(signal.SIGHUP, self._hangup)

    def stopService(self):
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None
        return super().stopService()

    def _hangup(self, signum: int, frame: Any) -> None:
        from twisted.internet import reactor

        log.info("SIGHUP: reloading the password and ACL files")
        reactor.callFromThread(self.reload)  # type: ignore[attr-defined]


class BrokerService(MultiService):
    """The broker's top service; with ``--log-format json`` it gives twistd a JSON log observer."""

    broker: Broker
    log_observer: ILogObserver | None = None

    def startService(self) -> None:
        # Long-lived objects made at start-up leave the collector's view, and young
        # collections run less often: measured +10-15% messages/s (bench/).
        gc.freeze()
        gc.set_threshold(100_000, 50, 1000)
        super().startService()

    def stopService(self):
        # Clients first (DISCONNECT 0x8B to 5.0 clients), then the listeners.
        self.broker.shutdown()
        return super().stopService()

    def setServiceParent(self, parent):
        # twistd's AppLogger uses the application's ILogObserver component when it has one.
        if self.log_observer is not None and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self.log_observer)
        return super().setServiceParent(parent)


def makeService(options: Options, reactor=None) -> MultiService:
    """One broker; one listener service per ``--mqtt`` and ``--http`` endpoint."""
    from mqtt_twisted.web import build_site  # autobahn is imported only when a service is made

    if reactor is None:
        from twisted.internet import reactor
    passwords, acl = options["security"]
    security = Security(
        reactor,
        allow_anonymous=options["allow-anonymous"],
        passwords=passwords,
        acl=acl,
        acl_path=options["acl-file"],
    )
    config = options.broker_config()
    store = None
    if options["cluster"] is None:  # a cluster keeps sessions in its Redis
        store = open_store_service(
            options["store"],
            options["store-sync"],
            options["store-recover"],
            reactor,
            options["store-commit-window"],
        )
    broker = Broker(reactor, config, hooks=security, journal=store.journal if store else None)
    settings = options.tls_settings()
    service = BrokerService()
    service.broker = broker
    if store is not None:
        store.load_into(broker)  # before any listener opens
        store.setServiceParent(service)  # first in, stops last: after every client is closed
    cluster = cluster_service(options, broker, reactor)
    if cluster is not None:
        cluster.setServiceParent(service)  # leaves the cluster once every client is closed
    if options["log-format"] == "json":
        service.log_observer = JSONLineObserver(sys.stdout)
    for description in options["mqtt"]:
        identity = settings.use_identity_as_username and is_tls(description)
        factory = MQTTFactory(broker, description, identity)
        endpoint = server_endpoint(reactor, description, settings)
        ListenerService(reactor, description, factory, endpoint).setServiceParent(service)
    for description in options["http"]:
        identity = settings.use_identity_as_username and is_tls(description)
        site = build_site(broker, description, options["ws-origin"], identity)
        endpoint = server_endpoint(reactor, description, settings)
        ListenerService(reactor, description, site, endpoint).setServiceParent(service)
    if options["sys-interval"] > 0:
        SysTopicsService(SysTopics(broker, options["sys-interval"])).setServiceParent(service)
    ReloadOnHangup(security.reload).setServiceParent(service)
    log.info(
        "mqtt-twisted {version} starting (packet parser: {parser})",
        version=__version__,
        parser=parser_implementation(),
    )
    return service
