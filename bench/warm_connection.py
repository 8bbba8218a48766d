"""Announce latency with the warm connection, against the official SDK in the same run.

    .venv/bin/python bench/warm_connection.py [-n 20] [--rtt-ms 0 50]

From the MQTT publish to the first PCM byte handed to the audio device, with the fake cloud
answering its first audio packet 300 ms after the text (its "model time"):
  (a) the first announcement after the daemon starts,
  (b) warm announcements, one after another,
  (c) an announcement after more than two idle windows of silence (server idle timeout 2 s);
and the dashscope SDK's time to first audio (from call() to the first on_data) for a cold
SpeechSynthesizer and one borrowed from its SpeechSynthesizerObjectPool. Each network
condition runs with its own fake cloud; --rtt-ms adds round-trip time through a proxy.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from edge_tts.engines import SynthesisRequest

from harness import Row, bench_config, broker, over_round_trips, running_daemon, sdk_rows

FIRST_PACKET_MS = 300.0
IDLE_S = 2.0
TEXT = "Door open."


async def ours(url: str, n: int) -> list[Row]:
    first, warm, idle = (
        Row("(a) edge-tts, first after start"),
        Row("(b) edge-tts, warm"),
        Row(f"(c) edge-tts, after {2 * IDLE_S + 0.5:g} s idle (> 2 idle windows)"),
    )
    client = Row("(d) edge-tts CosyVoice client alone, warm: synthesize() to first chunk")
    with broker() as b, tempfile.TemporaryDirectory() as tmp:
        # The cache off: every announcement goes to the cloud, as a new phrase does.
        config = bench_config(
            Path(tmp), b, url, dashscope={"idle_timeout_s": IDLE_S}, cache={"max_mb": 0}
        )
        for _ in range(n):
            async with running_daemon(config) as d:
                first.values.append(await d.announce(TEXT))
        async with running_daemon(config) as d:
            await d.daemon.keeper.wait_warm()
            await d.announce(TEXT)  # the audio device opened; (a) measured that already
            for _ in range(n):
                warm.values.append(await d.announce(TEXT))
            for _ in range(n):
                await asyncio.sleep(2 * IDLE_S + 0.5)  # the silence is what is measured
                idle.values.append(await d.announce(TEXT))
            # The same measure as the SDK's rows: no MQTT, no player.
            engine = d.daemon.cloud.engines["cosyvoice"]
            voice = config.voices["default"]
            for _ in range(n):
                await asyncio.sleep(0.3)  # spaced like the SDK's pool measurements
                start = time.monotonic()
                audio = engine.synthesize(
                    SynthesisRequest(text=TEXT, voice=voice, sample_rate=24000)
                )
                await anext(audio)
                client.values.append((time.monotonic() - start) * 1000)
                async for _ in audio:
                    pass
            stats = d.daemon.keeper.stats
            print(
                f"  keeper: {stats.opened} opened, {stats.renewals} renewals, "
                f"{stats.waited} waited, {stats.lost} lost, {stats.failures} failures",
                file=sys.stderr,
            )
    return [first, warm, idle, client]


def sdk(url: str, n: int) -> list[Row]:
    return sdk_rows(
        "sdk_first_audio.py",
        url,
        n,
        TEXT,
        {
            "cold": "dashscope SDK, cold SpeechSynthesizer",
            "pool": "dashscope SDK, warm from its object pool",
        },
    )


async def both(url: str, n: int) -> list[Row]:
    return await ours(url, n) + sdk(url, n)


if __name__ == "__main__":
    asyncio.run(
        over_round_trips(
            __doc__,
            both,
            f"Time to first audio, fake cloud first packet {FIRST_PACKET_MS:g} ms",
            FIRST_PACKET_MS,
            idle_s=IDLE_S,
        )
    )
