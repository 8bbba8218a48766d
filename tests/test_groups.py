"""Several rooms, one voice: three daemons on one broker, each with its own speaker (ALSA
capture), cache and queue. A group announcement is synthesized once and heard whole in every
room; a member going away mid-way does not leave the others silent; a group stop stops all."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from conftest import (
    API_KEY,
    Broker,
    Capture,
    DaemonProcess,
    mqtt_link,
    split_speech,
    write_config,
)
from fake_dashscope import FakeDashScope, pcm_for

ROOMS = ("den", "hall", "attic")


@dataclass
class Household:
    """Home Assistant's view of every room: the events each device published."""

    client: aiomqtt.Client
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    online: set[str] = field(default_factory=set)
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)  # each room's latest
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 20) -> None:
        async with asyncio.timeout(timeout):
            async with self.changed:
                await self.changed.wait_for(predicate)

    def of(self, room: str, announcement_id: str) -> list[dict[str, Any]]:
        return [e for r, e in self.events if r == room and e["id"] == announcement_id]

    def event(self, room: str, announcement_id: str, kind: str) -> dict[str, Any] | None:
        return next((e for e in self.of(room, announcement_id) if e["event"] == kind), None)

    async def outcomes(
        self, announcement_id: str, rooms: tuple[str, ...] = ROOMS
    ) -> dict[str, dict[str, Any]]:
        """Each room's final event of the announcement."""
        final = ("finished", "failed", "dropped")

        def ended(room: str) -> dict[str, Any] | None:
            return next((e for e in self.of(room, announcement_id) if e["event"] in final), None)

        await self.wait_for(lambda: all(ended(r) for r in rooms))
        return {r: e for r in rooms if (e := ended(r)) is not None}

    async def started(self, announcement_id: str, rooms: tuple[str, ...] = ROOMS) -> None:
        await self.wait_for(lambda: all(self.event(r, announcement_id, "started") for r in rooms))

    async def say(self, topic: str, fields: dict[str, Any]) -> None:
        await self.client.publish(f"edge-tts/{topic}", json.dumps(fields), qos=1)


@asynccontextmanager
async def household(broker: Broker) -> AsyncIterator[Household]:
    async with aiomqtt.Client(broker.host, broker.port, identifier="ha-house") as client:
        await client.subscribe(
            [("edge-tts/+/event", 1), ("edge-tts/+/availability", 1), ("edge-tts/+/stats", 1)]
        )
        house = Household(client)

        async def record() -> None:
            async for message in client.messages:
                room, kind = str(message.topic).split("/")[1:3]
                payload = message.payload
                assert isinstance(payload, bytes)
                async with house.changed:
                    if kind == "event":
                        house.events.append((room, json.loads(payload)))
                    elif kind == "stats":
                        house.stats[room] = json.loads(payload)
                    elif payload == b"online":
                        house.online.add(room)
                    else:
                        house.online.discard(room)
                    house.changed.notify_all()

        task = asyncio.create_task(record())
        try:
            yield house
        finally:
            task.cancel()


@dataclass
class Room:
    name: str
    daemon: DaemonProcess
    capture: Capture


@pytest.fixture
async def house(broker: Broker) -> AsyncIterator[Household]:
    async with household(broker) as h:
        yield h


GROUP_KEY = "a secret of the household"


@pytest.fixture
def group_key() -> str | None:
    """The rooms' device.group_key: none, unless a test is parametrized with one."""
    return None


@pytest.fixture
async def rooms(
    tmp_path: Path,
    broker: Broker,
    dashscope: FakeDashScope,
    house: Household,
    group_key: str | None,
) -> AsyncIterator[dict[str, Room]]:
    """Three daemons in the group `downstairs`, each with its own speaker, cache and state."""
    started: dict[str, Room] = {}
    for name in ROOMS:
        home = tmp_path / name
        home.mkdir()
        config = write_config(
            home / "config.yaml",
            broker,
            dashscope,
            device={"name": name, "groups": ["downstairs"], "group_key": group_key},
            cache={"dir": str(home / "cache"), "max_mb": 50},
        )
        capture = Capture(home / "alsa-out.raw")
        env = dict(
            os.environ,
            DASHSCOPE_API_KEY=API_KEY,
            EDGE_TTS_ALSA_CAPTURE=str(capture.path),
            XDG_STATE_HOME=str(home / "state"),
        )
        started[name] = Room(name, DaemonProcess(config, env), capture)
        await started[name].daemon.spawn()
    await house.wait_for(lambda: house.online >= set(ROOMS))
    yield started
    for room in started.values():
        if room.daemon.running:
            await room.daemon.stop()


def leader_of(house: Household, announcement_id: str) -> str:
    (leader,) = [
        r
        for r in ROOMS
        if (e := house.event(r, announcement_id, "started")) and e["source"] == "cloud"
    ]
    return leader


@pytest.mark.parametrize("group_key", [None, GROUP_KEY])
async def test_a_group_announcement_is_synthesized_once_and_heard_whole_in_every_room(
    rooms: dict[str, Room], house: Household, dashscope: FakeDashScope, group_key: str | None
) -> None:
    text = "Dinner is ready, everyone downstairs."
    await house.say("group/downstairs/say", {"text": text, "play_at": time.time() + 4})
    # Every member names it alike (from the message itself), so Home Assistant can follow it.
    await house.wait_for(lambda: len({e["id"] for _, e in house.events}) == 1 and house.events)
    (announcement_id,) = {e["id"] for _, e in house.events}
    outcomes = await house.outcomes(announcement_id)
    assert {e["event"] for e in outcomes.values()} == {"finished"}, outcomes
    assert len(dashscope.tasks) == 1  # one synthesis for the three rooms
    sources = sorted(house.event(r, announcement_id, "started")["source"] for r in ROOMS)  # type: ignore[index]
    assert sources == ["cloud", "shared", "shared"]
    for room in rooms.values():
        assert split_speech(room.capture.read())[1] == pcm_for(text), room.name
        started = house.event(room.name, announcement_id, "started")
        assert (
            started is not None and isinstance(started["late_ms"], int) and started["late_ms"] >= 0
        )
        # How fast its audio came, not the wait for play_at (4 s) after it.
        assert started["first_audio_ms"] < 3000, started

    # Each room's stats say which way it went there.
    def tally() -> tuple[int, int]:
        groups = [house.stats.get(r, {}).get("groups", {}) for r in ROOMS]
        return sum(g.get("led", 0) for g in groups), sum(g.get("followed", 0) for g in groups)

    await house.wait_for(lambda: tally() == (1, 2))
    assert house.stats["den"]["groups"]["groups"] == ["all", "downstairs"]
    assert house.stats["den"]["groups"]["signed"] is (group_key is not None)
    await house.say("group/downstairs/say", {"text": text, "id": "again"})
    await house.outcomes("again")
    sources = sorted(house.event(r, "again", "started")["source"] for r in ROOMS)  # type: ignore[index]
    if group_key is not None:
        # Signed, the members that were shared it keep it: next time it is theirs at once.
        assert sources == ["cache"] * 3 and len(dashscope.tasks) == 1
    else:
        # Unsigned, anyone on the broker could have sent it: played, not kept.
        assert sources == ["cache", "cloud", "shared"] and len(dashscope.tasks) == 2


async def test_the_all_topic_is_a_group_too(
    rooms: dict[str, Room], house: Household, dashscope: FakeDashScope
) -> None:
    await house.say("all/say", {"text": "The post is here.", "id": "post"})
    outcomes = await house.outcomes("post")
    assert {e["event"] for e in outcomes.values()} == {"finished"}
    assert len(dashscope.tasks) == 1
    for room in rooms.values():
        assert split_speech(room.capture.read())[1] == pcm_for("The post is here.")


async def test_a_member_with_the_phrase_cached_plays_its_own_copy(
    rooms: dict[str, Room], house: Household, dashscope: FakeDashScope
) -> None:
    text = "The door is open."
    await house.say("hall/say", {"text": text, "id": "alone"})
    await house.outcomes("alone", ("hall",))
    await house.say("group/downstairs/say", {"text": text, "id": "together"})
    await house.outcomes("together")
    sources = {r: house.event(r, "together", "started")["source"] for r in ROOMS}  # type: ignore[index]
    assert sources["hall"] == "cache"
    assert sorted([sources["den"], sources["attic"]]) == ["cloud", "shared"]
    assert len(dashscope.tasks) == 2  # the hall's own, then one for the other two
    for room in rooms.values():
        assert split_speech(room.capture.read())[1] == pcm_for(text)


async def test_a_leader_killed_mid_announcement_leaves_no_room_silent(
    rooms: dict[str, Room], house: Household, dashscope: FakeDashScope
) -> None:
    dashscope.chunk_interval_s = 0.05  # 4800 bytes (0.1 s) every 50 ms: a few seconds of it
    text = "First sentence of a long notice. " * 4 + "And the end of it."
    await house.say("group/downstairs/say", {"text": text, "id": "long", "cache": False})
    await house.started("long")
    leader = leader_of(house, "long")
    await rooms[leader].daemon.kill()
    followers = tuple(r for r in ROOMS if r != leader)
    outcomes = await house.outcomes("long", followers)
    for room in followers:
        assert outcomes[room]["event"] == "finished", outcomes[room]
        assert f"{leader}, which was sharing it, went offline" in outcomes[room]["reason"]
        assert "the cloud said the rest from sentence" in outcomes[room]["reason"]
        heard = split_speech(rooms[room].capture.read())[1]
        assert heard.endswith(pcm_for("And the end of it.")), room  # nothing left unsaid
    # The leader's one task, then each follower asked for the rest itself.
    assert len(dashscope.tasks) == 3


async def test_a_busy_member_starts_late_and_says_by_how_much(
    rooms: dict[str, Room], house: Household, dashscope: FakeDashScope
) -> None:
    # 6.3 s of speech, in 63 chunks 50 ms apart: the attic is busy for 3 s at least.
    dashscope.chunk_interval_s = 0.05
    story = "A long story only the attic hears. " * 3
    await house.say("attic/say", {"text": story, "id": "story"})
    await house.wait_for(lambda: house.event("attic", "story", "started") is not None)
    await house.say(
        "group/downstairs/say", {"text": "Lunch.", "id": "lunch", "play_at": time.time() + 0.3}
    )
    outcomes = await house.outcomes("lunch")
    assert {e["event"] for e in outcomes.values()} == {"finished"}
    late = {r: house.event(r, "lunch", "started")["late_ms"] for r in ROOMS}  # type: ignore[index]
    assert late["attic"] > 1000, late  # after the story, nothing of Lunch skipped
    assert split_speech(rooms["attic"].capture.read())[1] == pcm_for("Lunch.")


async def test_a_stop_to_the_group_stops_every_member(
    rooms: dict[str, Room], house: Household, dashscope: FakeDashScope
) -> None:
    dashscope.chunk_interval_s = 0.05
    text = "A notice that goes on and on. " * 5
    await house.say("group/downstairs/say", {"text": text, "id": "on"})
    await house.say("group/downstairs/say", {"text": "Next in line.", "id": "next"})
    await house.started("on")
    await house.client.publish("edge-tts/group/downstairs/stop", b"", qos=1)
    outcomes = await house.outcomes("on")
    assert {e["event"] for e in outcomes.values()} == {"dropped"}, outcomes
    assert {e["error"] for e in outcomes.values()} == {"stopped"}
    nexts = await house.outcomes("next")
    assert {e["event"] for e in nexts.values()} == {"dropped"}


async def test_a_group_a_device_is_not_in_is_not_its_business(
    rooms: dict[str, Room], house: Household, broker: Broker
) -> None:
    await house.say("group/upstairs/say", {"text": "Not for us.", "id": "up"})
    await house.say("group/downstairs/say", {"text": "For us.", "id": "down"})
    await house.outcomes("down")
    assert not any(e["id"] == "up" for _, e in house.events)


@pytest.mark.parametrize(
    ("play_at", "kind", "says"),
    [
        (lambda: time.time() - 3600, "dropped", "too late: play_at was 3600 s ago"),
        (lambda: time.time() + 7200, "failed", "'play_at' is 7200 s ahead, more than an hour"),
        (lambda: "2026-11-26T08:00:00", "failed", "ISO 8601 time with its offset"),
        (lambda: "soon", "failed", "ISO 8601 time with its offset"),
    ],
)
async def test_a_bad_play_at_is_an_event_with_the_reason_and_the_next_is_spoken(
    tmp_path: Path,
    broker: Broker,
    dashscope: FakeDashScope,
    house: Household,
    play_at: Callable[[], object],
    kind: str,
    says: str,
) -> None:
    config = write_config(tmp_path / "c.yaml", broker, dashscope, device={"name": "den"})
    capture = Capture(tmp_path / "out.raw")
    env = dict(os.environ, DASHSCOPE_API_KEY=API_KEY, EDGE_TTS_ALSA_CAPTURE=str(capture.path))
    den = DaemonProcess(config, env)
    await den.spawn()
    try:
        await house.wait_for(lambda: "den" in house.online)
        await house.say("den/say", {"text": "Bad timing.", "id": "bad", "play_at": play_at()})
        await house.say("den/say", {"text": "Good timing.", "id": "good"})
        (bad,) = (await house.outcomes("bad", ("den",))).values()
        assert bad["event"] == kind and says in bad["error"], bad
        (good,) = (await house.outcomes("good", ("den",))).values()
        assert good["event"] == "finished"
        assert split_speech(capture.read())[1] == pcm_for("Good timing.")
    finally:
        await den.stop()


async def test_one_far_ahead_waits_outside_the_queue_and_a_stop_drops_it(
    rooms: dict[str, Room], house: Household
) -> None:
    await house.say("den/say", {"text": "Later.", "id": "later", "play_at": time.time() + 600})
    await house.wait_for(lambda: house.event("den", "later", "queued") is not None)
    await house.say("den/say", {"text": "Now.", "id": "now"})  # not held up by it
    assert (await house.outcomes("now", ("den",)))["den"]["event"] == "finished"
    await house.client.publish("edge-tts/den/stop", b"", qos=1)
    dropped = (await house.outcomes("later", ("den",)))["den"]
    assert dropped["event"] == "dropped" and dropped["error"] == "stopped"


async def test_a_stranger_on_the_speech_topic_is_not_followed(
    rooms: dict[str, Room], house: Household, dashscope: FakeDashScope
) -> None:
    from edge_tts.cache import cache_key
    from edge_tts.config import load_config
    from edge_tts.engines import SynthesisRequest
    from edge_tts.group import speech_key
    from edge_tts.protocols.share import Claim, Leader, encode

    text = "Only the real voice."
    config = load_config(str(rooms["den"].daemon.config))
    key = cache_key(SynthesisRequest(text=text, voice=config.voices["default"], sample_rate=24000))
    topic = f"edge-tts/group/downstairs/speech/{speech_key('downstairs', 'real')}"
    mallory = Leader("mallory")  # claims first, with the right key, and "shares" noise
    for payload in [
        encode(Claim("mallory", key)),
        *mallory.audio(b"\x7f\x7f" * 2000),
        mallory.end(),
        b"\xff garbage",
        b'{"from": "den", "k": "audio", "seq": 99}\n',
    ]:
        await house.client.publish(topic, payload, qos=1)
    await house.say("group/downstairs/say", {"text": text, "id": "real"})
    outcomes = await house.outcomes("real")
    assert {e["event"] for e in outcomes.values()} == {"finished"}
    assert len(dashscope.tasks) == 1
    for room in rooms.values():
        assert split_speech(room.capture.read())[1] == pcm_for(text), room.name


async def test_garbage_on_the_speech_topics_changes_nothing(
    rooms: dict[str, Room], house: Household, dashscope: FakeDashScope
) -> None:
    """Generated payloads (raw bytes, broken headers, claims and pieces under real members'
    names with any numbers) on the group's speech topics: every daemon keeps running and the
    next group announcement is heard whole in every room, synthesized once."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    from edge_tts.group import speech_key
    from edge_tts.protocols.share import Leader

    header = st.fixed_dictionaries(
        {
            "from": st.sampled_from([*ROOMS, "", "x"]),
            "k": st.sampled_from(["claim", "audio", "end", "failed", "?"]),
        },
        optional={
            "seq": st.integers(-2, 3) | st.booleans(),
            "key": st.text(max_size=5),
            "pieces": st.integers(-1, 3),
            "bytes": st.integers(-1, 9),
            "reason": st.text(max_size=10),
        },
    ).map(lambda h: json.dumps(h).encode() + b"\n")
    payload = st.one_of(
        st.binary(max_size=200), st.tuples(header, st.binary(max_size=64)).map(b"".join)
    )
    found: list[tuple[str, bytes]] = []
    real = speech_key("downstairs", "after")  # the next announcement's own topic, too

    @settings(
        max_examples=400,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        deadline=None,
    )
    @given(st.sampled_from(["k1", "k2", real]), payload)
    def collect(key: str, body: bytes) -> None:
        found.append((f"edge-tts/group/downstairs/speech/{key}", body))

    collect()
    # And, on its own topic, each member's name on a first piece and an end, ahead of time.
    for room in ROOMS:
        impostor = Leader(room)
        for body in [*impostor.audio(b"\x7f\x7f" * 100), impostor.end()]:
            found.append((f"edge-tts/group/downstairs/speech/{real}", body))
    for topic, body in found:
        await house.client.publish(topic, body, qos=0)
    await house.say("group/downstairs/say", {"text": "Still one voice.", "id": "after"})
    outcomes = await house.outcomes("after")
    assert {e["event"] for e in outcomes.values()} == {"finished"}
    assert len(dashscope.tasks) == 1
    for room in rooms.values():
        assert room.daemon.running and b"Traceback" not in room.daemon.stderr
        assert split_speech(room.capture.read())[1] == pcm_for("Still one voice.")


async def test_a_leader_silent_after_its_claim_is_waited_for_only_so_long(
    rooms: dict[str, Room], house: Household, dashscope: FakeDashScope
) -> None:
    """A member that claims and then says nothing (its power cut, its broker session not yet
    timed out): the others wait for it as long as for a stalled cloud and its replacement
    (dashscope.stall_timeout_s + fallback.first_audio_ms: 2.5 s here), then elect again among
    themselves: still one synthesis, and every event says why it came late."""
    from edge_tts.cache import cache_key
    from edge_tts.config import load_config
    from edge_tts.engines import SynthesisRequest
    from edge_tts.group import speech_key
    from edge_tts.protocols.share import Claim, encode

    text = "Anyone there?"
    config = load_config(str(rooms["den"].daemon.config))
    key = cache_key(SynthesisRequest(text=text, voice=config.voices["default"], sample_rate=24000))
    await house.client.publish("edge-tts/ghost/availability", b"online", qos=1, retain=True)
    topic = f"edge-tts/group/downstairs/speech/{speech_key('downstairs', 'ghosted')}"
    await house.client.publish(topic, encode(Claim("ghost", key)), qos=1)
    await house.say("group/downstairs/say", {"text": text, "id": "ghosted"})
    outcomes = await house.outcomes("ghosted")
    assert {e["event"] for e in outcomes.values()} == {"finished"}
    assert len(dashscope.tasks) == 1
    started = {r: house.event(r, "ghosted", "started") for r in ROOMS}
    assert sorted(e["source"] for e in started.values()) == ["cloud", "shared", "shared"]  # type: ignore[index]
    for room in rooms.values():
        reason = started[room.name]["reason"]  # type: ignore[index]
        assert reason == "ghost, which was sharing it, sent nothing for 2.5 s"
        assert split_speech(room.capture.read())[1] == pcm_for(text)
    await house.client.publish("edge-tts/ghost/availability", b"", qos=1, retain=True)


async def test_a_groups_audio_never_crowds_out_events(broker: Broker) -> None:
    """A leader hands the link its audio faster than the broker takes it: the events queued
    around it still go out, every one, and the audio after them, in order."""
    async with (
        aiomqtt.Client(broker.host, broker.port) as client,
        mqtt_link(broker, "den") as link,
    ):
        await client.subscribe([("edge-tts/den/event", 1), ("edge-tts/group/all/speech/k", 0)])
        link.publish_event({"id": "before"})
        for n in range(1500):  # 7.5 MB at once, more messages than the outbox holds
            link.publish_speech("edge-tts/group/all/speech/k", n.to_bytes(2, "big") * 2500)
        link.publish_event({"id": "after"})
        events, pieces = [], []
        async with asyncio.timeout(30):
            async for message in client.messages:
                payload = bytes(message.payload)  # type: ignore[arg-type]
                if str(message.topic).endswith("/event"):
                    events.append(json.loads(payload)["id"])
                else:
                    pieces.append(int.from_bytes(payload[:2], "big"))
                if len(events) == 2 and len(pieces) == 1500:
                    break
        assert events == ["before", "after"] and pieces == list(range(1500))


async def test_a_room_whose_clock_is_behind_still_starts_with_the_others(
    rooms: dict[str, Room], house: Household
) -> None:
    """Home Assistant's clock 60 s ahead of every room's (as a Pi's before NTP settles): its
    message is 'sent' in the future and asks to play 1 s after that. Played 1 s after it
    arrived, not a minute later; every room says why in its log."""
    sent = time.time() + 60
    await house.say(
        "group/downstairs/say",
        {"text": "On time anyway.", "id": "skewed", "sent_at": sent, "play_at": sent + 1},
    )
    outcomes = await house.outcomes("skewed")  # 20 s at most: not the minute
    assert {e["event"] for e in outcomes.values()} == {"finished"}
    for room in rooms.values():
        assert split_speech(room.capture.read())[1] == pcm_for("On time anyway.")
        assert b"the sender's clock is 60 s ahead of this one" in room.daemon.stderr


async def test_a_group_left_is_no_longer_delivered(
    broker: Broker, state_home: Path, said: Said
) -> None:
    """The broker keeps a device's subscriptions in its session: one that leaves a group (a
    new config, a restart) unsubscribes it, instead of being sent its traffic for good (its
    entity's topic too, which a member watches)."""
    noted = state_home / "subscriptions-den.json"
    heard: asyncio.Queue[Any] = asyncio.Queue()
    async with mqtt_link(broker, "den", ["upstairs"], heard.put):
        assert {"edge-tts/group/upstairs/say", UPSTAIRS} <= set(json.loads(noted.read_text()))
    async with mqtt_link(broker, "den", [], heard.put):  # the same session, without the group
        async with aiomqtt.Client(broker.host, broker.port) as client:
            await client.publish("edge-tts/group/upstairs/say", b"not for us", qos=1)
            await client.publish(UPSTAIRS, b"nor this", qos=1)  # its entity's topic
            await client.publish("edge-tts/den/say", b"for us", qos=1)  # after them, in order
        got = []
        async with asyncio.timeout(10):
            while (message := await heard.get()).topic != "edge-tts/den/say":
                got.append((message.topic, message.payload))
        assert message.payload == b"for us"
        assert not {("edge-tts/group/upstairs/say", b"not for us"), (UPSTAIRS, b"nor this")} & set(
            got
        )
        await said.wait_for("left group upstairs")  # then noted
        assert not {"edge-tts/group/upstairs/say", UPSTAIRS} & set(json.loads(noted.read_text()))


@pytest.mark.parametrize(
    "note",
    [
        ["", "edge-tts/group/upstairs/say"],  # an empty filter: paho refuses it
        ["edge-tts/#/say", "edge-tts/group/up+/say"],  # not filters: the broker disconnects
        ["zigbee2mqtt/bridge/state", "#"],  # not ours to drop
        ["edge-tts/group/x/" + "y" * 70_000],  # longer than MQTT carries
    ],
)
async def test_a_damaged_note_of_subscriptions_does_not_keep_the_device_offline(
    broker: Broker, tmp_path: Path, note: list[str]
) -> None:
    """The note is the daemon's own file, but a disk or a hand can spoil it: what it names is
    unsubscribed only if it is a topic of ours this run could have taken."""
    from edge_tts.config import parse_config
    from edge_tts.mqtt import MqttLink

    noted = tmp_path / "subscriptions-den.json"
    noted.write_text(json.dumps(note))

    async def take(_: object) -> None:
        return None

    config = parse_config(
        {"device": {"name": "den"}, "mqtt": {"host": broker.host, "port": broker.port}}
    )
    link = MqttLink(config.mqtt, config.device, take, subscribed=noted)
    task = asyncio.create_task(link.run())
    try:
        async with asyncio.timeout(10):
            await link.connected.wait()
        assert "edge-tts/den/say" in json.loads(noted.read_text())  # noted afresh
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_flood_of_speech_topics_does_not_cut_off_the_audio_being_played() -> None:
    """Messages on many other announcements' topics (a busy group, or someone flooding it)
    make room by forgetting channels nobody here plays from, never the one being followed."""
    from edge_tts.announcement import Announcement
    from edge_tts.group import Groups, speech_key
    from edge_tts.mqtt import Topics
    from edge_tts.protocols.share import Claim, Leader, encode

    sent: list[tuple[str, bytes]] = []
    groups = Groups("den", Topics.of("edge-tts", "den"), lambda t, p: sent.append((t, p)))
    groups.availability("hall", True)
    a = Announcement("Hello.", id="flooded", group="all")
    key = speech_key("all", "flooded")
    hall = Leader("hall")
    groups.receive("all", key, encode(Claim("hall", "k")))
    role = await groups.join(a, "k")
    assert role is not None and not hasattr(role, "tee")  # following the hall
    audio = role.audio(stall_s=5)  # type: ignore[union-attr]
    groups.receive("all", key, hall.audio(b"first")[0])
    assert await anext(audio) == b"first"
    for n in range(50):
        groups.receive("all", f"junk{n}", b"junk")
    groups.receive("all", key, hall.audio(b"second")[0])
    groups.receive("all", key, hall.end())
    assert [chunk async for chunk in audio] == [b"second"]
    assert len(groups._channels) <= 6 + 1  # the others were forgotten as they came
    groups.forget(a)
    assert key not in groups._channels


async def test_what_arrives_while_a_piece_is_played_is_not_slept_through() -> None:
    """The player takes a piece, and meanwhile the rest and the end arrive: the follower goes
    on at once, not after a stall (it used to wait for a message that had already come)."""
    from edge_tts.announcement import Announcement
    from edge_tts.group import Groups, speech_key
    from edge_tts.mqtt import Topics
    from edge_tts.protocols.share import Claim, Leader, encode

    groups = Groups("den", Topics.of("edge-tts", "den"), lambda t, p: None)
    groups.availability("hall", True)
    a = Announcement("Hi.", id="quick", group="all")
    key, hall = speech_key("all", "quick"), Leader("hall")
    groups.receive("all", key, encode(Claim("hall", "k")))
    role = await groups.join(a, "k")
    audio = role.audio(stall_s=30)  # type: ignore[union-attr]
    groups.receive("all", key, hall.audio(b"one")[0])
    assert await anext(audio) == b"one"
    groups.receive("all", key, hall.end())  # while "one" is being played
    async with asyncio.timeout(5):  # not the 30 s stall
        assert [chunk async for chunk in audio] == []


async def test_a_leader_cut_off_in_its_own_room_leaves_the_others_speaking(
    rooms: dict[str, Room], house: Household, dashscope: FakeDashScope
) -> None:
    """A critical announcement in the leader's room only cuts the group's there; the others
    hear at once that it stopped sharing, and say the rest themselves."""
    dashscope.chunk_interval_s = 0.05
    text = "A long notice for the whole floor. " * 4 + "And its last words."
    await house.say("group/downstairs/say", {"text": text, "id": "floor", "cache": False})
    await house.started("floor")
    leader = leader_of(house, "floor")
    await house.say(f"{leader}/say", {"text": "Smoke!", "id": "smoke", "priority": "critical"})
    followers = tuple(r for r in ROOMS if r != leader)
    outcomes = await house.outcomes("floor", followers)
    cut = (await house.outcomes("floor", (leader,)))[leader]
    assert (cut["event"], cut["error"]) == ("dropped", "interrupted by smoke")
    for room in followers:
        assert outcomes[room]["event"] == "finished", outcomes[room]
        assert f"{leader} stopped sharing: stopped playing it" in outcomes[room]["reason"]
        heard = split_speech(rooms[room].capture.read())[1]
        assert heard.endswith(pcm_for("And its last words.")), room


def test_a_flood_of_availability_topics_is_bounded() -> None:
    from edge_tts.group import Groups
    from edge_tts.mqtt import Topics

    groups = Groups("den", Topics.of("edge-tts", "den"), lambda t, p: None)
    for n in range(5000):
        groups.availability(f"ghost{n}", True)
    assert len(groups._online) == 1024
    groups.availability("ghost1", False)
    groups.availability("hall", True)  # room again, for a real one
    assert "hall" in groups._online


class Said(logging.Handler):
    """What edge_tts.mqtt logs, as it logs it, to wait for a line without guessing a time."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self._more = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        self._more.set()

    async def wait_for(self, text: str, timeout: float = 10) -> str:
        async with asyncio.timeout(timeout):
            while not any(text in line for line in self.lines):
                self._more.clear()
                await self._more.wait()
        return next(line for line in self.lines if text in line)


@pytest.fixture
def said() -> Iterator[Said]:
    handler = Said()
    logger = logging.getLogger("edge_tts.mqtt")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def kitchen_link(
    broker: Broker, groups: list[str], **options: Any
) -> AbstractAsyncContextManager[Any]:
    """The kitchen's broker session, in `groups`, with discovery as the daemon has it."""
    return mqtt_link(broker, "kitchen", groups, **options)


UPSTAIRS = "homeassistant/notify/edge_tts_group_upstairs/say/config"


async def put(broker: Broker, retained: dict[str, bytes]) -> None:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        for topic, payload in retained.items():
            await client.publish(topic, payload, qos=1, retain=True)


async def upstairs_entity(broker: Broker) -> bool:
    """Whether the broker keeps the upstairs group's entity (read as Home Assistant would)."""
    probe = f"probe/{os.getpid()}-{time.monotonic_ns()}"
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.subscribe([(UPSTAIRS, 1), (probe, 1)])
        await client.publish(probe, b"", qos=1)
        async with asyncio.timeout(10):
            async for message in client.messages:
                return str(message.topic) == UPSTAIRS
    return False


@pytest.mark.parametrize(
    ("the_den", "stays"),
    [
        ({"edge-tts/den/availability": b"online"}, True),  # its groups unknown: kept
        (  # its availability, then its stats: known, and not upstairs
            {
                "edge-tts/den/availability": b"online",
                "edge-tts/den/stats": b'{"groups": {"groups": ["all", "hall"]}}',
            },
            False,
        ),
        ({"edge-tts/den/stats": b'["upstairs"]'}, True),  # JSON, but not stats
        ({"edge-tts/den/stats": b'{"groups": {"groups": ["all", "upstairs"]}}'}, True),
        ({"edge-tts/den/stats": b'{"groups": {"groups": ["all"]}}'}, False),
        ({"edge-tts/den/stats": b"not json"}, True),  # unknown again: kept
        ({"edge-tts/den/stats": b'{"groups": {"groups": ["upstairs", 7]}}'}, True),
        ({"edge-tts/den/stats": b'{"groups": ["upstairs"]}'}, True),
        (
            {"edge-tts/den/stats": b'{"groups": {"groups": ["a"]}, "x": "' + b"y" * 70_000 + b'"}'},
            True,
        ),
        ({"edge-tts/den/availability": b""}, False),  # a device removed is in nothing
    ],
)
async def test_a_group_left_keeps_its_entity_while_another_device_may_be_in_it(
    broker: Broker, said: Said, state_home: Path, the_den: dict[str, bytes], stays: bool
) -> None:
    """Whatever another client left on the broker, a group's entity goes only when every
    other device's groups are known and none is in it (the worst a hostile one does: keep it)."""
    async with kitchen_link(broker, ["upstairs"]):
        pass
    assert await upstairs_entity(broker)
    await put(broker, the_den)
    async with kitchen_link(broker, []):
        line = await said.wait_for("left group upstairs")
        noted = json.loads((state_home / "subscriptions-kitchen.json").read_text())
    assert not any("upstairs" in topic for topic in noted)  # done: noted without it
    assert line.endswith("its entity stays for den" if stays else "entity removed")
    assert await upstairs_entity(broker) is stays


async def test_a_group_left_while_who_else_is_in_it_cannot_be_read_is_tried_again(
    tmp_path: Path, said: Said
) -> None:
    """A broker whose ACL refuses the probe: the entity stays, the log says so, and the next
    connect asks again (here on a broker that answers)."""
    (tmp_path / "strict").mkdir()
    acl = "topic readwrite #\ntopic deny edge-tts/kitchen/probe/#\n"
    strict = Broker(tmp_path / "strict", acl=acl)
    strict.start()
    try:
        async with kitchen_link(strict, ["upstairs"]):
            pass
        async with kitchen_link(strict, [], members_timeout_s=0.5):
            await said.wait_for("cannot find out who else is in upstairs (no answer)")
        assert await upstairs_entity(strict)
    finally:
        strict.stop()
    (tmp_path / "open").mkdir()
    answering = Broker(tmp_path / "open")
    answering.start()
    try:
        await put(answering, {UPSTAIRS: b"{}"})  # as the kitchen published it there
        async with kitchen_link(answering, []):
            await said.wait_for("left group upstairs, which no other device is in")
        assert not await upstairs_entity(answering)
    finally:
        answering.stop()


def test_only_a_group_a_config_could_name_is_read_from_the_note() -> None:
    from edge_tts.mqtt import _groups_of

    noted = [
        "edge-tts/group/upstairs/say",
        "edge-tts/group/+/say",  # a filter: no entity of that name to clear
        "edge-tts/group/#",
        "edge-tts/group/a/b/say",
        "edge-tts/group/Upstairs/say",
        "edge-tts/group//say",
        "edge-tts/upstairs/say",
        "edge-tts/group/upstairs/stop",
        "other/group/den/say",
    ]
    assert _groups_of(noted, "edge-tts") == ["upstairs"]


@pytest.fixture
def damaged_note(state_home: Path) -> Path:
    state_home.mkdir(parents=True)
    noted = state_home / "subscriptions-kitchen.json"
    noted.write_text(json.dumps(["edge-tts/group/+/say", "edge-tts/group/+/stop"]))
    return noted


async def test_a_damaged_note_names_no_group_to_clear(broker: Broker, damaged_note: Path) -> None:
    noted = damaged_note
    async with kitchen_link(broker, []):
        assert "edge-tts/kitchen/say" in json.loads(noted.read_text())  # noted afresh at once


def test_a_group_is_orphaned_only_when_every_other_device_is_known_to_be_out_of_it() -> None:
    from edge_tts.mqtt import _groups_in_stats, orphans

    assert orphans(["all", "up"], {}) == ["all", "up"]  # the last device of all
    assert orphans(["all", "up"], {"den": set()}) == ["up"]  # every device is in all
    assert orphans(["all", "up"], {"den": {"all", "up"}}) == []
    assert orphans(["up"], {"den": {"down"}, "hall": None}) == []  # the hall may be
    limit = 64 * 1024
    head = b'{"groups": {"groups": ["up"]}, "pad": "'
    at_limit = head + b"x" * (limit - len(head) - 2) + b'"}'
    assert len(at_limit) == limit and _groups_in_stats(at_limit) == {"up"}
    assert _groups_in_stats(at_limit[:-2] + b'x"}') is None  # a byte over
    assert _groups_in_stats(b"[]") is None and _groups_in_stats(b'"up"') is None


async def test_a_group_entity_cleared_while_a_device_is_in_it_is_put_back(
    broker: Broker, said: Said, state_home: Path
) -> None:
    """The race a member that leaves cannot see: the den joined upstairs after its stats were
    read (here they still say it is in `all` only), so the kitchen, leaving, clears the
    entity; the den, in the group, puts it back (Home Assistant keeps a group with members)."""
    async with kitchen_link(broker, ["upstairs"]):
        pass
    await put(broker, {"edge-tts/den/stats": b'{"groups": {"groups": ["all"]}}'})
    async with (
        mqtt_link(broker, "den", ["upstairs"]),
        aiomqtt.Client(broker.host, broker.port) as home_assistant,
    ):
        await home_assistant.subscribe(UPSTAIRS, qos=1)
        payloads = home_assistant.messages
        entity = (await anext(payloads)).payload  # retained: the den's (the kitchen's same)
        assert isinstance(entity, bytes) and entity.startswith(b"{")
        async with kitchen_link(broker, []), asyncio.timeout(10):
            await said.wait_for("left group upstairs, which no other device is in")
            assert (await anext(payloads)).payload == b""  # the kitchen's clear
            assert (await anext(payloads)).payload == entity  # the den's, again
        await said.wait_for("group upstairs's entity was cleared: published again")
    assert await upstairs_entity(broker)


async def test_a_flood_of_clears_of_a_group_entity_crowds_nothing_out(
    broker: Broker, said: Said, state_home: Path
) -> None:
    """Any client that may write the discovery topic can clear the entity again and again: a
    member puts it back, but keeps at most one copy waiting to go out, so the flood never
    fills the queue its events and state wait in (which would drop the oldest of them)."""
    async with mqtt_link(broker, "den", ["upstairs"]) as link:
        async with aiomqtt.Client(broker.host, broker.port) as hostile:
            for _ in range(3000):
                await hostile.publish(UPSTAIRS, b"", qos=0)
            await hostile.publish(UPSTAIRS, b"", qos=1)  # the last: the flood is delivered
        await said.wait_for("entity was cleared: published again")
        async with aiomqtt.Client(broker.host, broker.port) as home_assistant:
            await home_assistant.subscribe("edge-tts/den/event", qos=1)
            link.publish_event({"event": "marker"})  # after all that the flood had queued
            async with asyncio.timeout(20):
                async for message in home_assistant.messages:
                    if b"marker" in bytes(message.payload):  # type: ignore[arg-type]
                        break
    assert not [line for line in said.lines if "outbox full" in line]
    assert await upstairs_entity(broker)


EVERY_OTHER = "topic readwrite edge-tts/#\ntopic readwrite probe/#\n"


async def test_a_broker_that_lets_a_device_publish_its_entities_but_not_read_them(
    tmp_path: Path,
) -> None:
    """An ACL that refuses reading the discovery topics (a common one: write only) refuses
    the watch on the group's entity: the device is online and takes its announcements."""
    heard: asyncio.Queue[Any] = asyncio.Queue()
    strict = Broker(tmp_path, acl=f"{EVERY_OTHER}topic write homeassistant/#\n")
    strict.start()
    try:
        async with mqtt_link(strict, "kitchen", ["upstairs"], heard.put):
            assert await upstairs_entity(strict) is False  # unreadable, as for the kitchen
            async with aiomqtt.Client(strict.host, strict.port) as client:
                await client.publish("edge-tts/group/upstairs/say", b"Hello.", qos=1)
            async with asyncio.timeout(10):
                while (message := await heard.get()).topic != "edge-tts/group/upstairs/say":
                    pass
            assert message.payload == b"Hello."
    finally:
        strict.stop()


@pytest.mark.parametrize("group_key", [None, GROUP_KEY])
async def test_audio_sent_under_a_members_name_is_never_kept_and_with_a_key_never_played(
    rooms: dict[str, Room],
    house: Household,
    dashscope: FakeDashScope,
    broker: Broker,
    group_key: str | None,
) -> None:
    """Someone watching `group/+/speech/+` answers the real claim at once, under the
    claimant's name, with pieces of its own and an end that adds up. Without a group key
    the followers cannot tell (they play it once) but keep none of it: the same text to each
    room alone is the real voice. With a key it is ignored: every room hears the real voice
    and keeps it."""
    from edge_tts.protocols.share import Claim, Leader, ShareError, decode

    dashscope.task_started_delay_s = 0.5  # the real leader's audio comes after the spoof's
    text = "The real announcement."
    noise = b"\x7f\x7f" * 3000

    listening = asyncio.Event()

    async def spoof() -> None:
        async with aiomqtt.Client(broker.host, broker.port) as mallory:
            await mallory.subscribe("edge-tts/group/+/speech/+")
            listening.set()
            async for message in mallory.messages:
                payload = message.payload
                assert isinstance(payload, bytes)
                try:
                    claim = decode(payload)  # (a signature is one field more)
                except ShareError:
                    continue
                if isinstance(claim, Claim):
                    impostor = Leader(claim.member)
                    for fake in [*impostor.audio(noise), impostor.end()]:
                        await mallory.publish(str(message.topic), fake, qos=1)  # all sent
                    return

    spoofing = asyncio.create_task(spoof())
    await listening.wait()
    await house.say("group/downstairs/say", {"text": text, "id": "spoofed"})
    outcomes = await house.outcomes("spoofed")
    await spoofing
    assert {e["event"] for e in outcomes.values()} == {"finished"}
    leader = leader_of(house, "spoofed")
    followers = [r for r in ROOMS if r != leader]
    heard = {r: split_speech(rooms[r].capture.read())[1] for r in ROOMS}
    assert heard[leader] == pcm_for(text)
    if group_key is not None:
        assert all(heard[r] == pcm_for(text) for r in followers)
    else:
        # The weakness the docs name: played (then the rest of the text said by the room
        # itself, as after any leader's audio too short for the text).
        assert all(heard[r].startswith(noise) for r in followers), leader
    # Each room alone: the real voice, from its cache only if what it kept was the real one.
    for room in ROOMS:
        await house.say(f"{room}/say", {"text": text, "id": f"alone-{room}"})
        await house.outcomes(f"alone-{room}", (room,))
        assert split_speech(rooms[room].capture.read())[1] == pcm_for(text), room
    sources = {r: house.event(r, f"alone-{r}", "started")["source"] for r in ROOMS}  # type: ignore[index]
    assert sources[leader] == "cache"
    assert all(sources[r] == ("cache" if group_key else "cloud") for r in followers)
    if group_key is not None:  # the spoof's piece and end, each room's stats say
        await house.wait_for(
            lambda: all(house.stats[r]["groups"]["ignored_messages"] >= 2 for r in followers)
        )


def test_the_groups_inbox_takes_availability_before_speech_and_bounds_a_flood() -> None:
    """What the groups' connection delivered waits in two lanes: a member gone offline is
    heard before the speech that came ahead of it, and a flood of speech (or of availability)
    is held to a bound, the oldest let go."""
    from edge_tts.mqtt import Lanes, Topics

    lanes = Lanes(Topics.of("edge-tts", "den", ("all", "downstairs")))

    def message(topic: str, payload: bytes = b"x") -> aiomqtt.Message:
        return aiomqtt.Message(topic, payload, 0, False, 0, None)

    piece = b"\0" * 60_000
    for n in range(200):  # 12 MB of audio on 200 keys: more than the lane holds
        lanes.append(message(f"edge-tts/group/downstairs/speech/k{n}", piece))
    for n in range(3000):
        lanes.append(message(f"edge-tts/m{n}/availability", b"online"))
    assert str(lanes.popleft().topic) == f"edge-tts/m{3000 - Lanes.AVAILABILITY}/availability"
    taken = [str(lanes.popleft().topic) for _ in range(len(lanes))]
    speech = [t for t in taken if "/speech/" in t]
    kept = Lanes.SPEECH_BYTES // (len(piece) + Lanes.MESSAGE_COST)
    assert len(speech) == kept and speech[-1].endswith("/k199")  # the newest kept
    assert lanes.dropped == (200 - kept) + (3000 - Lanes.AVAILABILITY)
    assert len(lanes) == 0


async def test_a_flood_on_the_group_topics_delays_no_announcement_and_the_group_still_speaks(
    rooms: dict[str, Room], house: Household, dashscope: FakeDashScope, broker: Broker
) -> None:
    """600 keys of 60 kB pieces, then 100,000 small claims, as fast as the broker takes them:
    a critical announcement to the den, sent in the middle, is spoken while it lasts, and the
    next group announcement is heard whole in every room, synthesized once."""
    from edge_tts.protocols.share import Claim, Piece, encode

    piece = encode(Piece("mallory", 0, b"\x7f" * 60_000))
    flooding = asyncio.Event()

    async def flood() -> None:
        async with aiomqtt.Client(broker.host, broker.port, max_queued_outgoing_messages=0) as c:
            for n in range(600):
                await c.publish(f"edge-tts/group/downstairs/speech/k{n}", piece)
                if n == 100:
                    flooding.set()
            for n in range(100_000):
                await c.publish(
                    f"edge-tts/group/downstairs/speech/c{n % 1000}", encode(Claim(f"m{n}", "k"))
                )

    flooder = asyncio.create_task(flood())
    await flooding.wait()
    await house.say(
        "den/say", {"text": "Smoke in the kitchen.", "id": "fire", "priority": "critical"}
    )
    outcome = await house.outcomes("fire", ("den",))
    assert outcome["den"]["event"] == "finished"
    assert not flooder.done()  # heard while the flood went on
    await flooder
    await house.say("group/downstairs/say", {"text": "All clear, everyone.", "id": "clear"})
    outcomes = await house.outcomes("clear")
    assert {e["event"] for e in outcomes.values()} == {"finished"}, outcomes
    assert len(dashscope.tasks) == 2  # the den's own, and the group's once
    for room in rooms.values():
        assert room.daemon.running and b"Traceback" not in room.daemon.stderr
        assert split_speech(room.capture.read())[1].endswith(pcm_for("All clear, everyone."))
