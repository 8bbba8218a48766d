"""What the daemon tells about itself, as pure functions of what it holds: the one-line
status systemd shows, and the cache's and queue's parts of the retained stats."""

from __future__ import annotations

from .cache import PhraseCache
from .journal import Journal


def status_line(
    *,
    speaking: str | None,
    connected: bool,
    warm: bool,
    cloud_error: str | None,
    cache: PhraseCache | None,
    spoken_today: int,
    journal_problem: str | None,
    note: str = "",
) -> str:
    """One line for `systemctl status`: "idle; warm connection; cache 3 MB, 41 entries; ..."."""
    if speaking is not None:
        state = f"speaking {speaking}"
    elif not connected:
        state = "waiting for the MQTT broker"
    else:
        state = "idle"
    cloud = "warm connection" if warm else "no cloud connection"
    if cloud_error and not warm:
        cloud = f"cloud: {cloud_error}"
    journal = f"queue not durable: {journal_problem}" if journal_problem else ""
    parts = [
        state,
        cloud,
        cache_summary(cache),
        f"{spoken_today} announcements today",
        journal,
        note,
    ]
    return "; ".join(p for p in parts if p)


def cache_summary(cache: PhraseCache | None) -> str:
    if cache is None:
        return "cache off"
    entries, size = cache.footprint or (0, 0)
    problem = f" ({cache.problem})" if cache.problem else ""
    return f"cache {size / 2**20:.0f} MB, {entries} entries{problem}"


def cache_stats(cache: PhraseCache | None) -> dict[str, object]:
    """The cache's part of the stats: its size as last scanned, and whether it is writing."""
    if cache is None:
        return {"enabled": False}
    entries, size = cache.footprint or (0, 0)
    return {
        "enabled": True,
        "dir": str(cache.root),
        "entries": entries,
        "bytes": size,
        "writing": cache.problem is None,
        "problem": cache.problem,
    }


def queue_stats(length: int, journal: Journal) -> dict[str, object]:
    """The queue's part of the stats: how long, and whether it is durable now."""
    return {
        "length": length,
        "journal": str(journal.path),
        "durable": journal.problem is None,
        "problem": journal.problem,
    }
