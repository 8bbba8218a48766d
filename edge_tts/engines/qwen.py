"""Qwen-TTS Realtime over the DashScope realtime WebSocket (`?model=` in the URL).

The service holds one session per connection: session.created, the client's session.update
(voice, PCM format and rate, mode, language, instructions), text appended to a buffer and
committed, audio as base64 `response.audio.delta` events, and session.finish, after which
the server sends session.finished and closes the connection. So a warm Qwen voice is a
session made ready ahead of time: connected and configured, waiting for text. Each
announcement uses one session; as soon as it is taken, the keeper readies the next.

Errors: an `invalid_request_error` means the service refused what we sent but keeps the
session (a voice it does not know, a value out of range). During set-up that is a problem
with the voice profile, retried only rarely; during an announcement it fails the
announcement. Any other error ends the session on the server's side; the announcement fails
(and falls back). A connection that drops mid-announcement is replaced once, like CosyVoice's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

from websockets.asyncio.client import ClientConnection

from ..config import Voice
from ..errors import CloudUnavailable, SynthesisError, TaskFailed
from ..keeper import ConnectionKeeper, ConnectionSettings, KeeperStats
from ..models import QWEN_INSTRUCT, QWEN_LEGACY, qwen_rate
from ..protocols import Audio, SentenceDone
from ..protocols.realtime import Session, SessionRefused, SessionState
from ..resample import Resampler
from ..secret import Secret
from ..text import split_sentences
from . import (
    AudioWaitSettings,
    Meter,
    SynthesisRequest,
    drive_duplex,
    each,
    metered,
    pieces_of,
    replaced_once,
)

log = logging.getLogger(__name__)

_PIECE_WEIGHT = 2000  # a sentence longer than this goes in several appends
_MAX_WARM = 2  # sessions kept ready: the default Qwen voice and the last other one used

# Runs a keeper's loop for as long as the keeper lives (its owner names and awaits it).
KeeperRunner = Callable[[ConnectionKeeper, str], None]


def voice_label(request: SynthesisRequest) -> str:
    return f"{request.voice.name} ({request.voice.model})"


def session_config(request: SynthesisRequest) -> dict[str, Any]:
    """The session.update fields for a request's voice and output rate."""
    voice = request.voice
    assert voice.model is not None and voice.voice is not None  # config requires both
    config: dict[str, Any] = {
        "voice": voice.voice,
        "mode": voice.mode,
        "response_format": "pcm",
        "sample_rate": qwen_rate(voice.model, request.sample_rate),
    }
    if voice.model not in QWEN_LEGACY:  # the first generation has none of these
        config.update(speech_rate=voice.rate, pitch_rate=voice.pitch, volume=voice.volume)
    if voice.language_type:
        config["language_type"] = voice.language_type
    instructions = request.instructions or voice.instructions
    if instructions and voice.model in QWEN_INSTRUCT:
        config["instructions"] = instructions
        if voice.optimize_instructions is not None:
            config["optimize_instructions"] = voice.optimize_instructions
    return config


class QwenEngine:
    """Speaks Qwen voices, one announcement per session, with a session kept ready."""

    def __init__(
        self,
        realtime_url: str,
        api_key: Secret | None,
        connection: ConnectionSettings | None = None,
        wait: AudioWaitSettings | None = None,
        *,
        on_change: Callable[[KeeperStats], None] | None = None,
        run_keeper: KeeperRunner | None = None,
        meter: Meter | None = None,
    ) -> None:
        self._meter = meter
        self._url = realtime_url
        self._api_key = api_key
        self._connection = connection or ConnectionSettings()
        self._wait = wait or AudioWaitSettings()
        self._on_change = on_change
        # Who runs a keeper's loop: the daemon's Cloud (one owner for every endpoint's);
        # standing alone (a test, a one-off command), the engine itself.
        self._run_keeper = run_keeper or self._run_alone
        self._alone: set[asyncio.Task[None]] = set()
        # One keeper per session configuration, most recently used last.
        self._keepers: OrderedDict[str, ConnectionKeeper] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()  # keepers pushed out of the warm set
        # Each ready connection's session, set up by the keeper, taken by the announcement.
        self._sessions: weakref.WeakKeyDictionary[ClientConnection, Session] = (
            weakref.WeakKeyDictionary()
        )

    # --- sessions kept ready ---------------------------------------------------------------

    def keeper_for(self, request: SynthesisRequest) -> ConnectionKeeper:
        """The keeper of ready sessions configured for this request (created on first use)."""
        model = request.voice.model
        config = session_config(request)
        key = json.dumps([model, config], sort_keys=True)
        if key in self._keepers:
            self._keepers.move_to_end(key)
            return self._keepers[key]
        keeper = ConnectionKeeper(
            f"{self._url}?model={model}",
            self._api_key,
            self._connection,
            on_change=self._on_change,
            prepare=lambda ws: self._prepare(ws, request.voice, config),
        )
        if self._connection.keep_warm:
            self._run_keeper(keeper, f"keeper qwen {voice_label(request)}")
        self._keepers[key] = keeper
        while len(self._keepers) > _MAX_WARM:
            _, old = self._keepers.popitem(last=False)
            closing = asyncio.get_running_loop().create_task(old.close(), name="closing keeper")
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        return keeper

    def keeper_for_voice(self, voice: Voice, sample_rate: int) -> ConnectionKeeper:
        """The keeper for `voice` as configured (no per-message overrides); created, and so
        kept ready, if it was not yet: the default voice's at start."""
        return self.keeper_for(SynthesisRequest(text="", voice=voice, sample_rate=sample_rate))

    async def _prepare(self, ws: ClientConnection, voice: Voice, config: dict[str, Any]) -> None:
        """session.created → session.update → session.updated, or CloudUnavailable saying
        why not. The session, ready, waits with its connection for the lease."""
        session = Session(config)
        try:
            while session.state is not SessionState.READY:
                session.receive(await ws.recv())
                for frame in session.data_to_send():
                    await ws.send(frame)
        except SessionRefused as exc:
            raise CloudUnavailable(
                f"DashScope refused voice {voice.name!r} ({voice.model}, {voice.voice}): "
                f"{exc.reason}",
                refused=exc.recoverable,
                hint=f"check voices.{voice.name}",
            ) from None
        except SynthesisError as exc:  # refused before any session: the key or the model
            raise CloudUnavailable(exc.reason, refused=isinstance(exc, TaskFailed)) from None
        self._sessions[ws] = session

    def stats(self) -> list[dict[str, object]]:
        return [{"url": keeper.url, **keeper.stats.as_dict()} for keeper in self._keepers.values()]

    @property
    def warm_now(self) -> bool:
        return any(keeper.stats.warm for keeper in self._keepers.values())

    def _run_alone(self, keeper: ConnectionKeeper, name: str) -> None:
        task = asyncio.get_running_loop().create_task(keeper.run(), name=name)
        self._alone.add(task)
        task.add_done_callback(self._alone.discard)

    async def close(self) -> None:
        keepers, self._keepers = list(self._keepers.values()), OrderedDict()
        await asyncio.gather(*(k.close() for k in keepers), *self._closing)
        for task in self._alone:
            task.cancel()
        await asyncio.gather(*self._alone, return_exceptions=True)

    # --- speaking --------------------------------------------------------------------------

    def synthesize(self, request: SynthesisRequest) -> AsyncGenerator[bytes, None]:
        def run(replacing: bool) -> AsyncGenerator[bytes, None]:
            sentences = each(split_sentences(request.text, _PIECE_WEIGHT))
            return self._speak(request, sentences, replacing=replacing)

        return replaced_once(run)

    def synthesize_stream(
        self, request: SynthesisRequest, sentences: AsyncIterator[str]
    ) -> AsyncGenerator[bytes, None]:
        """One session for the whole stream: each sentence appended (and committed, in commit
        mode) as it completes, session.finish when the text ends; audio comes meanwhile."""
        return self._speak(request, pieces_of(sentences, _PIECE_WEIGHT))

    async def _speak(
        self, request: SynthesisRequest, text: AsyncIterator[str], *, replacing: bool = False
    ) -> AsyncGenerator[bytes, None]:
        """A ready session takes the text as it comes; its audio is yielded at the output
        rate, and (commit mode) each sentence done is counted in the request's trace."""
        keeper = self.keeper_for(request)
        text = metered(text, self._meter, str(request.voice.model))
        async with keeper.lease() as lease:
            request.trace.connection = "replaced" if replacing else "new" if lease.fresh else "warm"
            session = self._sessions.pop(lease.ws)
            rate, wanted = session.config["sample_rate"], request.sample_rate
            resampler = Resampler(rate, wanted)  # at the same rate: passes the bytes on
            request.trace.sentences_done = 0 if session.commit else None
            try:
                async with aclosing(drive_duplex(lease.ws, session, text, self._wait)) as events:
                    async for event in events:
                        if isinstance(event, Audio):
                            if out := resampler.feed(event.pcm):
                                yield out
                        elif isinstance(event, SentenceDone):
                            request.trace.sentences_done = (request.trace.sentences_done or 0) + 1
            except TaskFailed as exc:
                keeper.task_failed(exc.reason)
                raise
            if tail := resampler.flush():
                yield tail
            log.debug("Qwen session finished")
            # The server closes this connection; the keeper readies the next.
