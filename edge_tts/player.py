"""Audio output: 16-bit mono PCM to a sounddevice stream (PortAudio → ALSA), or to a WAV file.

Writes happen in a worker thread so the event loop never blocks on the device. The stream
stays open for `audio.keep_open_s` after an announcement so the next one starts without
reopening the device. Each announcement starts with a cushion of silence (longer when the
device was just opened, so its first syllable is never clipped) that absorbs network jitter;
if the network still falls behind, silence is written before the device would run dry, so
a late chunk is heard as a pause, never as an underrun click.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sys
import threading
import time
import wave
from array import array
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .config import AudioConfig
from .errors import AudioDeviceError

log = logging.getLogger(__name__)

FirstAudio = Callable[[float], None]
_END = object()
# Top up the device with silence when less than this much audio is queued in it.
_LOW_WATER_MS = 20.0
_GAP_MS = 20
_SPIN_S = 0.002  # the last moments before a start time are slept in small steps


@dataclass
class Start:
    """When the first sample of a playback is to be heard, and when it was: `at` is given by
    the caller, the rest is filled in by the sink as it starts (all time.monotonic())."""

    at: float | None = None  # the first sample reaches the speaker then; None: at once
    ready_at: float | None = None  # the first audio reached the player (then it waited)
    handed_at: float | None = None  # the first sample was handed to the device
    heard_at: float | None = None  # ... and reaches the speaker then (output latency, cushion)
    latency_s: float = 0.0  # the device's output latency, as PortAudio reports it

    @property
    def late_s(self) -> float | None:
        """How late the first sample is heard (0 when on time); None without a start time."""
        if self.at is None or self.heard_at is None:
            return None
        return max(0.0, self.heard_at - self.at)


class AudioSink(Protocol):
    async def play(
        self,
        audio: AsyncIterator[bytes],
        *,
        volume: int = 100,
        on_first_audio: FirstAudio | None = None,
        start: Start | None = None,
    ) -> bool:
        """Play the PCM chunks to the end (True) or until stopped (False); on_first_audio
        gets the monotonic time the first speech byte was handed to the device. With
        `start.at`, audio ready early waits so that its first sample is heard then; audio
        ready late starts at once, nothing skipped; `start` says when it was heard."""
        ...

    def stop(self) -> None:
        """Cut the current playback now."""
        ...

    async def prepare(self) -> None:
        """Get ready to play the first announcement without delay; say early if it cannot."""
        ...

    async def close(self) -> None:
        """Let go of the device (or file); no playback follows."""
        ...


def apply_volume(pcm: bytes, volume: int) -> bytes:
    """Scale 16-bit samples by volume/100; 100 leaves the bytes untouched."""
    if volume >= 100:
        return pcm
    samples = array("h")
    samples.frombytes(pcm)
    if sys.byteorder == "big":
        samples.byteswap()
    factor = max(volume, 0) / 100.0
    scaled = array("h", (int(s * factor) for s in samples))
    if sys.byteorder == "big":
        scaled.byteswap()
    return scaled.tobytes()


class _Frames:
    """Re-cuts a byte stream on 16-bit sample boundaries."""

    def __init__(self) -> None:
        self._rest = b""

    def cut(self, chunk: bytes) -> bytes:
        data = self._rest + chunk
        whole = len(data) - len(data) % 2
        self._rest = data[whole:]
        return data[:whole]


def open_sounddevice(config: AudioConfig) -> Any:
    """Open and start a RawOutputStream on the configured device."""
    import sounddevice as sd  # PortAudio is loaded only by commands that play sound

    try:
        stream = sd.RawOutputStream(
            samplerate=config.sample_rate, channels=1, dtype="int16", device=config.device
        )
        stream.start()
    except (sd.PortAudioError, ValueError) as exc:
        raise AudioDeviceError(f"cannot open audio device {config.device!r}: {exc}") from None
    return stream


def check_sounddevice(config: AudioConfig) -> str | None:
    """Load PortAudio and check the configured device can play our format; the problem, if any."""
    try:
        import sounddevice as sd
    except OSError:
        return "PortAudio is not installed (apt install libportaudio2)"
    try:
        sd.check_output_settings(
            device=config.device, channels=1, dtype="int16", samplerate=config.sample_rate
        )
    except (ValueError, sd.PortAudioError) as exc:
        return f"device {config.device!r} cannot play: {exc} (see `edge-tts devices`)"
    return None


def load_portaudio(config: AudioConfig) -> str | None:
    """`check_sounddevice`, for a process that stays (PortAudio loaded once, at start)."""
    return check_sounddevice(config)


class Player:
    """Plays announcements on the local audio device, one at a time."""

    def __init__(
        self, config: AudioConfig, open_stream: Callable[[AudioConfig], Any] = open_sounddevice
    ) -> None:
        self._config = config
        self._open_stream = open_stream
        self._bytes_per_ms = config.sample_rate * 2 / 1000
        self._stream: Any = None
        self._stream_lock = threading.Lock()
        self._close_timer: asyncio.TimerHandle | None = None
        self._stopped = threading.Event()
        self._chunks: queue.Queue[object] | None = None
        self._feeder: asyncio.Task[None] | None = None

    async def prepare(self) -> None:
        """Load PortAudio before the first announcement (loading it takes tens of ms that must
        not fall on an announcement) and say early if the device cannot play."""
        if self._open_stream is open_sounddevice:
            problem = await asyncio.to_thread(load_portaudio, self._config)
            if problem:
                log.error("audio: %s; announcements will fail until it can", problem)

    async def play(
        self,
        audio: AsyncIterator[bytes],
        *,
        volume: int = 100,
        on_first_audio: FirstAudio | None = None,
        start: Start | None = None,
    ) -> bool:
        loop = asyncio.get_running_loop()
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self._stopped.clear()
        chunks: queue.Queue[object] = queue.Queue()
        self._chunks = chunks
        writer = asyncio.ensure_future(
            asyncio.to_thread(
                self._write_all, chunks, volume, loop, on_first_audio, start or Start()
            )
        )
        self._feeder = asyncio.create_task(self._feed(audio, chunks, writer))
        try:
            await self._feeder
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                self.stop()
                raise
            # else stop() cut the feeder: a normal, early end.
        finally:
            self._feeder = None
            chunks.put(_END)
            # The writer ends at _END or on stop; it must not outlive this call.
            await asyncio.shield(writer)
            self._chunks = None
            if self._stream is not None:
                self._close_timer = loop.call_later(self._config.keep_open_s, self._close_later)
        return not self._stopped.is_set()

    async def _feed(
        self, audio: AsyncIterator[bytes], chunks: queue.Queue[object], writer: asyncio.Future[None]
    ) -> None:
        frames = _Frames()
        async for chunk in audio:
            if writer.done():
                break  # the device failed; the writer's error is raised by play()
            data = frames.cut(chunk)
            if data:
                chunks.put(data)

    def stop(self) -> None:
        self._stopped.set()
        if self._chunks is not None:
            self._chunks.put(_END)
        if self._feeder is not None:
            self._feeder.cancel()

    def _close_later(self) -> None:
        self._close_timer = None
        asyncio.get_running_loop().run_in_executor(None, self._close_stream)

    async def close(self) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        await asyncio.to_thread(self._close_stream)

    # --- worker thread -------------------------------------------------------------------

    def _close_stream(self, *, abort: bool = False) -> None:
        with self._stream_lock:
            stream, self._stream = self._stream, None
        if stream is None:
            return
        with contextlib.suppress(Exception):
            if abort:
                stream.abort()
            else:
                stream.stop()
        with contextlib.suppress(Exception):
            stream.close()
        log.debug("audio device closed")

    def _write_all(
        self,
        chunks: queue.Queue[object],
        volume: int,
        loop: asyncio.AbstractEventLoop,
        on_first_audio: FirstAudio | None,
        start: Start,
    ) -> None:
        with self._stream_lock:
            cold = self._stream is None
            if cold:
                self._stream = self._open_stream(self._config)
                log.debug("audio device %r opened", self._config.device)
            stream = self._stream
        cushion_ms = self._config.lead_in_ms if cold else self._config.jitter_ms
        written_ms = 0.0

        def write(data: bytes) -> None:
            nonlocal written_ms
            try:
                stream.write(data)
            except Exception as exc:  # PortAudioError and friends: the device went away
                self._close_stream(abort=True)
                raise AudioDeviceError(
                    f"audio device {self._config.device!r} failed: {exc}"
                ) from None
            written_ms += len(data) / self._bytes_per_ms

        # Nothing reaches the device before the first chunk: a failed synthesis stays silent.
        item = chunks.get()
        start.ready_at = time.monotonic()
        start.latency_s = _output_latency(stream)
        lead_s = start.latency_s + cushion_ms / 1000  # from handing the cushion over to hearing
        if start.at is not None and item is not _END:
            self._wait_until(start.at - lead_s)
        started = time.monotonic()
        if item is not _END and not self._stopped.is_set():
            write(self._silence(cushion_ms))
            start.handed_at = time.monotonic()
            start.heard_at = started + lead_s
            if on_first_audio is not None:
                loop.call_soon_threadsafe(on_first_audio, start.handed_at)
        while item is not _END and not self._stopped.is_set():
            assert isinstance(item, bytes)
            if item:
                write(apply_volume(item, volume))
            ahead_ms = written_ms - (time.monotonic() - started) * 1000
            try:
                item = chunks.get(timeout=max(ahead_ms - _LOW_WATER_MS, 0) / 1000)
            except queue.Empty:
                write(self._silence(_GAP_MS))
                item = b""
        if self._stopped.is_set():
            self._close_stream(abort=True)
            return
        if self._config.keep_open_s <= 0:
            self._close_stream()  # stop() drains what the device still holds
            return
        # Return once the device has played what it holds, so `finished` means heard.
        remaining_ms = written_ms - (time.monotonic() - started) * 1000
        if remaining_ms > 0:
            self._stopped.wait(remaining_ms / 1000)

    def _wait_until(self, moment: float) -> None:
        """Sleep until `moment` (time.monotonic()), or a stop."""
        while (left := moment - time.monotonic()) > 0 and not self._stopped.is_set():
            if left > _SPIN_S:
                self._stopped.wait(left - _SPIN_S / 2)
            else:
                time.sleep(left / 2 if left > 0.0002 else left)

    def _silence(self, ms: float) -> bytes:
        n = int(ms * self._bytes_per_ms)
        return bytes(n - n % 2)


def _output_latency(stream: Any) -> float:
    """The stream's output latency in seconds as PortAudio reports it (0 if it does not)."""
    latency = getattr(stream, "latency", 0.0)
    return float(latency) if isinstance(latency, int | float) else 0.0


class WavWriter:
    """An AudioSink that writes the speech to a WAV file instead of a device."""

    def __init__(self, path: Path, sample_rate: int) -> None:
        self._path = path
        self._sample_rate = sample_rate
        self._stopped = False

    async def play(
        self,
        audio: AsyncIterator[bytes],
        *,
        volume: int = 100,
        on_first_audio: FirstAudio | None = None,
        start: Start | None = None,
    ) -> bool:
        frames = _Frames()
        pcm = bytearray()
        async for chunk in audio:
            if self._stopped:
                break
            if not pcm:
                now = time.monotonic()
                if start is not None:
                    start.ready_at = start.handed_at = start.heard_at = now
                if on_first_audio is not None:
                    on_first_audio(now)
            pcm += apply_volume(frames.cut(chunk), volume)
        await asyncio.to_thread(self._write, bytes(pcm))
        return not self._stopped

    def _write(self, pcm: bytes) -> None:
        with wave.open(str(self._path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(self._sample_rate)
            out.writeframes(pcm)

    def stop(self) -> None:
        self._stopped = True

    async def prepare(self) -> None:
        pass

    async def close(self) -> None:
        pass


class Discard:
    """An AudioSink that takes the audio and plays nothing: `edge-tts cache warm`."""

    async def play(
        self,
        audio: AsyncIterator[bytes],
        *,
        volume: int = 100,
        on_first_audio: FirstAudio | None = None,
        start: Start | None = None,
    ) -> bool:
        async for _ in audio:
            pass
        return True

    def stop(self) -> None:
        pass

    async def prepare(self) -> None:
        pass

    async def close(self) -> None:
        pass
