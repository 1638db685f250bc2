"""The broker's answer to a CONNECT: which client id, keep alive and session terms, or a refusal.

Pure: no I/O. :mod:`mqtt_twisted.protocol` sends the CONNACK this describes.
"""

from __future__ import annotations

import uuid

import attrs

from mqtt_twisted.broker import BrokerConfig
from mqtt_twisted.broker.hooks import Refused
from mqtt_twisted.packets import MQTT_3_1, MQTT_5, ConnackCode, Connect, Property, ReasonCode
from mqtt_twisted.topics import validate_topic_name

#: MQTT 3.1 limits client ids to 23 characters (3.1 spec, CONNECT payload)
MQTT31_MAX_CLIENT_ID = 23
#: Session Expiry Interval meaning "never" (MQTT 5.0 section 3.1.2.11.2)
NEVER_EXPIRES = 0xFFFFFFFF


@attrs.define
class ConnectTerms:
    """What was agreed for one accepted connection."""

    client_id: str
    assigned_client_id: bool
    keep_alive: int
    #: the broker overrides the client's keep alive (MQTT 5 Server Keep Alive)
    server_keep_alive: bool
    #: seconds the session outlives the connection: 0 = none, None = never expires
    expiry_interval: float | None
    receive_maximum: int = 65535
    max_packet_size: int | None = None
    topic_alias_maximum: int = 0
    request_problem_information: bool = True
    request_response_information: bool = False


def check_connect(connect: Connect, config: BrokerConfig) -> ConnectTerms:
    """Apply the broker's CONNECT rules; raises :class:`Refused`."""
    level = connect.protocol_level
    properties = connect.properties
    client_id = connect.client_id
    assigned = False
    if not client_id:
        if level == MQTT_3_1:
            raise Refused(
                "empty client id (MQTT 3.1)",
                ConnackCode.IDENTIFIER_REJECTED,
                ReasonCode.CLIENT_IDENTIFIER_NOT_VALID,
            )
        if level < MQTT_5 and not connect.clean_start:  # [MQTT-3.1.3-8]
            raise Refused(
                "empty client id without clean session",
                ConnackCode.IDENTIFIER_REJECTED,
                ReasonCode.CLIENT_IDENTIFIER_NOT_VALID,
            )
        if not config.allow_zero_length_clientid:
            raise Refused(
                "empty client id not allowed",
                ConnackCode.IDENTIFIER_REJECTED,
                ReasonCode.CLIENT_IDENTIFIER_NOT_VALID,
            )
        client_id = f"auto-{uuid.uuid4()}"  # [MQTT-3.1.3-6]
        assigned = True
    elif level == MQTT_3_1 and len(client_id) > MQTT31_MAX_CLIENT_ID:
        raise Refused(
            "client id longer than 23 characters (MQTT 3.1)",
            ConnackCode.IDENTIFIER_REJECTED,
            ReasonCode.CLIENT_IDENTIFIER_NOT_VALID,
        )
    keep_alive = connect.keep_alive
    server_keep_alive = False
    if keep_alive > config.max_keepalive or (keep_alive == 0 and config.max_keepalive < 65535):
        if level < MQTT_5:  # 3.x cannot be told another keep alive: refused, as Mosquitto does
            if keep_alive > config.max_keepalive:
                raise Refused(
                    f"keep alive {keep_alive} above max_keepalive",
                    ConnackCode.IDENTIFIER_REJECTED,
                    ReasonCode.UNSPECIFIED_ERROR,
                )
        else:
            keep_alive = config.max_keepalive  # Server Keep Alive [MQTT-3.2.2-21]
            server_keep_alive = True
    _check_will(connect, config)
    if level == MQTT_5:
        expiry = properties.get(Property.SESSION_EXPIRY_INTERVAL, 0)
        expiry_interval = None if expiry == NEVER_EXPIRES else float(expiry)
    else:
        expiry_interval = 0.0 if connect.clean_start else None
    return ConnectTerms(
        client_id=client_id,
        assigned_client_id=assigned,
        keep_alive=keep_alive,
        server_keep_alive=server_keep_alive,
        expiry_interval=expiry_interval,
        receive_maximum=properties.get(Property.RECEIVE_MAXIMUM, 65535),
        max_packet_size=properties.get(Property.MAXIMUM_PACKET_SIZE),
        topic_alias_maximum=min(
            properties.get(Property.TOPIC_ALIAS_MAXIMUM, 0), config.max_topic_alias_broker
        ),
        request_problem_information=bool(properties.get(Property.REQUEST_PROBLEM_INFORMATION, 1)),
        request_response_information=bool(properties.get(Property.REQUEST_RESPONSE_INFORMATION, 0)),
    )


def _check_will(connect: Connect, config: BrokerConfig) -> None:
    will = connect.will
    if will is None:
        return
    if not validate_topic_name(will.topic):
        raise Refused("invalid will topic", None, ReasonCode.TOPIC_NAME_INVALID)
    if will.qos > config.max_qos:  # [MQTT-3.2.2-12]
        raise Refused("will QoS above max_qos", None, ReasonCode.QOS_NOT_SUPPORTED)
    if will.retain and not config.retain_available:  # [MQTT-3.2.2-13]
        raise Refused("retained will not supported", None, ReasonCode.RETAIN_NOT_SUPPORTED)
    if will.properties.get(Property.PAYLOAD_FORMAT_INDICATOR) == 1:
        try:
            will.payload.decode("utf-8")
        except UnicodeDecodeError:
            raise Refused(
                "will payload is not UTF-8 but says it is", None, ReasonCode.PAYLOAD_FORMAT_INVALID
            ) from None


def connack_properties(terms: ConnectTerms, config: BrokerConfig) -> dict:
    """The MQTT 5 CONNACK properties telling the client the broker's limits."""
    properties: dict = {
        Property.MAXIMUM_PACKET_SIZE: config.max_packet_size,
        Property.TOPIC_ALIAS_MAXIMUM: config.max_topic_alias,
    }
    if config.max_inflight_messages:
        properties[Property.RECEIVE_MAXIMUM] = config.max_inflight_messages
    if config.max_qos < 2:
        properties[Property.MAXIMUM_QOS] = config.max_qos
    if not config.retain_available:
        properties[Property.RETAIN_AVAILABLE] = 0
    if terms.assigned_client_id:
        properties[Property.ASSIGNED_CLIENT_IDENTIFIER] = terms.client_id
    if terms.server_keep_alive:
        properties[Property.SERVER_KEEP_ALIVE] = terms.keep_alive
    if terms.request_response_information and config.response_information:
        properties[Property.RESPONSE_INFORMATION] = (
            f"{config.response_information.rstrip('/')}/{terms.client_id}"
        )
    return properties
