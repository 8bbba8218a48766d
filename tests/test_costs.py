"""What the cloud costs: characters counted as the service bills them, per model, today and
this month, kept across restarts and processes; the estimate; the monthly cap."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from edge_tts.costs import Usage
from edge_tts.text import billed

from conftest import Capture, DaemonProcess, Home, split_speech
from fake_dashscope import FakeDashScope, pcm_for


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_characters_are_counted_as_the_service_bills_them() -> None:
    assert billed("Door open.") == 10
    assert billed("你好") == 4 and billed("中A文123") == 8  # a CJK ideograph counts two
    assert billed("<speak>你好 <break time='1s'/>there</speak>", ssml=True) == 10  # no tags


def test_counts_per_model_today_and_this_month_and_the_estimate(tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 11, 25, 23, 59))
    usage = Usage(tmp_path / "usage.json", clock=clock)
    usage.add("cosyvoice-v3-flash", 10_000)
    clock.now = datetime(2026, 11, 26, 0, 1)  # a new day, the same month
    usage.add("cosyvoice-v3-flash", 5_000)
    usage.add("cosyvoice-v3-plus", 10_000)
    stats = usage.as_dict()
    assert stats["characters_month"] == 25_000 and stats["characters_today"] == 15_000
    assert stats["by_model_month"] == {"cosyvoice-v3-flash": 15_000, "cosyvoice-v3-plus": 10_000}
    assert stats["estimated_cost_month_usd"] == round(1.5 * 0.14335 + 0.286706, 4)
    usage.add("qwen3-tts-flash-realtime", 10)
    assert usage.as_dict()["estimated_cost_month_usd"] is None  # no documented price: unknown


def test_counts_survive_a_restart_and_two_processes_add_up(tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 11, 26, 12, 0))
    daemon, say = Usage(tmp_path / "u.json", clock=clock), Usage(tmp_path / "u.json", clock=clock)
    daemon.add("cosyvoice-v3-flash", 100)
    say.add("cosyvoice-v3-flash", 20)
    say.flush()
    daemon.flush()
    again = Usage(tmp_path / "u.json", clock=clock)
    again.flush()  # reads
    assert again.month == {"cosyvoice-v3-flash": 120} and again.today == again.month
    assert daemon.month == again.month  # its own file read back, the other's included


def test_a_new_month_starts_at_nothing(tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 11, 30, 23, 0))
    usage = Usage(tmp_path / "u.json", cap=1000, clock=clock)
    usage.add("cosyvoice-v3-flash", 1000)
    assert usage.exhausted() == (
        "this month's cloud characters are used up (1,000 of dashscope.monthly_characters: 1,000)"
    )
    clock.now = datetime(2026, 12, 1, 0, 0)
    assert usage.exhausted() is None and usage.month == {}
    restarted = Usage(tmp_path / "u.json", cap=1000, clock=clock)
    restarted.flush()
    assert restarted.month == {}  # November's count is not December's


def test_a_damaged_usage_file_is_counted_from_nothing(tmp_path: Path) -> None:
    (tmp_path / "u.json").write_text("{not json")
    usage = Usage(tmp_path / "u.json")
    usage.flush()
    (aside,) = tmp_path.glob("u.json.damaged-*")  # kept for a person, and the stats say where
    assert aside.read_text() == "{not json" and usage.as_dict()["damaged_file"] == str(aside)
    usage.add("cosyvoice-v3-flash", 5)
    usage.flush()
    assert Usage(tmp_path / "u.json").month == {}  # not read yet: nothing before flush
    fresh = Usage(tmp_path / "u.json")
    fresh.flush()
    assert fresh.month == {"cosyvoice-v3-flash": 5}


@pytest.mark.parametrize(
    "count", ["Infinity", "-Infinity", "NaN", "1e400", str(10**400), "-999999999", "true", '"7"']
)
def test_a_count_no_process_could_have_written_is_refused_not_believed(
    tmp_path: Path, count: str
) -> None:
    """A power cut, a failing SD card, a hand edit: `Infinity` or 10**400 once stopped the
    daemon at start (int() of them raised), and a negative count hid the month from the cap."""
    clock = Clock(datetime(2026, 11, 26, 12, 0))
    (tmp_path / "u.json").write_text(
        f'{{"month": "2026-11", "day": "2026-11-26", "by_model_month": {{"m": {count}}}, '
        f'"by_model_today": {{}}, "announcements_today": 0}}'
    )
    usage = Usage(tmp_path / "u.json", cap=100, clock=clock)
    usage.flush()
    assert usage.month == {} and usage.exhausted() is None
    (tmp_path / "u.json").write_text(
        '{"month": "2026-11", "day": "2026-11-26", "by_model_month": {}, '
        f'"by_model_today": {{}}, "announcements_today": {count}}}'
    )
    usage.flush()
    assert usage.spoken_today == 0


def test_the_announcements_spoken_today_survive_a_restart_and_a_new_day_starts_at_nothing(
    tmp_path: Path,
) -> None:
    clock = Clock(datetime(2026, 11, 26, 23, 0))
    usage = Usage(tmp_path / "u.json", clock=clock)
    usage.spoke()
    usage.spoke()
    usage.flush()
    restarted = Usage(tmp_path / "u.json", clock=clock)
    restarted.flush()  # reads
    assert restarted.spoken_today == 2
    restarted.spoke()
    assert restarted.spoken_today == 3
    clock.now = datetime(2026, 11, 27, 0, 1)
    assert restarted.spoken_today == 0
    restarted.flush()
    tomorrow = Usage(tmp_path / "u.json", clock=clock)
    tomorrow.flush()
    assert tomorrow.spoken_today == 0


# --- through the daemon ---------------------------------------------------------------------


def usage_of(home: Home) -> dict[str, Any]:
    return dict(home.log.stats[-1].get("usage") or {})


async def test_what_the_daemon_sends_is_counted_and_a_cache_hit_costs_nothing(
    daemon: DaemonProcess, home: Home, dashscope: FakeDashScope
) -> None:
    for n, text in enumerate(["Dinner is ready.", "你好。", "Dinner is ready."]):
        await home.say({"text": text, "id": f"u{n}"})
        assert (await home.log.outcome(f"u{n}"))["event"] == "finished"
    expected = billed("Dinner is ready.") + billed("你好。")  # the repeat came from the cache
    await home.log.wait_for(lambda: usage_of(home).get("characters_month") == expected)
    assert usage_of(home)["by_model_month"] == {"cosyvoice-v3-flash": expected}
    assert usage_of(home)["estimated_cost_month_usd"] == round(expected / 10_000 * 0.14335, 4)
    # Kept across a clean stop.
    assert await daemon.stop() == 0
    saved = Usage.for_device("kitchen", None)
    assert saved.month == {"cosyvoice-v3-flash": expected}


async def test_past_the_monthly_cap_the_fallback_voice_speaks_and_says_why(
    daemon_with: Any, home: Home, dashscope: FakeDashScope, capture: Capture
) -> None:
    await daemon_with(
        dashscope__monthly_characters=20,
        voices__offline={"engine": "piper"},
        fallback_voice="offline",
    )
    await home.say({"text": "The first one is fine.", "id": "first"})  # 22: past the cap after
    assert (await home.log.event("first", "started"))["source"] == "cloud"
    await home.log.outcome("first")
    await home.say({"text": "The second one is not.", "id": "second"})
    started = await home.log.event("second", "started")
    assert started["source"] == "fallback"
    assert "dashscope.monthly_characters: 20" in started["reason"]
    assert (await home.log.outcome("second"))["event"] == "finished"
    assert [t.texts for t in dashscope.tasks if t.texts] == [["The first one is fine."]]
    assert split_speech(capture.read())[1] != pcm_for("The second one is not.")
    await home.log.wait_for(lambda: usage_of(home).get("capped") is True)
