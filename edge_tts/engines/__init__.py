"""Speech engines: each turns a SynthesisRequest into PCM chunks as the service sends them."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import websockets

from ..config import DashscopeConfig, Voice
from ..errors import ConnectionLost, SynthesisError
from ..protocols import Audio
from ..protocols import Event as ProtocolEvent
from ..text import billed, split_sentences

log = logging.getLogger(__name__)


def new_task_id() -> str:
    """A fresh 32-hex task id, as the service requires for every task."""
    return uuid.uuid4().hex


@dataclass
class SynthesisTrace:
    """How a synthesis went, filled in by the engine for the announcement's events."""

    connection: str | None = None  # warm | new | replaced (the warm one died, a new one spoke)
    # Sentences (pieces of text.split_sentences) whose audio is complete, when the protocol
    # says so (Qwen in commit mode: one response per sentence); None where it does not.
    sentences_done: int | None = None
    resumed: str | None = None  # the cloud broke mid-announcement: what took over, and where


@dataclass(frozen=True)
class SynthesisRequest:
    """What to synthesize: the text, the voice profile, the PCM rate, per-message overrides."""

    text: str
    voice: Voice
    sample_rate: int
    instructions: str | None = None
    ssml: bool = False
    task_id: str = field(default_factory=new_task_id)
    trace: SynthesisTrace = field(default_factory=SynthesisTrace, compare=False)


class Engine(Protocol):
    def synthesize(self, request: SynthesisRequest) -> AsyncGenerator[bytes, None]:
        """16-bit mono little-endian PCM at request.sample_rate, chunk by chunk as it arrives."""
        ...

    def synthesize_stream(
        self, request: SynthesisRequest, sentences: AsyncIterator[str]
    ) -> AsyncGenerator[bytes, None]:
        """The same for text still being written: `sentences` yields it sentence by sentence
        (request.text is unused), and audio comes back while more text is on its way."""
        ...


async def sentence_by_sentence(
    engine: Engine, request: SynthesisRequest, sentences: AsyncIterator[str]
) -> AsyncGenerator[bytes, None]:
    """synthesize_stream for an engine that takes its text whole (Sambert, Piper): each
    sentence its own request, spoken as soon as it is complete."""
    async for sentence in sentences:
        one = replace(request, text=sentence, task_id=new_task_id(), trace=SynthesisTrace())
        async with aclosing(engine.synthesize(one)) as audio:
            async for chunk in audio:
                yield chunk


# Counts what is sent to the cloud: (model, billed characters). See costs.Usage.
Meter = Callable[[str, int], None]


async def metered(
    pieces: AsyncIterator[str], meter: Meter | None, model: str, *, ssml: bool = False
) -> AsyncGenerator[str, None]:
    """The pieces of text, each counted as billed as it goes to the service."""
    async for piece in pieces:
        if meter is not None:
            meter(model, billed(piece, ssml=ssml))
        yield piece


def _no_audio(settings: AudioWaitSettings, *, heard: bool) -> SynthesisError:
    key = "stall_timeout_s" if heard else "first_audio_timeout_s"
    limit = getattr(settings, key)
    return SynthesisError(f"DashScope sent no audio within {limit:g} s (dashscope.{key})")


async def each(pieces: list[str]) -> AsyncGenerator[str, None]:
    """A list of text, as the async iterator a driver takes."""
    for piece in pieces:
        yield piece


async def pieces_of(sentences: AsyncIterator[str], max_weight: int) -> AsyncGenerator[str, None]:
    """Each sentence, cut where it is heavier than one message of the service may be."""
    async for sentence in sentences:
        for piece in split_sentences(sentence, max_weight):
            yield piece


class Duplex(Protocol):
    """What the streaming driver needs of a protocol object (protocols.inference.Task,
    protocols.realtime.Session): text in, frames out, events back."""

    @property
    def ended(self) -> bool: ...

    def send_text(self, text: str) -> None: ...

    def finish(self) -> None: ...

    def data_to_send(self) -> list[str]: ...

    def receive(self, frame: str | bytes) -> ProtocolEvent | None: ...


async def drive_duplex(
    ws: Any, duplex: Duplex, sentences: AsyncIterator[str], settings: AudioWaitSettings
) -> AsyncGenerator[ProtocolEvent, None]:
    """Run a protocol object over `ws` while its text is still arriving: each sentence is sent
    as it comes (a feeder task), and the service's events are handed on as they come.

    The service is held to the audio waits only when it owes audio: the first audio within
    first_audio_timeout_s of the first text (or of the end, for no text), and, once all the
    text is in, each next frame within stall_timeout_s (of the last audio, or of the last
    text if that came later). While the writer of the text is thinking, silence is not a
    stall."""
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()  # the feeder sent its first text, or finished
    first_sent: float | None = None
    last_sent = 0.0  # text sent after the audio went quiet is owed audio from then on
    input_done = False

    async def flush() -> None:
        for frame in duplex.data_to_send():
            await ws.send(frame)

    async def feed() -> None:
        nonlocal first_sent, last_sent, input_done
        async for sentence in sentences:
            duplex.send_text(sentence)
            await flush()
            last_sent = loop.time()
            if first_sent is None:
                first_sent = loop.time()
                changed.set()
        duplex.finish()
        await flush()
        if first_sent is None:
            first_sent = loop.time()
        input_done = True
        changed.set()

    feeder = asyncio.ensure_future(feed())
    receiving: asyncio.Future[str | bytes] | None = None
    heard_at: float | None = None
    try:
        await flush()
        while not duplex.ended:
            if first_sent is None:
                deadline = None
            elif heard_at is None:
                deadline = first_sent + settings.first_audio_timeout_s
            else:
                since = max(heard_at, last_sent)
                deadline = since + settings.stall_timeout_s if input_done else None
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            if feeder.done() and receiving is None:
                # All the text is sent: only the service changes anything now (the common
                # case, and the cheap one: one read with a deadline, no futures to watch).
                if (failed := feeder.exception()) is not None:
                    raise failed
                try:
                    async with asyncio.timeout(timeout):
                        frame = await ws.recv()
                except TimeoutError:
                    raise _no_audio(settings, heard=heard_at is not None) from None
            else:
                if receiving is None:
                    receiving = asyncio.ensure_future(ws.recv())
                changed.clear()
                waiting = asyncio.ensure_future(changed.wait())
                watched: set[asyncio.Future[Any]] = {receiving, waiting}
                if not feeder.done():
                    watched.add(feeder)
                done, _ = await asyncio.wait(
                    watched, timeout=timeout, return_when="FIRST_COMPLETED"
                )
                waiting.cancel()
                if feeder in done and (failed := feeder.exception()) is not None:
                    raise failed
                if receiving not in done:
                    if not done:
                        raise _no_audio(settings, heard=heard_at is not None)
                    continue  # the text's state changed: the deadline is another
                frame, receiving = receiving.result(), None
            event = duplex.receive(frame)
            await flush()
            if isinstance(event, Audio):
                heard_at = loop.time()
            if event is not None:
                yield event
    except websockets.ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd else 1006
        raise ConnectionLost(
            f"connection to DashScope closed during the task (code {code})"
        ) from None
    finally:
        for task in (feeder, receiving):
            if task is not None and not task.done():
                task.cancel()
        await asyncio.gather(feeder, *([receiving] if receiving else []), return_exceptions=True)


async def replaced_once(
    run: Callable[[bool], AsyncGenerator[bytes, None]],
) -> AsyncGenerator[bytes, None]:
    """The audio of `run(replacing=False)`; if its connection dies (ConnectionLost) before any
    audio came, once more from `run(replacing=True)` on a new connection. Once audio has been
    handed on, ConnectionLost goes to the caller, who resumes from the sentence that was cut
    (speaker.py): a second take of the same text need not sound the same, so it is never
    spliced into the first."""
    replacing = False
    while True:
        delivered = False
        try:
            async with aclosing(run(replacing)) as audio:
                async for chunk in audio:
                    delivered = True
                    yield chunk
            return
        except ConnectionLost as exc:
            if replacing or delivered:
                raise
            replacing = True
            log.warning(
                "%s before any audio; running the request again on a new connection", exc.reason
            )


@dataclass(frozen=True)
class AudioWaitSettings:
    """How long an engine waits on the service: one value, built once from the config."""

    first_audio_timeout_s: float = 10.0  # from the start of a task to its first audio
    stall_timeout_s: float = 5.0  # from one audio frame to the next

    @classmethod
    def of(cls, ds: DashscopeConfig) -> AudioWaitSettings:
        return cls(ds.first_audio_timeout_s, ds.stall_timeout_s)
