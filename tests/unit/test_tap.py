"""Command-line options of `twistd mqtt`: defaults, parsing, errors."""

import pytest
from twisted.python import usage

from mqtt_twisted.tap import Options, parse_duration


def parse(*args):
    options = Options()
    options.parseOptions(list(args))
    return options


def test_defaults():
    config = parse().broker_config()
    assert parse()["mqtt"] == ["tcp:1883:interface=127.0.0.1"]
    assert parse()["http"] == ["tcp:8080:interface=127.0.0.1"]
    assert parse("--http", "none")["http"] == []
    assert (config.max_keepalive, config.max_inflight_messages, config.max_queued_messages) == (
        65535,
        20,
        1000,
    )
    assert (config.max_packet_size, config.max_qos, config.retain_available) == (2_000_000, 2, True)
    assert config.allow_zero_length_clientid is True
    assert config.connect_timeout == 10
    assert config.persistent_client_expiration is None


def test_repeatable_mqtt_listeners():
    first, second = "tcp:1883:interface=127.0.0.1", "tcp6:1884:interface=\\:\\:1"
    assert parse("--mqtt", first, "--mqtt", second)["mqtt"] == [first, second]


def test_yes_no_options():
    config = parse("--retain-available", "no", "--allow-zero-length-clientid", "no").broker_config()
    assert config.retain_available is False
    assert config.allow_zero_length_clientid is False


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("30s", 30),
        ("2h", 7200),
        ("14d", 14 * 86400),
        ("1w", 604800),
        ("1m", 30 * 86400),
        ("1y", 365 * 86400),
    ],
)
def test_durations_use_mosquitto_units(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "args",
    [
        ["--max-qos", "3"],
        ["--max-keepalive", "70000"],
        ["--retain-available", "perhaps"],
        ["--persistent-client-expiration", "0h"],
        ["--connect-timeout", "0"],
        ["--mqtt", "bogus:1"],
    ],
)
def test_bad_values_are_usage_errors(args):
    with pytest.raises(usage.UsageError):
        parse(*args)


# -- secure by default ------------------------------------------------------------------


@pytest.mark.parametrize(
    "endpoint, local",
    [
        ("tcp:1883:interface=127.0.0.1", True),
        ("tcp:port=1883:interface=127.0.0.2", True),
        ("tcp6:1883:interface=\\:\\:1", True),
        ("tcp:1883:interface=localhost", True),
        ("unix:/tmp/mqtt.sock", True),
        ("haproxy:tcp:1883:interface=127.0.0.1", True),
        ("tcp:1883", False),
        ("tcp:1883:interface=0.0.0.0", False),
        ("tcp6:1883:interface=\\:\\:", False),
        ("ssl:8883:privateKey=k.pem", False),
        ("haproxy:tcp:1883", False),
        ("something:else", False),
    ],
)
def test_which_listeners_are_local(endpoint, local):
    from mqtt_twisted.exposure import is_local_only

    assert is_local_only(endpoint) is local


def test_a_listener_beyond_loopback_needs_authentication_to_start():
    with pytest.raises(usage.UsageError) as refused:
        parse("--mqtt", "tcp:1883")
    message = str(refused.value)
    assert "--mqtt tcp:1883" in message and "--password-file" in message
    assert "--allow-anonymous yes" in message
    with pytest.raises(usage.UsageError):
        parse("--http", "tcp:8080")  # the WebSocket listener counts too
    with pytest.raises(usage.UsageError):  # "no" is not an answer for an open listener
        parse("--mqtt", "tcp:1883", "--allow-anonymous", "no")
    options = parse("--mqtt", "tcp:1883", "--allow-anonymous", "yes")
    assert options["allow-anonymous"] is True


def test_defaults_listen_on_loopback_and_allow_anonymous_clients():
    options = parse()
    assert options["allow-anonymous"] is True
    assert all("interface=127.0.0.1" in d for d in options["mqtt"] + options["http"])


def test_a_password_file_makes_anonymous_clients_refused_by_default(tmp_path):
    from mqtt_twisted.passwords import format_line, hash_password

    path = tmp_path / "passwords"
    path.write_text(format_line("alice", hash_password(b"secret", iterations=10)) + "\n")
    options = parse("--mqtt", "tcp:1883", "--password-file", str(path))
    assert options["allow-anonymous"] is False
    assert parse("--password-file", str(path), "--allow-anonymous", "yes")["allow-anonymous"]


def test_bad_password_and_acl_files_stop_start_up_in_one_line(tmp_path):
    bad = tmp_path / "bad"
    bad.write_text("alice:$7$notahash\n")
    with pytest.raises(usage.UsageError) as refused:
        parse("--password-file", str(bad))
    assert "line 1" in str(refused.value)
    acl = tmp_path / "acl"
    acl.write_text("topic sideways a/b\n")
    with pytest.raises(usage.UsageError) as refused:
        parse("--acl-file", str(acl))
    assert f"{acl}:1:" in str(refused.value) and "sideways" in str(refused.value)
    with pytest.raises(usage.UsageError):
        parse("--password-file", str(tmp_path / "missing"))
