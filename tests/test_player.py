"""The player through the real audio path: sounddevice → PortAudio → ALSA → file device."""

from __future__ import annotations

import asyncio
import time
import wave
from array import array
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge_tts.config import AudioConfig
from edge_tts.errors import AudioDeviceError, SynthesisError
from edge_tts.player import Player, Start, WavWriter

from conftest import Capture
from fake_dashscope import pcm_for

BYTES_PER_MS = 48  # 24 kHz, 16-bit, mono
CONFIG = AudioConfig(
    device="default", sample_rate=24000, lead_in_ms=100, jitter_ms=40, keep_open_s=0
)


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_cold_device_gets_a_lead_in_then_the_exact_pcm(capture: Capture) -> None:
    pcm = pcm_for("Hello.")
    await Player(CONFIG).play(chunks(pcm[:1001], pcm[1001:3000], pcm[3000:]))  # odd cuts
    raw = capture.read()
    assert raw == bytes(100 * BYTES_PER_MS) + pcm


async def test_first_audio_is_reported_once_when_the_speech_reaches_the_device(
    capture: Capture,
) -> None:
    """Not when playing starts, nor when the lead-in goes out: when the first speech byte is
    handed to the device, which cannot be before the speech existed."""
    loop = asyncio.get_running_loop()
    arrived: list[float] = []
    release = asyncio.Event()

    async def late_speech() -> AsyncIterator[bytes]:
        await release.wait()  # the cloud is slow: the device is open, the lead-in out
        arrived.append(loop.time())
        yield pcm_for("a")
        yield pcm_for("b")

    seen: list[float] = []
    loop.call_later(0.2, release.set)
    started = loop.time()
    await Player(CONFIG).play(late_speech(), on_first_audio=seen.append)
    ended = loop.time()
    assert len(seen) == 1
    assert arrived[0] <= seen[0] <= ended
    assert seen[0] - started >= 0.2  # (a report at the start of play would be ~0)


async def test_audio_ready_early_waits_for_its_start_time_and_plays_whole(
    capture: Capture,
) -> None:
    """With a start time, the first sample is handed over no earlier than the output latency
    and the lead-in before it: it is heard then, not before."""
    pcm = pcm_for("On time.")
    start = Start(at=time.monotonic() + 0.3)
    await Player(CONFIG).play(chunks(pcm), start=start)
    assert start.handed_at is not None and start.heard_at is not None
    lead_s = start.latency_s + CONFIG.lead_in_ms / 1000
    assert start.handed_at >= start.at - lead_s  # type: ignore[operator]
    assert start.heard_at == pytest.approx(start.handed_at + lead_s, abs=0.05)
    assert start.late_s is not None and start.late_s >= 0
    assert capture.read() == bytes(100 * BYTES_PER_MS) + pcm  # the wait adds no silence


async def test_audio_ready_late_starts_at_once_nothing_skipped_and_says_how_late(
    capture: Capture,
) -> None:
    pcm = pcm_for("Late.")
    release = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        await release.wait()
        yield pcm

    start = Start(at=time.monotonic() + 0.05)
    asyncio.get_running_loop().call_later(0.3, release.set)
    await Player(CONFIG).play(slow(), start=start)
    assert start.late_s is not None and start.late_s >= 0.2
    assert capture.read() == bytes(100 * BYTES_PER_MS) + pcm


async def test_a_stop_while_waiting_for_the_start_time_plays_nothing(capture: Capture) -> None:
    player = Player(CONFIG)
    start = Start(at=time.monotonic() + 30)
    taken = asyncio.Event()

    async def ready() -> AsyncIterator[bytes]:
        yield pcm_for("Never.")
        taken.set()  # the player has the audio: it waits for its start time
        await asyncio.Event().wait()

    playing = asyncio.ensure_future(player.play(ready(), start=start))
    await taken.wait()
    player.stop()
    async with asyncio.timeout(5):
        assert await playing is False
    assert start.handed_at is None and capture.read() == b""


async def test_volume_is_applied_as_gain(capture: Capture) -> None:
    pcm = pcm_for("Quieter.")
    await Player(CONFIG).play(chunks(pcm), volume=50)
    halved = array("h", (int(s * 0.5) for s in array("h", pcm))).tobytes()
    assert capture.read() == bytes(100 * BYTES_PER_MS) + halved


async def test_a_late_chunk_is_bridged_with_silence_not_an_underrun(capture: Capture) -> None:
    first, second = pcm_for("one"), pcm_for("two")
    released = asyncio.Event()

    async def slow_network() -> AsyncIterator[bytes]:
        yield first
        # The network holds the next chunk back longer than the device has audio queued.
        await asyncio.wait_for(released.wait(), timeout=(len(first) / BYTES_PER_MS + 300) / 1000)
        yield second

    with pytest.raises(TimeoutError):
        await Player(CONFIG).play(slow_network())
    raw = capture.read()
    lead = 100 * BYTES_PER_MS
    assert raw[:lead] == bytes(lead)
    assert raw[lead : lead + len(first)] == first
    gap = raw[lead + len(first) :]
    assert gap and gap == bytes(len(gap))  # silence was written while waiting


async def test_failure_before_any_audio_plays_nothing(capture: Capture) -> None:
    async def failing() -> AsyncIterator[bytes]:
        raise SynthesisError("no")
        yield b""

    with pytest.raises(SynthesisError):
        await Player(CONFIG).play(failing())
    assert capture.read() == b""


async def test_stop_cuts_playback(capture: Capture) -> None:
    player = Player(CONFIG)
    more = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        yield pcm_for("first part")
        player.stop()
        await more.wait()  # never released: stop must not wait for the rest
        yield pcm_for("never")

    assert await asyncio.wait_for(player.play(endless()), timeout=5) is False
    assert pcm_for("never") not in capture.read()


async def test_warm_device_uses_the_jitter_cushion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # keep_open_s > 0: the second announcement reuses the open device.
    config = AudioConfig(
        device="default", sample_rate=24000, lead_in_ms=100, jitter_ms=40, keep_open_s=30
    )
    capture = tmp_path / "warm.raw"
    monkeypatch.setenv("EDGE_TTS_ALSA_CAPTURE", str(capture))
    player = Player(config)
    one, two = pcm_for("one"), pcm_for("two")
    await player.play(chunks(one))
    await player.play(chunks(two))
    await player.close()
    assert capture.read_bytes() == bytes(100 * BYTES_PER_MS) + one + bytes(40 * BYTES_PER_MS) + two


async def test_missing_device_is_a_clear_error(capture: Capture) -> None:
    config = AudioConfig(device="no-such-device", sample_rate=24000, keep_open_s=0)
    with pytest.raises(AudioDeviceError, match="cannot open audio device 'no-such-device'"):
        await Player(config).play(chunks(pcm_for("x")))


async def test_wav_writer_writes_the_pcm(tmp_path: Path) -> None:
    out = tmp_path / "out.wav"
    pcm = pcm_for("Saved.")
    await WavWriter(out, 24000).play(chunks(pcm[:7], pcm[7:]))
    with wave.open(str(out)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 24000)
        assert wav.readframes(wav.getnframes()) == pcm
