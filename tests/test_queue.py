"""The announcement queue: priority order, FIFO within a priority, a bounded size that drops
the least urgent first, duplicates collapsed, and a critical announcement cutting in."""

from __future__ import annotations

import asyncio

from conftest import Capture, DaemonProcess, Home, split_speech
from edge_tts.announcement import Announcement
from edge_tts.queue import AnnouncementQueue
from fake_dashscope import FakeDashScope, pcm_for


def ann(text: str, priority: str = "normal", **kw: object) -> Announcement:
    return Announcement(text=text, id=text, priority=priority, **kw)  # type: ignore[arg-type]


async def drain(q: AnnouncementQueue) -> list[str]:
    out = []
    while len(q):
        out.append((await q.get()).id)
        q.done()
    return out


async def test_priority_order_then_first_in_first_out() -> None:
    q = AnnouncementQueue(max_size=10, dedupe_s=0)
    for text, priority in [("n1", "normal"), ("l1", "low"), ("h1", "high"), ("n2", "normal"),
                           ("c1", "critical"), ("h2", "high")]:
        assert q.put(ann(text, priority)) == []
    assert await drain(q) == ["c1", "h1", "h2", "n1", "n2", "l1"]


async def test_a_full_queue_drops_the_least_urgent_oldest_first() -> None:
    q = AnnouncementQueue(max_size=3, dedupe_s=0)
    for text, priority in [("n1", "normal"), ("l1", "low"), ("l2", "low")]:
        q.put(ann(text, priority))
    (dropped,) = q.put(ann("h1", "high"))
    assert dropped.announcement.id == "l1" and dropped.reason == "queue full (3)"
    (dropped,) = q.put(ann("l3", "low"))  # the newcomer is the least urgent: it goes itself
    assert dropped.announcement.id == "l2"
    assert await drain(q) == ["h1", "n1", "l3"]


async def test_the_same_text_again_is_collapsed_while_queued_or_playing() -> None:
    q = AnnouncementQueue(max_size=10, dedupe_s=60)
    assert q.put(ann("Front door opened.")) == []
    (dup,) = q.put(Announcement(text="  front door   OPENED. ", id="again"))
    assert dup.announcement.id == "again" and dup.reason == "duplicate of Front door opened."
    assert q.put(ann("Front door opened.", voice="bright")) == []  # another voice: not the same
    playing = await q.get()
    (dup,) = q.put(Announcement(text=playing.text, id="third"))
    assert dup.reason == "duplicate of the announcement playing"
    q.done()
    await q.get()  # the other voice's
    q.done()
    assert q.put(Announcement(text=playing.text, id="later")) == []  # nothing alike left


async def test_get_waits_for_an_announcement() -> None:
    q = AnnouncementQueue()
    waiting = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    assert not waiting.done()
    q.put(ann("Hello."))
    assert (await waiting).id == "Hello."


# --- through the daemon ----------------------------------------------------------------------

async def test_queued_announcements_are_spoken_by_priority(
    daemon: DaemonProcess, home: Home, dashscope: FakeDashScope
) -> None:
    dashscope.chunk_interval_s = 0.05  # the first is still speaking while the rest arrive
    await home.say({"text": "Playing first.", "id": "first"})
    await home.log.event("first", "started")
    for text, priority in [("Low.", "low"), ("Normal.", "normal"), ("High.", "high")]:
        await home.say({"text": text, "id": text, "priority": priority})
    await home.log.wait_for(lambda: sum(e["event"] == "queued" for e in home.log.events) == 4)
    for name in ("first", "Low.", "Normal.", "High."):
        assert (await home.log.outcome(name))["event"] == "finished"
    started = [e["id"] for e in home.log.events if e["event"] == "started"]
    assert started == ["first", "High.", "Normal.", "Low."]


async def test_a_critical_announcement_cuts_in_and_plays_next(
    daemon: DaemonProcess, home: Home, dashscope: FakeDashScope, capture: Capture
) -> None:
    dashscope.chunk_interval_s = 0.1
    await home.say({"text": "A long weather report for the whole week ahead.", "id": "weather"})
    await home.say({"text": "Then the news.", "id": "news"})
    await home.log.event("weather", "started")
    await home.say({"text": "Smoke in the kitchen!", "id": "smoke", "priority": "critical"})
    dropped = await home.log.event("weather", "dropped")
    assert dropped["error"] == "interrupted by smoke"
    assert (await home.log.outcome("smoke"))["event"] == "finished"
    assert (await home.log.outcome("news"))["event"] == "finished"
    started = [e["id"] for e in home.log.events if e["event"] == "started"]
    assert started == ["weather", "smoke", "news"]
    assert split_speech(capture.read())[1] == pcm_for("Then the news.")


async def test_a_repeated_automation_is_spoken_once(
    daemon: DaemonProcess, home: Home, dashscope: FakeDashScope
) -> None:
    dashscope.chunk_interval_s = 0.05
    await home.say({"text": "The washing machine is done.", "id": "w1"})
    await home.say({"text": "The washing machine is done.", "id": "w2"})
    assert (await home.log.event("w2", "dropped"))["error"].startswith("duplicate of")
    assert (await home.log.outcome("w1"))["event"] == "finished"
    assert len(dashscope.tasks) == 1
