"""CosyVoice over the DashScope inference WebSocket (run-task / continue-task / finish-task)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import websockets

from ..errors import ConnectionLost, SynthesisError
from ..keeper import ConnectionKeeper
from . import SynthesisRequest, new_task_id

log = logging.getLogger(__name__)

_FIRST = "dashscope.first_audio_timeout_s"
_STALL = "dashscope.stall_timeout_s"


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
    if voice.seed is not None:
        parameters["seed"] = voice.seed
    instructions = request.instructions or voice.instructions
    if instructions:
        # The official SDK sends the field as "instruction".
        parameters["instruction"] = instructions
    if voice.language_hints:
        parameters["language_hints"] = list(voice.language_hints)
    return {
        "header": {"action": "run-task", "task_id": task_id or request.task_id, "streaming": "duplex"},
        "payload": {
            "task_group": "audio",
            "task": "tts",
            "function": "SpeechSynthesizer",
            "model": voice.model,
            "parameters": parameters,
            "input": {},
        },
    }


def continue_task(task_id: str, text: str) -> dict[str, Any]:
    return {
        "header": {"action": "continue-task", "task_id": task_id, "streaming": "duplex"},
        "payload": {"input": {"text": text}},
    }


def finish_task(task_id: str) -> dict[str, Any]:
    return {
        "header": {"action": "finish-task", "task_id": task_id, "streaming": "duplex"},
        "payload": {"input": {}},
    }


class CosyVoiceEngine:
    """Streams CosyVoice audio for one request at a time over a kept connection."""

    def __init__(
        self, keeper: ConnectionKeeper, *, first_audio_timeout_s: float, stall_timeout_s: float
    ) -> None:
        self._keeper = keeper
        self._first_audio_timeout_s = first_audio_timeout_s
        self._stall_timeout_s = stall_timeout_s

    async def synthesize(self, request: SynthesisRequest) -> AsyncGenerator[bytes, None]:
        """Stream the request's audio. A connection that dies during the task is replaced once:
        the task runs again on a new connection and the audio already handed on is skipped."""
        task_id, delivered, retried = request.task_id, 0, False
        while True:
            skip = delivered
            try:
                async with aclosing(self._run(request, task_id, replacing=retried)) as audio:
                    async for chunk in audio:
                        if skip:
                            cut, skip = min(skip, len(chunk)), max(0, skip - len(chunk))
                            chunk = chunk[cut:]
                            if not chunk:
                                continue
                        delivered += len(chunk)
                        yield chunk
                return
            except ConnectionLost as exc:
                if retried:
                    raise
                retried, task_id = True, new_task_id()
                log.warning("%s; running the task again on a new connection (after %d bytes)",
                            exc.reason, delivered)

    async def _run(self, request: SynthesisRequest, task_id: str, *,
                   replacing: bool) -> AsyncGenerator[bytes, None]:
        async with self._keeper.lease() as lease:
            ws = lease.ws
            request.trace.connection = "replaced" if replacing else "new" if lease.fresh else "warm"
            deadline = time.monotonic() + self._first_audio_timeout_s
            try:
                await ws.send(json.dumps(run_task(request, task_id)))
                await self._await_started(ws, task_id, deadline)
                await ws.send(json.dumps(continue_task(task_id, request.text)))
                await ws.send(json.dumps(finish_task(task_id)))
                got_audio = False
                while True:
                    if got_audio:
                        frame = await self._receive(ws, self._stall_timeout_s, _STALL)
                    else:
                        frame = await self._receive(ws, deadline - time.monotonic(), _FIRST)
                    if isinstance(frame, bytes):
                        got_audio = True
                        yield frame
                        continue
                    event = self._event(frame, task_id)
                    if event == "task-finished":
                        lease.reusable = True
                        log.debug("task %s finished", task_id)
                        return
            except websockets.ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else 1006
                raise ConnectionLost(
                    f"connection to DashScope closed during the task (code {code})"
                ) from None

    async def _await_started(self, ws: Any, task_id: str, deadline: float) -> None:
        while True:
            frame = await self._receive(ws, deadline - time.monotonic(), _FIRST)
            if isinstance(frame, str) and self._event(frame, task_id) == "task-started":
                return

    async def _receive(self, ws: Any, timeout: float, what: str) -> str | bytes:
        try:
            async with asyncio.timeout(max(timeout, 0)):
                frame: str | bytes = await ws.recv()
                return frame
        except TimeoutError:
            limit = self._stall_timeout_s if what == _STALL else self._first_audio_timeout_s
            raise SynthesisError(f"DashScope sent no audio within {limit:g} s ({what})") from None

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
            log.warning("event %s for task %s during task %s", event, header.get("task_id"), task_id)
        return event
