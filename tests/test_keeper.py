"""The warm connection: ready from start, renewed before the server's idle window ends (make
before break), replaced after any fault, backing off when the cloud is away."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import AsyncIterator

import pytest

from edge_tts.config import Voice
from edge_tts.engines import AudioWaitSettings, SynthesisRequest
from edge_tts.engines.cosyvoice import CosyVoiceEngine
from edge_tts.errors import CloudUnavailable, ConnectionLost, SynthesisError
from edge_tts.keeper import ConnectionKeeper, ConnectionSettings, _proxy
from edge_tts.secret import Secret

from conftest import API_KEY, fake_cloud
from fake_dashscope import FakeDashScope, pcm_for

VOICE = Voice(name="default", engine="cosyvoice", model="cosyvoice-v3-flash", voice="longanyang")
# The fake server's idle window, and the keeper's knowledge of it: DashScope's 60 s scaled
# down, wide enough that the keeper's margin (a quarter of it, 0.75 s) outlasts a handshake
# and the pauses of a loaded Pi (at 1.2 s, a 0.3 s margin failed once in a full run).
IDLE_S = 3.0


@pytest.fixture
async def idle_fake() -> AsyncIterator[FakeDashScope]:
    """A server that closes connections idle for IDLE_S, as DashScope does after 60 s."""
    async with fake_cloud(idle_timeout_s=IDLE_S) as fake:
        yield fake


class Warm:
    """A keeper running in the background, as the daemon runs it, and its engine."""

    def __init__(self, fake: FakeDashScope, *, key: str = API_KEY, keep_warm: bool = True) -> None:
        settings = ConnectionSettings(keep_warm, fake.idle_timeout_s, connect_timeout_s=2)
        self.keeper = ConnectionKeeper(fake.url, Secret(key), settings)
        self.engine = CosyVoiceEngine(self.keeper, AudioWaitSettings(3, 1))
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Warm:
        self.task = asyncio.create_task(self.keeper.run())
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.task is not None
        if not self.task.done():
            self.task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await self.task
        self.task.result() if not self.task.cancelled() else None  # re-raise what it died of
        await self.keeper.close()

    async def say(self, text: str) -> tuple[bytes, SynthesisRequest]:
        request = SynthesisRequest(text=text, voice=VOICE, sample_rate=24000)
        audio = b"".join([chunk async for chunk in self.engine.synthesize(request)])
        return audio, request


async def test_a_connection_is_open_from_start_before_any_announcement(
    dashscope: FakeDashScope,
) -> None:
    async with Warm(dashscope) as warm:
        await warm.keeper.wait_warm()
        audio, request = await warm.say("First of the day.")
    assert audio == pcm_for("First of the day.")
    assert request.trace.connection == "warm"
    assert (warm.keeper.stats.opened, warm.keeper.stats.waited) == (1, 0)


async def test_renewal_opens_the_new_connection_before_closing_the_old_one(
    idle_fake: FakeDashScope,
) -> None:
    fake = idle_fake
    async with Warm(fake) as warm:
        # More than an idle window passes in silence: two renewals.
        await fake.wait_for(lambda: fake.handshakes >= 3, timeout=IDLE_S * 4)
        audio, request = await warm.say("Hours later.")
        assert request.trace.connection == "warm"
        stats = warm.keeper.stats
        assert stats.renewals >= 2 and stats.waited == 0 and stats.lost == 0
    assert audio == pcm_for("Hours later.")
    assert fake.idle_closes == 0  # the server never had to close one for idleness
    # Make before break: from the first handshake on, some connection was always open.
    await fake.wait_for(lambda: not fake.open_connections())
    conns = sorted(fake.connections, key=lambda c: c.opened_at)
    covered_until = conns[0].closed_at
    for conn in conns[1:]:
        assert covered_until is not None and conn.opened_at < covered_until
        covered_until = max(covered_until, conn.closed_at or 0.0)
    # The announcement ran on a connection opened before it was asked for.
    assert len([c for c in fake.connections if c.tasks]) == 1


async def test_a_warm_connection_that_dies_idle_is_replaced(dashscope: FakeDashScope) -> None:
    async with Warm(dashscope) as warm:
        await warm.keeper.wait_warm()
        dashscope.kill_connections()  # no close frame, as when a route dies
        await dashscope.wait_for(lambda: dashscope.handshakes == 2)
        await warm.keeper.wait_warm()
        audio, request = await warm.say("Still here.")
    assert audio == pcm_for("Still here.")
    assert request.trace.connection == "warm"
    assert warm.keeper.stats.lost == 1


async def test_a_connection_cut_before_any_audio_is_replaced_and_the_announcement_completes(
    dashscope: FakeDashScope,
) -> None:
    text = "A sentence long enough to arrive in several chunks of audio."
    async with Warm(dashscope) as warm:
        await warm.keeper.wait_warm()
        dashscope.cut_next_task(after_chunks=0)
        audio, request = await warm.say(text)
    assert audio == pcm_for(text)
    assert request.trace.connection == "replaced"
    first, second = dashscope.tasks
    assert first.outcome == "dropped" and second.outcome == "finished"
    assert first.task_id != second.task_id


async def test_a_connection_cut_after_audio_is_left_to_the_caller_to_resume(
    dashscope: FakeDashScope,
) -> None:
    """Once audio was handed on, a second take would not fit the first (the service need
    not say a text the same way twice): the engine raises, the speaker resumes by sentence."""
    text = "A sentence long enough to arrive in several chunks of audio."
    async with Warm(dashscope) as warm:
        await warm.keeper.wait_warm()
        dashscope.cut_next_task(after_chunks=2)
        heard = bytearray()
        with pytest.raises(ConnectionLost):
            async for chunk in warm.engine.synthesize(SynthesisRequest(text, VOICE, 24000)):
                heard += chunk
    assert bytes(heard) == pcm_for(text)[: 2 * dashscope.chunk_bytes]
    assert [t.outcome for t in dashscope.tasks] == ["dropped"]


async def test_task_failed_retires_the_connection(dashscope: FakeDashScope) -> None:
    async with Warm(dashscope) as warm:
        await warm.keeper.wait_warm()
        with pytest.raises(SynthesisError, match="task failed"):
            await warm.say("This one [fail]s.")
        audio, _ = await warm.say("This one works.")
    assert audio == pcm_for("This one works.")
    failed, worked = dashscope.tasks
    failed_conn = next(c for c in dashscope.connections if failed in c.tasks)
    assert worked not in failed_conn.tasks


async def test_a_stalled_task_retires_the_connection(dashscope: FakeDashScope) -> None:
    async with Warm(dashscope) as warm:
        await warm.keeper.wait_warm()
        with pytest.raises(SynthesisError, match="no audio within"):
            await warm.say("Half a word [stall]")
        stalled = dashscope.connections[0]
        await dashscope.wait_for(lambda: stalled.closed_at is not None)
        audio, _ = await warm.say("After the stall.")
    assert audio == pcm_for("After the stall.")
    assert [t.texts for t in stalled.tasks] == [["Half a word [stall]"]]


async def test_unreachable_cloud_backs_off_then_recovers(dashscope: FakeDashScope) -> None:
    dashscope.refuse_connections = True
    attempts: list[float] = []
    loop = asyncio.get_running_loop()

    async with Warm(dashscope) as warm:
        for n in range(1, 5):
            await dashscope.wait_for(lambda n=n: dashscope.handshakes >= n, timeout=10)
            attempts.append(loop.time())
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        assert all(later > earlier * 1.2 for earlier, later in itertools.pairwise(gaps)), gaps
        assert warm.keeper.stats.failures >= 3
        dashscope.refuse_connections = False
        async with asyncio.timeout(15):
            await warm.keeper.wait_warm()
        audio, request = await warm.say("Back online.")
    assert audio == pcm_for("Back online.")
    assert request.trace.connection == "warm"
    assert dashscope.max_handshakes_in_flight == 1


async def test_an_announcement_during_the_handshake_shares_it(dashscope: FakeDashScope) -> None:
    dashscope.handshake_delay_s = 0.3
    async with Warm(dashscope) as warm:
        await dashscope.wait_for(lambda: dashscope.handshakes_in_flight == 1)
        audio, request = await warm.say("Right at start-up.")
    assert audio == pcm_for("Right at start-up.")
    assert request.trace.connection == "new"
    assert dashscope.handshakes == 1 and dashscope.max_handshakes_in_flight == 1


async def test_a_refused_key_is_reported_once_and_not_retried_in_a_loop(
    dashscope: FakeDashScope, caplog: pytest.LogCaptureFixture
) -> None:
    async with Warm(dashscope, key="sk-wrong-0000000000") as warm:
        for _ in range(3):
            with pytest.raises(CloudUnavailable, match=r"refused the API key \(HTTP 401\)"):
                await warm.say("Anyone there?")
        # The keeper's attempt at start (which the first announcement may share), one for
        # each announcement, and no retry loop in between.
        assert 3 <= dashscope.handshakes <= 4
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and "refused" in r.message]
    assert len(errors) == 1
    # Nothing our client logged, websockets' header dump at debug level included, shows the key.
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("edge_tts")]
    assert any("Authorization" in m for m in ours)
    assert not any("sk-wrong" in m for m in ours)


async def test_keep_warm_off_connects_on_demand_and_closes_after_use(
    dashscope: FakeDashScope,
) -> None:
    async with Warm(dashscope, keep_warm=False) as warm:
        assert warm.task is not None
        await warm.task  # nothing to keep: the background loop returns at once
        assert dashscope.handshakes == 0
        first, request = await warm.say("One.")
        assert request.trace.connection == "new"
        await dashscope.wait_for(lambda: not dashscope.open_connections())
        await warm.say("Two.")
        await dashscope.wait_for(lambda: not dashscope.open_connections())
    assert first == pcm_for("One.")
    assert len(dashscope.connections) == 2
    assert warm.keeper.stats.waited == 2


async def test_a_connection_about_to_idle_out_is_not_lent(dashscope: FakeDashScope) -> None:
    """Kept after a task, a connection is lent again only while the server's idle window
    has more than the lend margin left (here 1 s window, 0.1 s margin): past that, a fresh
    one is opened rather than risk the server closing it under the task. (No background
    renewal runs here, so only the lending rule decides.)"""
    keeper = ConnectionKeeper(
        dashscope.url, Secret(API_KEY), ConnectionSettings(idle_timeout_s=1.0)
    )
    engine = CosyVoiceEngine(keeper, AudioWaitSettings(3, 1))

    async def say(text: str) -> SynthesisRequest:
        request = SynthesisRequest(text=text, voice=VOICE, sample_rate=24000)
        assert b"".join([c async for c in engine.synthesize(request)]) == pcm_for(text)
        return request

    try:
        assert (await say("First.")).trace.connection == "new"
        assert (await say("At once again.")).trace.connection == "warm"  # well inside
        await asyncio.sleep(0.95)  # the passage of time is what is tested: 0.05 s left
        assert (await say("Too late for that one.")).trace.connection == "new"
    finally:
        await keeper.close()
    assert keeper.stats.reused == 1 and keeper.stats.opened == 2


class ConnectProxy:
    """An HTTP proxy that tunnels CONNECT, as a company's or a home lab's does, noting each
    tunnel's target."""

    def __init__(self) -> None:
        self.tunnels: list[str] = []
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> ConnectProxy:
        self._server = await asyncio.start_server(self._tunnel, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        method, target, _ = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")[0].split(b" ")
        assert method == b"CONNECT"
        self.tunnels.append(target.decode())
        host, port = target.decode().rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
            sink.close()

        with contextlib.suppress(OSError):
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.fixture
def no_proxy_named(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in os.environ:
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("no_proxy_named")
@pytest.mark.parametrize(
    ("environment", "through_it"),
    [
        ({"https_proxy": "{proxy}"}, True),
        ({"HTTPS_PROXY": "{proxy}", "NO_PROXY": "127.0.0.1"}, False),  # exempted: direct
    ],
)
async def test_a_proxy_named_in_the_environment_carries_the_connection(
    dashscope: FakeDashScope,
    monkeypatch: pytest.MonkeyPatch,
    environment: dict[str, str],
    through_it: bool,
) -> None:
    async with ConnectProxy() as proxy:
        for name, value in environment.items():
            monkeypatch.setenv(name, value.format(proxy=proxy.url))
        async with Warm(dashscope) as warm:
            audio, _ = await warm.say("Whichever way.")
    assert audio == pcm_for("Whichever way.")
    expected = {dashscope.url.split("/")[2]} if through_it else set()
    assert set(proxy.tunnels) == expected


@pytest.mark.usefixtures("no_proxy_named")
def test_the_proxy_lookup_runs_only_when_the_environment_names_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Looking finds nothing without one, but would load urllib.request: 1.5 MiB at idle."""
    assert _proxy() is None
    monkeypatch.setenv("HOME", "/root")
    assert _proxy() is None
    for name in ("https_proxy", "ALL_PROXY", "no_proxy"):
        with monkeypatch.context() as env:
            env.setenv(name, "http://proxy.lan:3128")
            assert _proxy() is True
