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
    assert parse("--mqtt", "tcp:1883", "--mqtt", "tcp:1884")["mqtt"] == ["tcp:1883", "tcp:1884"]


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
