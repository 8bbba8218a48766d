"""CosyVoice over the DashScope inference WebSocket (run-task duplex / continue-task /
finish-task), and the task protocol it shares with Sambert on the same kept connection."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator
from typing import Any

import websockets

from ..errors import ConnectionLost, SynthesisError
from ..keeper import ConnectionKeeper
from ..models import COSYVOICE_TASK_WEIGHT, COSYVOICE_TEXT_WEIGHT, SSML_MODELS
from ..ssml import ssml_text
from ..text import split_sentences, weight
from . import AudioWait, AudioWaitSettings, SynthesisRequest, new_task_id, replaced_once

log = logging.getLogger(__name__)

# Sentences go one per continue-task; a sentence longer than the service takes in one
# message is cut (the documented limit is 20,000 characters, CJK counting two).
_PIECE_WEIGHT = min(2000, COSYVOICE_TEXT_WEIGHT)


def run_task(request: SynthesisRequest, task_id: str | None = None) -> dict[str, Any]:
    """The run-task message: duplex streaming, PCM at the requested rate, the voice's parameters."""
    voice = request.voice
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
    return _task(
        "run-task",
        task_id or request.task_id,
        "duplex",
        {
            "task_group": "audio",
            "task": "tts",
            "function": "SpeechSynthesizer",
            "model": voice.model,
            "parameters": parameters,
            "input": {},
        },
    )


def continue_task(task_id: str, text: str) -> dict[str, Any]:
    return _task("continue-task", task_id, "duplex", {"input": {"text": text}})


def finish_task(task_id: str) -> dict[str, Any]:
    return _task("finish-task", task_id, "duplex", {"input": {}})


def _task(action: str, task_id: str, streaming: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "header": {"action": action, "task_id": task_id, "streaming": streaming},
        "payload": payload,
    }


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
    a kept connection, audio as binary frames, task-started / task-finished / task-failed."""

    def __init__(self, keeper: ConnectionKeeper, wait: AudioWaitSettings | None = None) -> None:
        self._keeper = keeper
        self._wait = wait or AudioWaitSettings()

    def check(self, request: SynthesisRequest) -> None:
        """Raise SynthesisError for a request the service documents it would refuse."""

    def messages(
        self, request: SynthesisRequest, task_id: str
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The run-task, and what follows task-started."""
        raise NotImplementedError

    def synthesize(self, request: SynthesisRequest) -> AsyncGenerator[bytes, None]:
        """Stream the request's audio. A connection that dies during the task is replaced once:
        the task runs again on a new connection and the audio already handed on is skipped."""
        return replaced_once(
            lambda replacing: self._run(
                request, new_task_id() if replacing else request.task_id, replacing=replacing
            )
        )

    async def _run(
        self, request: SynthesisRequest, task_id: str, *, replacing: bool
    ) -> AsyncGenerator[bytes, None]:
        self.check(request)
        async with self._keeper.lease() as lease:
            ws = lease.ws
            request.trace.connection = "replaced" if replacing else "new" if lease.fresh else "warm"
            wait = AudioWait(self._wait)
            start, then = self.messages(request, task_id)
            try:
                await ws.send(json.dumps(start))
                await self._await_started(ws, task_id, wait)
                for message in then:
                    await ws.send(json.dumps(message))
                while True:
                    frame = await wait.recv(ws)
                    if isinstance(frame, bytes):
                        wait.heard()
                        yield frame
                        continue
                    event = self._task_event(frame, task_id)
                    if event == "task-finished":
                        lease.reusable = True
                        log.debug("task %s finished", task_id)
                        return
            except websockets.ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else 1006
                raise ConnectionLost(
                    f"connection to DashScope closed during the task (code {code})"
                ) from None

    async def _await_started(self, ws: Any, task_id: str, wait: AudioWait) -> None:
        while True:
            frame = await wait.recv(ws)
            if isinstance(frame, str) and self._task_event(frame, task_id) == "task-started":
                return

    def _task_event(self, frame: str, task_id: str) -> str:
        """_event, with a task the service failed counted in the connection's stats."""
        try:
            return self._event(frame, task_id)
        except SynthesisError as exc:
            self._keeper.task_failed(exc.reason)
            raise

    @staticmethod
    def _event(frame: str, task_id: str) -> str:
        """The event name of a JSON frame; raises SynthesisError on task-failed."""
        try:
            message = json.loads(frame)
            header = message["header"]
            event = str(header["event"])
        except (ValueError, KeyError, TypeError):
            raise SynthesisError("DashScope sent a message that is not a protocol event") from None
        if event == "task-failed":
            code = header.get("error_code") or "unknown"
            text = header.get("error_message") or "no message"
            raise SynthesisError(f"DashScope task failed: {code}: {text}")
        if header.get("task_id") not in (None, task_id):
            log.warning(
                "event %s for task %s during task %s", event, header.get("task_id"), task_id
            )
        return event


class CosyVoiceEngine(InferenceEngine):
    """CosyVoice: run-task (duplex), the text in continue-tasks, finish-task."""

    def check(self, request: SynthesisRequest) -> None:
        check_limits(request)

    def messages(
        self, request: SynthesisRequest, task_id: str
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        pieces = [continue_task(task_id, piece) for piece in text_pieces(request)]
        return run_task(request, task_id), [*pieces, finish_task(task_id)]
