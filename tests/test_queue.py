"""The announcement queue: priority order, FIFO within a priority, a bounded size that drops
the least urgent first, duplicates collapsed, and a critical announcement cutting in."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from edge_tts.announcement import Announcement
from edge_tts.queue import AnnouncementQueue

from conftest import API_KEY, Broker, Capture, DaemonProcess, Home, split_speech, write_config
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
    for text, priority in [
        ("n1", "normal"),
        ("l1", "low"),
        ("h1", "high"),
        ("n2", "normal"),
        ("c1", "critical"),
        ("h2", "high"),
    ]:
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
    dashscope.hold = asyncio.Event()  # the first is still speaking while the rest arrive
    await home.say({"text": "Playing first.", "id": "first"})
    await home.log.event("first", "started")
    for text, priority in [("Low.", "low"), ("Normal.", "normal"), ("High.", "high")]:
        await home.say({"text": text, "id": text, "priority": priority})
    await home.log.wait_for(lambda: sum(e["event"] == "queued" for e in home.log.events) == 4)
    dashscope.hold.set()
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


# --- volume and quiet hours ------------------------------------------------------------------


def policy_config(**quiet: object) -> object:
    from edge_tts.config import parse_config

    return parse_config(
        {
            "audio": {"volume": 90, "critical_min_volume": 70},
            "quiet_hours": {"windows": ["22:00-07:00"], **quiet},
        }
    )


def test_volume_default_critical_minimum_and_quiet_hours() -> None:
    from datetime import datetime

    from edge_tts.policy import playback_volume

    config = policy_config()
    day, night = datetime(2026, 11, 25, 12, 0), datetime(2026, 11, 25, 23, 30)
    early = datetime(2026, 11, 26, 6, 59)
    assert playback_volume(config, ann("a"), day) == 90  # type: ignore[arg-type]
    assert playback_volume(config, ann("a", volume=40), day) == 40  # type: ignore[arg-type]
    assert playback_volume(config, ann("a", "critical", volume=10), day) == 70  # type: ignore[arg-type]
    assert playback_volume(config, ann("a"), night) == 30  # type: ignore[arg-type]
    assert playback_volume(config, ann("a", "low"), early) == 30  # type: ignore[arg-type]
    assert playback_volume(config, ann("a", "high"), night) == 90  # type: ignore[arg-type]
    assert playback_volume(config, ann("a", "critical"), night) == 90  # type: ignore[arg-type]
    drop = policy_config(action="drop")
    assert playback_volume(drop, ann("a"), night) is None  # type: ignore[arg-type]
    assert playback_volume(drop, ann("a"), datetime(2026, 11, 26, 7, 0)) == 90  # type: ignore[arg-type]


async def test_quiet_hours_drop_with_an_event_and_high_still_plays(
    tmp_path: Path, broker: Broker, dashscope: FakeDashScope, home: Home, capture: Capture
) -> None:
    config = write_config(
        tmp_path / "c.yaml",
        broker,
        dashscope,
        quiet_hours__windows=["00:00-23:59"],
        quiet_hours__action="drop",
    )
    daemon = DaemonProcess(config, dict(os.environ, DASHSCOPE_API_KEY=API_KEY))
    await daemon.start(home)
    try:
        await home.say({"text": "Not now.", "id": "quiet"})
        assert (await home.log.event("quiet", "dropped"))["error"] == "quiet hours"
        await home.say({"text": "Urgent.", "id": "urgent", "priority": "high"})
        assert (await home.log.outcome("urgent"))["event"] == "finished"
    finally:
        await daemon.stop()
    assert split_speech(capture.read())[1] == pcm_for("Urgent.")
    assert [t.texts for t in dashscope.tasks] == [["Urgent."]]


async def test_the_default_volume_is_applied_as_gain(
    tmp_path: Path, broker: Broker, dashscope: FakeDashScope, home: Home, capture: Capture
) -> None:
    from edge_tts.player import apply_volume

    config = write_config(tmp_path / "c.yaml", broker, dashscope, audio__volume=50)
    daemon = DaemonProcess(config, dict(os.environ, DASHSCOPE_API_KEY=API_KEY))
    await daemon.start(home)
    try:
        await home.say({"text": "Half as loud.", "id": "half"})
        assert (await home.log.outcome("half"))["event"] == "finished"
    finally:
        await daemon.stop()
    expected = apply_volume(pcm_for("Half as loud."), 50)
    assert split_speech(capture.read())[1] == b"".join(
        expected[i : i + 2] for i in range(0, len(expected), 2) if expected[i : i + 2] != b"\0\0"
    )


async def test_a_burst_of_fifty_plays_in_priority_order_with_the_documented_drops(
    tmp_path: Path, broker: Broker, dashscope: FakeDashScope, home: Home, capture: Capture
) -> None:
    config = write_config(
        tmp_path / "c.yaml", broker, dashscope, audio__keep_open_s=60, announcements__queue_size=20
    )
    daemon = DaemonProcess(config, dict(os.environ, DASHSCOPE_API_KEY=API_KEY))
    await daemon.start(home)
    priorities = ["low", "normal", "high"]
    try:
        dashscope.hold = asyncio.Event()  # the first is still speaking when the burst is over
        await home.say({"text": "The first, still speaking.", "id": "first"})
        await home.log.event("first", "started")
        for i in range(50):
            await home.say({"text": f"Item {i}.", "id": f"i{i}", "priority": priorities[i % 3]})
        # Every one of the fifty has been queued or dropped (the queue decides on arrival).
        await home.log.wait_for(
            lambda: {e["id"] for e in home.log.events} >= {f"i{i}" for i in range(50)}
        )
        dashscope.hold.set()
        highs = [i for i in range(50) if i % 3 == 2]
        normals = [40, 43, 46, 49]  # the newest normals; every low and older normal dropped
        expected = ["first"] + [f"i{i}" for i in highs + normals]
        await home.log.outcome(expected[-1], timeout=60)
    finally:
        await daemon.stop()
    started = [e["id"] for e in home.log.events if e["event"] == "started"]
    assert started == expected
    dropped = {e["id"] for e in home.log.events if e["event"] == "dropped"}
    assert dropped == {f"i{i}" for i in range(50)} - set(expected)
    assert all(e["error"] == "queue full (20)" for e in home.log.events if e["event"] == "dropped")
    # At the ALSA output, exactly those, in that order.
    texts = ["The first, still speaking."] + [f"Item {i}." for i in highs + normals]
    assert split_speech(capture.read())[1] == b"".join(pcm_for(t) for t in texts)


# --- the edges of the rules --------------------------------------------------------------


def test_a_repeat_after_the_dedupe_window_is_a_new_announcement() -> None:
    import time

    q = AnnouncementQueue(max_size=5, dedupe_s=10)
    old = ann("Door open.", received_at=time.monotonic() - 11)  # queued 11 s ago, still waiting
    assert q.put(old) == []
    assert q.put(ann("Door open.")) == []  # outside the window: both stay
    assert q.put(ann("Door open."))[0].reason == f"duplicate of {q._entries[1].announcement.id}"
    assert len(q) == 2


def test_the_dedupe_window_is_measured_from_when_each_is_due() -> None:
    """Two messages for the same moment (a play_at 25 s ahead) arrive 20 s apart: one, though
    the first waited longer than dedupe_s. The same text due 30 s apart: two."""
    import time

    q = AnnouncementQueue(max_size=5, dedupe_s=10)
    due = time.time() + 25
    held = ann("Dinner.", received_at=time.monotonic() - 20, play_at=due)
    assert q.put(held) == []
    assert q.put(Announcement("Dinner.", id="again", play_at=due))[0].reason == (
        f"duplicate of {held.id}"
    )
    assert q.put(Announcement("Dinner.", id="later", play_at=due + 30)) == []
    assert q.put(Announcement("Dinner.", id="now")) == []  # due now: 25 s before the first
    assert len(q) == 3


def test_a_quiet_window_ends_at_its_end_minute() -> None:
    from datetime import datetime

    from edge_tts.config import QuietHours
    from edge_tts.policy import in_quiet_hours

    noon = QuietHours(windows=((12 * 60, 13 * 60),))
    night = QuietHours(windows=((22 * 60, 7 * 60),))
    at = lambda h, m: datetime(2026, 11, 26, h, m)  # noqa: E731
    assert in_quiet_hours(noon, at(12, 0)) and in_quiet_hours(noon, at(12, 59))
    assert not in_quiet_hours(noon, at(13, 0)) and not in_quiet_hours(noon, at(11, 59))
    assert in_quiet_hours(night, at(22, 0)) and in_quiet_hours(night, at(6, 59))
    assert not in_quiet_hours(night, at(7, 0)) and not in_quiet_hours(night, at(21, 59))


def test_too_old_is_measured_against_max_age_exactly() -> None:
    from edge_tts.policy import too_old

    assert too_old(None, 1000.0, 60) is None  # no sent_at: nothing to judge
    assert too_old(940.0, 1000.0, 60) is None  # exactly max_age_s old: still spoken
    assert too_old(939.0, 1000.0, 60) == "too old: sent 61 s ago (announcements.max_age_s)"


def test_only_a_critical_announcement_cuts_in_and_never_on_another_critical() -> None:
    from edge_tts.policy import interrupts

    playing = ann("Washer done.")
    assert interrupts(ann("Smoke!", "critical"), playing)
    assert not interrupts(ann("Door.", "high"), playing)
    assert not interrupts(ann("Smoke!", "critical"), ann("Fire!", "critical"))
    assert not interrupts(ann("Smoke!", "critical"), None)


def test_the_same_text_in_two_named_voices_is_two_announcements() -> None:
    q = AnnouncementQueue(max_size=5, dedupe_s=60)
    assert q.put(ann("Dinner is ready.", voice="default")) == []
    assert q.put(Announcement(text="Dinner is ready.", id="b", voice="bright")) == []
    assert len(q) == 2


def test_a_short_dedupe_window_still_collapses_an_immediate_repeat() -> None:
    q = AnnouncementQueue(max_size=5, dedupe_s=0.5)
    assert q.put(ann("Door open.")) == []
    assert q.put(Announcement(text="Door open.", id="again"))[0].reason == "duplicate of Door open."


async def test_announcements_far_ahead_wait_at_most_as_many_as_the_queue_holds(
    tmp_path: Path, broker: Broker, dashscope: FakeDashScope, home: Home, capture: Capture
) -> None:
    # Held until shortly before their play_at, outside the queue: bounded like it, the least
    # urgent and then the one to be heard last going first, each with an event.
    config = write_config(tmp_path / "c.yaml", broker, dashscope, announcements__queue_size=2)
    daemon = DaemonProcess(config, dict(os.environ, DASHSCOPE_API_KEY=API_KEY))
    await daemon.start(home)
    try:
        later = time.time() + 600
        for n, priority, ahead in [(1, "low", 0), (2, "normal", 60), (3, "normal", 0)]:
            message = {"text": f"Later {n}.", "id": f"later{n}", "priority": priority}
            await home.say(message | {"play_at": later + ahead})
        assert (await home.log.event("later1", "dropped"))["error"] == (
            "too many waiting for their play_at (2)"
        )
        await home.say({"text": "One more.", "id": "later4", "play_at": later + 30})
        assert (await home.log.event("later2", "dropped"))["error"].startswith("too many")
        await home.say({"text": "Now.", "id": "now"})  # the queue itself is not taken by them
        assert (await home.log.outcome("now"))["event"] == "finished"
        await home.stop()
        for held in ("later3", "later4"):
            assert (await home.log.event(held, "dropped"))["error"] == "stopped"
    finally:
        await daemon.stop()


async def test_the_same_message_held_twice_for_its_play_at_is_spoken_once(
    tmp_path: Path, broker: Broker, dashscope: FakeDashScope, home: Home, capture: Capture
) -> None:
    """Published twice, 11 s ahead (held outside the queue until 10 s before): once, though
    it waited longer than dedupe_s (here 0.5 s), which used to count. And the first hold's
    timer was lost (a stop could not have cancelled it)."""
    config = write_config(tmp_path / "c.yaml", broker, dashscope, announcements__dedupe_s=0.5)
    daemon = DaemonProcess(config, dict(os.environ, DASHSCOPE_API_KEY=API_KEY))
    await daemon.start(home)
    try:
        message = {"text": "Said once, at its time.", "id": "hk", "play_at": time.time() + 11}
        await home.say(message)
        await home.say(message)
        await home.say(dict(message, id="other"))  # another id, the same text and moment
        await home.log.wait_for(
            lambda: "finished" in home.log.of("hk") + home.log.of("other"), timeout=40
        )
        await home.say({"text": "After it.", "id": "after"})
        assert (await home.log.outcome("after"))["event"] == "finished"
    finally:
        await daemon.stop()
    # Once: of the three released together, the first the queue took; the others dropped as
    # its duplicates.
    finished = [e["id"] for e in home.log.events if e["event"] == "finished"]
    dropped = [e for e in home.log.events if e["event"] == "dropped"]
    assert len(finished) == 2 and finished[0] in ("hk", "other"), home.log.events
    assert [e["error"] for e in dropped] == [f"duplicate of {finished[0]}"] * 2
    assert len(dashscope.tasks) == 2  # the moment's text once, and the next one
