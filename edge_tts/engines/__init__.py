"""Speech engines: each turns a SynthesisRequest into PCM chunks as the service sends them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Protocol

from ..config import Voice


def new_task_id() -> str:
    """A fresh 32-hex task id, as the service requires for every task."""
    return uuid.uuid4().hex


@dataclass
class SynthesisTrace:
    """How a synthesis went, filled in by the engine for the announcement's events."""

    connection: str | None = None  # warm | new | replaced (the warm one died, a new one spoke)


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
