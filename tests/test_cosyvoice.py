"""The CosyVoice client against the fake service over a real WebSocket."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest

from edge_tts.config import Voice
from edge_tts.engines import AudioWaitSettings, SynthesisRequest
from edge_tts.engines.cosyvoice import CosyVoiceEngine, text_pieces
from edge_tts.engines.sambert import SambertEngine
from edge_tts.errors import CloudUnavailable, SynthesisError
from edge_tts.keeper import ConnectionKeeper
from edge_tts.secret import Secret
from edge_tts.text import weight

from conftest import API_KEY
from fake_dashscope import FakeDashScope, pcm_for

VOICE = Voice(name="default", engine="cosyvoice", model="cosyvoice-v3-flash", voice="longanyang")


def engine_for(
    fake: FakeDashScope, key: str | None = API_KEY, **timeouts: float
) -> CosyVoiceEngine:
    keeper = ConnectionKeeper(fake.url, Secret(key) if key else None)
    return CosyVoiceEngine(
        keeper,
        AudioWaitSettings(timeouts.get("first", 5), timeouts.get("stall", 1)),
    )


async def collect(audio: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in audio])


def request(text: str, voice: Voice = VOICE, **kw: object) -> SynthesisRequest:
    return SynthesisRequest(text=text, voice=voice, sample_rate=24000, **kw)  # type: ignore[arg-type]


async def test_streams_the_services_pcm_chunk_by_chunk(dashscope: FakeDashScope) -> None:
    engine = engine_for(dashscope)
    chunks = [c async for c in engine.synthesize(request("Good morning."))]
    assert len(chunks) > 1  # handed on as they arrive, not gathered
    assert b"".join(chunks) == pcm_for("Good morning.")


async def test_run_task_carries_the_voice_profile(dashscope: FakeDashScope) -> None:
    voice = Voice(
        name="v",
        engine="cosyvoice",
        model="cosyvoice-v3-plus",
        voice="longxiaochun",
        rate=1.2,
        pitch=0.9,
        volume=70,
        instructions="Speak calmly",
        seed=42,
        language_hints=("en",),
    )
    await collect(engine_for(dashscope).synthesize(request("Hi there.", voice)))
    (task,) = dashscope.tasks
    assert task.model == "cosyvoice-v3-plus"
    assert task.parameters == {
        "text_type": "PlainText",
        "voice": "longxiaochun",
        "format": "pcm",
        "sample_rate": 24000,
        "volume": 70,
        "rate": 1.2,
        "pitch": 0.9,
        "seed": 42,
        "instruction": "Speak calmly",
        "language_hints": ["en"],
    }
    assert task.texts == ["Hi there."]


async def test_per_message_instructions_override_the_voices(dashscope: FakeDashScope) -> None:
    await collect(engine_for(dashscope).synthesize(request("Hi.", instructions="Whisper")))
    assert dashscope.tasks[0].parameters["instruction"] == "Whisper"


async def test_connection_is_reused_with_a_fresh_task_id_per_task(dashscope: FakeDashScope) -> None:
    engine = engine_for(dashscope)
    for text in ("One.", "Two.", "Three."):
        assert await collect(engine.synthesize(request(text))) == pcm_for(text)
    assert len(dashscope.connections) == 1
    ids = [t.task_id for t in dashscope.tasks]
    assert len(set(ids)) == 3 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


async def test_task_failed_raises_and_retires_the_connection(dashscope: FakeDashScope) -> None:
    engine = engine_for(dashscope)
    with pytest.raises(SynthesisError, match="InternalError"):
        await collect(engine.synthesize(request("Oops [fail]")))
    assert await collect(engine.synthesize(request("Fine."))) == pcm_for("Fine.")
    assert len(dashscope.connections) == 2


async def test_stall_ends_within_the_stall_timeout(dashscope: FakeDashScope) -> None:
    engine = engine_for(dashscope, stall=0.3)
    with pytest.raises(SynthesisError, match="stall_timeout_s"):
        await collect(engine.synthesize(request("Hang [stall]")))
    assert await collect(engine.synthesize(request("Next."))) == pcm_for("Next.")
    assert len(dashscope.connections) == 2  # the stalled connection was not reused


async def test_first_audio_deadline(dashscope: FakeDashScope) -> None:
    dashscope.first_packet_delay_s = 2
    with pytest.raises(SynthesisError, match="first_audio_timeout_s"):
        await collect(engine_for(dashscope, first=0.3).synthesize(request("Slow.")))


async def test_connection_cut_without_close_frame(dashscope: FakeDashScope) -> None:
    engine = engine_for(dashscope)
    with pytest.raises(CloudUnavailable, match="closed during the task"):
        await collect(engine.synthesize(request("Cut [drop]")))
    assert await collect(engine.synthesize(request("Again."))) == pcm_for("Again.")


async def test_wrong_key_is_reported_without_the_key(dashscope: FakeDashScope) -> None:
    with pytest.raises(CloudUnavailable) as refused:
        await collect(engine_for(dashscope, key="sk-wrong-secret").synthesize(request("Hi.")))
    assert "refused the API key" in refused.value.reason
    assert "sk-wrong-secret" not in str(refused.value) and "sk-wrong-secret" not in repr(
        refused.value
    )


async def test_no_key_says_how_to_add_one(dashscope: FakeDashScope) -> None:
    with pytest.raises(CloudUnavailable, match="DASHSCOPE_API_KEY"):
        await collect(engine_for(dashscope, key=None).synthesize(request("Hi.")))
    assert dashscope.handshakes == 0


async def test_unreachable_cloud(dashscope: FakeDashScope) -> None:
    url = dashscope.url
    await dashscope.stop()
    keeper = ConnectionKeeper(url, Secret(API_KEY))
    engine = CosyVoiceEngine(keeper, AudioWaitSettings(1, 1))
    with pytest.raises(CloudUnavailable, match="cannot reach DashScope"):
        await collect(engine.synthesize(request("Hi.")))


async def test_consumer_leaving_early_retires_the_connection(dashscope: FakeDashScope) -> None:
    engine = engine_for(dashscope)
    audio = engine.synthesize(request("A long sentence that is cut off half way."))
    await anext(audio)
    await audio.aclose()  # what a stop does
    assert await collect(engine.synthesize(request("Next."))) == pcm_for("Next.")
    assert len(dashscope.connections) == 2


async def test_a_long_text_goes_sentence_by_sentence_in_one_task(dashscope: FakeDashScope) -> None:
    text = "The oven is preheated. Put the bread in! It needs forty minutes."
    audio = await collect(engine_for(dashscope).synthesize(request(text)))
    (task,) = dashscope.tasks
    assert task.texts == [
        "The oven is preheated. ",
        "Put the bread in! ",
        "It needs forty minutes.",
    ]
    assert audio == b"".join(pcm_for(t) for t in task.texts)


async def test_ssml_goes_whole_in_exactly_one_continue_task(dashscope: FakeDashScope) -> None:
    ssml = '<speak>Take out the bins. <break time="500ms"/> Tonight!</speak>'
    audio = await collect(engine_for(dashscope).synthesize(request(ssml, ssml=True)))
    (task,) = dashscope.tasks
    assert task.parameters["enable_ssml"] is True
    assert task.texts == [ssml]  # the service allows one continue-task with SSML
    assert audio == pcm_for(ssml)


async def test_sambert_sends_the_text_in_run_task_on_the_shared_connection(
    dashscope: FakeDashScope,
) -> None:
    cosy = engine_for(dashscope)
    sambert = SambertEngine(cosy._keeper, AudioWaitSettings(5, 1))
    voice = Voice(
        name="zhichu", engine="sambert", model="sambert-zhichu-v1", rate=1.2, pitch=0.8, volume=60
    )
    await collect(cosy.synthesize(request("CosyVoice first.")))
    req = request("Then Sambert. Two sentences.", voice)
    audio = await collect(sambert.synthesize(req))
    assert audio == pcm_for("Then Sambert. Two sentences.", "sambert-zhichu-v1")
    _first, task = dashscope.tasks
    assert task.streaming == "out" and task.model == "sambert-zhichu-v1"
    assert task.texts == ["Then Sambert. Two sentences."]  # Sambert takes it whole
    assert task.parameters["sample_rate"] == 24000 and task.parameters["format"] == "pcm"
    assert (task.parameters["rate"], task.parameters["pitch"], task.parameters["volume"]) == (
        1.2,
        0.8,
        60,
    )
    assert len(dashscope.connections) == 1 and req.trace.connection == "warm"


async def test_a_sambert_failure_fails_the_request_and_the_next_one_works(
    dashscope: FakeDashScope,
) -> None:
    sambert = SambertEngine(engine_for(dashscope)._keeper, AudioWaitSettings(5, 1))
    voice = Voice(name="zhichu", engine="sambert", model="sambert-zhichu-v1")
    with pytest.raises(SynthesisError, match="InternalError"):
        await collect(sambert.synthesize(request("Broken [fail]", voice)))
    assert await collect(sambert.synthesize(request("Fine.", voice))) == pcm_for(
        "Fine.", "sambert-zhichu-v1"
    )


async def test_texts_over_the_documented_task_limits_are_refused_before_sending(
    dashscope: FakeDashScope,
) -> None:
    engine = engine_for(dashscope)
    with pytest.raises(SynthesisError, match="at most 200,000 in one task"):
        await collect(engine.synthesize(request("中" * 100_001)))
    long_ssml = "<speak>" + "a" * 20_001 + "</speak>"
    with pytest.raises(SynthesisError, match="at most 20,000 in one"):
        await collect(engine.synthesize(request(long_ssml, ssml=True)))
    v2 = Voice(name="old", engine="cosyvoice", model="cosyvoice-v2", voice="longxiaochun")
    with pytest.raises(SynthesisError, match="cosyvoice-v2 does not speak SSML"):
        await collect(engine.synthesize(request("<speak>Hi</speak>", v2, ssml=True)))
    assert dashscope.connections == []  # refused before a connection was even taken
    # Under the limit it goes, in pieces far below what the service takes in one message.
    pieces = text_pieces(request("中" * 50_000 + "。Done."))
    assert "".join(pieces) == "中" * 50_000 + "。Done." and max(map(weight, pieces)) <= 2000
