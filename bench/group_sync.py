"""Several rooms, one voice: how closely three daemons start a group announcement.

    python bench/group_sync.py -n 20 --ahead-s 1 --first-packet-ms 200

Three `edge-tts serve` processes (den, hall, attic: group `downstairs`) on one broker, the fake
cloud in a process of its own, every speaker the ALSA file device. Each case sends `n`
announcements (each a new text, so neither the phrase cache nor the dedupe window plays a
part) and reads, from each daemon's log, the moment it handed the announcement's first
non-silent sample to its device and the moment that sample is heard (output latency and
cushion added). Per announcement: the spread of the three hand-over moments, and each daemon's
offset of hearing from `play_at`. Cases, measured in the same run:

- before groups: the same text to each device's own topic at once (each synthesizes it);
- group, no play_at: one synthesis, shared; each starts when its audio is there;
- group with play_at `--ahead-s` ahead: what the group notify entity sends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import yaml

# isort: off
from harness import API_KEY, Row, broker, fake_cloud, table  # (puts tests/ on the path)
from conftest import DaemonProcess
# isort: on

ROOMS = ("den", "hall", "attic")
_LINE = re.compile(
    rb"announcement (\S+): first sample to the device at ([\d.]+), heard at ([\d.]+)"
)


def config(workdir: Path, name: str, host: str, port: int, url: str) -> Path:
    raw = {
        "device": {"name": name, "groups": ["downstairs"]},
        "mqtt": {"host": host, "port": port, "discovery_prefix": None},
        "dashscope": {"inference_url": url},
        "voices": {
            "default": {"engine": "cosyvoice", "model": "cosyvoice-v3-flash", "voice": "longanyang"}
        },
        "cache": {"dir": str(workdir / "cache")},
        "wyoming": {"enabled": False},
    }
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


class Room:
    """One daemon as a user runs it (the tests' DaemonProcess), with its own state."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.workdir = workdir
        self.daemon: DaemonProcess | None = None

    async def start(self, host: str, port: int, url: str) -> None:
        env = dict(
            os.environ,
            DASHSCOPE_API_KEY=API_KEY,
            XDG_STATE_HOME=str(self.workdir / "state"),
            EDGE_TTS_ALSA_CAPTURE="/dev/null",
        )
        self.daemon = DaemonProcess(config(self.workdir, self.name, host, port, url), env)
        await self.daemon.spawn()

    def moments(self) -> dict[str, tuple[float, float]]:
        """announcement id -> (handed to the device, heard), epoch seconds."""
        assert self.daemon is not None
        return {
            m[1].decode(): (float(m[2]), float(m[3])) for m in _LINE.finditer(self.daemon.stderr)
        }

    async def stop(self) -> None:
        if self.daemon is not None and self.daemon.running:
            await self.daemon.stop()


async def measure(n: int, ahead_s: float, url: str, host: str, port: int) -> tuple[list[Row], str]:
    with tempfile.TemporaryDirectory() as tmp:
        rooms = [Room(name, Path(tmp) / name) for name in ROOMS]
        for room in rooms:
            room.workdir.mkdir()
        async with aiomqtt.Client(host, port) as client:
            await client.subscribe([("edge-tts/+/event", 1), ("edge-tts/+/availability", 1)])
            for room in rooms:
                await room.start(host, port, url)
            ended: dict[str, set[str]] = {}
            syntheses: dict[str, int] = {}
            online: set[str] = set()
            changed = asyncio.Event()

            async def listen() -> None:
                async for message in client.messages:
                    room = str(message.topic).split("/")[1]
                    payload = bytes(message.payload)  # type: ignore[arg-type]
                    if str(message.topic).endswith("/availability"):
                        (online.add if payload == b"online" else online.discard)(room)
                    else:
                        event = json.loads(payload)
                        if event["event"] == "started" and event["source"] == "cloud":
                            syntheses[event["id"]] = syntheses.get(event["id"], 0) + 1
                        if event["event"] in ("finished", "failed", "dropped"):
                            ended.setdefault(event["id"], set()).add(room)
                    changed.set()

            async def until(done: Callable[[], bool]) -> None:
                async with asyncio.timeout(60):
                    while not done():
                        changed.clear()
                        await changed.wait()

            listener = asyncio.create_task(listen())
            await until(lambda: online >= set(ROOMS))
            cases: dict[str, list[str]] = {"before groups": [], "group": [], "group, play_at": []}
            play_at: dict[str, float] = {}
            for i in range(n):
                for case, ids in cases.items():
                    ident = f"{case.replace(' ', '').replace(',', '-')}-{i}"
                    ids.append(ident)
                    body: dict[str, object] = {
                        "text": f"Announcement {i} of case {case}, for every room downstairs.",
                        "id": ident,
                        "cache": False,
                    }
                    if case == "before groups":
                        for room in ROOMS:
                            await client.publish(f"edge-tts/{room}/say", json.dumps(body), qos=1)
                    else:
                        if case == "group, play_at":
                            body["play_at"] = play_at[ident] = time.time() + ahead_s
                        await client.publish(
                            "edge-tts/group/downstairs/say", json.dumps(body), qos=1
                        )
                    await until(lambda ident=ident: ended.get(ident) == set(ROOMS))  # type: ignore[misc]
            listener.cancel()
            for room in rooms:
                await room.stop()
            moments = [room.moments() for room in rooms]
    rows = []
    for case, ids in cases.items():
        spread = Row(f"{case}: spread of the first sample, 3 rooms")
        for ident in ids:
            handed = [m[ident][0] for m in moments if ident in m]
            if len(handed) == len(ROOMS):
                spread.values.append((max(handed) - min(handed)) * 1000)
        rows.append(spread)
    offset = Row(f"group, play_at: heard − play_at, each room (play_at {ahead_s:g} s ahead)")
    offset.values = [(m[i][1] - play_at[i]) * 1000 for i in play_at for m in moments if i in m]
    rows.append(offset)
    paid = ", ".join(
        f"{case} {sum(syntheses.get(i, 0) for i in ids) / len(ids):.1f}"
        for case, ids in cases.items()
    )
    return rows, f"Cloud syntheses per announcement: {paid}."


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("-n", type=int, default=20)
    p.add_argument("--ahead-s", type=float, default=1.0)
    p.add_argument("--first-packet-ms", type=float, default=200)
    args = p.parse_args()
    with broker() as b, fake_cloud(args.first_packet_ms) as url:
        rows, paid = asyncio.run(measure(args.n, args.ahead_s, url, b.host, b.port))
    print(table(f"Three rooms, one announcement (n={args.n} each)", rows))
    print(paid)


if __name__ == "__main__":
    main()
