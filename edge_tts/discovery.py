"""Home Assistant MQTT discovery: the speaker appears as one device with a notify entity (its
command topic is the say topic, so `notify.send_message` speaks), a button that stops speech,
a sensor for the state and one for the last announcement's time to first audio.

Topics follow `<discovery_prefix>/<component>/<node_id>/<object_id>/config`; every payload is
built from one schema here, with unique ids derived from the device name.
"""

from __future__ import annotations

import json
import re
from typing import Any

from . import __version__
from .config import Config
from .mqtt import Topics

COMPONENTS = ("notify", "button", "sensor")


def node_id(device: str) -> str:
    """A discovery-safe id from the device name ([a-zA-Z0-9_-] only)."""
    return "edge_tts_" + re.sub(r"[^a-zA-Z0-9_-]", "_", device)


def discovery_messages(config: Config) -> list[tuple[str, bytes]]:
    """(topic, retained payload) for each entity of this device; none if discovery is off."""
    prefix = config.mqtt.discovery_prefix
    if not prefix:
        return []
    topics = Topics.of(config.mqtt.topic_prefix, config.device.name)
    node = node_id(config.device.name)
    device = {
        "identifiers": [node],
        "name": f"edge-tts {config.device.name}",
        "manufacturer": "edge-tts",
        "model": "edge-tts speech daemon",
        "sw_version": __version__,
    }
    common: dict[str, Any] = {
        "availability_topic": topics.availability,
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": device,
    }
    entities: list[tuple[str, str, dict[str, Any]]] = [
        ("notify", "say", {"name": "Say", "command_topic": topics.say, "qos": 1,
                           "icon": "mdi:account-voice"}),
        ("button", "stop", {"name": "Stop speaking", "command_topic": topics.stop,
                            "payload_press": "stop", "qos": 1, "icon": "mdi:stop"}),
        ("sensor", "state", {"name": "State", "state_topic": topics.state,
                             "value_template": "{{ value_json.state }}",
                             "json_attributes_topic": topics.state,
                             "icon": "mdi:speaker-message"}),
        ("sensor", "first_audio", {
            "name": "Time to first audio", "state_topic": topics.stats,
            "value_template": "{{ value_json.last_announcement.first_audio_ms }}",
            "json_attributes_topic": topics.stats,
            "json_attributes_template": "{{ value_json.last_announcement | tojson }}",
            "unit_of_measurement": "ms", "device_class": "duration",
            "state_class": "measurement", "icon": "mdi:timer-outline"}),
    ]
    messages = []
    for component, object_id, fields in entities:
        # default_entity_id replaced object_id in Home Assistant 2025.10 (object_id stops
        # working in 2026.4): it gives the entity id, e.g. notify.edge_tts_kitchen_say.
        payload = {**fields, **common, "unique_id": f"{node}_{object_id}",
                   "default_entity_id": f"{component}.{node}_{object_id}"}
        topic = f"{prefix}/{component}/{node}/{object_id}/config"
        messages.append((topic, json.dumps(payload).encode()))
    return messages


def removal_messages(config: Config) -> list[tuple[str, bytes]]:
    """Empty retained payloads on the same topics: Home Assistant removes the entities."""
    return [(topic, b"") for topic, _ in discovery_messages(config)]
