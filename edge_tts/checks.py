"""`edge-tts check`: config, broker, cloud and audio device, each with a clear verdict; and
warnings for voice profiles the reference says cannot work."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing

import aiomqtt
from wyoming.client import AsyncTcpClient
from wyoming.info import Describe, Info

from .clock import clock_state, describe
from .config import CLOUD_INFERENCE, Config, EngineName, Voice
from .engines import AudioWaitSettings, SynthesisRequest, drive_duplex
from .engines.cosyvoice import run_task
from .engines.piper import check_voice
from .engines.qwen import QwenEngine
from .errors import CloudUnavailable, SynthesisError, TaskFailed
from .keeper import ConnectionKeeper, ConnectionSettings
from .mqtt import Topics, describe_error, make_client
from .player import check_sounddevice
from .profiles import warnings as model_warnings
from .protocols.inference import Task
from .secret import Secret

Report = Callable[[str], object]


async def check_broker(config: Config) -> tuple[str | None, str | None]:
    """(problem, what the running daemon of this device last said about itself)."""
    m = config.mqtt
    try:
        async with asyncio.timeout(m.keepalive_s):
            async with make_client(m, timeout=10) as client:
                return None, await _daemon_status(
                    client, Topics.of(m.topic_prefix, config.device.name)
                )
    except aiomqtt.MqttError as exc:
        return f"broker {m.host}:{m.port}: {describe_error(exc)}", None
    except TimeoutError:
        return f"broker {m.host}:{m.port}: no answer", None


async def _daemon_status(client: aiomqtt.Client, topics: Topics) -> str:
    """The daemon's retained availability and stats, read without waiting on a guess: the
    broker sends retained messages before it echoes our own probe published after them."""
    probe = f"{topics.stats}/check-{uuid.uuid4().hex[:8]}"
    await client.subscribe([(topics.availability, 1), (topics.stats, 1)])
    await client.subscribe(probe, qos=1)
    await client.publish(probe, b"", qos=1)
    retained: dict[str, bytes] = {}
    async for message in client.messages:
        topic = str(message.topic)
        if topic == probe:
            break
        if isinstance(message.payload, bytes | bytearray):
            retained[topic] = bytes(message.payload)
    availability = retained.get(topics.availability, b"").decode(errors="replace")
    if availability != "online":
        return (
            f"the daemon is not running ({availability or 'never seen'} on {topics.availability})"
        )
    try:
        stats = json.loads(retained[topics.stats])
        cloud = stats["cloud"]
        return (
            f"the daemon is online since {stats['since']}: "
            f"{'warm connection' if cloud['warm'] else 'no warm connection'}; "
            f"{cloud['opened']} connections opened, {cloud['renewals']} renewals, "
            f"{cloud['reused']} announcements on a warm connection, {cloud['waited']} waited "
            f"for a handshake, {cloud['failures']} failures"
            + _task_failures(cloud)
            + (f" (last: {cloud['last_error']})" if cloud.get("last_error") else "")
            + _disk_problems(stats)
        )
    except (KeyError, ValueError, TypeError):
        return "the daemon is online (no stats published yet)"


def _task_failures(cloud: dict[str, object]) -> str:
    """Tasks the service failed or refused (a key refused at task level shows here), on the
    inference connection and every Qwen session, with the last one's reason."""
    sessions = cloud.get("qwen_sessions")
    stats = [cloud] + [
        s for s in (sessions if isinstance(sessions, list) else []) if isinstance(s, dict)
    ]
    total = sum(n for s in stats if isinstance(n := s.get("task_failures"), int))
    last = next((e for s in stats if (e := s.get("last_task_error"))), None)
    if not total:
        return ""
    return f", {total} tasks failed or refused by the service" + (
        f" (last: {last})" if last else ""
    )


def _disk_problems(stats: dict[str, object]) -> str:
    """What the daemon said about its disk: a cache not writing, a queue not durable."""
    said = []
    for part, what in (("cache", "cache"), ("queue", "queue journal")):
        section = stats.get(part)
        if isinstance(section, dict) and section.get("problem"):
            said.append(f"; {what}: {section['problem']}")
    return "".join(said)


async def check_cloud(config: Config, api_key: Secret | None) -> list[str]:
    """Prove each endpoint the voices use without synthesizing (or paying for) anything: the
    inference endpoint with an empty CosyVoice task for its first CosyVoice voice, and a Qwen
    session set up (and dropped) for each Qwen voice. Each problem names the endpoint and the
    voices it concerns, once however many voices share it."""
    ds = config.dashscope
    voices = list(config.voices.values())
    found: dict[tuple[str, str], list[str]] = {}  # (endpoint, problem) -> voices
    inference = [v for v in voices if v.engine in CLOUD_INFERENCE]
    if inference:
        cosy = next((v for v in inference if v.engine == EngineName.COSYVOICE), None)
        problem = await _check_inference(config, api_key, cosy)
        if problem:
            found[(ds.inference_url, problem)] = [v.name for v in inference]
    for voice in (v for v in voices if v.engine == EngineName.QWEN):
        qwen = QwenEngine(ds.realtime_url, api_key, ConnectionSettings.of(ds, keep_warm=False))
        keeper = qwen.keeper_for_voice(voice, config.audio.sample_rate)
        try:
            ws = await keeper.connect()  # connects and configures the session
            await ws.close()
        except CloudUnavailable as exc:
            found.setdefault((ds.realtime_url, _unavailable(exc)), []).append(voice.name)
    return [
        f"cloud {url} (voice{'s' if len(names) > 1 else ''} {', '.join(names)}): {problem}"
        for (url, problem), names in found.items()
    ]


def _unavailable(exc: CloudUnavailable) -> str:
    """The cloud's refusal, with what to do about it when it is ours to fix."""
    # The hint unless the reason says it already ("set X" beside "check X": once is enough).
    hint = exc.refused and exc.hint.partition(" ")[2] not in exc.reason
    return exc.reason + (f" ({exc.hint})" if hint else "")


async def _check_inference(
    config: Config, api_key: Secret | None, voice: Voice | None
) -> str | None:
    ds = config.dashscope
    keeper = ConnectionKeeper(ds.inference_url, api_key, ConnectionSettings.of(ds, keep_warm=False))
    try:
        ws = await keeper.connect()
    except CloudUnavailable as exc:
        return _unavailable(exc)
    if voice is None:
        await ws.close()
        return None
    try:
        # An empty task: run-task, then finish-task once started; nothing is synthesized.
        request = SynthesisRequest(text="", voice=voice, sample_rate=config.audio.sample_rate)
        task = Task(request.task_id, run_task(request))
        task.start()
        async with aclosing(drive_duplex(ws, task, _no_text(), AudioWaitSettings.of(ds))) as run:
            async for _ in run:
                pass
        return None
    except CloudUnavailable as exc:
        return _unavailable(exc)
    except TaskFailed as exc:
        return f"voice {voice.name!r} was refused: {exc.reason} (check voices.{voice.name})"
    except SynthesisError as exc:  # no answer in time, a message no protocol has
        return exc.reason
    finally:
        await ws.close()


async def _no_text() -> AsyncGenerator[str, None]:
    return
    yield


async def check_wyoming(config: Config) -> tuple[bool, str]:
    """(answered, what): whether the Wyoming server answers `describe` on its port."""
    w = config.wyoming
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(w.host, w.host)
    try:
        async with asyncio.timeout(5):
            async with AsyncTcpClient(host, w.port) as client:
                await client.write_event(Describe().event())
                while (event := await client.read_event()) is not None:
                    if Info.is_type(event.type):
                        voices = sum(len(p.voices) for p in Info.from_event(event).tts)
                        return True, f"wyoming {host}:{w.port} answers ({voices} voices)"
    except (OSError, TimeoutError) as exc:
        return False, f"nothing answers on {host}:{w.port} ({type(exc).__name__})"
    return False, f"{host}:{w.port} answered, but not as a Wyoming server"


def check_audio(config: Config) -> str | None:
    problem = check_sounddevice(config.audio)
    return f"audio: {problem}" if problem else None


async def run_checks(config: Config, api_key: Secret | None, report: Report) -> int:
    """Run every check, report each line, and return how many problems were found."""
    report(
        f"ok   config {config.source or '(built-in defaults)'}: device {config.device.name!r}, "
        f"{len(config.voices)} voice(s)"
    )
    broker_problem, daemon = await check_broker(config)
    results = [("broker", f"{config.mqtt.host}:{config.mqtt.port}", broker_problem)]
    cloud_voices = [v for v in config.voices.values() if v.engine != EngineName.PIPER]
    if cloud_voices:
        ds = config.dashscope
        urls = dict.fromkeys(
            ds.realtime_url if v.engine == EngineName.QWEN else ds.inference_url
            for v in cloud_voices
        )
        what = f"{' '.join(urls)} (voices {', '.join(v.name for v in cloud_voices)})"
        cloud_problems = await check_cloud(config, api_key)
        results += [("cloud", "", p) for p in cloud_problems] or [("cloud", what, None)]
    results.append(
        ("audio", f"device {config.audio.device!r}", await asyncio.to_thread(check_audio, config))
    )
    fallback = config.fallback_profile
    if fallback is not None and fallback.engine == EngineName.PIPER:
        problem = await asyncio.to_thread(check_voice, fallback.model)
        results.append(
            (
                "fallback",
                f"voice {fallback.name!r} (offline, Piper)",
                f"fallback voice {fallback.name!r}: {problem}" if problem else None,
            )
        )
    wyoming = await check_wyoming(config) if config.wyoming.enabled else None
    if wyoming is not None:
        answered, what = wyoming
        if answered:
            results.append(("wyoming", what.removeprefix("wyoming "), None))
        elif daemon and "is online" in daemon:  # the daemon runs: its server should answer
            results.append(("wyoming", "", f"wyoming: {what} (see the daemon's log)"))
        else:
            report(f"info wyoming: {what}; the daemon serves it while it runs")
    for warning in model_warnings(config):
        report(f"warn {warning}")
    # Groups (`all` is everyone's) start together only as well as the clocks agree.
    fine, clock = describe(await asyncio.to_thread(clock_state))
    report(f"ok   {clock}" if fine else f"warn {clock}")
    problems = 0
    for name, what, problem in results:
        if problem:
            problems += 1
            report(f"FAIL {problem}")
        else:
            report(f"ok   {name} {what}")
    if daemon:
        report(f"info {daemon}")
    return problems
