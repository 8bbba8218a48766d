"""The chime: played before the speech, with the speech fetched while it plays, so it adds
no wait; on request, from config, from a WAV of the user's, or not at all."""

from __future__ import annotations

import array
import os
import time
import wave
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_tts.chime import MAX_CHIME_BYTES, ChimeError, builtin_chime, load_chime
from edge_tts.config import Config, load_config
from edge_tts.errors import ConfigError

from conftest import Capture, DaemonProcess, Home
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
    assert played[: len(chime)] == chime
    # The speech was fetched while the chime played: it follows at once, no silence between.
    assert played[len(chime) : len(chime) + len(speech)] == speech
    # first_audio_ms is how fast the speech came, the chime not counted: no sooner than the
    # model's time to first audio; and the wait in the queue is apart from it.
    assert started["first_audio_ms"] >= 300
    assert isinstance(started["queued_ms"], int) and started["queued_ms"] >= 0


def write_tone(path: Path) -> bytes:
    tone = array.array("h", [1000, -1000] * 2400).tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(24000)
        w.writeframes(tone)
    return tone


async def test_a_message_names_a_configured_chime_or_none(
    daemon_with: Any, home: Home, capture: Capture, tmp_path: Path
) -> None:
    tone = write_tone(tmp_path / "ding.wav")
    await daemon_with(audio__chimes={"ding": str(tmp_path / "ding.wav")})
    await home.say({"text": "With my chime.", "id": "mine", "chime": "ding"})
    assert (await home.log.outcome("mine"))["event"] == "finished"
    played = after_lead_in(capture.read())
    assert played[: len(tone)] == tone
    assert played[len(tone) :].startswith(pcm_for("With my chime."))

    await home.say({"text": "No chime.", "id": "plain", "chime": False})
    assert (await home.log.outcome("plain"))["event"] == "finished"
    assert after_lead_in(capture.read()).startswith(pcm_for("No chime."))


@pytest.mark.parametrize(
    "chime", ["/etc/shadow", "/proc/self/environ", "/dev/stdin", "../ding.wav", "DING", "ding.wav"]
)
async def test_a_message_cannot_name_a_file_as_its_chime(
    daemon_with: Any, home: Home, capture: Capture, tmp_path: Path, chime: str
) -> None:
    write_tone(tmp_path / "ding.wav")
    await daemon_with(audio__chimes={"ding": str(tmp_path / "ding.wav")})
    await home.say({"text": "Sneaky.", "id": "sneaky", "chime": chime})
    failed = await home.log.outcome("sneaky")
    assert failed["event"] == "failed"
    assert "is not a configured chime" in failed["error"] and "ding" in failed["error"]
    # The daemon read nothing and goes on: the next announcement is spoken.
    await home.say({"text": "Next one.", "id": "next"})
    assert (await home.log.outcome("next"))["event"] == "finished"
    assert pcm_for("Next one.") in capture.read()


async def test_a_configured_chime_that_went_missing_still_speaks(
    daemon_with: Any, home: Home, capture: Capture, tmp_path: Path
) -> None:
    write_tone(tmp_path / "ding.wav")
    await daemon_with(audio__chimes={"ding": str(tmp_path / "ding.wav")})
    (tmp_path / "ding.wav").unlink()
    await home.say({"text": "Still spoken.", "id": "s", "chime": "ding"})
    assert (await home.log.outcome("s"))["event"] == "finished"
    assert after_lead_in(capture.read()).startswith(pcm_for("Still spoken."))


def test_a_chime_file_that_is_not_a_regular_file_is_refused_without_blocking(
    tmp_path: Path,
) -> None:
    fifo = tmp_path / "fifo.wav"
    os.mkfifo(fifo)  # nobody writes: a blocking open would wait for ever
    with pytest.raises(ChimeError, match="not a regular file"):
        load_chime(str(fifo), 24000)
    with pytest.raises(ChimeError, match="not a regular file"):
        load_chime("/dev/zero", 24000)
    big = tmp_path / "big.wav"
    with big.open("wb") as f:
        f.truncate(MAX_CHIME_BYTES + 1)
    with pytest.raises(ChimeError, match="over the"):
        load_chime(str(big), 24000)


def test_config_chimes_must_be_files_and_names(tmp_path: Path) -> None:
    write_tone(tmp_path / "ding.wav")
    good = {"chimes": {"ding": str(tmp_path / "ding.wav")}, "chime": "ding"}
    assert load_config_text({"audio": good}, tmp_path).audio.chimes == (
        ("ding", str(tmp_path / "ding.wav")),
    )
    for audio, reason in [
        ({"chimes": {"ding": "/no/such.wav"}}, "audio.chimes.ding: no such WAV file"),
        ({"chimes": {"builtin": str(tmp_path / "ding.wav")}}, "other than builtin"),
        ({"chimes": ["x"]}, "audio.chimes: must be a mapping"),
        ({"chime": "bell"}, "audio.chime: no such WAV file"),
    ]:
        with pytest.raises(ConfigError, match=reason):
            load_config_text({"audio": audio}, tmp_path)


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


def load_config_text(data: dict[str, Any], tmp_path: Path) -> Config:
    path = tmp_path / "chime-config.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(str(path))


async def test_with_a_chime_and_a_play_at_first_audio_ms_is_how_fast_the_speech_came(
    daemon: DaemonProcess, home: Home, capture: Capture, dashscope: FakeDashScope
) -> None:
    # The chime waits for play_at (4 s on) and the speech behind it: neither wait is the
    # speech's, which the cloud had ready long before.
    await home.say(
        {"text": "Dinner is ready.", "id": "d", "chime": True, "play_at": time.time() + 4}
    )
    assert (await home.log.outcome("d", timeout=30))["event"] == "finished"
    started = await home.log.event("d", "started")
    assert 0 <= started["first_audio_ms"] < 3000, started
    played = after_lead_in(capture.read())
    chime = builtin_chime(24000)
    assert played[: len(chime)] == chime
    assert played[len(chime) :].startswith(pcm_for("Dinner is ready."))
