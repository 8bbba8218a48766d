"""What `edge-tts serve` costs a Pi while it waits and while it speaks: resident memory, CPU
time, and the time from start to `online` — for this tree and, in the same run, for another
(an earlier commit checked out with `git worktree add`), as a before/after table.

    .venv/bin/python bench/footprint.py [-n 5] [--idle-s 130] [--before DIR] [--python PY]
                                        [--plain]

Each run starts the daemon as a user does (`python -m edge_tts serve`, its own process, its
modules compiled as pip installs them, the shipped defaults but for the broker, the fake
cloud and the cache; Home Assistant's voice on, on 127.0.0.1 and advertised by zeroconf; the
cloud over TLS, trusting the system's authorities and the fake's, in a hashed directory as Debian
keeps them; --plain: over ws://), measures from outside (/proc), then stops it:
  - start → `online` retained on its availability topic (ms),
  - resident memory idle once online (MiB), and the anonymous part of it (what no other
    process shares and the kernel cannot drop: the shared libraries' pages can be),
  - CPU (user + system) over --idle-s seconds of idling (‰ of one core: 1.0 is 0.1 %, the
    target; ms of CPU per s; to the ns, from schedstat; the fake cloud ends
    a connection idle for 60 s, as the service does, so the daemon renews its warm
    connection about once a minute: the default spans two renewals),
  - CPU per second of speech while speaking 10 warm cloud announcements (ms CPU / s audio),
  - resident memory idle again after them (what a daemon that has spoken holds for good),
  - resident memory after the offline voice (Piper) spoke once, the daemon and any process
    of its own together (MiB), and again once it released the model (fallback.release_after_s
    set to 5 s here).

--python runs the daemon on another interpreter with its own packages, e.g. a venv of the
system's Python as `scripts/install` makes it (`/usr/bin/python3 -m venv DIR &&
DIR/bin/pip install '.[offline]'`; the offline voice speaks once; --system-site-packages
to measure a tree from before 2026-11-26, whose install used python3-systemd): the tree's
edge_tts runs on it (on PYTHONPATH). The project's .venv may be built
on another Python (pyenv's has a shared libpython: 2 MiB more than Debian's).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import yaml

from harness import API_KEY, ROOT, Row, broker, compiled, fake_cloud, table
from tls import DIRECTORY

TICK = os.sysconf("SC_CLK_TCK")
TEXT = "The washing machine has finished. Please empty it before the evening."
RELEASE_S = 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def on_cpu_s(pid: int) -> float:
    """CPU time of the process's threads, to the nanosecond (schedstat; /proc/PID/stat
    counts in ticks of 10 ms, too coarse for an idle daemon's few ms a minute)."""
    tasks = Path(f"/proc/{pid}/task")
    return sum(int((t / "schedstat").read_text().split()[0]) for t in tasks.iterdir()) / 1e9


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith(field))
    return kib / 1024


def children(pid: int) -> list[int]:
    """The process's children, of whichever of its threads started them."""
    return [
        int(c)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for c in (task / "children").read_text().split()
    ]


def family_rss_mib(pid: int) -> float:
    """The process's resident memory and its children's (the offline voice's process)."""
    return rss_mib(pid) + sum(family_rss_mib(c) for c in children(pid))


def logged(log: Path, text: bytes, timeout: float = 60) -> None:
    """Until the daemon's log says `text` (a bench may poll; a test may not)."""
    deadline = time.monotonic() + timeout
    while text not in log.read_bytes():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{log} never said {text!r}")
        time.sleep(0.1)


async def ended(client: aiomqtt.Client) -> None:
    """Until the announcement finished; an error if it did not (a hang would be all the
    bench showed otherwise)."""
    async for m in client.messages:
        if not str(m.topic).endswith("/event"):
            continue
        event = json.loads(bytes(m.payload))  # type: ignore[arg-type]
        if event["event"] == "finished":
            return
        if event["event"] in ("failed", "dropped", "stopped"):
            raise RuntimeError(f"the announcement did not finish: {event}")


@asynccontextmanager
async def serving(
    tree: Path, python: str, tmp: Path, config: dict[str, Any], env: dict[str, str]
) -> AsyncIterator[tuple[aiomqtt.Client, asyncio.subprocess.Process, Path, float]]:
    """`edge-tts serve` from `tree` on `python`, as a user starts it, with `config` (written
    in `tmp`, whose state directory it uses) and `env` added: a client subscribed to the
    device's topics, the process, its log, and the time from start to `online` (ms); ended
    with the block."""
    name = config["device"]["name"]
    mqtt = config["mqtt"]
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = dict(
        os.environ,
        DASHSCOPE_API_KEY=API_KEY,
        XDG_STATE_HOME=f"{tmp}/state",
        PYTHONPATH=str(tree),
        **env,
    )
    async with aiomqtt.Client(mqtt["host"], mqtt["port"]) as client:
        await client.subscribe(f"edge-tts/{name}/#", qos=1)
        started = time.monotonic()
        log = tmp / "stderr.log"
        proc = await asyncio.create_subprocess_exec(
            python, "-m", "edge_tts", "serve", "-c", str(path),
            env=env, cwd=tree, stderr=log.open("wb"),
        )  # fmt: skip
        try:
            async with asyncio.timeout(60):
                async for m in client.messages:
                    if str(m.topic).endswith("/availability") and m.payload == b"online":
                        break
            yield client, proc, log, (time.monotonic() - started) * 1000
        finally:
            proc.terminate()
            await proc.wait()


async def one_run(
    tree: Path,
    python: str,
    url: str,
    b_host: str,
    b_port: int,
    idle_s: float,
    ca: Path | None,
    host: str,
) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        name = f"bench-{Path(tmp).name}"
        config: dict[str, Any] = {
            # A name of its own each run: the broker keeps a device's session (its subscriptions)
            # for the next client of that name, and one tree's are not another's.
            "device": {"name": name},
            "mqtt": {"host": b_host, "port": b_port, "discovery_prefix": None},
            "dashscope": {"inference_url": url},
            "cache": {"dir": f"{tmp}/cache", "max_mb": 0},  # every announcement to the cloud
            "voices": {
                "default": {
                    "engine": "cosyvoice",
                    "model": "cosyvoice-v3-flash",
                    "voice": "longanyang",
                },
                "offline": {"engine": "piper"},
            },
            "fallback": {"release_after_s": RELEASE_S},
        }
        if "wyoming" in (tree / "edge_tts" / "config.py").read_text():  # a tree that has it
            config["wyoming"] = {"host": host, "port": free_port(), "zeroconf": True}
        env = {"SSL_CERT_DIR": str(ca)} if ca else {}
        async with serving(tree, python, Path(tmp), config, env) as (client, proc, log, online_ms):
            await asyncio.sleep(2)  # settle: the warm connection opened, start-up done
            idle_rss, idle_anon = rss_mib(proc.pid), rss_mib(proc.pid, "RssAnon")
            before = on_cpu_s(proc.pid)
            await asyncio.sleep(idle_s)  # the idling is what is measured
            idle_pct = (on_cpu_s(proc.pid) - before) / idle_s * 100
            before, speech_s = cpu_s(proc.pid), 0.0
            for n in range(10):
                await client.publish(f"edge-tts/{name}/say", f"{TEXT} ({n})".encode(), qos=1)
                await ended(client)
                speech_s += 0.06 * len(f"{TEXT} ({n})")  # the fake: 60 ms a character
            speaking = (cpu_s(proc.pid) - before) * 1000 / speech_s
            await asyncio.sleep(2)  # settle: the stream closed, the announcement done
            spoke_rss = rss_mib(proc.pid)
            body = b'{"text": "The offline voice, once.", "voice": "offline"}'
            await client.publish(f"edge-tts/{name}/say", body, qos=1)
            await ended(client)
            offline_rss = family_rss_mib(proc.pid)
            await asyncio.to_thread(logged, log, b"released after")
            await asyncio.sleep(1)  # the process ends, the allocator hands memory back
            released_rss = family_rss_mib(proc.pid)
    return {
        "online": online_ms,
        "rss": idle_rss,
        "anon": idle_anon,
        "idle": idle_pct,
        "speaking": speaking,
        "spoke": spoke_rss,
        "offline": offline_rss,
        "released": released_rss,
    }


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-n", type=int, default=5)
    p.add_argument("--idle-s", type=float, default=130)
    p.add_argument("--before", type=Path, help="another tree (git worktree) to measure too")
    p.add_argument("--python", default=sys.executable, help="the interpreter the daemon runs on")
    p.add_argument("--plain", action="store_true", help="the cloud over ws://, without TLS")
    args = p.parse_args()
    trees = [("now", ROOT)] + ([("before", args.before.resolve())] if args.before else [])
    rows: dict[str, list[Row]] = {}
    with contextlib.ExitStack() as stack:
        tls = None if args.plain else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        b = stack.enter_context(broker())
        url = stack.enter_context(fake_cloud(300, tls=tls))
        ca = tls / DIRECTORY if tls else None
        host = "127.0.0.1"
        for label, tree in trees:
            compiled(tree, args.python)
            runs = []
            for _ in range(args.n):
                print(f"{label}: run {len(runs) + 1} of {args.n}", file=sys.stderr)
                runs.append(
                    await one_run(tree, args.python, url, b.host, b.port, args.idle_s, ca, host)
                )
            rows[label] = [
                Row(f"{label}: start → online (ms)", [r["online"] for r in runs]),
                Row(f"{label}: resident memory idle (MiB)", [r["rss"] for r in runs]),
                Row(f"{label}: of it anonymous (MiB)", [r["anon"] for r in runs]),
                Row(f"{label}: CPU idle (‰ of a core)", [r["idle"] * 10 for r in runs]),
                Row(f"{label}: CPU speaking (ms per s of speech)", [r["speaking"] for r in runs]),
                Row(f"{label}: memory idle after speaking (MiB)", [r["spoke"] for r in runs]),
                Row(f"{label}: memory after the offline voice (MiB)", [r["offline"] for r in runs]),
                Row(f"{label}: memory once it is released (MiB)", [r["released"] for r in runs]),
            ]
    # One table, each measure of both trees side by side.
    ordered = [row for i in range(8) for label, _ in trees for row in [rows[label][i]]]
    print(table("Footprint of `edge-tts serve` (median of runs; values, not ms, where so named)",
                ordered))  # fmt: skip
    print(f"medians: { {r.name: round(statistics.median(r.values), 2) for r in ordered} }",
          file=sys.stderr)  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
