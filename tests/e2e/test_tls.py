"""MQTT over TLS: server certificates, TLS versions, client certificates (Mosquitto's
``cafile`` / ``require_certificate`` / ``use_identity_as_username``) and start-up errors.

Brokers start through ``tap.Options`` + ``makeService`` on port 0 (see ``transports.serve``).
"""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread
from twisted.python import usage

from mqtt_twisted.tap import Options

from .mqttclient import connect_packet, get, no_reconnect
from .transports import (  # noqa: F401  (pytest fixtures)
    TCP_ENDPOINT,
    certificates,
    client_context,
    serve,  # noqa: F401
    ssl_endpoint,
    tclients,
    tls_exchange,
)

TWISTD = Path(sys.executable).parent / "twistd"
CONNACK_OK = b"\x20\x02\x00\x00"
CONNACK_NOT_AUTHORIZED = b"\x20\x02\x00\x05"


def trusting(certs, **extra) -> dict:
    """paho ``tls_set`` arguments: verify the server against the test CA."""
    return {"ca_certs": certs.ca, **extra}


def with_client_cert(certs) -> dict:
    return trusting(certs, certfile=certs.client_cert, keyfile=certs.client_key)


def with_untrusted_cert(certs) -> dict:
    return trusting(certs, certfile=certs.untrusted_cert, keyfile=certs.untrusted_key)


async def refused_handshake(port: int, context: ssl.SSLContext, alert: str) -> None:
    """Handshake + CONNECT with ``context``: the broker's TLS layer must refuse it with the
    TLS alert ``alert`` (so it is the server refusing, not the client giving up), no CONNACK."""
    try:
        got = await deferToThread(tls_exchange, port, context, connect_packet("refused"))
    except ssl.SSLError as error:
        assert alert in str(error), error
        return
    raise AssertionError(f"handshake accepted, broker answered {got!r}")


# -- server certificate and TLS versions -----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_pub_sub_over_tls_with_verified_server_certificate(serve, tclients, certificates):
    served = serve("--mqtt", ssl_endpoint(certificates))
    port = served.mqtt[0]
    sub = tclients(port, client_id="tls-sub", tls=trusting(certificates))
    await sub.connect()
    assert await sub.subscribe("tls/+", qos=1) == [1]
    pub = tclients(port, client_id="tls-pub", tls=trusting(certificates))
    await pub.connect()
    await pub.publish("tls/hello", b"secret", qos=1)
    message = await sub.message()
    assert (message.topic, message.payload, message.qos) == ("tls/hello", b"secret", 1)
    cipher = sub.client.socket().version()
    assert cipher in ("TLSv1.2", "TLSv1.3")


@pytest_twisted.ensureDeferred
async def test_server_certificate_fails_against_another_ca(serve, certificates):
    """The check above is real: a client trusting only another CA rejects the broker."""
    port = serve("--mqtt", ssl_endpoint(certificates)).mqtt[0]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(certificates.untrusted_ca))
    with pytest.raises(ssl.SSLCertVerificationError):
        await deferToThread(tls_exchange, port, context, connect_packet("x"))


@pytest_twisted.ensureDeferred
async def test_tls_1_1_client_is_refused_tls_1_2_accepted(serve, certificates):
    port = serve("--mqtt", ssl_endpoint(certificates)).mqtt[0]
    old = client_context(
        certificates, minimum_version=ssl.TLSVersion.TLSv1, maximum_version=ssl.TLSVersion.TLSv1_1
    )
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.1 at all
    await refused_handshake(port, old, "ALERT_PROTOCOL_VERSION")
    tls12 = client_context(certificates, maximum_version=ssl.TLSVersion.TLSv1_2)
    assert await deferToThread(tls_exchange, port, tls12, connect_packet("tls12")) == CONNACK_OK


# -- client certificates: cafile + require_certificate --------------------------------------


@pytest.fixture
def require_cert(serve, certificates):
    """A broker whose TLS listener requires a client certificate from the test CA."""
    return serve(
        "--mqtt",
        ssl_endpoint(certificates),
        "--cafile",
        str(certificates.ca),
        "--require-certificate",
    )


@pytest_twisted.ensureDeferred
async def test_required_certificate_good_client_accepted(require_cert, tclients, certificates):
    port = require_cert.mqtt[0]
    sub = tclients(port, client_id="cert-sub", tls=with_client_cert(certificates))
    await sub.connect()
    await sub.subscribe("devices/#", qos=1)
    pub = tclients(port, client_id="cert-pub", tls=with_client_cert(certificates))
    await pub.connect()
    await pub.publish("devices/42", b"up", qos=1)
    assert (await sub.message()).payload == b"up"


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
@pytest_twisted.ensureDeferred
async def test_required_certificate_missing_refused_in_handshake(
    require_cert, certificates, version
):
    context = client_context(certificates, minimum_version=version, maximum_version=version)
    # TLS 1.2 has no "certificate required" alert: OpenSSL sends handshake_failure
    alert = "HANDSHAKE_FAILURE" if version == ssl.TLSVersion.TLSv1_2 else "CERTIFICATE_REQUIRED"
    await refused_handshake(require_cert.mqtt[0], context, alert)
    assert require_cert.broker.sessions == {}


@pytest_twisted.ensureDeferred
async def test_required_certificate_from_untrusted_ca_refused(require_cert, certificates):
    context = client_context(certificates, certificates.untrusted_cert, certificates.untrusted_key)
    await refused_handshake(require_cert.mqtt[0], context, "ALERT_UNKNOWN_CA")
    assert require_cert.broker.sessions == {}


@pytest_twisted.ensureDeferred
async def test_paho_without_certificate_cannot_connect_when_required(
    require_cert, tclients, certificates
):
    client = tclients(require_cert.mqtt[0], client_id="no-cert", tls=trusting(certificates))
    no_reconnect(client)
    try:
        await deferToThread(client.client.connect, "127.0.0.1", require_cert.mqtt[0], 60)
    except (ssl.SSLError, OSError):
        pass  # TLS 1.2: the handshake itself fails
    else:  # TLS 1.3: the alert arrives after the client's side of the handshake
        client.client.loop_start()
        await get(client.disconnects)
    assert client.connacks.empty()
    assert require_cert.broker.sessions == {}


# -- cafile without require_certificate ------------------------------------------------------


@pytest.fixture
def optional_cert(serve, certificates):
    return serve("--mqtt", ssl_endpoint(certificates), "--cafile", str(certificates.ca))


@pytest_twisted.ensureDeferred
async def test_optional_certificate_none_accepted(optional_cert, tclients, certificates):
    client = tclients(optional_cert.mqtt[0], client_id="anonymous-tls", tls=trusting(certificates))
    await client.connect()
    assert "anonymous-tls" in optional_cert.broker.sessions


@pytest_twisted.ensureDeferred
async def test_optional_certificate_good_one_accepted(optional_cert, tclients, certificates):
    client = tclients(
        optional_cert.mqtt[0], client_id="good-tls", tls=with_client_cert(certificates)
    )
    await client.connect()
    assert "good-tls" in optional_cert.broker.sessions


@pytest_twisted.ensureDeferred
async def test_optional_certificate_untrusted_one_refused(optional_cert, certificates):
    context = client_context(certificates, certificates.untrusted_cert, certificates.untrusted_key)
    await refused_handshake(optional_cert.mqtt[0], context, "ALERT_UNKNOWN_CA")
    assert optional_cert.broker.sessions == {}


# -- use_identity_as_username ----------------------------------------------------------------


@pytest.fixture
def identity(serve, certificates):
    """TLS listener (optional client certificate) with use_identity_as_username, plus TCP."""
    return serve(
        "--mqtt",
        ssl_endpoint(certificates),
        "--mqtt",
        TCP_ENDPOINT,
        "--cafile",
        str(certificates.ca),
        "--use-identity-as-username",
    )


@pytest_twisted.ensureDeferred
async def test_identity_replaces_the_username_sent(identity, tclients, certificates):
    client = tclients(identity.mqtt[0], client_id="identified", tls=with_client_cert(certificates))
    client.client.username_pw_set("someone-else", "password")
    await client.connect()
    assert identity.broker.sessions["identified"].connection.username == "device-42"


@pytest_twisted.ensureDeferred
async def test_identity_without_certificate_gets_not_authorized(identity, tclients, certificates):
    got = await deferToThread(
        tls_exchange, identity.mqtt[0], client_context(certificates), connect_packet("nameless")
    )
    assert got == CONNACK_NOT_AUTHORIZED
    client = tclients(identity.mqtt[0], client_id="nameless-paho", tls=trusting(certificates))
    client.client.username_pw_set("claimed-name")
    _flags, code, _props = await client.connect(expect_success=False)
    assert code.getName() == "Not authorized"  # paho's name for 3.1.1 return code 5
    assert "nameless" not in identity.broker.sessions
    assert "nameless-paho" not in identity.broker.sessions


@pytest_twisted.ensureDeferred
async def test_identity_applies_only_to_tls_listeners(identity, tclients):
    client = tclients(identity.mqtt[1], client_id="plain")
    client.client.username_pw_set("plain-user")
    await client.connect()
    assert identity.broker.sessions["plain"].connection.username == "plain-user"


# -- start-up errors -------------------------------------------------------------------------


def _directory_key(certs) -> str:
    """A path that exists but cannot be read as a file (chmod 000 does not stop root)."""
    path = certs.directory / "a-directory.key"
    path.mkdir(exist_ok=True)
    return str(path)


@pytest.mark.parametrize(
    "case", ["missing", "unreadable", "mismatch", "missing-cafile", "require-without-cafile"]
)
def test_bad_tls_options_are_usage_errors(certificates, tmp_path, case):
    certs = certificates
    if case == "missing":
        missing = tmp_path / "missing.pem"
        args = ["--mqtt", f"ssl:8883:privateKey={missing}"]
        expected = ["cannot read", "missing.pem", "No such file"]
    elif case == "unreadable":
        unreadable = _directory_key(certs)
        args = ["--mqtt", f"ssl:8883:privateKey={unreadable}:certKey={certs.server_cert}"]
        expected = ["cannot read private key", "a-directory.key"]
    elif case == "mismatch":
        args = ["--mqtt", f"ssl:8883:privateKey={certs.wrong_key}:certKey={certs.server_cert}"]
        expected = ["do not match", "wrong.key", "server.pem"]
    elif case == "missing-cafile":
        args = ["--mqtt", ssl_endpoint(certs, 8883), "--cafile", str(tmp_path / "no-ca.pem")]
        expected = ["cannot read CA file", "no-ca.pem"]
    else:
        args = ["--mqtt", ssl_endpoint(certs, 8883), "--require-certificate"]
        expected = ["--require-certificate needs --cafile"]
    with pytest.raises(usage.UsageError) as raised:
        Options().parseOptions(args + ["--http", "none"])
    message = str(raised.value)
    assert "\n" not in message
    for part in expected:
        assert part in message


def test_bad_https_listener_is_a_usage_error(certificates):
    with pytest.raises(usage.UsageError, match=r"--http ssl:.*do not match"):
        Options().parseOptions(
            ["--http", ssl_endpoint(certificates, 8443, key=certificates.wrong_key)]
        )


def test_twistd_with_missing_key_exits_with_one_error_line(tmp_path):
    result = subprocess.run(
        [
            str(TWISTD),
            "-n",
            "--pidfile=",
            "mqtt",
            "--mqtt",
            "ssl:0:privateKey=missing.pem",
            "--http",
            "none",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Traceback" not in output
    # twistd prints the option summary first (as for every usage error), then one error line
    errors = [line for line in output.splitlines() if "missing.pem" in line]
    assert len(errors) == 1, output
    assert "cannot read" in errors[0] and "No such file" in errors[0]


@pytest_twisted.ensureDeferred
async def test_certificate_identity_feeds_the_acl(serve, tclients, certificates, tmp_path):
    """With --use-identity-as-username the certificate's CN is the user the ACL knows:
    device-42 may use devices/42/# and nothing else."""
    acl = tmp_path / "acl"
    acl.write_text("user device-42\ntopic readwrite devices/42/#\n")
    served = serve(
        "--mqtt",
        ssl_endpoint(certificates),
        "--cafile",
        str(certificates.ca),
        "--use-identity-as-username",
        "--acl-file",
        str(acl),
    )
    client = tclients(served.mqtt[0], client_id="dev", tls=with_client_cert(certificates))
    await client.connect()
    own = await client.subscribe("devices/42/#", 1)
    other = await client.subscribe("devices/43/#", 1)
    assert own[0].value == 1 and other[0].is_failure
    await client.publish("devices/42/temp", b"21", qos=1)
    message = await client.message()
    assert (message.topic, message.payload) == ("devices/42/temp", b"21")
