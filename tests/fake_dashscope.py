"""An in-process DashScope server speaking the documented real-time speech protocols:
CosyVoice (run-task duplex / continue-task / finish-task) and Sambert (run-task with
streaming "out") on the inference endpoint, Qwen-TTS Realtime (session.update,
input_text_buffer.*, session.finish) on the realtime endpoint.

It checks what clients send as the service does (authorization, message shapes, task ids,
the order of actions), answers with the documented events, and sends deterministic PCM for
each text so a test can assert the exact bytes that reached the speaker. It keeps a record
of connections and tasks (a Qwen session is recorded as a task). Behaviour for a test is
chosen by markers in the text:
  [fail]     task-failed (Qwen: a fatal server_error) instead of audio
  [invalid]  Qwen: an invalid_request_error for that append; the session lives on
  [stall]    one chunk of audio, then silence (the task never ends)
  [drop]     one chunk of audio, then the TCP connection is cut without a close frame
and by methods: `cut_next_task(after_chunks)` cuts the next task's connection once,
`kill_connections()` cuts every open connection, as when a route dies.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import http
import json
import math
import re
import ssl
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import websockets
from websockets.asyncio.server import Server, ServerConnection
from websockets.http11 import Request, Response

PATH = "/api-ws/v1/inference"
REALTIME_PATH = "/api-ws/v1/realtime"
_TASK_ID = re.compile(r"^[0-9a-zA-Z-]{16,64}$")
_SENTENCE_END = re.compile(r"[.!?;。！？；]\s*$")
QWEN_RATES = (8000, 16000, 24000, 48000)
QWEN_LANGUAGES = (
    "Auto",
    "Chinese",
    "English",
    "German",
    "Italian",
    "Portuguese",
    "Spanish",
    "Japanese",
    "Korean",
    "French",
    "Russian",
)


_SAMPLE_RATES = (8000, 16000, 22050, 24000, 44100, 48000)  # CosyVoice and Sambert


def take_voice(voice: str, take: int) -> str:
    """The voice name whose pcm_for is the `take`-th synthesis of a text under vary_takes."""
    return voice if take == 1 else f"{voice}#take{take}"


def pcm_for(text: str, voice: str = "longanyang", sample_rate: int = 24000) -> bytes:
    """The fake's speech for a text: a tone whose pitch depends on voice and text, 60 ms a
    character (at least 300 ms), with no zero sample, so silence around it is unambiguous."""
    seed = int.from_bytes(hashlib.sha256(f"{voice}|{text}".encode()).digest()[:4], "big")
    freq = 180 + seed % 400
    n = int(sample_rate * max(0.3, 0.06 * len(text)))
    out = bytearray()
    for i in range(n):
        s = int(9000 * math.sin(2 * math.pi * freq * i / sample_rate))
        if s == 0:
            s = 1
        out += s.to_bytes(2, "little", signed=True)
    return bytes(out)


@dataclass
class TaskRecord:
    task_id: str
    model: str
    parameters: dict[str, Any]
    texts: list[str] = field(default_factory=list)
    outcome: str = "running"  # running | finished | failed | dropped | stalled
    streaming: str = "duplex"  # duplex (CosyVoice) | out (Sambert) | realtime (Qwen)
    started: bool = False  # task-started was sent
    first_audio_at: float | None = None  # loop.time() the first audio frame was sent


@dataclass
class ConnectionRecord:
    opened_at: float
    authorization: str
    path: str = PATH
    tasks: list[TaskRecord] = field(default_factory=list)
    closed_at: float | None = None


class FakeDashScope:
    """Start with `await fake.start()`; `fake.url` is the inference URL to configure."""

    def __init__(
        self,
        api_key: str = "sk-test-0123456789abcdef",
        *,
        first_packet_delay_s: float = 0.0,
        task_started_delay_s: float = 0.0,
        chunk_bytes: int = 4800,
        idle_timeout_s: float = 60.0,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.api_key = api_key
        self.first_packet_delay_s = first_packet_delay_s
        # The reference: wait for task-started before continue-task. With a delay here, a
        # client that does not wait sends its text first, and the task fails.
        self.task_started_delay_s = task_started_delay_s
        self.refused: list[int] = []  # HTTP statuses of refused handshakes, in order
        self._starting: set[asyncio.Task[None]] = set()
        self.chunk_bytes = chunk_bytes
        self.idle_timeout_s = idle_timeout_s
        self.refuse_connections = False
        self.refuse_next = 0  # this many of the next handshakes refused (a route that recovers)
        # The service need not say a text the same way twice: with vary_takes, the n-th
        # synthesis of a text (n > 1) is pcm_for(text, take_voice(voice, n)).
        self.vary_takes = False
        # Samples added to each response's speech, so its length is no round number (not a
        # multiple of 60 ms, nor of a resampler's block).
        self.tail_samples = 0
        # While set to an unset Event, audio stops after each speech's first chunk until the
        # test sets it: "still speaking" for as long as a test needs, at any CPU speed.
        self.hold: asyncio.Event | None = None
        self._takes: dict[tuple[str, str], int] = {}
        self.handshake_delay_s = 0.0  # a slow route: time before the upgrade is answered
        self.chunk_interval_s = 0.0  # pace between audio chunks (0: as fast as possible)
        self.connections: list[ConnectionRecord] = []
        self.handshakes = 0
        self.handshakes_in_flight = 0
        self.max_handshakes_in_flight = 0
        self.idle_closes = 0  # connections the server closed for idleness
        self._cut_next: int | None = None
        self._open: set[ServerConnection] = set()
        self._host = host
        self._tls = tls  # served over TLS (wss://), as the service is
        self._port = port
        self._server: Server | None = None
        self.task_done = asyncio.Condition()

    @property
    def url(self) -> str:
        return f"{self._scheme}://{self._host}:{self._port}{PATH}"

    @property
    def realtime_url(self) -> str:
        """The Qwen-TTS Realtime endpoint; clients add ?model=."""
        return f"{self._scheme}://{self._host}:{self._port}{REALTIME_PATH}"

    @property
    def _scheme(self) -> str:
        return "ws" if self._tls is None else "wss"

    @property
    def tasks(self) -> list[TaskRecord]:
        return [t for c in self.connections for t in c.tasks]

    async def start(self) -> str:
        self._server = await websockets.serve(
            self._handle,
            self._host,
            self._port,
            process_request=self._check_request,
            max_size=None,
            close_timeout=1,
            ssl=self._tls,
        )
        self._port = self._server.sockets[0].getsockname()[1]
        return self.url

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def wait_for(self, predicate: Any, timeout: float = 10) -> None:
        """Wait until `predicate()` holds; checked whenever a connection or task changes."""
        async with asyncio.timeout(timeout):
            async with self.task_done:
                await self.task_done.wait_for(predicate)

    def cut_next_task(self, after_chunks: int = 1) -> None:
        """The next task's connection is cut, without a close frame, after this many chunks."""
        self._cut_next = after_chunks

    def _take(self, text: str, voice: str) -> str:
        """The voice a text is said in this time: the same every time unless vary_takes."""
        n = self._takes[(text, voice)] = self._takes.get((text, voice), 0) + 1
        return take_voice(voice, n) if self.vary_takes else voice

    def kill_connections(self) -> None:
        for ws in list(self._open):
            ws.transport.abort()

    def open_connections(self) -> list[ConnectionRecord]:
        return [c for c in self.connections if c.closed_at is None]

    async def _notify(self) -> None:
        async with self.task_done:
            self.task_done.notify_all()

    async def wait_tasks(self, count: int, timeout: float = 10) -> list[TaskRecord]:
        """Wait until `count` tasks have ended (any outcome)."""
        async with asyncio.timeout(timeout):
            async with self.task_done:
                await self.task_done.wait_for(
                    lambda: sum(t.outcome != "running" for t in self.tasks) >= count
                )
        return self.tasks

    async def _check_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        self.handshakes += 1
        self.handshakes_in_flight += 1
        self.max_handshakes_in_flight = max(
            self.max_handshakes_in_flight, self.handshakes_in_flight
        )
        await self._notify()
        try:
            if self.handshake_delay_s:
                await asyncio.sleep(self.handshake_delay_s)
            return self._verdict(connection, request)
        finally:
            self.handshakes_in_flight -= 1
            await self._notify()

    def _verdict(self, connection: ServerConnection, request: Request) -> Response | None:
        response = self._refusal(connection, request)
        if response is not None:
            self.refused.append(response.status_code)
        return response

    def _refusal(self, connection: ServerConnection, request: Request) -> Response | None:
        if self.refuse_next > 0:
            self.refuse_next -= 1
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "unavailable\n")
        if self.refuse_connections:
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "unavailable\n")
        url = urlsplit(request.path)
        if url.path.rstrip("/") not in (PATH, REALTIME_PATH):
            return connection.respond(http.HTTPStatus.NOT_FOUND, "no such endpoint\n")
        if url.path.rstrip("/") == REALTIME_PATH and not parse_qs(url.query).get("model"):
            return connection.respond(http.HTTPStatus.BAD_REQUEST, "Model is required\n")
        auth = request.headers.get("Authorization", "")
        scheme, _, key = auth.partition(" ")
        if scheme.lower() != "bearer" or key != self.api_key:
            return connection.respond(http.HTTPStatus.UNAUTHORIZED, "Invalid API-key provided.\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        url = urlsplit(ws.request.path)
        record = ConnectionRecord(
            time.monotonic(), ws.request.headers["Authorization"], url.path.rstrip("/")
        )
        self.connections.append(record)
        self._open.add(ws)
        await self._notify()
        try:
            if record.path == REALTIME_PATH:
                await self._serve_qwen(ws, record, parse_qs(url.query)["model"][0])
            else:
                await self._serve(ws, record)
        except websockets.ConnectionClosed:
            pass
        finally:
            record.closed_at = time.monotonic()
            self._open.discard(ws)
            for task in record.tasks:
                if task.outcome == "running":
                    task.outcome = "dropped"
            async with self.task_done:
                self.task_done.notify_all()

    async def _serve(self, ws: ServerConnection, record: ConnectionRecord) -> None:
        task: TaskRecord | None = None
        speech: asyncio.Task[str] | None = None  # audio for the texts so far, in order
        while True:
            try:
                async with asyncio.timeout(None if task else self.idle_timeout_s):
                    raw = await ws.recv()
            except TimeoutError:
                self.idle_closes += 1
                await ws.close(1000, "idle timeout")  # the service's 60 s idle rule
                return
            if isinstance(raw, bytes):
                await self._fail(ws, task, "InvalidParameter", "binary frames are not accepted")
                return
            try:
                message = json.loads(raw)
                header = message["header"]
                action = header["action"]
                task_id = header["task_id"]
                payload = message.get("payload", {})
            except (ValueError, KeyError, TypeError):
                await self._fail(ws, task, "InvalidParameter", "malformed message")
                return
            if action == "run-task":
                problem = self._check_run_task(record, task, header, payload)
                if problem:
                    await self._fail(ws, None, "InvalidParameter", problem, task_id=task_id)
                    return
                task = TaskRecord(
                    task_id, payload["model"], payload["parameters"], streaming=header["streaming"]
                )
                record.tasks.append(task)
                speech = None
                if self.task_started_delay_s and header["streaming"] == "duplex":
                    starting = asyncio.create_task(self._start_later(ws, task))
                    self._starting.add(starting)
                    starting.add_done_callback(self._starting.discard)
                else:
                    task.started = True
                    await ws.send(_event("task-started", task_id))
                if header["streaming"] == "out":  # Sambert: the whole text came with run-task
                    text = payload["input"]["text"]
                    task.texts.append(text)
                    if not await self._end_task(
                        ws, task, await self._synthesize(ws, task, text, None)
                    ):
                        return
                    task = None
            elif task is None or task_id != task.task_id:
                await self._fail(
                    ws,
                    task,
                    "InvalidParameter",
                    f"Invalid action('{action}')! Please follow the protocol!",
                    task_id=task_id,
                )
                return
            elif not task.started:
                await self._fail(
                    ws,
                    task,
                    "InvalidParameter",
                    f"{action} before task-started: wait for task-started",
                )
                return
            elif action == "continue-task":
                text = payload.get("input", {}).get("text")
                if not isinstance(text, str):
                    await self._fail(ws, task, "InvalidParameter", "continue-task without text")
                    return
                if task.parameters.get("enable_ssml") and task.texts:
                    await self._fail(
                        ws, task, "InvalidParameter", "Text request limit violated, expected 1."
                    )
                    return
                task.texts.append(text)
                # Duplex: audio for each text starts as soon as it arrives, in order.
                speech = asyncio.create_task(self._synthesize(ws, task, text, speech))
            elif action == "finish-task" and task.streaming == "duplex":
                if not await self._end_task(ws, task, await speech if speech else "finished"):
                    return
                task = None
            else:
                await self._fail(ws, task, "InvalidParameter", f"unknown action {action!r}")
                return

    async def _start_later(self, ws: ServerConnection, task: TaskRecord) -> None:
        await asyncio.sleep(self.task_started_delay_s)  # the service's time to start a task
        if task.outcome == "running":
            task.started = True
            with contextlib.suppress(websockets.ConnectionClosed):
                await ws.send(_event("task-started", task.task_id))

    async def _end_task(self, ws: ServerConnection, task: TaskRecord, outcome: str) -> bool:
        """Record the task's outcome and, if it finished, say task-finished; whether the
        connection lives on."""
        task.outcome = outcome
        async with self.task_done:
            self.task_done.notify_all()
        if outcome in ("failed", "dropped"):
            return False
        if outcome == "stalled":
            await ws.wait_closed()  # hold the connection open, say nothing more
            return False
        usage = {"characters": sum(len(t) for t in task.texts)}
        # Sambert's task-finished repeats the last sentence (its SDK reads the output as one).
        output = (
            {"sentence": {"begin_time": 0, "end_time": 0, "words": []}}
            if task.streaming == "out"
            else {}
        )
        payload = {"output": output, "usage": usage}
        await ws.send(_event("task-finished", task.task_id, payload=payload))
        return True

    def _check_run_task(
        self,
        record: ConnectionRecord,
        task: TaskRecord | None,
        header: dict[str, Any],
        payload: dict[str, Any],
    ) -> str | None:
        if task is not None:
            return "Invalid action('run-task')! Please follow the protocol!"
        model = payload.get("model")
        sambert = isinstance(model, str) and model.startswith("sambert-")
        if header.get("streaming") != ("out" if sambert else "duplex"):
            return f"header.streaming must be {'out' if sambert else 'duplex'} for {model}"
        if not _TASK_ID.match(str(header.get("task_id"))):
            return "header.task_id is invalid"
        if any(t.task_id == header["task_id"] for t in self.tasks):
            return "task_id is already in use"
        for key, value in (
            ("task_group", "audio"),
            ("task", "tts"),
            ("function", "SpeechSynthesizer"),
        ):
            if payload.get(key) != value:
                return f"payload.{key} must be {value}"
        params = payload.get("parameters")
        if not isinstance(payload.get("model"), str) or not isinstance(params, dict):
            return "payload.model and payload.parameters are required"
        if sambert:
            text = payload.get("input", {}).get("text")
            if not isinstance(text, str) or not text:
                return "payload.input.text is required"
        elif not isinstance(params.get("voice"), str):
            return "parameters.voice is required"
        if params.get("format", "mp3") not in ("pcm", "wav", "mp3", "opus"):
            return "parameters.format is invalid"
        if params.get("sample_rate", 22050) not in _SAMPLE_RATES:
            return f"parameters.sample_rate must be one of {', '.join(map(str, _SAMPLE_RATES))}"
        for key, lo, hi in (("rate", 0.5, 2.0), ("pitch", 0.5, 2.0), ("volume", 0, 100)):
            value = params.get(key)
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not lo <= value <= hi
            ):
                return f"parameters.{key} must be {lo:g}-{hi:g} (got {value!r})"
        if params.get("text_type", "PlainText") != "PlainText":
            return "parameters.text_type must be PlainText"
        return None

    async def _synthesize(
        self, ws: ServerConnection, task: TaskRecord, text: str, before: asyncio.Task[str] | None
    ) -> str:
        if before is not None:
            outcome = await before
            if outcome != "finished":
                return outcome
        try:
            return await self._send_speech(ws, task, text, first=before is None)
        except websockets.ConnectionClosed:
            return "dropped"

    async def _send_speech(
        self, ws: ServerConnection, task: TaskRecord, text: str, *, first: bool
    ) -> str:
        if "[fail]" in text:
            await self._fail(ws, task, "InternalError", "synthesis failed (fake [fail] marker)")
            return "failed"
        if not text:
            return "finished"
        if first and self.first_packet_delay_s:
            await _pause(ws, self.first_packet_delay_s)  # the model's time to first audio
        params = task.parameters
        pcm = pcm_for(
            text,
            self._take(text, params.get("voice") or task.model),
            params.get("sample_rate", 22050),
        )
        cut_after, self._cut_next = (self._cut_next, None) if first else (None, self._cut_next)
        if cut_after == 0:
            ws.transport.abort()
            return "dropped"
        await ws.send(
            _event(
                "result-generated",
                task.task_id,
                payload={"output": {"sentence": {"begin_time": 0, "end_time": 0, "words": []}}},
            )
        )
        for offset in range(0, len(pcm), self.chunk_bytes):
            if offset and self.chunk_interval_s:
                await asyncio.sleep(self.chunk_interval_s)
            if offset and self.hold is not None:
                await self.hold.wait()
            if task.first_audio_at is None:
                task.first_audio_at = asyncio.get_running_loop().time()
            await ws.send(pcm[offset : offset + self.chunk_bytes])
            if "[stall]" in text:
                return "stalled"
            if "[drop]" in text or (
                cut_after is not None and offset // self.chunk_bytes + 1 >= cut_after
            ):
                ws.transport.abort()  # no close frame, as when a route dies
                return "dropped"
        return "finished"

    # --- Qwen-TTS Realtime ---------------------------------------------------------------

    async def _serve_qwen(self, ws: ServerConnection, record: ConnectionRecord, model: str) -> None:
        """One session per connection: session.created, then the client's events until
        session.finish, which flushes the buffer, ends with session.finished and closes."""
        legacy = model.startswith("qwen-tts-realtime")
        session: dict[str, Any] = {
            "object": "realtime.session",
            "mode": "server_commit",
            "model": model,
            "voice": "Cherry",
            "response_format": "pcm",
            "sample_rate": 24000,
            "id": "sess_" + uuid.uuid4().hex,
        }
        task = TaskRecord(session["id"], model, session, streaming="realtime")
        record.tasks.append(task)
        await ws.send(_qwen("session.created", session=dict(session)))
        buffer, started = "", False
        speech: asyncio.Task[str] | None = None

        async def respond(text: str) -> None:
            nonlocal speech
            speech = asyncio.create_task(self._qwen_response(ws, task, text, speech))

        while True:
            try:
                async with asyncio.timeout(self.idle_timeout_s):
                    raw = await ws.recv()
            except TimeoutError:
                self.idle_closes += 1
                await ws.close(1000, "idle timeout")
                return
            if speech is not None and speech.done() and speech.result() != "finished":
                return await self._qwen_ended(ws, task, speech.result())
            try:
                event = json.loads(raw)
                kind = event["type"]
                if not isinstance(event.get("event_id"), str):
                    raise KeyError("event_id")
            except (ValueError, KeyError, TypeError):
                await ws.send(
                    _qwen_error(
                        "invalid_request_error",
                        "invalid_event",
                        "events are JSON objects with type and event_id",
                    )
                )
                continue
            if kind == "session.update":
                problem = (
                    None
                    if not started
                    else "Session update error: session already started or finished or failed."
                )
                update = event.get("session")
                if problem is None:
                    problem = _check_qwen_session(update, legacy)
                if problem:
                    await ws.send(
                        _qwen_error(
                            "invalid_request_error", "invalid_value", problem, param="session"
                        )
                    )
                    continue
                session.update(update)
                task.parameters = session
                await ws.send(_qwen("session.updated", session=dict(session)))
                await self._notify()
            elif kind == "input_text_buffer.append":
                text = event.get("text")
                if not isinstance(text, str):
                    await ws.send(
                        _qwen_error(
                            "invalid_request_error",
                            "invalid_value",
                            "text must be a string",
                            param="text",
                        )
                    )
                    continue
                if "[invalid]" in text:
                    await ws.send(
                        _qwen_error(
                            "invalid_request_error",
                            "invalid_value",
                            "text refused (fake [invalid] marker)",
                            param="text",
                        )
                    )
                    continue
                started = True
                task.texts.append(text)
                buffer += text
                if session["mode"] == "server_commit" and _SENTENCE_END.search(buffer):
                    await respond(buffer)  # the server decides: at a sentence end
                    buffer = ""
            elif kind == "input_text_buffer.commit":
                if not buffer:
                    await ws.send(
                        _qwen_error(
                            "invalid_request_error", "invalid_value", "input text buffer is empty"
                        )
                    )
                    continue
                item = "item_" + uuid.uuid4().hex
                await ws.send(_qwen("input_text_buffer.committed", item_id=item))
                await respond(buffer)
                buffer = ""
            elif kind == "input_text_buffer.clear":
                buffer = ""
                await ws.send(_qwen("input_text_buffer.cleared"))
            elif kind == "session.finish":
                if buffer:
                    await respond(buffer)
                return await self._qwen_ended(ws, task, await speech if speech else "finished")
            else:
                await ws.send(
                    _qwen_error(
                        "invalid_request_error",
                        "invalid_value",
                        f"unknown event type {kind!r}",
                        param="type",
                    )
                )

    async def _qwen_ended(self, ws: ServerConnection, task: TaskRecord, outcome: str) -> None:
        task.outcome = outcome
        await self._notify()
        if outcome == "stalled":
            await ws.wait_closed()
            return
        if outcome == "finished":
            await ws.send(_qwen("session.finished"))
            await ws.close(1000, "session finished")

    async def _qwen_response(
        self, ws: ServerConnection, task: TaskRecord, text: str, before: asyncio.Task[str] | None
    ) -> str:
        """One response for a committed text: created, item, audio deltas, done."""
        first = before is None
        if before is not None:
            outcome = await before
            if outcome != "finished":
                return outcome
        try:
            if "[fail]" in text:
                task.outcome = "failed"
                await ws.send(
                    _qwen_error(
                        "server_error", "internal_error", "synthesis failed (fake [fail] marker)"
                    )
                )
                await ws.close(1011, "internal error")
                return "failed"
            if first and self.first_packet_delay_s:
                await _pause(ws, self.first_packet_delay_s)
            session = task.parameters
            rid, item = "resp_" + uuid.uuid4().hex, "item_" + uuid.uuid4().hex
            await ws.send(_qwen("response.created", response={"id": rid, "status": "in_progress"}))
            await ws.send(
                _qwen(
                    "response.output_item.added",
                    response_id=rid,
                    output_index=0,
                    item={"id": item, "type": "message", "role": "assistant"},
                )
            )
            await ws.send(
                _qwen(
                    "response.content_part.added",
                    response_id=rid,
                    item_id=item,
                    output_index=0,
                    content_index=0,
                    part={"type": "audio"},
                )
            )
            pcm = pcm_for(text, self._take(text, session["voice"]), session["sample_rate"])
            pcm += pcm[: 2 * self.tail_samples]
            cut_after, self._cut_next = (self._cut_next, None) if first else (None, self._cut_next)
            if cut_after == 0:
                ws.transport.abort()
                return "dropped"
            for offset in range(0, len(pcm), self.chunk_bytes):
                if offset and self.chunk_interval_s:
                    await asyncio.sleep(self.chunk_interval_s)
                delta = base64.b64encode(pcm[offset : offset + self.chunk_bytes]).decode()
                await ws.send(
                    _qwen(
                        "response.audio.delta",
                        response_id=rid,
                        item_id=item,
                        output_index=0,
                        content_index=0,
                        delta=delta,
                    )
                )
                if "[stall]" in text:
                    task.outcome = "stalled"
                    return "stalled"
                n = offset // self.chunk_bytes + 1
                if "[drop]" in text or (cut_after is not None and n >= cut_after):
                    ws.transport.abort()
                    return "dropped"
            await ws.send(
                _qwen(
                    "response.audio.done",
                    response_id=rid,
                    item_id=item,
                    output_index=0,
                    content_index=0,
                )
            )
            await ws.send(
                _qwen(
                    "response.content_part.done",
                    response_id=rid,
                    item_id=item,
                    output_index=0,
                    content_index=0,
                )
            )
            await ws.send(
                _qwen(
                    "response.output_item.done",
                    response_id=rid,
                    output_index=0,
                    item={"id": item, "status": "completed"},
                )
            )
            await ws.send(
                _qwen(
                    "response.done",
                    response={
                        "id": rid,
                        # [incomplete]: the service ends the response without finishing it
                        "status": "incomplete" if "[incomplete]" in text else "completed",
                        "usage": {"characters": len(text)},
                    },
                )
            )
            return "finished"
        except websockets.ConnectionClosed:
            return "dropped"

    async def _fail(
        self,
        ws: ServerConnection,
        task: TaskRecord | None,
        code: str,
        message: str,
        *,
        task_id: str | None = None,
    ) -> None:
        if task is not None:
            task.outcome = "failed"
        await ws.send(
            json.dumps(
                {
                    "header": {
                        "task_id": task_id or (task.task_id if task else ""),
                        "event": "task-failed",
                        "error_code": code,
                        "error_message": message,
                        "attributes": {},
                    },
                    "payload": {},
                }
            )
        )
        # The service closes the connection after a failure; it cannot be reused.
        await ws.close(1011, "task failed")


async def _pause(ws: ServerConnection, seconds: float) -> None:
    """Wait, as the model would, unless the connection closes first (nobody to send to)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(ws.wait_closed(), seconds)


def _event(name: str, task_id: str, payload: dict[str, Any] | None = None) -> str:
    return json.dumps(
        {"header": {"task_id": task_id, "event": name, "attributes": {}}, "payload": payload or {}}
    )


def _qwen(kind: str, **fields: Any) -> str:
    return json.dumps({"event_id": "event_" + uuid.uuid4().hex, "type": kind, **fields})


def _qwen_error(kind: str, code: str, message: str, param: str | None = None) -> str:
    error = {"type": kind, "code": code, "message": message}
    if param:
        error["param"] = param
    return _qwen("error", error=error)


def _check_qwen_session(update: Any, legacy: bool) -> str | None:
    """The documented session fields and ranges; None when the update is valid."""
    if not isinstance(update, dict):
        return "session must be an object"
    voice = update.get("voice")
    if voice is not None and (not isinstance(voice, str) or voice.startswith("no-such")):
        return f"Invalid value: voice {voice!r} does not exist"
    if update.get("mode", "server_commit") not in ("server_commit", "commit"):
        return "Invalid value: mode"
    if update.get("response_format", "pcm") != "pcm":
        return "Invalid value: response_format (this fake speaks pcm)"
    rate = update.get("sample_rate", 24000)
    if rate not in ((24000,) if legacy else QWEN_RATES):
        return f"Invalid value: sample_rate {rate}"
    if update.get("language_type", "Auto") not in QWEN_LANGUAGES:
        return "Invalid value: language_type"
    for key in ("speech_rate", "pitch_rate"):
        value = update.get(key, 1.0)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.5 <= value <= 2:
            return f"Invalid value: {key}"
    volume = update.get("volume", 50)
    if isinstance(volume, bool) or not isinstance(volume, int) or not 0 <= volume <= 100:
        return "Invalid value: volume"
    return None
