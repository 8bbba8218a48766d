"""Qwen-TTS Realtime announce latency with a session made ready ahead of time, against the
official SDK in the same run.

    .venv/bin/python bench/qwen_session.py [-n 20] [--rtt-ms 0 50]

From the MQTT publish to the first PCM byte handed to the audio device, with the fake cloud
answering its first audio 300 ms after the text is committed (its "model time"):
  (a) edge-tts, a Qwen voice as the default voice, announcements spaced so the next session
      is ready (each announcement uses one session; the keeper readies the next at once),
  (b) edge-tts, announcements back to back (the next one published as the last ends),
and the dashscope SDK's QwenTtsRealtime: cold (connect, session.update, text, commit) and
with the session set up beforehand (from the text to the first delta).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from harness import Row, bench_config, broker, over_round_trips, running_daemon, sdk_rows

FIRST_PACKET_MS = 300.0
TEXT = "Door open."
VOICE = {"engine": "qwen", "model": "qwen3-tts-flash-realtime", "voice": "Cherry"}


def realtime(url: str) -> str:
    return url.replace("/api-ws/v1/inference", "/api-ws/v1/realtime")


async def ours(url: str, n: int) -> list[Row]:
    spaced, burst = (
        Row("(a) edge-tts, Qwen session made ready"),
        Row("(b) edge-tts, Qwen, back to back"),
    )
    with broker() as b, tempfile.TemporaryDirectory() as tmp:
        config = bench_config(
            Path(tmp),
            b,
            url,
            dashscope={"realtime_url": realtime(url)},
            voices={"default": VOICE},
            cache={"max_mb": 0},
        )
        async with running_daemon(config) as d:
            qwen = d.daemon.cloud.qwen
            await d.announce(TEXT)  # opens the audio device
            for _ in range(n):
                await asyncio.wait_for(
                    qwen.keeper_for_voice(
                        config.voices["default"], config.audio.sample_rate
                    ).wait_warm(),
                    10,
                )
                spaced.values.append(await d.announce(TEXT))
            for _ in range(n):
                burst.values.append(await d.announce(TEXT))
            stats = qwen.stats()[0]
            print(
                f"  qwen sessions: {stats['opened']} opened, {stats['reused']} ready when "
                f"needed, {stats['waited']} waited, {stats['failures']} failures",
                file=sys.stderr,
            )
    return [spaced, burst]


def sdk(url: str, n: int) -> list[Row]:
    return sdk_rows(
        "sdk_qwen_first_audio.py",
        realtime(url),
        n,
        TEXT,
        {
            "cold": "dashscope SDK QwenTtsRealtime, cold",
            "ready": "dashscope SDK QwenTtsRealtime, session set up beforehand",
        },
    )


async def both(url: str, n: int) -> list[Row]:
    return await ours(url, n) + sdk(url, n)


if __name__ == "__main__":
    asyncio.run(
        over_round_trips(
            __doc__,
            both,
            f"Qwen-TTS Realtime time to first audio, fake cloud first audio {FIRST_PACKET_MS:g} ms",
            FIRST_PACKET_MS,
        )
    )
