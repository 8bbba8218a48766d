"""The pipeline for one announcement: voice → engine → player, with its events."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import aclosing
from dataclasses import asdict, dataclass

from .announcement import Announcement
from .cache import PhraseCache, cache_key, replay
from .config import Config, Voice
from .engines import Engine, SynthesisRequest
from .errors import AudioDeviceError, SynthesisError
from .player import AudioSink

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    """One step of an announcement's life, as published on `<prefix>/<device>/event`."""

    id: str
    event: str  # queued | started | finished | failed | dropped
    source: str | None = None  # cache | cloud | fallback | offline (a piper voice chosen)
    first_audio_ms: int | None = None
    error: str | None = None
    connection: str | None = None  # started, from the cloud: warm | new | replaced
    reason: str | None = None  # started/finished by the fallback voice: why the cloud did not

    def as_dict(self) -> dict[str, object]:
        fields = asdict(self)
        for optional in ("connection", "reason"):
            if fields[optional] is None:
                del fields[optional]
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
        self._stop_reason = "stopped"

    async def speak(self, announcement: Announcement) -> bool:
        """Speak one announcement; returns whether it was spoken to the end."""
        a = announcement
        voice = self._config.voices.get(a.voice or self._config.default_voice)
        if voice is None:  # queued before a reload removed its voice
            return self._fail(a, "cloud", f"voice {a.voice!r} is no longer configured")
        rate = self._config.audio.sample_rate
        request = SynthesisRequest(text=a.text, voice=voice, sample_rate=rate,
                                   instructions=a.instructions)
        cache = self._cache if a.cache else None
        key = cache_key(request) if cache else ""
        cached = await asyncio.to_thread(cache.load, key, rate) if cache else None
        reason: str | None = None
        if cached is not None:
            source, audio = "cache", replay(cached)
            log.info("announcement %s: from the cache (%s)", a.id, key[:12],
                     extra=_fields(a, "cache"))
        else:
            source = "offline" if voice.engine == "piper" else "cloud"
            try:
                audio = await self._synthesis(a, request)
            except SynthesisError as exc:
                fallback = self._fallback_for(voice)
                if fallback is None:
                    return self._fail(a, source, exc.reason)
                reason = exc.reason
                log.warning("announcement %s: %s; speaking with the fallback voice %s", a.id,
                            reason, fallback.name, extra=_fields(a, "fallback"))
                source = "fallback"
                audio = await self._fallback_audio(a, fallback)
            else:
                if cache:
                    audio = cache.record(audio, key, rate)

        def started(at: float) -> None:
            ms = round((at - a.received_at) * 1000)
            connection = request.trace.connection if source == "cloud" else None
            log.info("announcement %s: first audio after %d ms (%s%s)", a.id, ms, source,
                     f", {connection} connection" if connection else "",
                     extra=_fields(a, source))
            self._emit(Event(a.id, "started", source=source, first_audio_ms=ms,
                             connection=connection, reason=reason), a)

        try:
            async with aclosing(audio) as stream:
                complete = await self._sink.play(
                    stream, volume=a.volume if a.volume is not None else 100,
                    on_first_audio=started,
                )
        except (SynthesisError, AudioDeviceError) as exc:
            error = exc.reason if isinstance(exc, SynthesisError) else str(exc)
            return self._fail(a, source, f"{reason}; then {error}" if reason else error)
        finally:
            if cache:
                await asyncio.to_thread(cache.count, hits=int(cached is not None),
                                        misses=int(cached is None))
        if not complete:
            log.info("announcement %s: stopped", a.id, extra=_fields(a, source))
            self._emit(Event(a.id, "dropped", source=source, error=self._stop_reason), a)
            return False
        log.info("announcement %s: finished", a.id, extra=_fields(a, source))
        self._emit(Event(a.id, "finished", source=source, reason=reason), a)
        return True

    async def _synthesis(self, a: Announcement, request: SynthesisRequest) -> AsyncGenerator[bytes, None]:
        """The voice's audio, once its first chunk is in hand. With a fallback voice to hand
        over to, a cloud voice gets `fallback.first_audio_ms` for that first chunk; a failure
        before it raises SynthesisError (after which nothing has been played)."""
        voice = request.voice
        engine = self._engines.get(voice.engine)
        if engine is None:
            raise SynthesisError(f"engine {voice.engine!r} of voice {voice.name!r} is not "
                                 "available in this version")
        log.info("announcement %s: speaking with voice %s (task %s)", a.id, voice.name,
                 request.task_id)
        audio = engine.synthesize(request)
        if self._fallback_for(voice) is None:
            return audio
        limit_ms = self._config.fallback.first_audio_ms
        try:
            async with asyncio.timeout(limit_ms / 1000):
                first = await anext(audio)
        except StopAsyncIteration:
            raise SynthesisError("the cloud sent no audio") from None
        except TimeoutError:
            await audio.aclose()  # type: ignore[attr-defined]
            raise SynthesisError(f"no audio from the cloud within {limit_ms} ms") from None
        return _prepend(first, audio)

    async def _fallback_audio(self, a: Announcement, fallback: Voice) -> AsyncGenerator[bytes, None]:
        engine = self._engines.get(fallback.engine)
        assert engine is not None  # _fallback_for checked
        request = SynthesisRequest(text=a.text, voice=fallback,
                                   sample_rate=self._config.audio.sample_rate)
        return engine.synthesize(request)

    def _fallback_for(self, voice: Voice) -> Voice | None:
        """The voice that takes over when `voice` cannot speak, if there is one."""
        name = self._config.fallback_voice
        fallback = self._config.voices.get(name) if name else None
        if fallback is None or fallback.name == voice.name or fallback.engine == voice.engine:
            return None
        return fallback if fallback.engine in self._engines else None

    def stop(self, reason: str = "stopped") -> None:
        """Cut what is playing now; its `dropped` event gives `reason`."""
        self._stop_reason = reason
        self._sink.stop()

    def _fail(self, a: Announcement, source: str, reason: str) -> bool:
        log.warning("announcement %s: failed: %s", a.id, reason, extra=_fields(a, source))
        self._emit(Event(a.id, "failed", source=source, error=reason), a)
        return False


def _fields(a: Announcement, source: str) -> dict[str, str]:
    """Journal fields of an announcement's log lines (`journalctl ANNOUNCEMENT_ID=...`)."""
    return {"ANNOUNCEMENT_ID": a.id, "SOURCE": source}


async def _prepend(first: bytes, rest: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    yield first
    async with aclosing(rest) as chunks:  # type: ignore[type-var]
        async for chunk in chunks:
            yield chunk
