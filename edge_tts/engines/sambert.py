"""Sambert over the DashScope inference WebSocket: the same kept connection and task events
as CosyVoice, but one run-task carries the whole text."""

from __future__ import annotations

from typing import Any

from . import SynthesisRequest
from .cosyvoice import InferenceEngine, _task


class SambertEngine(InferenceEngine):
    """Sambert: one run-task with streaming "out" and the whole text in its input; the
    service streams the audio and ends with task-finished (no continue- or finish-task)."""

    def messages(
        self, request: SynthesisRequest, task_id: str
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        voice = request.voice
        parameters = {
            "text_type": "PlainText",
            "format": "pcm",
            "sample_rate": request.sample_rate,
            "volume": voice.volume,
            "rate": voice.rate,
            "pitch": voice.pitch,
            "word_timestamp_enabled": False,
            "phoneme_timestamp_enabled": False,
        }
        return _task(
            "run-task",
            task_id,
            "out",
            {
                "task_group": "audio",
                "task": "tts",
                "function": "SpeechSynthesizer",
                "model": voice.model,
                "parameters": parameters,
                "input": {"text": request.text},
            },
        ), []
