"""Home Assistant's own voice: a Wyoming TTS server over the same speech path as an
announcement, minus the speaker.

Home Assistant adds an outside TTS engine through its "Wyoming Protocol" integration (host
and port, or found by zeroconf as `_wyoming._tcp`). It asks `describe` and gets `info`: one
TTS program whose voices are the configured voice profiles. Then, per request:

- one-shot: `synthesize` → `audio-start`, `audio-chunk`s as the cloud sends them, `audio-stop`.
  The phrase cache first, the voice's engine on its kept connection, the fallback voice.
- streaming (Assist's LLM replies, while the model still writes): `synthesize-start`,
  `synthesize-chunk`s, the compatibility `synthesize` (ignored inside a stream),
  `synthesize-stop` → the audio of each sentence as soon as it is complete (CosyVoice: one
  task with a continue-task per sentence; Qwen: one session), then `synthesize-stopped`.

The events, their framing and the info are the `wyoming` package's (the protocol's reference
implementation); the advertisement is zeroconf's (`advertise`). Requests
use their own cloud connections (a Cloud of their own), so Assist never takes the warm
connection an announcement is about to use.

Whatever a client sends, the worst it gets is an `error` event and the end of its own
connection: an unknown voice, empty or too long text, events out of order, garbage bytes, an
event larger than _MAX_EVENT_BYTES, a disconnect mid-stream (its task and connection are
closed, never left open).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event, async_read_event, async_write_event
from wyoming.info import Attribution, Describe, Info, TtsProgram, TtsVoice
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
)

from . import __version__, memory
from .advertise import advertise
from .announcement import Announcement, excerpt
from .config import Config, EngineName, Voice
from .errors import SynthesisError
from .models import languages
from .speaker import Speaker
from .speech import TextFeed
from .text import SentenceStream

log = logging.getLogger(__name__)

_MAX_EVENT_BYTES = 1 << 20  # a text event is a few kB; nothing a client sends may be larger
_LINE_LIMIT = 1 << 16  # the JSON header line of one event
# Home Assistant opens a connection per request and closes it: a client silent this long, or
# one past this many at once, is someone holding sockets, not asking for speech.
_IDLE_S = 120.0
_MAX_CLIENTS = 16
# A client that takes none of its audio for this long is not listening: it is dropped, its
# place freed (Home Assistant reads as fast as the audio comes).
_WRITE_S = 15.0
# At the limit, a newcomer takes the place of a client that has been stalled in a write, or
# idle with nothing asked, at least this long (the longest first); else it is refused.
_EVICT_AFTER_S = 1.0
# What the kernel holds for one client that does not read (Linux would let it grow to 4 MiB
# a socket: sixteen of them, 64 MiB): a few seconds of audio.
_SEND_BUFFER = 128 * 1024
_WIDTH, _CHANNELS = 2, 1

ALIBABA = Attribution(name="Alibaba Cloud Model Studio", url="https://www.alibabacloud.com/")
PIPER = Attribution(name="Piper (rhasspy)", url="https://github.com/rhasspy/piper")
EDGE_TTS = Attribution(name="edge-tts", url="https://github.com/edge-tts/edge-tts")


_STOPPED = Error(
    text="edge-tts stopped its voice server mid-way (a restart, or a reload of its config): "
    "ask again",
    code="restarting",
)


class _Stalled(Exception):
    """The client took none of what was written to it within _WRITE_S; it was dropped."""


class Refused(Exception):
    """A request this server will not do; the text goes to the client as an `error`."""

    def __init__(self, text: str, code: str) -> None:
        super().__init__(text)
        self.text, self.code = text, code


def info(config: Config) -> Info:
    """The answer to `describe`: one TTS program, each voice profile a voice."""
    voices = [
        TtsVoice(
            name=v.name,
            attribution=PIPER if v.engine == EngineName.PIPER else ALIBABA,
            installed=True,
            description=_describe(v),
            version=None,
            languages=languages(v.engine, v.model, v.language_hints, v.language_type),
        )
        for v in config.voices.values()
    ]
    program = TtsProgram(
        name="edge-tts",
        attribution=EDGE_TTS,
        installed=True,
        description=f"edge-tts on {config.device.name}: Alibaba Cloud voices, warm and cached",
        version=__version__,
        voices=voices,
        supports_synthesize_streaming=True,
    )
    return Info(tts=[program])


def _describe(v: Voice) -> str:
    if v.engine == EngineName.PIPER:
        return f"{v.name} (offline, Piper)"
    return f"{v.name} ({v.model}, {v.voice or 'default'})"


@dataclass
class WyomingStats:
    """What the Wyoming server did since start: published in the daemon's stats."""

    requests: int = 0  # one-shot synthesize
    streams: int = 0  # synthesize-start … synthesize-stopped
    characters: int = 0  # text asked for, in all
    errors: int = 0  # error events sent
    clients: int = 0  # connected now
    speaking: int = 0  # requests and streams being spoken now
    listening: bool = False
    advertised: str | None = None  # "zeroconf" while advertised (edge_tts.advertise)
    problem: str | None = None  # why it is not listening

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


class _CappedReader(asyncio.StreamReader):
    """A StreamReader that holds at most `cap` unread bytes: wyoming's reader would otherwise
    wait for (and buffer) whatever length a header claims."""

    def __init__(self, cap: int) -> None:
        super().__init__(limit=_LINE_LIMIT)
        self._cap = cap

    def feed_data(self, data: Any) -> None:
        buffered: bytearray = getattr(self, "_buffer")  # noqa: B009 (asyncio's own buffer)
        if len(buffered) + len(data) > self._cap:
            self.set_exception(ValueError(f"an event larger than {self._cap} bytes"))
            transport = getattr(self, "_transport", None)
            if transport is not None:
                transport.close()
            return
        super().feed_data(data)


class WyomingServer:
    """Listens on wyoming.host:port (and advertises itself) until cancelled; every client is
    a named task this server owns, cancelled and awaited when it stops."""

    def __init__(
        self,
        config: Config,
        speaker: Speaker,
        stats: WyomingStats,
        changed: Callable[[], None] = lambda: None,
    ) -> None:
        self._config = config
        self._speaker = speaker
        self.stats = stats
        self.changed = changed  # the stats changed: publish them
        self._clients: set[asyncio.Task[None]] = set()
        self._served: set[_Client] = set()  # the clients being served, to find one to evict
        self._count = 0

    async def run(self) -> None:
        w = self._config.wyoming
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(
                lambda: asyncio.StreamReaderProtocol(
                    _CappedReader(_MAX_EVENT_BYTES), self._connected
                ),
                host=w.host,
                port=w.port,
                reuse_address=True,
            )
        except OSError as exc:
            # Another Wyoming server (wyoming-piper takes 10200 too) must not stop the
            # announcements: say why, and go on without this one.
            self.stats.problem = f"cannot listen on {w.host}:{w.port}: {exc.strerror or exc}"
            log.error(
                "wyoming: %s (set wyoming.port, or wyoming.enabled: false)", self.stats.problem
            )
            self.changed()
            await asyncio.Future()  # the daemon runs on without Wyoming
            return
        self.stats.listening = True
        self.changed()
        log.info("wyoming: serving Home Assistant on %s:%d", w.host, w.port)
        advert = await advertise(self._config) if w.zeroconf else None
        if advert is not None:
            self.stats.advertised = advert.how
            self.changed()
        try:
            async with server:
                await server.serve_forever()
        finally:
            self.stats.listening = False
            server.close()
            for client in self._clients:
                client.cancel()
            await asyncio.gather(*self._clients, return_exceptions=True)
            if advert is not None:
                await advert.close()
            self.stats.advertised = None

    def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._count += 1
        if len(self._clients) >= _MAX_CLIENTS:
            self._evict()
        if len(self._clients) >= _MAX_CLIENTS:
            log.warning("wyoming: %d clients already; one more refused", _MAX_CLIENTS)
            refused = Error(text=f"busy: {_MAX_CLIENTS} clients already", code="busy").event()
            task = asyncio.get_running_loop().create_task(_refuse(writer, refused))
            self._clients.add(task)
            task.add_done_callback(self._clients.discard)
            return
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER)
        client = _Client(self, reader, writer, self._count)
        task = asyncio.get_running_loop().create_task(
            client.run(), name=f"wyoming client {self._count}"
        )
        self._clients.add(task)
        self._served.add(client)
        task.add_done_callback(self._clients.discard)
        task.add_done_callback(lambda _: self._served.discard(client))

    def _evict(self) -> None:
        """Make room for a newcomer: drop the client stalled in a write, or idle with
        nothing asked, the longest (at least _EVICT_AFTER_S), if there is one."""
        now = asyncio.get_running_loop().time()
        waiting = [(c.waiting_since, c) for c in self._served if c.waiting_since is not None]
        since, client = min(waiting, default=(now, None), key=lambda w: w[0])
        if client is not None and now - since >= _EVICT_AFTER_S:
            log.warning(
                "wyoming: %d clients already; %s (%s for %.0f s) dropped for a new one",
                _MAX_CLIENTS,
                client.name,
                client.waiting_for,
                now - since,
            )
            client.drop()


class _Client:
    """One connection: its events in order, its one request or stream at a time."""

    def __init__(
        self,
        server: WyomingServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        number: int,
    ) -> None:
        self._server = server
        self._config = server._config
        self._speaker = server._speaker
        self._stats = server.stats
        self._reader, self._writer = reader, writer
        self.name = f"wyoming client {number}"
        self._stream: _Stream | None = None
        # Since when it has been idle (nothing asked) or stalled in a write, on the loop's
        # clock: what the server looks at to make room (None: working).
        self.waiting_since: float | None = None
        self.waiting_for = ""
        self._writing = 0  # writes under way (the request's and a stream's)
        self._requested = False  # a one-shot synthesize is being answered

    def drop(self) -> None:
        """Hang up at once, whatever is still to be sent (a client that does not read)."""
        self._writer.transport.abort()

    async def run(self) -> None:
        self._stats.clients += 1
        self._server.changed()
        peer = self._writer.get_extra_info("peername")
        log.info("%s: connected from %s", self.name, peer)
        try:
            while True:
                try:
                    async with asyncio.timeout(_IDLE_S):
                        if self._stream is None and not self._writing:
                            self._waiting("idle")
                        event = await async_read_event(self._reader)
                        self._waiting(None)
                except TimeoutError:
                    log.info("%s: silent for %g s; closed", self.name, _IDLE_S)
                    return
                except (
                    ValueError,
                    TypeError,
                    KeyError,
                    AttributeError,
                    RecursionError,  # JSON nested thousands deep
                    OverflowError,
                    asyncio.IncompleteReadError,
                ) as exc:
                    await self._error(f"not a Wyoming event: {excerpt(str(exc), 60)}", "bad-event")
                    return
                if event is None:  # closed, or a line that is not JSON
                    return
                try:
                    if not await self._handle(event):
                        return
                except Refused as exc:
                    await self._error(exc.text, exc.code)
                    if self._stream is not None:
                        await self._stream.cancel()
                        self._stream = None
        except (ConnectionError, OSError) as exc:
            log.info("%s: gone (%s)", self.name, exc)
        except _Stalled:
            pass  # said when it was dropped
        except asyncio.CancelledError:
            # The server stops (a reload, a shutdown): a request under way is told, not cut.
            if self._stream is not None or self._requested:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(1):
                        await async_write_event(_STOPPED.event(), self._writer)
            raise
        except Exception as exc:  # the last line of defence: this client ends, nothing else
            log.exception("%s: could not be served", self.name)
            await self._error(f"internal error: {excerpt(str(exc), 80)}", "internal")
        finally:
            if self._stream is not None:
                await self._stream.cancel()
            self._stats.clients -= 1
            if not self._stats.clients:  # Home Assistant's request is over, none other open
                memory.collected()
            self._server.changed()
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()
            log.info("%s: disconnected", self.name)

    async def _handle(self, event: Event) -> bool:
        if Describe.is_type(event.type):
            await self._write(info(self._config).event())
        elif SynthesizeStart.is_type(event.type):
            if self._stream is not None:
                raise Refused(
                    "synthesize-start inside a stream (send synthesize-stop first)", "out-of-order"
                )
            voice = self._voice(_voice_name(event))
            self._stream = _Stream(self, voice)
            self._stats.streams += 1
        elif SynthesizeChunk.is_type(event.type):
            if self._stream is None:
                raise Refused(
                    "synthesize-chunk outside a stream (send synthesize-start first)",
                    "out-of-order",
                )
            self._stream.feed(_text_of(event))
        elif SynthesizeStop.is_type(event.type):
            if self._stream is None:
                raise Refused("synthesize-stop outside a stream", "out-of-order")
            stream, self._stream = self._stream, None
            await stream.finish()
            await self._write(SynthesizeStopped().event())
        elif Synthesize.is_type(event.type):
            if self._stream is not None:
                return True  # the compatibility copy of the streamed text: already spoken
            await self._synthesize(event)
        return True  # anything else (ping, select-program, …) is not ours: dropped

    def _voice(self, name: str | None) -> Voice:
        voices = self._config.voices
        voice = voices.get(name or self._config.default_voice)
        if voice is None or not isinstance(name, str | None):
            raise Refused(
                f"no voice named {excerpt(name, 40)} (voices: {', '.join(voices)})", "unknown-voice"
            )
        return voice

    def _check_text(self, text: str, total: int) -> None:
        limit = self._config.announcements.max_chars
        if total > limit:
            raise Refused(
                f"text is {total} characters, over the limit of {limit} (announcements.max_chars)",
                "text-too-long",
            )
        self._stats.characters += len(text)

    async def _synthesize(self, event: Event) -> None:
        text = _text_of(event)
        voice = self._voice(_voice_name(event))
        if not text.strip():
            raise Refused("text is empty", "empty-text")
        self._check_text(text, len(text))
        self._stats.requests += 1
        a = Announcement(
            text=text.strip(), voice=voice.name, id=f"{self.name} request {self._stats.requests}"
        )
        self._stats.speaking += 1
        self._requested = True
        self._server.changed()
        try:
            try:
                speech = await self._speaker.speech(a)
            except SynthesisError as exc:
                raise Refused(f"cannot speak: {exc.reason}", "synthesis-failed") from None
            log.info(
                "%s: speaking %d characters with %s (%s)",
                self.name,
                len(text),
                voice.name,
                speech.source,
            )
            await self._play(speech.audio)
        finally:
            self._stats.speaking -= 1
            self._requested = False
            self._server.changed()

    async def _play(self, audio: AsyncGenerator[bytes, None]) -> None:
        """audio-start, a chunk per piece of audio as it comes, audio-stop."""
        rate = self._config.audio.sample_rate
        await self._write(AudioStart(rate=rate, width=_WIDTH, channels=_CHANNELS).event())
        try:
            async with aclosing(audio) as chunks:
                async for pcm in chunks:
                    await self._write(
                        AudioChunk(rate=rate, width=_WIDTH, channels=_CHANNELS, audio=pcm).event()
                    )
        except SynthesisError as exc:
            raise Refused(f"the speech broke off: {exc.reason}", "synthesis-failed") from None
        await self._write(AudioStop().event())

    async def _write(self, event: Event) -> None:
        """Send one event; a client that takes none of it within _WRITE_S is dropped."""
        self._writing += 1
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(_WRITE_S):
                if self._writer.transport.get_write_buffer_size():  # it has fallen behind
                    self._waiting("stalled in a write", loop.time())
                await async_write_event(event, self._writer)
        except TimeoutError:
            log.warning("%s: took none of its audio for %g s; dropped", self.name, _WRITE_S)
            self.drop()
            raise _Stalled() from None
        finally:
            self._writing -= 1
            self._waiting(None)

    def _waiting(self, why: str | None, since: float | None = None) -> None:
        if why is None:
            self.waiting_since, self.waiting_for = None, ""
        elif self.waiting_since is None:
            self.waiting_since = since or asyncio.get_running_loop().time()
            self.waiting_for = why

    async def _error(self, text: str, code: str) -> None:
        log.warning("%s: %s", self.name, text)
        self._stats.errors += 1
        self._server.changed()
        with contextlib.suppress(ConnectionError, OSError):
            await self._write(Error(text=text, code=code).event())


class _Stream:
    """One streamed request: its text cut into sentences as it comes, spoken meanwhile by a
    task of its own that writes the audio (so events go on being read)."""

    def __init__(self, client: _Client, voice: Voice) -> None:
        self._client = client
        self._voice = voice
        self._sentences = SentenceStream()
        self._feed = TextFeed()
        self._chars = 0
        self._task = asyncio.get_running_loop().create_task(
            self._speak(), name=f"{client.name} stream"
        )

    def feed(self, text: str) -> None:
        self._chars += len(text)
        self._client._check_text(text, self._chars)
        for sentence in self._sentences.feed(text):
            self._feed.put(sentence)

    async def finish(self) -> None:
        """The text is complete: speak the rest, and wait for the last audio."""
        for sentence in self._sentences.close():
            self._feed.put(sentence)
        self._feed.close()
        try:
            await self._task
        except Refused as exc:
            await self._client._error(exc.text, exc.code)

    async def cancel(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _speak(self) -> None:
        # Counted here, not at creation: a stream cancelled before its task ran (a refusal
        # right after synthesize-start) would otherwise stay "speaking" for ever.
        self._client._stats.speaking += 1
        try:
            await self._client._play(self._client._speaker.speech_stream(self._voice, self._feed))
        finally:
            self._client._stats.speaking -= 1
            self._client._server.changed()


async def _refuse(writer: asyncio.StreamWriter, error: Event) -> None:
    """Say why, and hang up (a client past the limit)."""
    with contextlib.suppress(ConnectionError, OSError):
        await async_write_event(error, writer)
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()


def _voice_name(event: Event) -> str | None:
    """The voice a synthesize or synthesize-start asks for, by name (None: the default)."""
    voice = event.data.get("voice")
    if voice is None or (isinstance(voice, dict) and voice.get("name") is None):
        return None  # none asked for, or only a language: the default voice
    name = voice.get("name") if isinstance(voice, dict) else None
    if not isinstance(name, str):
        raise Refused('the voice must be given as {"name": ...}', "bad-event")
    return name


def _text_of(event: Event) -> str:
    text = event.data.get("text")
    if not isinstance(text, str):
        raise Refused("the event has no text", "bad-event")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        raise Refused("the text has an unpaired surrogate", "bad-event")
    return text
