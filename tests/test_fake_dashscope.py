"""The fake DashScope server, driven by the official `dashscope` SDK for each protocol it
speaks (CosyVoice, Qwen-TTS Realtime in both modes, Sambert): if the SDK is happy with it,
the fake speaks the service's protocol, and our client is tested against the real thing's
shape."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
from collections.abc import Iterator
from typing import Any

import dashscope as dashscope_sdk
import pytest
import websocket
import websockets
from dashscope.audio.qwen_tts_realtime import AudioFormat as QwenAudioFormat
from dashscope.audio.qwen_tts_realtime import QwenTtsRealtime, QwenTtsRealtimeCallback
from dashscope.audio.tts import SpeechSynthesizer as SambertSynthesizer
from dashscope.audio.tts_v2 import AudioFormat, ResultCallback, SpeechSynthesizer
from dashscope.common.error import RequestFailure

from edge_tts.config import Voice
from edge_tts.engines import AudioWaitSettings, SynthesisRequest
from edge_tts.engines.cosyvoice import CosyVoiceEngine, run_task
from edge_tts.keeper import ConnectionKeeper, ConnectionSettings
from edge_tts.protocols.inference import continue_task
from edge_tts.secret import Secret

from conftest import API_KEY, fake_cloud
from fake_dashscope import FakeDashScope, pcm_for

COSY = Voice(name="default", engine="cosyvoice", model="cosyvoice-v3-flash", voice="longanyang")


@pytest.fixture(autouse=True)
def sdk_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dashscope_sdk, "api_key", API_KEY)


@pytest.fixture(autouse=True)
def sdk_sockets_closed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The SDK's websocket-client leaves a socket open after a refused handshake or a failed
    task (its bug, not the fake's): every socket it opened is closed after the test."""
    opened: list[websocket.WebSocket] = []
    original = websocket.WebSocket.__init__

    def tracked(self: websocket.WebSocket, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        opened.append(self)

    monkeypatch.setattr(websocket.WebSocket, "__init__", tracked)
    yield
    for ws in opened:
        with contextlib.suppress(Exception):
            ws.shutdown()


async def test_sdk_call_receives_the_fakes_pcm(dashscope: FakeDashScope) -> None:
    synthesizer = SpeechSynthesizer(
        model="cosyvoice-v3-flash",
        voice="longanyang",
        format=AudioFormat.PCM_24000HZ_MONO_16BIT,
        url=dashscope.url,
    )
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

    synthesizer = SpeechSynthesizer(
        model="cosyvoice-v3-flash",
        voice="longxiaochun",
        format=AudioFormat.PCM_22050HZ_MONO_16BIT,
        callback=Collect(),
        url=dashscope.url,
    )

    def stream() -> None:
        for text in ("First sentence. ", "Second sentence."):
            synthesizer.streaming_call(text)
        synthesizer.streaming_complete()

    await asyncio.to_thread(stream)
    assert done.is_set()
    expected = pcm_for("First sentence. ", "longxiaochun", 22050) + pcm_for(
        "Second sentence.", "longxiaochun", 22050
    )
    assert b"".join(chunks) == expected


async def sdk_error(url: str, text: str, **options: Any) -> dict[str, Any]:
    """The first error the SDK's SpeechSynthesizer reports to its callback for `text`."""
    failed = threading.Event()
    errors: list[dict[str, Any]] = []

    class Record(ResultCallback):
        def on_error(self, message: str) -> None:
            errors.append(json.loads(message))
            failed.set()

    synthesizer = SpeechSynthesizer(
        model="cosyvoice-v3-flash",
        voice="longanyang",
        format=AudioFormat.PCM_24000HZ_MONO_16BIT,
        callback=Record(),
        url=url,
        **options,
    )
    # The service closes the connection right after task-failed; the SDK's own finish-task
    # may then race that close and raise. What matters is that it saw the failure as the
    # service reports it.
    with contextlib.suppress(ConnectionError, RequestFailure, TimeoutError):
        await asyncio.to_thread(synthesizer.call, text, 10_000)
    assert await asyncio.to_thread(failed.wait, 10)
    return errors[0]


async def test_sdk_sees_task_failed_with_its_code(dashscope: FakeDashScope) -> None:
    header = (await sdk_error(dashscope.url, "Broken [fail]"))["header"]
    assert header["event"] == "task-failed" and header["error_code"] == "InternalError"


async def test_sdk_with_a_wrong_key_is_refused(
    dashscope: FakeDashScope, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dashscope_sdk, "api_key", "sk-wrong")
    synthesizer = SpeechSynthesizer(
        model="cosyvoice-v3-flash",
        voice="longanyang",
        format=AudioFormat.PCM_24000HZ_MONO_16BIT,
        url=dashscope.url,
    )
    with pytest.raises(TimeoutError):  # how the SDK reports a refused handshake
        await asyncio.to_thread(synthesizer.call, "Hello", 5_000)
    assert dashscope.connections == []  # refused at the handshake, never served
    assert dashscope.refused == [401]  # answered with a refusal, not left hanging


# --- as strict as the reference ---------------------------------------------------------


async def test_a_client_that_does_not_wait_for_task_started_has_its_task_failed() -> None:
    """The reference: send continue-task only after task-started. A client that does not
    wait fails here (the fake, like a busy service, answers run-task a moment late)."""
    async with fake_cloud(task_started_delay_s=0.3) as fake:
        request = SynthesisRequest("Too early.", COSY, 24000)
        async with websockets.connect(
            fake.url, additional_headers={"Authorization": f"Bearer {API_KEY}"}
        ) as ws:
            await ws.send(json.dumps(run_task(request)))
            await ws.send(json.dumps(continue_task(request.task_id, "Too early.")))
            event = json.loads(await ws.recv())
    assert event["header"]["event"] == "task-failed"
    assert "before task-started" in event["header"]["error_message"]


async def test_the_sdk_and_our_client_both_wait_for_task_started() -> None:
    async with fake_cloud(task_started_delay_s=0.3) as fake:
        synthesizer = SpeechSynthesizer(
            model="cosyvoice-v3-flash",
            voice="longanyang",
            format=AudioFormat.PCM_24000HZ_MONO_16BIT,
            url=fake.url,
        )
        assert await asyncio.to_thread(synthesizer.call, "The SDK waits.", 10_000) == pcm_for(
            "The SDK waits."
        )
        keeper = ConnectionKeeper(fake.url, Secret(API_KEY), ConnectionSettings(keep_warm=False))
        engine = CosyVoiceEngine(keeper, AudioWaitSettings(5, 2))
        try:
            audio = b"".join(
                [c async for c in engine.synthesize(SynthesisRequest("So do we.", COSY, 24000))]
            )
        finally:
            await keeper.close()
    assert audio == pcm_for("So do we.")
    assert [t.outcome for t in fake.tasks] == ["finished", "finished"]


@pytest.mark.parametrize(
    ("option", "value", "problem"),
    [
        ("speech_rate", 3.0, "parameters.rate must be 0.5-2"),
        ("pitch_rate", 0.1, "parameters.pitch must be 0.5-2"),
        ("volume", 101, "parameters.volume must be 0-100"),
    ],
)
async def test_parameters_out_of_their_documented_range_are_refused(
    dashscope: FakeDashScope, option: str, value: float, problem: str
) -> None:
    header = (await sdk_error(dashscope.url, "Out of range.", **{option: value}))["header"]
    assert header["error_code"] == "InvalidParameter" and problem in header["error_message"]


# --- Qwen-TTS Realtime, driven by the SDK's QwenTtsRealtime -----------------------------


class _QwenEvents(QwenTtsRealtimeCallback):
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.audio = bytearray()
        self.finished = threading.Event()
        self.closed = threading.Event()
        self.responses_done = threading.Semaphore(0)

    def on_event(self, message: Any) -> None:
        self.events.append(message)
        kind = message["type"]
        if kind == "response.audio.delta":
            self.audio += base64.b64decode(message["delta"])
        elif kind == "response.done":
            self.responses_done.release()
        elif kind == "session.finished":
            self.finished.set()

    def on_close(self, close_status_code: Any, close_msg: Any) -> None:
        self.closed.set()

    def kinds(self) -> list[str]:
        return [e["type"] for e in self.events]


def _qwen_client(
    dashscope: FakeDashScope, model: str = "qwen3-tts-flash-realtime"
) -> tuple[QwenTtsRealtime, _QwenEvents]:
    events = _QwenEvents()
    client = QwenTtsRealtime(model=model, callback=events, url=dashscope.realtime_url)
    return client, events


async def test_sdk_qwen_server_commit_mode(dashscope: FakeDashScope) -> None:
    client, events = _qwen_client(dashscope)
    texts = ["Right? I love supermarkets like this. ", "Especially during the new year."]

    def run() -> None:
        client.connect()
        client.update_session(
            voice="Cherry",
            response_format=QwenAudioFormat.PCM_24000HZ_MONO_16BIT,
            mode="server_commit",
            language_type="English",
        )
        for text in texts:
            client.append_text(text)
        client.finish()
        assert events.finished.wait(10)

    await asyncio.to_thread(run)
    assert bytes(events.audio) == b"".join(pcm_for(t, "Cherry", 24000) for t in texts)
    kinds = events.kinds()
    assert kinds[0] == "session.created" and kinds[1] == "session.updated"
    assert kinds.count("response.done") == 2 and kinds[-1] == "session.finished"
    assert client.get_session_id() == dashscope.tasks[0].task_id
    assert dashscope.tasks[0].outcome == "finished"
    assert await asyncio.to_thread(events.closed.wait, 10)  # the server ends the connection


async def test_sdk_qwen_commit_mode_one_response_per_commit(dashscope: FakeDashScope) -> None:
    client, events = _qwen_client(dashscope, "qwen3-tts-instruct-flash-realtime")

    def run() -> None:
        client.connect()
        client.update_session(
            voice="Serena",
            mode="commit",
            sample_rate=16000,
            instructions="Calm and warm",
            optimize_instructions=True,
        )
        client.append_text("Hello there")  # no sentence end: commit mode waits for commit
        client.append_text(", friend.")
        client.commit()
        assert events.responses_done.acquire(timeout=10)
        client.append_text("Second turn.")
        client.commit()
        assert events.responses_done.acquire(timeout=10)
        client.finish()
        assert events.finished.wait(10)

    await asyncio.to_thread(run)
    expected = pcm_for("Hello there, friend.", "Serena", 16000) + pcm_for(
        "Second turn.", "Serena", 16000
    )
    assert bytes(events.audio) == expected
    assert events.kinds().count("input_text_buffer.committed") == 2
    session = dashscope.tasks[0].parameters
    assert session["instructions"] == "Calm and warm" and session["sample_rate"] == 16000


async def test_sdk_qwen_errors_recoverable_and_fatal(dashscope: FakeDashScope) -> None:
    client, events = _qwen_client(dashscope)

    def run() -> None:
        client.connect()
        client.update_session(voice="no-such-voice", mode="commit")  # refused, session lives
        client.update_session(voice="Cherry", mode="commit")
        client.commit()  # nothing buffered: refused, session lives
        client.append_text("Fine.")
        client.commit()
        assert events.responses_done.acquire(timeout=10)
        client.append_text("Broken [fail]")
        client.commit()
        assert events.closed.wait(10)  # a server error ends the session

    await asyncio.to_thread(run)
    errors = [e["error"] for e in events.events if e["type"] == "error"]
    assert [e["type"] for e in errors] == [
        "invalid_request_error",
        "invalid_request_error",
        "server_error",
    ]
    assert bytes(events.audio) == pcm_for("Fine.", "Cherry", 24000)
    assert dashscope.tasks[0].outcome == "failed"


async def test_sdk_qwen_session_update_after_start_is_refused(dashscope: FakeDashScope) -> None:
    client, events = _qwen_client(dashscope)

    def run() -> None:
        client.connect()
        client.update_session(voice="Cherry", mode="commit")
        client.append_text("Hello.")
        client.update_session(voice="Ethan", mode="commit")
        client.finish()
        assert events.finished.wait(10)

    await asyncio.to_thread(run)
    (error,) = [e["error"] for e in events.events if e["type"] == "error"]
    assert "already started" in error["message"]
    assert bytes(events.audio) == pcm_for("Hello.", "Cherry", 24000)


# --- Sambert, driven by the SDK's SpeechSynthesizer (v1) --------------------------------


async def test_sdk_sambert_call(dashscope: FakeDashScope, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dashscope_sdk, "base_websocket_api_url", dashscope.url)
    result = await asyncio.to_thread(
        SambertSynthesizer.call,
        model="sambert-zhichu-v1",
        text="The sun sets behind the mountains.",
        sample_rate=16000,
        format="pcm",
    )
    assert result.get_audio_data() == pcm_for(
        "The sun sets behind the mountains.", "sambert-zhichu-v1", 16000
    )
    (task,) = dashscope.tasks
    assert task.streaming == "out" and task.outcome == "finished"
    assert task.texts == ["The sun sets behind the mountains."]


async def test_sdk_sambert_failure_reaches_the_sdk(
    dashscope: FakeDashScope, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dashscope_sdk, "base_websocket_api_url", dashscope.url)
    result = await asyncio.to_thread(
        SambertSynthesizer.call,
        model="sambert-zhichu-v1",
        text="Broken [fail]",
        sample_rate=16000,
        format="pcm",
    )
    response = result.get_response()
    assert response.code == "InternalError" and "fail" in response.message


async def test_sdk_qwen_clear_drops_uncommitted_text(dashscope: FakeDashScope) -> None:
    client, events = _qwen_client(dashscope)

    def run() -> None:
        client.connect()
        client.update_session(voice="Cherry", mode="commit")
        client.append_text("Never mind this.")
        client.clear_appended_text()
        client.append_text("Say this.")
        client.commit()
        client.finish()
        assert events.finished.wait(10)

    await asyncio.to_thread(run)
    assert "input_text_buffer.cleared" in events.kinds()
    assert bytes(events.audio) == pcm_for("Say this.", "Cherry", 24000)
