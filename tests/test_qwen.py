"""The Qwen-TTS Realtime client against the fake service over a real WebSocket: one session
per announcement, a session kept ready, text sentence by sentence, exact PCM."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from edge_tts.config import Voice
from edge_tts.engines import AudioWaitSettings, SynthesisRequest
from edge_tts.engines.qwen import QwenEngine, session_config
from edge_tts.errors import CloudUnavailable, ConnectionLost, SynthesisError
from edge_tts.keeper import ConnectionSettings
from edge_tts.resample import resample
from edge_tts.secret import Secret

from conftest import API_KEY
from fake_dashscope import FakeDashScope, pcm_for

FLASH = Voice(name="butler", engine="qwen", model="qwen3-tts-flash-realtime", voice="Cherry")
INSTRUCT = Voice(
    name="calm",
    engine="qwen",
    model="qwen3-tts-instruct-flash-realtime",
    voice="Serena",
    instructions="Calm and warm",
    optimize_instructions=True,
    language_type="English",
    rate=1.1,
    pitch=0.9,
    volume=60,
)


@pytest.fixture
async def engine(dashscope: FakeDashScope) -> AsyncIterator[QwenEngine]:
    e = QwenEngine(
        dashscope.realtime_url, Secret(API_KEY), ConnectionSettings(), AudioWaitSettings(5, 1)
    )
    yield e
    await e.close()


async def collect(audio: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in audio])


def request(text: str, voice: Voice = FLASH, rate: int = 24000, **kw: object) -> SynthesisRequest:
    return SynthesisRequest(text=text, voice=voice, sample_rate=rate, **kw)  # type: ignore[arg-type]


async def test_commit_mode_sends_each_sentence_and_plays_the_exact_pcm(
    engine: QwenEngine, dashscope: FakeDashScope
) -> None:
    text = "The laundry is done. Please take it out!"
    chunks = [c async for c in engine.synthesize(request(text))]
    assert len(chunks) > 2  # handed on as the deltas arrive
    assert b"".join(chunks) == pcm_for("The laundry is done. ", "Cherry") + pcm_for(
        "Please take it out!", "Cherry"
    )
    (session,) = [t for t in dashscope.tasks if t.texts]
    assert session.texts == ["The laundry is done. ", "Please take it out!"]
    assert session.outcome == "finished"
    assert dashscope.connections[0].path == "/api-ws/v1/realtime"


async def test_server_commit_mode_lets_the_server_cut_and_ends_with_session_finish(
    engine: QwenEngine, dashscope: FakeDashScope
) -> None:
    voice = Voice(
        name="b",
        engine="qwen",
        model="qwen3-tts-flash-realtime",
        voice="Ethan",
        mode="server_commit",
    )
    audio = await collect(engine.synthesize(request("One. Two", voice)))
    assert audio == pcm_for("One. ", "Ethan") + pcm_for("Two", "Ethan")
    session = next(t for t in dashscope.tasks if t.texts)
    assert session.parameters["mode"] == "server_commit"


async def test_session_update_carries_the_profile(
    engine: QwenEngine, dashscope: FakeDashScope
) -> None:
    await collect(engine.synthesize(request("Hello.", INSTRUCT)))
    session = next(t for t in dashscope.tasks if t.texts)
    assert session.model == "qwen3-tts-instruct-flash-realtime"
    expected = {
        "voice": "Serena",
        "mode": "commit",
        "response_format": "pcm",
        "sample_rate": 24000,
        "speech_rate": 1.1,
        "pitch_rate": 0.9,
        "volume": 60,
        "language_type": "English",
        "instructions": "Calm and warm",
        "optimize_instructions": True,
    }
    assert {k: session.parameters[k] for k in expected} == expected


def test_instructions_go_only_to_instruct_models_and_the_legacy_model_gets_24k_only() -> None:
    flash = session_config(request("x", FLASH, instructions="Whisper"))
    assert "instructions" not in flash
    legacy = Voice(name="l", engine="qwen", model="qwen-tts-realtime", voice="Cherry", rate=1.5)
    config = session_config(request("x", legacy, rate=16000))
    assert config["sample_rate"] == 24000 and "speech_rate" not in config
    assert (
        session_config(request("x", INSTRUCT, instructions="Whisper"))["instructions"] == "Whisper"
    )


@pytest.mark.parametrize("tail", [0, 1, 37, 159])
async def test_an_output_rate_qwen_lacks_is_resampled_exactly_to_the_last_sample(
    engine: QwenEngine, dashscope: FakeDashScope, tail: int
) -> None:
    """Speech cut anywhere, of any length, resampled as one stream (the session's responses
    back to back): the same bytes as the whole at once, every output sample, the last ones
    included."""
    dashscope.tail_samples = tail
    dashscope.chunk_bytes = 2 * 997  # chunks that cut the blocks anywhere
    text = "Dinner is ready. Come and eat."
    audio = await collect(engine.synthesize(request(text, rate=22050)))
    session = next(t for t in dashscope.tasks if t.texts)
    assert session.parameters["sample_rate"] == 24000
    spoken = b"".join(pcm_for(p, "Cherry", 24000) for p in ("Dinner is ready. ", "Come and eat."))
    # The stream resamples the whole session as one: the two responses back to back.
    with_tails = b"".join(
        (pcm := pcm_for(p, "Cherry", 24000)) + pcm[: 2 * tail]
        for p in ("Dinner is ready. ", "Come and eat.")
    )
    assert len(with_tails) == len(spoken) + 4 * tail
    assert audio == resample(with_tails, 24000, 22050)
    assert abs(len(audio) / 2 - len(with_tails) / 2 * 22050 / 24000) <= 0.5


async def test_the_next_session_is_ready_before_the_next_announcement(
    engine: QwenEngine, dashscope: FakeDashScope
) -> None:
    first = request("First.")
    await collect(engine.synthesize(first))
    keeper = engine.keeper_for(first)
    await asyncio.wait_for(keeper.wait_warm(), 5)
    second = request("Second.")
    assert await collect(engine.synthesize(second)) == pcm_for("Second.", "Cherry")
    assert second.trace.connection == "warm"
    spoken = [t for t in dashscope.tasks if t.texts]
    assert len(spoken) == 2 and spoken[0].task_id != spoken[1].task_id  # a session each


async def test_a_voice_the_service_refuses_is_reported_with_its_name(
    engine: QwenEngine, dashscope: FakeDashScope
) -> None:
    voice = Voice(
        name="ghost", engine="qwen", model="qwen3-tts-flash-realtime", voice="no-such-voice"
    )
    with pytest.raises(CloudUnavailable) as caught:
        await collect(engine.synthesize(request("Hello.", voice)))
    assert "ghost" in caught.value.reason and "invalid_value" in caught.value.reason
    assert caught.value.refused and caught.value.hint == "check voices.ghost"


@pytest.mark.parametrize(
    "marker, words",
    [("[fail]", "failed: internal_error"), ("[invalid]", "refused the request: invalid_value")],
)
async def test_an_error_mid_announcement_fails_it_and_the_next_one_works(
    engine: QwenEngine, dashscope: FakeDashScope, marker: str, words: str
) -> None:
    with pytest.raises(SynthesisError, match=words):
        await collect(engine.synthesize(request(f"First sentence. Then {marker} this.")))
    assert await collect(engine.synthesize(request("All good."))) == pcm_for("All good.", "Cherry")


async def test_a_connection_dropped_before_audio_is_replaced_once(
    engine: QwenEngine, dashscope: FakeDashScope
) -> None:
    dashscope.cut_next_task(after_chunks=0)
    req = request("A sentence long enough for several chunks.")
    audio = await collect(engine.synthesize(req))
    assert audio == pcm_for("A sentence long enough for several chunks.", "Cherry")
    assert req.trace.connection == "replaced"


async def test_a_connection_dropped_after_audio_says_how_many_sentences_were_whole(
    engine: QwenEngine, dashscope: FakeDashScope
) -> None:
    """The speaker resumes from the sentence that was cut: Qwen tells it how many were
    complete (one response per committed sentence)."""
    dashscope.chunk_bytes = 2400
    req = request("Whole first. A second one that breaks.")
    heard = bytearray()
    dashscope.cut_next_task(after_chunks=2)  # within the first response: nothing whole yet
    with pytest.raises(ConnectionLost):
        async for chunk in engine.synthesize(req):
            heard += chunk
    assert bytes(heard) == pcm_for("Whole first. ", "Cherry")[: 2 * 2400]
    assert req.trace.sentences_done == 0
    done = request("Whole first. And a second.")
    await collect(engine.synthesize(done))
    assert done.trace.sentences_done == 2


async def test_a_response_the_service_did_not_complete_fails_the_synthesis(
    engine: QwenEngine,
) -> None:
    with pytest.raises(SynthesisError, match="ended a response as incomplete"):
        await collect(engine.synthesize(request("Cut short [incomplete].")))


async def test_a_stall_fails_after_stall_timeout(engine: QwenEngine) -> None:
    with pytest.raises(SynthesisError, match="stall_timeout_s"):
        await collect(engine.synthesize(request("Stuck [stall] here.")))


async def test_the_model_goes_in_the_url(engine: QwenEngine, dashscope: FakeDashScope) -> None:
    keeper = engine.keeper_for(request("x", INSTRUCT))
    assert keeper.url == f"{dashscope.realtime_url}?model=qwen3-tts-instruct-flash-realtime"


async def test_at_most_two_sessions_are_kept_ready(
    engine: QwenEngine, dashscope: FakeDashScope
) -> None:
    voices = [
        Voice(name=n, engine="qwen", model="qwen3-tts-flash-realtime", voice=n)
        for n in ("Dylan", "Ethan", "Serena")
    ]
    for voice in voices:
        await collect(engine.synthesize(request("Hi.", voice)))
    assert len(engine.stats()) == 2  # the oldest profile's keeper was closed
    await dashscope.wait_for(
        lambda: (
            not any(
                c.tasks and c.tasks[0].parameters["voice"] == "Dylan"
                for c in dashscope.open_connections()
            )
        )
    )


async def test_per_message_instructions_get_a_session_of_their_own(
    engine: QwenEngine, dashscope: FakeDashScope
) -> None:
    await collect(engine.synthesize(request("Normal.", INSTRUCT)))
    await collect(engine.synthesize(request("Urgent!", INSTRUCT, instructions="Loud and fast")))
    spoken = [t for t in dashscope.tasks if t.texts]
    assert [t.parameters["instructions"] for t in spoken] == ["Calm and warm", "Loud and fast"]


async def test_a_stopped_announcement_closes_its_session_and_the_next_is_made_ready(
    engine: QwenEngine, dashscope: FakeDashScope
) -> None:
    dashscope.chunk_bytes = 2400
    dashscope.chunk_interval_s = 0.05  # still speaking when the stop comes
    req = request("A long sentence that is cut off in the middle by a stop.")
    audio = engine.synthesize(req)
    await anext(audio)
    await audio.aclose()  # what the player does on a stop
    first = next(t for t in dashscope.tasks if t.texts)
    await dashscope.wait_for(lambda: first.outcome != "running")
    assert first.outcome == "dropped"  # the connection closed under it, no session.finished
    await asyncio.wait_for(engine.keeper_for(req).wait_warm(), 5)
    assert await collect(engine.synthesize(request("Next."))) == pcm_for("Next.", "Cherry")


async def test_a_realtime_url_pointing_at_the_wrong_endpoint_is_a_clear_error(
    dashscope: FakeDashScope,
) -> None:
    # The CosyVoice endpoint answers the handshake but opens no Qwen session.
    wrong = QwenEngine(
        dashscope.url, Secret(API_KEY), ConnectionSettings(keep_warm=False, connect_timeout_s=0.5)
    )
    with pytest.raises(CloudUnavailable, match="did not set up the session"):
        await collect(wrong.synthesize(request("Hello.")))
    await wrong.close()
