"""Authentication and access control end to end: real clients (paho 3.1.1 and 5.0,
mosquitto_pub / mosquitto_sub, a raw SCRAM-SHA-512 client) against a broker whose password
file was written by Debian's mosquitto_passwd and whose ACL is in Mosquitto's syntax."""

from __future__ import annotations

import subprocess

import paho.mqtt.client as mqtt
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from mqtt_twisted.acl import load_acl_file
from mqtt_twisted.auth import Security
from mqtt_twisted.broker import Broker, BrokerConfig
from mqtt_twisted.packets import Auth, Connect, Property, ReasonCode, encode
from mqtt_twisted.passwords import PasswordFileChecker
from mqtt_twisted.protocol import MQTTFactory
from mqtt_twisted.scram import ScramClient

from .mqttclient import connect_bytes, read_packet, read_v5, sleep

ACL = """\
# anonymous clients (rules before the first user line)
topic read public/#

user alice
topic readwrite a/#
topic read shared/#
topic deny a/secret

user bob
topic write shared/#
topic read b/#

pattern readwrite clients/%c/#
"""


@pytest.fixture(scope="module")
def password_file(tmp_path_factory):
    """alice:wonderland, bob:builder, written by Debian's mosquitto_passwd."""
    path = tmp_path_factory.mktemp("security") / "passwords"
    for flag, user, password in (("-c", "alice", "wonderland"), ("", "bob", "builder")):
        args = ["mosquitto_passwd", "-b", str(path), user, password]
        if flag:
            args.insert(1, flag)
        subprocess.run(args, check=True, timeout=30, capture_output=True)
    return path


@pytest.fixture
def secure_broker(password_file, tmp_path):
    """Start a broker with the password file and ACL: ``secure_broker(allow_anonymous=...)``."""
    ports = []

    def start(allow_anonymous: bool = False, acl: str | None = ACL, **config):
        acl_path = None
        if acl is not None:
            acl_path = tmp_path / "acl"
            acl_path.write_text(acl)
        security = Security(
            reactor,
            allow_anonymous=allow_anonymous,
            passwords=PasswordFileChecker(str(password_file)),
            acl=load_acl_file(acl_path) if acl_path else None,
        )
        broker = Broker(reactor, BrokerConfig(**config), hooks=security)
        port = reactor.listenTCP(0, MQTTFactory(broker, "secure"), interface="127.0.0.1")
        ports.append((port, broker))
        return broker, port.getHost().port

    yield start
    for port, broker in ports:
        pytest_twisted.blockon(port.stopListening())
        for session in list(broker.sessions.values()):
            if session.connection is not None:
                session.connection.transport.abortConnection()


async def paho(clients, port, client_id, username=None, password=None, v5=False):
    client = clients(port, client_id=client_id, protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
    if username is not None:
        client.client.username_pw_set(username, password)
    return client


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("v5", [False, True])
async def test_password_file_from_mosquitto_passwd(secure_broker, clients, v5):
    """Right password: connected. Wrong one: CONNACK 4 / 0x86. No user name with
    --allow-anonymous no: CONNACK 5 / 0x87."""
    _, port = secure_broker()
    good = await paho(clients, port, "good", "alice", "wonderland", v5)
    _flags, rc, _ = await good.connect()
    assert rc == 0
    bad = await paho(clients, port, "bad", "alice", "Wonderland", v5)
    _flags, rc, _ = await bad.connect(expect_success=False)
    assert str(rc) == "Bad user name or password"  # paho shows 3.1.1's 4 as 0x86 too
    anonymous = await paho(clients, port, "anon", v5=v5)
    _flags, rc, _ = await anonymous.connect(expect_success=False)
    assert str(rc) == "Not authorized"


@pytest_twisted.ensureDeferred
async def test_refusals_on_the_wire_for_3_1_1(secure_broker, raw):
    """The exact CONNACK bytes: 4 for a wrong password, 5 for an anonymous client."""
    _, port = secure_broker()
    wrong = raw(port)
    wrong.send(connect_bytes("w", username="bob", password=b"wrong"))
    assert await read_packet(wrong, timeout=10) == (0x20, b"\x00\x04")
    anonymous = raw(port)
    anonymous.send(connect_bytes("a"))
    assert await read_packet(anonymous, timeout=10) == (0x20, b"\x00\x05")


@pytest_twisted.ensureDeferred
async def test_anonymous_clients_when_allowed_get_the_anonymous_rules(secure_broker, clients):
    _, port = secure_broker(allow_anonymous=True)
    anonymous = await paho(clients, port, "anon")
    await anonymous.connect()
    (granted,) = await anonymous.subscribe("public/#", 1)
    assert granted.value == 1
    refused = await anonymous.subscribe("a/#", 1)
    assert refused[0].is_failure  # SUBACK 0x80: it may read nothing there


@pytest_twisted.ensureDeferred
async def test_mosquitto_clients_with_user_and_password(secure_broker):
    """mosquitto_sub / mosquitto_pub -u -P work against the same file; a wrong password
    makes mosquitto_pub fail."""
    _, port = secure_broker()
    common = ["-h", "127.0.0.1", "-p", str(port)]
    sub = subprocess.Popen(
        [
            "mosquitto_sub",
            *common,
            "-u",
            "alice",
            "-P",
            "wonderland",
            "-t",
            "a/#",
            "-C",
            "1",
            "-W",
            "20",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        await sleep(1.0)
        published = await deferToThread(
            subprocess.run,
            [
                "mosquitto_pub",
                *common,
                "-u",
                "alice",
                "-P",
                "wonderland",
                "-t",
                "a/x",
                "-m",
                "hello",
                "-q",
                "1",
            ],
            capture_output=True,
            timeout=20,
        )
        assert published.returncode == 0, published.stderr
        out, _ = await deferToThread(sub.communicate, timeout=20)
        assert out.strip() == "hello"
    finally:
        sub.kill()
    wrong = await deferToThread(
        subprocess.run,
        ["mosquitto_pub", *common, "-u", "alice", "-P", "nope", "-t", "a/x", "-m", "x"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert wrong.returncode != 0
    assert (
        "not authori" in (wrong.stderr + wrong.stdout).lower()
        or "bad user" in (wrong.stderr + wrong.stdout).lower()
    )


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("v5", [False, True])
async def test_acl_on_publish_subscribe_and_delivery(secure_broker, clients, v5):
    """Publishing where the ACL forbids: 3.1.1 acknowledged and dropped, 5.0 PUBACK 0x87.
    Subscribing where it may read nothing: SUBACK 0x80 / 0x87. A wider filter delivers only
    the topics the client may read (deny wins: a/secret)."""
    _, port = secure_broker()
    alice = await paho(clients, port, "alice-1", "alice", "wonderland", v5)
    await alice.connect()
    codes = await alice.subscribe("#", 1)
    assert not codes[0].is_failure  # some of # is readable
    refused = await alice.subscribe("b/#", 1)
    assert refused[0].is_failure
    assert refused[0].value == (0x87 if v5 else 0x80)
    bob = await paho(clients, port, "bob-1", "bob", "builder", v5)
    await bob.connect()
    await bob.publish("shared/news", b"for alice", qos=1)
    await alice.publish("a/secret", b"nobody reads this", qos=1)
    await alice.publish("a/open", b"alice reads this", qos=1)
    await alice.publish("b/x", b"alice may not write here", qos=1)
    got = await alice.messages_for(1.0)
    assert sorted((m.topic, m.payload) for m in got) == [
        ("a/open", b"alice reads this"),
        ("shared/news", b"for alice"),
    ]


@pytest_twisted.ensureDeferred
async def test_pattern_rules_and_sys(secure_broker, clients):
    """pattern readwrite clients/%c/#: each client its own subtree. $SYS is readable by
    everyone and writable by no one."""
    _, port = secure_broker(allow_anonymous=False)
    bob = await paho(clients, port, "bobs-phone", "bob", "builder", v5=True)
    await bob.connect()
    assert not (await bob.subscribe("clients/bobs-phone/#", 1))[0].is_failure
    assert (await bob.subscribe("clients/alices-phone/#", 1))[0].is_failure
    await bob.publish("clients/bobs-phone/status", b"on", qos=1)
    (message,) = await bob.messages_for(0.5)
    assert message.payload == b"on"
    info = bob.client.publish("$SYS/broker/uptime", b"forged", qos=1)
    info.wait_for_publish(5)
    assert not (await bob.subscribe("$SYS/broker/version", 0))[0].is_failure


def scram_connect(client_id: str, first: bytes, username: str | None = None) -> bytes:
    properties = {
        Property.AUTHENTICATION_METHOD: "SCRAM-SHA-512",
        Property.AUTHENTICATION_DATA: first,
    }
    return encode(Connect(client_id, 5, username=username, properties=properties), 5)


@pytest_twisted.ensureDeferred
async def test_scram_sha_512_from_the_mosquitto_password_file(secure_broker, raw):
    """MQTT 5 enhanced authentication: CONNECT (client-first) → AUTH 0x18 (server-first) →
    AUTH 0x18 (client-final) → CONNACK 0 with server-final, which the client verifies. The
    password never crosses the wire."""
    _, port = secure_broker()
    sock = raw(port)
    scram = ScramClient("sha512", "alice", b"wonderland")
    sock.send(scram_connect("scram-ok", scram.first()))
    challenge = await read_v5(sock)
    assert isinstance(challenge, Auth) and challenge.reason_code == 0x18
    server_first = challenge.properties[Property.AUTHENTICATION_DATA]
    final = scram.final(server_first)
    assert b"wonderland" not in final
    sock.send(
        encode(
            Auth(
                0x18,
                {
                    Property.AUTHENTICATION_METHOD: "SCRAM-SHA-512",
                    Property.AUTHENTICATION_DATA: final,
                },
            ),
            5,
        )
    )
    connack = await read_v5(sock)
    assert connack.return_code == 0
    assert connack.properties[Property.AUTHENTICATION_METHOD] == "SCRAM-SHA-512"
    scram.verify(connack.properties[Property.AUTHENTICATION_DATA])


@pytest_twisted.ensureDeferred
async def test_scram_with_a_wrong_password_is_refused(secure_broker, raw):
    _, port = secure_broker()
    sock = raw(port)
    scram = ScramClient("sha512", "alice", b"not-it")
    sock.send(scram_connect("scram-bad", scram.first()))
    challenge = await read_v5(sock)
    sock.send(
        encode(
            Auth(
                0x18,
                {
                    Property.AUTHENTICATION_METHOD: "SCRAM-SHA-512",
                    Property.AUTHENTICATION_DATA: scram.final(
                        challenge.properties[Property.AUTHENTICATION_DATA]
                    ),
                },
            ),
            5,
        )
    )
    connack = await read_v5(sock, timeout=10)
    assert connack.return_code == ReasonCode.BAD_USER_NAME_OR_PASSWORD


@pytest_twisted.ensureDeferred
async def test_unknown_authentication_method_is_refused(secure_broker, raw):
    _, port = secure_broker()
    sock = raw(port)
    sock.send(encode(Connect("m", 5, properties={Property.AUTHENTICATION_METHOD: "KERBEROS"}), 5))
    connack = await read_v5(sock)
    assert connack.return_code == ReasonCode.BAD_AUTHENTICATION_METHOD
