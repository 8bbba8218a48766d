"""The offline fallback: announce latency with the cloud unreachable, and what the model costs
in memory.

    .venv/bin/python bench/fallback.py [-n 20]

Latency, from the MQTT publish to the first PCM byte handed to the audio device, with the
cloud's address refusing connections: (a) the Piper model preloaded, (b) loaded lazily on
each announcement (released right after), beside (c) the warm cloud in the same run (fake
cloud, first packet 300 ms). Memory: the resident set of `edge-tts serve` idle without the
model, with it loaded, and after it was released.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import tempfile
from pathlib import Path

import aiomqtt

from harness import (
    API_KEY,
    ROOT,
    Row,
    bench_config,
    broker,
    fake_cloud,
    running_daemon,
    table,
)

TEXT = "Door open."
OFFLINE = {
    "default": {"engine": "cosyvoice", "model": "cosyvoice-v3-flash", "voice": "longanyang"},
    "offline": {"engine": "piper"},
}


def closed_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"ws://127.0.0.1:{port}/api-ws/v1/inference"  # nothing listens there


async def latency(n: int) -> list[Row]:
    rows = []
    with broker() as b, tempfile.TemporaryDirectory() as tmp:
        for name, fallback in (
            ("(a) fallback, model preloaded", {"preload": True}),
            ("(b) fallback, model loaded lazily", {"release_after_s": 0.01}),
        ):
            config = bench_config(
                Path(tmp), b, closed_url(), voices=OFFLINE, fallback=fallback, cache={"max_mb": 0}
            )
            row = Row(name)
            async with running_daemon(config) as d:
                await d.announce(TEXT)  # the audio device opened
                for _ in range(n):
                    row.values.append(await d.announce(TEXT))
            rows.append(row)
        with fake_cloud(300) as url:
            config = bench_config(Path(tmp), b, url, voices=OFFLINE, cache={"max_mb": 0})
            row = Row("(c) warm cloud, first packet 300 ms")
            async with running_daemon(config) as d:
                await d.daemon.keeper.wait_warm()
                await d.announce(TEXT)
                for _ in range(n):
                    row.values.append(await d.announce(TEXT))
            rows.append(row)
    return rows


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def memory() -> str:
    with broker() as b, tempfile.TemporaryDirectory() as tmp:
        config = bench_config(
            Path(tmp), b, closed_url(), voices=OFFLINE, fallback={"release_after_s": 3}
        )
        env = dict(os.environ, DASHSCOPE_API_KEY=API_KEY)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edge_tts",
            "serve",
            "-c",
            str(config.source),
            env=env,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            async with aiomqtt.Client(b.host, b.port) as client:
                await client.subscribe("edge-tts/bench/#", qos=1)
                events = client.messages

                async def until(predicate: object) -> None:
                    async for m in events:
                        if predicate(str(m.topic), bytes(m.payload)):  # type: ignore[operator, arg-type]
                            return

                await until(lambda t, p: t.endswith("availability") and p == b"online")
                idle = rss_mb(proc.pid)
                await client.publish("edge-tts/bench/say", TEXT, qos=1)
                await until(
                    lambda t, p: (
                        t.endswith("/event") and json.loads(p)["event"] in ("finished", "failed")
                    )
                )
                loaded = rss_mb(proc.pid)
                await asyncio.sleep(4)  # past release_after_s: the release is what is measured
                released = rss_mb(proc.pid)
        finally:
            proc.terminate()
            await proc.wait()
    return (
        "### Resident memory of `edge-tts serve`\n\n"
        "| state | RSS MB |\n|---|---:|\n"
        f"| idle, offline model not loaded | {idle:.1f} |\n"
        f"| after a fallback announcement, model loaded | {loaded:.1f} |\n"
        f"| {3} s later, model released | {released:.1f} |\n"
    )


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-n", type=int, default=20)
    args = p.parse_args()
    rows = await latency(args.n)
    print(table("Time to first audio with the cloud unreachable (offline fallback)", rows))
    print(await memory())


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "bench"))
    asyncio.run(main())
