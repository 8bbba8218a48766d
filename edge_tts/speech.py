"""What one announcement's speech is while it plays: where it comes from (`Speech`), the
`started` event that waits for both its source and its first audio (`Started`), and the text
of a stream still being written (`TextFeed`, for Home Assistant's voice)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

from .announcement import Announcement
from .cache import PhraseCache
from .config import EngineName
from .engines import SynthesisRequest
from .events import Event, EventKind, Source
from .player import Start

log = logging.getLogger(__name__)

EventSink = Callable[[Event, Announcement | None], None]


class TextFeed:
    """The sentences of a text still being written: `put` by the writer as each completes,
    `close` at its end. `sentences()` reads them as they come; `sentences(again=True)` starts
    over from the first (a second voice taking over), then goes on with the rest. Nothing is
    lost when a reader is cancelled."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._taken: list[str] = []
        self._ended = False

    def put(self, sentence: str) -> None:
        self._queue.put_nowait(sentence)

    def close(self) -> None:
        self._queue.put_nowait(None)

    async def sentences(self, *, again: bool = False) -> AsyncGenerator[str, None]:
        for taken in list(self._taken) if again else []:
            yield taken
        while not self._ended:
            sentence = await self._queue.get()
            if sentence is None:
                self._ended = True
                return
            self._taken.append(sentence)
            yield sentence


@dataclass
class Speech:
    """Where an announcement's speech comes from, and its audio (not yet played)."""

    source: Source
    audio: AsyncGenerator[bytes, None]
    cache: PhraseCache | None
    hit: bool = False
    reason: str | None = None  # fallback: why the voice itself could not speak


class Started:
    """Emits `started` once both are known: when the speech's first audio was there (handed
    to the device; after a chime, handed on behind it) and where it comes from. Its
    first_audio_ms counts from the start of speaking, so neither the wait in the queue
    (queued_ms) nor the chime is in it: it is how fast the speech came."""

    def __init__(
        self, emit: EventSink, a: Announcement, request: SynthesisRequest, began: float
    ) -> None:
        self._emit, self._a, self.request = emit, a, request
        self._began = began  # when speaking began (time.monotonic(), the player's clock)
        # Its first sample is heard at play_at (our clock), whenever the speech is ready.
        self.start = Start(
            at=None if a.play_at is None else began + (a.play_at - time.time()),
        )
        self._at: float | None = None
        self.chimed = False  # a chime plays first
        self.selection: Speech | None = None
        self._emitted = False

    @property
    def source(self) -> Source:
        if self.selection is not None:
            return self.selection.source
        return Source.OFFLINE if self.request.voice.engine == EngineName.PIPER else Source.CLOUD

    @property
    def reason(self) -> str | None:
        return self.selection.reason if self.selection else None

    @property
    def audio(self) -> AsyncGenerator[bytes, None]:
        assert self.selection is not None  # selected() came first
        return self.selection.audio

    def heard(self, at: float) -> None:
        """The speech's first audio, at `at` (time.monotonic())."""
        if self._at is None:
            self._at = at
        self._maybe_emit()

    def selected(self, selection: Speech) -> None:
        self.selection = selection
        self._maybe_emit()

    def _maybe_emit(self) -> None:
        if self._emitted or self._at is None or self.selection is None:
            return
        self._emitted = True
        a, source = self._a, self.selection.source
        # How fast the speech came: with a play_at, when it was ready, not the wait after.
        # (Behind a chime, the speech's moment is when it was handed on behind the chime.)
        ready = self.start.ready_at if self._a.play_at is not None and not self.chimed else None
        ms = max(0, round(((ready or self._at) - self._began) * 1000))
        queued = max(0, round((self._began - a.received_at) * 1000))
        connection = self.request.trace.connection if source == Source.CLOUD else None
        late = self.start.late_s
        if self.start.heard_at is not None:
            # When the first sample went to the device and is heard, on the wall clock (how
            # the rooms of a group compare: bench/group_sync.py reads this line).
            wall = time.time() - time.monotonic()
            heard = self.start.heard_at + wall
            log.info(
                "announcement %s: first sample to the device at %.6f, heard at %.6f%s "
                "(output latency %.1f ms)",
                a.id,
                (self.start.handed_at or self.start.heard_at) + wall,
                heard,
                "" if a.play_at is None else f", {(heard - a.play_at) * 1000:+.1f} ms from play_at",
                self.start.latency_s * 1000,
            )
        log.info(
            "announcement %s: first audio after %d ms (%s%s), after %d ms in the queue",
            a.id,
            ms,
            source,
            f", {connection} connection" if connection else "",
            queued,
            extra=fields(a, source),
        )
        self._emit(
            Event(
                a.id,
                EventKind.STARTED,
                source=source,
                first_audio_ms=ms,
                connection=connection,
                reason=self.selection.reason,
                queued_ms=queued,
                late_ms=None if late is None else round(late * 1000),
            ),
            a,
        )


def fields(a: Announcement, source: Source) -> dict[str, str]:
    """Journal fields of an announcement's log lines (`journalctl ANNOUNCEMENT_ID=...`)."""
    return {"ANNOUNCEMENT_ID": a.id, "SOURCE": source}
