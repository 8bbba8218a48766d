"""The fake DashScope server, driven by the official `dashscope` SDK: if the SDK is happy with
it, the fake speaks the service's protocol, and our client is tested against the real thing's
shape."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from typing import Any

import dashscope as dashscope_sdk
import pytest
from conftest import API_KEY
from dashscope.audio.tts_v2 import AudioFormat, ResultCallback, SpeechSynthesizer
from dashscope.common.error import RequestFailure
from fake_dashscope import FakeDashScope, pcm_for


@pytest.fixture(autouse=True)
def sdk_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dashscope_sdk, "api_key", API_KEY)


async def test_sdk_call_receives_the_fakes_pcm(dashscope: FakeDashScope) -> None:
    synthesizer = SpeechSynthesizer(model="cosyvoice-v3-flash", voice="longanyang",
                                    format=AudioFormat.PCM_24000HZ_MONO_16BIT, url=dashscope.url)
    audio = await asyncio.to_thread(synthesizer.call, "How is the weather today?", 10_000)
    assert audio == pcm_for("How is the weather today?")
    (task,) = dashscope.tasks
    assert task.outcome == "finished"
    assert task.parameters["format"] == "pcm" and task.parameters["sample_rate"] == 24000
    assert len(task.task_id) == 32


async def test_sdk_streaming_call_with_several_texts(dashscope: FakeDashScope) -> None:
    chunks: list[bytes] = []
    done = threading.Event()

    class Collect(ResultCallback):
        def on_data(self, data: bytes) -> None:
            chunks.append(data)

        def on_complete(self) -> None:
            done.set()

    synthesizer = SpeechSynthesizer(model="cosyvoice-v3-flash", voice="longxiaochun",
                                    format=AudioFormat.PCM_22050HZ_MONO_16BIT,
                                    callback=Collect(), url=dashscope.url)

    def stream() -> None:
        for text in ("First sentence. ", "Second sentence."):
            synthesizer.streaming_call(text)
        synthesizer.streaming_complete()

    await asyncio.to_thread(stream)
    assert done.is_set()
    expected = pcm_for("First sentence. ", "longxiaochun", 22050) + pcm_for(
        "Second sentence.", "longxiaochun", 22050)
    assert b"".join(chunks) == expected


async def test_sdk_sees_task_failed_with_its_code(dashscope: FakeDashScope) -> None:
    failed = threading.Event()
    errors: list[dict[str, Any]] = []

    class Record(ResultCallback):
        def on_error(self, message: str) -> None:
            errors.append(json.loads(message))
            failed.set()

    synthesizer = SpeechSynthesizer(model="cosyvoice-v3-flash", voice="longanyang",
                                    format=AudioFormat.PCM_24000HZ_MONO_16BIT, callback=Record(),
                                    url=dashscope.url)
    # The service closes the connection right after task-failed; the SDK's own finish-task
    # may then race that close and raise ConnectionError. What matters is that it saw the
    # failure as the service reports it.
    with contextlib.suppress(ConnectionError, RequestFailure):
        await asyncio.to_thread(synthesizer.call, "Broken [fail]", 10_000)
    assert await asyncio.to_thread(failed.wait, 10)
    header = errors[0]["header"]
    assert header["event"] == "task-failed" and header["error_code"] == "InternalError"


async def test_sdk_with_a_wrong_key_is_refused(dashscope: FakeDashScope,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dashscope_sdk, "api_key", "sk-wrong")
    synthesizer = SpeechSynthesizer(model="cosyvoice-v3-flash", voice="longanyang",
                                    format=AudioFormat.PCM_24000HZ_MONO_16BIT, url=dashscope.url)
    with pytest.raises(TimeoutError):  # how the SDK reports a refused handshake
        await asyncio.to_thread(synthesizer.call, "Hello", 5_000)
    assert dashscope.connections == []  # refused at the handshake, never served

