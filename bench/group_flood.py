"""A flood on the group speech topics: what it costs a daemon's memory, and how long an
announcement sent in the middle of it waits.

    python bench/group_flood.py [--claims-s 45] [--claim-keys 6] [--before DIR]

One `edge-tts serve` (device den, group `downstairs`) on its own broker, the fake cloud in a
process of its own, the speaker the ALSA file device. The flood, as issue 30 saw it: 600
speech keys of one 60 kB piece each, then `--claims-s` seconds of small claims (spread over
`--claim-keys` keys), published as fast as the broker takes them. During the flood a
`critical` announcement is sent every 3 s; its wait is from publishing it to its `started`
event. Measured from outside (/proc): resident memory at its peak (VmHWM) and once the flood
is over. `--before DIR` runs another tree (`git worktree add DIR REV`) the same way in the
same run, as the reference.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import aiomqtt
import yaml

from edge_tts.protocols.share import Claim, Piece, encode

from harness import API_KEY, ROOT, Row, broker, fake_cloud, table  # (puts tests/ on the path)


def status_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


async def one_run(
    tree: Path, url: str, host: str, port: int, claims_s: float, claim_keys: int
) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        raw = {
            "device": {"name": "den", "groups": ["downstairs"]},
            "mqtt": {"host": host, "port": port, "discovery_prefix": None},
            "dashscope": {"inference_url": url},
            "voices": {
                "default": {
                    "engine": "cosyvoice",
                    "model": "cosyvoice-v3-flash",
                    "voice": "longanyang",
                }
            },
            "cache": {"dir": str(workdir / "cache")},
            "wyoming": {"enabled": False},
        }
        config = workdir / "config.yaml"
        config.write_text(yaml.safe_dump(raw))
        env = dict(
            os.environ,
            DASHSCOPE_API_KEY=API_KEY,
            XDG_STATE_HOME=str(workdir / "state"),
            EDGE_TTS_ALSA_CAPTURE="/dev/null",
            PYTHONPATH=str(tree),
        )
        async with aiomqtt.Client(host, port, identifier="bench-ha") as ha:
            await ha.subscribe([("edge-tts/den/event", 1), ("edge-tts/den/availability", 1)])
            proc = await asyncio.create_subprocess_exec(  # from the tree's own directory
                sys.executable, "-m", "edge_tts", "serve", "-c", str(config),
                env=env, cwd=tree, stderr=(workdir / "log").open("wb"),
            )  # fmt: skip
            started: dict[str, float] = {}
            online = asyncio.Event()
            heard = asyncio.Condition()

            async def listen() -> None:
                async for m in ha.messages:
                    if str(m.topic).endswith("/availability") and m.payload == b"online":
                        online.set()
                    elif str(m.topic).endswith("/event"):
                        event = json.loads(m.payload)  # type: ignore[arg-type]
                        if event["event"] == "started":
                            started[event["id"]] = time.monotonic()
                            async with heard:
                                heard.notify_all()

            listener = asyncio.create_task(listen())
            await asyncio.wait_for(online.wait(), 30)
            pid = proc.pid
            sent: dict[str, float] = {}
            flooding = True

            async def announce() -> None:
                n = 0
                while flooding:
                    await asyncio.sleep(3)  # the pace of the announcements during the flood
                    n += 1
                    sent[f"fire{n}"] = time.monotonic()
                    body = {"text": f"Smoke, number {n}.", "id": f"fire{n}", "priority": "critical"}
                    await ha.publish("edge-tts/den/say", json.dumps(body), qos=1)

            announcer = asyncio.create_task(announce())
            piece = encode(Piece("mallory", 0, b"\x7f" * 60_000))
            async with aiomqtt.Client(host, port, max_queued_outgoing_messages=0) as flood:
                for n in range(600):
                    await flood.publish(f"edge-tts/group/downstairs/speech/k{n}", piece)
                end = time.monotonic() + claims_s
                n = 0
                while time.monotonic() < end:
                    claim = encode(Claim(f"m{n}", "k"))
                    topic = f"edge-tts/group/downstairs/speech/c{n % claim_keys}"
                    await flood.publish(topic, claim)
                    n += 1
            flooding = False
            await announcer
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(600), heard:
                    await heard.wait_for(lambda: set(sent) <= set(started))
            await asyncio.sleep(5)  # settle: the flood handled (or let go)
            after = status_mib(pid, "VmRSS")
            peak = status_mib(pid, "VmHWM")
            listener.cancel()
            proc.terminate()
            await proc.wait()
        waits = [(started[i] - sent[i]) * 1000 for i in sent if i in started]
        return {"claims": n, "waits": waits, "unheard": len(set(sent) - set(started)),
                "peak": peak, "after": after}  # fmt: skip


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--claims-s", type=float, default=45)
    p.add_argument("--claim-keys", type=int, default=6, help="the keys the claims go to")
    p.add_argument("--before", type=Path, help="another tree (git worktree) to measure too")
    args = p.parse_args()
    trees = [("now", ROOT)] + ([("before", args.before.resolve())] if args.before else [])
    with broker() as b, fake_cloud(200) as url:
        for label, tree in trees:
            r = await one_run(tree, url, b.host, b.port, args.claims_s, args.claim_keys)
            waits = r["waits"]
            assert isinstance(waits, list)
            print(table(f"{label}: a critical announcement's wait during the flood", [
                Row(f"{label}: publish → started", waits or [float("nan")]),
            ]))  # fmt: skip
            print(
                f"{label}: {r['claims']} claims after 600 pieces of 60 kB; "
                f"{r['unheard']} announcements not started within 10 min; "
                f"resident memory peak {r['peak']:.1f} MiB, after {r['after']:.1f} MiB\n"
            )


if __name__ == "__main__":
    asyncio.run(main())
