"""What the daemon tells about itself: events, its state and its retained stats on MQTT, and
the one-line status systemd shows. The Reporter publishes; what it publishes is made by pure
functions of what the daemon holds (a Snapshot), unit-tested without a broker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from .cache import PhraseCache
from .events import Event, EventKind
from .journal import Journal
from .mqtt import MqttLink
from .systemd import Notifier


@dataclass(frozen=True)
class Snapshot:
    """What the daemon holds that its status and stats tell."""

    speaking: str | None  # the id of the announcement being spoken
    connected: bool  # to the MQTT broker
    broker: str  # where it is: host:port
    broker_problem: str | None  # why it cannot be reached, while it cannot
    cloud_warm: bool
    cloud_error: str | None
    cloud_stats: dict[str, object]
    cache: PhraseCache | None
    queue_length: int
    journal: Journal
    wyoming: dict[str, object] | None = None  # the Wyoming server's figures, when it is on
    usage: dict[str, object] | None = None  # characters sent to the cloud, and their cost
    groups: dict[str, object] | None = None  # group announcements: led, followed, ...
    spoken_today: int = 0  # announcements, across restarts (kept with the usage counts)


class Reporter:
    """Publishes what the daemon says about itself: each event, the state (idle or speaking),
    the retained stats (several changes in one step of the loop go out as one message), and
    the systemd status line."""

    def __init__(
        self, link: MqttLink, notifier: Notifier, snapshot: Callable[[], Snapshot]
    ) -> None:
        self.link = link  # replaced when a reload reconnects
        self._notifier = notifier
        self._snapshot = snapshot
        self._since = datetime.now(UTC).isoformat(timespec="seconds")
        self._pending = False
        self._last: dict[str, object] | None = None
        self.note = ""  # shown in the status until the next successful reload

    def event(self, event: Event) -> None:
        self.link.publish_event(event.as_dict())
        if event.event == EventKind.STARTED:
            self._last = {
                "id": event.id,
                "source": event.source,
                "first_audio_ms": event.first_audio_ms,
                "at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            self.stats_changed()

    def connection_changed(self) -> None:
        """The broker came or went: systemd's status line says so at once."""
        self._notifier.status(self.status())

    def idle(self) -> None:
        self.link.publish_state({"state": "idle", "id": None, "text": None})

    def speaking(self, id: str, text: str) -> None:
        self.link.publish_state({"state": "speaking", "id": id, "text": text})
        self._notifier.status(self.status())

    def stats_changed(self, *_: object) -> None:
        if not self._pending:
            self._pending = True
            asyncio.get_running_loop().call_soon(self.publish_stats)

    def publish_stats(self) -> None:
        self._pending = False
        now = self._snapshot()
        self.link.publish_stats(
            {
                "since": self._since,
                "cloud": now.cloud_stats,
                "cache": cache_stats(now.cache),
                "queue": queue_stats(now.queue_length, now.journal),
                "last_announcement": self._last,
                **({"usage": now.usage} if now.usage is not None else {}),
                **({"wyoming": now.wyoming} if now.wyoming is not None else {}),
                **({"groups": now.groups} if now.groups is not None else {}),
            }
        )
        self._notifier.status(self.status(now))

    def status(self, now: Snapshot | None = None) -> str:
        """One line for `systemctl status`."""
        now = now or self._snapshot()
        return status_line(
            speaking=now.speaking,
            connected=now.connected,
            broker=now.broker,
            broker_problem=now.broker_problem,
            warm=now.cloud_warm,
            cloud_error=now.cloud_error,
            cache=now.cache,
            spoken_today=now.spoken_today,
            journal_problem=now.journal.problem,
            note=self.note,
        )


def status_line(
    *,
    speaking: str | None,
    connected: bool,
    warm: bool,
    broker: str = "",
    broker_problem: str | None = None,
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
        state = f"waiting for the broker at {broker}" if broker else "waiting for the MQTT broker"
        if broker_problem:
            state += f" ({broker_problem})"
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
        **({"damaged_file": str(journal.set_aside)} if journal.set_aside else {}),
    }
