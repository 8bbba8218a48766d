"""The pipeline for one announcement: voice → engine → player, with its events."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextlib import aclosing
from dataclasses import asdict, dataclass

from .announcement import Announcement
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
    """Speaks announcements through their voice's engine into an audio sink."""

    def __init__(
        self, config: Config, engines: Mapping[str, Engine], sink: AudioSink, emit: EventSink
    ) -> None:
        self._config = config
        self._engines = engines
        self._sink = sink
        self._emit = emit

    async def speak(self, announcement: Announcement) -> bool:
        """Speak one announcement; returns whether it was spoken to the end."""
        a = announcement
        voice = self._config.voices[a.voice or self._config.default_voice]
        engine = self._engines.get(voice.engine)
        if engine is None:
            return self._fail(a, f"engine {voice.engine!r} of voice {voice.name!r} is not available in this version")
        request = SynthesisRequest(
            text=a.text,
            voice=voice,
            sample_rate=self._config.audio.sample_rate,
            instructions=a.instructions,
        )
        log.info("announcement %s: speaking with voice %s (task %s)", a.id, voice.name, request.task_id)

        def started(at: float) -> None:
            ms = round((at - a.received_at) * 1000)
            log.info("announcement %s: first audio after %d ms (%s connection)", a.id, ms,
                     request.trace.connection)
            self._emit(Event(a.id, "started", source="cloud", first_audio_ms=ms,
                             connection=request.trace.connection), a)

        try:
            async with aclosing(engine.synthesize(request)) as audio:
                complete = await self._sink.play(
                    audio, volume=a.volume if a.volume is not None else 100, on_first_audio=started
                )
        except (SynthesisError, AudioDeviceError) as exc:
            reason = exc.reason if isinstance(exc, SynthesisError) else str(exc)
            return self._fail(a, reason)
        if not complete:
            log.info("announcement %s: stopped", a.id)
            self._emit(Event(a.id, "dropped", source="cloud", error="stopped"), a)
            return False
        log.info("announcement %s: finished", a.id)
        self._emit(Event(a.id, "finished", source="cloud"), a)
        return True

    def stop(self) -> None:
        self._sink.stop()

    def _fail(self, a: Announcement, reason: str) -> bool:
        log.warning("announcement %s: failed: %s", a.id, reason)
        self._emit(Event(a.id, "failed", source="cloud", error=reason), a)
        return False
