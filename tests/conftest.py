"""Fixtures that read like a user's setup: a Mosquitto broker, the DashScope service (faked
over a real WebSocket), a speaker (the ALSA `file` device), and a config file tying them up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml
from hypothesis import HealthCheck, settings
from wyoming.client import AsyncTcpClient

from fake_dashscope import FakeDashScope
from mosquitto import Broker, free_port

TESTS = Path(__file__).parent
ALSA_CONF = TESTS / "alsa" / "capture.conf"
API_KEY = "sk-test-0123456789abcdef"

# Property tests check what is generated, not how fast: a busy 2-core CI machine must not
# turn generation time into a failure.
settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")


def pytest_configure(config: pytest.Config) -> None:
    # Before anything loads PortAudio: every stream in this process and its children goes
    # to the ALSA file device.
    os.environ["ALSA_CONFIG_PATH"] = str(ALSA_CONF)
    os.environ.pop("DASHSCOPE_API_KEY", None)
    os.environ.pop("EDGE_TTS_CONFIG", None)


@pytest.fixture(autouse=True)
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's daemons keep their durable queue in a directory of the test's own."""
    path = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(path))
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    return path / "edge-tts"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


@asynccontextmanager
async def fake_cloud(**options: Any) -> AsyncIterator[FakeDashScope]:
    """The fake DashScope service, started and stopped; options as FakeDashScope takes them.
    It answers run-task a little late, as the service may: a client that sent its text
    before task-started would fail every test."""
    options.setdefault("task_started_delay_s", 0.01)
    fake = FakeDashScope(API_KEY, **options)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def dashscope() -> AsyncIterator[FakeDashScope]:
    async with fake_cloud() as fake:
        yield fake


class Capture:
    """What reached the ALSA output: raw 16-bit samples, as the file device wrote them."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> bytes:
        return self.path.read_bytes() if self.path.exists() else b""


@pytest.fixture
def capture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Capture:
    path = tmp_path / "alsa-out.raw"
    monkeypatch.setenv("EDGE_TTS_ALSA_CAPTURE", str(path))
    return Capture(path)


def fresh_python(code: str) -> str:
    """What `code` prints, run in a fresh interpreter from the project's root (for what an
    interpreter has loaded: this one has loaded everything the tests use). It must succeed."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=TESTS.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def split_speech(raw: bytes) -> tuple[int, bytes, int]:
    """(leading silent bytes, the speech with any silent gap padding removed, trailing silent
    bytes). The fake's speech has no zero sample, so silence is unambiguous."""
    samples = [raw[i : i + 2] for i in range(0, len(raw) - len(raw) % 2, 2)]
    zero = b"\x00\x00"
    lead = next((i for i, s in enumerate(samples) if s != zero), len(samples))
    trail = next((i for i, s in enumerate(reversed(samples)) if s != zero), len(samples))
    body = samples[lead : len(samples) - trail] if lead < len(samples) else []
    return lead * 2, b"".join(s for s in body if s != zero), trail * 2


def write_config(path: Path, broker: Broker, dashscope: FakeDashScope, **overrides: Any) -> Path:
    config: dict[str, Any] = {
        "device": {"name": "kitchen"},
        "mqtt": {"host": broker.host, "port": broker.port, "discovery_prefix": None},
        "dashscope": {
            "inference_url": dashscope.url,
            "keep_warm": True,
            "first_audio_timeout_s": 5,
            "stall_timeout_s": 1,
        },
        "voices": {
            "default": {
                "engine": "cosyvoice",
                "model": "cosyvoice-v3-flash",
                "voice": "longanyang",
            },
            "bright": {
                "engine": "cosyvoice",
                "model": "cosyvoice-v3-flash",
                "voice": "longxiaochun",
            },
        },
        "audio": {
            "device": "default",
            "sample_rate": 24000,
            "lead_in_ms": 100,
            "jitter_ms": 40,
            "keep_open_s": 0,
        },
        "announcements": {"max_chars": 200},
        "cache": {"dir": str(path.parent / "cache"), "max_mb": 50},
        # Off unless a test serves Home Assistant's voice (tests/test_wyoming.py): then on a
        # free port, never the machine's 10200.
        "wyoming": {"enabled": False},
    }
    for dotted, value in overrides.items():  # section__key=value, or key=value at the top
        if "__" not in dotted:
            config[dotted] = value
            continue
        section, key = dotted.split("__")
        config.setdefault(section, {})[key] = value
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class EventLog:
    """Every event, state and availability message the daemon published, in order."""

    events: list[dict[str, Any]] = field(default_factory=list)
    states: list[dict[str, Any]] = field(default_factory=list)
    availability: list[str] = field(default_factory=list)
    stats: list[dict[str, Any]] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def wait_for(self, predicate: Any, timeout: float = 15) -> None:
        async with asyncio.timeout(timeout):
            async with self.changed:
                await self.changed.wait_for(predicate)

    async def event(self, announcement_id: str, kind: str, timeout: float = 15) -> dict[str, Any]:
        def found() -> bool:
            return any(e["id"] == announcement_id and e["event"] == kind for e in self.events)

        await self.wait_for(found, timeout)
        return next(e for e in self.events if e["id"] == announcement_id and e["event"] == kind)

    async def outcome(self, announcement_id: str, timeout: float = 15) -> dict[str, Any]:
        """The finished or failed event of an announcement."""

        def ended() -> bool:
            return any(
                e["id"] == announcement_id and e["event"] in ("finished", "failed")
                for e in self.events
            )

        await self.wait_for(ended, timeout)
        return next(
            e
            for e in self.events
            if e["id"] == announcement_id and e["event"] in ("finished", "failed")
        )

    def of(self, announcement_id: str) -> list[str]:
        return [e["event"] for e in self.events if e["id"] == announcement_id]


class Home:
    """Home Assistant's side of MQTT: publishes announcements and records what comes back."""

    def __init__(self, client: aiomqtt.Client, log: EventLog) -> None:
        self.client = client
        self.log = log

    async def say(self, payload: str | bytes | dict[str, Any], device: str = "kitchen") -> None:
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        await self.client.publish(f"edge-tts/{device}/say", payload, qos=1)

    async def stop(self, device: str = "kitchen") -> None:
        await self.client.publish(f"edge-tts/{device}/stop", b"", qos=1)


async def record_messages(client: aiomqtt.Client, log: EventLog) -> None:
    """Append every event, state, stats and availability message the client receives."""
    async for message in client.messages:
        topic = str(message.topic)
        payload = message.payload
        assert isinstance(payload, bytes | bytearray)
        async with log.changed:
            if topic.endswith("/event"):
                log.events.append(json.loads(payload))
            elif topic.endswith("/state"):
                log.states.append(json.loads(payload))
            elif topic.endswith("/stats"):
                log.stats.append(json.loads(payload))
            elif topic.endswith("/availability"):
                log.availability.append(payload.decode())
            log.changed.notify_all()


@asynccontextmanager
async def home_assistant(broker: Broker, identifier: str = "home-assistant") -> AsyncIterator[Home]:
    """Home Assistant's MQTT client, subscribed to the kitchen's topics, recording them."""
    log = EventLog()
    async with aiomqtt.Client(broker.host, broker.port, identifier=identifier) as client:
        await client.subscribe("edge-tts/kitchen/#", qos=1)
        task = asyncio.create_task(record_messages(client, log))
        try:
            yield Home(client, log)
        finally:
            task.cancel()


@asynccontextmanager
async def mqtt_link(
    broker: Broker,
    device: str,
    groups: list[str] | None = None,
    take: Any = None,
    **options: Any,
) -> AsyncIterator[Any]:
    """The daemon's own broker session (an MqttLink) for `device`, connected, running until
    the block ends; messages to it go to `take` (an async function of the Incoming), or are
    forgotten. With `groups`: in those, with discovery and its note of subscriptions as the
    daemon has them; `options` for MqttLink."""
    from edge_tts.config import parse_config
    from edge_tts.discovery import announce
    from edge_tts.journal import state_dir
    from edge_tts.mqtt import MqttLink

    async def nothing(_: object) -> None:
        return None

    config = parse_config(
        {
            "device": {"name": device, "groups": groups or []},
            "mqtt": {"host": broker.host, "port": broker.port},
        }
    )
    noted = None if groups is None else state_dir() / f"subscriptions-{device}.json"
    link = MqttLink(config.mqtt, config.device, take or nothing, subscribed=noted, **options)
    if groups is not None:
        announce(link, config)
    task = asyncio.create_task(link.run())
    try:
        async with asyncio.timeout(10):
            await link.connected.wait()
        yield link
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
async def home(broker: Broker) -> AsyncIterator[Home]:
    async with home_assistant(broker) as h:
        yield h


class DaemonProcess:
    """`edge-tts serve` running as a user runs it, in its own process. Its stderr is read as
    it comes (a pipe left unread would block a talkative daemon); a stop that takes longer
    than `stop_timeout` kills it and fails the test."""

    def __init__(self, config: Path, env: dict[str, str], wrap: list[str] | None = None) -> None:
        self.config = config
        self.env = env
        self.wrap = wrap or []  # a command the daemon runs under (unshare: its own mounts)
        self.proc: asyncio.subprocess.Process | None = None
        self._stderr = bytearray()
        self._more = asyncio.Event()  # set when more of stderr has been read
        self._reader: asyncio.Task[None] | None = None

    @property
    def stderr(self) -> bytes:
        return bytes(self._stderr)

    async def start(self, home: Home) -> None:
        """Start it and wait until Home Assistant's side sees it online."""
        online = home.log.availability.count("online")
        await self.spawn()
        await home.log.wait_for(lambda: home.log.availability.count("online") > online)

    async def spawn(self) -> None:
        """Start it, waiting for nothing."""
        self.proc = await asyncio.create_subprocess_exec(
            *self.wrap,
            sys.executable,
            "-m",
            "edge_tts",
            "serve",
            "-c",
            str(self.config),
            env=self.env,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._drain(self.proc))

    async def _drain(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while chunk := await proc.stderr.read(65536):
            self._stderr += chunk
            del self._stderr[:-4_000_000]  # the tail is what a failure report needs
            self._more.set()

    async def logged(self, text: str, timeout: float = 10) -> None:
        """Until its log has said `text`."""
        async with asyncio.timeout(timeout):
            while text.encode() not in self._stderr:
                self._more.clear()
                await self._more.wait()

    async def stop(self, stop_timeout: float = 20) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.terminate()
        try:
            async with asyncio.timeout(stop_timeout):
                code = await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            await self._finish_reading()
            pytest.fail(f"edge-tts did not stop within {stop_timeout} s of SIGTERM; killed")
        await self._finish_reading()
        return code

    def reload(self) -> None:
        """SIGHUP: what `systemctl reload edge-tts` sends."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    async def kill(self) -> int:
        """SIGKILL: a crash or a power cut, as far as the process can tell."""
        assert self.proc is not None
        self.proc.kill()
        code = await self.proc.wait()
        await self._finish_reading()
        return code

    async def _finish_reading(self) -> None:
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


def configured_daemon(
    path: Path,
    broker: Broker,
    dashscope: FakeDashScope,
    *,
    key: str | None = API_KEY,
    env: dict[str, str] | None = None,
    **overrides: Any,
) -> DaemonProcess:
    """The daemon on the test config (written to `path`) with `overrides`, not yet started;
    with the fake's API key unless key=None, and `env` added to this process's."""
    config = write_config(path, broker, dashscope, **overrides)
    environment = dict(os.environ) | (env or {})
    if key is not None:
        environment["DASHSCOPE_API_KEY"] = key
    return DaemonProcess(config, environment)


@pytest.fixture
async def daemon(
    tmp_path: Path, broker: Broker, dashscope: FakeDashScope, home: Home, capture: Capture
) -> AsyncIterator[DaemonProcess]:
    """The daemon with a key, pointed at the broker, the fake cloud and the capture device."""
    config = write_config(tmp_path / "config.yaml", broker, dashscope)
    env = dict(os.environ, DASHSCOPE_API_KEY=API_KEY)
    proc = DaemonProcess(config, env)
    await proc.start(home)
    yield proc
    if proc.running:
        await proc.stop()


@pytest.fixture
async def daemon_with(
    tmp_path: Path, broker: Broker, dashscope: FakeDashScope, home: Home, capture: Capture
) -> AsyncIterator[Any]:
    """A factory: `await daemon_with(section__key=value, ...)` starts the daemon on the test
    config with those overrides; every daemon it started is stopped (or killed) at the end."""
    started: list[DaemonProcess] = []

    async def start(**overrides: Any) -> DaemonProcess:
        path = tmp_path / f"config-{len(started)}.yaml"
        proc = configured_daemon(path, broker, dashscope, **overrides)
        started.append(proc)
        await proc.start(home)
        return proc

    yield start
    for proc in started:
        if proc.running:
            await proc.stop()


@dataclass
class Served:
    """The daemon with its Wyoming server listening on `port`."""

    daemon: DaemonProcess
    port: int

    def client(self) -> AsyncTcpClient:
        return AsyncTcpClient("127.0.0.1", self.port)


@pytest.fixture
async def serve(
    daemon_with: Callable[..., Awaitable[DaemonProcess]], dashscope: FakeDashScope, home: Home
) -> Callable[..., Awaitable[Served]]:
    """Start the daemon with its Wyoming server on a free port; returns once it listens."""

    async def start(**overrides: Any) -> Served:
        port = free_port()
        daemon = await daemon_with(
            dashscope__realtime_url=dashscope.realtime_url,
            wyoming={"enabled": True, "host": "127.0.0.1", "port": port, "zeroconf": False}
            | overrides.pop("wyoming", {}),
            **overrides,
        )
        await home.log.wait_for(
            lambda: any((s.get("wyoming") or {}).get("listening") for s in home.log.stats)
        )
        return Served(daemon, port)

    return start


# --- the command line, run to its end ------------------------------------------------------


@dataclass
class Run:
    """A finished command: its exit code and output."""

    code: int
    out: str
    err: str

    @property
    def all(self) -> str:
        return self.out + self.err


async def edge_tts(
    *args: str,
    key: str | None = API_KEY,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> Run:
    """`edge-tts ARGS` as a user runs it (with the fake's API key unless key=None)."""
    env = dict(os.environ if env is None else env)
    if key is not None:
        env["DASHSCOPE_API_KEY"] = key
    return await command(sys.executable, "-m", "edge_tts", *args, env=env, cwd=cwd)


async def command(
    *argv: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 60
) -> Run:
    """Run a command to its end; its exit code and output."""
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())
