"""The pipeline for one announcement: voice → engine → player, with its events."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import aclosing
from dataclasses import replace

from .announcement import Announcement
from .backoff import Backoff
from .cache import PhraseCache, cache_key, replay
from .chime import ChimeError, load_chime
from .config import Config, EngineName, Voice
from .engines import Engine, SynthesisRequest, SynthesisTrace, new_task_id
from .errors import AudioDeviceError, SynthesisError
from .events import Event, EventKind, Source
from .group import Following, Groups
from .player import AudioSink
from .speech import EventSink, Speech, Started, TextFeed, fields
from .ssml import ssml_text
from .text import split_sentences, weight

log = logging.getLogger(__name__)

_MAX_CLOUD_ATTEMPTS = 3  # asking the cloud again for the rest of one announcement
# A lower bound on speech: characters (a CJK one counts two) a second at rate 1.0. Telling
# from the audio how far speech got, it errs towards saying a sentence again.
_SLOWEST_UNITS_S = 4.0


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
        budget: Callable[[], str | None] = lambda: None,
        groups: Groups | None = None,
    ) -> None:
        self._config = config
        self._groups = groups  # a group announcement is synthesized once, by one member
        self._budget = budget  # why the cloud may not be asked now (the month's cap), if so
        self._engines = engines
        self._sink = sink
        self._emit = emit
        self._cache = cache
        self._stop_reason = "stopped"

    async def speak(self, announcement: Announcement) -> bool:
        """Speak one announcement; returns whether it was spoken to the end. Every outcome
        is one final event: finished, dropped (stopped) or failed."""
        a = announcement
        voice = self._config.voices.get(a.voice or self._config.default_voice)
        if voice is None:  # queued before a reload removed its voice
            return self._fail(a, Source.CLOUD, f"voice {a.voice!r} is no longer configured")
        request = self._request(a, voice)
        started = Started(self._emit, a, request, time.monotonic())
        start = started.start
        chime = await self._chime_for(a)
        started.chimed = chime is not None
        # The chime plays while the speech is found (cache) or started (cloud, fallback): it
        # hides the cloud's latency instead of adding to it.
        selecting = asyncio.ensure_future(self._select(a, request))
        try:
            if chime:
                audio = _after_chime(chime, selecting, started)
            else:
                started.selected(await selecting)
                audio = started.audio
            async with aclosing(audio) as stream:
                complete = await self._sink.play(
                    stream,
                    volume=a.volume if a.volume is not None else 100,
                    on_first_audio=None if chime else started.heard,
                    start=start,
                )
        except (SynthesisError, AudioDeviceError) as exc:
            error = exc.reason if isinstance(exc, SynthesisError) else str(exc)
            why = started.reason
            return self._fail(a, started.source, f"{why}; then {error}" if why else error)
        finally:
            await self._settle(selecting, started)
        return self._ended(a, started, complete)

    def _request(self, a: Announcement, voice: Voice) -> SynthesisRequest:
        """What the voice is asked to say: Piper reads plain text, the cloud voices SSML."""
        piper = voice.engine == EngineName.PIPER
        return SynthesisRequest(
            text=_plain(a) if piper else a.text,
            voice=voice,
            sample_rate=self._config.audio.sample_rate,
            instructions=a.instructions,
            ssml=a.ssml and not piper,
        )

    async def speech(self, a: Announcement) -> Speech:
        """The speech of `a` as an announcement would have it (the phrase cache, the voice's
        engine on its kept connection, the fallback voice), for a listener other than the
        speaker (a Wyoming client); SynthesisError if no voice can say it. The caller plays
        (or closes) its audio."""
        voice = self._config.voices.get(a.voice or self._config.default_voice)
        if voice is None:
            raise SynthesisError(f"no voice named {a.voice!r}")
        return await self._select(a, self._request(a, voice))

    def speech_stream(self, voice: Voice, text: TextFeed) -> AsyncGenerator[bytes, None]:
        """Text still being written, spoken by `voice` as each sentence of it completes. If
        the voice cannot speak before its first audio, the fallback voice says all of it
        (what came so far, then the rest as it comes)."""
        return self._stream(voice, text)

    async def _stream(self, voice: Voice, text: TextFeed) -> AsyncGenerator[bytes, None]:
        rate = self._config.audio.sample_rate
        engine = self._engine(voice)
        request = SynthesisRequest(text="", voice=voice, sample_rate=rate)
        heard = False
        try:
            self._check_budget(voice)
            async with aclosing(engine.synthesize_stream(request, text.sentences())) as audio:
                async for chunk in audio:
                    heard = True
                    yield chunk
            return
        except SynthesisError as exc:
            fallback = self._fallback_for(voice)
            if heard or fallback is None:
                raise
            log.warning("stream: %s; the fallback voice %s says it", exc.reason, fallback.name)
        again = SynthesisRequest(text="", voice=fallback, sample_rate=rate)
        speech = self._engines[fallback.engine].synthesize_stream(again, text.sentences(again=True))
        async with aclosing(speech) as audio:
            async for chunk in audio:
                yield chunk

    async def _settle(self, selecting: asyncio.Future[Speech], started: Started) -> None:
        """After playing (or failing): the selection finished or cancelled, speech never played
        (stopped during the chime) closed, and the cache's hit or miss counted."""
        if not selecting.done():
            selecting.cancel()
        await asyncio.gather(selecting, return_exceptions=True)
        selection = started.selection or _done(selecting)
        if selection is not None and selection is not started.selection:
            await selection.audio.aclose()
        if selection is not None and selection.cache is not None:
            await asyncio.to_thread(
                selection.cache.count, hits=int(selection.hit), misses=int(not selection.hit)
            )

    def _ended(self, a: Announcement, started: Started, complete: bool) -> bool:
        """The final event of an announcement that played: dropped if stopped, else finished
        (with what went wrong on the way, if something did)."""
        source = started.source
        if not complete:
            log.info("announcement %s: stopped", a.id, extra=fields(a, source))
            self._emit(Event(a.id, EventKind.DROPPED, source=source, error=self._stop_reason), a)
            return False
        reason = started.reason or started.request.trace.resumed
        log.info(
            "announcement %s: finished%s",
            a.id,
            f" ({reason})" if reason else "",
            extra=fields(a, source),
        )
        self._emit(Event(a.id, EventKind.FINISHED, source=source, reason=reason), a)
        return True

    async def _select(self, a: Announcement, request: SynthesisRequest) -> Speech:
        """Where the speech comes from: the cache, the member of its group that synthesizes
        it, the voice's engine (recorded into the cache as it plays), or the fallback voice;
        raises SynthesisError if none can speak."""
        rate = request.sample_rate
        cache = self._cache if a.cache else None
        key = cache_key(request) if cache else ""
        cached = await asyncio.to_thread(cache.load, key, rate) if cache else None
        if cached is not None:
            log.info(
                "announcement %s: from the cache (%s)",
                a.id,
                key[:12],
                extra=fields(a, Source.CACHE),
            )
            return Speech(Source.CACHE, replay(cached), cache, hit=True)
        if self._groups is None or request.voice.engine == EngineName.PIPER:
            return await self._own(a, request, cache, key)
        return await self._shared(a, request, cache, key)

    async def _shared(
        self,
        a: Announcement,
        request: SynthesisRequest,
        cache: PhraseCache | None,
        key: str,
        attempt: int = 1,
        why: str | None = None,
    ) -> Speech:
        """A group announcement: synthesized by the member elected for it and shared as it
        comes. A leader that gives nothing (fails, goes offline, falls silent before its first
        audio) is replaced once, by a second election among those left; then each member
        speaks for itself. One that breaks off mid-way: the rest is said as when the cloud
        breaks off (`_resumable`)."""
        assert self._groups is not None
        role = await self._groups.join(a, key or cache_key(request), attempt)
        if isinstance(role, Following):
            config = self._config
            limit_ms = 2 * config.fallback.first_audio_ms  # the leader's own fallback, and more
            stall_s = config.dashscope.stall_timeout_s + config.fallback.first_audio_ms / 1000
            try:
                audio = await _first_audio_within(role.audio(stall_s), limit_ms, role.leader)
            except SynthesisError as exc:
                reason = "; ".join(r for r in (why, exc.reason) if r)
                if attempt == 1:
                    log.warning("announcement %s: %s; the group elects again", a.id, exc.reason)
                    return await self._shared(a, request, cache, key, 2, reason)
                log.warning("announcement %s: %s; speaking it itself", a.id, exc.reason)
                speech = await self._own(a, request, cache, key)
                speech.reason = "; ".join(r for r in (reason, speech.reason) if r)
                return speech
            # Kept only if only a holder of the group key can have sent it: without one, a
            # stranger on the broker could answer the claim, and would be heard once, not for
            # good from the cache.
            if cache and self._groups.trusted:
                audio = cache.record(audio, key, request.sample_rate)
            audio = self._resumable(a, request, audio)
            return Speech(Source.SHARED, audio, cache, reason=why)
        try:
            speech = await self._own(a, request, cache, key)
        except SynthesisError as exc:
            if role is not None:
                role.fail(exc.reason)
            raise
        if role is not None:
            speech.audio = role.tee(speech.audio)
        speech.reason = "; ".join(r for r in (why, speech.reason) if r) or None
        return speech

    async def _own(
        self, a: Announcement, request: SynthesisRequest, cache: PhraseCache | None, key: str
    ) -> Speech:
        """This member's own speech: the voice's engine, else the fallback voice."""
        voice, rate = request.voice, request.sample_rate
        source = Source.OFFLINE if voice.engine == EngineName.PIPER else Source.CLOUD
        try:
            audio = await self._synthesis(a, request)
        except SynthesisError as exc:
            fallback = self._fallback_for(voice)
            if fallback is None:
                raise SynthesisError(exc.reason) from None
            log.warning(
                "announcement %s: %s; speaking with the fallback voice %s",
                a.id,
                exc.reason,
                fallback.name,
                extra=fields(a, Source.FALLBACK),
            )
            return Speech(
                Source.FALLBACK, await self._fallback_audio(a, fallback), cache, reason=exc.reason
            )
        if cache:
            audio = cache.record(audio, key, rate)  # kept only if it ends cleanly
        if source == Source.CLOUD:
            audio = self._resumable(a, request, audio)
        return Speech(source, audio, cache)

    async def _chime_for(self, a: Announcement) -> bytes | None:
        """The chime's PCM: the message's choice (true, false, builtin or a name from
        audio.chimes, never a path) or else audio.chime, which the config may give as a path."""
        audio = self._config.audio
        named = dict(audio.chimes)
        if a.chime is None or a.chime is True:
            spec = audio.chime or ("builtin" if a.chime is True else None)
        elif a.chime is False:
            spec = None
        elif a.chime == "builtin" or a.chime in named:
            spec = a.chime
        else:  # queued before a reload removed the name: never taken as a path
            log.warning("announcement %s: no chime named %r any more", a.id, a.chime)
            spec = None
        if not spec:
            return None
        spec = named.get(spec, spec)
        try:
            return await asyncio.to_thread(load_chime, spec, audio.sample_rate)
        except ChimeError as exc:
            log.warning("announcement %s: no chime: %s", a.id, exc)
            return None

    async def _synthesis(
        self, a: Announcement, request: SynthesisRequest
    ) -> AsyncGenerator[bytes, None]:
        """The voice's audio, once its first chunk is in hand. With a fallback voice to hand
        over to, a cloud voice gets `fallback.first_audio_ms` for that first chunk; a failure
        before it raises SynthesisError (after which nothing has been played)."""
        voice = request.voice
        engine = self._engine(voice)
        self._check_budget(voice)
        if request.ssml and voice.engine != EngineName.COSYVOICE:
            raise SynthesisError(
                f"voice {voice.name!r} ({voice.engine}) cannot speak SSML; "
                'send "text", or use a CosyVoice voice'
            )
        log.info(
            "announcement %s: speaking with voice %s (task %s)", a.id, voice.name, request.task_id
        )
        audio = engine.synthesize(request)
        if self._fallback_for(voice) is None:
            return audio
        return await _first_audio_within(audio, self._config.fallback.first_audio_ms)

    async def _resumable(
        self, a: Announcement, request: SynthesisRequest, audio: AsyncGenerator[bytes, None]
    ) -> AsyncGenerator[bytes, None]:
        """The cloud's audio, never left half-spoken: if the cloud breaks after the speech
        began, the rest (from the sentence that was cut) is asked of the cloud again on a new
        connection, with a short backoff, for as long as fallback.first_audio_ms of silence
        allows; then the fallback voice says it. Without a fallback voice the announcement
        fails, as the cloud left it."""
        pieces = [request.text] if request.ssml else split_sentences(request.text)
        done, attempt, attempts = 0, request, 0
        while True:
            delivered = 0
            try:
                async with aclosing(audio) as chunks:
                    async for chunk in chunks:
                        delivered += len(chunk)
                        yield chunk
                return
            except SynthesisError as exc:
                cause = exc.reason
            done += _sentences_done(attempt, pieces[done:], delivered)
            rest = pieces[done:]
            if not rest:
                return
            where = f"sentence {done + 1} of {len(pieces)}"
            log.warning(
                "announcement %s: the cloud broke off (%s); saying the rest from %s",
                a.id,
                cause,
                where,
                extra=fields(a, Source.CLOUD),
            )
            resumed = await self._cloud_again(a, request, "".join(rest), attempts)
            if resumed is not None:
                attempt, audio, attempts = resumed[0], resumed[1], resumed[2]
                request.trace.resumed = f"{cause}; the cloud said the rest from {where}"
                continue
            fallback = self._fallback_for(request.voice)
            if fallback is None:
                raise SynthesisError(cause)
            request.trace.resumed = (
                f"{cause}; the fallback voice {fallback.name} said the rest from {where}"
            )
            rest_text = ssml_text(request.text) if request.ssml else "".join(rest)
            speech = await self._fallback_audio(a, fallback, rest_text)
            async with aclosing(speech) as chunks:
                async for chunk in chunks:
                    yield chunk
            return

    async def _cloud_again(
        self, a: Announcement, request: SynthesisRequest, text: str, attempts: int
    ) -> tuple[SynthesisRequest, AsyncGenerator[bytes, None], int] | None:
        """The cloud's audio for `text` on a new task, tried with a short backoff until its
        first audio is in hand or fallback.first_audio_ms has passed; None if it would not."""
        engine = self._engines.get(request.voice.engine)
        if engine is None:
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.fallback.first_audio_ms / 1000
        backoff = Backoff(start=0.1, cap=0.5)
        while attempts < _MAX_CLOUD_ATTEMPTS and (left := deadline - loop.time()) > 0:
            attempts += 1
            again = replace(request, text=text, task_id=new_task_id(), trace=SynthesisTrace())
            try:
                audio = await _first_audio_within(engine.synthesize(again), round(left * 1000))
            except SynthesisError as exc:
                log.info("announcement %s: the cloud again: %s", a.id, exc.reason)
                await asyncio.sleep(min(backoff.next(), max(0.0, deadline - loop.time())))
                continue
            return again, audio, attempts
        return None

    async def _fallback_audio(
        self, a: Announcement, fallback: Voice, text: str | None = None
    ) -> AsyncGenerator[bytes, None]:
        engine = self._engines.get(fallback.engine)
        assert engine is not None  # _fallback_for checked
        request = SynthesisRequest(
            text=_plain(a) if text is None else text,
            voice=fallback,
            sample_rate=self._config.audio.sample_rate,
        )
        return engine.synthesize(request)

    def _check_budget(self, voice: Voice) -> None:
        """A cloud voice past the month's cap gives way (to the fallback voice, if any)."""
        if voice.engine != EngineName.PIPER and (why := self._budget()):
            raise SynthesisError(why)

    def _engine(self, voice: Voice) -> Engine:
        engine = self._engines.get(voice.engine)
        if engine is None:
            raise SynthesisError(
                f"engine {voice.engine!r} of voice {voice.name!r} is not available"
            )
        return engine

    def _fallback_for(self, voice: Voice) -> Voice | None:
        """The voice that takes over when `voice` cannot speak, if there is one."""
        fallback = self._config.fallback_profile
        if fallback is None or fallback.name == voice.name or fallback.engine == voice.engine:
            return None
        return fallback if fallback.engine in self._engines else None

    def stop(self, reason: str = "stopped") -> None:
        """Cut what is playing now; its `dropped` event gives `reason`."""
        self._stop_reason = reason
        self._sink.stop()

    def _fail(self, a: Announcement, source: Source, reason: str) -> bool:
        log.warning("announcement %s: failed: %s", a.id, reason, extra=fields(a, source))
        self._emit(Event(a.id, EventKind.FAILED, source=source, error=reason), a)
        return False


def _done(selecting: asyncio.Future[Speech]) -> Speech | None:
    if selecting.done() and not selecting.cancelled() and not selecting.exception():
        return selecting.result()
    return None


async def _after_chime(
    chime: bytes, selecting: asyncio.Future[Speech], started: Started
) -> AsyncGenerator[bytes, None]:
    async for chunk in replay(chime):
        yield chunk
    selection = await selecting
    started.selected(selection)
    async with aclosing(selection.audio) as speech:
        async for chunk in speech:
            started.heard(time.monotonic())  # handed on, behind the chime
            yield chunk


async def _first_audio_within(
    audio: AsyncGenerator[bytes, None], limit_ms: int, who: str = "the cloud"
) -> AsyncGenerator[bytes, None]:
    """`audio` once its first chunk is in hand; SynthesisError if none comes within
    `limit_ms` (nothing has been played then)."""
    try:
        async with asyncio.timeout(limit_ms / 1000):
            first = await anext(audio)
    except StopAsyncIteration:
        raise SynthesisError(f"{who} sent no audio") from None
    except TimeoutError:
        await audio.aclose()
        raise SynthesisError(f"no audio from {who} within {limit_ms} ms") from None
    except BaseException:
        await audio.aclose()
        raise
    return _prepend(first, audio)


def _sentences_done(request: SynthesisRequest, pieces: list[str], delivered: int) -> int:
    """How many of `pieces` (the attempt's sentences) were certainly heard whole: what the
    protocol said (Qwen), else what the audio played proves at a generous speaking rate
    (_SLOWEST_UNITS_S characters a second times the voice's rate), so a sentence is never
    skipped; at worst one is heard again."""
    if request.trace.sentences_done is not None:
        return min(request.trace.sentences_done, len(pieces))
    seconds = delivered / (2 * request.sample_rate)
    heard = seconds * _SLOWEST_UNITS_S * max(request.voice.rate, 0.5)
    done, total = 0, 0
    for piece in pieces:
        total += weight(piece)
        if total > heard:
            break
        done += 1
    return done


async def _prepend(first: bytes, rest: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    yield first
    async with aclosing(rest) as chunks:
        async for chunk in chunks:
            yield chunk


def _plain(a: Announcement) -> str:
    """The announcement's words, for a voice that reads plain text."""
    return ssml_text(a.text) if a.ssml else a.text
