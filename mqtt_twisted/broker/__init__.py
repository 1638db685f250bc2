"""The broker core: sessions, routing, retained messages and wills. No transport in here."""

from mqtt_twisted.broker.config import BrokerConfig
from mqtt_twisted.broker.core import Broker
from mqtt_twisted.broker.message import Message
from mqtt_twisted.broker.session import Session, SessionConnection, SubscriptionOptions
from mqtt_twisted.broker.stats import BrokerStats

__all__ = [
    "Broker",
    "BrokerConfig",
    "BrokerStats",
    "Message",
    "Session",
    "SessionConnection",
    "SubscriptionOptions",
]
