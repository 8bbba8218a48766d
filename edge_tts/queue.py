"""The announcement queue: priority order (critical, high, normal, low), first in first out
within a priority, bounded (the lowest-priority, oldest entries go first when it is full), and
collapsing the same text arriving again while it is still queued or playing."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field

from .announcement import PRIORITIES, Announcement
from .text import normalize_text

RANK = {name: rank for rank, name in enumerate(reversed(PRIORITIES))}  # critical = 0


@dataclass(order=True)
class _Entry:
    rank: int
    seq: int
    announcement: Announcement = field(compare=False)


@dataclass(frozen=True)
class Refused:
    """An announcement the queue did not keep, and why (for its `dropped` event)."""

    announcement: Announcement
    reason: str


class AnnouncementQueue:
    """Holds announcements until the speaker takes them, most urgent first."""

    def __init__(self, max_size: int = 20, dedupe_s: float = 10.0) -> None:
        self.max_size = max_size
        self.dedupe_s = dedupe_s
        self._entries: list[_Entry] = []
        self._seq = itertools.count()
        self._ready = asyncio.Event()
        self._playing: tuple[str, float] | None = None  # dedupe key, start time

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, a: Announcement) -> list[Refused]:
        """Queue `a`; returns what was dropped to make room or as a duplicate (maybe `a`)."""
        duplicate = self._duplicate_of(a)
        if duplicate is not None:
            return [Refused(a, f"duplicate of {duplicate}")]
        self._entries.append(_Entry(RANK[a.priority], next(self._seq), a))
        self._entries.sort()
        refused = []
        while len(self._entries) > self.max_size:
            # The least urgent, and of those the oldest: the last rank, first seq.
            worst = max(e.rank for e in self._entries)
            victim = next(e for e in self._entries if e.rank == worst)
            self._entries.remove(victim)
            refused.append(Refused(victim.announcement, f"queue full ({self.max_size})"))
        if self._entries:
            self._ready.set()
        return refused

    async def get(self) -> Announcement:
        while not self._entries:
            self._ready.clear()
            await self._ready.wait()
        a = self._entries.pop(0).announcement
        self._playing = (_key(a), max(time.monotonic(), _due(a)))
        return a

    def done(self) -> None:
        """The announcement taken last has ended."""
        self._playing = None

    def clear(self) -> list[Announcement]:
        dropped = [e.announcement for e in self._entries]
        self._entries.clear()
        return dropped

    def _duplicate_of(self, a: Announcement) -> str | None:
        """What `a` repeats: the same text, due within dedupe_s of it (when each is to be
        heard: a message held for its play_at is not new because it waited)."""
        if self.dedupe_s <= 0:
            return None
        key, due = _key(a), _due(a)
        playing = self._playing
        if playing and playing[0] == key and abs(due - playing[1]) < self.dedupe_s:
            return "the announcement playing"
        for e in self._entries:
            if _key(e.announcement) == key and abs(due - _due(e.announcement)) < self.dedupe_s:
                return e.announcement.id
        return None


def _key(a: Announcement) -> str:
    return f"{a.voice or ''}\0{normalize_text(a.text).casefold()}"


def _due(a: Announcement) -> float:
    """When `a` is to be heard, on the monotonic clock: its play_at, else when it arrived."""
    if a.play_at is None:
        return a.received_at
    arrived = time.time() - (time.monotonic() - a.received_at)  # on the wall clock
    return a.received_at + max(0.0, a.play_at - arrived)
