"""Home Assistant's own voice: the daemon's Wyoming server, driven by the `wyoming` client
library as Home Assistant drives it, speaking the fake cloud's exact PCM."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from wyoming.audio import AudioChunk, AudioStart
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event, async_write_event
from wyoming.info import Describe, Info
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeVoice,
)

from edge_tts.text import split_sentences

from conftest import Capture, DaemonProcess, Home, Served, edge_tts, split_speech
from fake_dashscope import FakeDashScope, pcm_for

QWEN = {"engine": "qwen", "model": "qwen3-tts-flash-realtime", "voice": "Cherry"}
SAMBERT = {"engine": "sambert", "model": "sambert-zhichu-v1"}
EVERY_ENGINE = [  # (voice, its profile over the test config's, the fake's speaker for it)
    ("default", None, "longanyang"),  # CosyVoice: one task, a continue-task per sentence
    ("butler", QWEN, "Cherry"),  # Qwen: one session
    ("zhichu", SAMBERT, "sambert-zhichu-v1"),  # Sambert: a task per sentence
]


@dataclass
class Heard:
    """What a client got back: the events in order and the audio they carried."""

    events: list[Event] = field(default_factory=list)

    @property
    def types(self) -> list[str]:
        return [e.type for e in self.events]

    @property
    def audio(self) -> bytes:
        return b"".join(
            AudioChunk.from_event(e).audio for e in self.events if AudioChunk.is_type(e.type)
        )

    @property
    def errors(self) -> list[Error]:
        return [Error.from_event(e) for e in self.events if Error.is_type(e.type)]


async def read_until(client: AsyncTcpClient, *ends: str, timeout: float = 10) -> Heard:
    """Every event until one of the `ends` types (or an error, or the end of the connection)."""
    heard = Heard()
    async with asyncio.timeout(timeout):
        while (event := await client.read_event()) is not None:
            heard.events.append(event)
            if event.type in ends or Error.is_type(event.type):
                break
    return heard


async def one_shot(served: Served, text: str, voice: str | None = None) -> Heard:
    async with served.client() as client:
        wanted = SynthesizeVoice(name=voice) if voice else None
        await client.write_event(Synthesize(text=text, voice=wanted).event())
        return await read_until(client, "audio-stop")


def expected(text: str, voice: str = "longanyang") -> bytes:
    """The fake's audio for a text sent sentence by sentence."""
    return b"".join(pcm_for(piece, voice) for piece in split_sentences(text))


# --- describe ----------------------------------------------------------------------------------


async def test_describe_lists_every_voice_profile_with_streaming(
    serve: Callable[..., Awaitable[Served]],
) -> None:
    served = await serve(voices__butler=QWEN, voices__offline={"engine": "piper"})
    async with served.client() as client:
        await client.write_event(Describe().event())
        heard = await read_until(client, "info")
    info = Info.from_event(heard.events[-1])
    (program,) = info.tts
    assert program.supports_synthesize_streaming is True
    voices = {v.name: v for v in program.voices}
    assert set(voices) == {"default", "bright", "butler", "offline"}
    assert voices["default"].attribution.name == "Alibaba Cloud Model Studio"
    assert "en" in voices["default"].languages and "zh" in voices["butler"].languages
    # The offline voice says its language as the cloud ones do too: an English pipeline
    # offers it.
    assert voices["offline"].languages == ["en_US", "en"]
    assert voices["butler"].description == "butler (qwen3-tts-flash-realtime, Cherry)"


# --- one-shot -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("voice", "profile", "speaker"), EVERY_ENGINE)
async def test_synthesize_streams_the_clouds_exact_pcm_for_each_engine(
    serve: Callable[..., Awaitable[Served]],
    dashscope: FakeDashScope,
    voice: str,
    profile: dict[str, str] | None,
    speaker: str,
) -> None:
    served = await serve(**({f"voices__{voice}": profile} if profile else {}))
    text = "The washing machine has finished. Please empty it."
    heard = await one_shot(served, text, voice)
    assert heard.types[0] == "audio-start" and heard.types[-1] == "audio-stop", heard.types
    start = AudioStart.from_event(heard.events[0])
    assert (start.rate, start.width, start.channels) == (24000, 2, 1)
    whole = speaker == "sambert-zhichu-v1"  # Sambert takes its text whole
    assert heard.audio == (pcm_for(text, speaker) if whole else expected(text, speaker))
    assert heard.types.count("audio-chunk") > 2  # handed on as the cloud sends it


async def test_a_phrase_asked_twice_comes_from_the_cache_the_second_time(
    serve: Callable[..., Awaitable[Served]], dashscope: FakeDashScope
) -> None:
    served = await serve()
    first = await one_shot(served, "Good morning.")
    tasks = len(dashscope.tasks)
    second = await one_shot(served, "Good morning.")
    assert first.audio == second.audio == pcm_for("Good morning.")
    assert len(dashscope.tasks) == tasks  # not asked of the cloud again


async def test_the_fallback_voice_speaks_when_the_cloud_cannot(
    serve: Callable[..., Awaitable[Served]], dashscope: FakeDashScope
) -> None:
    served = await serve(
        voices__offline={"engine": "piper"},
        fallback_voice="offline",
    )
    heard = await one_shot(served, "This one [fail] breaks.")
    assert heard.errors == []
    assert heard.types[-1] == "audio-stop" and len(heard.audio) > 24000  # Piper said it


# --- streaming -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("voice", "profile", "speaker"), EVERY_ENGINE)
async def test_streamed_text_is_spoken_while_it_is_still_arriving(
    serve: Callable[..., Awaitable[Served]],
    dashscope: FakeDashScope,
    voice: str,
    profile: dict[str, str] | None,
    speaker: str,
) -> None:
    served = await serve(**({f"voices__{voice}": profile} if profile else {}))
    async with served.client() as client:
        await client.write_event(SynthesizeStart(voice=SynthesizeVoice(name=voice)).event())
        for piece in ["The front", " door is", " open. ", "It has been"]:
            await client.write_event(SynthesizeChunk(text=piece).event())
        # The first sentence is complete: its audio comes before the text ends.
        first = await read_until(client, "audio-chunk")
        assert first.types == ["audio-start", "audio-chunk"], first.types
        await client.write_event(SynthesizeChunk(text=" open for ten minutes.").event())
        # Home Assistant also sends the whole text once, for servers that do not stream.
        whole = "The front door is open. It has been open for ten minutes."
        await client.write_event(Synthesize(text=whole).event())
        await client.write_event(SynthesizeStop().event())
        rest = await read_until(client, "synthesize-stopped")
    assert rest.types[-2:] == ["audio-stop", "synthesize-stopped"], rest.types
    assert first.audio + rest.audio == expected(whole, speaker)
    if profile is None:  # one CosyVoice task, a continue-task per sentence
        (task,) = [t for t in dashscope.tasks if t.texts]
        assert task.texts == ["The front door is open. ", "It has been open for ten minutes."]


async def test_a_writer_thinking_longer_than_the_stall_timeout_is_not_a_stall(
    serve: Callable[..., Awaitable[Served]],
) -> None:
    """An LLM may pause between sentences for longer than dashscope.stall_timeout_s (1 s
    here): the service owes no audio then, so the stream goes on."""
    served = await serve()
    first_pcm = pcm_for("First. ")
    async with served.client() as client:
        await client.write_event(SynthesizeStart().event())
        await client.write_event(SynthesizeChunk(text="First. ").event())
        heard = Heard()
        async with asyncio.timeout(10):
            while len(heard.audio) < len(first_pcm):
                event = await client.read_event()
                assert event is not None
                heard.events.append(event)
        await asyncio.sleep(1.5)  # the model thinking: the time passing is what is tested
        await client.write_event(SynthesizeChunk(text="Second.").event())
        await client.write_event(SynthesizeStop().event())
        rest = await read_until(client, "synthesize-stopped")
    assert heard.errors == rest.errors == []
    assert heard.audio + rest.audio == first_pcm + pcm_for("Second.")


async def test_a_stream_the_cloud_fails_before_any_audio_is_said_by_the_fallback_voice(
    serve: Callable[..., Awaitable[Served]], dashscope: FakeDashScope
) -> None:
    served = await serve(voices__offline={"engine": "piper"}, fallback_voice="offline")
    async with served.client() as client:
        await client.write_event(SynthesizeStart().event())
        await client.write_event(SynthesizeChunk(text="This one [fail] breaks. ").event())
        await client.write_event(SynthesizeChunk(text="And this goes on.").event())
        await client.write_event(SynthesizeStop().event())
        heard = await read_until(client, "synthesize-stopped", timeout=60)
    assert heard.errors == [] and heard.types[-1] == "synthesize-stopped"
    # Piper said all of it, the sentence the cloud failed on included (~1 s of speech each).
    assert len(heard.audio) > 2 * 24000
    assert pcm_for("And this goes on.") not in heard.audio
    assert [t.outcome for t in dashscope.tasks if t.texts] == ["failed"]


async def test_streaming_events_need_no_describe_first(
    serve: Callable[..., Awaitable[Served]],
) -> None:
    served = await serve()
    async with served.client() as client:
        await client.write_event(SynthesizeStart().event())
        await client.write_event(SynthesizeChunk(text="Hello there.").event())
        await client.write_event(SynthesizeStop().event())
        heard = await read_until(client, "synthesize-stopped")
    assert heard.errors == [] and heard.audio == pcm_for("Hello there.")


# --- several clients ------------------------------------------------------------------------------


async def test_clients_at_once_each_get_their_own_speech(
    serve: Callable[..., Awaitable[Served]], dashscope: FakeDashScope, home: Home
) -> None:
    served = await serve()
    texts = [f"Client number {n} is here." for n in range(4)]
    heard = await asyncio.gather(*(one_shot(served, t) for t in texts))
    assert [h.errors for h in heard] == [[]] * 4, [h.types for h in heard]
    assert [h.audio for h in heard] == [pcm_for(t) for t in texts]
    # The kept connection served one; the others had connections of their own.
    await home.log.wait_for(lambda: home.log.stats[-1]["wyoming"]["cloud"]["extra"] >= 1)


async def test_an_announcement_keeps_its_warm_connection_while_assist_is_speaking(
    serve: Callable[..., Awaitable[Served]], home: Home, capture: Capture
) -> None:
    """Assist's reply is mid-stream (the model still writing) when an announcement comes:
    the announcement speaks at once on the warm connection, and the reply goes on."""
    served = await serve()
    async with served.client() as client:
        await client.write_event(SynthesizeStart().event())
        await client.write_event(SynthesizeChunk(text="Let me think about that. ").event())
        first = await read_until(client, "audio-chunk")
        await home.say({"text": "The doorbell is ringing.", "id": "bell"})
        assert (await home.log.outcome("bell"))["event"] == "finished"
        assert (await home.log.event("bell", "started"))["connection"] == "warm"
        assert split_speech(capture.read())[1] == pcm_for("The doorbell is ringing.")
        await client.write_event(SynthesizeChunk(text="It is sunny.").event())
        await client.write_event(SynthesizeStop().event())
        rest = await read_until(client, "synthesize-stopped")
    assert first.audio + rest.audio == expected("Let me think about that. It is sunny.")


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("events", "code", "says"),
    [
        (
            [Synthesize(text="Hi.", voice=SynthesizeVoice(name="ghost")).event()],
            "unknown-voice",
            "no voice named 'ghost'",
        ),
        ([Synthesize(text="   ").event()], "empty-text", "text is empty"),
        ([Synthesize(text="x" * 201).event()], "text-too-long", "announcements.max_chars"),
        (
            [SynthesizeChunk(text="Hi.").event()],
            "out-of-order",
            "synthesize-chunk outside a stream",
        ),
        ([SynthesizeStop().event()], "out-of-order", "synthesize-stop outside a stream"),
        (
            [SynthesizeStart().event(), SynthesizeStart().event()],
            "out-of-order",
            "synthesize-start inside a stream",
        ),
        (
            [SynthesizeStart().event()] + [SynthesizeChunk(text="y" * 60).event()] * 4,
            "text-too-long",
            "announcements.max_chars",
        ),
        ([Event(type="synthesize", data={"text": 5})], "bad-event", "no text"),
    ],
)
async def test_bad_requests_get_an_error_and_the_server_goes_on(
    serve: Callable[..., Awaitable[Served]],
    dashscope: FakeDashScope,
    home: Home,
    events: list[Event],
    code: str,
    says: str,
) -> None:
    served = await serve()
    async with served.client() as client:
        for event in events:
            await client.write_event(event)
        heard = await read_until(client, "error")
    (error,) = heard.errors
    assert error.code == code and says in error.text, error
    # The server (and the daemon) speak the next good request...
    assert (await one_shot(served, "Still here.")).audio == pcm_for("Still here.")
    # ...and nothing refused is left counted as being spoken.
    await home.log.wait_for(
        lambda: (
            (home.log.stats[-1].get("wyoming") or {}).get("clients") == 0
            and home.log.stats[-1]["wyoming"]["speaking"] == 0
        )
    )


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\xff garbage\n",
        b'{"type": "synthesize", "data_length": "ten"}\n',
        b'{"type": "synthesize", "payload_length": 99}\nshort',
        b'{"type": "audio-chunk", "data_length": 5000000}\n' + b"x" * (2 << 20),
        b"x" * 200_000,  # a header line with no end
    ],
)
async def test_garbage_on_the_socket_ends_that_client_only(
    serve: Callable[..., Awaitable[Served]], garbage: bytes
) -> None:
    served = await serve()
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    try:
        writer.write(garbage)
        with contextlib.suppress(OSError):
            await writer.drain()
            writer.write_eof()
        async with asyncio.timeout(10):
            with contextlib.suppress(OSError):  # reset (ECONNRESET, ENOTCONN): bytes unread
                await reader.read()  # the server ends this connection
    finally:
        writer.close()
    assert (await one_shot(served, "Still here.")).audio == pcm_for("Still here.")
    assert served.daemon.running


async def test_a_client_gone_mid_stream_leaves_no_task_or_connection_open(
    serve: Callable[..., Awaitable[Served]], dashscope: FakeDashScope, home: Home
) -> None:
    served = await serve()
    dashscope.hold = asyncio.Event()  # after its first chunk, the cloud waits for the test
    client = served.client()
    await client.connect()
    await client.write_event(SynthesizeStart().event())
    await client.write_event(SynthesizeChunk(text="A long story begins. ").event())
    assert (await read_until(client, "audio-chunk")).types == ["audio-start", "audio-chunk"]
    await client.disconnect()
    dashscope.hold.set()
    await home.log.wait_for(
        lambda: (
            (home.log.stats[-1].get("wyoming") or {}).get("clients") == 0
            and home.log.stats[-1]["wyoming"]["speaking"] == 0
        )
    )
    (task,) = [t for t in dashscope.tasks if t.texts]
    await dashscope.wait_for(lambda: task.outcome != "running")
    assert task.outcome == "dropped"
    assert (await one_shot(served, "Next one.")).audio == pcm_for("Next one.")


async def test_check_shows_whether_the_wyoming_port_answers(
    serve: Callable[..., Awaitable[Served]], home: Home
) -> None:
    served = await serve()
    run = await edge_tts("check", "-c", str(served.daemon.config))
    assert f"ok   wyoming 127.0.0.1:{served.port} answers (2 voices)" in run.out, run.all
    await served.daemon.stop()
    await home.log.wait_for(lambda: home.log.availability[-1:] == ["offline"])
    run = await edge_tts("check", "-c", str(served.daemon.config))
    assert f"info wyoming: nothing answers on 127.0.0.1:{served.port}" in run.out, run.all


async def test_a_port_taken_by_another_server_leaves_announcements_working(
    daemon_with: Callable[..., Awaitable[DaemonProcess]], home: Home, capture: Capture
) -> None:
    """wyoming-piper also listens on 10200: edge-tts says why it cannot, and speaks on."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        await daemon_with(
            wyoming={"enabled": True, "host": "127.0.0.1", "port": port, "zeroconf": False}
        )
        await home.log.wait_for(
            lambda: any((s.get("wyoming") or {}).get("problem") for s in home.log.stats)
        )
        problem = home.log.stats[-1]["wyoming"]["problem"]
        assert f"cannot listen on 127.0.0.1:{port}" in problem
        await home.say({"text": "Still speaking.", "id": "on"})
        assert (await home.log.outcome("on"))["event"] == "finished"
        assert split_speech(capture.read())[1] == pcm_for("Still speaking.")


# --- fuzz ------------------------------------------------------------------------------------

FUZZ_CONNECTIONS = 150

wyoming_events = st.one_of(
    st.builds(lambda: Describe().event()),
    st.builds(
        lambda text, voice: Synthesize(text=text, voice=voice).event(),
        st.text(max_size=80),
        st.none() | st.builds(SynthesizeVoice, name=st.sampled_from(["default", "ghost", ""])),
    ),
    st.builds(
        lambda voice: SynthesizeStart(voice=voice).event(),
        st.none() | st.builds(SynthesizeVoice, name=st.sampled_from(["default", "x"])),
    ),
    st.builds(lambda text: SynthesizeChunk(text=text).event(), st.text(max_size=40)),
    st.builds(lambda: SynthesizeStop().event()),
    st.builds(
        Event,
        type=st.sampled_from(["synthesize", "synthesize-chunk", "audio-chunk", "ping", "??"]),
        data=st.dictionaries(
            st.sampled_from(["text", "voice", "rate", "x"]),
            st.none()
            | st.integers()
            | st.text(max_size=10)
            | st.lists(st.integers(), max_size=3)
            | st.dictionaries(
                st.sampled_from(["name", "language", "speaker"]),
                st.none() | st.integers() | st.sampled_from(["default", "name", "en"]),
            ),
            max_size=3,
        ),
        payload=st.none() | st.binary(max_size=20),
    ),
)


def conversations() -> list[list[Event] | bytes]:
    """FUZZ_CONNECTIONS conversations (generated reproducibly): lists of events of every kind
    in any order with any data, and raw bytes."""
    found: list[list[Event] | bytes] = []

    @settings(
        max_examples=FUZZ_CONNECTIONS,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        deadline=None,
    )
    @given(st.lists(wyoming_events, max_size=8) | st.binary(max_size=300))
    def collect(conversation: list[Event] | bytes) -> None:
        found.append(conversation)

    collect()
    return found[:FUZZ_CONNECTIONS]


async def test_generated_conversations_never_end_the_server(
    serve: Callable[..., Awaitable[Served]], home: Home
) -> None:
    served = await serve()
    for conversation in conversations():
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        try:
            if isinstance(conversation, bytes):
                writer.write(conversation)
            else:
                for event in conversation:
                    await async_write_event(event, writer)
            with contextlib.suppress(OSError):
                await writer.drain()
                writer.write_eof()  # nothing more: the server finishes, then ends the connection
            async with asyncio.timeout(20):
                with contextlib.suppress(OSError):
                    await reader.read()
        finally:
            writer.close()
    await home.log.wait_for(lambda: home.log.stats[-1]["wyoming"]["clients"] == 0)
    assert served.daemon.running and b"Traceback" not in served.daemon.stderr
    assert (await one_shot(served, "Still here.")).audio == pcm_for("Still here.")


async def test_a_sigterm_mid_stream_stops_the_daemon_cleanly_and_in_time(
    serve: Callable[..., Awaitable[Served]], dashscope: FakeDashScope, home: Home
) -> None:
    served = await serve()
    dashscope.hold = asyncio.Event()  # the reply's audio is still coming when systemd stops us
    async with served.client() as client:
        await client.write_event(SynthesizeStart().event())
        await client.write_event(SynthesizeChunk(text="A long reply begins. ").event())
        assert (await read_until(client, "audio-chunk")).types == ["audio-start", "audio-chunk"]
        code = await served.daemon.stop(stop_timeout=5)  # the unit's TimeoutStopSec
        assert code == 0, served.daemon.stderr[-3000:]
        told = await read_until(client, "audio-stop")  # told, not cut
        assert [(e.code, e.text) for e in told.errors] == [STOPPED_MID_WAY]
        assert await client.read_event() is None  # the client's connection was ended
    assert home.log.availability[-1] == "offline"
    dashscope.hold.set()


STOPPED_MID_WAY = (
    "restarting",
    "edge-tts stopped its voice server mid-way (a restart, or a reload of its config): ask again",
)


async def served_past(served: Served, text: str = "Served.", timeout: float = 10) -> Heard:
    """A well-behaved request, asked again while the server says it is busy (as it does
    until a client in the way has waited a second): what it heard once served."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                async with served.client() as client:
                    await client.write_event(Synthesize(text=text).event())
                    heard = await read_until(client, "audio-stop")
            except ConnectionError:  # told it is busy and hung up on before it asked
                continue
            if [e.code for e in heard.errors] != ["busy"]:
                return heard


async def test_a_flood_of_idle_connections_does_not_keep_a_request_out(
    serve: Callable[..., Awaitable[Served]], home: Home
) -> None:
    """Someone holding 16 sockets open, asking nothing: a newcomer takes the place of the one
    idle the longest (once it has been for a second; until then it is told it is busy).
    (Silent ones are also closed after two minutes.)"""
    served = await serve()
    held = [await asyncio.open_connection("127.0.0.1", served.port) for _ in range(16)]
    await home.log.wait_for(lambda: home.log.stats[-1]["wyoming"]["clients"] == 16)
    heard = await served_past(served)
    assert heard.audio == pcm_for("Served.") and not heard.errors
    assert b"16 clients already; wyoming client 1 (idle for " in served.daemon.stderr
    for _, writer in held:
        writer.close()
    await home.log.wait_for(lambda: home.log.stats[-1]["wyoming"]["clients"] == 0)


async def test_clients_that_never_read_their_audio_are_dropped_and_do_not_keep_others_out(
    serve: Callable[..., Awaitable[Served]], home: Home
) -> None:
    """Sixteen clients ask for long texts and never read (their receive windows shut): the
    server's writes wait on them. A well-behaved one takes the place of one stalled the
    longest, and each stalled one is dropped once it has taken nothing for 15 s."""
    served = await serve()
    text = "A long reply that nobody reads. " * 6  # 11 s of audio: more than a socket holds
    stalled = []
    for _ in range(16):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", served.port))
        _, writer = await asyncio.open_connection(sock=sock)
        await async_write_event(Synthesize(text=text).event(), writer)
        stalled.append(writer)
    await home.log.wait_for(lambda: home.log.stats[-1]["wyoming"]["speaking"] == 16, timeout=30)
    heard = await served_past(served, timeout=30)
    assert heard.audio == pcm_for("Served.") and not heard.errors
    assert b"(stalled in a write for " in served.daemon.stderr
    await home.log.wait_for(lambda: home.log.stats[-1]["wyoming"]["clients"] == 0, timeout=40)
    assert b"took none of its audio for 15 s; dropped" in served.daemon.stderr
    for writer in stalled:
        writer.close()


async def test_a_reload_that_restarts_the_voice_server_tells_a_stream_under_way(
    serve: Callable[..., Awaitable[Served]], dashscope: FakeDashScope, home: Home
) -> None:
    """New voices restart the Wyoming server: a stream being spoken gets an error saying so,
    not a silent cut; the next request is served with the new config."""
    served = await serve()
    dashscope.hold = asyncio.Event()  # the reply's audio is still coming at the reload
    async with served.client() as client:
        await client.write_event(SynthesizeStart().event())
        await client.write_event(SynthesizeChunk(text="A reply begins. ").event())
        await read_until(client, "audio-chunk")
        config = yaml.safe_load(served.daemon.config.read_text())
        config["voices"]["calm"] = dict(config["voices"]["default"], voice="longanran")
        served.daemon.config.write_text(yaml.safe_dump(config))
        served.daemon.reload()
        told = await read_until(client, "audio-stop")
        assert [(e.code, e.text) for e in told.errors] == [STOPPED_MID_WAY]
    dashscope.hold.set()
    await home.log.wait_for(lambda: home.log.stats[-1]["wyoming"]["listening"])
    assert (await served_past(served)).audio == pcm_for("Served.")
    assert (await one_shot(served, "Served again.")).audio == pcm_for("Served again.")


@pytest.mark.parametrize(
    "sent",
    [
        b"[" * 30_000 + b"]" * 30_000 + b"\n",  # nested past what json can read
        b'{"type": "synthesize", "data": ' + b"[" * 30_000 + b"]" * 30_000 + b"}\n",
        b'{"type": "synthesize", "data_length": 100000000000000000000000}\n',
    ],
)
async def test_expected_garbage_is_a_one_line_warning_and_an_error_not_a_traceback(
    serve: Callable[..., Awaitable[Served]], sent: bytes
) -> None:
    served = await serve()
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(sent)
    if b"data_length" in sent:
        writer.write_eof()  # what it claimed never comes
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert b'"code": "bad-event"' in answer or b'"bad-event"' in answer, answer[:200]
    assert (await one_shot(served, "Still served.")).audio == pcm_for("Still served.")
    assert b"Traceback" not in served.daemon.stderr and b"ERROR" not in served.daemon.stderr
