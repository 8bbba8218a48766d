"""CosyVoice over the DashScope inference WebSocket (run-task duplex / continue-task /
finish-task), and the task protocol it shares with Sambert on the same kept connection."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

from ..errors import SynthesisError
from ..keeper import ConnectionKeeper
from ..models import COSYVOICE_TASK_WEIGHT, COSYVOICE_TEXT_WEIGHT, SSML_MODELS
from ..protocols import Audio, inference
from ..protocols.inference import Task, TaskState
from ..ssml import ssml_text
from ..text import split_sentences, weight
from . import (
    AudioWaitSettings,
    Meter,
    SynthesisRequest,
    drive_duplex,
    each,
    metered,
    new_task_id,
    pieces_of,
    replaced_once,
    sentence_by_sentence,
)

log = logging.getLogger(__name__)

# Sentences go one per continue-task; a sentence longer than the service takes in one
# message is cut (the documented limit is 20,000 characters, CJK counting two).
_PIECE_WEIGHT = min(2000, COSYVOICE_TEXT_WEIGHT)


def run_task(request: SynthesisRequest, task_id: str | None = None) -> dict[str, Any]:
    """The run-task message: duplex streaming, PCM at the requested rate, the voice's parameters."""
    voice = request.voice
    assert voice.model is not None  # config requires it
    parameters: dict[str, Any] = {
        "text_type": "PlainText",
        "voice": voice.voice,
        "format": "pcm",
        "sample_rate": request.sample_rate,
        "volume": voice.volume,
        "rate": voice.rate,
        "pitch": voice.pitch,
    }
    if request.ssml:
        parameters["enable_ssml"] = True  # then exactly one continue-task
    if voice.seed is not None:
        parameters["seed"] = voice.seed
    instructions = request.instructions or voice.instructions
    if instructions:
        # The official SDK sends the field as "instruction".
        parameters["instruction"] = instructions
    if voice.language_hints:
        parameters["language_hints"] = list(voice.language_hints)
    return inference.run_task(task_id or request.task_id, voice.model, parameters)


def text_pieces(request: SynthesisRequest) -> list[str]:
    """What goes into the continue-tasks: SSML whole (the service allows one), plain text
    sentence by sentence, so the first sentence is synthesized while the rest is sent."""
    if request.ssml:
        return [request.text]
    return split_sentences(request.text, _PIECE_WEIGHT)


def check_limits(request: SynthesisRequest) -> None:
    """The documented limits of one CosyVoice task: 200,000 characters in all, and SSML (one
    continue-task) 20,000 without its tags; a Chinese character counts two."""
    if request.ssml:
        if request.voice.model not in SSML_MODELS:
            raise SynthesisError(
                f"{request.voice.model} does not speak SSML (the reference: "
                f"only {' and '.join(SSML_MODELS)})"
            )
        spoken = weight(ssml_text(request.text))
        if spoken > COSYVOICE_TEXT_WEIGHT:
            raise SynthesisError(
                f"the SSML says {spoken} characters (a Chinese one counts two); "
                f"CosyVoice takes at most {COSYVOICE_TEXT_WEIGHT:,} in one"
            )
    elif (total := weight(request.text)) > COSYVOICE_TASK_WEIGHT:
        raise SynthesisError(
            f"the text is {total} characters (a Chinese one counts two); "
            f"CosyVoice takes at most {COSYVOICE_TASK_WEIGHT:,} in one task"
        )


class InferenceEngine:
    """A task protocol on the inference endpoint (CosyVoice, Sambert): one task at a time on
    a kept connection, driven by protocols.inference.Task."""

    def __init__(
        self,
        keeper: ConnectionKeeper,
        wait: AudioWaitSettings | None = None,
        meter: Meter | None = None,
    ) -> None:
        self._keeper = keeper
        self._wait = wait or AudioWaitSettings()
        self._meter = meter

    def check(self, request: SynthesisRequest) -> None:
        """Raise SynthesisError for a request the service documents it would refuse."""

    def task(self, request: SynthesisRequest, task_id: str) -> tuple[Task, list[str]]:
        """The request's task, started, and the pieces of text that follow its run-task."""
        raise NotImplementedError

    def synthesize_stream(
        self, request: SynthesisRequest, sentences: AsyncIterator[str]
    ) -> AsyncGenerator[bytes, None]:
        """A task per sentence (Sambert takes its text whole)."""
        return sentence_by_sentence(self, request, sentences)

    def synthesize(self, request: SynthesisRequest) -> AsyncGenerator[bytes, None]:
        """Stream the request's audio. A connection that dies before any audio is replaced
        once: the task runs again on a new connection."""

        def run(replacing: bool) -> AsyncGenerator[bytes, None]:
            self.check(request)
            task, pieces = self.task(request, new_task_id() if replacing else request.task_id)
            return self._speak(request, task, each(pieces), replacing=replacing)

        return replaced_once(run)

    async def _speak(
        self,
        request: SynthesisRequest,
        task: Task,
        text: AsyncIterator[str],
        *,
        replacing: bool = False,
    ) -> AsyncGenerator[bytes, None]:
        """Run `task` on a kept connection, its text sent (and counted) as it comes; yield
        its audio."""
        model = str(request.voice.model)
        text = metered(text, self._meter, model, ssml=request.ssml)
        async with self._keeper.lease() as lease:
            request.trace.connection = "replaced" if replacing else "new" if lease.fresh else "warm"
            try:
                async with aclosing(drive_duplex(lease.ws, task, text, self._wait)) as events:
                    async for event in events:
                        if isinstance(event, Audio):
                            yield event.pcm
            except SynthesisError as exc:
                if task.state is TaskState.FAILED:
                    self._keeper.task_failed(exc.reason)
                raise
            lease.reusable = task.reusable
            log.debug("task %s finished", task.task_id)


class CosyVoiceEngine(InferenceEngine):
    """CosyVoice: run-task (duplex), the text in continue-tasks, finish-task."""

    def check(self, request: SynthesisRequest) -> None:
        check_limits(request)

    def synthesize_stream(
        self, request: SynthesisRequest, sentences: AsyncIterator[str]
    ) -> AsyncGenerator[bytes, None]:
        """One duplex task for the whole stream: a continue-task as each sentence completes,
        finish-task when the text ends; the audio comes back meanwhile."""
        task = Task(request.task_id, run_task(request))
        task.start()
        return self._speak(request, task, pieces_of(sentences, _PIECE_WEIGHT))

    def task(self, request: SynthesisRequest, task_id: str) -> tuple[Task, list[str]]:
        task = Task(task_id, run_task(request, task_id))
        task.start()
        return task, text_pieces(request)
