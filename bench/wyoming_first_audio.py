"""Home Assistant's voice: time to the first audio-chunk over Wyoming, against the official
SDK's warm object pool in the same run.

    .venv/bin/python bench/wyoming_first_audio.py [-n 20] [--rtt-ms 0 50]

The daemon runs in this process with its Wyoming server on a free port and the phrase cache
off (every request goes to the cloud, as a new reply does). A client of the `wyoming`
library, as Home Assistant's, measures:
  (a) one-shot: from writing `synthesize` to the first `audio-chunk`,
  (b) streaming: from writing the `synthesize-chunk` that completes the first sentence (the
      stream started, half a sentence already sent) to the first `audio-chunk`,
and the dashscope SDK's time to first audio from a SpeechSynthesizerObjectPool (call() to
the first on_data), on the same fake cloud (first audio packet 300 ms after the text).
"""

from __future__ import annotations

import asyncio
import socket
import tempfile
import time
from pathlib import Path

from wyoming.audio import AudioChunk
from wyoming.client import AsyncTcpClient
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop

from harness import Row, bench_config, broker, over_round_trips, running_daemon, sdk_rows

FIRST_PACKET_MS = 300.0
TEXT = "Door open."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def first_chunk(client: AsyncTcpClient) -> None:
    while (event := await client.read_event()) is not None:
        if AudioChunk.is_type(event.type):
            return
    raise SystemExit("the server sent no audio")


async def drain(client: AsyncTcpClient, end: str) -> None:
    while (event := await client.read_event()) is not None and event.type != end:
        pass


async def one_shot(port: int) -> float:
    async with AsyncTcpClient("127.0.0.1", port) as client:
        start = time.monotonic()
        await client.write_event(Synthesize(text=TEXT).event())
        await first_chunk(client)
        ms = (time.monotonic() - start) * 1000
        await drain(client, "audio-stop")
    return ms


async def streamed(port: int) -> float:
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(SynthesizeStart().event())
        await client.write_event(SynthesizeChunk(text="Door").event())
        await asyncio.sleep(0.05)  # the model still writing
        start = time.monotonic()
        await client.write_event(SynthesizeChunk(text=" open. ").event())
        await first_chunk(client)
        ms = (time.monotonic() - start) * 1000
        await client.write_event(SynthesizeStop().event())
        await drain(client, "synthesize-stopped")
    return ms


async def ours(url: str, n: int) -> list[Row]:
    once = Row("(a) edge-tts Wyoming, synthesize → first audio-chunk, warm")
    stream = Row("(b) edge-tts Wyoming, sentence-completing chunk → first audio-chunk, warm")
    port = free_port()
    with broker() as b, tempfile.TemporaryDirectory() as tmp:
        config = bench_config(
            Path(tmp),
            b,
            url,
            cache={"max_mb": 0},
            wyoming={"enabled": True, "host": "127.0.0.1", "port": port, "zeroconf": False},
        )
        async with running_daemon(config) as d:
            while not d.daemon.wyoming.listening:  # noqa: ASYNC110 (a bench, not a test)
                await asyncio.sleep(0.01)
            await one_shot(port)  # its connection was opened at start; now it was used once
            for _ in range(n):
                await asyncio.sleep(0.3)  # spaced like the SDK's pool measurements
                once.values.append(await one_shot(port))
            for _ in range(n):
                await asyncio.sleep(0.3)
                stream.values.append(await streamed(port))
    return [once, stream]


def sdk(url: str, n: int) -> list[Row]:
    rows = sdk_rows(
        "sdk_first_audio.py",
        url,
        n,
        TEXT,
        {"cold": "dashscope SDK, cold", "pool": "dashscope SDK, warm from its object pool"},
    )
    return rows[1:]  # the pool is the reference; the cold row is in warm_connection.py


async def both(url: str, n: int) -> list[Row]:
    return await ours(url, n) + sdk(url, n)


if __name__ == "__main__":
    asyncio.run(
        over_round_trips(
            __doc__,
            both,
            f"Wyoming time to first audio, fake cloud first packet {FIRST_PACKET_MS:g} ms",
            FIRST_PACKET_MS,
        )
    )
