"""Home Assistant discovery: the device and its entities appear, retained, on every connect;
their command topics are wired to speech and stop; `edge-tts discovery remove` clears them."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml

from conftest import (
    API_KEY,
    Broker,
    Capture,
    DaemonProcess,
    Home,
    edge_tts,
    mqtt_link,
    split_speech,
    write_config,
)
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
async def discovering(
    tmp_path: Path, broker: Broker, dashscope: FakeDashScope, home: Home, capture: Capture
) -> AsyncIterator[DaemonProcess]:
    config = write_config(
        tmp_path / "config.yaml", broker, dashscope, mqtt__discovery_prefix="homeassistant"
    )
    proc = DaemonProcess(config, dict(os.environ, DASHSCOPE_API_KEY=API_KEY))
    await proc.start(home)
    yield proc
    await proc.stop()


async def test_the_device_and_its_entities_are_announced(
    discovering: DaemonProcess, broker: Broker
) -> None:
    everything = {t: json.loads(p) for t, p in (await retained(broker, "homeassistant/#")).items()}
    group = everything.pop("homeassistant/notify/edge_tts_group_all/say/config")
    assert group["command_topic"] == "edge-tts/group/all/say"
    configs = everything
    node = "edge_tts_kitchen"
    assert set(configs) == {
        f"homeassistant/{c}/{node}/{o}/config"
        for c, o in [
            ("notify", "say"),
            ("button", "stop"),
            ("sensor", "state"),
            ("sensor", "first_audio"),
            ("sensor", "cloud_characters"),
            ("sensor", "cloud_cost"),
        ]
    }
    notify = configs[f"homeassistant/notify/{node}/say/config"]
    button = configs[f"homeassistant/button/{node}/stop/config"]
    state = configs[f"homeassistant/sensor/{node}/state/config"]
    first = configs[f"homeassistant/sensor/{node}/first_audio/config"]
    assert notify["command_topic"] == "edge-tts/kitchen/say"
    assert button["command_topic"] == "edge-tts/kitchen/stop"
    assert state["state_topic"] == "edge-tts/kitchen/state"
    assert first["state_topic"] == "edge-tts/kitchen/stats" and first["unit_of_measurement"] == "ms"
    for entity in (button, state, first):
        assert entity["availability_topic"] == "edge-tts/kitchen/availability"
    # The notify entity is always available: a message sent while the daemon is away must
    # still be published (QoS 1), for the broker to keep it, stamped for max_age_s.
    assert "availability_topic" not in notify and notify["qos"] == 1
    assert "sent_at" in notify["command_template"] and "value" in notify["command_template"]
    for entity in configs.values():
        assert entity["device"]["identifiers"] == [node]
        assert entity["device"]["sw_version"]
        assert entity["origin"]["name"] == "edge-tts" and entity["origin"]["sw_version"]
    assert len({e["unique_id"] for e in configs.values()}) == 6
    # Entity ids as Home Assistant derives them from the names, so that releases that do not
    # know default_entity_id give the same ones.
    assert {e["default_entity_id"] for e in configs.values()} == {
        "notify.edge_tts_kitchen_say",
        "button.edge_tts_kitchen_stop_speaking",
        "sensor.edge_tts_kitchen_state",
        "sensor.edge_tts_kitchen_time_to_first_audio",
        "sensor.edge_tts_kitchen_cloud_characters_this_month",
        "sensor.edge_tts_kitchen_estimated_cost_this_month",
    }
    cost = configs[f"homeassistant/sensor/{node}/cloud_cost/config"]
    assert cost["device_class"] == "monetary" and cost["state_class"] == "total"


async def test_the_entities_command_topics_speak_and_stop(
    discovering: DaemonProcess,
    broker: Broker,
    home: Home,
    capture: Capture,
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
    assert len(await retained(broker, "homeassistant/#")) == 7  # its 6 and the group `all`'s
    await discovering.stop()
    run = await edge_tts("discovery", "-c", str(discovering.config), "remove")
    assert run.code == 0, run.all
    assert "removed 7 Home Assistant entities of device 'kitchen'" in run.out
    assert "the entities of its groups no other device is in are removed too" in run.out
    assert await retained(broker, "homeassistant/#") == {}
    assert await retained(broker, "edge-tts/#") == {}  # no availability, state or stats left


async def test_discovery_remove_leaves_the_groups_entities_to_the_other_devices(
    discovering: DaemonProcess, broker: Broker
) -> None:
    async with aiomqtt.Client(broker.host, broker.port) as other:  # the den, switched off
        await other.publish("edge-tts/den/availability", b"offline", qos=1, retain=True)
    await discovering.stop()
    run = await edge_tts("discovery", "-c", str(discovering.config), "remove")
    assert run.code == 0, run.all
    assert "removed 6 Home Assistant entities of device 'kitchen'" in run.out
    assert "the entities of all stay: other devices are in them (den)" in run.out
    assert set(await retained(broker, "homeassistant/#")) == {
        "homeassistant/notify/edge_tts_group_all/say/config"
    }


async def test_no_discovery_when_the_prefix_is_null(daemon: DaemonProcess, broker: Broker) -> None:
    assert await retained(broker, "homeassistant/#") == {}


# The MQTT discovery keys each supported Home Assistant release accepts, taken from the
# release itself by scripts/ha-mqtt-schema (an unknown key would be dropped without a word:
# a typo would fail silently, so none is allowed).
RELEASES = [
    json.loads(p.read_text())
    for p in sorted((Path(__file__).parent / "ha").glob("mqtt-discovery-*.json"))
]
# Keys of releases newer than a file's, which it drops (its schemas remove extra keys).
NEWER = {"default_entity_id": "2025.10"}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:2])


@pytest.mark.parametrize("release", RELEASES, ids=[r["home_assistant"] for r in RELEASES])
def test_every_discovery_key_is_one_the_release_accepts(release: dict[str, Any]) -> None:
    from edge_tts.config import parse_config
    from edge_tts.discovery import discovery_messages

    config = parse_config({"device": {"name": "living room", "groups": ["downstairs"]}})
    nodes = set()
    for topic, payload in discovery_messages(config):
        prefix, component, node, object_id, last = topic.split("/")
        assert (prefix, last) == ("homeassistant", "config")
        nodes.add(node)
        fields = json.loads(payload)
        schema = release["platforms"][component]
        known = (
            set(schema["required"])
            | set(schema["optional"])
            | {
                k
                for k, since in NEWER.items()
                if _version(since) > _version(release["home_assistant"])
            }
        )
        assert set(fields) <= known, set(fields) - known
        assert set(schema["required"]) <= set(fields)
        assert "object_id" not in fields  # deprecated since 2025.10, gone since 2026.4
        device, origin = release["device"], release["origin"]
        assert set(fields["device"]) <= set(device["required"]) | set(device["optional"])
        assert (
            set(origin["required"])
            <= set(fields["origin"])
            <= set(origin["required"]) | set(origin["optional"])
        )
        assert fields["unique_id"] == f"{node}_{object_id}"
    assert nodes == {"edge_tts_living_room", "edge_tts_group_all", "edge_tts_group_downstairs"}


def test_every_member_of_a_group_publishes_the_same_group_entity() -> None:
    from edge_tts.config import parse_config
    from edge_tts.discovery import discovery_messages

    def group_entities(name: str, groups: list[str]) -> dict[str, bytes]:
        config = parse_config({"device": {"name": name, "groups": groups}})
        return {t: p for t, p in discovery_messages(config) if "/edge_tts_group_" in t}

    den, hall = group_entities("den", ["downstairs"]), group_entities("hall", ["downstairs", "x"])
    topic = "homeassistant/notify/edge_tts_group_downstairs/say/config"
    assert den[topic] == hall[topic]  # byte for byte: one entity, whoever published last
    assert set(den) < set(hall)
    entity = json.loads(den[topic])
    assert entity["default_entity_id"] == "notify.edge_tts_downstairs" and entity["name"] is None
    assert entity["command_topic"] == "edge-tts/group/downstairs/say" and entity["qos"] == 1
    assert "availability_topic" not in entity
    template = entity["command_template"]
    assert '"play_at": {{ (as_timestamp(now()) + 1) | round(3) }}' in template
    slower = parse_config(
        {"device": {"groups": ["downstairs"]}, "announcements": {"sync_ms": 1500}}
    )
    assert any(b"now()) + 1.5)" in p for _, p in discovery_messages(slower))


def test_supported_releases_are_on_file() -> None:
    assert "2025.4.4" in {r["home_assistant"] for r in RELEASES}


async def test_home_assistant_sees_idle_and_no_stale_value_from_the_first_second(
    discovering: DaemonProcess, broker: Broker, home: Home
) -> None:
    # A previous run's stats (with a last announcement) are replaced at start.
    kept = await retained(broker, "edge-tts/kitchen/#")
    assert json.loads(kept["edge-tts/kitchen/state"]) == {"state": "idle", "id": None, "text": None}
    stats = json.loads(kept["edge-tts/kitchen/stats"])
    assert stats["last_announcement"] is None  # the sensor's template makes that "unknown"
    first = json.loads(
        (await retained(broker, "homeassistant/sensor/#"))[
            "homeassistant/sensor/edge_tts_kitchen/first_audio/config"
        ]
    )
    assert "if value_json.last_announcement else None" in first["value_template"]
    assert "(value_json.last_announcement or {})" in first["json_attributes_template"]


async def test_the_daemons_broker_socket_sends_without_delay(broker: Broker) -> None:
    """TCP_NODELAY: an event is not held back ~40 ms waiting for the broker's ACK."""
    import socket

    async with mqtt_link(broker, "kitchen") as link:
        assert link._client is not None
        sock = link._client._client.socket()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


async def test_discovery_remove_on_a_broker_that_refuses_its_topics_says_so_and_removes_nothing(
    tmp_path: Path,
) -> None:
    # An ACL that lets the client read and write everything but its own device's topics.
    broker = Broker(tmp_path, acl="topic readwrite #\ntopic deny edge-tts/kitchen/#\n")
    broker.start()
    try:
        config = tmp_path / "config.yaml"
        config.write_text(
            yaml.safe_dump(
                {"device": {"name": "kitchen"}, "mqtt": {"host": broker.host, "port": broker.port}}
            )
        )
        async with aiomqtt.Client(broker.host, broker.port) as home:
            await home.publish(
                "homeassistant/notify/edge_tts_kitchen/say/config", b"{}", retain=True
            )
        run = await edge_tts("discovery", "-c", str(config), "remove")
        assert run.code == 1, run.all
        assert "nothing was removed" in run.err and "check the broker's ACL" in run.err
        assert "Traceback" not in run.all
        assert set(await retained(broker, "homeassistant/#")) == {
            "homeassistant/notify/edge_tts_kitchen/say/config"
        }
    finally:
        broker.stop()


def group_entity(group: str) -> str:
    return f"homeassistant/notify/edge_tts_group_{group}/say/config"


async def a_device_in(broker: Broker, device: str, *groups: str) -> None:
    """Another device, away now, as its daemon left it on the broker: a retained availability
    and stats that name its groups."""
    stats = {"since": "2026-11-26T08:00:00+00:00", "groups": {"groups": ["all", *groups]}}
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.publish(f"edge-tts/{device}/availability", b"offline", qos=1, retain=True)
        await client.publish(f"edge-tts/{device}/stats", json.dumps(stats), qos=1, retain=True)


async def test_a_group_leaves_home_assistant_with_its_last_member(
    tmp_path: Path, broker: Broker, dashscope: FakeDashScope, home: Home
) -> None:
    """Home Assistant shows a group for as long as a device is in it. The kitchen leaves
    `upstairs` and `downstairs` (a new config, a restart): nobody else is upstairs, so that
    entity goes; the den is still downstairs, so that one stays, and so does `all`."""
    await a_device_in(broker, "den", "downstairs")
    path = tmp_path / "config.yaml"
    discovery = {"mqtt__discovery_prefix": "homeassistant"}
    env = dict(os.environ, DASHSCOPE_API_KEY=API_KEY)
    write_config(path, broker, dashscope, device__groups=["upstairs", "downstairs"], **discovery)
    first = DaemonProcess(path, env)
    await first.start(home)
    await first.stop()
    assert {group_entity(g) for g in ("upstairs", "downstairs", "all")} <= set(
        await retained(broker, "homeassistant/#")
    )

    write_config(path, broker, dashscope, device__groups=[], **discovery)
    second = DaemonProcess(path, env)
    await second.start(home)
    try:
        await second.logged("left group upstairs, which no other device is in: entity removed")
        await second.logged("left group downstairs; its entity stays for den")
        entities = set(await retained(broker, "homeassistant/#"))
        assert group_entity("upstairs") not in entities
        assert {group_entity("downstairs"), group_entity("all")} <= entities
    finally:
        await second.stop()
    # Done once: the next start has nothing left to do.
    third = DaemonProcess(path, env)
    await third.start(home)
    await third.stop()
    assert b"left group" not in third.stderr


async def test_discovery_remove_takes_the_groups_only_it_was_in(
    tmp_path: Path, broker: Broker, dashscope: FakeDashScope, home: Home
) -> None:
    await a_device_in(broker, "den")
    await a_device_in(broker, "hall", "downstairs")
    path = write_config(
        tmp_path / "config.yaml",
        broker,
        dashscope,
        device__groups=["upstairs", "downstairs"],
        mqtt__discovery_prefix="homeassistant",
    )
    proc = DaemonProcess(path, dict(os.environ, DASHSCOPE_API_KEY=API_KEY))
    await proc.start(home)
    await proc.stop()
    run = await edge_tts("discovery", "-c", str(path), "remove")
    assert run.code == 0, run.all
    assert "removed 7 Home Assistant entities of device 'kitchen'" in run.out  # 6 and upstairs
    assert "the entities of all, downstairs stay: other devices are in them (den, hall)" in run.out
    assert set(await retained(broker, "homeassistant/#")) == {
        group_entity("downstairs"),
        group_entity("all"),
    }
