"""Sambert over the DashScope inference WebSocket: the same kept connection and task events
as CosyVoice, but one run-task carries the whole text."""

from __future__ import annotations

from ..protocols.inference import Task, run_task
from ..text import billed
from . import SynthesisRequest
from .cosyvoice import InferenceEngine


class SambertEngine(InferenceEngine):
    """Sambert: one run-task with streaming "out" and the whole text in its input; the
    service streams the audio and ends with task-finished (no continue- or finish-task)."""

    def task(self, request: SynthesisRequest, task_id: str) -> tuple[Task, list[str]]:
        voice = request.voice
        assert voice.model is not None  # config requires it
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
        task = Task(task_id, run_task(task_id, voice.model, parameters, text=request.text))
        if self._meter is not None:  # the whole text goes in the run-task
            self._meter(voice.model, billed(request.text))
        task.start()
        return task, []
