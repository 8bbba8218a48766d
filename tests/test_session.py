"""No announcement lost to a restart: a persistent MQTT session keeps QoS 1 announcements for
the daemon while it is away; stale ones (by their `sent_at`) are dropped, not spoken late;
a retained `say` is never replayed."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from conftest import (
    API_KEY,
    Capture,
    DaemonProcess,
    Home,
    home_assistant,
    split_speech,
    write_config,
)
from fake_dashscope import FakeDashScope, pcm_for
from mosquitto import Broker


async def test_announcements_published_while_the_daemon_was_down_are_spoken(
    daemon: DaemonProcess, home: Home, capture: Capture
) -> None:
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGKILL)  # a crash or a power cut: no goodbye
    await daemon.proc.wait()
    await home.log.wait_for(lambda: home.log.availability[-1:] == ["offline"])  # the will
    await home.say({"text": "Published while it was down.", "id": "meanwhile"})

    again = DaemonProcess(daemon.config, dict(os.environ, DASHSCOPE_API_KEY=API_KEY))
    home.log.availability.clear()
    await again.start(home)
    outcome: dict[str, object] = {"event": "none within 15 s"}
    try:
        with contextlib.suppress(TimeoutError):
            outcome = await home.log.outcome("meanwhile")
    finally:
        await again.stop()
        await daemon.stop()
    assert outcome["event"] == "finished", again.stderr.decode()[-3000:]
    assert split_speech(capture.read())[1] == pcm_for("Published while it was down.")


async def test_an_announcement_sent_too_long_ago_is_dropped(
    daemon: DaemonProcess, home: Home, dashscope: FakeDashScope
) -> None:
    old = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    await home.say({"text": "The door was open two hours ago.", "id": "old", "sent_at": old})
    dropped = await home.log.event("old", "dropped")
    assert dropped["error"].startswith("too old: sent 7200 s ago")
    await home.say({"text": "Fresh.", "id": "fresh", "sent_at": time.time() - 5})
    assert (await home.log.outcome("fresh"))["event"] == "finished"
    assert [t.texts for t in dashscope.tasks] == [["Fresh."]]


async def test_a_retained_announcement_is_not_replayed(
    daemon: DaemonProcess, home: Home, dashscope: FakeDashScope
) -> None:
    await home.client.publish("edge-tts/kitchen/say", "Retained by mistake.", qos=1, retain=True)
    await home.say({"text": "After it.", "id": "after"})
    assert (await home.log.outcome("after"))["event"] == "finished"
    await daemon.stop()
    again = DaemonProcess(daemon.config, dict(os.environ, DASHSCOPE_API_KEY=API_KEY))
    since = len(home.log.events)
    await again.start(home)  # a new connection: the retained message is delivered, and ignored
    try:
        await home.say({"text": "Next.", "id": "next"})
        assert (await home.log.outcome("next"))["event"] == "finished"
    finally:
        await again.stop()
    # Spoken once when it was published (live), never replayed on the reconnect: not from the
    # cloud, and not from the phrase cache either (which the cloud would not see): after the
    # restart the only announcement anyone heard of is "next".
    assert [t.texts[0] for t in dashscope.tasks] == ["Retained by mistake.", "After it.", "Next."]
    assert {e["id"] for e in home.log.events[since:]} == {"next"}


async def test_a_broker_restart_loses_nothing_and_speaks_each_once(
    tmp_path: Path, dashscope: FakeDashScope, capture: Capture
) -> None:
    broker = Broker(tmp_path, persistent=True)
    broker.start()
    config = write_config(tmp_path / "config.yaml", broker, dashscope)
    env = dict(os.environ, DASHSCOPE_API_KEY=API_KEY)
    dashscope.chunk_interval_s = 0.05  # speaking takes a while: the restart comes mid-queue
    try:
        async with home_assistant(broker) as home:
            daemon = DaemonProcess(config, env)
            await daemon.start(home)
            for n in range(4):
                await home.say({"text": f"Before the restart, number {n}.", "id": f"b{n}"})
            await home.log.event("b0", "started")
        broker.stop()
        broker.start()
        # Published the moment the broker is back, before the daemon has reconnected: kept in
        # the daemon's persistent session.
        async with home_assistant(broker, identifier="ha-after") as home:
            for n in range(4):
                await home.say({"text": f"After the restart, number {n}.", "id": f"a{n}"})
            try:
                for n in range(4):
                    assert (await home.log.outcome(f"a{n}", timeout=30))["event"] == "finished"
            finally:
                await daemon.stop()
    finally:
        broker.stop()
    spoken = [t.texts[0] for t in dashscope.tasks if t.outcome == "finished"]
    expected = [f"Before the restart, number {n}." for n in range(4)] + [
        f"After the restart, number {n}." for n in range(4)
    ]
    assert spoken == expected  # every one, once, in order


async def test_while_the_daemon_is_down_a_fresh_message_waits_and_a_stale_one_is_dropped(
    daemon: DaemonProcess, home: Home, capture: Capture
) -> None:
    """What the notify entity sends: JSON stamped with sent_at, QoS 1, while nobody listens."""
    await daemon.kill()
    await home.log.wait_for(lambda: home.log.availability[-1:] == ["offline"])
    stale = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    fresh = datetime.now(UTC).isoformat()
    await home.say({"text": "From an hour ago.", "id": "stale", "sent_at": stale})
    await home.say({"text": "From just now.", "id": "fresh", "sent_at": fresh})
    again = DaemonProcess(daemon.config, daemon.env)
    await again.start(home)
    try:
        assert (await home.log.outcome("fresh"))["event"] == "finished"
        dropped = await home.log.event("stale", "dropped")
    finally:
        await again.stop()
    assert dropped["error"].startswith("too old: sent 3")
    assert "started" not in home.log.of("stale")
    assert split_speech(capture.read())[1] == pcm_for("From just now.")


async def test_a_title_is_said_before_the_text(
    daemon: DaemonProcess, home: Home, capture: Capture
) -> None:
    await home.say({"text": "The washer is done.", "title": "Laundry", "id": "t"})
    assert (await home.log.outcome("t"))["event"] == "finished"
    assert split_speech(capture.read())[1] == pcm_for("Laundry. ") + pcm_for("The washer is done.")
