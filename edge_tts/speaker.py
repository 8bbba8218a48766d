"""The pipeline for one announcement: voice → engine → player, with its events."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from contextlib import aclosing
from dataclasses import asdict, dataclass

from .announcement import Announcement
from .cache import PhraseCache, cache_key, replay
from .config import Config
from .engines import Engine, SynthesisRequest
from .errors import AudioDeviceError, SynthesisError
from .player import AudioSink

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    """One step of an announcement's life, as published on `<prefix>/<device>/event`."""

    id: str
    event: str  # queued | started | finished | failed | dropped
    source: str | None = None  # cache | cloud | fallback
    first_audio_ms: int | None = None
    error: str | None = None
    connection: str | None = None  # started, from the cloud: warm | new | replaced

    def as_dict(self) -> dict[str, object]:
        fields = asdict(self)
        if self.connection is None:
            del fields["connection"]
        return fields


EventSink = Callable[[Event, Announcement | None], None]


class Speaker:
    """Speaks announcements into an audio sink: from the phrase cache when it holds the
    phrase, else through the voice's engine (recording into the cache as it plays)."""

    def __init__(
        self,
        config: Config,
        engines: Mapping[str, Engine],
        sink: AudioSink,
        emit: EventSink,
        cache: PhraseCache | None = None,
    ) -> None:
        self._config = config
        self._engines = engines
        self._sink = sink
        self._emit = emit
        self._cache = cache

    async def speak(self, announcement: Announcement) -> bool:
        """Speak one announcement; returns whether it was spoken to the end."""
        a = announcement
        voice = self._config.voices[a.voice or self._config.default_voice]
        rate = self._config.audio.sample_rate
        request = SynthesisRequest(text=a.text, voice=voice, sample_rate=rate,
                                   instructions=a.instructions)
        cache = self._cache if a.cache else None
        key = cache_key(request) if cache else ""
        cached = await asyncio.to_thread(cache.load, key, rate) if cache else None
        if cached is not None:
            source, audio = "cache", replay(cached)
            log.info("announcement %s: from the cache (%s)", a.id, key[:12])
        else:
            engine = self._engines.get(voice.engine)
            if engine is None:
                return self._fail(a, "cloud", f"engine {voice.engine!r} of voice {voice.name!r} "
                                  "is not available in this version")
            log.info("announcement %s: speaking with voice %s (task %s)", a.id, voice.name,
                     request.task_id)
            source, audio = "cloud", engine.synthesize(request)
            if cache:
                audio = cache.record(audio, key, rate)

        def started(at: float) -> None:
            ms = round((at - a.received_at) * 1000)
            connection = request.trace.connection if source == "cloud" else None
            log.info("announcement %s: first audio after %d ms (%s%s)", a.id, ms, source,
                     f", {connection} connection" if connection else "")
            self._emit(Event(a.id, "started", source=source, first_audio_ms=ms,
                             connection=connection), a)

        try:
            async with aclosing(audio) as stream:
                complete = await self._sink.play(
                    stream, volume=a.volume if a.volume is not None else 100,
                    on_first_audio=started,
                )
        except (SynthesisError, AudioDeviceError) as exc:
            reason = exc.reason if isinstance(exc, SynthesisError) else str(exc)
            return self._fail(a, source, reason)
        finally:
            if cache:
                await asyncio.to_thread(cache.count, hits=int(cached is not None),
                                        misses=int(cached is None))
        if not complete:
            log.info("announcement %s: stopped", a.id)
            self._emit(Event(a.id, "dropped", source=source, error="stopped"), a)
            return False
        log.info("announcement %s: finished", a.id)
        self._emit(Event(a.id, "finished", source=source), a)
        return True

    def stop(self) -> None:
        self._sink.stop()

    def _fail(self, a: Announcement, source: str, reason: str) -> bool:
        log.warning("announcement %s: failed: %s", a.id, reason)
        self._emit(Event(a.id, "failed", source=source, error=reason), a)
        return False
