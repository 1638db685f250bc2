"""Tests for mqtt_twisted.scram (RFC 5802 / RFC 7677 SCRAM, sans-I/O)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mqtt_twisted.scram import MECHANISMS, ScramClient, ScramError, ScramSecret, ScramServer

# --------------------------------------------------------------------------- helpers


def secret_for(hash_name: str, password: bytes, salt: bytes, iterations: int) -> ScramSecret:
    return ScramSecret(salt, iterations, hashlib.pbkdf2_hmac(hash_name, password, salt, iterations))


def fixed(value: str):
    return lambda: value


def server_for(users: dict[str, ScramSecret], hash_name: str = "sha512", **kw) -> ScramServer:
    return ScramServer(hash_name, lookup=users.get, **kw)


def proof_for(hash_name: str, salted: bytes, auth_message: bytes) -> str:
    """Independent ClientProof computation (RFC 5802 section 3)."""
    client_key = hmac.new(salted, b"Client Key", hash_name).digest()
    stored_key = hashlib.new(hash_name, client_key).digest()
    signature = hmac.new(stored_key, auth_message, hash_name).digest()
    return base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature))).decode()


SALT = b"0123456789ab"  # 12 bytes, like mosquitto_passwd
ALICE = secret_for("sha512", b"s3cret", SALT, 101)
USERS = {"alice": ALICE}
SERVER_FIRST_RE = re.compile(rb"^r=([!-+\--~]+),s=([A-Za-z0-9+/]+=*),i=([1-9][0-9]*)$")


def started(client: ScramClient, server: ScramServer) -> bytes:
    """Run client-first through the server and return the client-final."""
    return client.final(server.client_first(client.first()))


# --------------------------------------------------------------------------- RFC examples

# RFC 5802 section 5: SCRAM-SHA-1, user "user", password "pencil".
RFC5802 = dict(
    hash_name="sha1",
    client_nonce="fyko+d2lbbFgONRv9qkxdawL",
    server_nonce="3rfcNHYJY1ZVvWVs7j",
    salt="QSXCR+Q6sek8bf92",
    client_first=b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
    server_first=b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
    client_final=b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
    server_final=b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
)
# RFC 7677 section 3: SCRAM-SHA-256, user "user", password "pencil".
RFC7677 = dict(
    hash_name="sha256",
    client_nonce="rOprNGfwEbeRWgbNEkqO",
    server_nonce="%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
    salt="W22ZaJ0SNY7soEsUEjb6gQ==",
    client_first=b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
    server_first=(
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    ),
    client_final=(
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    ),
    server_final=b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
)
RFC_EXAMPLES = pytest.mark.parametrize(
    "ex", [RFC5802, RFC7677], ids=["rfc5802-sha1", "rfc7677-sha256"]
)


@RFC_EXAMPLES
def test_rfc_example_client(ex):
    client = ScramClient(ex["hash_name"], "user", b"pencil", nonce=fixed(ex["client_nonce"]))
    assert client.first() == ex["client_first"]
    assert client.final(ex["server_first"]) == ex["client_final"]
    client.verify(ex["server_final"])


@RFC_EXAMPLES
def test_rfc_example_server(ex):
    salt = base64.b64decode(ex["salt"])
    users = {"user": secret_for(ex["hash_name"], b"pencil", salt, 4096)}
    server = server_for(users, ex["hash_name"], nonce=fixed(ex["server_nonce"]))
    assert server.username is None and not server.done
    assert server.client_first(ex["client_first"]) == ex["server_first"]
    assert server.username == "user" and not server.done
    assert server.client_final(ex["client_final"]) == ex["server_final"]
    assert server.done


@RFC_EXAMPLES
def test_rfc_example_wrong_server_signature(ex):
    client = ScramClient(ex["hash_name"], "user", b"pencil", nonce=fixed(ex["client_nonce"]))
    client.final(ex["server_first"])
    sig = bytearray(base64.b64decode(ex["server_final"][2:]))
    sig[0] ^= 1
    with pytest.raises(ScramError) as exc:
        client.verify(b"v=" + base64.b64encode(bytes(sig)))
    assert exc.value.reason == "invalid-server-signature"


# --------------------------------------------------------------------------- SHA-512 / Mosquitto


def test_mechanisms():
    assert MECHANISMS["SCRAM-SHA-512"] == "sha512"


@pytest.mark.parametrize("username", ["alice", "jö,=rg", "a=2Cb", "=", ","])
def test_sha512_round_trip(username):
    users = {username: ALICE}
    client = ScramClient("sha512", username, b"s3cret")
    server = server_for(users)
    server_first = server.client_first(client.first())
    m = SERVER_FIRST_RE.match(server_first)
    assert m and base64.b64decode(m[2]) == SALT and m[3] == b"101"
    assert server.username == username
    server_final = server.client_final(client.final(server_first))
    assert server.done
    client.verify(server_final)
    assert len(base64.b64decode(server_final[2:])) == 64


def test_username_escaping_on_the_wire():
    client = ScramClient("sha512", "a,b=c", b"x", nonce=fixed("N"))
    assert client.first() == b"n,,n=a=2Cb=3Dc,r=N"


def test_mosquitto_pbkdf2_entry():
    # What `mosquitto_passwd` writes: $7$<iterations>$<b64 salt>$<b64 PBKDF2-SHA512 key>.
    salt = bytes(range(12))
    key = hashlib.pbkdf2_hmac("sha512", b"hunter2", salt, 101, 64)
    entry = f"bob:$7$101${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"
    user, rest = entry.split(":", 1)
    _, kind, iterations, salt_b64, hash_b64 = rest.split("$")
    assert kind == "7"
    secret = ScramSecret(base64.b64decode(salt_b64), int(iterations), base64.b64decode(hash_b64))
    client = ScramClient("sha512", "bob", b"hunter2")
    server = server_for({user: secret})
    server_first = server.client_first(client.first())
    assert server_first.endswith(b",s=" + salt_b64.encode() + b",i=101")
    client.verify(server.client_final(client.final(server_first)))
    assert server.done


def test_low_iteration_counts_allowed():
    secret = secret_for("sha512", b"pw", SALT, 1)
    client = ScramClient("sha512", "u", b"pw")
    server = server_for({"u": secret})
    client.verify(server.client_final(started(client, server)))


def test_y_flag_accepted_with_its_own_channel_binding():
    server = server_for(USERS, nonce=fixed("SRV"))
    server_first = server.client_first(b"y,,n=alice,r=CLI")
    without_proof = b"c=eSws,r=CLISRV"
    auth = b"n=alice,r=CLI," + server_first + b"," + without_proof
    proof = proof_for("sha512", ALICE.salted_password, auth)
    assert server.client_final(without_proof + b",p=" + proof.encode()).startswith(b"v=")
    assert server.done


def test_extensions_after_nonce_are_ignored_but_signed():
    server = server_for(USERS, nonce=fixed("SRV"))
    server_first = server.client_first(b"n,,n=alice,r=CLI,x=ext")
    without_proof = b"c=biws,r=CLISRV,y=more"
    auth = b"n=alice,r=CLI,x=ext," + server_first + b"," + without_proof
    proof = proof_for("sha512", ALICE.salted_password, auth)
    server.client_final(without_proof + b",p=" + proof.encode())
    assert server.done


# --------------------------------------------------------------------------- failures


def fail(step, data, reason: str | None = None) -> ScramError:
    with pytest.raises(ScramError) as exc:
        step(data)
    if reason is not None:
        assert exc.value.reason == reason
    return exc.value


def test_wrong_password():
    client = ScramClient("sha512", "alice", b"wrong")
    server = server_for(USERS)
    fail(server.client_final, started(client, server), "invalid-proof")
    assert not server.done
    fail(server.client_final, b"anything", "other-error")  # the exchange is over


def test_unknown_user_fails_like_wrong_password():
    secret = b"k" * 32
    wrong = server_for(USERS, fake_secret=secret)
    wrong_err = fail(wrong.client_final, started(ScramClient("sha512", "alice", b"x"), wrong))

    server = server_for(USERS, fake_secret=secret)
    client = ScramClient("sha512", "mallory", b"x")
    server_first = server.client_first(client.first())
    m = SERVER_FIRST_RE.match(server_first)
    assert m, server_first
    assert len(base64.b64decode(m[2])) == len(SALT) and m[3] == b"101"
    assert server.username == "mallory"
    err = fail(server.client_final, client.final(server_first))
    assert (err.reason, str(err)) == (wrong_err.reason, str(wrong_err)) == ("invalid-proof",) * 2
    assert not server.done

    # The fake salt is stable per username (asking twice reveals nothing) and differs per user.
    again = server_for(USERS, fake_secret=secret).client_first(b"n,,n=mallory,r=Z")
    other = server_for(USERS, fake_secret=secret).client_first(b"n,,n=trudy,r=Z")
    assert SERVER_FIRST_RE.match(again)[2] == m[2] != SERVER_FIRST_RE.match(other)[2]
    # Also with the default per-process secret.
    a, b = (server_for(USERS).client_first(b"n,,n=eve,r=Z") for _ in range(2))
    assert SERVER_FIRST_RE.match(a)[2] == SERVER_FIRST_RE.match(b)[2]


def test_unknown_user_fake_iterations_configurable():
    server = server_for({}, fake_iterations=1000)
    assert server.client_first(b"n,,n=x,r=Z").endswith(b",i=1000")


def test_tampered_nonce():
    client = ScramClient("sha512", "alice", b"s3cret")
    server = server_for(USERS)
    final = started(client, server)
    tampered = re.sub(rb",r=([^,]*)", lambda m: b",r=" + m[1] + b"X", final)
    fail(server.client_final, tampered)
    assert not server.done


@pytest.mark.parametrize("header, cbind", [(b"n,,", b"eSws"), (b"y,,", b"biws"), (b"n,,", b"")])
def test_bad_channel_binding(header, cbind):
    server = server_for(USERS, nonce=fixed("SRV"))
    server_first = server.client_first(header + b"n=alice,r=CLI")
    without_proof = b"c=" + cbind + b",r=CLISRV"
    auth = b"n=alice,r=CLI," + server_first + b"," + without_proof
    proof = proof_for("sha512", ALICE.salted_password, auth)  # valid proof, wrong binding
    fail(
        server.client_final, without_proof + b",p=" + proof.encode(), "channel-bindings-dont-match"
    )


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "invalid-encoding"),
        (b"n", "invalid-encoding"),
        (b"n,,", "invalid-encoding"),
        (b"\xff\xfe", "invalid-encoding"),
        (b"n,,n=alice\x00,r=a", "invalid-encoding"),
        (b"x,,n=alice,r=a", "invalid-encoding"),
        (b"p=tls-server-end-point,,n=alice,r=a", "channel-binding-not-supported"),
        (b"n,a=admin,n=alice,r=a", "other-error"),
        (b"n,,m=ext,n=alice,r=a", "extensions-not-supported"),
        (b"n,,r=a,n=alice", "invalid-encoding"),
        (b"n,,n=alice", "invalid-encoding"),
        (b"n,,n=alice,r=", "invalid-encoding"),
        (b"n,,n=alice,r=a b", "invalid-encoding"),
        (b"n,,n=alice,r=a,", "invalid-encoding"),
        (b"n,,n=alice,r=a,1=x", "invalid-encoding"),
        (b"n,,n=,r=a", "invalid-username-encoding"),
        (b"n,,n=al=2Xice,r=a", "invalid-username-encoding"),
        (b"n,,n=alice=,r=a", "invalid-username-encoding"),
    ],
)
def test_malformed_client_first(data, reason):
    server = server_for(USERS)
    fail(server.client_first, data, reason)
    assert not server.done
    fail(server.client_first, b"n,,n=alice,r=a", "other-error")  # no second chance


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "invalid-encoding"),
        (b"\xff", "invalid-encoding"),
        (b"c=biws,r=CLISRV", "invalid-encoding"),
        (b"r=CLISRV,c=biws,p=AAAA", "invalid-encoding"),
        (b"c=biws,p=AAAA", "invalid-encoding"),
        (b"c=biws,r=CLISRV,p=!!!!", "invalid-encoding"),
        (b"c=biws,r=CLISRV,p=AAAA,x=1", "invalid-encoding"),
        (b"c=biws,r=CLISRV,p=AAAA,p=AAAA", "invalid-encoding"),
        (b"c=biws,r=CLISRV,p=", "invalid-proof"),
        (b"c=biws,r=CLISRV,p=AAAA", "invalid-proof"),
        (b"c=biws,r=CLI,p=AAAA", "other-error"),
    ],
)
def test_malformed_client_final(data, reason):
    server = server_for(USERS, nonce=fixed("SRV"))
    server.client_first(b"n,,n=alice,r=CLI")
    fail(server.client_final, data, reason)
    assert not server.done


def test_out_of_order():
    server = server_for(USERS)
    fail(server.client_final, b"c=biws,r=a,p=AAAA", "other-error")
    client = ScramClient("sha512", "alice", b"s3cret")
    server = server_for(USERS)
    server.client_final(started(client, server))
    fail(server.client_first, client.first(), "other-error")
    fail(server.client_final, b"c=biws,r=a,p=AAAA", "other-error")
    assert server.done


@pytest.mark.parametrize(
    "server_first, reason",
    [
        (b"r=CLIsrv,s=QUJD,i=0", "invalid-encoding"),
        (b"r=CLIsrv,s=QUJD,i=01", "invalid-encoding"),
        (b"r=CLIsrv,s=QUJD,i=x", "invalid-encoding"),
        (b"r=CLIsrv,s=QUJD,i=" + b"9" * 5000, "invalid-encoding"),
        (b"r=CLIsrv,s=Q,i=1", "invalid-encoding"),
        (b"r=CLI,s=QUJD,i=1", "other-error"),
        (b"r=XYZsrv,s=QUJD,i=1", "other-error"),
        (b"m=x,r=CLIsrv,s=QUJD,i=1", "extensions-not-supported"),
        (b"s=QUJD,r=CLIsrv,i=1", "invalid-encoding"),
        (b"e=other-error", "invalid-encoding"),
    ],
)
def test_client_rejects_bad_server_first(server_first, reason):
    client = ScramClient("sha512", "u", b"p", nonce=fixed("CLI"))
    fail(client.final, server_first, reason)


def test_client_verify_errors():
    client = ScramClient("sha512", "u", b"p", nonce=fixed("CLI"))
    fail(client.verify, b"v=AAAA", "other-error")  # before final()
    client.final(b"r=CLIsrv,s=QUJD,i=1")
    fail(client.verify, b"e=unknown-user", "unknown-user")
    fail(client.verify, b"x=1", "invalid-encoding")
    fail(client.verify, b"v=***", "invalid-encoding")
    fail(client.verify, b"v=AAAA", "invalid-server-signature")


# --------------------------------------------------------------------------- fuzzing

_FRAGMENTS = st.sampled_from(
    ["n", "y", "p", ",", "=", "n=", "r=", "c=", "p=", "m=", "a=", "=2C", "=3D", "=2", "biws"]
    + ["eSws", "alice", "SRV", "CLI", "AAAA", "\x00", "é", "\udcff", " ", "i=", "s=", "=="]
)
_FUZZ = st.one_of(
    st.binary(max_size=200),
    st.lists(_FRAGMENTS, max_size=20).map(lambda xs: "".join(xs).encode("utf-8", "replace")),
)
_SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(data=_FUZZ)
def test_fuzz_client_first_only_raises_scram_error(data):
    server = server_for(USERS)
    try:
        reply = server.client_first(data)
    except ScramError:
        assert not server.done
    else:
        assert SERVER_FIRST_RE.match(reply)


@_SETTINGS
@given(data=_FUZZ, prefix=st.sampled_from([b"", b"c=biws,r=CLISRV,", b"c=biws,r=CLISRV,p="]))
def test_fuzz_client_final_only_raises_scram_error(data, prefix):
    server = server_for(USERS, nonce=fixed("SRV"))
    server.client_first(b"n,,n=alice,r=CLI")
    with pytest.raises(ScramError):
        server.client_final(prefix + data)
    assert not server.done


@_SETTINGS
@given(data=_FUZZ)
def test_fuzz_client_final_from_server_only_raises_scram_error(data):
    client = ScramClient("sha1", "u", b"p", nonce=fixed("CLI"))
    try:
        client.final(data)
    except ScramError:
        pass
