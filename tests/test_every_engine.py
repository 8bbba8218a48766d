"""One voice of each engine in one config, each speaking through MQTT, the real daemon
process and ALSA: the exact PCM the fake cloud sent for CosyVoice, Qwen-TTS Realtime and
Sambert, real Piper speech for the offline voice. Errors mid-announcement fall back and the
engine speaks the next one."""

from __future__ import annotations

import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conftest import (
    Broker,
    Capture,
    DaemonProcess,
    Home,
    configured_daemon,
    free_port,
    split_speech,
    write_config,
)
from fake_dashscope import FakeDashScope, pcm_for
from test_fallback import assert_spoken

VOICES = {
    "voices__butler": {
        "engine": "qwen",
        "model": "qwen3-tts-instruct-flash-realtime",
        "voice": "Serena",
        "instructions": "Calm and warm",
        "language_type": "English",
    },
    "voices__zhichu": {"engine": "sambert", "model": "sambert-zhichu-v1"},
    "voices__offline": {"engine": "piper"},
}


async def every_engine(
    tmp_path: Path,
    broker: Broker,
    dashscope: FakeDashScope,
    home: Home,
    env: dict[str, str] | None = None,
    **overrides: object,
) -> DaemonProcess:
    """The daemon with a voice of each engine (and `overrides`), started and online."""
    proc = configured_daemon(
        tmp_path / "config.yaml",
        broker,
        dashscope,
        env=env,
        dashscope__realtime_url=dashscope.realtime_url,
        fallback__first_audio_ms=3000,
        **(VOICES | overrides),
    )
    await proc.start(home)
    return proc


@pytest.fixture
async def running(
    tmp_path: Path, broker: Broker, dashscope: FakeDashScope, home: Home, capture: Capture
) -> AsyncIterator[DaemonProcess]:
    proc = await every_engine(tmp_path, broker, dashscope, home)
    yield proc
    await proc.stop()


async def spoken(home: Home, capture: Capture, payload: dict[str, object]) -> tuple[dict, bytes]:
    await home.say(payload)
    end = await home.log.outcome(str(payload["id"]), timeout=30)
    assert end["event"] == "finished", end
    return await home.log.event(str(payload["id"]), "started"), split_speech(capture.read())[1]


async def test_each_engine_speaks_its_announcement_end_to_end(
    running: DaemonProcess, home: Home, capture: Capture, dashscope: FakeDashScope
) -> None:
    started, pcm = await spoken(
        home, capture, {"text": "CosyVoice here. Two sentences.", "id": "cosy"}
    )
    assert started["source"] == "cloud"
    assert pcm == pcm_for("CosyVoice here. ") + pcm_for("Two sentences.")

    started, pcm = await spoken(
        home, capture, {"text": "Qwen here. Also two.", "voice": "butler", "id": "qwen"}
    )
    assert started["source"] == "cloud"
    assert pcm == pcm_for("Qwen here. ", "Serena") + pcm_for("Also two.", "Serena")
    session = next(t for t in dashscope.tasks if t.streaming == "realtime" and t.texts)
    assert session.parameters["instructions"] == "Calm and warm"
    assert session.texts == ["Qwen here. ", "Also two."]

    started, pcm = await spoken(
        home, capture, {"text": "Sambert here.", "voice": "zhichu", "id": "sambert"}
    )
    assert started["source"] == "cloud"
    assert pcm == pcm_for("Sambert here.", "sambert-zhichu-v1")

    started, pcm = await spoken(
        home, capture, {"text": "Piper here.", "voice": "offline", "id": "piper"}
    )
    assert started["source"] == "offline"
    assert_spoken(pcm, "Piper here.")


async def test_a_qwen_error_mid_announcement_is_finished_by_the_fallback_and_the_next_speaks(
    running: DaemonProcess, home: Home, capture: Capture, dashscope: FakeDashScope
) -> None:
    # The first sentence was already heard: the cloud is asked again for the rest, which
    # fails again here, so the fallback voice says it from the sentence that broke.
    await home.say({"text": "Careful. [fail] Broken.", "voice": "butler", "id": "mid"})
    finished = await home.log.outcome("mid", timeout=30)
    assert finished["event"] == "finished" and "internal_error" in finished["reason"]
    assert "the fallback voice offline said the rest from sentence 2 of 2" in finished["reason"]
    assert home.log.of("mid") == ["queued", "started", "finished"]
    played = split_speech(capture.read())[1]
    assert played.startswith(pcm_for("Careful. ", "Serena"))
    assert_spoken(played[len(pcm_for("Careful. ", "Serena")) :], "[fail] Broken.")
    started, pcm = await spoken(
        home, capture, {"text": "Working again.", "voice": "butler", "id": "good"}
    )
    assert started["source"] == "cloud"
    assert pcm == pcm_for("Working again.", "Serena")


async def test_a_qwen_error_before_any_audio_falls_back_and_the_next_qwen_one_speaks(
    running: DaemonProcess, home: Home, capture: Capture
) -> None:
    started, pcm = await spoken(
        home, capture, {"text": "Broken [fail] at once.", "voice": "butler", "id": "bad"}
    )
    assert started["source"] == "fallback" and "internal_error" in started["reason"]
    assert_spoken(pcm, "Broken [fail] at once.")
    started, pcm = await spoken(home, capture, {"text": "Back.", "voice": "butler", "id": "ok"})
    assert started["source"] == "cloud" and pcm == pcm_for("Back.", "Serena")


async def test_a_sambert_error_falls_back_and_the_next_sambert_one_speaks(
    running: DaemonProcess, home: Home, capture: Capture
) -> None:
    started, _ = await spoken(
        home, capture, {"text": "Broken [fail]", "voice": "zhichu", "id": "bad"}
    )
    assert started["source"] == "fallback" and "InternalError" in started["reason"]
    _, pcm = await spoken(home, capture, {"text": "Fine now.", "voice": "zhichu", "id": "good"})
    assert pcm == pcm_for("Fine now.", "sambert-zhichu-v1")


async def test_ssml_is_sent_as_ssml_to_cosyvoice_and_as_words_to_a_fallback(
    running: DaemonProcess, home: Home, capture: Capture, dashscope: FakeDashScope
) -> None:
    ssml = '<speak>Bins out <break time="300ms"/> tonight.</speak>'
    started, pcm = await spoken(home, capture, {"ssml": ssml, "id": "cosy"})
    assert started["source"] == "cloud" and pcm == pcm_for(ssml)
    task = dashscope.tasks[-1]
    assert task.parameters["enable_ssml"] is True and task.texts == [ssml]
    # A Qwen voice cannot speak SSML: the offline voice says the words instead.
    started, pcm = await spoken(home, capture, {"ssml": ssml, "voice": "butler", "id": "qwen"})
    assert started["source"] == "fallback" and "cannot speak SSML" in started["reason"]
    assert_spoken(pcm, "Bins out tonight.")


async def test_malformed_ssml_is_refused_with_a_reason_and_the_next_is_spoken(
    running: DaemonProcess, home: Home, capture: Capture
) -> None:
    await home.say({"ssml": "<speak>unclosed", "id": "bad"})
    failed = await home.log.outcome("bad")
    assert failed["event"] == "failed" and "not well-formed XML" in failed["error"]
    _, pcm = await spoken(home, capture, {"text": "Next one.", "id": "next"})
    assert pcm == pcm_for("Next one.")


async def test_a_qwen_default_voice_has_its_session_ready_before_the_first_announcement(
    tmp_path: Path, broker: Broker, dashscope: FakeDashScope, home: Home, capture: Capture
) -> None:
    proc = await every_engine(tmp_path, broker, dashscope, home, default_voice="butler")
    try:

        def ready() -> bool:
            return any(
                c.path == "/api-ws/v1/realtime"
                and c.tasks
                and c.tasks[0].parameters["voice"] == "Serena"
                for c in dashscope.open_connections()
            )

        await dashscope.wait_for(ready)
        await home.log.wait_for(lambda: any(s["cloud"]["warm"] for s in home.log.stats))
        started, pcm = await spoken(home, capture, {"text": "Dinner.", "id": "first"})
        assert started["connection"] == "warm"
        assert pcm == pcm_for("Dinner.", "Serena")
        stats = home.log.stats[-1]["cloud"]
        assert stats["qwen_sessions"][0]["reused"] >= 1
    finally:
        await proc.stop()


async def test_a_reload_that_makes_a_qwen_voice_the_default_readies_its_session(
    tmp_path: Path,
    broker: Broker,
    dashscope: FakeDashScope,
    home: Home,
    capture: Capture,
    running: DaemonProcess,
) -> None:
    assert not any(c.path == "/api-ws/v1/realtime" for c in dashscope.connections)
    write_config(
        running.config,
        broker,
        dashscope,
        dashscope__realtime_url=dashscope.realtime_url,
        default_voice="butler",
        fallback__first_audio_ms=3000,
        **VOICES,
    )
    assert running.proc is not None
    running.proc.send_signal(signal.SIGHUP)
    await dashscope.wait_for(
        lambda: any(
            c.path == "/api-ws/v1/realtime"
            and c.tasks
            and c.tasks[0].parameters["voice"] == "Serena"
            for c in dashscope.open_connections()
        )
    )
    started, pcm = await spoken(home, capture, {"text": "After reload.", "id": "r"})
    assert started["connection"] == "warm" and pcm == pcm_for("After reload.", "Serena")


# What a daemon with every engine configured has loaded (Python's own record of its imports,
# PYTHONPROFILEIMPORTTIME): an idle Pi pays for no module it does not use (issue 17).
UNUSED_UNTIL_NEEDED = {
    "numpy": "the resampler's, loaded by the first audio that needs resampling",
    "soxr": "the resampler's",
    "onnxruntime": "the offline voice's, in its own process only",
    "piper": "the offline voice's, in its own process only",
    "multiprocessing": "the offline voice's link, loaded by its first use",
    "xml": "the SSML parser, loaded by the first SSML announcement",
    "edge_tts.checks": "`edge-tts check`'s",
    "wyoming.client": "`edge-tts check`'s",
    "difflib": "a config error's did-you-mean",
}


def loaded_without_need(stderr: bytes) -> set[str]:
    names = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \| +(\S+)$", stderr.decode(), re.M))
    assert {"edge_tts.daemon", "websockets", "sounddevice", "wyoming.tts"} <= names
    return {m for m in UNUSED_UNTIL_NEEDED for n in names if n == m or n.startswith(m + ".")}


def mapped_libraries(pid: int) -> set[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {Path(line.split()[-1]).name for line in maps.splitlines() if ".so" in line}


async def test_the_daemon_loads_what_its_voices_use_and_only_when_they_are_used(
    tmp_path: Path, broker: Broker, dashscope: FakeDashScope, home: Home, capture: Capture
) -> None:
    proc = await every_engine(
        tmp_path,
        broker,
        dashscope,
        home,
        env={"PYTHONPROFILEIMPORTTIME": "1"},
        wyoming={"enabled": True, "host": "127.0.0.1", "port": free_port(), "zeroconf": True},
    )
    try:
        assert loaded_without_need(proc.stderr) == set(), "idle"
        await spoken(home, capture, {"text": "CosyVoice here.", "id": "cosy"})
        await spoken(home, capture, {"text": "Qwen here.", "voice": "butler", "id": "qwen"})
        await spoken(home, capture, {"text": "Sambert here.", "voice": "zhichu", "id": "sb"})
        assert loaded_without_need(proc.stderr) == set(), "after the cloud voices spoke"

        await spoken(home, capture, {"ssml": "<speak>Marked up.</speak>", "id": "ssml"})
        await spoken(home, capture, {"text": "Piper here.", "voice": "offline", "id": "piper"})
        # The offline voice's child logs its imports to the same stderr: the daemon's own
        # libraries are read from its memory map instead. The SSML parser is loaded now
        # (pyexpat: the check sees what is there); the model and numpy only in the child.
        assert proc.proc is not None
        libraries = mapped_libraries(proc.proc.pid)
        assert any(name.startswith("pyexpat") for name in libraries)
        heavy = {"numpy", "onnxruntime", "soxr", "piper", "espeak"}
        assert {h for h in heavy for name in libraries if h in name.lower()} == set()
    finally:
        await proc.stop()
