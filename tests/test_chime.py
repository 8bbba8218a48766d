"""The chime: played before the speech, with the speech fetched while it plays, so it adds
no wait; on request, from config, from a WAV of the user's, or not at all."""

from __future__ import annotations

import array
import wave
from pathlib import Path

import pytest

from conftest import Capture, DaemonProcess, Home
from edge_tts.chime import ChimeError, builtin_chime, load_chime
from fake_dashscope import FakeDashScope, pcm_for

LEAD_IN = 100 * 48  # audio.lead_in_ms of the test config, in bytes at 24 kHz


def after_lead_in(raw: bytes) -> bytes:
    assert raw[:LEAD_IN] == bytes(LEAD_IN)
    return raw[LEAD_IN:]


async def test_the_builtin_chime_plays_first_and_the_speech_follows_without_a_gap(
    daemon: DaemonProcess, home: Home, capture: Capture, dashscope: FakeDashScope
) -> None:
    chime = builtin_chime(24000)
    dashscope.first_packet_delay_s = 0.3  # the cloud is slower than a handshake, not the chime
    await home.say({"text": "Dinner is ready.", "id": "d", "chime": True})
    assert (await home.log.outcome("d"))["event"] == "finished"
    started = await home.log.event("d", "started")
    assert started["source"] == "cloud"
    played = after_lead_in(capture.read())
    speech = pcm_for("Dinner is ready.")
    assert played[:len(chime)] == chime
    # The speech was fetched while the chime played: it follows at once, no silence between.
    assert played[len(chime):len(chime) + len(speech)] == speech
    assert started["first_audio_ms"] < 300  # what is heard first is the chime


async def test_a_wav_chime_of_the_users_and_chime_false(
    daemon: DaemonProcess, home: Home, capture: Capture, tmp_path: Path
) -> None:
    tone = array.array("h", [1000, -1000] * 2400)
    path = tmp_path / "ding.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(24000)
        w.writeframes(tone.tobytes())
    await home.say({"text": "With my chime.", "id": "mine", "chime": str(path)})
    assert (await home.log.outcome("mine"))["event"] == "finished"
    played = after_lead_in(capture.read())
    assert played[:len(tone) * 2] == tone.tobytes()
    assert played[len(tone) * 2:].startswith(pcm_for("With my chime."))

    await home.say({"text": "No chime.", "id": "plain", "chime": False})
    assert (await home.log.outcome("plain"))["event"] == "finished"
    assert after_lead_in(capture.read()).startswith(pcm_for("No chime."))


async def test_a_missing_chime_file_still_speaks(
    daemon: DaemonProcess, home: Home, capture: Capture
) -> None:
    await home.say({"text": "Still spoken.", "id": "s", "chime": "/no/such/chime.wav"})
    assert (await home.log.outcome("s"))["event"] == "finished"
    assert after_lead_in(capture.read()).startswith(pcm_for("Still spoken."))


def test_chime_files_are_read_mixed_down_and_checked(tmp_path: Path) -> None:
    stereo = tmp_path / "stereo.wav"
    with wave.open(str(stereo), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(24000)
        w.writeframes(array.array("h", [100, 300] * 10).tobytes())
    assert array.array("h", load_chime(str(stereo), 24000)).tolist() == [200] * 10
    eight_bit = tmp_path / "eight.wav"
    with wave.open(str(eight_bit), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(24000)
        w.writeframes(b"\x80" * 10)
    with pytest.raises(ChimeError, match="16-bit"):
        load_chime(str(eight_bit), 24000)
    assert len(load_chime(str(stereo), 48000)) == 2 * 20  # resampled to the output rate
