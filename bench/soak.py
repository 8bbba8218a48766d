"""Whether `edge-tts serve` keeps its memory over months of use: resident memory as hundreds
of announcements go through one daemon (a Pi's daemon runs for months; a few KiB kept per
announcement would be tens of MiB by then).

    .venv/bin/python bench/soak.py [-n 2] [--cycles 40] [--python PY] [--before DIR]

Each run starts the daemon as `bench/footprint.py` does (its own process, compiled, the
cloud the fake over ws://, the cache on, Home Assistant's discovery and voice off), reads its
resident memory once `online` (the reference: the same daemon before any announcement), then
sends cycles of ten messages, each awaited to its end: six new texts (the cloud, each
recorded in the cache), two repeated (cache hits), a malformed message and one naming an
unknown voice (each a `failed` event). Memory is read after every fifth cycle, 1 s after the
last announcement ended. The last rows: what the second half added per 100 messages (after
the first half, every buffer and cache a daemon keeps has had its chance to reach its size).
--before: another tree (an earlier commit checked out with `git worktree add`) measured too,
in the same run, after this one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import aiomqtt
from footprint import ROOT, rss_mib, serving

from harness import Row, broker, compiled, fake_cloud, table

EVERY = 5  # cycles between readings


async def outcome(client: aiomqtt.Client, announcement_id: str) -> str:
    """The terminal event of the announcement `announcement_id`."""
    async for m in client.messages:
        if not str(m.topic).endswith("/event"):
            continue
        event = json.loads(bytes(m.payload))  # type: ignore[arg-type]
        if event.get("id") == announcement_id and event["event"] in (
            "finished",
            "failed",
            "dropped",
            "stopped",
        ):
            return str(event["event"])
    raise RuntimeError("the broker connection ended")


async def one_run(
    tree: Path, python: str, url: str, host: str, port: int, cycles: int
) -> list[float]:
    """Resident memory (MiB) at `online`, then after every EVERY cycles."""
    with tempfile.TemporaryDirectory() as tmp:
        name = f"soak-{Path(tmp).name}"
        config = {
            "device": {"name": name},
            "mqtt": {"host": host, "port": port, "discovery_prefix": None},
            "dashscope": {"inference_url": url},
            "cache": {"dir": f"{tmp}/cache"},
            "voices": {
                "default": {
                    "engine": "cosyvoice",
                    "model": "cosyvoice-v3-flash",
                    "voice": "longanyang",
                },
            },
            "wyoming": {"enabled": False},
        }
        say = f"edge-tts/{name}/say"
        async with serving(tree, python, Path(tmp), config, {}) as (client, proc, log, _):
            await asyncio.sleep(2)  # settle: start-up done, the warm connection open
            readings = [rss_mib(proc.pid)]
            for cycle in range(cycles):
                messages = [
                    *[({"text": f"Item {cycle} {n}.", "id": f"c{cycle}n{n}"}, "finished")
                      for n in range(6)],
                    *[({"text": f"Again {n}.", "id": f"c{cycle}a{n}"}, "finished")
                      for n in range(2)],
                    ({"text": "Who?", "voice": "nobody", "id": f"c{cycle}v"}, "failed"),
                ]  # fmt: skip
                for body, expected in messages:
                    await client.publish(say, json.dumps(body).encode(), qos=1)
                    got = await outcome(client, str(body["id"]))
                    if got != expected:
                        raise RuntimeError(f"{body}: {got}, not {expected}\n{log.read_text()}")
                await client.publish(say, b'{"text": "broken', qos=1)  # no id: not awaited
                if (cycle + 1) % EVERY == 0:
                    await asyncio.sleep(1)
                    readings.append(rss_mib(proc.pid))
                    print(f"  {(cycle + 1) * 10} messages: {readings[-1]:.2f} MiB",
                          file=sys.stderr)  # fmt: skip
    return readings


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-n", type=int, default=2)
    p.add_argument("--cycles", type=int, default=40, help="of ten messages each")
    p.add_argument("--python", default=sys.executable, help="the interpreter the daemon runs on")
    p.add_argument("--before", type=Path, help="another tree (git worktree) to measure too")
    args = p.parse_args()
    assert args.cycles % EVERY == 0 and args.cycles >= 2 * EVERY
    trees = [("now", ROOT)] + ([("before", args.before.resolve())] if args.before else [])
    started = time.monotonic()
    results: dict[str, list[list[float]]] = {}
    with broker() as b, fake_cloud(50) as url:
        for label, tree in trees:
            compiled(tree, args.python)
            results[label] = []
            for n in range(args.n):
                print(f"{label}: run {n + 1} of {args.n}", file=sys.stderr)
                run = await one_run(tree, args.python, url, b.host, b.port, args.cycles)
                results[label].append(run)
    readings = len(next(iter(results.values()))[0])
    half = (readings - 1) // 2
    rows = []
    for i in range(readings):
        what = f"after {i * EVERY * 10} messages" if i else "idle at online, before any"
        for label, _ in trees:
            rows.append(Row(f"{label}: {what} (MiB)", [r[i] for r in results[label]]))
    for label, _ in trees:
        per_100 = [(r[-1] - r[half]) * 1024 / ((readings - 1 - half) * EVERY * 10 / 100)
                   for r in results[label]]  # fmt: skip
        rows.append(
            Row(f"{label}: added per 100 messages after the first {half * EVERY * 10} (KiB)",
                per_100)
        )  # fmt: skip
    print(table("Memory over use: one daemon, hundreds of messages (values, not ms)", rows))
    print(f"({time.monotonic() - started:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
