"""Speech engines: each turns a SynthesisRequest into PCM chunks as the service sends them."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..config import DashscopeConfig, Voice
from ..errors import ConnectionLost, SynthesisError

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


class AudioWait:
    """An engine's two waits on the service: the first audio within first_audio_timeout_s of
    the start, each next frame within stall_timeout_s of the audio before it."""

    def __init__(self, settings: AudioWaitSettings) -> None:
        self._first_s, self._stall_s = settings.first_audio_timeout_s, settings.stall_timeout_s
        self._deadline = time.monotonic() + self._first_s
        self._heard = False

    def heard(self) -> None:
        """Audio arrived: from now on, silence is a stall."""
        self._heard = True

    async def recv(self, ws: Any) -> str | bytes:
        timeout = self._stall_s if self._heard else self._deadline - time.monotonic()
        try:
            async with asyncio.timeout(max(timeout, 0)):
                frame: str | bytes = await ws.recv()
                return frame
        except TimeoutError:
            limit, key = (
                (self._stall_s, "stall_timeout_s")
                if self._heard
                else (self._first_s, "first_audio_timeout_s")
            )
            raise SynthesisError(
                f"DashScope sent no audio within {limit:g} s (dashscope.{key})"
            ) from None
