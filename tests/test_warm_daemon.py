"""The warm connection seen from Home Assistant: the daemon process, a real broker, and a
fake cloud that closes idle connections."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conftest import (
    API_KEY,
    Broker,
    Capture,
    DaemonProcess,
    Home,
    edge_tts,
    fake_cloud,
    split_speech,
    write_config,
)
from fake_dashscope import FakeDashScope, pcm_for

IDLE_S = 2  # the shortest idle window the config accepts


@pytest.fixture
async def idle_fake() -> AsyncIterator[FakeDashScope]:
    async with fake_cloud(idle_timeout_s=IDLE_S) as fake:
        yield fake


@pytest.fixture
async def warm_daemon(
    tmp_path: Path, broker: Broker, idle_fake: FakeDashScope, home: Home, capture: Capture
) -> AsyncIterator[DaemonProcess]:
    config = write_config(
        tmp_path / "config.yaml", broker, idle_fake, dashscope__idle_timeout_s=IDLE_S
    )
    proc = DaemonProcess(config, dict(os.environ, DASHSCOPE_API_KEY=API_KEY))
    await proc.start(home)
    yield proc
    await proc.stop()


async def test_announcements_far_apart_never_wait_for_a_handshake(
    warm_daemon: DaemonProcess,
    home: Home,
    idle_fake: FakeDashScope,
    capture: Capture,
    tmp_path: Path,
) -> None:
    fake = idle_fake
    for n in (1, 2):
        # More than two idle windows of silence before each announcement.
        before = fake.handshakes
        await fake.wait_for(lambda before=before: fake.handshakes >= before + 3, timeout=IDLE_S * 6)
        asked_at = asyncio.get_running_loop().time()
        await home.say({"text": f"Announcement number {n}.", "id": f"a{n}"})
        assert (await home.log.outcome(f"a{n}"))["event"] == "finished"
        started = await home.log.event(f"a{n}", "started")
        assert started["connection"] == "warm"
        # The task ran on a connection that was open before the announcement was published.
        conn = next(
            c
            for c in fake.connections
            if c.tasks and c.tasks[-1].texts == [f"Announcement number {n}."]
        )
        assert conn.opened_at < asked_at
    assert fake.idle_closes == 0
    assert split_speech(capture.read())[1] == pcm_for("Announcement number 2.")

    # What it cost is published, retained, and shown by `edge-tts check`.
    await home.log.wait_for(lambda: home.log.stats and home.log.stats[-1]["cloud"]["reused"] == 2)
    cloud = home.log.stats[-1]["cloud"]
    assert cloud["renewals"] >= 5 and cloud["waited"] == 0 and cloud["failures"] == 0
    assert cloud["warm"] is True
    run = await edge_tts("check", "-c", str(warm_daemon.config))
    assert run.code == 0, run.all
    line = next(x for x in run.out.splitlines() if x.startswith("info the daemon"))
    assert "online since" in line and "warm connection;" in line
    assert "2 announcements on a warm connection, 0 waited for a handshake, 0 failures" in line


async def test_a_warm_connection_dying_as_an_announcement_arrives_loses_nothing(
    warm_daemon: DaemonProcess,
    home: Home,
    idle_fake: FakeDashScope,
    capture: Capture,
) -> None:
    idle_fake.cut_next_task(after_chunks=0)  # the connection dies on the run-task
    await home.say({"text": "Smoke detected in the kitchen.", "id": "smoke"})
    assert (await home.log.outcome("smoke"))["event"] == "finished"
    started = await home.log.event("smoke", "started")
    assert started["connection"] == "replaced"
    assert split_speech(capture.read())[1] == pcm_for("Smoke detected in the kitchen.")
    assert [t.outcome for t in idle_fake.tasks] == ["dropped", "finished"]


async def test_the_daemon_reports_itself_not_running_after_it_stops(
    warm_daemon: DaemonProcess, home: Home, tmp_path: Path
) -> None:
    await warm_daemon.stop()
    await home.log.wait_for(lambda: home.log.availability[-1:] == ["offline"])
    run = await edge_tts("check", "-c", str(warm_daemon.config))
    assert "info the daemon is not running (offline on edge-tts/kitchen/availability)" in run.out
