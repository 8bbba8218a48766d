"""Home Assistant MQTT discovery: the speaker appears as one device with a notify entity (its
command topic is the say topic, so `notify.send_message` speaks), a button that stops speech,
sensors for the state, the last announcement's time to first audio and the cloud's cost; and
each of its groups (`all` too) as a notify entity of its own, shared by every member.

Topics follow `<discovery_prefix>/<component>/<node_id>/<object_id>/config`; every payload is
built from one schema here, with unique ids derived from the device name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from typing import Any

from . import __version__
from .config import Config
from .mqtt import MqttLink, Topics

COMPONENTS = ("notify", "button", "sensor")
SUPPORT_URL = "https://github.com/edge-tts/edge-tts"


def node_id(device: str) -> str:
    """A discovery-safe id from the device name ([a-zA-Z0-9_-] only)."""
    return "edge_tts_" + re.sub(r"[^a-zA-Z0-9_-]", "_", device)


def entity_slug(text: str) -> str:
    """Home Assistant's way of making an entity id from a name: lower case, every run of
    other characters one underscore."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


# The notify entity's command template: the message as JSON text, stamped with the time Home
# Assistant sent it, so a message kept by the broker while the daemon was away is dropped
# when older than announcements.max_age_s. (Home Assistant hands a notify title to no MQTT
# command template, in any release, so it cannot be passed on from here.)
NOTIFY_TEMPLATE = '{"text": {{ value | tojson }}, "sent_at": {{ now().isoformat() | tojson }}}'


def group_notify_template(sync_ms: int) -> str:
    """A group's notify template: also stamped with when every member starts (epoch seconds,
    announcements.sync_ms after Home Assistant sent it), so the rooms speak as one."""
    play_at = f'"play_at": {{{{ (as_timestamp(now()) + {sync_ms / 1000:g}) | round(3) }}}}'
    return NOTIFY_TEMPLATE.removesuffix("}") + ", " + play_at + "}"


def group_node_id(group: str) -> str:
    return f"edge_tts_group_{group}"


def discovery_messages(config: Config) -> list[tuple[str, bytes]]:
    """(topic, retained payload) for each entity of this device; none if discovery is off.

    Entity ids are what Home Assistant derives from the device and entity names, and
    `default_entity_id` says the same, so releases before 2025.10 (which do not know
    default_entity_id) and after it give every entity the same id."""
    prefix = config.mqtt.discovery_prefix
    if not prefix:
        return []
    topics = Topics.of(config.mqtt.topic_prefix, config.device.name)
    node = node_id(config.device.name)
    device_name = f"edge-tts {config.device.name}"
    device = {
        "identifiers": [node],
        "name": device_name,
        "manufacturer": "edge-tts",
        "model": "edge-tts speech daemon",
        "sw_version": __version__,
    }
    origin = {"name": "edge-tts", "sw_version": __version__, "support_url": SUPPORT_URL}
    available = {
        "availability_topic": topics.availability,
        "payload_available": "online",
        "payload_not_available": "offline",
    }
    entities: list[tuple[str, str, dict[str, Any]]] = [
        # Not tied to availability: Home Assistant does not call an unavailable entity, and a
        # message sent while the daemon is away must reach the broker (QoS 1) to wait for it.
        (
            "notify",
            "say",
            {
                "name": "Say",
                "command_topic": topics.say,
                "qos": 1,
                "command_template": NOTIFY_TEMPLATE,
                "icon": "mdi:account-voice",
            },
        ),
        (
            "button",
            "stop",
            {
                "name": "Stop speaking",
                "command_topic": topics.stop,
                "payload_press": "stop",
                "qos": 1,
                "icon": "mdi:stop",
                **available,
            },
        ),
        (
            "sensor",
            "state",
            {
                "name": "State",
                "state_topic": topics.state,
                "value_template": "{{ value_json.state }}",
                "json_attributes_topic": topics.state,
                "icon": "mdi:speaker-message",
                **available,
            },
        ),
        (
            "sensor",
            "first_audio",
            {
                # Until this run has spoken, there is no value: "None" makes it unknown.
                "name": "Time to first audio",
                "state_topic": topics.stats,
                "value_template": "{{ value_json.last_announcement.first_audio_ms "
                "if value_json.last_announcement else None }}",
                "json_attributes_topic": topics.stats,
                "json_attributes_template": "{{ (value_json.last_announcement or {}) | tojson }}",
                "unit_of_measurement": "ms",
                "device_class": "duration",
                "state_class": "measurement",
                "icon": "mdi:timer-outline",
                **available,
            },
        ),
        (
            "sensor",
            "cloud_characters",
            {
                # Characters billed this month, as the service counts them (a new month: 0).
                "name": "Cloud characters this month",
                "state_topic": topics.stats,
                "value_template": "{{ value_json.usage.characters_month "
                "if value_json.usage else None }}",
                "json_attributes_topic": topics.stats,
                "json_attributes_template": "{{ (value_json.usage or {}) | tojson }}",
                "unit_of_measurement": "characters",
                "state_class": "total_increasing",
                "icon": "mdi:counter",
                **available,
            },
        ),
        (
            "sensor",
            "cloud_cost",
            {
                # At the documented prices; unknown for a model without a listed price.
                "name": "Estimated cost this month",
                "state_topic": topics.stats,
                "value_template": "{{ value_json.usage.estimated_cost_month_usd "
                "if value_json.usage else None }}",
                "unit_of_measurement": "USD",
                "device_class": "monetary",
                "state_class": "total",
                "icon": "mdi:cash",
                **available,
            },
        ),
    ]
    messages = []
    for component, object_id, fields in entities:
        entity_id = f"{component}.{entity_slug(device_name + ' ' + fields['name'])}"
        payload = {
            **fields,
            "device": device,
            "origin": origin,
            "unique_id": f"{node}_{object_id}",
            "default_entity_id": entity_id,
        }
        topic = f"{prefix}/{component}/{node}/{object_id}/config"
        messages.append((topic, json.dumps(payload).encode()))
    return messages + [_group_notify(config, g, origin) for g in config.device.all_groups]


def _group_notify(config: Config, group: str, origin: dict[str, str]) -> tuple[str, bytes]:
    """The group's notify entity (`notify.edge_tts_<group>`): every member publishes the very
    same payload (no field of its own), so Home Assistant keeps one entity, however many
    members come and go. Always available, like a device's own notify entity."""
    assert config.mqtt.discovery_prefix
    node = group_node_id(group)
    name = f"edge-tts {group}"
    topics = Topics.of(config.mqtt.topic_prefix, config.device.name, config.device.all_groups)
    payload = {
        "name": None,  # the entity is the group: it takes the group's name
        "command_topic": topics.group(group, "say"),
        "qos": 1,
        "command_template": group_notify_template(config.announcements.sync_ms),
        "icon": "mdi:speaker-multiple",
        "device": {
            "identifiers": [node],
            "name": name,
            "manufacturer": "edge-tts",
            "model": "edge-tts speaker group",
        },
        "origin": origin,
        "unique_id": f"{node}_say",
        "default_entity_id": f"notify.{entity_slug(name)}",
    }
    return group_topics(config, group)[0], json.dumps(payload).encode()


def announce(link: MqttLink, config: Config) -> None:
    """Hand the broker session what discovery keeps on the broker: the device's entities and
    its groups', published on every connect; a group's, cleared by the last member to leave."""
    link.retained_on_connect = discovery_messages(config)
    link.retained_of_group = lambda group: group_topics(config, group)


def group_topics(config: Config, group: str) -> list[str]:
    """The discovery topics a group has while it has members (none with discovery off)."""
    if not config.mqtt.discovery_prefix:
        return []
    return [f"{config.mqtt.discovery_prefix}/notify/{group_node_id(group)}/say/config"]


def removal_messages(config: Config, *, orphans: Collection[str] = ()) -> list[tuple[str, bytes]]:
    """Empty retained payloads on every retained topic of the device: its discovery topics
    (Home Assistant removes the entities) and its availability, state and stats; and the
    entities of its groups that no other device is in (`orphans`)."""
    if not config.mqtt.discovery_prefix:
        return []
    topics = Topics.of(config.mqtt.topic_prefix, config.device.name)
    own = [topics.availability, topics.state, topics.stats]
    node = f"/{node_id(config.device.name)}/"
    mine = [t for t, _ in discovery_messages(config) if node in t]
    mine += [t for g in config.device.all_groups if g in orphans for t in group_topics(config, g)]
    return [(topic, b"") for topic in mine] + [(t, b"") for t in own]
