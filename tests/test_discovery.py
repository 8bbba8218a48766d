"""Home Assistant discovery: the device and its entities appear, retained, on every connect;
their command topics are wired to speech and stop; `edge-tts discovery remove` clears them."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from conftest import API_KEY, Broker, Capture, DaemonProcess, Home, split_speech, write_config
from fake_dashscope import FakeDashScope, pcm_for


async def retained(broker: Broker, pattern: str) -> dict[str, bytes]:
    """Every retained message under `pattern` now, read without guessing a wait: the broker
    sends retained messages before it echoes a probe published after subscribing."""
    probe = f"probe/{uuid.uuid4().hex}"
    found: dict[str, bytes] = {}
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.subscribe(pattern, qos=1)
        await client.subscribe(probe, qos=1)
        await client.publish(probe, b"", qos=1)
        async for message in client.messages:
            if str(message.topic) == probe:
                return found
            found[str(message.topic)] = bytes(message.payload)  # type: ignore[arg-type]
    return found


@pytest.fixture
async def discovering(tmp_path: Path, broker: Broker, dashscope: FakeDashScope, home: Home,
                      capture: Capture) -> AsyncIterator[DaemonProcess]:
    config = write_config(tmp_path / "config.yaml", broker, dashscope,
                          mqtt__discovery_prefix="homeassistant")
    proc = DaemonProcess(config, dict(os.environ, DASHSCOPE_API_KEY=API_KEY))
    await proc.start(home)
    yield proc
    await proc.stop()


async def test_the_device_and_its_entities_are_announced(
    discovering: DaemonProcess, broker: Broker
) -> None:
    configs = {t: json.loads(p) for t, p in (await retained(broker, "homeassistant/#")).items()}
    node = "edge_tts_kitchen"
    assert set(configs) == {f"homeassistant/{c}/{node}/{o}/config" for c, o in
                            [("notify", "say"), ("button", "stop"), ("sensor", "state"),
                             ("sensor", "first_audio")]}
    notify = configs[f"homeassistant/notify/{node}/say/config"]
    button = configs[f"homeassistant/button/{node}/stop/config"]
    state = configs[f"homeassistant/sensor/{node}/state/config"]
    first = configs[f"homeassistant/sensor/{node}/first_audio/config"]
    assert notify["command_topic"] == "edge-tts/kitchen/say"
    assert button["command_topic"] == "edge-tts/kitchen/stop"
    assert state["state_topic"] == "edge-tts/kitchen/state"
    assert first["state_topic"] == "edge-tts/kitchen/stats" and first["unit_of_measurement"] == "ms"
    for entity in configs.values():
        assert entity["availability_topic"] == "edge-tts/kitchen/availability"
        assert entity["device"]["identifiers"] == [node]
        assert entity["device"]["sw_version"]
    assert len({e["unique_id"] for e in configs.values()}) == 4
    assert notify["default_entity_id"] == "notify.edge_tts_kitchen_say"  # what the README shows


async def test_the_entities_command_topics_speak_and_stop(
    discovering: DaemonProcess, broker: Broker, home: Home, capture: Capture,
    dashscope: FakeDashScope,
) -> None:
    configs = {t: json.loads(p) for t, p in (await retained(broker, "homeassistant/#")).items()}
    notify = next(c for t, c in configs.items() if "/notify/" in t)
    button = next(c for t, c in configs.items() if "/button/" in t)
    # What notify.send_message does: the message, as is, on the command topic.
    await home.client.publish(notify["command_topic"], "Dinner is ready.", qos=1)
    await home.log.wait_for(lambda: any(e["event"] == "finished" for e in home.log.events))
    assert split_speech(capture.read())[1] == pcm_for("Dinner is ready.")
    stats = json.loads((await retained(broker, "edge-tts/kitchen/stats"))["edge-tts/kitchen/stats"])
    assert isinstance(stats["last_announcement"]["first_audio_ms"], int)  # the sensor's value

    dashscope.chunk_interval_s = 0.1
    await home.say({"text": "A long story nobody wants to hear.", "id": "long"})
    await home.log.event("long", "started")
    await home.client.publish(button["command_topic"], button["payload_press"], qos=1)
    assert (await home.log.event("long", "dropped"))["error"] == "stopped"


async def test_discovery_remove_clears_the_entities(
    discovering: DaemonProcess, broker: Broker
) -> None:
    assert len(await retained(broker, "homeassistant/#")) == 4
    await discovering.stop()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge_tts", "discovery", "-c", str(discovering.config), "remove",
        stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    assert "removed 4 Home Assistant entities of device 'kitchen'" in out.decode()
    assert await retained(broker, "homeassistant/#") == {}


async def test_no_discovery_when_the_prefix_is_null(daemon: DaemonProcess, broker: Broker) -> None:
    assert await retained(broker, "homeassistant/#") == {}


# The keys Home Assistant documents for each MQTT platform that we use (an unknown key would
# be ignored by Home Assistant: a typo would fail silently, so none is allowed).
COMMON_KEYS = {"name", "unique_id", "default_entity_id", "availability_topic",
               "payload_available", "payload_not_available", "device", "icon", "qos"}
DOCUMENTED = {
    "notify": COMMON_KEYS | {"command_topic", "command_template", "retain", "encoding"},
    "button": COMMON_KEYS | {"command_topic", "command_template", "payload_press", "retain",
                             "device_class"},
    "sensor": COMMON_KEYS | {"state_topic", "value_template", "json_attributes_topic",
                             "json_attributes_template", "unit_of_measurement", "device_class",
                             "state_class", "expire_after", "force_update"},
}
REQUIRED = {"notify": {"command_topic"}, "button": {"command_topic"}, "sensor": {"state_topic"}}
DEVICE_KEYS = {"identifiers", "connections", "name", "manufacturer", "model", "sw_version",
               "hw_version", "configuration_url", "suggested_area", "via_device"}


def test_every_discovery_key_is_a_documented_one() -> None:
    from edge_tts.config import parse_config
    from edge_tts.discovery import discovery_messages

    config = parse_config({"device": {"name": "living room"}})
    for topic, payload in discovery_messages(config):
        prefix, component, node, object_id, last = topic.split("/")
        assert (prefix, last, node) == ("homeassistant", "config", "edge_tts_living_room")
        fields = json.loads(payload)
        assert set(fields) <= DOCUMENTED[component], set(fields) - DOCUMENTED[component]
        assert REQUIRED[component] <= set(fields)
        assert set(fields["device"]) <= DEVICE_KEYS
        assert fields["default_entity_id"] == f"{component}.edge_tts_living_room_{object_id}"
        assert fields["unique_id"] == f"edge_tts_living_room_{object_id}"
