"""What the daemon tells about itself: the status line systemd shows, and the cache's and
queue's parts of the stats, from what the daemon holds."""

from __future__ import annotations

from pathlib import Path

from edge_tts.cache import PhraseCache
from edge_tts.journal import Journal
from edge_tts.status import cache_stats, queue_stats, status_line


def line(**changes: object) -> str:
    values: dict[str, object] = {
        "speaking": None,
        "connected": True,
        "warm": True,
        "cloud_error": None,
        "cache": None,
        "spoken_today": 3,
        "journal_problem": None,
        "note": "",
    }
    values.update(changes)
    return status_line(**values)  # type: ignore[arg-type]


def test_the_status_line_says_each_state() -> None:
    assert line() == "idle; warm connection; cache off; 3 announcements today"
    assert line(speaking="washer").startswith("speaking washer; ")
    assert line(connected=False).startswith("waiting for the MQTT broker; ")
    assert line(warm=False) == "idle; no cloud connection; cache off; 3 announcements today"
    # A cloud error shows only while there is no warm connection.
    assert "cloud: key refused" in line(warm=False, cloud_error="key refused")
    assert "key refused" not in line(warm=True, cloud_error="key refused")
    assert line(journal_problem="disk full").endswith("queue not durable: disk full")
    assert line(note="reload refused: mqtt.port").endswith("; reload refused: mqtt.port")


def test_the_cache_and_queue_say_when_they_cannot_write(tmp_path: Path) -> None:
    cache = PhraseCache.open(tmp_path / "cache", 10**6)
    cache.footprint = (41, 3 * 2**20)
    assert "cache 3 MB, 41 entries" in line(cache=cache)
    assert cache_stats(cache)["writing"] is True
    cache.write_failed(OSError(28, "No space left on device"))
    assert "(not writing: No space left on device" in line(cache=cache)
    stats = cache_stats(cache)
    assert stats["writing"] is False and "No space left" in str(stats["problem"])
    assert cache_stats(None) == {"enabled": False}

    journal = Journal(tmp_path / "q.jsonl")
    journal.open()
    assert queue_stats(2, journal)["durable"] is True
    journal.problem = "cannot write: disk full"
    assert queue_stats(2, journal) == {
        "length": 2,
        "journal": str(tmp_path / "q.jsonl"),
        "durable": False,
        "problem": "cannot write: disk full",
    }
