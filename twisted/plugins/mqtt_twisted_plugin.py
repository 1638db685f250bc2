"""twistd plugin: ``twistd -n mqtt`` runs the mqtt-twisted broker.

Only points at :mod:`mqtt_twisted.tap`; imported lazily so ``twistd --help`` stays fast.
"""

from twisted.application.service import ServiceMaker

mqttBroker = ServiceMaker(
    "mqtt-twisted",
    "mqtt_twisted.tap",
    "An MQTT 3.1 / 3.1.1 / 5.0 broker",
    "mqtt",
)
